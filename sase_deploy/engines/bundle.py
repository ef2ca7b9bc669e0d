"""Bundles for targets this machine cannot build for (Jetson; SM90 without TensorRT).

A TensorRT engine only runs on the GPU model and TensorRT version that built it, so for those
targets we ship what the device needs to build its own: the ONNX (+ external data), the INT8
calibration cache if any, `build.sh` running `trtexec` with arguments checked against that
TensorRT's option set (`sase_deploy.engines.trtexec`), `manifest.json` and a README.

Which ONNX each precision ships with (`strongly_typed_graph` = the ONNX carries its precision):
  TensorRT 8.5/8.6  fp16: FP32 graph + --fp16. int8: FP32 graph + --int8 --fp16 --calib=CACHE
                    (implicit), or the Q/DQ graph + --int8 --fp16 (explicit quantization); FP16
                    wherever a layer is not INT8.
  TensorRT 10.x     as 8.x for FP32 graphs; a typed graph (FP16 casts / Q/DQ) builds with
                    --stronglyTyped, which TensorRT 11 also accepts, except on DLA where the 10.x
                    route is the precision flags.
  TensorRT 11+      no precision flags and no calibration caches: the FP16-cast or Q/DQ graph.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sase_deploy import __version__
from sase_deploy._io import atomic_path, sha256_file, write_text_atomic
from sase_deploy.artifacts import BUNDLE_MANIFEST, BundleManifest, write_record
from sase_deploy.engines.cache import link_or_copy
from sase_deploy.engines.targets import Target, check_request
from sase_deploy.engines.trtexec import (
    TIMING_CACHE,
    VERSION_GLOBS,
    Shapes,
    check_options,
    trt_flavour,
    trtexec_args,
)
from sase_deploy.errors import UserError

JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


def inspect_onnx(onnx_path: Path) -> tuple[list[str], list[str]]:
    """(external data files relative to the model, names of inputs with dynamic dims)."""
    import onnx  # lazy: only bundles need it here

    model = onnx.load(str(onnx_path), load_external_data=False)
    found: set[str] = set()

    def visit(graph: Any) -> None:
        tensors = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors += [attr.t, *attr.tensors]
                for sub in [attr.g, *attr.graphs]:
                    visit(sub)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                found.update(e.value for e in tensor.external_data if e.key == "location")

    visit(model.graph)
    for location in found:
        if Path(location).is_absolute() or ".." in Path(location).parts:
            raise UserError(f"{onnx_path}: external data {location!r} must sit beside the model")
    from sase_deploy.graph_io import real_inputs

    dynamic = [
        value.name
        for value in real_inputs(model)
        if any(d.dim_param or d.dim_value < 1 for d in value.type.tensor_type.shape.dim)
    ]
    return sorted(found), dynamic


def _resolve_version(
    target: Target, trt_version: str | None, precision: str, typed: bool
) -> tuple[str, tuple[str, ...], str]:
    """(version for the args, flavours build.sh accepts, label for humans)."""
    version = trt_version or target.tensorrt
    if version:
        return version, (trt_flavour(version),), version
    if precision == "fp32" or typed:  # the same arguments work on 10.x and 11
        return "10", ("10", "11"), "10.x or 11+"
    return "10", ("10",), "10.x (11 needs the FP16/Q/DQ graph)"


def _cache_warning(cache: Path, flavour: str) -> str | None:
    """A warning when the cache header names another TensorRT than the bundle builds with."""
    from sase_deploy.calibration.trt_cache import read_cache

    header = read_cache(cache).header  # UserError if it is not a calibration cache
    try:
        code = int(header.split("-")[1])
    except (IndexError, ValueError):
        return f"{cache.name}: no version in header {header!r}"
    # NV_TENSORRT_VERSION: major*1000+minor*100+patch in 8.x, major*10000+minor*100+patch since 10.
    if code >= 10000:
        major, minor = code // 10000, code // 100 % 100
    else:
        major, minor = code // 1000, code // 100 % 10
    found = f"{major}.{minor}"
    if major < 10 and code >= 10000:  # TensorRT 8 itself writes e.g. TRT-8502-… for 8.5.2
        native = major * 1000 + minor * 100 + code % 100
        return f"{cache.name}: header {header!r} should read TRT-{native}-… for TensorRT {found}"
    if (found if major < 10 else str(min(major, 11))) != flavour:
        return f"{cache.name}: header {header!r} is from TensorRT {found}, not {flavour}"
    return None


def _fill(asset: str, **tokens: str) -> str:
    """The packaged template `asset` with each @KEY@ replaced by tokens[KEY]."""
    text = resources.files("sase_deploy").joinpath("assets", asset).read_text("utf-8")
    for key, value in tokens.items():
        text = text.replace(f"@{key}@", value)
    return text


def _build_script(
    target: Target, engine: str, args: list[str], label: str, accepts: tuple[str, ...]
) -> str:
    def plain(text: str) -> str:  # lands in comments and double-quoted strings
        return re.sub(r"[^\w .,:/()+-]", "_", text)

    return _fill(
        "bundle_build.sh",
        ENGINE=plain(engine),
        TITLE=plain(target.title),
        SM=target.sm,
        LABEL=plain(label),
        VERSION=__version__,
        JETSON_TRTEXEC=JETSON_TRTEXEC,
        ACCEPTED="|".join(VERSION_GLOBS[f] for f in accepts),
        ARGS="\n".join(f"  {shlex.quote(arg)} \\" for arg in args),
    )


def _graph_note(args: list[str], precision: str) -> str:
    if "--calib" in {a.split("=", 1)[0] for a in args}:
        return "FP32 graph + calibration cache (implicit INT8; tensors without a scale stay float)"
    if "--int8" in args:
        return "INT8 Q/DQ graph (explicit quantization)"
    if "--fp16" in args:
        return "FP32 graph; --fp16 lets TensorRT run layers in FP16"
    if precision == "fp32":
        return "FP32 graph"
    return f"{precision} graph, strongly typed: precision comes from its casts / Q/DQ"


def _readme(target: Target, files: dict[str, Any], label: str, cli: str, notes: list[str]) -> str:
    cache = files["calibration_cache"]
    contents = [
        f"- `{files['onnx']}`: {files['graph']}",
        *[f"- `{name}`: external weights of the ONNX" for name in files["external_data"]],
        *([f"- `{cache}`: INT8 calibration cache"] if cache else []),
        "- `build.sh`: runs trtexec; `manifest.json`: contents, arguments, target facts",
    ]
    return _fill(
        "bundle_README.md",
        ENGINE=files["engine"],
        TITLE=target.title,
        SM=target.sm,
        LABEL=label,
        JETPACK=f" (JetPack {target.jetpack})" if target.jetpack else "",
        JETSON_TRTEXEC=JETSON_TRTEXEC,
        CLI=cli,
        CONTENTS="\n".join(contents),
        NOTES="\n".join(f"- {note}" for note in notes if note) or "- none",
    )


def _cli_line(onnx: str, target: Target, precision: str, dla_core: int | None,
              calibration: bool, shapes: Shapes | None, workspace_mb: int) -> str:  # fmt: skip
    """The `sase-deploy build` call that makes the same engine on the device."""
    parts = ["sase-deploy", "build", onnx, "--target", target.name, "--precision", precision]
    parts += ["--backend", "tensorrt", "--workspace", str(workspace_mb)]
    parts += ["--dla-core", str(dla_core)] if dla_core is not None else []
    parts += ["--calibration", "."] if calibration else []
    if shapes:  # build takes one dynamic batch range for every input
        low, opt, high = next(iter(shapes.values()))
        parts += ["--batch", f"{low[0]}:{opt[0]}:{high[0]}"]
    return shlex.join([*parts, "-o", "engines"])


def _warnings(dynamic: list[str], shapes: Shapes | None, dla_core: int | None) -> list[str]:
    found = [
        f"input {name!r} is dynamic but has no shapes: trtexec uses 1 for its free dims"
        for name in dynamic
        if name not in (shapes or {})
    ]
    if dla_core is not None and any(d[0] != d[2] for d in (shapes or {}).values()):
        found.append("DLA wants static shapes (min = max): dynamic layers may run on the GPU")
    return found


@dataclass(frozen=True)
class _Contents:
    """What a bundle holds, settled (and checked) before anything is written.

    files: shipped file names and the graph note, as manifest.json records them. sources:
    shipped name -> the file to copy. args: the trtexec arguments. label: the TensorRT
    version(s) for humans; accepts: the TRTEXEC_OPTIONS keys build.sh accepts. cli: the
    equivalent `sase-deploy build` call. warnings: for the README, the manifest and the caller.
    """

    files: dict[str, Any]
    sources: dict[str, Path]
    args: list[str]
    label: str
    accepts: tuple[str, ...]
    cli: str
    warnings: list[str]


def _shipped_cache(
    onnx_path: Path, calib_cache: Path | None, typed: bool
) -> tuple[Path | None, list[str]]:
    """(calibration cache to ship, warnings): none for a typed graph, whose Q/DQ carry their own
    scales. UserError when the ONNX or the cache is missing."""
    cache_path = Path(calib_cache) if calib_cache else None
    for path in (onnx_path, cache_path):
        if path is not None and not path.is_file():
            raise UserError(f"{path}: no such file")
    if cache_path and typed:
        return None, [f"{cache_path.name} not shipped: the typed graph carries its own scales"]
    return cache_path, []


def _contents(
    target: Target,
    onnx_path: Path,
    precision: str,
    calib_cache: Path | None,
    shapes: Shapes | None,
    workspace_mb: int,
    dla_core: int | None,
    trt_version: str | None,
    typed: bool,
) -> _Contents:
    """The files, trtexec arguments and warnings of a bundle (see `write_bundle`'s arguments;
    `typed` is its `strongly_typed_graph`)."""
    cache_path, warnings = _shipped_cache(onnx_path, calib_cache, typed)
    version, accepts, label = _resolve_version(target, trt_version, precision, typed)
    engine = f"{onnx_path.stem}.{target.name}.{precision}.engine"
    cache = cache_path.name if cache_path else None
    args = trtexec_args(version, onnx_path.name, engine, precision, shapes, workspace_mb, dla_core,
                        cache, TIMING_CACHE, typed)  # fmt: skip
    for flavour in accepts[1:]:  # a 10-and-11 bundle must suit both option sets
        check_options(flavour, args)
    external, dynamic = inspect_onnx(onnx_path)
    warnings += _warnings(dynamic, shapes, dla_core)
    if cache_path and (note := _cache_warning(cache_path, accepts[0])):
        warnings.append(note)
    files = {"onnx": onnx_path.name, "external_data": external, "calibration_cache": cache,
             "engine": engine, "graph": _graph_note(args, precision)}  # fmt: skip
    cli = _cli_line(onnx_path.name, target, precision, dla_core, bool(cache), shapes, workspace_mb)
    sources = {name: onnx_path.parent / name for name in [onnx_path.name, *external]}
    sources.update({cache: cache_path} if cache and cache_path else {})
    return _Contents(files, sources, args, label, accepts, cli, warnings)


def _record(
    target: Target,
    precision: str,
    typed: bool,
    contents: _Contents,
    manifest: Mapping[str, Any] | None,
) -> BundleManifest:
    """The bundle's manifest.json, less the checksums `_write` adds."""
    return BundleManifest(
        sase_deploy=__version__,
        target=target.to_dict(),
        tensorrt={
            "version": contents.label,
            "accepts": [VERSION_GLOBS[f] for f in contents.accepts],
        },
        precision=precision,
        strongly_typed_graph=typed,
        files=contents.files,
        trtexec_args=contents.args,
        sase_deploy_command=contents.cli,
        warnings=contents.warnings,
        source=json.loads(json.dumps(dict(manifest or {}), default=str)),  # Paths -> str
    )


def write_bundle(
    out_dir: Path,
    target: Target,
    onnx_path: Path,
    precision: str,
    *,
    calib_cache: Path | None = None,
    shapes: Shapes | None = None,
    workspace_mb: int | None = None,
    dla_core: int | None = None,
    manifest: Mapping[str, Any] | None = None,
    trt_version: str | None = None,
    strongly_typed_graph: bool = False,
    link_onnx: bool = False,
) -> dict[str, Any]:
    """Write a bundle that builds the engine on the device, every file atomically.

    Args:
        out_dir: bundle folder (created; files of the same names are replaced).
        target: the device; its `tensorrt` picks the trtexec options (None: 10.x, or 10.x and
            11 alike when the graph is FP32 or typed).
        onnx_path: the ONNX to ship, chosen for the precision (see the module docstring).
        precision: "fp32", "fp16" or "int8".
        calib_cache: calibration cache for implicit INT8 from the FP32 graph (TensorRT 8.5-10.x);
            not shipped (with a warning) when the graph is typed: Q/DQ carry their own scales.
        shapes: input name -> (min, opt, max) dims for dynamic inputs, or None.
        workspace_mb: builder workspace in MiB; None for the target's default.
        dla_core: DLA core to build for, or None for the GPU.
        manifest: the ONNX's own facts (e.g. the build manifest), kept under "source".
        trt_version: override the target's TensorRT version, e.g. "10.7".
        strongly_typed_graph: the ONNX carries its precision (FP16 casts or INT8 Q/DQ).
        link_onnx: the ONNX (and its external data) was made by sase-deploy beside the bundle,
            so the bundle may hold a hard link to it rather than a second copy (a copy where
            no link can be made). A user's file is always copied: they may rewrite it in place.

    Returns:
        What was written: file names relative to out_dir, the trtexec args, warnings.

    Raises:
        UserError: missing inputs or a request the target or its TensorRT cannot build.
    """
    check_request(target, precision, dla_core)
    workspace = workspace_mb or target.default_workspace_mb
    found = _contents(target, Path(onnx_path), precision, calib_cache, shapes, workspace,
                      dla_core, trt_version, strongly_typed_graph)  # fmt: skip
    label, notes = found.label, [*found.warnings, target.notes]
    texts = {
        "build.sh": _build_script(target, found.files["engine"], found.args, label, found.accepts),
        "README.md": _readme(target, found.files, label, found.cli, notes),
    }
    record = _record(target, precision, strongly_typed_graph, found, manifest)
    graph = {found.files["onnx"], *found.files["external_data"]}
    linked = graph if link_onnx else set()
    written = _write(Path(out_dir), found.sources, texts, record, linked)
    return {"out_dir": str(out_dir), "files": written, **found.files, "build_script": "build.sh",
            "manifest": BUNDLE_MANIFEST, "readme": "README.md", "tensorrt": label,
            "trtexec_args": found.args, "warnings": found.warnings}  # fmt: skip


def _write(
    out_dir: Path,
    sources: dict[str, Path],
    texts: dict[str, str],
    record: BundleManifest,
    linked: set[str],
) -> list[str]:
    """Copy `sources` (hard-link those named in `linked`), write `texts` and the manifest (with
    checksums) into out_dir, atomically."""
    for name, src in sources.items():
        if name in linked:
            link_or_copy(src, out_dir / name)
            continue
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(src, tmp)
    for name, text in texts.items():
        write_text_atomic(out_dir / name, text)
    script = out_dir / "build.sh"
    script.chmod(script.stat().st_mode | 0o111)  # after the rename: atomic_path resets modes
    shipped = [*sources, *texts]
    record.files_sha256 = {name: sha256_file(out_dir / name) for name in shipped}
    write_record(out_dir / BUNDLE_MANIFEST, record)
    return [*shipped, BUNDLE_MANIFEST]
