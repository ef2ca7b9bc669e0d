"""Reading an ONNX file: the checks every command applies before it trusts a model.

All of them end in a one-line `UserError` (exit 2) naming the file and what to do, so `fuse`,
`calibrate`, `convert`, `build`, `compare` and `triton` refuse a bad file with the same words.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper as ext

from sase_deploy.errors import UserError, first_line
from sase_deploy.graph_io.canonical import toposorted

# The rules read Split/Squeeze/Reduce* in their opset-13+ forms, and ORT's per-channel QDQ
# quantizer needs 13; older graphs are upgraded with onnx's version converter (see message).
MIN_OPSET = 13
# Domains whose ops ONNX Runtime runs without a plug-in (the standard ones and ORT's contrib ops).
RUNNABLE_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
# protobuf cannot hold a message over 2 GiB: such models are checked by path.
_PROTO_LIMIT = 2_000_000_000


def load_onnx(path: str | os.PathLike[str], *, sort: bool = False) -> onnx.ModelProto:
    """Load the model at `path` with its external data and check it.

    Args:
        path: an `.onnx` file; external data must lie inside its folder.
        sort: put nodes out of topological order (ORT runs such files; the checker and
            TensorRT's parser refuse them) in order first, for stages that write a new graph
            anyway (fuse, calibrate, convert). Stages that hand the file on as it is refuse it.

    Raises:
        UserError: missing or unreadable file, external data outside the folder or missing,
            an empty graph, a checker failure, an opset/IR version out of range, or an op
            no backend here runs.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such ONNX file: {path}; pass the path of an exported .onnx model")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a bad file
        raise UserError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
    has_external = _check_external_data(model, path)
    if has_external:
        try:
            ext.load_external_data_for_model(model, os.fspath(path.parent.resolve()))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:  # missing, short
            raise UserError(
                f"{path}: cannot read its external data ({first_line(exc)}); keep the data "
                "files beside the model"
            ) from exc
    if not model.graph.node:
        raise UserError(f"{path} has an empty graph; pass an exported model")
    if not is_sorted(model.graph):
        if not sort:
            raise UserError(
                f"{path} has nodes out of topological order (ONNX Runtime runs that, TensorRT's "
                "parser does not); write it sorted first, e.g. with 'sase-deploy fuse' or "
                "'sase-deploy convert'"
            )
        model = toposorted(model)
    check_versions(model, path)
    _run_checker(model, path)
    check_runnable(model, path)
    return model


def _check_external_data(model: onnx.ModelProto, path: Path) -> bool:
    """UserError when a tensor's external data lies outside the model's folder (`..`, an
    absolute path, a symlink out); returns whether the model has external data at all."""
    folder = path.parent.resolve()
    found = False
    for tensor in ext._get_all_tensors(model):
        if not ext.uses_external_data(tensor):
            continue
        found = True
        location = ext.ExternalDataInfo(tensor).location
        if folder not in (folder / location).resolve().parents:
            raise UserError(
                f"{path}: external data '{location}' lies outside the model's folder; "
                "move the data next to the model"
            )
    return found


def check_versions(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """UserError for an IR version or default-domain opset this installation cannot handle."""
    if model.ir_version > onnx.IR_VERSION:
        raise UserError(
            f"{path} has ONNX IR version {model.ir_version}, newer than the {onnx.IR_VERSION} "
            "this installation reads; upgrade onnx/onnxruntime or re-export with an older torch"
        )
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain not in ("", "ai.onnx"):
            continue
        if entry.version > newest:
            raise UserError(
                f"{path} uses ONNX opset {entry.version}, newer than the {newest} this "
                "installation supports; re-export with --opset 18 (or upgrade onnx/onnxruntime)"
            )
        if entry.version < MIN_OPSET:
            raise UserError(
                f"{path} uses ONNX opset {entry.version}, older than {MIN_OPSET}, the oldest "
                "sase-deploy reads; re-export with opset_version=17 (or upgrade it with "
                "onnx.version_converter.convert_version(model, 17))"
            )


def is_sorted(graph: onnx.GraphProto) -> bool:
    """Whether every node's inputs are made before it (graph inputs, initializers, earlier
    nodes' outputs; names from an enclosing graph count as made)."""
    produced = {node_output for node in graph.node for node_output in node.output}
    seen: set[str] = set()
    for node in graph.node:
        if any(name in produced and name not in seen for name in node.input if name):
            return False
        seen.update(node.output)
    return True


def _run_checker(model: onnx.ModelProto, path: Path) -> None:
    try:
        if model.ByteSize() < _PROTO_LIMIT:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(os.fspath(path))
    except onnx.checker.ValidationError as exc:
        raise UserError(
            f"{path} fails onnx.checker ({first_line(exc)}); fix or re-export the model"
        ) from exc


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def check_runnable(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """UserError for an op that is neither standard ONNX (nor ORT contrib) nor a function of
    the model: no backend here could run it."""
    local = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model.graph):
        if (node.domain, node.op_type) in local:
            continue
        known = node.domain == "com.microsoft" or (
            node.domain in RUNNABLE_DOMAINS
            and onnx.defs.has(node.op_type, "" if node.domain == "ai.onnx" else node.domain)
        )
        if not known:
            op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            raise UserError(
                f"{path}: node '{node.name or node.output[0]}' is operator {op}, which is not "
                "standard ONNX nor defined in the model; export without custom ops"
            )
