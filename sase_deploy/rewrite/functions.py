"""`--as-functions`: each recognised block becomes one node backed by an ONNX local function.

Netron then shows one `SqueezeExcite` / `SLE` / `ECA` ... node per block, ORT and TensorRT inline
the function body, and a TensorRT plugin may later claim the op by name. Weights stay in the main
graph (initializers) and are passed as function inputs, so one function serves every block of
the same structure (same ops, attributes and wiring); structures that differ get `_2`, `_3`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from sase_deploy.graph_io import opset_version
from sase_deploy.rewrite.gates import channel_gates
from sase_deploy.rewrite.graph_utils import import_graph

DOMAIN = "sase_deploy"
FUNCTION_NAMES = {
    "se": "SqueezeExcite",
    "se_like": "SqueezeExcite",
    "sle": "SLE",
    "eca": "ECA",
    "cbam_channel": "CBAMChannel",
    "spse": "SPSE",
    "rgse": "RGSE",
    "sase": "SASE",
}


def _blocks(model: onnx.ModelProto) -> list[tuple[str, list[str], str]]:
    """(kind, node names in topological order, output tensor) of every clean channel gate."""
    gates = channel_gates(import_graph(model))
    return [(g.kind, [*g.path, g.mul], g.output) for g in gates if g.mul is not None]


def _prefixed_blocks(
    model: onnx.ModelProto, prefixes: dict[str, str], kinds: dict[str, str]
) -> list[tuple[str, list[str], str]]:
    """Blocks a rule rebuilt under its own node-name prefix (SASE): those nodes + the node that
    produces the block output. Names the pass gave its own nodes, not an exporter's."""
    producers = {t: n for n in model.graph.node for t in n.output}
    blocks = []
    for output, prefix in prefixes.items():
        last = producers.get(output)
        if last is None:
            continue
        names = [n.name for n in model.graph.node if n.name.startswith(prefix) or n is last]
        if len(names) > 1:
            blocks.append((kinds.get(output, "sase"), names, output))
    return blocks


def _escapes(model: onnx.ModelProto, body: list[onnx.NodeProto], output: str) -> bool:
    """Does a tensor made inside the body (other than `output`) feed anything outside it?"""
    inner = {t for n in body for t in n.output} - {output}
    body_ids = {id(n) for n in body}
    if inner & {o.name for o in model.graph.output}:
        return True
    return any(id(n) not in body_ids and any(t in inner for t in n.input) for n in model.graph.node)


def wrap_blocks_as_functions(
    model: onnx.ModelProto,
    kinds: dict[str, str] | None = None,
    prefixes: dict[str, str] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return a copy of `model` with each recognised block as one custom-domain function node.

    `kinds` maps a block's output tensor to the kind the pass reported for it (a collapsed SPSE
    gate looks like a plain gate afterwards; the function is still named `SPSE`). `prefixes`
    maps the output of a block that a rule rebuilt (fused SASE) to its node-name prefix.
    """
    kinds = kinds or {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    by_name = {n.name: n for n in nodes}
    library = _Library(opset_version(model))
    replaced: dict[str, onnx.NodeProto] = {}  # name of the block's last node -> call node
    removed: set[str] = set()
    for found_kind, names, output in _candidate_blocks(out, kinds, prefixes or {}):
        if any(n not in by_name or n in removed for n in names):
            continue
        body = [by_name[n] for n in names]
        if _escapes(out, body, output):
            continue
        externals, function_body = _function_body(body, output)
        kind = kinds.get(output, found_kind)
        replaced[names[-1]] = library.call(kind, externals, function_body, output, names[-1])
        removed.update(names)
    if not replaced:
        return out, {"functions": {}}
    _splice(out, nodes, replaced, removed, list(library.functions.values()))
    return out, {"domain": DOMAIN, "functions": dict(sorted(library.counts.items()))}


def _candidate_blocks(
    model: onnx.ModelProto, kinds: dict[str, str], prefixes: dict[str, str]
) -> list[tuple[str, list[str], str]]:
    """Clean channel gates, then the rebuilt blocks that are not also gates."""
    gates = _blocks(model)
    gate_outputs = {output for _, _, output in gates}
    rebuilt = _prefixed_blocks(
        model, {k: v for k, v in prefixes.items() if k not in gate_outputs}, kinds
    )
    return gates + rebuilt


def _function_body(
    body: list[onnx.NodeProto], output: str
) -> tuple[list[str], list[onnx.NodeProto]]:
    """The block's external inputs (in first-use order) and its nodes renamed for a function:
    inputs `in<i>`, the block output `out`, inner tensors `t<node>_<output>`, nodes `n<i>`."""
    produced = {t for n in body for t in n.output}
    externals: list[str] = []
    for n in body:
        for t in n.input:
            if t and t not in produced and t not in externals:
                externals.append(t)
    local = {t: f"in{i}" for i, t in enumerate(externals)}
    for i, n in enumerate(body):
        for j, t in enumerate(n.output):
            local[t] = "out" if t == output else f"t{i}_{j}"
    renamed = []
    for i, n in enumerate(body):
        copy = helper.make_node(
            n.op_type,
            [local.get(t, t) if t else "" for t in n.input],
            [local[t] for t in n.output],
            name=f"n{i}",
            domain=n.domain,
        )
        copy.attribute.extend(n.attribute)
        renamed.append(copy)
    return externals, renamed


@dataclass
class _Library:
    """The local functions made so far: one per block structure (same ops, attributes and
    wiring), named after the kind (`_2`, `_3` for other structures), and their call counts."""

    opset: int
    functions: dict[tuple[Any, ...], onnx.FunctionProto] = field(default_factory=dict)
    used_names: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def call(
        self, kind: str, externals: list[str], body: list[onnx.NodeProto], output: str, last: str
    ) -> onnx.NodeProto:
        """The node calling the function for `body` (made on first use) on `externals`."""
        signature = (*tuple(node.SerializeToString() for node in body), len(externals))
        if signature not in self.functions:
            base = FUNCTION_NAMES.get(kind, "SqueezeExcite")
            self.used_names[base] = self.used_names.get(base, 0) + 1
            fname = base if self.used_names[base] == 1 else f"{base}_{self.used_names[base]}"
            self.functions[signature] = helper.make_function(
                DOMAIN,
                fname,
                [f"in{i}" for i in range(len(externals))],
                ["out"],
                body,
                [helper.make_opsetid("", self.opset)],
            )
        fname = self.functions[signature].name
        self.counts[fname] = self.counts.get(fname, 0) + 1
        return helper.make_node(fname, externals, [output], name=f"{fname}/{last}", domain=DOMAIN)


def _splice(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    replaced: dict[str, onnx.NodeProto],
    removed: set[str],
    functions: list[onnx.FunctionProto],
) -> None:
    """Put the call nodes in place of their blocks (at each block's last node) in `model`."""
    new_nodes = []
    for n in nodes:
        if n.name in replaced:
            new_nodes.append(replaced[n.name])
        elif n.name not in removed:
            new_nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.functions.extend(functions)
    if not any(imp.domain == DOMAIN for imp in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    kept = {vi.name for vi in model.graph.value_info}
    inner = {t for n in nodes if n.name in removed for t in n.output} - {
        n.output[0] for n in replaced.values()
    }
    if kept & inner:  # value_info of tensors now inside functions would dangle
        vis = [vi for vi in model.graph.value_info if vi.name not in inner]
        del model.graph.value_info[:]
        model.graph.value_info.extend(vis)
