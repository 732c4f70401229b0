"""FiftyOne labels in and out: prompts from frame-level masks, tracker outputs to frame labels.

Only conversions live here; the tracker knows nothing of FiftyOne, and these functions know nothing of tracking.
Object identity: in a ``Segmentation`` the pixel value is the object id (0 background, 255 void); in
``Detections`` an object is identified by ``index`` when set, else by its position (1-based) in the list.
"""

from __future__ import annotations

import numpy as np

import fiftyone as fo

VOID = 255
PROMPT_TYPES = (fo.Segmentation, fo.Detections)


def frame_field_name(field: str) -> str:
    """Accept ``"frames.name"`` or ``"name"`` for a frame-level field; return ``"name"``."""
    return field[len("frames."):] if field.startswith("frames.") else field


def frame_field_type(samples, field: str):
    """The label class stored in a frame-level field, or None if the field does not exist."""
    schema = samples.get_frame_field_schema() or {}
    f = schema.get(frame_field_name(field))
    if f is None:
        return None
    return getattr(f, "document_type", type(f))


def detection_to_mask(det: fo.Detection, frame_hw: tuple[int, int]) -> np.ndarray:
    """A detection's instance mask pasted into a full-frame bool mask (its box in relative coordinates)."""
    h, w = frame_hw
    mask = det.get_mask() if hasattr(det, "get_mask") else det.mask
    if mask is None:
        raise ValueError(f"detection {det.label!r} (id {det.id}) has no instance mask: prompts need masks, not boxes")
    x, y, bw, bh = det.bounding_box
    x0, y0 = int(round(x * w)), int(round(y * h))
    x1, y1 = int(round((x + bw) * w)), int(round((y + bh) * h))
    mask = np.asarray(mask).astype(bool)
    if mask.shape != (y1 - y0, x1 - x0) and y1 > y0 and x1 > x0:  # a mask not at the box's pixel size: resample
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) > 0
    full = np.zeros((h, w), bool)
    ys, xs = slice(max(y0, 0), min(y1, h)), slice(max(x0, 0), min(x1, w))
    full[ys, xs] = mask[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    return full


def prompt_masks(label, frame_hw: tuple[int, int]) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """One frame's prompt -> ({object id: mask}, {object id: class label}). Segmentation masks are returned at
    their stored size (the tracker checks it against the frame)."""
    if isinstance(label, fo.Segmentation):
        labels = label.get_mask()
        if labels is None:
            return {}, {}
        labels = np.asarray(labels)
        if labels.ndim == 3:  # RGB masks are not object-id maps
            raise ValueError("prompt Segmentation masks must be 2-D maps of object ids, not RGB")
        ids = [int(i) for i in np.unique(labels) if i != 0 and i != VOID]
        return {i: labels == i for i in ids}, {}
    if isinstance(label, fo.Detections):
        masks, names = {}, {}
        for pos, det in enumerate(label.detections, start=1):
            obj_id = int(det.index) if det.index is not None else pos
            if obj_id in masks:
                raise ValueError(f"two prompt detections share object id {obj_id}: set distinct `index` values")
            masks[obj_id] = detection_to_mask(det, frame_hw)
            if det.label:
                names[obj_id] = det.label
        return masks, names
    raise ValueError(f"prompt labels must be Segmentation or Detections with masks, got {type(label).__name__}")


def to_segmentation(labels: np.ndarray) -> fo.Segmentation:
    return fo.Segmentation(mask=np.ascontiguousarray(labels.astype(np.uint8)))


def to_detections(labels: np.ndarray, probabilities: dict[int, np.ndarray], names: dict[int, str]) -> fo.Detections:
    """One detection per object present in ``labels``: tight box, cropped mask, ``index`` = object id,
    ``confidence`` = mean foreground probability over the object's pixels."""
    h, w = labels.shape
    dets = []
    for obj_id in sorted(probabilities):
        m = labels == obj_id
        if not m.any():
            continue
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        dets.append(fo.Detection(
            label=names.get(obj_id, "object"),
            bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
            mask=m[y0:y1, x0:x1].copy(),
            index=int(obj_id),
            confidence=float(probabilities[obj_id][m].mean()),
        ))
    return fo.Detections(detections=dets)


def to_heatmap(coarse_scores: dict[int, np.ndarray]) -> fo.Heatmap | None:
    """D's coarse scores (the paper's Figure 1 view): the max over objects, clipped to [0, 1], at feature size."""
    if not coarse_scores:
        return None
    m = np.max(np.stack(list(coarse_scores.values())), axis=0)
    return fo.Heatmap(map=np.clip(m, 0.0, 1.0).astype(np.float32), range=[0.0, 1.0])


def _digest_value(h, value) -> None:
    """Feed one label attribute into a hash: arrays by shape, dtype and bytes; the rest by a stable repr."""
    if isinstance(value, np.ndarray):
        h.update(f"array{value.shape}{value.dtype.str}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, float):
        h.update(repr(round(value, 9)).encode())
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _digest_value(h, v)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


def prompt_digest(frames, prompt_field: str) -> str:
    """A digest of everything in a video's prompt field that can change the propagation: frame numbers, label types,
    masks (stored inline or on disk), boxes, object identities (``index``, ``instance``), class labels and keyframe
    flags. ``frames``: ``(frame_number, frame)`` pairs. The video itself is not read."""
    import hashlib

    h = hashlib.sha1()
    for frame_number, frame in frames:
        label = frame[prompt_field] if frame.has_field(prompt_field) else None
        if label is None:
            continue
        h.update(f"#{frame_number}:{type(label).__name__}".encode())
        items = label.detections if isinstance(label, fo.Detections) else \
            label.polylines if isinstance(label, fo.Polylines) else [label]
        for item in items:
            h.update(b"{")
            for key in ("label", "bounding_box", "index", "points", "closed", "filled", "keyframe"):
                if item.has_field(key):
                    h.update(key.encode())
                    _digest_value(h, item[key])
            instance = item["instance"] if item.has_field("instance") else None
            if instance is not None:
                h.update(b"instance")
                _digest_value(h, getattr(instance, "id", instance))
            mask = item.get_mask() if hasattr(item, "get_mask") else None
            if mask is not None:
                h.update(b"mask")
                _digest_value(h, np.asarray(mask))
            h.update(b"}")
    return h.hexdigest()[:16]
