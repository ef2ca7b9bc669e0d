"""Bad input, command by command: exit 2 (1 for a parity failure), one line on stderr, no
traceback, and nothing new or half-written in the output folder (issue 11).

Every case builds its own broken inputs in a fresh folder, snapshots that folder and the shared
fixtures, runs the CLI in-process and checks that neither changed. The shared inputs (a dynamic-
and a fixed-batch digits model, calibration data, an engine) are built once per module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from sase_deploy.cli import main
from sase_deploy.models.digits import digits_checkpoint_file

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------------------------
# shared inputs (built once)


@dataclass(frozen=True)
class Assets:
    folder: Path
    dyn: Path  # se_resnet_digits, dynamic batch, with its export manifest
    static: Path  # se_resnet_digits, fixed batch 4
    calib: Path  # 512 digits calibration samples, x (N, 1, 8, 8) float32
    engine: Path | None  # an l4 engine with its build manifest (None without TensorRT-RTX)
    ckpt: Path  # the se_resnet_digits checkpoint
    other_ckpt: Path  # the sase_resnet_digits checkpoint (another architecture)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from sase_deploy.engines.build import BuildRequest, build
    from sase_deploy.engines.flavours import find_flavour
    from sase_deploy.export import export_model
    from sase_deploy.models.digits_data import write_digits_npz

    folder = tmp_path_factory.mktemp("assets")
    ckpt = digits_checkpoint_file("se_resnet_digits")
    dyn = folder / "dyn.onnx"
    export_model("se_resnet_digits", dyn, checkpoint=ckpt, dynamic_batch=True)
    static = folder / "static.onnx"
    export_model("se_resnet_digits", static, checkpoint=ckpt, input_shapes=[(4, 1, 8, 8)])
    calib = Path(write_digits_npz(folder / "calib.npz", "calibration"))
    engine = None
    if find_flavour("tensorrt-rtx").installed:
        engine = build(BuildRequest(dyn, "l4", folder / "engines")).artifact
    return Assets(
        folder, dyn, static, calib, engine, ckpt, digits_checkpoint_file("sase_resnet_digits")
    )


# --------------------------------------------------------------------------------------------
# what a case can make in its own folder


@dataclass
class Ctx:
    a: Assets
    tmp: Path

    def file(self, name: str, data: bytes = b"") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def missing(self, name: str) -> str:
        return str(self.tmp / name)

    def garbage(self, name: str) -> str:
        return self.file(name, np.random.default_rng(0).bytes(4096))

    def truncated(self, source: Path, name: str) -> str:
        data = source.read_bytes()
        return self.file(name, data[: len(data) // 2])

    def unreadable(self, name: str, source: Path) -> str:
        """A file that cannot be read: mode 000, or (root reads anything) a folder by that name."""
        path = self.tmp / name
        if IS_ROOT:
            path.mkdir(parents=True)
            return str(path)
        shutil.copyfile(source, path)
        path.chmod(0)
        return str(path)

    def npz(self, name: str, **arrays: np.ndarray) -> str:
        path = self.tmp / name
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return str(path)

    def folder(self, name: str) -> str:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def out(self, name: str) -> str:
        """An output path inside a folder that does not exist yet (so a leftover shows)."""
        return str(self.tmp / "out" / name)

    # ---- broken ONNX models made from the good one

    def onnx_variant(self, name: str, edit: Callable[[onnx.ModelProto], None]) -> str:
        model = onnx.load(str(self.a.dyn))
        edit(model)
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return str(path)

    def custom_op(self) -> str:
        def edit(model: onnx.ModelProto) -> None:
            graph = model.graph
            out = graph.output[0]
            graph.node[-1].output[0] = "pre_custom"
            graph.node.append(
                helper.make_node("Mystery", ["pre_custom"], [out.name], domain="com.example")
            )
            model.opset_import.append(helper.make_opsetid("com.example", 1))

        return self.onnx_variant("custom.onnx", edit)

    def opset99(self) -> str:
        def edit(model: onnx.ModelProto) -> None:
            for entry in model.opset_import:
                if entry.domain in ("", "ai.onnx"):
                    entry.version = 99

        return self.onnx_variant("opset99.onnx", edit)

    def opset11(self) -> str:
        """The good model claiming opset 11 (older than any form the stages read)."""

        def edit(model: onnx.ModelProto) -> None:
            for entry in model.opset_import:
                if entry.domain in ("", "ai.onnx"):
                    entry.version = 11

        return self.onnx_variant("opset11.onnx", edit)

    def ir_too_new(self) -> str:
        def edit(model: onnx.ModelProto) -> None:
            model.ir_version = onnx.IR_VERSION + 1

        return self.onnx_variant("ir_new.onnx", edit)

    def dangling(self) -> str:
        """The good model with a node reading a tensor nothing makes: onnx.checker refuses it."""

        def edit(model: onnx.ModelProto) -> None:
            add = helper.make_node("Add", [model.graph.node[0].output[0], "nowhere"], ["dangle"])
            model.graph.node.insert(1, add)

        return self.onnx_variant("dangling.onnx", edit)

    def unsorted(self) -> str:
        """The good model with its nodes reversed: ORT runs it, onnx.checker and TensorRT's
        parser refuse it (build refuses it; fuse, calibrate and convert sort it)."""

        def edit(model: onnx.ModelProto) -> None:
            nodes = list(model.graph.node)
            del model.graph.node[:]
            model.graph.node.extend(reversed(nodes))

        return self.onnx_variant("unsorted.onnx", edit)

    def external_outside(self, absolute: bool) -> str:
        """The good model with its weights as external data in a file outside its folder."""
        model = onnx.load(str(self.a.dyn))
        (self.tmp / "model").mkdir()
        path = self.tmp / "model" / "m.onnx"
        onnx.save(
            model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0
        )
        (self.tmp / "model" / "m.onnx.data").rename(self.tmp / "weights.bin")
        location = str(self.tmp / "weights.bin") if absolute else "../weights.bin"
        model = onnx.load(str(path), load_external_data=False)
        for tensor in onnx.external_data_helper._get_all_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path.write_bytes(model.SerializeToString())
        return str(path)

    def external_missing(self) -> str:
        """The good model with its weights as external data, the data file deleted."""
        (self.tmp / "model").mkdir()
        path = self.tmp / "model" / "m.onnx"
        onnx.save(
            onnx.load(str(self.a.dyn)),
            str(path),
            save_as_external_data=True,
            location="m.onnx.data",
            size_threshold=0,
        )
        (self.tmp / "model" / "m.onnx.data").unlink()
        return str(path)

    def engine(self, mode: str) -> str:
        """A copy of the built engine with its manifest: 'truncated', 'garbage' or 'bare'
        (the good engine without its manifest)."""
        if self.a.engine is None:
            pytest.skip("TensorRT-RTX is not installed: no engine to break")
        folder = self.tmp / "l4"
        folder.mkdir()
        dest = folder / self.a.engine.name
        data = self.a.engine.read_bytes()
        manifest = self.a.engine.with_name(self.a.engine.name.replace(".engine", ".manifest.json"))
        if mode != "bare":
            shutil.copyfile(manifest, folder / manifest.name)
        if mode == "truncated":
            data = data[: len(data) // 2]
        elif mode == "garbage":
            data = np.random.default_rng(0).bytes(len(data))
        dest.write_bytes(data)
        return str(dest)

    def perturbed(self) -> str:
        """The good model with one weight scaled: runs fine, disagrees with the reference."""

        def edit(model: onnx.ModelProto) -> None:
            from onnx import numpy_helper

            init = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 4)
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * -3.0, init.name))

        return self.onnx_variant("perturbed.onnx", edit)


Case = Callable[[Ctx], list[str]]
NPZ_SHAPE = (16, 1, 8, 8)


def _x(shape: tuple[int, ...] = NPZ_SHAPE, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# the matrix


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


P = pytest.param
CASES = [
    # ---- export: checkpoints, shapes, names, output place
    P(lambda c: _export(c, "-c", c.missing("nope.pt")), id="export-checkpoint-missing"),
    P(
        lambda c: _export(c, "-c", c.unreadable("w.pt", c.a.ckpt)),
        id="export-checkpoint-unreadable",
    ),
    P(lambda c: _export(c, "-c", c.file("w.pt")), id="export-checkpoint-empty"),
    P(lambda c: _export(c, "-c", c.truncated(c.a.ckpt, "w.pt")), id="export-checkpoint-truncated"),
    P(lambda c: _export(c, "-c", c.garbage("w.pt")), id="export-checkpoint-garbage"),
    P(lambda c: _export(c, "-c", str(c.a.other_ckpt)), id="export-checkpoint-other-architecture"),
    P(
        lambda c: _export(c, "-c", str(c.a.ckpt), "--checkpoint-key", "nope"),
        id="export-checkpoint-key-missing",
    ),
    P(lambda c: _export(c, "--input-shape", "1xAx8x8"), id="export-input-shape-malformed"),
    P(lambda c: _export(c, "--input-shape", "0x1x8x8"), id="export-input-shape-zero"),
    P(lambda c: _export(c, "--input-shape", "1x8x8"), id="export-input-shape-wrong-rank"),
    P(lambda c: _export(c, "--input-shape", "1x3x8x8"), id="export-input-shape-wrong-channels"),
    P(
        lambda c: _export(c, "--input-shape", "1x1x8x8", "--input-shape", "1x1x8x8"),
        id="export-input-shape-too-many",
    ),
    P(lambda c: ["export", "no_such_model", "-o", c.out("m.onnx")], id="export-unknown-model"),
    P(lambda c: _export(c, "--model-arg", "1x"), id="export-model-arg-malformed"),
    P(lambda c: _export(c, "--model-arg", "bogus=1"), id="export-model-arg-unknown"),
    P(lambda c: _export(c, "--opset", "99"), id="export-opset-too-new"),
    P(lambda c: _export(c, "--exporter", "magic"), id="export-unknown-exporter"),
    P(
        lambda c: ["export", "se_resnet_digits", "-o", "/proc/nope/x.onnx"],
        id="export-output-unwritable",
    ),
    P(
        lambda c: ["export", "se_resnet_digits", "-o", c.folder("out/m.onnx")],
        id="export-output-is-folder",
    ),
    # ---- fuse
    P(lambda c: ["fuse", c.missing("m.onnx"), "-o", c.out("f.onnx")], id="fuse-onnx-missing"),
    P(
        lambda c: ["fuse", c.unreadable("m.onnx", c.a.dyn), "-o", c.out("f.onnx")],
        id="fuse-onnx-unreadable",
    ),
    P(lambda c: ["fuse", c.file("m.onnx"), "-o", c.out("f.onnx")], id="fuse-onnx-empty"),
    P(
        lambda c: ["fuse", c.truncated(c.a.dyn, "m.onnx"), "-o", c.out("f.onnx")],
        id="fuse-onnx-truncated",
    ),
    P(lambda c: ["fuse", c.garbage("m.onnx"), "-o", c.out("f.onnx")], id="fuse-onnx-garbage"),
    P(lambda c: ["fuse", c.custom_op(), "-o", c.out("f.onnx")], id="fuse-custom-op"),
    P(lambda c: ["fuse", c.opset99(), "-o", c.out("f.onnx")], id="fuse-opset-too-new"),
    P(lambda c: ["fuse", c.opset11(), "-o", c.out("f.onnx")], id="fuse-opset-too-old"),
    P(lambda c: ["fuse", c.ir_too_new(), "-o", c.out("f.onnx")], id="fuse-ir-too-new"),
    P(lambda c: ["fuse", c.dangling(), "-o", c.out("f.onnx")], id="fuse-checker-fails"),
    P(
        lambda c: ["fuse", c.external_outside(False), "-o", c.out("f.onnx")],
        id="fuse-external-data-dotdot",
    ),
    P(
        lambda c: ["fuse", c.external_outside(True), "-o", c.out("f.onnx")],
        id="fuse-external-data-absolute",
    ),
    P(
        lambda c: ["fuse", c.external_missing(), "-o", c.out("f.onnx")],
        id="fuse-external-data-missing",
    ),
    P(lambda c: ["fuse", str(c.a.dyn), "-o", "/proc/nope/x.onnx"], id="fuse-output-unwritable"),
    P(lambda c: ["fuse", str(c.a.dyn), "-o", c.out("f.txt")], id="fuse-output-not-onnx"),
    P(
        lambda c: ["fuse", str(c.a.dyn), "-o", c.out("f.onnx"), "--report", "/proc/nope/r.json"],
        id="fuse-report-unwritable",
    ),
    P(
        lambda c: ["fuse", str(c.a.dyn), "-o", c.out("f.onnx"), "--tolerance", "-1"],
        id="fuse-tolerance-negative",
    ),
    # ---- calibrate: the model
    P(lambda c: _calibrate(c, c.missing("m.onnx"), c.a.calib), id="calibrate-onnx-missing"),
    P(
        lambda c: _calibrate(c, c.unreadable("m.onnx", c.a.dyn), c.a.calib),
        id="calibrate-onnx-unreadable",
    ),
    P(lambda c: _calibrate(c, c.file("m.onnx"), c.a.calib), id="calibrate-onnx-empty"),
    P(
        lambda c: _calibrate(c, c.truncated(c.a.dyn, "m.onnx"), c.a.calib),
        id="calibrate-onnx-truncated",
    ),
    P(lambda c: _calibrate(c, c.garbage("m.onnx"), c.a.calib), id="calibrate-onnx-garbage"),
    P(lambda c: _calibrate(c, c.custom_op(), c.a.calib), id="calibrate-custom-op"),
    P(lambda c: _calibrate(c, c.opset99(), c.a.calib), id="calibrate-opset-too-new"),
    P(lambda c: _calibrate(c, c.dangling(), c.a.calib), id="calibrate-checker-fails"),
    P(
        lambda c: _calibrate(c, c.external_outside(False), c.a.calib),
        id="calibrate-external-data-dotdot",
    ),
    P(
        lambda c: _calibrate(c, c.external_outside(True), c.a.calib),
        id="calibrate-external-data-absolute",
    ),
    # ---- calibrate: the data
    P(lambda c: _calibrate(c, c.a.dyn, c.missing("x.npz")), id="calibrate-data-missing"),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.unreadable("x.npz", c.a.calib)),
        id="calibrate-data-unreadable",
    ),
    P(lambda c: _calibrate(c, c.a.dyn, c.file("x.npz")), id="calibrate-data-empty"),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.truncated(c.a.calib, "x.npz")),
        id="calibrate-data-truncated",
    ),
    P(lambda c: _calibrate(c, c.a.dyn, c.garbage("x.npz")), id="calibrate-data-garbage"),
    P(lambda c: _calibrate(c, c.a.dyn, c.garbage("x.npy")), id="calibrate-data-garbage-npy"),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((16, 1, 4, 4)))),
        id="calibrate-data-wrong-shape",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((16, 3, 8, 8)))),
        id="calibrate-data-wrong-channels",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=np.full(NPZ_SHAPE, "a"))),
        id="calibrate-data-wrong-dtype-str",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x(dtype="complex64"))),
        id="calibrate-data-wrong-dtype-complex",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((0, 1, 8, 8)))),
        id="calibrate-data-no-samples",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", a=_x(), b=_x())),
        id="calibrate-data-ambiguous-arrays",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x(), y=np.zeros(3))),
        id="calibrate-data-labels-wrong-count",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.folder("images"), "--model", "se_resnet_digits"),
        id="calibrate-data-empty-folder",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.file("x.csv", b"1,2,3\n")),
        id="calibrate-data-unknown-format",
    ),
    P(
        lambda c: _calibrate(c, c.a.static, c.npz("x.npz", x=_x((3, 1, 8, 8)))),
        id="calibrate-fewer-samples-than-fixed-batch",
    ),
    P(lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--samples", "0"), id="calibrate-samples-zero"),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--samples", "-5"),
        id="calibrate-samples-negative",
    ),
    P(lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--batch", "0"), id="calibrate-batch-zero"),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--percentile", "150"),
        id="calibrate-percentile-out-of-range",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--model", "no_such_model"),
        id="calibrate-unknown-model",
    ),
    P(
        lambda c: _calibrate(c, c.a.dyn, c.a.calib, "--method", "magic"),
        id="calibrate-unknown-method",
    ),
    P(
        lambda c: ["calibrate", str(c.a.dyn), "--data", str(c.a.calib), "-o", "/proc/nope"],
        id="calibrate-output-unwritable",
    ),
    # ---- convert
    P(lambda c: _convert(c, c.missing("m.onnx")), id="convert-onnx-missing"),
    P(lambda c: _convert(c, c.unreadable("m.onnx", c.a.dyn)), id="convert-onnx-unreadable"),
    P(lambda c: _convert(c, c.file("m.onnx")), id="convert-onnx-empty"),
    P(lambda c: _convert(c, c.truncated(c.a.dyn, "m.onnx")), id="convert-onnx-truncated"),
    P(lambda c: _convert(c, c.garbage("m.onnx")), id="convert-onnx-garbage"),
    P(lambda c: _convert(c, c.custom_op()), id="convert-custom-op"),
    P(lambda c: _convert(c, c.opset99()), id="convert-opset-too-new"),
    P(lambda c: _convert(c, c.opset11()), id="convert-opset-too-old"),
    P(lambda c: _convert(c, c.external_outside(False)), id="convert-external-data-dotdot"),
    P(lambda c: _convert(c, c.external_outside(True)), id="convert-external-data-absolute"),
    P(lambda c: _convert(c, c.a.dyn, "--precision", "int4"), id="convert-unknown-precision"),
    P(
        lambda c: ["convert", str(c.a.dyn), "-o", "/proc/nope/x.onnx"],
        id="convert-output-unwritable",
    ),
    P(
        lambda c: _convert(c, c.a.dyn, "--calib-json", c.garbage("m.calib.json")),
        id="convert-calib-json-garbage",
    ),
    P(
        lambda c: _convert(c, c.a.dyn, "--calib-json", c.missing("m.calib.json")),
        id="convert-calib-json-missing",
    ),
    P(
        lambda c: _convert(c, c.a.dyn, "--data", c.npz("x.npz", x=_x((16, 3, 8, 8)))),
        id="convert-data-wrong-channels",
    ),
    P(lambda c: _convert(c, c.a.dyn, "--auto-keep", "1"), id="convert-auto-keep-without-data"),
    # ---- build
    P(lambda c: _build(c, c.missing("m.onnx")), id="build-onnx-missing"),
    P(lambda c: _build(c, c.unreadable("m.onnx", c.a.dyn)), id="build-onnx-unreadable"),
    P(lambda c: _build(c, c.file("m.onnx")), id="build-onnx-empty"),
    P(lambda c: _build(c, c.truncated(c.a.dyn, "m.onnx")), id="build-onnx-truncated"),
    P(lambda c: _build(c, c.garbage("m.onnx")), id="build-onnx-garbage"),
    P(lambda c: _build(c, c.custom_op()), id="build-custom-op"),
    P(lambda c: _build(c, c.opset99()), id="build-opset-too-new"),
    P(lambda c: _build(c, c.unsorted()), id="build-unsorted"),
    P(lambda c: _build(c, c.dangling()), id="build-checker-fails"),
    P(lambda c: _build(c, c.external_outside(False)), id="build-external-data-dotdot"),
    P(lambda c: _build(c, c.external_outside(True)), id="build-external-data-absolute"),
    P(lambda c: ["build", str(c.a.dyn), "-t", "nope", "-o", c.out("")], id="build-unknown-target"),
    P(lambda c: _build(c, c.a.dyn, "--precision", "fp64"), id="build-unknown-precision"),
    P(lambda c: _build(c, c.a.dyn, "--backend", "magic"), id="build-unknown-backend"),
    P(lambda c: _build(c, c.a.dyn, "--batch", "8:4:1"), id="build-batch-decreasing"),
    P(lambda c: _build(c, c.a.dyn, "--batch", "1x8"), id="build-batch-malformed"),
    P(lambda c: _build(c, c.a.static, "--batch", "1:8:8"), id="build-batch-over-fixed-batch"),
    P(
        lambda c: _build(
            c, c.a.dyn, "--precision", "int8", "--data", c.npz("x.npz", x=_x((16, 3, 8, 8)))
        ),
        id="build-int8-data-wrong-channels",
    ),
    P(
        lambda c: _build(c, c.a.dyn, "--precision", "int8", "--calibration", c.folder("calib")),
        id="build-int8-calibration-folder-empty",
    ),
    P(
        lambda c: _build(
            c,
            c.a.dyn,
            "--precision",
            "int8",
            "--calibration",
            str(Path(c.garbage("calib/dyn.int8.onnx")).parent),
        ),
        id="build-int8-calibration-garbage",
    ),
    P(
        lambda c: _build(c, c.a.dyn, "--timing-cache", c.folder("cache.bin")),
        id="build-timing-cache-is-folder",
    ),
    P(lambda c: _build(c, c.a.dyn, "--dla-core", "0"), id="build-dla-on-target-without-dla"),
    P(
        lambda c: ["build", str(c.a.dyn), "-t", "l4", "-o", "/proc/nope"],
        id="build-output-unwritable",
    ),
    # ---- targets / doctor: they take no input but options
    P(lambda c: ["targets", "extra"], id="targets-extra-argument"),
    P(lambda c: ["targets", "--bogus"], id="targets-unknown-option"),
    P(lambda c: ["doctor", "extra"], id="doctor-extra-argument"),
    P(lambda c: ["doctor", "--bogus"], id="doctor-unknown-option"),
    # ---- compare
    P(lambda c: _compare(c, c.missing("m.onnx")), id="compare-candidate-missing"),
    P(lambda c: _compare(c, c.unreadable("m.onnx", c.a.dyn)), id="compare-candidate-unreadable"),
    P(lambda c: _compare(c, c.file("m.onnx")), id="compare-candidate-empty"),
    P(lambda c: _compare(c, c.truncated(c.a.dyn, "m.onnx")), id="compare-candidate-truncated"),
    P(lambda c: _compare(c, c.garbage("m.onnx")), id="compare-candidate-garbage"),
    P(lambda c: _compare(c, c.custom_op()), id="compare-candidate-custom-op"),
    P(lambda c: _compare(c, c.external_outside(False)), id="compare-external-data-dotdot"),
    P(lambda c: _compare(c, c.external_outside(True)), id="compare-external-data-absolute"),
    P(lambda c: _compare(c, c.engine("truncated")), id="compare-engine-truncated"),
    P(lambda c: _compare(c, c.engine("garbage")), id="compare-engine-garbage"),
    P(lambda c: _compare(c, c.engine("bare")), id="compare-engine-without-manifest"),
    P(lambda c: _compare(c, c.a.dyn, ref=c.garbage("ref.onnx")), id="compare-reference-garbage"),
    P(lambda c: _compare(c, c.a.dyn, ref="no_such_model"), id="compare-reference-unknown-model"),
    P(
        lambda c: _compare(c, c.a.dyn, ref="se_resnet_digits", extra=["-c", str(c.a.other_ckpt)]),
        id="compare-checkpoint-other-architecture",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, ref="se_resnet_digits", extra=["-c", c.garbage("w.pt")]),
        id="compare-checkpoint-garbage",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "fp16.rel=abc"]),
        id="compare-tolerance-not-a-number",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "speed=1"]),
        id="compare-tolerance-unknown-metric",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "fp64.rel=1"]),
        id="compare-tolerance-unknown-precision",
    ),
    P(lambda c: _compare(c, c.a.dyn, extra=["--tolerance", "rel=nan"]), id="compare-tolerance-nan"),
    P(lambda c: _compare(c, c.a.dyn, extra=["--batch", "0"]), id="compare-batch-zero"),
    P(lambda c: _compare(c, c.a.dyn, extra=["--batch", "a,b"]), id="compare-batch-malformed"),
    P(lambda c: _compare(c, c.a.dyn, extra=["--samples", "0"]), id="compare-samples-zero"),
    P(
        lambda c: _compare(c, c.a.dyn, ref=str(c.a.static), extra=["--samples", "3"]),
        id="compare-fewer-samples-than-fixed-batch",
    ),
    P(
        lambda c: _compare(c, c.a.static, extra=["--samples", "3"]),
        id="compare-candidate-fewer-samples-than-fixed-batch",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, extra=["--data", c.garbage("x.npz")]),
        id="compare-data-garbage",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, extra=["--data", c.npz("x.npz", x=_x((16, 3, 8, 8)))]),
        id="compare-data-wrong-channels",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, extra=["--report", c.out("r.txt")]),
        id="compare-report-unknown-suffix",
    ),
    P(
        lambda c: _compare(c, c.a.dyn, extra=["--report", "/proc/nope/r.json"]),
        id="compare-report-unwritable",
    ),
    P(
        lambda c: [
            "compare",
            str(c.a.dyn),
            c.perturbed(),
            "--samples",
            "16",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--batch",
            "1",
        ],
        id="compare-parity-failure",
    ),
    # ---- deploy
    P(
        lambda c: _deploy(c, "--config", _config(c, "this is [not toml")),
        id="deploy-config-not-toml",
    ),
    P(lambda c: _deploy(c, "--config", c.missing("deploy.toml")), id="deploy-config-missing"),
    P(lambda c: _deploy(c, "--config", c.garbage("deploy.toml")), id="deploy-config-garbage"),
    P(
        lambda c: _deploy(c, "--config", _config(c, 'bogus = 1\n[[models]]\nname = "x"\n')),
        id="deploy-config-unknown-key",
    ),
    P(lambda c: _deploy(c, "--config", _config(c, 'output = "o"\n')), id="deploy-config-no-models"),
    P(lambda c: _deploy(c, "no_such_model"), id="deploy-unknown-model"),
    P(lambda c: _deploy(c, "se_resnet_digits", "--targets", "nope"), id="deploy-unknown-target"),
    P(
        lambda c: _deploy(c, "se_resnet_digits", "--precisions", "fp64"),
        id="deploy-unknown-precision",
    ),
    P(
        lambda c: _deploy(c, "se_resnet_digits", "-c", c.missing("w.pt")),
        id="deploy-checkpoint-missing",
    ),
    P(lambda c: _deploy(c, "se_resnet_digits", "--tolerance", "rel=x"), id="deploy-tolerance-bad"),
    P(
        lambda c: _deploy(c, "se_resnet_digits", "--data", c.missing("x.npz")),
        id="deploy-data-missing",
    ),
    P(lambda c: ["deploy", "se_resnet_digits", "-o", "/proc/nope"], id="deploy-output-unwritable"),
    # ---- triton
    P(lambda c: _triton(c, c.missing("m.onnx")), id="triton-artifact-missing"),
    P(lambda c: _triton(c, c.unreadable("m.onnx", c.a.dyn)), id="triton-artifact-unreadable"),
    P(lambda c: _triton(c, c.file("m.onnx")), id="triton-onnx-empty"),
    P(lambda c: _triton(c, c.garbage("m.onnx")), id="triton-onnx-garbage"),
    P(lambda c: _triton(c, c.external_outside(False)), id="triton-external-data-dotdot"),
    P(lambda c: _triton(c, c.external_outside(True)), id="triton-external-data-absolute"),
    P(lambda c: _triton(c, c.engine("truncated")), id="triton-engine-truncated"),
    P(lambda c: _triton(c, c.engine("garbage")), id="triton-engine-garbage"),
    P(lambda c: _triton(c, c.engine("bare")), id="triton-engine-without-manifest"),
    P(lambda c: _triton(c, c.file("m.txt", b"x")), id="triton-unknown-suffix"),
    P(lambda c: _triton(c, c.a.dyn, extra=["--name", "bad/name"]), id="triton-bad-name"),
    P(
        lambda c: _triton(c, c.a.static, extra=["--max-batch", "8"]),
        id="triton-max-batch-on-fixed-batch",
    ),
    P(lambda c: ["triton", str(c.a.dyn), "-o", "/proc/nope"], id="triton-output-unwritable"),
]


# ---- candidates whose I/O differs from the reference's (issue 16): exit 2, not a traceback


def _io_variant(c: Ctx, what: str) -> str:
    """The good model with its input renamed, float64 or 16x16 (it pools globally: ORT loads
    it, the feed check stops it; "inconsistent": ORT refuses to load it), another input added,
    or its output renamed."""

    def edit(model: onnx.ModelProto) -> None:
        graph = model.graph
        inp, out = graph.input[0], graph.output[0]
        if what in ("name", "dtype"):
            new = "pixels" if what == "name" else "x32"
            for node in graph.node:
                node.input[:] = [new if i == inp.name else i for i in node.input]
        if what == "name":
            inp.name = "pixels"
        elif what == "dtype":
            graph.node.insert(0, helper.make_node("Cast", [inp.name], ["x32"], to=1))
            inp.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
        elif what in ("shape", "inconsistent"):
            for dim in inp.type.tensor_type.shape.dim[2:]:
                dim.dim_value = 16
            if what == "shape":  # else the 8x8 shapes recorded inside contradict it
                del graph.value_info[:]
        elif what == "count":
            graph.input.append(helper.make_tensor_value_info("mask", 1, ["batch", 3]))
        elif what == "output":
            for node in graph.node:
                node.output[:] = ["scores" if o == out.name else o for o in node.output]
            out.name = "scores"

    return c.onnx_variant(f"{what}.onnx", edit)


def _t4_fp32(c: Ctx) -> list[str]:
    if c.a.engine is None:
        pytest.skip("TensorRT-RTX is not installed: nothing builds for t4 here")
    return ["build", str(c.a.dyn), "--target", "t4", "-o", c.out("")]


CASES += [
    P(lambda c: _compare(c, _io_variant(c, "name")), id="compare-candidate-input-renamed"),
    P(lambda c: _compare(c, _io_variant(c, "dtype")), id="compare-candidate-input-float64"),
    P(lambda c: _compare(c, _io_variant(c, "count")), id="compare-candidate-extra-input"),
    P(lambda c: _compare(c, _io_variant(c, "output")), id="compare-candidate-output-renamed"),
    P(lambda c: _compare(c, _io_variant(c, "shape")), id="compare-candidate-input-16x16"),
    P(lambda c: _compare(c, _io_variant(c, "inconsistent")), id="compare-candidate-ort-refuses"),
    P(_t4_fp32, id="build-t4-fp32-gemm-with-tensorrt-rtx"),
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# running a case


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below `folders` (hidden ones too): a file's size and mtime.

    (A folder's mtime changes when a probe file is made and removed in it: not compared.)
    """
    found = {}
    for folder in folders:
        for path in folder.rglob("*"):
            st = path.lstat()
            found[str(path)] = (st.st_size, st.st_mtime_ns) if path.is_file() else (-1, 0)
    return found


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_in_process(capsys: pytest.CaptureFixture[str], args: list[str]) -> Outcome:
    """Run the CLI; an escaping exception (a bug) comes back as code -1 with its traceback."""
    try:
        main(args)
    except SystemExit as exc:
        out, err = capsys.readouterr()
        return Outcome(exc.code if isinstance(exc.code, int) else 0, out, err)
    except BaseException:
        out, err = capsys.readouterr()
        return Outcome(-1, out, err + traceback.format_exc())
    out, err = capsys.readouterr()
    return Outcome(0, out, err)


def check_outcome(result: Outcome, expected_code: int) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code == expected_code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    prefix = "parity failure:" if expected_code == 1 else "error:"
    assert lines[0].startswith(prefix), lines[0]


@pytest.mark.parametrize("make", CASES)
def test_bad_input(
    make: Case,
    request: pytest.FixtureRequest,
    assets: Assets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs (calibrate -o .) land in the watched folder
    args = make(Ctx(assets, tmp_path))
    expected = 1 if request.node.callspec.id.endswith("parity-failure") else 2
    before = snapshot(tmp_path, assets.folder)
    result = run_in_process(capsys, args)
    after = snapshot(tmp_path, assets.folder)
    check_outcome(result, expected)
    assert after == before, {
        "new": sorted(set(after) - set(before)),
        "gone": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k]),
    }


# Every command that reads ONNX refuses data outside the model's folder with the same words.
OUTSIDE_CASES = [case for case in CASES if "external-data-dotdot" in str(case.id)]
OUTSIDE_MESSAGE = re.compile(
    r"error: \S+/model/m\.onnx: external data '\.\./weights\.bin' lies outside the model's "
    r"folder; move the data next to the model"
)


def test_external_data_cases_cover_every_onnx_command() -> None:
    commands = {str(case.id).split("-external")[0] for case in OUTSIDE_CASES}
    assert commands == {"fuse", "calibrate", "convert", "build", "compare", "triton"}


@pytest.mark.parametrize("make", OUTSIDE_CASES)
def test_external_data_outside_is_one_message(
    make: Case, assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_in_process(capsys, make(Ctx(assets, tmp_path)))
    assert result.code == 2
    assert OUTSIDE_MESSAGE.fullmatch(result.stderr.strip()), result.stderr


# A few cases through a real process: no warnings or progress output break the one line.
@pytest.mark.parametrize(
    "make",
    [
        P(lambda c: _export(c, "-c", c.garbage("w.pt")), id="export-checkpoint-garbage"),
        P(
            lambda c: _calibrate(c, c.a.dyn, c.npz("x.npz", x=_x((16, 3, 8, 8)))),
            id="calibrate-data-wrong-channels",
        ),
        P(lambda c: _build(c, c.opset99()), id="build-opset-too-new"),
    ],
)
def test_bad_input_in_a_process(make: Case, assets: Assets, tmp_path: Path) -> None:
    args = make(Ctx(assets, tmp_path))
    before = snapshot(tmp_path, assets.folder)
    proc = subprocess.run(
        [sys.executable, "-m", "sase_deploy.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert snapshot(tmp_path, assets.folder) == before
    check_outcome(Outcome(proc.returncode, proc.stdout, proc.stderr), 2)
