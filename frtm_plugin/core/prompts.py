"""Prompts and object ids: the rules every entry point (SDK, operator, command line, training validation) shares.

A prompt set is a ``Keyframes`` mapping: frame index (0-based) -> {object id: bool mask at the frame's size, or a
:class:`~.box_prompt.BoxPrompt` that the video loop turns into a mask on that frame}.
Every (object, frame) in it is a keyframe: the output there is the mask, exactly. An **empty** mask says the object
is not visible on that frame (hidden, out of view): its output there is empty and its target model learns the frame
as background; every object needs at least one non-empty keyframe. Object ids are 1..254 (0 is the
background, 255 the void of DAVIS label maps). A mask may be off by one pixel in each dimension (a rounding artefact
of some annotation tools): it is padded or cropped; anything more is an error.

The benchmark protocol (DAVIS, YouTube-VOS) reads only each object's first appearance: :func:`first_appearances`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .box_prompt import BoxPrompt
from .defaults import MAX_OBJECT_ID, VOID

Keyframes = dict[int, dict[int, np.ndarray]]


def check_object_id(obj_id) -> int:
    i = int(obj_id)
    if i != obj_id or not 1 <= i <= MAX_OBJECT_ID:
        raise ValueError(f"object ids must be integers in 1..{MAX_OBJECT_ID} (0 is background, {VOID} void), "
                         f"got {obj_id!r}")
    return i


def fit_mask(mask, frame_hw: tuple[int, int], obj_id) -> np.ndarray:
    """A prompt mask as a bool (H, W) array of the frame's size; a one-pixel difference is padded with background
    or cropped, anything more is an error. Floats are thresholded at 0.5, integers at 0."""
    if hasattr(mask, "detach"):  # a torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"the mask of object {obj_id} must be 2-D (H, W), got shape {m.shape}")
    h, w = frame_hw
    if abs(m.shape[0] - h) > 1 or abs(m.shape[1] - w) > 1:
        raise ValueError(f"the mask of object {obj_id} is {m.shape[0]}x{m.shape[1]} (HxW) but the frame is {h}x{w}; "
                         "masks must match the frame size (a one-pixel difference is padded)")
    m = m > (0.5 if m.dtype.kind == "f" else 0)
    out = np.zeros((h, w), dtype=bool)
    hh, ww = min(h, m.shape[0]), min(w, m.shape[1])
    out[:hh, :ww] = m[:hh, :ww]
    return out


def masks_from_label_map(label_map, void: int = VOID) -> dict[int, np.ndarray]:
    """A DAVIS-style index map -> {object id: bool mask}, background 0 and void 255 left out."""
    lm = np.asarray(label_map)
    if lm.ndim != 2:
        raise ValueError(f"a label map must be 2-D object ids (H, W), got shape {lm.shape}")
    return {int(i): lm == i for i in np.unique(lm) if i != 0 and i != void}


def keyframes_from_label_maps(label_maps: Mapping[int, np.ndarray]) -> Keyframes:
    """{frame index: label map} -> keyframes (frames whose map holds no object are left out)."""
    out = {}
    for index in sorted(label_maps):
        masks = masks_from_label_map(label_maps[index])
        if masks:
            out[int(index)] = masks
    return out


def is_absent(mask) -> bool:
    """An empty mask keyframe: the object is annotated as not visible on that frame."""
    return isinstance(mask, np.ndarray) and not mask.any()


def visible_objects(frame: Mapping[int, object] | None) -> dict[int, object]:
    """The objects of one keyframe that are annotated as visible (masks with a pixel, and boxes)."""
    return {obj: m for obj, m in (frame or {}).items() if not is_absent(m)}


def first_appearances(keyframes: Keyframes) -> Keyframes:
    """The benchmark protocol: each object's mask on the first frame where it appears; later ones dropped."""
    seen: set[int] = set()
    out = {}
    for index in sorted(keyframes):
        new = {i: m for i, m in visible_objects(keyframes[index]).items() if i not in seen}
        if new:
            out[index] = new
            seen |= set(new)
    return out


def object_keyframes(keyframes: Keyframes, visible_only: bool = False) -> dict[int, list[int]]:
    """Object id -> the sorted frame indices where it is annotated (``visible_only``: where it is annotated visible)."""
    out: dict[int, list[int]] = {}
    for index in sorted(keyframes):
        for obj_id in (visible_objects(keyframes[index]) if visible_only else keyframes[index]):
            out.setdefault(obj_id, []).append(index)
    return out


def check_keyframes(keyframes: Keyframes, frame_hw: tuple[int, int]) -> Keyframes:
    """Every id valid and every mask fitted to the frame size, before anything runs: a bad prompt fails with the
    frame and object it concerns, not halfway through a video. Empty masks are kept (the object is not visible
    there); :func:`check_visible` asks that each object be visible somewhere."""
    out = {}
    for index in sorted(keyframes):
        if int(index) != index or index < 0:
            raise ValueError(f"keyframe indices are 0-based frame numbers, got {index!r}")
        frame = {}
        for obj_id, mask in keyframes[index].items():
            if isinstance(mask, BoxPrompt):
                obj = check_object_id(obj_id)
                if mask.clipped(frame_hw).is_empty():
                    raise ValueError(f"frame {index}: the box of object {obj} ({mask}) lies outside the "
                                     f"{frame_hw[1]}x{frame_hw[0]} frame")
                frame[obj] = mask.clipped(frame_hw)
                continue
            try:
                obj = check_object_id(obj_id)
                m = fit_mask(mask, frame_hw, obj)
            except ValueError as e:
                raise ValueError(f"frame {index}: {e}") from None
            frame[obj] = m
        if frame:
            out[int(index)] = frame
    return out


def check_visible(keyframes: Keyframes) -> None:
    """Every object is annotated visible on at least one frame (an object annotated only as absent has nothing to
    follow)."""
    visible = set(object_keyframes(keyframes, visible_only=True))
    for obj, frames in sorted(object_keyframes(keyframes).items()):
        if obj not in visible:
            shown = ", ".join(str(f) for f in frames[:5]) + (", ..." if len(frames) > 5 else "")
            raise ValueError(f"object {obj} is annotated only with empty masks (frame {shown}: 'not visible "
                             "here'); give its mask on at least one frame where it shows")


def keyframe_digests(keyframes: Keyframes) -> dict[str, str]:
    """``"frame:object"`` -> a digest of that keyframe's mask (or box): what a later run compares to find the
    keyframes that changed."""
    import hashlib

    from .box_prompt import BoxPrompt

    out = {}
    for index, frame in keyframes.items():
        for obj, m in frame.items():
            if isinstance(m, BoxPrompt):
                data = repr(m).encode()
            else:
                a = np.ascontiguousarray(np.asarray(m, bool))
                data = f"{a.shape}".encode() + np.packbits(a).tobytes()
            out[f"{int(index)}:{int(obj)}"] = hashlib.sha1(data).hexdigest()[:16]
    return out


def changed_spans(old: dict[str, str], new: dict[str, str], num_frames: int,
                  direction: str) -> dict[int, tuple[int, int]]:
    """The frames each object's changed keyframes can change: object id -> (first, last) frame index, inclusive.

    A keyframe added, removed or edited at frame k of object o changes o's masks from the keyframe before k to the
    one after k (old and new keyframes of o both count: either may bound what the old run computed); with
    ``direction="forward"`` from k on. An object's spans are joined into one."""
    def parse(d):
        return {tuple(int(x) for x in key.split(":")): v for key, v in d.items()}

    old_kf, new_kf = parse(old), parse(new)
    changed = {key for key in set(old_kf) | set(new_kf) if old_kf.get(key) != new_kf.get(key)}
    spans: dict[int, tuple[int, int]] = {}
    for k, obj in changed:
        frames = sorted({f for f, o in set(old_kf) | set(new_kf) if o == obj} - {k})
        before = [f for f in frames if f < k]
        after = [f for f in frames if f > k]
        lo = k if direction == "forward" else (before[-1] if before else 0)
        hi = after[0] if after else num_frames - 1
        if obj in spans:
            lo, hi = min(lo, spans[obj][0]), max(hi, spans[obj][1])
        spans[obj] = (lo, hi)
    return spans
