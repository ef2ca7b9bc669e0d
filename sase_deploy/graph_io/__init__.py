"""One way in and out of ONNX for every stage (export, fuse, calibrate, convert, build, compare).

- `load_onnx`: read a file with the external-data policy (data inside the model's folder only),
  `onnx.checker`, opset / IR-version limits and the runnable-op check; every problem is one
  `UserError` line, whichever command reads the file.
- `canonicalise`: the form the rewrite and precision stages expect, whichever exporter wrote
  the file: shapes inferred, constants and static shapes folded, dead nodes dropped,
  topological order, unique deterministic node names.
- `save_onnx`: atomic write, weights to an external data file beside the model when large.
- `graph_inputs` / `real_inputs`: the inputs a graph is fed (initializers left out);
  `random_feed`: seeded inputs for them.
"""

from sase_deploy.graph_io.canonical import (
    canonicalise,
    infer_shapes,
    model_from_graph,
    name_nodes,
    opset_version,
    replace_uses,
    simplify,
    toposorted,
    unique_node_names,
)
from sase_deploy.graph_io.inputs import GraphInput, graph_inputs, random_feed, real_inputs
from sase_deploy.graph_io.load import MIN_OPSET, check_runnable, load_onnx
from sase_deploy.graph_io.save import (
    EXTERNAL_DATA_THRESHOLD,
    external_data_name,
    publish,
    save_model,
    save_onnx,
    staging_dir,
)

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "MIN_OPSET",
    "GraphInput",
    "canonicalise",
    "check_runnable",
    "external_data_name",
    "graph_inputs",
    "infer_shapes",
    "load_onnx",
    "model_from_graph",
    "name_nodes",
    "opset_version",
    "publish",
    "random_feed",
    "real_inputs",
    "replace_uses",
    "save_model",
    "save_onnx",
    "simplify",
    "staging_dir",
    "toposorted",
    "unique_node_names",
]
