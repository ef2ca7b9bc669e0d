"""Load checkpoints written by real training scripts into sase-deploy's models.

Users arrive with files saved by official code, not by us: a bare state dict, an ImageNet-style
container (`{'epoch', 'arch', 'state_dict', 'optimizer', ...}`), FastGAN's
`{'g', 'd', 'g_ema': [tensors in parameters() order], 'opt_g', 'opt_d'}`, keys prefixed by
DataParallel (`module.`) or torch.compile (`_orig_mod.`), and spectral-normed layers stored as
`weight_orig`/`weight_u`/`weight_v` (hook API) or `parametrizations.weight.*` (parametrization
API). `load_checkpoint` maps all of these onto a model and says in a `LoadReport` what it did.

Modules, in the order a load goes through them:

- `safe_load`: `torch.load(weights_only=True)`, the `unsafe_load` path and its refusal message.
- `containers`: the state dict out of a checkpoint container, wrapper prefixes stripped.
- `key_fitting`: checkpoint keys onto the model's keys, and the mismatch report.
- `spectral_norm`: baking spectral norm (model and state dict) and the keys it is saved under.
- `loader`: `load_checkpoint` itself, and its `LoadReport`.
"""

from sase_deploy.models.checkpoint.containers import (
    EMA_STATE_KEYS,
    FASTGAN_KEYS,
    PREFIXES,
    STATE_KEYS,
    CheckpointWeights,
    StateDict,
    extract_state_dict,
    load_state_dict_file,
    strip_prefixes,
)
from sase_deploy.models.checkpoint.key_fitting import StateDictFit, fit_state_dict
from sase_deploy.models.checkpoint.loader import LoadReport, load_checkpoint
from sase_deploy.models.checkpoint.safe_load import read_checkpoint
from sase_deploy.models.checkpoint.spectral_norm import (
    SN_FORMS,
    bake_spectral_norm,
    has_spectral_norm,
    spectral_normalized_weight,
)

__all__ = [
    "EMA_STATE_KEYS",
    "FASTGAN_KEYS",
    "PREFIXES",
    "SN_FORMS",
    "STATE_KEYS",
    "CheckpointWeights",
    "LoadReport",
    "StateDict",
    "StateDictFit",
    "bake_spectral_norm",
    "extract_state_dict",
    "fit_state_dict",
    "has_spectral_norm",
    "load_checkpoint",
    "load_state_dict_file",
    "read_checkpoint",
    "spectral_normalized_weight",
    "strip_prefixes",
]
