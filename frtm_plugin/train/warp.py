"""Synthetic motion for training S: a random affine map (rotation, scale, shift about the object) plus a smooth
random displacement field (a thin-plate-like bend), applied alike to a frame and its label map.

A warped test frame shows the object in a pose and place its video never had, so S sees D's scores on appearance
changes beyond the 25 training videos' own motion. ``random_warp`` draws the parameters (plain floats, so an epoch's
plan stays a function of its seed); ``apply_warp`` resamples (the frame bilinearly, the labels by nearest
neighbour, both mirrored at the border so that they stay consistent).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Warp", "random_warp", "apply_warp", "IDENTITY"]

GRID = 4  # the displacement field's control points per side


@dataclass(frozen=True)
class Warp:
    angle: float = 0.0  # degrees, counter-clockwise
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # (dy, dx) as fractions of the frame's height and width
    bend: tuple[float, ...] = ()  # 2 * GRID * GRID control displacements (y then x), fractions of min(H, W)

    @property
    def is_identity(self) -> bool:
        return self.angle == 0 and self.scale == 1 and self.shift == (0.0, 0.0) and not any(self.bend)


IDENTITY = Warp()


def random_warp(rng: np.random.Generator, max_angle: float = 15.0, max_scale: float = 0.15, max_shift: float = 0.1,
                max_bend: float = 0.03) -> Warp:
    u = rng.uniform(-1.0, 1.0, size=4 + 2 * GRID * GRID)
    return Warp(angle=float(u[0] * max_angle), scale=float(1.0 + u[1] * max_scale),
                shift=(float(u[2] * max_shift), float(u[3] * max_shift)),
                bend=tuple(float(x * max_bend) for x in u[4:]))


def apply_warp(image: np.ndarray, label: np.ndarray, warp: Warp, center: tuple[float, float]) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
    """``image`` (H, W, 3) uint8 and ``label`` (H, W) uint8 -> both warped; ``center`` (y, x) is the fixed point of
    the rotation and scaling (the object's centre)."""
    if warp.is_identity:
        return image, label
    H, W = label.shape
    fwd = cv2.getRotationMatrix2D((float(center[1]), float(center[0])), warp.angle, warp.scale)
    fwd[:, 2] += (warp.shift[1] * W, warp.shift[0] * H)
    inv = cv2.invertAffineTransform(fwd)  # output pixel -> where it comes from
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    map_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    map_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    if warp.bend:
        b = np.asarray(warp.bend, np.float32).reshape(2, GRID, GRID) * min(H, W)
        map_y += cv2.resize(b[0], (W, H), interpolation=cv2.INTER_CUBIC)
        map_x += cv2.resize(b[1], (W, H), interpolation=cv2.INTER_CUBIC)
    map_x, map_y = map_x.astype(np.float32), map_y.astype(np.float32)
    out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    lab = cv2.remap(label, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return out, lab
