"""Label maps on disk: DAVIS-style indexed PNGs (object ids as palette indices, 0 background, 255 void)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

VOID = 255


def davis_palette() -> list[int]:
    """The PASCAL VOC colour map the DAVIS toolkits write (index i -> bit-interleaved RGB), flat, 768 values."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = davis_palette()


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an (H, W) map of object ids (0..255) as an indexed PNG with the DAVIS palette."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be 2-D (H, W), got shape {labels.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"label values must be in 0..255, got {labels.min()}..{labels.max()}")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(_PALETTE)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def read_label_png(path: str | os.PathLike, binary_to_object: bool = True) -> np.ndarray:
    """Read a label PNG as an (H, W) integer array of object ids.

    * Indexed ('P') PNGs: the palette indices are the ids, 255 = void (DAVIS 2017 / YouTube-VOS).
    * ``binary_to_object``: a non-indexed PNG whose values are a subset of {0, 255} is a DAVIS-2016 binary mask;
      255 becomes object 1 (not void). DAVIS-2016 has one object per sequence and the DAVIS-2016 protocol merges
      all objects into one, so "any foreground = object 1" is the intended reading. Indexed PNGs are never remapped.
    * Grey + alpha ('LA', e.g. DAVIS-2016 ``bear/00077.png``) or grey stored as RGB(A): the alpha is dropped and the
      colour channels must agree; a real colour mask is an error. Mode '1' (bilevel) gives 0/1.
    """
    with Image.open(path) as im:
        mode = im.mode
        arr = np.array(im)
    if arr.ndim == 3:
        colour = arr[..., :1] if mode == "LA" else arr[..., :3]
        if not np.all(colour == colour[..., :1]):
            raise ValueError(f"{path}: a {mode} PNG with differing colour channels is not a label map "
                             "(expected an indexed 'P' or a greyscale PNG)")
        arr = np.ascontiguousarray(colour[..., 0])
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if binary_to_object and mode != "P":
        if np.isin(np.unique(arr), (0, VOID)).all():
            arr = (arr == VOID).astype(arr.dtype)
    return arr


