"""Reference / candidate / difference images of a generator's first sample, as PNG data URIs."""

from __future__ import annotations

import base64
import io

import numpy as np

MAX_SIDE = 256  # larger outputs are shown downscaled: the report stays small


def _png(image: np.ndarray) -> str:
    """(C, H, W) in [0, 1] with C in {1, 3} -> 'data:image/png;base64,...'."""
    from PIL import Image

    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    mode_pixels = pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels[:3], (1, 2, 0))
    picture = Image.fromarray(mode_pixels)
    if max(picture.size) > MAX_SIDE:
        scale = MAX_SIDE / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def previews(output: str, ref: np.ndarray, got: np.ndarray) -> dict[str, str] | None:
    """Images of sample 0 of `output` (None unless it is image-shaped: N x 1|3 x H x W).

    Both images share the reference's value range; the difference |ref - got| is stretched to
    its own maximum so that small errors are visible (its scale is in the report's numbers).
    """
    if ref.ndim != 4 or ref.shape[1] not in (1, 3):
        return None
    r = ref[0].astype(np.float64)
    g = np.nan_to_num(got[0].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(r.min()), float(r.max())
    span = high - low if high > low else 1.0
    diff = np.abs(r - g).max(axis=0, keepdims=True)
    peak = float(diff.max())
    return {
        "output": output,
        "reference": _png((r - low) / span),
        "candidate": _png((g - low) / span),
        "difference": _png(diff / peak if peak > 0 else diff),
    }
