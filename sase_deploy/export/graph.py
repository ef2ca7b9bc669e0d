"""ONNX graph post-processing after export: simplify, infer shapes, name nodes, inspect.

Simplification uses onnx-graphsurgeon (`fold_constants().cleanup().toposort()`), the library
the rewrite stage edits graphs with and already a dependency. onnxslim was measured beside it
(benchmarks/bench_export.py, se_resnet50): same node count from both exporters' graphs, same
outputs, 2-3x slower; so it is not worth a new dependency.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_graphsurgeon as gs

# Ops that make a graph non-deterministic: a deployed SE model must never contain them.
RANDOM_OPS = (
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, drop dead nodes and unused initializers, sort topologically."""
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup(remove_unused_graph_inputs=False).toposort()
    simplified = gs.export_onnx(graph, do_type_check=True)
    simplified.ir_version = model.ir_version
    del simplified.opset_import[:]
    simplified.opset_import.extend(model.opset_import)
    for prop in model.metadata_props:
        simplified.metadata_props.add(key=prop.key, value=prop.value)
    simplified.producer_name = model.producer_name
    simplified.producer_version = model.producer_version
    return simplified


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference (strict: an inconsistency is a bug in the export, so it raises)."""
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.extend(_graphs(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    found.extend(_graphs(sub))
    return found


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name every node `{op_type}_{index}` in graph order, subgraphs prefixed by their owner.

    Exporters name nodes after Python call sites and counters; fixed names keep two exports of
    the same model byte-identical. Node doc strings (stack traces with local paths) are dropped.
    """

    def visit(graph: onnx.GraphProto, prefix: str) -> None:
        for index, node in enumerate(graph.node):
            node.name = f"{prefix}{node.op_type}_{index}"
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, f"{node.name}/{attr.name}/")
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for k, sub in enumerate(attr.graphs):
                        visit(sub, f"{node.name}/{attr.name}{k}/")

    visit(model.graph, "")
    return model


def random_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes (also in subgraphs and local functions) that draw random numbers."""
    graphs = _graphs(model.graph)
    hits = [
        f"{node.op_type} '{node.name}'"
        for graph in graphs
        for node in graph.node
        if node.op_type in RANDOM_OPS
    ]
    hits += [
        f"{node.op_type} in function '{fn.name}'"
        for fn in model.functions
        for node in fn.node
        if node.op_type in RANDOM_OPS
    ]
    return hits


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def describe_values(values: list[onnx.ValueInfoProto]) -> list[dict[str, object]]:
    """Name, shape (ints; a dynamic dim's symbolic name) and dtype of graph inputs/outputs."""
    described: list[dict[str, object]] = []
    for value in values:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            dim.dim_param if dim.HasField("dim_param") else int(dim.dim_value)
            for dim in tensor.shape.dim
        ]
        described.append(
            {
                "name": value.name,
                "shape": shape,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            }
        )
    return described
