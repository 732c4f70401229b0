"""FiftyOne labels in and out: prompts from frame-level masks, tracker outputs to frame labels.

Only conversions live here; the tracker knows nothing of FiftyOne, and these functions know nothing of tracking.
Object identity: in a ``Segmentation`` the pixel value is the object id (0 background, 255 void); in
``Detections`` / ``Polylines`` an object is identified by its ``instance`` (what the App sets), else ``index``, else
its position (1-based) in the list (see :func:`read_prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import fiftyone as fo

from ..core.defaults import VOID  # noqa: F401  (re-exported)

PROMPT_TYPES = (fo.Segmentation, fo.Detections, fo.Polylines)


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
    """A detection's instance mask pasted into a full-frame bool mask. The mask may be stored at any size (the App
    stores brush masks at screen resolution): it is resampled to the box's pixel size."""
    h, w = frame_hw
    mask = det.get_mask() if hasattr(det, "get_mask") else det.mask
    if mask is None:
        raise ValueError(f"detection {det.label!r} (id {det.id}) has no instance mask")
    from ..core.box_prompt import BoxPrompt

    box = BoxPrompt.from_relative(det.bounding_box, frame_hw)
    x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
    mask = np.asarray(mask)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    mask = mask.astype(bool)
    full = np.zeros((h, w), bool)
    if x1 <= x0 or y1 <= y0:
        return full
    if mask.shape != (y1 - y0, x1 - x0):
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) > 0
    ys, xs = slice(max(y0, 0), min(y1, h)), slice(max(x0, 0), min(x1, w))
    full[ys, xs] = mask[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    return full


def polyline_to_mask(poly: fo.Polyline, frame_hw: tuple[int, int]) -> np.ndarray:
    """A closed or filled polyline (relative coordinates, one or more shapes) rasterised to a bool mask."""
    import cv2

    if not (poly.closed or poly.filled):
        raise ValueError(f"polyline {poly.label!r} (id {poly.id}) is open: only closed or filled polylines outline "
                         "an object")
    h, w = frame_hw
    out = np.zeros((h, w), np.uint8)
    shapes = [np.round(np.asarray(pts, np.float64) * [w, h]).astype(np.int32) for pts in poly.points if len(pts) >= 3]
    if shapes:
        cv2.fillPoly(out, shapes, 1)
    return out > 0


def is_placeholder(item) -> bool:
    """A label the App copied from a keyframe onto a later frame (``keyframe=False``): not a prompt."""
    return item.has_field("keyframe") and item["keyframe"] is False


def _items(label):
    if isinstance(label, fo.Detections):
        return label.detections
    if isinstance(label, fo.Polylines):
        return label.polylines
    return [label]


@dataclass
class PromptSet:
    """A video's prompts: keyframes (frame index -> {object id: mask or box}), class labels and FiftyOne instances
    per object id."""

    keyframes: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)
    instances: dict = field(default_factory=dict)
    corrections: set = field(default_factory=set)  # (frame index, object id) keyframes edited in the output field

    @property
    def num_keyframes(self) -> int:
        return sum(len(v) for v in self.keyframes.values())


def read_prompts(frames, prompt_field: str, frame_hw: tuple[int, int],
                 corrections_field: str | None = None) -> PromptSet:
    """Every prompt label of a video's ``(frame_number, frame)`` pairs as keyframes, plus the output labels a user
    corrected in the App (``corrections_field``, the run's ``<field>_instances``: labels with ``keyframe=True``,
    which the App sets on what it edits; a prompt of the same object on the same frame wins).

    - ``Segmentation``: object ids are the pixel values (0 background, 255 void).
    - ``Detections`` / ``Polylines``: labels with ``keyframe=False`` (the App's copies) are skipped; an object is
      identified by its ``instance`` when set (the App sets one per drawn object), else by ``index``, else by its
      position in the list. Instances get their ``index`` as object id when one of their labels has it, else the
      smallest free id in order of appearance. A detection's mask may be of any size (pasted into its box); a
      detection without a mask is a box prompt (turned into a mask on its frame); polylines must be closed or filled.
    """
    from ..core.box_prompt import BoxPrompt
    from ..core.prompts import check_object_id, masks_from_label_map

    entries = []  # (frame index, key, item, explicit id, from the corrections field)
    out = PromptSet()
    for frame_number, frame in frames:
        if corrections_field and frame.has_field(corrections_field) and frame[corrections_field] is not None:
            for item in _items(frame[corrections_field]):
                if item.has_field("keyframe") and item["keyframe"] is True:
                    key = ("instance", item.instance_id) if item.instance_id is not None else ("index", item.index)
                    entries.append((frame_number - 1, key, item, item.index, True))
        label = frame[prompt_field] if frame.has_field(prompt_field) else None
        if label is None:
            continue
        index = frame_number - 1
        if isinstance(label, fo.Segmentation):
            labels = label.get_mask()
            if labels is None:
                continue
            labels = np.asarray(labels)
            if labels.ndim == 3:
                raise ValueError(f"frame {frame_number}: prompt Segmentation masks must be 2-D maps of object ids, "
                                 "not RGB")
            masks = masks_from_label_map(labels)
            if masks:
                out.keyframes.setdefault(index, {}).update(masks)
            continue
        if not isinstance(label, (fo.Detections, fo.Polylines)):
            raise ValueError(f"prompt labels must be Segmentation, Detections or Polylines, got "
                             f"{type(label).__name__}")
        for pos, item in enumerate(_items(label), start=1):
            if is_placeholder(item):
                continue
            explicit = int(item.index) if item.index is not None else None
            key = ("instance", item.instance_id) if item.instance_id is not None else \
                ("index", explicit) if explicit is not None else ("position", pos)
            entries.append((index, key, item, explicit, False))

    ids: dict = {}  # key -> object id
    taken = set(i for frame in out.keyframes.values() for i in frame)
    for _, key, _, explicit, _ in entries:  # explicit ids first
        if explicit is not None and key not in ids:
            ids[key] = check_object_id(explicit)
            taken.add(ids[key])
    for _, key, _, _, _ in entries:  # then the rest, in order of appearance
        if key in ids:
            continue
        preferred = key[1] if key[0] == "position" else None
        obj = preferred if preferred is not None and preferred not in taken else \
            next(i for i in range(1, 255) if i not in taken)
        ids[key] = check_object_id(obj)
        taken.add(obj)
    prompted = {(index, ids[key]) for index, key, _, _, correction in entries if not correction}
    for index, key, item, _, correction in entries:
        obj = ids[key]
        if correction and (index, obj) in prompted:
            continue  # the prompt field says what this object is on this frame
        frame = out.keyframes.setdefault(index, {})
        if correction:
            out.corrections.add((index, obj))
        if obj in frame:
            raise ValueError(f"frame {index + 1}: two prompt labels are object {obj}; give each object its own "
                             "`instance` or `index`")
        if isinstance(item, fo.Polyline):
            frame[obj] = polyline_to_mask(item, frame_hw)
        elif (item.get_mask() if hasattr(item, "get_mask") else item.mask) is None:
            frame[obj] = BoxPrompt.from_relative(item.bounding_box, frame_hw)
        else:
            frame[obj] = detection_to_mask(item, frame_hw)
        if item.label:
            out.names.setdefault(obj, item.label)
        if item.instance_id is not None:
            out.instances.setdefault(obj, item.instance)
    out.keyframes = {i: f for i, f in out.keyframes.items() if f}
    return out


def to_segmentation(labels: np.ndarray) -> fo.Segmentation:
    return fo.Segmentation(mask=np.ascontiguousarray(labels.astype(np.uint8)))


def instance_for(sample_id: str, obj_id: int) -> fo.Instance:
    """The instance an output object gets when its prompt had none: derived from the video and the object id, so
    every frame, every re-run and every shard gives the object the same one."""
    import hashlib

    return fo.Instance(id=hashlib.sha1(f"frtm:{sample_id}:{obj_id}".encode()).hexdigest()[:24])


def object_detection(mask: np.ndarray, obj_id: int, label: str, confidence: float | None = None,
                     instance: fo.Instance | None = None, keyframe: bool = False) -> fo.Detection:
    """One object's full-frame bool mask as a Detection: tight box, cropped mask, ``index`` = object id."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    det = fo.Detection(label=label, bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
                       mask=mask[y0:y1, x0:x1].copy(), index=int(obj_id), confidence=confidence)
    if instance is not None:
        det.instance = fo.Instance(id=instance.id)
    det["keyframe"] = bool(keyframe)
    return det


def to_detections(labels: np.ndarray, probabilities: dict[int, np.ndarray], names: dict[int, str],
                  instances: dict[int, fo.Instance] | None = None, keyframes=()) -> fo.Detections:
    """One detection per object present in ``labels``: tight box, cropped mask, ``index`` = object id,
    ``confidence`` = mean foreground probability over the object's pixels, ``instance`` (one per object across the
    video, so the App edits the object as one track) and ``keyframe``: True for the objects in ``keyframes`` (the
    user's corrections of this field, kept as keyframes), False otherwise (as the App marks what it did not draw)."""
    dets = []
    for obj_id in sorted(probabilities):
        m = labels == obj_id
        if m.any():
            dets.append(object_detection(m, obj_id, names.get(obj_id, "object"),
                                         float(probabilities[obj_id][m].mean()), (instances or {}).get(obj_id),
                                         obj_id in keyframes))
    return fo.Detections(detections=dets)


def to_heatmap(coarse_scores: dict[int, np.ndarray], inference_hw, frame_hw) -> fo.Heatmap | None:
    """D's coarse scores as a Heatmap at the frame's size: ``map`` (uint8, 255 = score 1) shows the max over
    objects; each object's own scores stay on the label at feature size
    (``object_scores`` float16 (K, Hf, Wf), ``object_ids``, ``inference_size``), so :func:`show_heatmap_object`
    switches the map between objects without running the model again."""
    if not coarse_scores:
        return None
    ids = sorted(coarse_scores)
    stack = np.stack([np.asarray(coarse_scores[i], np.float32) for i in ids]).astype(np.float16)
    heatmap = fo.Heatmap(range=[0, 255], object_ids=ids, object_scores=stack,
                         inference_size=[int(inference_hw[0]), int(inference_hw[1])])
    show_heatmap_object(heatmap, None, frame_hw)
    return heatmap


def show_heatmap_object(heatmap: fo.Heatmap, obj_id: int | None, frame_hw=None) -> None:
    """Redraw a heatmap made by :func:`to_heatmap` for object ``obj_id`` (None: the max over its objects); a frame
    where that object has no scores (not tracked there) shows an empty map. ``frame_hw`` defaults to the map's."""
    from ..core.tracker import coarse_score_map

    hw = tuple(frame_hw) if frame_hw is not None else tuple(heatmap.map.shape[:2])
    ids = list(heatmap["object_ids"])
    rows = range(len(ids)) if obj_id is None else [ids.index(obj_id)] if obj_id in ids else []
    m = np.zeros(hw, np.float32)
    for r in rows:
        m = np.maximum(m, coarse_score_map(heatmap["object_scores"][r], heatmap["inference_size"], hw))
    heatmap.map = np.round(m * 255.0).astype(np.uint8)
    heatmap["shown"] = obj_id


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


def prompt_digest(frames, prompt_field: str, corrections_field: str | None = None) -> str:
    """A digest of everything in a video's prompts that can change the propagation: frame numbers, label types,
    masks (stored inline or on disk), boxes, object identities (``index``, ``instance``), class labels; and the
    corrected labels (``keyframe=True``) of ``corrections_field``. ``frames``: ``(frame_number, frame)`` pairs. The
    video itself is not read."""
    import hashlib

    h = hashlib.sha1()
    for frame_number, frame in frames:
        for name, only_keyframes in ((prompt_field, False), (corrections_field, True)):
            label = frame[name] if name and frame.has_field(name) else None
            if label is not None:
                _digest_label(h, frame_number, label, only_keyframes)
    return h.hexdigest()[:16]


def _digest_label(h, frame_number: int, label, only_keyframes: bool) -> None:
    # the App's copies of a keyframe are not prompts (and it re-interpolates them as users edit); in the output
    # field only the labels a user corrected (keyframe=True) are
    items = [(pos, item) for pos, item in enumerate(_items(label)) if not is_placeholder(item) and
             (not only_keyframes or (item.has_field("keyframe") and item["keyframe"] is True))]
    if only_keyframes and not items:
        return
    h.update(f"#{frame_number}:{type(label).__name__}".encode())
    for pos, item in items:
        h.update(f"{{{pos}".encode())
        for key in ("label", "bounding_box", "index", "points", "closed", "filled"):
            if item.has_field(key):
                h.update(key.encode())
                _digest_value(h, item[key])
        instance = getattr(item, "instance_id", None)
        if instance is not None:
            h.update(b"instance")
            _digest_value(h, str(instance))
        mask = item.get_mask() if hasattr(item, "get_mask") else None
        if mask is not None:
            h.update(b"mask")
            _digest_value(h, np.asarray(mask))
        h.update(b"}")
