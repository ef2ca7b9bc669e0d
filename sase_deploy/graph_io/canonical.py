"""The canonical graph form: what the rewrite and precision stages read, whichever exporter
(TorchScript, dynamo, a user's own script) wrote the file.

TorchScript exports compute split points, reshape targets and resize sizes at run time from
`Shape` nodes, even where every dim involved is static; the rules would see `Shape -> Gather ->
Div -> Mul -> Slice` where the dynamo exporter writes a constant. Canonicalising infers shapes,
then lets onnx-graphsurgeon fold constants *and* static shapes (`fold_constants` with
`fold_shapes`), drop dead nodes and sort, and repeats while that removes nodes: a split point
folded in one round gives the next round's inference the static shapes behind it. Identity
arithmetic (`x + 0`, `x * 1`: training code's `num = 0; num = num + ...` accumulators) is
dropped where it cannot change a shape; graphsurgeon has no pass for that, so it is written
here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

_SHAPE_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
_SMALL_CONSTANT = 64  # elements: initializers up to this size stay in for data propagation
_MAX_ROUNDS = 4  # fold rounds; each exposes static shapes to the next (TorchScript: 2 suffice)


def canonicalise(
    model: onnx.ModelProto, *, rename_all: bool = False, strict: bool = False
) -> onnx.ModelProto:
    """`model` folded, cleaned, sorted, shape-inferred and named (a new proto).

    Args:
        model: any runnable model; its graph inputs, outputs, opsets and metadata are kept.
        rename_all: name every node `{op}_{index}` (export: exporters' names are call-site
            noise); by default user names are kept and only missing or repeated ones are set.
        strict: raise when the final shape inference finds an inconsistency (export: that is a
            bug in the export) instead of keeping the graph without inferred shapes.
    """
    current = simplify(infer_shapes(model))
    for _ in range(_MAX_ROUNDS - 1):
        folded = simplify(infer_shapes(current))
        if len(folded.graph.node) >= len(current.graph.node):
            break
        current = folded
    inferred = infer_shapes(current, strict=strict)
    return name_nodes(inferred, rename_all=rename_all)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and static shapes, drop dead nodes and unused initializers, sort
    topologically (onnx-graphsurgeon); graph inputs, opsets and metadata stay."""
    graph = gs.import_onnx(model)
    with _quiet_folding():
        graph.fold_constants(fold_shapes=True)
    drop_identity_arithmetic(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return model_from_graph(graph, model, type_check=True)


# op -> (neutral value, whether the constant may be the first operand)
_NEUTRAL = {"Add": (0.0, True), "Sub": (0.0, False), "Mul": (1.0, True), "Div": (1.0, False)}


def drop_identity_arithmetic(graph: gs.Graph) -> int:
    """Bypass `x + 0`, `0 + x`, `x - 0`, `x * 1`, `1 * x`, `x / 1` whose constant cannot
    broadcast `x` to a bigger shape; returns how many were dropped (left for `cleanup`)."""
    outputs = {id(t) for t in graph.outputs}
    count = 0
    for node in graph.nodes:
        if node.op not in _NEUTRAL or len(node.inputs) != 2 or len(node.outputs) != 1:
            continue
        if id(node.outputs[0]) in outputs:  # a graph output keeps its name: keep the node
            continue
        neutral, commutes = _NEUTRAL[node.op]
        for const_at in (1, 0) if commutes else (1,):
            const, other = node.inputs[const_at], node.inputs[1 - const_at]
            if _is_neutral(const, other, neutral):
                replace_uses(graph, node.outputs[0], other)
                node.outputs.clear()
                count += 1
                break
    return count


def _is_neutral(const: gs.Tensor, other: gs.Tensor, neutral: float) -> bool:
    if not isinstance(const, gs.Constant) or isinstance(other, gs.Constant):
        return False
    values = np.asarray(const.values)
    if values.size != 1 or values.dtype != other.dtype or values.reshape(()) != neutral:
        return False
    rank = len(other.shape) if other.shape is not None else None
    return values.ndim == 0 or (rank is not None and rank >= values.ndim)


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every consumer of `old` (and graph outputs) at `new`."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    for i, t in enumerate(graph.outputs):
        if t is old:
            graph.outputs[i] = new


def toposorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its nodes in topological order (ORT runs unsorted graphs; onnx.checker and
    TensorRT's parser refuse them)."""
    graph = gs.import_onnx(model).toposort()
    return model_from_graph(graph, model)


@contextlib.contextmanager
def _quiet_folding() -> Iterator[None]:
    """graphsurgeon folds on ONNX Runtime, which logs a warning per optimiser decision."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def model_from_graph(
    graph: gs.Graph, template: onnx.ModelProto | None = None, *, type_check: bool = False
) -> onnx.ModelProto:
    """Export `graph` keeping the template's IR version, opsets (in local functions too),
    producer and metadata."""
    model = gs.export_onnx(graph, do_type_check=type_check)
    if template is None:
        return model
    model.ir_version = template.ir_version
    del model.opset_import[:]
    model.opset_import.extend(template.opset_import)
    for func in model.functions:
        for imp in func.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = opset_version(template)
    model.producer_name = template.producer_name or model.producer_name
    model.producer_version = template.producer_version or model.producer_version
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    return model


def opset_version(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (18 when it declares none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 18


def infer_shapes(model: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """`model` with inferred value_info (a new proto; graph inputs/outputs keep their types).

    Large float initializers are handed to the inference as typed graph inputs: their shapes are
    all it needs, and serialising megabytes of weights dominated the time (and a model over
    2 GiB could not be inferred at all). Best effort by default: a graph onnx cannot infer comes
    back as it was. `strict` (export: an inconsistency there is a bug) raises instead.
    """
    light = onnx.ModelProto()
    light.CopyFrom(model)
    del light.graph.initializer[:]
    del light.graph.value_info[:]
    for init in model.graph.initializer:
        if init.data_type in _SHAPE_TYPES or _numel(init) <= _SMALL_CONSTANT:
            light.graph.initializer.append(init)
        else:
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    try:
        inferred = onnx.shape_inference.infer_shapes(
            light, check_type=strict, strict_mode=strict, data_prop=True
        )
    except Exception:  # onnx raises several types; the stages check the shapes they need
        if strict:
            raise
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    declared = {o.name for o in model.graph.output if o.type.tensor_type.HasField("shape")}
    for i, output in enumerate(inferred.graph.output):  # fill only what the file left out
        if output.name not in declared:
            out.graph.output[i].CopyFrom(output)
    return out


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def unique_node_names(
    ops: Sequence[str], names: Sequence[str], *, rename_all: bool = False
) -> list[str]:
    """Node names for nodes `ops` (in graph order) currently called `names`: unique and
    deterministic, `{op}_{index}` for a missing or repeated name (every name if `rename_all`)."""
    seen: set[str] = set()
    result: list[str] = []
    for index, (op, name) in enumerate(zip(ops, names, strict=True)):
        if rename_all or not name or name in seen:
            name = f"{op}_{index}"
            while name in seen:
                name += "_"
        seen.add(name)
        result.append(name)
    return result


def name_nodes(model: onnx.ModelProto, *, rename_all: bool = True) -> onnx.ModelProto:
    """Give nodes unique deterministic names (see `unique_node_names`), subgraphs prefixed by
    their owner; node doc strings (exporters' stack traces with local paths) are dropped.
    Changes `model` in place and returns it."""

    def visit(graph: onnx.GraphProto, prefix: str) -> None:
        names = unique_node_names(
            [n.op_type for n in graph.node], [n.name for n in graph.node], rename_all=rename_all
        )
        for node, name in zip(graph.node, names, strict=True):
            node.name = f"{prefix}{name}" if rename_all else name
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, f"{node.name}/{attr.name}/")
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for k, sub in enumerate(attr.graphs):
                        visit(sub, f"{node.name}/{attr.name}{k}/")

    visit(model.graph, "")
    return model
