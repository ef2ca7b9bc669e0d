"""trtexec arguments per TensorRT version: the option set each version's `trtexec --help`
documents (`TRTEXEC_OPTIONS`) and `trtexec_args`, which builds the command line for one engine and
checks every option it emits against that set. Bundles (`sase_deploy.engines.bundle`, whose
docstring tabulates the precision flags per version) put these arguments in their build.sh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sase_deploy.errors import UserError
from sase_deploy.vocabulary import PRECISIONS

Shapes = Mapping[str, Sequence[Sequence[int]]]  # input name -> (min, opt, max) dims

# trtexec options each TensorRT documents in `trtexec --help`, limited to the ones this module
# emits or that changed between versions. Read from samples/common/sampleOptions.cpp of
# NVIDIA/TensorRT at tags 8.5.2, v8.6.1, v10.3.0, v10.16, v11.0. Not listed on purpose:
# --explicitBatch (8.x parses it as a no-op, undocumented; gone in 10), --nvtxMode (same).
# --memPoolSize=workspace:N (MiB) exists since 8.4, which deprecated --workspace=N.
# fmt: off
_COMMON = frozenset({
    "--onnx", "--saveEngine", "--memPoolSize", "--minShapes", "--optShapes", "--maxShapes",
    "--timingCacheFile", "--useDLACore", "--allowGPUFallback", "--verbose",
})
# fmt: on
TRTEXEC_OPTIONS: dict[str, frozenset[str]] = {
    "8.5": _COMMON | {"--workspace", "--fp16", "--int8", "--calib", "--buildOnly"},
    "8.6": _COMMON | {"--workspace", "--fp16", "--int8", "--calib", "--skipInference"},
    "10": _COMMON | {"--fp16", "--int8", "--calib", "--skipInference", "--stronglyTyped"},
    # 11 removed weak typing: no --fp16/--int8/--calib; --stronglyTyped is a documented no-op.
    "11": _COMMON | {"--skipInference", "--stronglyTyped"},
}
# The TensorRT versions (shell globs) each option set above serves.
VERSION_GLOBS = {"8.5": "8.5", "8.6": "8.6", "10": "10.*", "11": "1[1-9].*"}
TIMING_CACHE = "timing.cache"


def trt_flavour(trt_version: str) -> str:
    """The key of TRTEXEC_OPTIONS for a TensorRT version: "8.5.2" -> "8.5", "10.3" -> "10".

    Args:
        trt_version: "MAJOR.MINOR[.PATCH…]" or "MAJOR".

    Raises:
        UserError: a version older than 8.5, 9.x, or not a version.
    """
    try:
        parts = [int(p) for p in trt_version.strip().split(".")[:2]]
    except ValueError as exc:
        raise UserError(f"TensorRT version {trt_version!r} is not like 10.3") from exc
    major, minor = [*parts, 0][:2]
    if major == 8 and minor in (5, 6):
        return f"8.{minor}"
    if major == 10:
        return "10"
    if major >= 11:
        return "11"  # newest known option set; revisit when 12 ships
    raise UserError(
        f"TensorRT {trt_version} is not supported for bundles; use 8.5, 8.6, 10.x or 11+"
    )


def _shape_args(shapes: Shapes) -> list[str]:
    """--minShapes/--optShapes/--maxShapes, each "name:1x3x224x224[,name2:…]"."""
    specs: list[list[str]] = [[], [], []]
    for name, dims in shapes.items():
        if len(dims) != 3 or len({len(d) for d in dims}) != 1:
            raise UserError(f"shapes for {name!r}: give (min, opt, max) of one rank")
        if min(dims[0]) < 1 or not all(a <= b <= c for a, b, c in zip(*dims, strict=True)):
            raise UserError(f"shapes for {name!r}: need 1 <= min <= opt <= max per dimension")
        if "," in name or "'" in name:
            raise UserError(f"input name {name!r}: trtexec shape specs cannot carry ',' or \"'\"")
        quoted = f"'{name}'" if ":" in name else name  # trtexec splits name:dims on the last ':'
        for spec, shape in zip(specs, dims, strict=True):
            spec.append(f"{quoted}:{'x'.join(str(int(d)) for d in shape)}")
    flags = ("--minShapes", "--optShapes", "--maxShapes")
    return [f"{flag}={','.join(spec)}" for flag, spec in zip(flags, specs, strict=True)]


def _precision_args(
    flavour: str, precision: str, on_dla: bool, calib_cache: str | None, typed: bool
) -> list[str]:
    if precision not in PRECISIONS:
        raise UserError(f"bundles build {', '.join(PRECISIONS)}, not {precision}")
    if calib_cache and (precision != "int8" or typed or flavour == "11"):
        raise UserError(
            "a calibration cache goes with the FP32 graph for implicit INT8 on TensorRT 8.5-10.x "
            "only; for a Q/DQ graph or TensorRT 11 ship no cache"
        )
    if flavour == "11":
        if precision != "fp32" and not typed:
            raise UserError(
                f"TensorRT 11 takes {precision} from the graph; ship the FP16 ONNX "
                "(sase-deploy convert) or the Q/DQ ONNX (sase-deploy calibrate)"
            )
        return []  # every network is strongly typed
    if typed and flavour == "10" and not on_dla:
        return ["--stronglyTyped"]  # the graph's own types, as TensorRT 11 and TensorRT-RTX
    if precision == "fp32":
        return []
    if precision == "fp16":
        return ["--fp16"]
    # INT8 with --fp16: what is not quantised may run in FP16 (the weakly typed builder picks
    # per layer), as a strongly typed INT8 graph computes it (`calibrate --high-precision`)
    if typed:
        return ["--int8", "--fp16"]  # Q/DQ in the graph: explicit quantization, no cache
    if not calib_cache:
        raise UserError(
            "INT8 from the FP32 graph needs a calibration cache (sase-deploy calibrate writes "
            "NAME.calib.cache); or ship the Q/DQ ONNX"
        )
    return ["--int8", "--fp16", f"--calib={calib_cache}"]


def trtexec_args(
    trt_version: str,
    onnx_name: str,
    engine_name: str,
    precision: str,
    shapes: Shapes | None = None,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    calib_cache: str | None = None,
    timing_cache: str | None = TIMING_CACHE,
    strongly_typed_graph: bool = False,
) -> list[str]:
    """trtexec arguments (without the program name) that build `engine_name` from `onnx_name`.

    Args:
        trt_version: TensorRT that will run trtexec, e.g. "8.5", "10.3", "11.0".
        onnx_name: ONNX path as trtexec will see it (relative to the bundle).
        engine_name: engine path to write.
        precision: "fp32", "fp16" or "int8".
        shapes: input name -> (min, opt, max) dims for dynamic inputs; None for static models.
        workspace_mb: builder workspace limit in MiB.
        dla_core: DLA core index (adds --allowGPUFallback), or None for the GPU.
        calib_cache: calibration cache path for implicit INT8 on the FP32 graph (8.5-10.x).
        timing_cache: timing cache path (created by trtexec, reused on rebuilds), or None.
        strongly_typed_graph: the ONNX carries its precision (FP16 casts or INT8 Q/DQ).

    Raises:
        UserError: a request this TensorRT cannot build (see `_precision_args`).
        ValueError: an emitted option that this TensorRT's trtexec lacks (a bug here).
    """
    flavour = trt_flavour(trt_version)
    if dla_core is not None and precision not in ("fp16", "int8"):
        raise UserError("DLA runs fp16 or int8 only; drop --dla-core or change --precision")
    args = [f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    args.append(f"--memPoolSize=workspace:{int(workspace_mb)}")  # bare number = MiB in 8.5..11
    args += _shape_args(shapes) if shapes else []
    args += _precision_args(flavour, precision, dla_core is not None, calib_cache,
                            strongly_typed_graph)  # fmt: skip
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]  # SE gates need the GPU
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    args.append("--buildOnly" if flavour == "8.5" else "--skipInference")
    check_options(flavour, args)
    return args


def check_options(flavour: str, args: list[str]) -> None:
    """ValueError (a bug in this module, not bad input) when `args` use an option that
    trtexec `flavour` does not document."""
    unknown = sorted({a.split("=", 1)[0] for a in args} - TRTEXEC_OPTIONS[flavour])
    if unknown:
        raise ValueError(f"trtexec {flavour} has no {', '.join(unknown)} (engines/trtexec.py bug)")
