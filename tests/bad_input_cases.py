"""The bad-input matrix of test_bad_input.py: one row per case, P(id, make, says[, rtx]).

`make` builds the case's arguments from a `Ctx` (bad_inputs.py: the shared inputs, and broken
ones made in the case's own folder); `says` is a fragment of its one stderr line ({tmp}: the
case's folder), as a `Says` where it is click's usage error form; `rtx=True`: it needs an engine
or the TensorRT-RTX builder (marked `rtx`: conftest skips it where TensorRT-RTX is absent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bad_inputs import IS_ROOT, Ctx

Case = Callable[[Ctx], list[str]]
NPZ_SHAPE = (16, 1, 8, 8)


def _x(shape: tuple[int, ...] = NPZ_SHAPE, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# how each command is called


def _export(c: Ctx, *extra: str) -> list[str]:
    return ["export", "se_resnet_digits", "-o", c.out("m.onnx"), *extra]


def _calibrate(c: Ctx, model: str | Path, data: str | Path, *extra: str) -> list[str]:
    return [
        "calibrate",
        str(model),
        "--data",
        str(data),
        "-o",
        c.out(""),
        "--samples",
        "32",
        *extra,
    ]


def _convert(c: Ctx, model: str | Path, *extra: str) -> list[str]:
    return ["convert", str(model), "-o", c.out("m.fp16.onnx"), *extra]


def _build(c: Ctx, model: str | Path, *extra: str) -> list[str]:
    return ["build", str(model), "--target", "l4", "-o", c.out(""), *extra]


def _compare(c: Ctx, *candidates: str | Path, ref: str | None = None, extra=()) -> list[str]:
    quick = ["--samples", "16", "--runs", "1", "--warmup", "0", "--batch", "1"]
    return ["compare", ref or str(c.a.dyn), *map(str, candidates), *quick,
            "--report", c.out("r.json"), *extra]  # fmt: skip


def _triton(c: Ctx, *artifacts: str | Path, extra=()) -> list[str]:
    return ["triton", *map(str, artifacts), "-o", c.out("repo"), *extra]


def _deploy(c: Ctx, *extra: str) -> list[str]:
    return ["deploy", "-o", c.out("d"), "--runs", "1", "--warmup", "0", *extra]


def _config(c: Ctx, text: str) -> str:
    return c.file("deploy.toml", text.encode())


@dataclass(frozen=True)
class Says:
    """What a case's one stderr line must hold: `fragment` ({tmp}: the case's folder), and
    whether it is click's usage error form (a bad flag value, an unknown option or argument)
    rather than the command's own message."""

    fragment: str
    usage: bool = False


def P(id: str, make: Case, says: str | Says, rtx: bool = False) -> Any:
    """A case: `id`; `make` builds its arguments; `says`: its message; `rtx`: it needs an engine
    or the TensorRT-RTX builder (conftest skips it where TensorRT-RTX is absent)."""
    marks = [pytest.mark.rtx] if rtx else []
    return pytest.param(make, says if isinstance(says, Says) else Says(says), id=id, marks=marks)


def root_or_user(as_root: str, as_user: Says) -> Says:
    """An unreadable input is a folder for root (root reads any file), mode 000 for a user."""
    return Says(as_root) if IS_ROOT else as_user


def click_unreadable(param: str, name: str) -> Says:
    """click's check of a file argument: 'is a directory' for root, 'is not readable' else."""
    return Says(f"Invalid value for {param}: File '{{tmp}}/{name}' is", usage=True)


CLICK_NOT_READABLE = Says("{tmp}/m.onnx' is not readable", usage=True)


# --------------------------------------------------------------------------------------------
# the matrix

CASES = [
    # ---- export: checkpoints, shapes, names, output place
    P("export-checkpoint-missing", lambda c: _export(c, "-c", c.missing("nope.pt")),
      "checkpoint '{tmp}/nope.pt' does not exist; check the -c path"),
    P("export-checkpoint-unreadable", lambda c: _export(c, "-c", c.unreadable("w.pt", c.a.ckpt)),
      click_unreadable("'-c' / '--checkpoint'", "w.pt")),
    P("export-checkpoint-empty", lambda c: _export(c, "-c", c.file("w.pt")),
      "w.pt' is empty; re-save it with torch.save"),
    P("export-checkpoint-truncated", lambda c: _export(c, "-c", c.truncated(c.a.ckpt, "w.pt")),
      "w.pt' is not a readable PyTorch checkpoint"),
    P("export-checkpoint-garbage", lambda c: _export(c, "-c", c.garbage("w.pt")),
      "w.pt' is not a readable PyTorch checkpoint (UnpicklingError"),
    P("export-checkpoint-other-architecture", lambda c: _export(c, "-c", str(c.a.other_ckpt)),
      "checkpoint does not fit model 'ResNet'"),
    P("export-checkpoint-key-missing",
      lambda c: _export(c, "-c", str(c.a.ckpt), "--checkpoint-key", "nope"),
      "--checkpoint-key 'nope' given but the checkpoint is a bare state dict"),
    P("export-input-shape-malformed", lambda c: _export(c, "--input-shape", "1xAx8x8"),
      "bad --input-shape '1xAx8x8'"),
    P("export-input-shape-zero", lambda c: _export(c, "--input-shape", "0x1x8x8"),
      "bad --input-shape '0x1x8x8'"),
    P("export-input-shape-wrong-rank", lambda c: _export(c, "--input-shape", "1x8x8"),
      "model rejected input shape 1x8x8: expected 4D input"),
    P("export-input-shape-wrong-channels", lambda c: _export(c, "--input-shape", "1x3x8x8"),
      "model rejected input shape 1x3x8x8"),
    P("export-input-shape-too-many",
      lambda c: _export(c, "--input-shape", "1x1x8x8", "--input-shape", "1x1x8x8"),
      "'se_resnet_digits' takes 1 inputs (x 1x1x8x8) but 2 --input-shape were given"),
    P("export-unknown-model", lambda c: ["export", "no_such_model", "-o", c.out("m.onnx")],
      "unknown model 'no_such_model'"),
    P("export-model-arg-malformed", lambda c: _export(c, "--model-arg", "1x"),
      "bad --model-arg '1x'"),
    P("export-model-arg-unknown", lambda c: _export(c, "--model-arg", "bogus=1"),
      "model 'se_resnet_digits' rejected --model-arg {'bogus': 1}"),
    P("export-opset-too-new", lambda c: _export(c, "--opset", "99"),
      "opset 99 is not supported; pass --opset between"),
    P("export-unknown-exporter", lambda c: _export(c, "--exporter", "magic"),
      Says("Invalid value for '--exporter': 'magic' is not one of", usage=True)),
    P("export-output-unwritable",
      lambda c: ["export", "se_resnet_digits", "-o", "/proc/nope/x.onnx"],
      "cannot create folder /proc/nope"),
    P("export-output-is-folder",
      lambda c: ["export", "se_resnet_digits", "-o", c.folder("out/m.onnx")],
      Says("Invalid value for '-o' / '--output'", usage=True)),
    # ---- fuse
    P("fuse-onnx-missing", lambda c: ["fuse", c.missing("m.onnx"), "-o", c.out("f.onnx")],
      "no such ONNX file: {tmp}/m.onnx"),
    P("fuse-onnx-unreadable",
      lambda c: ["fuse", c.unreadable("m.onnx", c.a.dyn), "-o", c.out("f.onnx")],
      click_unreadable("'MODEL'", "m.onnx")),
    P("fuse-onnx-empty", lambda c: ["fuse", c.file("m.onnx"), "-o", c.out("f.onnx")],
      "m.onnx has an empty graph"),
    P("fuse-onnx-truncated",
      lambda c: ["fuse", c.truncated(c.a.dyn, "m.onnx"), "-o", c.out("f.onnx")],
      "m.onnx is not a readable ONNX model"),
    P("fuse-onnx-garbage", lambda c: ["fuse", c.garbage("m.onnx"), "-o", c.out("f.onnx")],
      "m.onnx is not a readable ONNX model"),
    P("fuse-custom-op", lambda c: ["fuse", c.custom_op(), "-o", c.out("f.onnx")],
      "custom.onnx: node 'logits' is operator com.example::Mystery"),
    P("fuse-opset-too-new", lambda c: ["fuse", c.opset99(), "-o", c.out("f.onnx")],
      "opset99.onnx uses ONNX opset 99, newer than"),
    P("fuse-opset-too-old", lambda c: ["fuse", c.opset11(), "-o", c.out("f.onnx")],
      "opset11.onnx uses ONNX opset 11, older than"),
    P("fuse-ir-too-new", lambda c: ["fuse", c.ir_too_new(), "-o", c.out("f.onnx")],
      "ir_new.onnx has ONNX IR version"),
    P("fuse-checker-fails", lambda c: ["fuse", c.dangling(), "-o", c.out("f.onnx")],
      "dangling.onnx fails onnx.checker"),
    P("fuse-external-data-dotdot",
      lambda c: ["fuse", c.external_outside(False), "-o", c.out("f.onnx")],
      "external data '../weights.bin' lies outside the model's folder"),
    P("fuse-external-data-absolute",
      lambda c: ["fuse", c.external_outside(True), "-o", c.out("f.onnx")],
      "weights.bin' lies outside the model's folder"),
    P("fuse-external-data-missing", lambda c: ["fuse", c.external_missing(), "-o", c.out("f.onnx")],
      "m.onnx: cannot read its external data"),
    P("fuse-output-unwritable", lambda c: ["fuse", str(c.a.dyn), "-o", "/proc/nope/x.onnx"],
      "cannot write /proc/nope/x.onnx"),
    P("fuse-output-not-onnx", lambda c: ["fuse", str(c.a.dyn), "-o", c.out("f.txt")],
      "output must end in .onnx, got '{tmp}/out/f.txt'"),
    P("fuse-report-unwritable",
      lambda c: ["fuse", str(c.a.dyn), "-o", c.out("f.onnx"), "--report", "/proc/nope/r.json"],
      "cannot write /proc/nope/r.json"),
    P("fuse-tolerance-negative",
      lambda c: ["fuse", str(c.a.dyn), "-o", c.out("f.onnx"), "--tolerance", "-1"],
      "--tolerance must be positive, got -1.0"),
    # ---- calibrate: the model
    P("calibrate-onnx-missing", lambda c: _calibrate(c, c.missing("m.onnx"), c.a.calib),
      "no such ONNX file: {tmp}/m.onnx"),
    P("calibrate-onnx-unreadable",
      lambda c: _calibrate(c, c.unreadable("m.onnx", c.a.dyn), c.a.calib),
      click_unreadable("'IN.onnx'", "m.onnx")),
    P("calibrate-onnx-empty", lambda c: _calibrate(c, c.file("m.onnx"), c.a.calib),
      "m.onnx has an empty graph"),
    P("calibrate-onnx-truncated",
      lambda c: _calibrate(c, c.truncated(c.a.dyn, "m.onnx"), c.a.calib),
      "m.onnx is not a readable ONNX model"),
    P("calibrate-onnx-garbage", lambda c: _calibrate(c, c.garbage("m.onnx"), c.a.calib),
      "m.onnx is not a readable ONNX model"),
    P("calibrate-custom-op", lambda c: _calibrate(c, c.custom_op(), c.a.calib),
      "custom.onnx: node 'logits' is operator com.example::Mystery"),
    P("calibrate-opset-too-new", lambda c: _calibrate(c, c.opset99(), c.a.calib),
      "opset99.onnx uses ONNX opset 99, newer than"),
    P("calibrate-checker-fails", lambda c: _calibrate(c, c.dangling(), c.a.calib),
      "dangling.onnx fails onnx.checker"),
    P("calibrate-external-data-dotdot",
      lambda c: _calibrate(c, c.external_outside(False), c.a.calib),
      "external data '../weights.bin' lies outside the model's folder"),
    P("calibrate-external-data-absolute",
      lambda c: _calibrate(c, c.external_outside(True), c.a.calib),
      "weights.bin' lies outside the model's folder"),
    # ---- calibrate: the data
    P("calibrate-data-missing", lambda c: _calibrate(c, c.a.dyn, c.missing("x.npz")),
      "calibration data {tmp}/x.npz does not exist"),
    P("calibrate-data-unreadable",
      lambda c: _calibrate(c, c.a.dyn, c.unreadable("x.npz", c.a.calib)),
      root_or_user("calibration folder {tmp}/x.npz holds no images", Says("{tmp}/x.npz"))),
    P("calibrate-data-empty", lambda c: _calibrate(c, c.a.dyn, c.file("x.npz")),
      "cannot read calibration arrays {tmp}/x.npz"),
    P("calibrate-data-truncated", lambda c: _calibrate(c, c.a.dyn, c.truncated(c.a.calib, "x.npz")),
      "cannot read calibration arrays {tmp}/x.npz"),
    P("calibrate-data-garbage", lambda c: _calibrate(c, c.a.dyn, c.garbage("x.npz")),
      "x.npz: not a .npy/.npz file"),
    P("calibrate-data-garbage-npy", lambda c: _calibrate(c, c.a.dyn, c.garbage("x.npy")),
      "x.npy: not a .npy/.npz file"),
    P("calibrate-data-wrong-shape",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((16, 1, 4, 4)))),
      "samples of shape 1x4x4 do not fit model input 'x' (expects N x 1x8x8)"),
    P("calibrate-data-wrong-channels",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((16, 3, 8, 8)))),
      "samples of shape 3x8x8 do not fit model input 'x' (expects N x 1x8x8)"),
    P("calibrate-data-wrong-dtype-str",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=np.full(NPZ_SHAPE, "a"))),
      "array for input 'x' has dtype <U1"),
    P("calibrate-data-wrong-dtype-complex",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x(dtype="complex64"))),
      "array for input 'x' has dtype complex64"),
    P("calibrate-data-no-samples",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((0, 1, 8, 8)))),
      "x.npz: holds no samples"),
    P("calibrate-data-ambiguous-arrays",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", a=_x(), b=_x())),
      "no array for model input 'x' (found ['a', 'b'])"),
    P("calibrate-data-labels-wrong-count",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x(), y=np.zeros(3))),
      "labels 'y' of shape (3,) for 16 samples"),
    P("calibrate-data-empty-folder",
      lambda c: _calibrate(c, c.a.dyn, c.folder("images"), "--model", "se_resnet_digits"),
      "calibration folder {tmp}/images holds no images"),
    P("calibrate-data-unknown-format",
      lambda c: _calibrate(c, c.a.dyn, c.file("x.csv", b"1,2,3\n")),
      "x.csv: expected a folder of images, .npy, .npz or 'latent'"),
    P("calibrate-fewer-samples-than-fixed-batch",
      lambda c: _calibrate(c, c.a.static, c.npz("x.npz", x=_x((3, 1, 8, 8)))),
      "3 samples, fewer than the model's fixed batch of 4"),
    P("calibrate-samples-zero", lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--samples", "0"),
      "--batch and --samples must be positive integers"),
    P("calibrate-samples-negative", lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--samples", "-5"),
      "--batch and --samples must be positive integers"),
    P("calibrate-batch-zero", lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--batch", "0"),
      "--batch and --samples must be positive integers"),
    P("calibrate-percentile-out-of-range",
      lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--percentile", "150"),
      "--percentile 150: give a value in (0, 100]"),
    P("calibrate-unknown-model",
      lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--model", "no_such_model"),
      "unknown model 'no_such_model'"),
    P("calibrate-unknown-method", lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--method", "magic"),
      Says("Invalid value for '--method': 'magic' is not one of", usage=True)),
    P("calibrate-output-unwritable",
      lambda c: ["calibrate", str(c.a.dyn), "--data", str(c.a.calib), "-o", "/proc/nope"],
      "cannot write /proc/nope/se_resnet_digits.int8.onnx"),
    # ---- convert
    P("convert-onnx-missing", lambda c: _convert(c, c.missing("m.onnx")),
      "no such ONNX file: {tmp}/m.onnx"),
    P("convert-onnx-unreadable", lambda c: _convert(c, c.unreadable("m.onnx", c.a.dyn)),
      click_unreadable("'IN.onnx'", "m.onnx")),
    P("convert-onnx-empty", lambda c: _convert(c, c.file("m.onnx")), "m.onnx has an empty graph"),
    P("convert-onnx-truncated", lambda c: _convert(c, c.truncated(c.a.dyn, "m.onnx")),
      "m.onnx is not a readable ONNX model"),
    P("convert-onnx-garbage", lambda c: _convert(c, c.garbage("m.onnx")),
      "m.onnx is not a readable ONNX model"),
    P("convert-custom-op", lambda c: _convert(c, c.custom_op()),
      "custom.onnx: node 'logits' is operator com.example::Mystery"),
    P("convert-opset-too-new", lambda c: _convert(c, c.opset99()),
      "opset99.onnx uses ONNX opset 99, newer than"),
    P("convert-opset-too-old", lambda c: _convert(c, c.opset11()),
      "opset11.onnx uses ONNX opset 11, older than"),
    P("convert-external-data-dotdot", lambda c: _convert(c, c.external_outside(False)),
      "external data '../weights.bin' lies outside the model's folder"),
    P("convert-external-data-absolute", lambda c: _convert(c, c.external_outside(True)),
      "weights.bin' lies outside the model's folder"),
    P("convert-unknown-precision", lambda c: _convert(c, c.a.dyn, "--precision", "int4"),
      Says("Invalid value for '--precision': 'int4'", usage=True)),
    P("convert-output-unwritable", lambda c: ["convert", str(c.a.dyn), "-o", "/proc/nope/x.onnx"],
      "cannot write /proc/nope/x.onnx"),
    P("convert-calib-json-garbage",
      lambda c: _convert(c, c.a.dyn, "--calib-json", c.garbage("m.calib.json")),
      "{tmp}/m.calib.json"),  # its wording is being reworked (calibration records)
    P("convert-calib-json-missing",
      lambda c: _convert(c, c.a.dyn, "--calib-json", c.missing("m.calib.json")),
      "cannot read calibration json {tmp}/m.calib.json"),
    P("convert-data-wrong-channels",
      lambda c: _convert(c, c.a.dyn, "--data", c.npz("x.npz", x=_x((16, 3, 8, 8)))),
      "samples of shape 3x8x8 do not fit model input 'x'"),
    P("convert-auto-keep-without-data", lambda c: _convert(c, c.a.dyn, "--auto-keep", "1"),
      "--auto-keep measures accuracy on data: pass --data too"),
    # ---- build
    P("build-onnx-missing", lambda c: _build(c, c.missing("m.onnx")),
      "no such ONNX file: {tmp}/m.onnx"),
    P("build-onnx-unreadable", lambda c: _build(c, c.unreadable("m.onnx", c.a.dyn)),
      click_unreadable("'IN.onnx'", "m.onnx")),
    P("build-onnx-empty", lambda c: _build(c, c.file("m.onnx")), "m.onnx has an empty graph"),
    P("build-onnx-truncated", lambda c: _build(c, c.truncated(c.a.dyn, "m.onnx")),
      "m.onnx is not a readable ONNX model"),
    P("build-onnx-garbage", lambda c: _build(c, c.garbage("m.onnx")),
      "m.onnx is not a readable ONNX model"),
    P("build-custom-op", lambda c: _build(c, c.custom_op()),
      "custom.onnx: node 'logits' is operator com.example::Mystery"),
    P("build-opset-too-new", lambda c: _build(c, c.opset99()),
      "opset99.onnx uses ONNX opset 99, newer than"),
    P("build-unsorted", lambda c: _build(c, c.unsorted()),
      "unsorted.onnx has nodes out of topological order"),
    P("build-checker-fails", lambda c: _build(c, c.dangling()), "dangling.onnx fails onnx.checker"),
    P("build-external-data-dotdot", lambda c: _build(c, c.external_outside(False)),
      "external data '../weights.bin' lies outside the model's folder"),
    P("build-external-data-absolute", lambda c: _build(c, c.external_outside(True)),
      "weights.bin' lies outside the model's folder"),
    P("build-unknown-target", lambda c: ["build", str(c.a.dyn), "-t", "nope", "-o", c.out("")],
      "unknown target 'nope'; choose one of"),
    P("build-unknown-precision", lambda c: _build(c, c.a.dyn, "--precision", "fp64"),
      Says("Invalid value for '--precision': 'fp64' is not one of", usage=True)),
    P("build-unknown-backend", lambda c: _build(c, c.a.dyn, "--backend", "magic"),
      Says("Invalid value for '--backend': 'magic' is not one of", usage=True)),
    P("build-batch-decreasing", lambda c: _build(c, c.a.dyn, "--batch", "8:4:1"),
      "--batch '8:4:1': give MIN:OPT:MAX"),
    P("build-batch-malformed", lambda c: _build(c, c.a.dyn, "--batch", "1x8"),
      "--batch '1x8': give MIN:OPT:MAX"),
    P("build-batch-over-fixed-batch", lambda c: _build(c, c.a.static, "--batch", "1:8:8"),
      "has a fixed batch of 4; --batch needs a dynamic-batch export"),
    P("build-int8-data-wrong-channels",
      lambda c: _build(c, c.a.dyn, "--precision", "int8", "--data",
                       c.npz("x.npz", x=_x((16, 3, 8, 8)))),
      "samples of shape 3x8x8 do not fit model input 'x'"),
    P("build-int8-calibration-folder-empty",
      lambda c: _build(c, c.a.dyn, "--precision", "int8", "--calibration", c.folder("calib")),
      "calib/se_resnet_digits.int8.onnx not found; run 'sase-deploy calibrate"),
    P("build-int8-calibration-garbage",
      lambda c: _build(c, c.a.dyn, "--precision", "int8", "--calibration",
                       str(Path(c.garbage("calib/se_resnet_digits.int8.onnx")).parent)),
      "rejects se_resnet_digits.int8.onnx", rtx=True),
    P("build-timing-cache-is-folder",
      lambda c: _build(c, c.a.dyn, "--timing-cache", c.folder("cache.bin")),
      Says("Invalid value for '--timing-cache'", usage=True)),
    P("build-dla-on-target-without-dla", lambda c: _build(c, c.a.dyn, "--dla-core", "0"),
      "l4 has no DLA; drop --dla-core"),
    P("build-output-unwritable", lambda c: ["build", str(c.a.dyn), "-t", "l4", "-o", "/proc/nope"],
      "cannot create folder /proc/nope"),
    # ---- targets / doctor: they take no input but options
    P("targets-extra-argument", lambda c: ["targets", "extra"],
      Says("Got unexpected extra argument (extra)", usage=True)),
    P("targets-unknown-option", lambda c: ["targets", "--bogus"],
      Says("No such option '--bogus'", usage=True)),
    P("doctor-extra-argument", lambda c: ["doctor", "extra"],
      Says("Got unexpected extra argument (extra)", usage=True)),
    P("doctor-unknown-option", lambda c: ["doctor", "--bogus"],
      Says("No such option '--bogus'", usage=True)),
    # ---- compare
    P("compare-candidate-missing", lambda c: _compare(c, c.missing("m.onnx")),
      "candidate {tmp}/m.onnx does not exist"),
    P("compare-candidate-unreadable", lambda c: _compare(c, c.unreadable("m.onnx", c.a.dyn)),
      root_or_user("candidate {tmp}/m.onnx: expected an .onnx file", CLICK_NOT_READABLE)),
    P("compare-candidate-empty", lambda c: _compare(c, c.file("m.onnx")),
      "m.onnx has an empty graph"),
    P("compare-candidate-truncated", lambda c: _compare(c, c.truncated(c.a.dyn, "m.onnx")),
      "m.onnx is not a readable ONNX model"),
    P("compare-candidate-garbage", lambda c: _compare(c, c.garbage("m.onnx")),
      "m.onnx is not a readable ONNX model"),
    P("compare-candidate-custom-op", lambda c: _compare(c, c.custom_op()),
      "custom.onnx: node 'logits' is operator com.example::Mystery"),
    P("compare-external-data-dotdot", lambda c: _compare(c, c.external_outside(False)),
      "external data '../weights.bin' lies outside the model's folder"),
    P("compare-external-data-absolute", lambda c: _compare(c, c.external_outside(True)),
      "weights.bin' lies outside the model's folder"),
    P("compare-engine-truncated", lambda c: _compare(c, c.engine("truncated")),
      "is not the engine se_resnet_digits.fp32.manifest.json describes", rtx=True),
    P("compare-engine-garbage", lambda c: _compare(c, c.engine("garbage")),
      "is not the engine se_resnet_digits.fp32.manifest.json describes", rtx=True),
    P("compare-engine-without-manifest", lambda c: _compare(c, c.engine("bare")),
      "no build manifest beside it (se_resnet_digits.fp32.manifest.json)", rtx=True),
    P("compare-reference-garbage", lambda c: _compare(c, c.a.dyn, ref=c.garbage("ref.onnx")),
      "ref.onnx is not a readable ONNX model"),
    P("compare-reference-unknown-model", lambda c: _compare(c, c.a.dyn, ref="no_such_model"),
      "unknown model 'no_such_model'"),
    P("compare-checkpoint-other-architecture",
      lambda c: _compare(c, c.a.dyn, ref="se_resnet_digits", extra=["-c", str(c.a.other_ckpt)]),
      "checkpoint does not fit model 'ResNet'"),
    P("compare-checkpoint-garbage",
      lambda c: _compare(c, c.a.dyn, ref="se_resnet_digits", extra=["-c", c.garbage("w.pt")]),
      "w.pt' is not a readable PyTorch checkpoint"),
    P("compare-tolerance-not-a-number",
      lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "fp16.rel=abc"]),
      "bad --tolerance 'fp16.rel=abc': VALUE must be a number"),
    P("compare-tolerance-unknown-metric",
      lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "speed=1"]),
      "bad --tolerance 'speed=1': write [PRECISION.]METRIC=VALUE"),
    P("compare-tolerance-unknown-precision",
      lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "fp64.rel=1"]),
      "bad --tolerance 'fp64.rel=1': write [PRECISION.]METRIC=VALUE"),
    P("compare-tolerance-nan", lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "rel=nan"]),
      "bad --tolerance 'rel=nan': VALUE must be a number"),
    P("compare-batch-zero", lambda c: _compare(c, c.a.dyn, extra=["--batch", "0"]),
      "--batch '0': give positive batch sizes"),
    P("compare-batch-malformed", lambda c: _compare(c, c.a.dyn, extra=["--batch", "a,b"]),
      "--batch 'a,b': give positive batch sizes"),
    P("compare-samples-zero", lambda c: _compare(c, c.a.dyn, extra=["--samples", "0"]),
      "--samples and --runs must be >= 1"),
    P("compare-fewer-samples-than-fixed-batch",
      lambda c: _compare(c, c.a.dyn, ref=str(c.a.static), extra=["--samples", "3"]),
      "3 samples, fewer than the model's fixed batch of 4"),
    P("compare-candidate-fewer-samples-than-fixed-batch",
      lambda c: _compare(c, c.a.static, extra=["--samples", "3"]),
      "3 samples, fewer than the model's fixed batch of 4"),
    P("compare-data-garbage", lambda c: _compare(c, c.a.dyn, extra=["--data", c.garbage("x.npz")]),
      "x.npz: not a .npy/.npz file"),
    P("compare-data-wrong-channels",
      lambda c: _compare(c, c.a.dyn, extra=["--data", c.npz("x.npz", x=_x((16, 3, 8, 8)))]),
      "samples of shape 3x8x8 do not fit model input 'x'"),
    P("compare-report-unknown-suffix",
      lambda c: _compare(c, c.a.dyn, extra=["--report", c.out("r.txt")]),
      "out/r.txt: the suffix picks the format"),
    P("compare-report-unwritable",
      lambda c: _compare(c, c.a.dyn, extra=["--report", "/proc/nope/r.json"]),
      "cannot write /proc/nope/r.json"),
    P("compare-parity-failure",
      lambda c: ["compare", str(c.a.dyn), c.perturbed(), "--samples", "16", "--runs", "1",
                 "--warmup", "0", "--batch", "1"],
      "perturbed.onnx: output logits: rel_max_abs"),
    # ---- deploy
    P("deploy-config-not-toml", lambda c: _deploy(c, "--config", _config(c, "this is [not toml")),
      "deploy.toml is not valid TOML"),
    P("deploy-config-missing", lambda c: _deploy(c, "--config", c.missing("deploy.toml")),
      "cannot read config {tmp}/deploy.toml"),
    P("deploy-config-garbage", lambda c: _deploy(c, "--config", c.garbage("deploy.toml")),
      "deploy.toml is not valid TOML: it is not UTF-8 text"),
    P("deploy-config-unknown-key",
      lambda c: _deploy(c, "--config", _config(c, 'bogus = 1\n[[models]]\nname = "x"\n')),
      "deploy.toml: unknown keys ['bogus']"),
    P("deploy-config-no-models", lambda c: _deploy(c, "--config", _config(c, 'output = "o"\n')),
      "deploy.toml: add at least one [[models]] entry"),
    P("deploy-unknown-model", lambda c: _deploy(c, "no_such_model"),
      "unknown model 'no_such_model'"),
    P("deploy-unknown-target", lambda c: _deploy(c, "se_resnet_digits", "--targets", "nope"),
      "unknown target 'nope'; choose one of"),
    P("deploy-unknown-precision", lambda c: _deploy(c, "se_resnet_digits", "--precisions", "fp64"),
      "--precisions fp64: choose from fp32, fp16, int8"),
    P("deploy-checkpoint-missing",
      lambda c: _deploy(c, "se_resnet_digits", "-c", c.missing("w.pt")),
      "checkpoint {tmp}/w.pt does not exist"),
    P("deploy-tolerance-bad", lambda c: _deploy(c, "se_resnet_digits", "--tolerance", "rel=x"),
      "bad --tolerance 'rel=x'"),
    P("deploy-data-missing", lambda c: _deploy(c, "se_resnet_digits", "--data", c.missing("x.npz")),
      "--data {tmp}/x.npz does not exist"),
    P("deploy-output-unwritable", lambda c: ["deploy", "se_resnet_digits", "-o", "/proc/nope"],
      "cannot write /proc/nope/"),
    # ---- triton
    P("triton-artifact-missing", lambda c: _triton(c, c.missing("m.onnx")),
      "no such file: {tmp}/m.onnx"),
    P("triton-artifact-unreadable", lambda c: _triton(c, c.unreadable("m.onnx", c.a.dyn)),
      root_or_user("{tmp}/m.onnx is a folder; pass the engine or .onnx file", CLICK_NOT_READABLE)),
    P("triton-onnx-empty", lambda c: _triton(c, c.file("m.onnx")), "m.onnx has an empty graph"),
    P("triton-onnx-garbage", lambda c: _triton(c, c.garbage("m.onnx")),
      "m.onnx is not a readable ONNX model"),
    P("triton-external-data-dotdot", lambda c: _triton(c, c.external_outside(False)),
      "external data '../weights.bin' lies outside the model's folder"),
    P("triton-external-data-absolute", lambda c: _triton(c, c.external_outside(True)),
      "weights.bin' lies outside the model's folder"),
    P("triton-engine-truncated", lambda c: _triton(c, c.engine("truncated")),
      "is not the engine se_resnet_digits.fp32.manifest.json describes", rtx=True),
    P("triton-engine-garbage", lambda c: _triton(c, c.engine("garbage")),
      "is not the engine se_resnet_digits.fp32.manifest.json describes", rtx=True),
    P("triton-engine-without-manifest", lambda c: _triton(c, c.engine("bare")),
      "no build manifest beside it (se_resnet_digits.fp32.manifest.json)", rtx=True),
    P("triton-unknown-suffix", lambda c: _triton(c, c.file("m.txt", b"x")),
      "m.txt: cannot serve a '.txt' file"),
    P("triton-bad-name", lambda c: _triton(c, c.a.dyn, extra=["--name", "bad/name"]),
      "model name 'bad/name': use letters, digits"),
    P("triton-max-batch-on-fixed-batch",
      lambda c: _triton(c, c.a.static, extra=["--max-batch", "8"]),
      "--max-batch needs a dynamic batch dim; it has a fixed batch"),
    P("triton-output-unwritable", lambda c: ["triton", str(c.a.dyn), "-o", "/proc/nope"],
      "cannot write /proc/nope/"),
]  # fmt: skip


# ---- candidates whose I/O differs from the reference's (issue 16): exit 2, not a traceback


def _t4_fp32(c: Ctx) -> list[str]:
    return ["build", str(c.a.dyn), "--target", "t4", "-o", c.out("")]


def _io_case(what: str, id: str, says: str) -> Any:
    return P(f"compare-candidate-{id}", lambda c: _compare(c, c.io_variant(what)), says)


TAKES_X = "but the reference takes x float32[?,1,8,8]"
CASES += [
    _io_case("name", "input-renamed", f"name.onnx takes pixels float32[?,1,8,8] {TAKES_X}"),
    _io_case("dtype", "input-float64", f"candidate dtype.onnx takes x float64[?,1,8,8] {TAKES_X}"),
    _io_case("count", "extra-input", f"mask float32[?,3] {TAKES_X} (mask missing)"),
    _io_case("output", "output-renamed", "returns scores but the reference returns logits"),
    _io_case("shape", "input-16x16", f"shape.onnx takes x float32[?,1,16,16] {TAKES_X}"),
    _io_case("inconsistent", "ort-refuses",
             f"inconsistent.onnx takes x float32[?,1,16,16] {TAKES_X}"),
    P("build-t4-fp32-gemm-with-tensorrt-rtx", _t4_fp32,
      "cannot build se_resnet_digits.onnx for Turing (SM75)", rtx=True),
]  # fmt: skip

# A few cases run through a real process: no warnings or progress output break the one line.
IN_A_PROCESS = [
    P("export-checkpoint-garbage", lambda c: _export(c, "-c", c.garbage("w.pt")),
      "w.pt' is not a readable PyTorch checkpoint (UnpicklingError"),
    P("calibrate-data-wrong-channels",
      lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((16, 3, 8, 8)))),
      "samples of shape 3x8x8 do not fit model input 'x' (expects N x 1x8x8)"),
    P("build-opset-too-new", lambda c: _build(c, c.opset99()),
      "opset99.onnx uses ONNX opset 99, newer than"),
]  # fmt: skip
