"""Calibration data sources: image folders, `.npy`/`.npz` arrays, and generators' latents.

Every source yields feeds (`{input_name: batch}`) for the model it was opened against, checks
shapes up front and raises `UserError` for bad input (empty folder, unreadable image, shape
mismatch) before anything is calibrated. A model exported with a fixed batch (dim 0 a number, the
export default) only runs at that batch, so `open_source` wraps its source in `FixedBatchSource`,
which feeds whole batches of exactly that size whatever batch size the caller asks for.
"""

from __future__ import annotations

import itertools
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from sase_deploy.artifacts import ExportManifest, manifest_path, try_read
from sase_deploy.errors import UserError
from sase_deploy.graph_io import GraphInput, graph_inputs, random_feed
from sase_deploy.models.spec import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class CalibrationSource(Protocol):
    """What the calibrators and the sensitivity analysis consume."""

    num_samples: int

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]: ...

    def labels(self) -> np.ndarray | None: ...

    def describe(self) -> dict[str, Any]: ...


def _check_sample_shape(inp: GraphInput, sample_shape: tuple[int, ...], origin: str) -> None:
    expected = inp.shape[1:]
    ok = len(expected) == len(sample_shape) and all(
        e is None or e == s for e, s in zip(expected, sample_shape, strict=True)
    )
    if not ok:
        want = "x".join("?" if e is None else str(e) for e in expected)
        got = "x".join(map(str, sample_shape))
        raise UserError(
            f"{origin}: samples of shape {got} do not fit model input '{inp.name}' "
            f"(expects N x {want}); reshape/resize the data or pick the matching model"
        )


@dataclass
class ArraySource:
    """In-memory arrays, one per model input, sharing the sample axis 0 (and optional labels)."""

    arrays: dict[str, np.ndarray]
    origin: str = "arrays"
    label_array: np.ndarray | None = None
    num_samples: int = field(init=False)

    def __post_init__(self) -> None:
        counts = {len(a) for a in self.arrays.values()}
        if len(counts) != 1:
            raise UserError(f"{self.origin}: inputs hold different sample counts {sorted(counts)}")
        self.num_samples = counts.pop()
        if self.num_samples == 0:
            raise UserError(f"{self.origin}: holds no samples; provide at least one")
        labels = self.label_array
        if labels is not None and np.shape(labels)[:1] != (self.num_samples,):
            raise UserError(
                f"{self.origin}: labels 'y' of shape {np.shape(labels)} for {self.num_samples} "
                "samples; give one label per sample (or no 'y')"
            )

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.num_samples, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.arrays.items()}

    def labels(self) -> np.ndarray | None:
        return self.label_array

    def describe(self) -> dict[str, Any]:
        return {"kind": "arrays", "origin": self.origin, "samples": self.num_samples}


def _match_arrays(
    inputs: Sequence[GraphInput], loaded: Mapping[str, np.ndarray], origin: str
) -> dict[str, np.ndarray]:
    """Assign arrays to model inputs: by input name, else `x` / the only array for one input."""
    result = {}
    for inp in inputs:
        if inp.name in loaded:
            arr = loaded[inp.name]
        elif len(inputs) == 1 and "x" in loaded:
            arr = loaded["x"]
        elif len(inputs) == 1 and len(loaded) == 1:
            arr = next(iter(loaded.values()))
        else:
            raise UserError(
                f"{origin}: no array for model input '{inp.name}' (found {sorted(loaded)}); "
                f"name the arrays after the inputs {[i.name for i in inputs]}"
            )
        if arr.dtype.kind not in "biuf":  # strings, complex, dates...: not pixel values
            raise UserError(
                f"{origin}: array for input '{inp.name}' has dtype {arr.dtype}; "
                "save real numbers (float32, or integers such as uint8 pixels)"
            )
        if arr.ndim == len(inp.shape) - 1:  # a single sample without the batch axis
            arr = arr[None]
        _check_sample_shape(inp, tuple(arr.shape[1:]), origin)
        result[inp.name] = np.ascontiguousarray(arr.astype(inp.dtype, copy=False))
    return result


def array_file_source(
    path: str | os.PathLike[str], inputs: Sequence[GraphInput], samples: int | None = None
) -> ArraySource:
    """`.npy` (one input) or `.npz` (arrays named after inputs, or `x`; optional labels `y`)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                loaded = {k: data[k] for k in data.files}
        else:
            loaded = {"x": np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # an empty file is an EOFError (which click would report as "aborted"), a truncated
        # .npz a BadZipFile or zlib.error
        # numpy takes any file without the .npy/.npz magic for a pickle (never loaded here)
        why = "not a .npy/.npz file" if "pickle" in str(exc) else str(exc) or type(exc).__name__
        raise UserError(
            f"cannot read calibration arrays {path}: {why}; write them with numpy.save / "
            "numpy.savez (numbers only, no pickled objects)"
        ) from exc
    labels = loaded.pop("y", None)
    arrays = _match_arrays(inputs, loaded, str(path))
    if samples is not None:
        arrays = {k: v[:samples] for k, v in arrays.items()}
        labels = labels[:samples] if labels is not None else None
    return ArraySource(arrays, origin=str(path), label_array=labels)


def _load_image(path: Path, prep: Preprocess) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if prep.channel_order == "L" else "RGB")
            height, width = prep.size
            if prep.resize is not None:  # shorter side to `resize`, then centre crop
                short = min(img.size)
                factor = prep.resize / short
                img = img.resize(
                    (
                        max(width, round(img.size[0] * factor)),
                        max(height, round(img.size[1] * factor)),
                    ),
                    Image.Resampling.BILINEAR,
                )
                left = (img.size[0] - width) // 2
                top = (img.size[1] - height) // 2
                img = img.crop((left, top, left + width, top + height))
            else:
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(
            f"cannot read image {path}: {exc}; remove it from the calibration folder"
        ) from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if prep.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(prep.mean, dtype=np.float32)[: pixels.shape[2]]
    std = np.asarray(prep.std, dtype=np.float32)[: pixels.shape[2]]
    return ((pixels * prep.scale - mean) / std).transpose(2, 0, 1)


@dataclass
class ImageFolderSource:
    """Images under a folder (recursive, sorted), preprocessed like the model was trained."""

    folder: Path
    input: GraphInput
    preprocess: Preprocess
    files: list[Path]
    num_samples: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_samples = len(self.files)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.files), batch_size):
            chunk = self.files[start : start + batch_size]
            batch = np.stack([_load_image(f, self.preprocess) for f in chunk])
            yield {self.input.name: batch.astype(self.input.dtype, copy=False)}

    def labels(self) -> np.ndarray | None:
        return None

    def describe(self) -> dict[str, Any]:
        p = self.preprocess
        return {
            "kind": "image_folder",
            "origin": str(self.folder),
            "samples": self.num_samples,
            "preprocess": {
                "size": list(p.size),
                "resize": p.resize,
                "mean": list(p.mean),
                "std": list(p.std),
                "channel_order": p.channel_order,
                "scale": p.scale,
            },
        }


def image_folder_source(
    folder: str | os.PathLike[str],
    inputs: Sequence[GraphInput],
    preprocess: Preprocess,
    samples: int | None = None,
) -> ImageFolderSource:
    folder = Path(folder)
    if len(inputs) != 1:
        raise UserError(
            f"an image folder feeds one input, the model has {len(inputs)}; use an .npz instead"
        )
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise UserError(
            f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES[:5])}, ...); "
            "point --data at a folder of images"
        )
    if samples is not None:
        files = files[:samples]
    channels = 1 if preprocess.channel_order == "L" else 3
    _check_sample_shape(inputs[0], (channels, *preprocess.size), f"images from {folder}")
    source = ImageFolderSource(folder, inputs[0], preprocess, files)
    _load_image(files[0], preprocess)  # fail early, before any calibration work
    return source


@dataclass
class LatentSource:
    """Generators: seeded standard-normal latents and noise maps, drawn batch by batch."""

    inputs: tuple[GraphInput, ...]
    num_samples: int
    seed: int = 0

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.num_samples, batch_size):
            n = min(batch_size, self.num_samples - start)
            shapes = []
            for inp in self.inputs:
                if any(d is None for d in inp.shape[1:]):
                    raise UserError(
                        f"input '{inp.name}' has dynamic non-batch dims {inp.shape}; "
                        "export with fixed shapes or calibrate from an .npz"
                    )
                shape = (n, *(int(d) for d in inp.shape[1:] if d is not None))
                shapes.append((inp.name, shape, inp.dtype))
            yield random_feed(shapes, rng)

    def labels(self) -> np.ndarray | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "latent",
            "origin": f"normal(0,1) seed={self.seed}",
            "samples": self.num_samples,
            "inputs": [i.name for i in self.inputs],
        }


def model_batch(inputs: Sequence[GraphInput]) -> int | None:
    """The batch the model was exported with (dim 0 fixed on its inputs), or None when dynamic."""
    fixed = {inp.shape[0] for inp in inputs if inp.shape and inp.shape[0]}
    if len(fixed) > 1:
        raise UserError(
            f"the model's inputs fix different batch sizes {sorted(fixed)} on dim 0; "
            "re-export it with one batch size or with --dynamic-batch"
        )
    return fixed.pop() if fixed else None


@dataclass
class FixedBatchSource:
    """A source for a fixed-batch model: whole batches of exactly `batch` samples.

    `batches(n)` ignores `n` (the model runs at no other size). The samples past the last whole
    batch are left out (`dropped`); fewer samples than one batch is a `UserError`.
    """

    inner: CalibrationSource
    batch: int
    num_samples: int = field(init=False)
    dropped: int = field(init=False)

    def __post_init__(self) -> None:
        available = self.inner.num_samples
        if available < self.batch:
            origin = self.inner.describe().get("origin", "the calibration data")
            raise UserError(
                f"{origin}: {available} samples, fewer than the model's fixed batch of "
                f"{self.batch}; provide at least {self.batch} or export with --dynamic-batch"
            )
        self.dropped = available % self.batch
        self.num_samples = available - self.dropped

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        del batch_size  # the model's own batch is the only one it accepts
        # islice stops before asking for the short tail batch: its images are never loaded
        yield from itertools.islice(self.inner.batches(self.batch), self.num_samples // self.batch)

    def labels(self) -> np.ndarray | None:
        labels = self.inner.labels()
        return None if labels is None else labels[: self.num_samples]

    def describe(self) -> dict[str, Any]:
        return {
            **self.inner.describe(),
            "samples": self.num_samples,
            "fixed_batch": self.batch,
            "dropped": self.dropped,
        }


def manifest_model_name(onnx_path: str | os.PathLike[str]) -> str | None:
    """The registry model named by the export manifest beside `OUT.onnx`, if there is one."""
    manifest = try_read(manifest_path(Path(onnx_path)), ExportManifest)
    # a factory path or TorchScript file has no registry defaults
    return manifest.registry_model if manifest is not None else None


def registry_preprocess(model_name: str | None) -> Preprocess | None:
    if model_name is None:
        return None
    from sase_deploy.models.registry import get_model_spec

    return get_model_spec(model_name).preprocess


def open_source(
    data: str,
    model: onnx.ModelProto,
    *,
    samples: int | None = None,
    preprocess: Preprocess | None = None,
    seed: int = 0,
) -> CalibrationSource:
    """Open `--data`: a folder of images, a `.npy`/`.npz` file, or `latent[:SEED]`.

    For a fixed-batch model the source is a `FixedBatchSource` at the model's batch.
    """
    inputs = graph_inputs(model)
    if not inputs:
        raise UserError("the model has no float inputs to calibrate")
    batch = model_batch(inputs)
    source = open_data(data, inputs, samples, preprocess, seed)
    return source if batch is None else FixedBatchSource(source, batch)


def open_data(
    data: str,
    inputs: tuple[GraphInput, ...],
    samples: int | None,
    preprocess: Preprocess | None,
    seed: int,
) -> CalibrationSource:
    """Open `data` for `inputs` (no fixed-batch wrapping: see `open_source`)."""
    if data == "latent" or data.startswith("latent:"):
        if ":" in data:
            try:
                seed = int(data.split(":", 1)[1])
            except ValueError as exc:
                raise UserError(
                    f"--data {data}: the seed after 'latent:' must be an integer"
                ) from exc
        return LatentSource(inputs, samples if samples is not None else 64, seed)
    path = Path(data)
    if not path.exists():
        raise UserError(
            f"calibration data {data} does not exist; give a folder, .npy/.npz or 'latent'"
        )
    if path.is_dir():
        if preprocess is None:
            raise UserError(
                f"no preprocessing known for images in {data}: pass --model NAME (registry "
                "defaults) or --size/--mean/--std"
            )
        return image_folder_source(path, inputs, preprocess, samples)
    if path.suffix in (".npy", ".npz"):
        return array_file_source(path, inputs, samples)
    raise UserError(f"calibration data {data}: expected a folder of images, .npy, .npz or 'latent'")
