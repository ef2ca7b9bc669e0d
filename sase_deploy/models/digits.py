"""Tiny SE / SASE ResNets for the 8x8 single-channel digits, with trained checkpoints.

The checkpoints (`examples/digits/<name>.pt`, plain state dicts written by
`examples/digits/train.py`) give FP16/INT8 checks a real accuracy to compare: see
`sase_deploy.models.digits_data` for the fixed split and `evaluate_accuracy`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sase_deploy.errors import UserError
from sase_deploy.models.digits_data import TRAIN_PIXEL_MEAN, TRAIN_PIXEL_STD
from sase_deploy.models.resnets import ResNet, SASEBottleneck, SEBasicBlock
from sase_deploy.models.spec import InputSpec, ModelSpec, Preprocess

NUM_CLASSES = 10
DIGITS_DIR = Path(__file__).resolve().parents[2] / "examples" / "digits"


def se_resnet_digits(num_classes: int = NUM_CLASSES) -> ResNet:
    """SE-ResNet for 1x8x8: 3x3 stem (16), BasicBlock stages 16@8x8 and 32@4x4, SE r=4."""
    return ResNet(
        SEBasicBlock,
        (1, 1),
        widths=(16, 32),
        num_classes=num_classes,
        in_channels=1,
        stem="small",
        stem_width=16,
        reduction=4,
    )


def sase_resnet_digits(num_classes: int = NUM_CLASSES) -> ResNet:
    """SASE-ResNet for 1x8x8 (reconstruction): Bottleneck stages 64@8x8, 128@4x4, G=4, r=4."""
    return ResNet(
        SASEBottleneck,
        (1, 1),
        widths=(16, 32),
        num_classes=num_classes,
        in_channels=1,
        stem="small",
        stem_width=32,
        groups=4,
        reduction=4,
    )


def digits_checkpoint_path(name: str) -> Path:
    """Where `examples/digits/train.py` writes (and the repo commits) a digits checkpoint."""
    return DIGITS_DIR / f"{name}.pt"


def load_digits_model(name: str, checkpoint: str | Path | None = None) -> torch.nn.Module:
    """A digits network with its trained weights (default: the committed checkpoint), in eval."""
    factories = {"se_resnet_digits": se_resnet_digits, "sase_resnet_digits": sase_resnet_digits}
    if name not in factories:
        raise UserError(f"unknown digits model '{name}': use one of {sorted(factories)}")
    path = Path(checkpoint) if checkpoint is not None else digits_checkpoint_path(name)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: run 'python examples/digits/train.py'")
    model = factories[name]()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


DIGITS_INPUTS = (InputSpec("x", (1, 1, 8, 8)),)
# Raw digits pixels are 0..16: an 8-bit grey image maps onto them with scale 16/255.
DIGITS_PREPROCESS = Preprocess(
    size=(8, 8),
    resize=None,
    mean=(TRAIN_PIXEL_MEAN,),
    std=(TRAIN_PIXEL_STD,),
    channel_order="L",
    scale=16.0 / 255.0,
)

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="se_resnet_digits",
        family="se",
        task="classification",
        factory=se_resnet_digits,
        inputs=DIGITS_INPUTS,
        output_names=("logits",),
        description="tiny SE-ResNet for 8x8 scikit-learn digits (trained: examples/digits)",
        se_blocks={"se": 2},
        preprocess=DIGITS_PREPROCESS,
        source="Hu et al., CVPR 2018 (torchvision-style layout)",
    ),
    ModelSpec(
        name="sase_resnet_digits",
        family="sase",
        task="classification",
        factory=sase_resnet_digits,
        inputs=DIGITS_INPUTS,
        output_names=("logits",),
        description="tiny SASE-ResNet (reconstruction) for 8x8 digits (trained: examples/digits)",
        se_blocks={"sase": 2},
        preprocess=DIGITS_PREPROCESS,
        source="reconstruction",
    ),
)
