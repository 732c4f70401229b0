"""Where a frame goes: the one video loop, shared by the SDK, the command line and training validation.

    for out in propagate_in_video(tracker, frames, keyframes, direction="both"):
        out.index, out.labels, out.probabilities, out.coarse_scores

``frames`` is any iterable of (H, W, 3) uint8 RGB frames in display order (a decoder, a folder reader); it is read
once, front to back. ``keyframes`` maps frame index -> {object id: mask or box} (see :mod:`.prompts`): every
annotated (object, frame) is a keyframe, and the output there is the annotation, exactly (a box becomes a mask on
its frame first, :mod:`.box_prompt`).

``direction="forward"``: each object starts at its first keyframe; a later keyframe re-anchors it (its target model
learns the mask as a protected sample), so the frames after a correction follow it. Frames before an object's first
keyframe have no mask for it. Outputs come in frame order.

``direction="both"``: a second, backward pass runs from each object's last keyframe towards the start (re-anchored
at its earlier keyframes the same way). Per object and frame: before its first keyframe the backward pass, after
its last the forward pass, between two keyframes both, combined by ``combine``: ``"blend"`` weighs each pass by its
closeness to the keyframe it started from, ``"nearest"`` takes the pass from the nearer keyframe. A keyframe too
small for D to learn from (:data:`MIN_ANCHOR_CELLS`) starts no backward pass of an object that has a larger one.
Frames after the last keyframe come out in order during the forward pass; the others come out last to first during
the backward pass.
For the backward pass the frames up to the last keyframe are kept on disk at the inference size, with the forward
pass's per-object probabilities where a backward pass will join them: nothing grows in memory with the video.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .box_prompt import BoxPrompt, box_to_mask
from .prompts import Keyframes, check_keyframes, check_visible, object_keyframes, visible_objects
from .tracker import inference_size

DIRECTIONS = ("forward", "both")
COMBINE_MODES = ("blend", "nearest")
#: A keyframe mask covering fewer than this many of D's score cells (at the inference size) anchors no backward pass
#: of an object that has a larger keyframe: D fitted on a sliver learns next to nothing (bmx-bumps #61, 142 px of
#: the rider behind the ramp, started a backward pass that lost him on the 30 frames before it: J&F 66 -> 42). The
#: forward pass still re-anchors there, and it alone covers the frames from the previous anchor up to it.
MIN_ANCHOR_CELLS = 4.0


@dataclass
class FrameOutput:
    index: int  # 0-based frame index
    labels: np.ndarray  # (H, W) uint8 object ids, 0 = background
    probabilities: dict[int, np.ndarray]  # per object, (H, W) float32 foreground probability before the merge
    coarse_scores: dict[int, np.ndarray] = field(default_factory=dict)  # per object, D's (Hf, Wf) scores
    keyframe_objects: tuple[int, ...] = ()  # the objects annotated on this frame (their output is the annotation)


def _to_output(index: int, step, keyframe_objects) -> FrameOutput:
    return FrameOutput(index=index, labels=step.labels.cpu().numpy().astype(np.uint8),
                       probabilities={k: v.cpu().numpy() for k, v in step.probabilities.items()},
                       coarse_scores={k: v.cpu().numpy() for k, v in step.coarse_scores.items()},
                       keyframe_objects=tuple(sorted(keyframe_objects)))


def _empty(index: int, hw) -> FrameOutput:
    return FrameOutput(index=index, labels=np.zeros(hw, np.uint8), probabilities={})


def propagate_in_video(tracker, frames: Iterable[np.ndarray], keyframes: Keyframes, *, direction: str = "forward",
                       combine: str = "blend", num_frames: int | None = None,
                       work_dir: str | None = None) -> Iterator[FrameOutput]:
    """Track the annotated objects through the video; yields one :class:`FrameOutput` per frame (see the module
    docstring for the order). Bad keyframes (ids, sizes, empty masks, frames past the end) raise before anything
    is yielded, except a keyframe past the end of a video whose length was not given, which raises at its end."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    if not keyframes:
        raise ValueError("no keyframe: annotate at least one object on one frame")
    if num_frames is not None and max(keyframes) >= num_frames:
        raise ValueError(f"a keyframe is on frame {max(keyframes)} but the video has {num_frames} frames")
    frames = iter(frames)
    try:
        first = next(frames)
    except StopIteration:
        raise ValueError("the video holds no frame") from None
    keyframes = check_keyframes(keyframes, first.shape[:2])
    check_visible(keyframes)
    tracker.reset()

    def all_frames():
        yield first
        yield from frames

    last_visible = max(f[-1] for f in object_keyframes(keyframes, visible_only=True).values())
    if direction == "forward" or last_visible == 0:  # every object shows only on the first frame: nothing to go back to
        yield from _forward_only(tracker, all_frames(), keyframes)
    else:
        with tempfile.TemporaryDirectory(prefix="frtm-both-", dir=work_dir) as tmp:
            yield from _both(tracker, all_frames(), keyframes, combine, Path(tmp))


def _masks_from_boxes(keyframes: Keyframes, index: int, frame: np.ndarray, seed: int) -> None:
    """Replace the boxes annotated on this frame by masks, in place (a later pass then reuses the same masks)."""
    given = keyframes.get(index)
    if given:
        for obj, m in given.items():
            if isinstance(m, BoxPrompt):
                given[obj] = box_to_mask(frame, m, seed=seed + obj)


def _forward_only(tracker, frames, keyframes: Keyframes) -> Iterator[FrameOutput]:
    last = max(keyframes)
    index = -1
    for index, frame in enumerate(frames):
        _masks_from_boxes(keyframes, index, frame, tracker.config.seed)
        given = keyframes.get(index)
        if not tracker.objects and not visible_objects(given):
            yield _empty(index, frame.shape[:2])
            continue
        yield _to_output(index, tracker.step(frame, given), given or ())
    if index < last:
        raise ValueError(f"a keyframe is on frame {last} but the video ended after {index + 1} frames")


class _DiskFrames:
    """Arrays of one shape per frame index, in a memory-mapped file (created when the first one arrives)."""

    def __init__(self, path: Path, count: int, dtype):
        self.path, self.count, self.dtype = path, count, dtype
        self.data: np.ndarray | None = None

    def __setitem__(self, i: int, value: np.ndarray) -> None:
        if self.data is None:
            self.data = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                  shape=(self.count, *value.shape))
        self.data[i] = value

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.data[i])


def _both(tracker, frames, keyframes: Keyframes, combine: str, tmp: Path) -> Iterator[FrameOutput]:
    spans = object_keyframes(keyframes, visible_only=True)  # "not visible" keyframes anchor no pass
    first_kf, last_kf = min(k[0] for k in spans.values()), max(k[-1] for k in spans.values())
    cached = _DiskFrames(tmp / "frames.npy", last_kf + 1, np.uint8)
    # Forward probabilities a backward pass will meet: frames first_kf..last_kf, objects in slots (float32: where
    # only the forward pass counts, the output equals forward mode exactly).
    slot = {obj: k for k, obj in enumerate(sorted(spans))}
    forward = _DiskFrames(tmp / "forward.npy", last_kf - first_kf + 1, np.float32)
    forward_present: dict[int, tuple[int, ...]] = {}
    forward_coarse: dict[int, dict[int, np.ndarray]] = {}
    full_hw = None

    # Forward pass.
    index = -1
    for index, frame in enumerate(frames):
        full_hw = frame.shape[:2]
        _masks_from_boxes(keyframes, index, frame, tracker.config.seed)
        small = tracker.shrink(frame)
        if index <= last_kf:
            cached[index] = small
        if index < first_kf:
            continue  # the backward pass fills these
        given = keyframes.get(index)
        step = tracker.step(small, given, frame_hw=full_hw)
        if index > last_kf:
            yield _to_output(index, step, given or ())
            continue
        probs = step.inference_probabilities
        block = np.zeros((len(slot), *small.shape[:2]), np.float32)
        for obj, p in probs.items():
            block[slot[obj]] = p.cpu().numpy()
        forward[index - first_kf] = block
        forward_present[index] = tuple(sorted(probs))
        forward_coarse[index] = {k: v.cpu().numpy() for k, v in step.coarse_scores.items()}
    if index < last_kf:
        raise ValueError(f"a keyframe is on frame {last_kf} but the video ended after {index + 1} frames")

    # Backward pass, combining with the forward one frame by frame.
    anchors = _anchors(keyframes, spans, _cells_per_pixel(tracker, full_hw))
    tracker.reset()
    for index in range(last_kf, -1, -1):
        given = keyframes.get(index) or {}
        # an object starts where it has an anchor; once started, every keyframe of it re-anchors it, as forward
        start = {obj: m for obj, m in given.items()
                 if obj in tracker.objects or index in anchors.get(obj, ()) or not m.any()}
        step = None
        if tracker.objects or any(m.any() for m in start.values()):
            step = tracker.step(cached[index], start, frame_hw=full_hw)
        back = step.inference_probabilities if step is not None else {}
        fwd = {}
        if index >= first_kf:
            block = forward[index - first_kf]
            fwd = {obj: torch.from_numpy(np.array(block[slot[obj]])) for obj in forward_present[index]}
        probs, coarse = {}, {}
        for obj in sorted(set(fwd) | set(back)):
            weight = _forward_weight(index, anchors[obj], combine)  # 1: forward only, 0: backward only
            if obj not in fwd:
                weight = 0.0
            elif obj not in back:
                weight = 1.0
            if weight >= 1.0:
                probs[obj] = fwd[obj]
            elif weight <= 0.0:
                probs[obj] = back[obj]
            else:
                probs[obj] = weight * fwd[obj].to(back[obj]) + (1.0 - weight) * back[obj]
            source = forward_coarse.get(index, {}) if weight >= 0.5 else step.coarse_scores  # weight < 1: stepped
            if obj in source:
                coarse[obj] = source[obj]
        out = tracker.finish(probs, full_hw, dict(given))
        result = _to_output(index, out, given)
        result.coarse_scores = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in coarse.items()}
        yield result


def _cells_per_pixel(tracker, full_hw) -> float:
    """D's score cells per pixel of a full-size mask, at the tracker's inference size."""
    hw = inference_size(full_hw, tracker.config.max_size)
    return (hw[0] * hw[1]) / (full_hw[0] * full_hw[1]) / tracker.backbone.stride ** 2


def _anchors(keyframes: Keyframes, spans: dict[int, list[int]], cells_per_pixel: float) -> dict[int, list[int]]:
    """Per object, the visible keyframes that anchor a backward pass: those of at least MIN_ANCHOR_CELLS cells, or
    all of them when none is that large."""
    out = {}
    for obj, kfs in spans.items():
        large = [k for k in kfs if keyframes[k][obj].sum() * cells_per_pixel >= MIN_ANCHOR_CELLS]
        out[obj] = large or kfs
    return out


def _forward_weight(index: int, kfs: list[int], combine: str) -> float:
    """How much of the forward pass an object's probability at ``index`` takes (its keyframes ``kfs``)."""
    if index <= kfs[0]:
        return 0.0 if index < kfs[0] else 1.0  # on the keyframe both passes give the annotation
    if index >= kfs[-1]:
        return 1.0
    prev = max(k for k in kfs if k <= index)
    nxt = min(k for k in kfs if k >= index)
    if prev == nxt:
        return 1.0
    if combine == "nearest":
        return 1.0 if index - prev <= nxt - index else 0.0
    return (nxt - index) / (nxt - prev)
