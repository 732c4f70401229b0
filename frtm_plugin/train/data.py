"""Training data: sequences of frames with per-frame object-id label maps, from a DAVIS / YouTube-VOS-layout folder
or from a FiftyOne video dataset, and the released recipe's sampling of (reference frame, two test frames).

A sequence only needs three things: its frame count, ``read_label(i)`` (an (H, W) integer map of object ids, 0
background, 255 void, or ``None`` for an unannotated frame) and ``iter_frames(indices)`` (RGB uint8 frames in
order; a video is decoded once, front to back).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..io.davis import list_sequences, load_sequence
from ..io.labels import VOID, read_label_png

__all__ = ["TrainSequence", "davis_sequences", "fiftyone_sequences", "label_to_ids", "source_key"]


def label_to_ids(mask: np.ndarray, where: str = "mask") -> np.ndarray:
    """A mask as an (H, W) uint8 map of object ids: bool or {0, 255}-valued masks are one object (id 1)."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D map of object ids, got shape {m.shape} (RGB masks are not "
                         "supported; store object ids)")
    if m.dtype == bool:
        return m.astype(np.uint8)
    if m.dtype.kind == "f":
        if np.isin(np.unique(m), (0.0, 1.0)).all():
            return m.astype(np.uint8)
        raise ValueError(f"{where}: float masks must hold only 0 and 1")
    vals = np.unique(m)
    if vals.min() < 0 or vals.max() > 255:
        raise ValueError(f"{where}: object ids must be in 0..255, found {vals.min()}..{vals.max()}")
    if np.isin(vals, (0, VOID)).all():
        return (m == VOID).astype(np.uint8)
    return m.astype(np.uint8)


@dataclass
class TrainSequence:
    """One video for training. ``frame_reader(indices)`` yields RGB frames for the sorted ``indices``."""

    name: str
    num_frames: int
    label_reader: Callable[[int], np.ndarray | None]
    frame_reader: Callable[[Sequence[int]], Iterator[np.ndarray]]

    def read_label(self, index: int) -> np.ndarray | None:
        return self.label_reader(index)

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        return self.frame_reader(sorted(indices))


def source_key(kind: str, ident: str) -> str:
    """A folder name for a data source in the cache: readable prefix + short hash of its identity."""
    h = hashlib.sha1(f"{kind}:{ident}".encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(ident).name)[:40] or kind
    return f"{kind}-{stem}-{h}"


def davis_sequences(root: str | os.PathLike, names: Sequence[str] | None = None, exclude: Sequence[str] = (),
                    resolution: str = "480p") -> list[TrainSequence]:
    """Sequences of a DAVIS-layout (``JPEGImages/[480p/]<seq>``, ``Annotations/[480p/]<seq>``) or YouTube-VOS-layout
    (``JPEGImages/<seq>``, ``Annotations/<seq>``; sparse annotations allowed) folder. ``names``: all by default;
    ``exclude``: names to leave out (the validation sequences)."""
    root = Path(root)
    available = list_sequences(root, resolution)
    if names is None:
        names = available
    unknown = sorted(set(names) - set(available)) + sorted(set(exclude) - set(available))
    if unknown:
        raise ValueError(f"sequence(s) {unknown} not found under {root} (available: {', '.join(available[:12])}...)")
    out = []
    for name in names:
        if name in exclude:
            continue
        seq = load_sequence(root, name, resolution)
        ann = dict(seq.annotation_paths)
        paths = list(seq.frame_paths)

        def label_reader(i, ann=ann, name=name):
            p = ann.get(i)
            return None if p is None else label_to_ids(read_label_png(p), f"{name} frame {i}")

        def frame_reader(indices, paths=paths):
            from ..io.davis import read_image
            for i in indices:
                yield read_image(paths[i])

        out.append(TrainSequence(name, len(paths), label_reader, frame_reader))
    if not out:
        raise ValueError(f"no training sequence left in {root} after excluding {list(exclude)}")
    return out


def fiftyone_sequences(dataset, label_field: str = "ground_truth", exclude: Sequence[str] = (),
                       name_field: str | None = None) -> list[TrainSequence]:
    """Sequences from a FiftyOne **video** dataset (a ``fo.Dataset``, a view, or a dataset name) whose frames carry
    ``fo.Segmentation`` ground truth in ``frames.<label_field>`` (``mask`` or ``mask_path``; values are object ids,
    or 0/255 / bool for one object). Frames without the field are unannotated. A sequence is named
    ``sample[name_field]``, else the sample's ``sequence`` field when set (``frtm_plugin.fo.dataio.import_davis`` sets it), else
    its video file's stem; ``exclude`` leaves names out. FiftyOne is imported here only."""
    import fiftyone as fo  # lazily: the rest of the trainer does not need FiftyOne or its database

    ds = fo.load_dataset(dataset) if isinstance(dataset, str) else dataset
    media = getattr(ds, "media_type", None)
    if media != "video":
        raise ValueError(f"FiftyOne dataset {getattr(ds, 'name', ds)!r} has media type {media!r}; a video dataset "
                         "with frame-level Segmentation labels is needed")
    schema = ds.get_frame_field_schema() or {}
    if label_field not in schema:
        raise ValueError(f"the frames of {ds.name!r} have no field {label_field!r} (frame fields: {sorted(schema)})")

    from ..io.video import iter_video_frames

    out, seen = [], set()
    for sample in ds:
        path = sample.filepath
        if name_field is None and sample.has_field("sequence") and sample["sequence"]:
            name = str(sample["sequence"])  # datasets imported by fo.dataio.import_davis
        else:
            name = str(sample[name_field]) if name_field else Path(path).stem
        if name in seen:
            name = f"{name}-{sample.id}"
        seen.add(name)
        if name in exclude:
            continue
        labels: dict[int, np.ndarray] = {}
        for fn, frame in sample.frames.items():  # FiftyOne frame numbers start at 1
            seg = frame[label_field] if label_field in frame.field_names else None
            if seg is None:
                continue
            if not isinstance(seg, fo.Segmentation):
                raise ValueError(f"{name} frame {fn}: {label_field} is a {type(seg).__name__}, not a Segmentation")
            mask = seg.get_mask() if hasattr(seg, "get_mask") else seg.mask
            if mask is None:
                continue
            labels[fn - 1] = label_to_ids(mask, f"{name} frame {fn}")
        if not labels:
            continue
        count = sample.metadata.total_frame_count if sample.metadata is not None else None
        count = int(count) if count else max(labels) + 1

        def frame_reader(indices, path=path, name=name):
            want = list(indices)
            k = 0
            for i, frame in enumerate(iter_video_frames(path)):
                if k >= len(want):
                    return
                if i == want[k]:
                    yield frame
                    k += 1
            if k < len(want):
                raise ValueError(f"{name}: the video {path} has fewer frames than its labels ({want[k]} needed)")

        out.append(TrainSequence(name, count, labels.get, frame_reader))
    if not out:
        raise ValueError(f"no video of {ds.name!r} has frame-level {label_field!r} masks")
    return out
