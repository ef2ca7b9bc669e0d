"""SE/SASE subgraph recognition and fusion on ONNX graphs (onnx-graphsurgeon).

Public entry point: `fuse_model(model, rules=DEFAULT_RULES, self_check=True, as_functions=False)`
returning a `FuseResult` (`.model`, `.report`).
"""

from sase_deploy.rewrite.passes import FuseResult, fuse_model
from sase_deploy.rewrite.rules import DEFAULT_RULES

__all__ = ["DEFAULT_RULES", "FuseResult", "fuse_model"]
