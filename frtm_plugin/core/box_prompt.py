"""A box drawn around an object, turned into a mask on its frame (the App lets users draw boxes as well as masks).

GrabCut (OpenCV) segments the box from the frame's colours: the box's outside is background, its inside probably
foreground. It runs at the tracker's inference size (a box needs no more detail than the tracker sees) and the mask is
scaled back to the frame. When GrabCut finds nothing (a box on a flat region), the box's inscribed ellipse is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class BoxPrompt:
    """An object's box in pixels of the frame: [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def from_relative(cls, box, frame_hw) -> "BoxPrompt":
        """From FiftyOne's relative [x, y, w, h] box."""
        h, w = frame_hw
        x, y, bw, bh = box
        return cls(int(round(x * w)), int(round(y * h)), int(round((x + bw) * w)), int(round((y + bh) * h)))

    def clipped(self, frame_hw) -> "BoxPrompt":
        h, w = frame_hw
        return BoxPrompt(max(0, self.x0), max(0, self.y0), min(w, self.x1), min(h, self.y1))

    def is_empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


def _ellipse(hw, box: BoxPrompt) -> np.ndarray:
    out = np.zeros(hw, np.uint8)
    center = ((box.x0 + box.x1 - 1) / 2, (box.y0 + box.y1 - 1) / 2)
    axes = (max(1, (box.x1 - box.x0) // 2), max(1, (box.y1 - box.y0) // 2))
    cv2.ellipse(out, (int(round(center[0])), int(round(center[1]))), axes, 0, 0, 360, 1, -1)
    return out > 0


def box_to_mask(image: np.ndarray, box: BoxPrompt, max_side: int = 854, iterations: int = 5,
                seed: int = 0) -> np.ndarray:
    """A bool (H, W) mask of the object in ``box`` on ``image`` ((H, W, 3) uint8 RGB). Deterministic for a seed."""
    hw = image.shape[:2]
    box = box.clipped(hw)
    if box.is_empty():
        raise ValueError(f"the box {box} lies outside the {hw[1]}x{hw[0]} frame")
    scale = min(1.0, max_side / max(hw))
    small_hw = (max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale)))
    small = cv2.resize(image, small_hw[::-1], interpolation=cv2.INTER_AREA) if scale < 1 else image
    x0, y0 = int(box.x0 * scale), int(box.y0 * scale)
    x1, y1 = max(x0 + 1, int(np.ceil(box.x1 * scale))), max(y0 + 1, int(np.ceil(box.y1 * scale)))
    mask = np.zeros(small_hw, np.uint8)
    found = np.zeros(small_hw, bool)
    if x1 - x0 >= 3 and y1 - y0 >= 3 and (x1 - x0) * (y1 - y0) < small_hw[0] * small_hw[1]:
        cv2.setRNGSeed(seed)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd,
                    iterations, cv2.GC_INIT_WITH_RECT)
        found = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if scale < 1:
        found = cv2.resize(found.astype(np.uint8), hw[::-1], interpolation=cv2.INTER_NEAREST) > 0
    inside = np.zeros(hw, bool)
    inside[box.y0:box.y1, box.x0:box.x1] = True
    found &= inside
    if found.sum() < 0.05 * inside.sum():  # nothing separable in the box: its inscribed ellipse
        found = _ellipse(hw, box)
    return found
