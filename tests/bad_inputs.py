"""The inputs the bad-input cases (bad_input_cases.py) are made of: the shared ones, built once
per module by test_bad_input.py, and the broken ones each case makes in its own folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Assets:
    """The shared inputs, made once per module (test_bad_input.py): cases read them, never
    change them (the test snapshots `folder`)."""

    folder: Path
    dyn: Path  # dynamic/se_resnet_digits.onnx, with its export manifest
    static: Path  # batch4/se_resnet_digits.onnx, fixed batch 4
    calib: Path  # 512 digits calibration samples, x (N, 1, 8, 8) float32
    engine: Path | None  # an l4 engine with its build manifest (None without TensorRT-RTX)
    ckpt: Path  # the se_resnet_digits checkpoint
    other_ckpt: Path  # the sase_resnet_digits checkpoint (another architecture)


# --------------------------------------------------------------------------------------------
# what a case can make in its own folder


@dataclass
class Ctx:
    """What a case makes its inputs with: `a`, the shared ones; `tmp`, its own folder."""

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
        assert self.a.engine is not None, "an engine case needs rtx=True (its mark skips it)"
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

    def io_variant(self, what: str) -> str:
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

        return self.onnx_variant(f"{what}.onnx", edit)
