"""Helpers shared by test modules (the fixtures that use them live in conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

DIGITS_INPUT = (1, 8, 8)  # C, H, W of both digits classifiers


class DigitsExports:
    """The trained digits classifiers exported once per session per variant, on first use.

    The files are shared by every module of the session: read them, or copy them with
    `copy_export` before changing them or writing beside them.
    """

    def __init__(self, folder: Path) -> None:
        """`folder`: an empty session folder the exports are written into."""
        self.folder = folder
        self._made: dict[tuple[str, int | None, bool], Path] = {}

    def get(
        self, name: str = "se_resnet_digits", batch: int | None = None, fuse: bool = True
    ) -> Path:
        """`name` (se_resnet_digits or sase_resnet_digits) with its shipped weights, as
        `folder/<variant>/<name>.onnx` beside its export manifest.

        batch: None for a dynamic batch (--dynamic-batch), else that fixed batch size (1 is
        the export default: no --input-shape, as users get it). fuse: False for --no-fuse.
        """
        key = (name, batch, fuse)
        if key not in self._made:
            from sase_deploy.export import export_model
            from sase_deploy.models.digits import digits_checkpoint_file

            variant = ("dynamic" if batch is None else f"batch{batch}") + (
                "" if fuse else "-unfused"
            )
            path = self.folder / variant / f"{name}.onnx"
            # the manifest records --input-shape when given: batch 1 is exported without it
            shapes = None if batch in (None, 1) else [(batch, *DIGITS_INPUT)]
            export_model(name, path, checkpoint=digits_checkpoint_file(name), fuse=fuse,
                         dynamic_batch=batch is None, input_shapes=shapes)  # fmt: skip
            self._made[key] = path
        return self._made[key]


def manifest_of(onnx_path: Path) -> Path:
    """The export manifest written beside `onnx_path` (NAME.onnx -> NAME.manifest.json)."""
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".manifest.json")


def copy_export(source: Path, folder: Path) -> Path:
    """Copy an exported model and its manifest into `folder` (made if missing) under the same
    name (the manifest records it): a private copy of a session export that a test may change
    or write beside. Returns the copy's path."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / source.name
    shutil.copyfile(source, dest)
    if manifest_of(source).is_file():
        shutil.copyfile(manifest_of(source), manifest_of(dest))
    return dest
