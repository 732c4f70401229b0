"""The FiftyOne SDK: propagate masks through the videos of any sample collection, and score them (DAVIS J&F).

    import frtm_plugin
    report = frtm_plugin.propagate(dataset, "prompt", "frtm")          # frames.prompt -> frames.frtm (+ _instances)
    summary = frtm_plugin.evaluate(dataset, "frtm", "ground_truth", eval_key="davis")

Both work from plain Python; the plugin's operators are thin wrappers over them. A propagation run is resumable:
each finished video records its configuration's hash in ``<label_field>_frtm``, and a later run with the same
configuration skips it. Labels are written in bulk, a chunk of frames per database write.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import numpy as np

import fiftyone as fo

from .. import __version__
from ..core.target_model import SolverConfig
from ..core.tracker import DEFAULT_MAX_SIZE, TrackerConfig, inference_size
from .labels import (PROMPT_TYPES, frame_field_name, frame_field_type, instance_for, object_detection, prompt_digest,
                     read_prompts, to_detections, to_heatmap, to_segmentation)
from .runs import (PROMPTS_CHANGED, FieldLock, FieldLockLostError, check_not_foreign, check_not_prompt_or_ground_truth,
                   done_key, output_fields, record_shard, redo_reason, run_key, shard_states, split_for_shards)
from ..core.prompts import changed_spans, keyframe_digests
from ..io.video import Prefetch, TruncatedVideoError, VideoReadError, iter_video_frames

log = logging.getLogger(__name__)

DAVIS_METRIC_URI = "@frtm/frtm-vos/davis_jf"


@dataclass
class PropagationReport:
    processed: list[str] = field(default_factory=list)  # sample ids
    skipped: dict[str, str] = field(default_factory=dict)  # sample id -> why it was not (re)computed
    failed: dict[str, str] = field(default_factory=dict)  # sample id -> the error that stopped it (not marked done)
    reasons: dict[str, str] = field(default_factory=dict)  # sample id -> why it was (re)computed
    keyframes: dict[str, int] = field(default_factory=dict)  # sample id -> (object, frame) keyframes it used
    recomputed: dict[str, int] = field(default_factory=dict)  # sample id -> frames written (all, or what changed)
    frames: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else float("nan")

    def __str__(self) -> str:
        s = f"{len(self.processed)} video(s) propagated, {self.frames} frames written, {self.fps:.2f} FPS"
        if self.skipped:
            s += f"; {len(self.skipped)} skipped"
        if self.failed:
            s += f"; {len(self.failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in self.failed.items())
        return s


def _check_fields(samples, prompt_field: str, label_field: str, store_instances: bool, store_heatmaps: bool,
                  force: bool = False) -> None:
    """Validate everything before touching a label: a bad field stops the run with nothing written."""
    if samples.media_type != "video":
        raise ValueError(f"FRTM propagates masks through videos; this collection's media type is "
                         f"{samples.media_type!r}")
    prompt_type = frame_field_type(samples, prompt_field)
    if prompt_type is None:
        raise ValueError(f"the prompt field 'frames.{frame_field_name(prompt_field)}' does not exist; frame-level "
                         "fields: " + ", ".join(sorted(samples.get_frame_field_schema() or {})))
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"the prompt field 'frames.{frame_field_name(prompt_field)}' holds "
                         f"{getattr(prompt_type, '__name__', prompt_type)}; prompts must be Segmentation masks or "
                         "Detections with instance masks")
    check_not_prompt_or_ground_truth(samples._dataset, prompt_field, label_field, store_instances, store_heatmaps)
    out = output_fields(label_field)
    wanted = {"segmentation": fo.Segmentation, "instances": fo.Detections, "heatmap": fo.Heatmap}
    for kind, cls in wanted.items():
        if kind == "heatmap" and not store_heatmaps:
            continue
        existing = frame_field_type(samples, out[kind])
        if existing is not None and existing is not cls:
            raise ValueError(f"the output field 'frames.{out[kind]}' already holds "
                             f"{getattr(existing, '__name__', existing)}, not {cls.__name__}; choose another "
                             "label_field or delete that field first")
    schema = samples.get_field_schema()
    if out["marker"] in schema and not isinstance(schema[out["marker"]], fo.StringField):
        raise ValueError(f"the sample field '{out['marker']}' exists with another type; choose another label_field")
    check_not_foreign(samples._dataset, label_field, force, store_instances, store_heatmaps)


def _declare_fields(dataset, out, store_instances, store_heatmaps) -> None:
    """Create the output fields up front, so frames without a label can be written as None."""
    frame_schema = dataset.get_frame_field_schema() or {}
    for kind, cls, wanted in (("segmentation", fo.Segmentation, True), ("instances", fo.Detections, store_instances),
                              ("heatmap", fo.Heatmap, store_heatmaps)):
        if wanted and out[kind] not in frame_schema:
            dataset.add_frame_field(out[kind], fo.EmbeddedDocumentField, embedded_doc_type=cls)
    if store_heatmaps:
        _add_heatmap_colorscale(dataset, out["heatmap"])
    if out["marker"] not in dataset.get_field_schema():
        dataset.add_sample_field(out["marker"], fo.StringField)
    if out["keyframes"] not in dataset.get_field_schema():
        dataset.add_sample_field(out["keyframes"], fo.DictField)


# D's scores in a perceptually uniform scale, dark purple (0) through teal (0.5, D's decision level) to yellow (1),
# on the map's uint8 range (0..255 for scores 0..1); a score of exactly 0 is left transparent by the App.
HEATMAP_COLORSCALE = "viridis"


def _add_heatmap_colorscale(dataset, heatmap_field: str) -> None:
    """Give the heatmap field the plugin's colour scale in the dataset's App colour scheme, unless the user gave it
    one: the rest of their scheme is kept. The App uses it when colouring by value; by field, it draws a heatmap in
    the field's colour, fading with the score."""
    path = f"frames.{heatmap_field}"
    scheme = dataset.app_config.color_scheme or fo.ColorScheme()
    scales = list(scheme.colorscales or [])
    if any(c.get("path") == path for c in scales):
        return
    scheme.colorscales = scales + [{"path": path, "name": HEATMAP_COLORSCALE}]
    dataset.app_config.color_scheme = scheme
    dataset.save()


def show_heatmap(samples, label_field: str, object_id: int | None = None) -> int:
    """Show one object's coarse scores in the heatmaps a propagation stored (``store_heatmaps=True``) on every frame
    of ``samples``, or with ``object_id=None`` the max over objects (as stored). Only the heatmap's map changes;
    returns the number of frames redrawn. ``label_field``: the propagation's label field (``frames.`` or not) or its
    ``_scores`` field."""
    from .labels import show_heatmap_object

    name = frame_field_name(label_field)
    schema = samples.get_frame_field_schema() or {}
    field = name if frame_field_type(samples, name) is fo.Heatmap else output_fields(name)["heatmap"]
    if frame_field_type(samples, field) is not fo.Heatmap:
        raise ValueError(f"no heatmaps of {label_field!r}: frames.{field} is not a Heatmap field (frame fields: "
                         f"{sorted(schema)}); propagate with store_heatmaps=True first")
    if object_id is not None:
        ids = set(itertools.chain.from_iterable(x or [] for x in samples.values(f"frames.{field}.object_ids",
                                                                              unwind=True)))
        if int(object_id) not in ids:
            raise ValueError(f"object {object_id} has no scores in frames.{field}: its objects are {sorted(ids)}")
        object_id = int(object_id)
    n = 0
    for sample in samples.select_fields(f"frames.{field}"):
        for frame in sample.frames.values():
            heatmap = frame[field]
            if heatmap is None or getattr(heatmap, "object_ids", None) is None:  # stored before per-object scores
                continue
            show_heatmap_object(heatmap, object_id)
            n += 1
        sample.save()
    return n


def _run_config(info, tracker_config: TrackerConfig) -> dict:
    import torch

    return {
        "model": info.model, "backbone": info.backbone, "target_layer": info.target_layer,
        "segnet_path": info.segnet_path, "segnet_sha256": info.segnet_sha256,
        "backbone_weights": info.backbone_weights,
        "solver": asdict(tracker_config.solver), "num_aug": tracker_config.num_aug, "merge": tracker_config.merge,
        "max_size": tracker_config.max_size, "seed": tracker_config.seed,
        "search_margin": tracker_config.search_margin, "search_growth": tracker_config.search_growth,
        "auto_hide": tracker_config.auto_hide, "d_only_gain": tracker_config.d_only_gain,
        "versions": {"frtm_plugin": __version__, "torch": torch.__version__, "fiftyone": fo.__version__},
    }


def config_hash(config: dict) -> str:
    keep = {k: v for k, v in config.items() if k not in ("versions", "backbone_weights", "segnet_path")}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class _Job:
    """What every video of one propagation run shares."""

    tracker: object
    dataset: object
    prompt_field: str
    out: dict
    store_instances: bool
    store_heatmaps: bool
    chunk: int
    lock: FieldLock
    direction: str
    combine: str
    shard: dict | None = None
    io_threads: bool = True  # decode ahead, write behind


@dataclass
class VideoPrompts:
    """One video opened for propagation (:func:`open_video_prompts`)."""

    frames: Iterator[np.ndarray]  # every frame, the first included, decoded once front to back
    prompts: object  # labels.PromptSet: the keyframes, class names, instances, corrections
    instances: dict  # object id -> the fo.Instance its outputs carry (the prompt's, else one derived from the id)
    num_frames: int | None  # the count FiftyOne declares (None when unknown)


@contextlib.contextmanager
def open_video_prompts(sample, prompt_field: str, corrections_field: str | None = None, decode_ahead: bool = True):
    """A video's decoder and its prompts, checked against its first frame: what the SDK and the apply_model video
    model both run ``propagate_in_video`` on. No prompt, or no frame, raises ValueError; the decoder (a background
    thread a few frames ahead, unless ``decode_ahead=False``) is closed on leaving the block."""
    expected = sample.metadata.total_frame_count if sample.metadata is not None else None
    # FiftyOne's count may be an estimate (duration x rate) where the container has no index: allow one frame
    frames = iter_video_frames(sample.filepath, expected_frames=expected - 1 if expected and expected > 1 else None)
    if decode_ahead:
        frames = Prefetch(frames)
    try:
        first = next(frames, None)
        if first is None:
            raise ValueError(f"{sample.filepath} holds no frame")
        prompts = read_prompts(sample.frames.items(), prompt_field, first.shape[:2],
                               corrections_field=corrections_field)
        if not prompts.keyframes:
            raise ValueError(f"no prompt: no frame of 'frames.{prompt_field}' holds an object (a mask, a box or a "
                             "filled polyline)")
        instances = {obj: prompts.instances.get(obj) or instance_for(sample.id, obj)
                     for frame in prompts.keyframes.values() for obj in frame}
        yield VideoPrompts(itertools.chain([first], frames), prompts, instances,
                           expected if expected and expected > 0 else None)
    finally:
        frames.close()


def _propagate_one(job: _Job, sample, key: str, on_frame, previous_keyframes: dict | None = None) -> tuple[int, int]:
    """Track one video through the core's video loop and write its labels, then mark it done with ``key``; returns
    (frames written, keyframes used). Bad input (no prompt, a mask of the wrong size, an unreadable video) raises
    before anything is written; a video that ends before its declared frame count raises after what could be
    written was, and is not marked done."""
    from ..core.video_loop import propagate_in_video

    out, lock = job.out, job.lock
    marker = out["marker"]
    target = None
    n = 0
    corrections = job.out["instances"] if job.store_instances else None
    try:
        with open_video_prompts(sample, job.prompt_field, corrections, decode_ahead=job.io_threads) as video:
            prompts, instances, expected = video.prompts, video.instances, video.num_frames
            digests = keyframe_digests(prompts.keyframes)
            # what is not a keyframe's mask but is written on every frame: class labels, instances, the prompt field
            digests["labels"] = hashlib.sha1(json.dumps([job.prompt_field, sorted(prompts.names.items()), sorted(
                (o, str(i.id)) for o, i in instances.items())]).encode()).hexdigest()[:16]
            if previous_keyframes is not None and expected and previous_keyframes.get("labels") == digests["labels"]:
                # same configuration, same objects and labels, other keyframes: recompute only what they change
                previous_keyframes = {k: v for k, v in previous_keyframes.items() if k != "labels"}
                current = {k: v for k, v in digests.items() if k != "labels"}
                spans = changed_spans(previous_keyframes, current, expected, job.direction)
                if _spans_can_be_recomputed(job, prompts, spans):
                    n = _recompute_spans(job, sample, prompts, instances, spans)
                    target = job.dataset[sample.id]
                    target[marker], target[out["keyframes"]] = key, digests
                    target.save()
                    return n, prompts.num_keyframes

            outputs = propagate_in_video(job.tracker, video.frames, prompts.keyframes, direction=job.direction,
                                         combine=job.combine, num_frames=expected)

            def write_frame(target, res):
                fr = target.frames[res.index + 1]
                fr[out["segmentation"]] = to_segmentation(res.labels)
                if job.store_instances:
                    corrected = [obj for obj in res.keyframe_objects if (res.index, obj) in prompts.corrections]
                    fr[out["instances"]] = to_detections(res.labels, res.probabilities, prompts.names, instances,
                                                         keyframes=corrected)
                if job.store_heatmaps:
                    frame_hw = tuple(res.labels.shape[:2])
                    fr[out["heatmap"]] = to_heatmap(res.coarse_scores,
                                                    inference_size(frame_hw, job.tracker.config.max_size), frame_hw)

            writer = _LabelWriter(job, sample.id, write_frame, background=job.io_threads)
            try:
                # the first output comes only after every keyframe was checked against the frame
                for res in outputs:
                    writer.put(res)
                    on_frame()
            finally:
                target, n = writer.finish()  # what was written is saved, also when the video stops short
            lock.check()
            target[marker] = key  # stored with the last chunk: the video is complete
            target[out["keyframes"]] = digests  # what a later run compares to recompute only what changed
            target.save()
            return n, prompts.num_keyframes
    except TruncatedVideoError as e:
        raise TruncatedVideoError(e.path, e.decoded, e.expected, labelled=n) from None


class _LabelWriter:
    """Builds and saves one video's frame labels in a background thread while the model computes the next frames:
    frames in order, one bulk save per ``job.chunk`` frames, the field lock checked before each save. The sample is
    fetched at the first frame and marked in progress (a resumed run redoes the video). Only this thread touches it
    until :meth:`finish`; its first error (a lost lock, the database) is raised in the caller's thread, at the next
    :meth:`put` or at :meth:`finish`."""

    _END = object()

    def __init__(self, job: _Job, sample_id: str, write_frame, background: bool = True):
        import queue
        import threading

        self._job, self._sample_id, self._write_frame = job, sample_id, write_frame
        self._error: BaseException | None = None
        self._target = None
        self._written = self._pending = 0
        self._thread = None
        if background:
            self._queue = queue.Queue(maxsize=max(2, 2 * job.chunk))
            self._thread = threading.Thread(target=self._run, name="frtm-label-writer", daemon=True)
            self._thread.start()

    def _write(self, res) -> None:
        job = self._job
        if self._target is None:
            self._target = job.dataset[self._sample_id]
            self._target[job.out["marker"]] = None
            self._target.save()
        self._write_frame(self._target, res)
        self._written += 1
        self._pending += 1
        if self._pending >= job.chunk:
            self._save()

    def _save(self) -> None:
        self._job.lock.check()  # never write on after another run took the field over
        self._target.save()  # one bulk write per chunk of frames
        self._pending = 0

    def _run(self) -> None:
        try:
            while (res := self._queue.get()) is not self._END:
                self._write(res)
            if self._pending:
                self._save()
        except BaseException as e:  # noqa: BLE001  (raised in the caller's thread)
            self._error = e
            while self._queue.get() is not self._END:  # let the producer finish without blocking
                pass

    def put(self, res) -> None:
        if self._thread is None:  # in the caller's thread
            self._write(res)
            return
        if self._error is not None:
            self.finish()
        self._queue.put(res)

    def finish(self):
        """Wait for every frame put to be saved; return (the sample, frames written) or raise the writer's error."""
        if self._thread is None:
            if self._pending:
                self._save()
        elif self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._target, self._written


def _spans_can_be_recomputed(job: _Job, prompts, spans: dict) -> bool:
    """Whether each changed object can be re-propagated over its span alone: not when heatmaps are stored (they are
    per frame, of all objects: the whole video is redone so none goes stale), nor when a span holds only "not
    visible" keyframes of an object that is annotated visible elsewhere (it must be tracked from before the span)."""
    from ..core.prompts import is_absent

    if job.store_heatmaps:
        return False
    for obj, (lo, hi) in spans.items():
        masks = [f[obj] for k, f in prompts.keyframes.items() if lo <= k <= hi and obj in f]
        if masks and all(is_absent(m) for m in masks):
            return False
    return True


def _recompute_spans(job: _Job, sample, prompts, instances, spans: dict) -> int:
    """Re-propagate each changed object over its span only (its keyframes there; a fresh target model at the span's
    first keyframe) and rewrite just that object on those frames: its new mask replaces its old one and wins over
    other objects except where they are annotated; the others' stored labels stay as they were (their detections
    are rebuilt only where the object now covers some of their pixels). Returns the number of frames rewritten."""
    import itertools

    from ..core.video_loop import propagate_in_video

    out = job.out
    target = job.dataset[sample.id]
    target[out["marker"]] = None  # in progress: an interrupted update is redone in full by the next run
    target.save()
    rewritten: set[int] = set()
    for obj, (lo, hi) in sorted(spans.items()):
        sub_keyframes = {k - lo: {obj: f[obj]} for k, f in prompts.keyframes.items() if lo <= k <= hi and obj in f}
        decoder = iter_video_frames(sample.filepath) if sub_keyframes else None
        if sub_keyframes:
            frames = itertools.islice(decoder, lo, hi + 1)
            results = ((lo + r.index, r.labels == obj, r.probabilities)
                       for r in propagate_in_video(job.tracker, frames, sub_keyframes, direction=job.direction))
        else:  # the object lost its last keyframe here: it is removed from the span
            results = ((i, None, {}) for i in range(lo, hi + 1))
        with contextlib.closing(decoder) if decoder is not None else contextlib.nullcontext():
            _rewrite_span(job, target, prompts, instances, obj, results, rewritten)
        target.save()
    return len(rewritten)


def _rewrite_span(job: _Job, target, prompts, instances, obj: int, results, rewritten: set) -> None:
    """Write one object's re-propagated span into the stored labels (see :func:`_recompute_spans`)."""
    out = job.out
    for index, new, probabilities in results:
        fr = target.frames[index + 1]
        old = fr[out["segmentation"]].get_mask() if fr[out["segmentation"]] is not None else None
        labels = np.array(old, np.uint8) if old is not None else np.zeros(new.shape, np.uint8)
        labels[labels == obj] = 0
        if new is not None:
            annotated = np.zeros(labels.shape, bool)  # other objects' keyframes on this frame stay exact
            for other, m in prompts.keyframes.get(index, {}).items():
                if other != obj and isinstance(m, np.ndarray):
                    annotated |= m
            labels[new & ~annotated] = obj
        fr[out["segmentation"]] = to_segmentation(labels)
        if job.store_instances:
            fr[out["instances"]] = _merge_detections(fr[out["instances"]], old, labels, obj, probabilities,
                                                     prompts, instances, index)
        rewritten.add(index)


def _merge_detections(stored, old_labels, labels: np.ndarray, obj: int, probabilities: dict, prompts, instances,
                      index: int) -> fo.Detections:
    """The frame's detections after ``obj`` was recomputed: another object's detection is kept as stored unless its
    pixels changed (then rebuilt with its stored confidence); ``obj``'s is rebuilt."""
    old = {d.index: d for d in (stored.detections if stored is not None else [])}
    dets = []
    for i in (int(v) for v in np.unique(labels) if v not in (0, 255)):
        m = labels == i
        if i != obj and i in old and old_labels is not None and np.array_equal(m, old_labels == i):
            dets.append(old[i])  # untouched: as stored
            continue
        confidence = float(probabilities[i][m].mean()) if i == obj and i in probabilities else \
            (old[i].confidence if i in old else None)
        dets.append(object_detection(m, i, prompts.names.get(i, "object"), confidence, instances.get(i),
                                     (index, i) in prompts.corrections))
    return fo.Detections(detections=dets)


def propagate(samples, prompt_field: str, label_field: str, model: str = "default", *, backbone: str | None = None,
              device: str | None = None, max_size: int | None = DEFAULT_MAX_SIZE, num_aug: int = 5,
              merge: str = "released", store_instances: bool = True, store_heatmaps: bool = False,
              overwrite: bool = False, force: bool = False, lock_wait: float = 0.0, seed: int = 0,
              direction: str = "both", combine: str = "blend", chunk_frames: int = 64,
              progress=True, shard: dict | None = None, io_threads: bool = True,
              search_margin: float | None = None) -> PropagationReport:
    """Propagate each video's prompts through the whole video and store the results as frame labels.

    ``prompt_field``: a frame-level ``Segmentation`` (object ids as pixel values), ``Detections`` (masks of any
    size in their boxes, or boxes alone) or ``Polylines`` (closed or filled), as the App draws them. Every annotated
    (object, frame) is a keyframe: the output there is the annotation; a later keyframe re-anchors the object
    (corrections); labels the App copied onto later frames (``keyframe=False``) are ignored; object identity is the
    label's ``instance``, else ``index``, else its position. ``direction="both"`` (default) also fills the frames
    before an object's first keyframe by propagating backwards and combines both directions between keyframes
    (``combine``: ``"blend"`` or ``"nearest"``); ``"forward"`` only propagates forwards.

    Writes ``frames.<label_field>`` (Segmentation of object ids), ``frames.<label_field>_instances`` (Detections:
    cropped mask, ``index`` = object id, ``label`` from the prompt, ``confidence``, and one ``instance`` per object
    across the video, the prompt's when it had one, so the App edits each object as a track) and optionally
    ``frames.<label_field>_scores`` (Heatmap of D's coarse scores).

    - ``search_margin``: D's scores count only near each object's box on the previous frame, grown by this many
      times its longer side (``TrackerConfig.search_margin``); ``None``: the model's own (0.25 for this project's
      models, the whole frame for the authors'), ``math.inf``: the whole frame (objects that jump far between frames).
    - ``max_size``: the longest side at which to infer (masks are stored at the video's size); the default,
      ``DEFAULT_MAX_SIZE``, is the scale the segmentation network was trained at; ``None`` = full resolution.
    - ``overwrite=False`` resumes: a video already done with the same configuration **and the same prompts** is
      skipped; ``report.reasons`` / ``report.skipped`` say why each video was (re)computed or not.
    - Labels this plugin did not write are never replaced unless ``force=True``; the prompt field and the ground
      truth of an evaluation are never written.
    - The run claims ``label_field`` in the database for its duration: a second run into the same field waits up to
      ``lock_wait`` seconds, then refuses (a claim whose run died is taken over).
    - ``progress``: True for a progress bar, False for none, or a callable ``f(fraction, message)``.
    - ``shard``: ``{"run": id, "index": i, "count": n}`` when this call is one of the ``n`` shards of one sharded run
      (:func:`queue_shards`; each over its own videos): the shards claim the field together and each records its
      state (:func:`shard_states`).
    - ``io_threads``: decode each video a few frames ahead and build and save its labels in background threads, so
      the model never waits for I/O (False: all in the caller's thread; the same labels either way).

    A video with no prompt, an unreadable video or a mask of the wrong size is reported and skipped; a video that
    ends before its declared frame count keeps the frames it had but is reported failed and never marked done.
    """
    import torch

    from ..models import build_tracker

    prompt_field = frame_field_name(prompt_field)
    # checked before the model loads, so bad input fails fast; again below, once the field is ours
    check_request(samples, prompt_field, label_field, force, store_instances, store_heatmaps)
    out = output_fields(label_field)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if direction not in ("forward", "both") or combine not in ("blend", "nearest"):
        raise ValueError(f"direction must be 'forward' or 'both' and combine 'blend' or 'nearest', got "
                         f"{direction!r} and {combine!r}")
    config = TrackerConfig(solver=SolverConfig(), num_aug=num_aug, merge=merge, max_size=max_size, seed=seed,
                           search_margin=search_margin)
    tracker, info = build_tracker(model, backbone, device, config)
    # the settings the tracker runs with (the model's own filled in), so a change of them redoes the videos
    run_config = dict(_run_config(info, tracker.config), direction=direction, combine=combine)
    run_hash = config_hash(run_config)
    dataset = samples._dataset

    lock = FieldLock(dataset, label_field, description=info.describe(), group=shard["run"] if shard else None,
                     member=shard["index"] if shard else None).acquire(wait_s=lock_wait)
    try:
        # again, now that the field is ours: another run may have written it (and its run record) meanwhile
        dataset.reload()
        _check_fields(samples, prompt_field, label_field, store_instances, store_heatmaps, force)
        _declare_fields(dataset, out, store_instances, store_heatmaps)
        samples.compute_metadata()  # frame counts: progress, and the check that a video decodes whole
        job = _Job(tracker, dataset, prompt_field, out, store_instances, store_heatmaps, chunk_frames, lock, direction,
                   combine, shard, io_threads)
        report = _propagate_all(job, samples, label_field, run_config, run_hash, overwrite, progress)
    finally:
        lock.release()
    return report


def check_request(samples, prompt_field: str, label_field: str, force: bool = False, store_instances: bool = True,
                  store_heatmaps: bool = False) -> None:
    """The checks :func:`propagate` makes before it loads a model (fields, types, the guards on the output); also for
    a caller that queues the work elsewhere (sharded runs). While another FRTM run holds the field its labels are
    FRTM's (its run record may be mid-update): the ownership check is then left to the claim."""
    busy = FieldLock.holder(samples._dataset, label_field) is not None
    _check_fields(samples, frame_field_name(prompt_field), label_field, store_instances, store_heatmaps,
                  force or busy)


def _propagate_all(job: _Job, samples, label_field, run_config, run_hash, overwrite, progress) -> PropagationReport:
    dataset, out, lock, prompt_field = job.dataset, job.out, job.lock, job.prompt_field
    ids = samples.values("id")
    done = dict(zip(ids, samples.values(out["marker"])))
    stored_keyframes = dict(zip(ids, samples.values(out["keyframes"])))
    total_frames = max(1, sum(n or 0 for n in samples.values("metadata.total_frame_count")))
    report = PropagationReport()
    bar, callback = _progress(progress, total_frames)
    seen_frames = 0

    def on_frame():
        nonlocal seen_frames
        seen_frames += 1
        if bar is not None:
            bar.update(1)
        if callback is not None and seen_frames % 10 == 0:
            callback(min(seen_frames / total_frames, 0.99), f"{seen_frames} frames")

    _record_run(dataset, label_field, run_config, run_hash, status="running", shard=job.shard)
    status = "interrupted"
    try:
        corrections = out["instances"] if job.store_instances else None
        for sample in samples.select_fields([f"frames.{prompt_field}", f"frames.{out['instances']}"]
                                            if job.store_instances else f"frames.{prompt_field}").iter_samples():
            lock.check()
            digest = prompt_digest(sample.frames.items(), prompt_field, corrections)
            why = redo_reason(done.get(sample.id), run_hash, digest, overwrite)
            if why is None:
                report.skipped[sample.id] = "already propagated with this configuration and these prompts"
                continue
            t0 = time.perf_counter()
            try:
                previous = stored_keyframes.get(sample.id) if why == PROMPTS_CHANGED else None
                n, keyframes = _propagate_one(job, sample, done_key(run_hash, digest), on_frame, previous)
            except TruncatedVideoError as e:
                report.failed[sample.id] = str(e)
                log.warning("partial: %s", e)
                continue
            except (ValueError, VideoReadError) as e:
                msg = f"{sample.filepath}: {e}"
                log.warning("skipped %s", msg)
                report.failed[sample.id] = msg
                continue
            report.processed.append(sample.id)
            report.reasons[sample.id] = why
            report.keyframes[sample.id] = keyframes
            report.recomputed[sample.id] = n
            report.frames += n
            report.seconds += time.perf_counter() - t0
        status = "done"
    except FieldLockLostError:
        status = "taken over"
        raise
    finally:
        if bar is not None:
            bar.close()
        if status != "taken over":  # the run that took over owns the record now
            _record_run(dataset, label_field, run_config, run_hash, status=status, report=report, shard=job.shard)
        elif job.shard:
            record_shard(dataset, label_field, job.shard, status)
    if callback is not None:
        callback(1.0, str(report))
    return report


def _progress(progress, total):
    if callable(progress):
        return None, progress
    if progress:
        from tqdm import tqdm

        return tqdm(total=total, unit="frame", desc="FRTM"), None
    return None, None


def _record_run(dataset, label_field, run_config, run_hash, status, report=None, shard=None) -> None:
    """The run's configuration on the dataset (FiftyOne's custom runs), so a result can be traced and reproduced.
    A shard records its own state apart (shards run at once), and the record says how many shards are done."""
    key = run_key(label_field)
    payload = dict(run_config, label_field=frame_field_name(label_field), config_hash=run_hash, status=status,
                   updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if shard is not None:
        record_shard(dataset, label_field, shard, status, report)
        states = [s["state"] for s in shard_states(dataset, label_field, shard["run"])]
        finished = sum(s == "done" for s in states)
        payload.update(status="done" if finished == shard["count"] else f"{finished} of {shard['count']} shards done",
                       shards={"run": shard["run"], "count": shard["count"]})
        report = None  # the counts are per shard: shard_states()
    if report is not None:
        payload.update(processed=len(report.processed), skipped=len(report.skipped), failed=report.failed,
                       frames=report.frames, fps=round(report.fps, 3) if report.seconds else None)
    config = dataset.init_run(**json.loads(json.dumps(payload, default=str)))
    if key in dataset.list_runs():
        dataset.update_run_config(key, config)  # in place: never a moment without a record, for other processes
    else:
        dataset.register_run(key, config)


def run_config(dataset, label_field: str) -> dict:
    """The configuration recorded by the last propagation into ``label_field``; for a sharded run, with every
    shard's state (``"shard_states"``: index, state, worker host and pid, videos, frames)."""
    config = dataset.get_run_info(run_key(label_field)).config.serialize()
    if config.get("shards"):
        config["shard_states"] = shard_states(dataset, label_field, config["shards"]["run"])
    return config


def queue_shards(samples, params: dict, shards: int, operator_uri: str, request_params: dict | None = None) -> dict:
    """Split ``samples`` into ``shards`` disjoint parts (balanced by frames) and queue one delegated operation of
    ``operator_uri`` per part, so that several ``fiftyone delegated launch`` workers (on one machine or many, on
    one database) run them at once. ``params``: the operator's parameters, given to every shard with its part's
    sample ids. Returns ``{"run": id, "operations": [ids], "videos": [count per shard]}``."""
    import uuid

    from fiftyone.operators.delegated import DelegatedOperationService

    samples.compute_metadata()
    parts = split_for_shards(samples.values("id"), samples.values("metadata.total_frame_count"), shards)
    run = uuid.uuid4().hex[:12]
    dataset = samples._dataset
    field = params.get("label_field", "frtm")
    ops = []
    for index, ids in enumerate(parts):
        shard = {"run": run, "index": index, "count": len(parts), "sample_ids": ids}
        record_shard(dataset, field, shard, "queued")
        shard_params = dict(params, shard=shard, shards=1, delegate=True)
        context = {"request_params": dict(request_params or {}, dataset_name=dataset.name, params=shard_params),
                   "params": shard_params}
        op = DelegatedOperationService().queue_operation(
            operator=operator_uri, context=context,
            label=f"FRTM: propagate into {field} (shard {index + 1} of {len(parts)}, {len(ids)} videos)")
        ops.append(str(op.id))
    return {"run": run, "operations": ops, "videos": [len(p) for p in parts]}


# -- evaluation -----------------------------------------------------------------------------------------------------

def evaluation_fields(eval_key: str) -> dict[str, list[str]]:
    return {"sample": [f"{eval_key}_J", f"{eval_key}_F", f"{eval_key}_JF", f"{eval_key}_objects"],
            "frame": [f"{eval_key}_J", f"{eval_key}_F", f"{eval_key}_JF"]}


def evaluation_field_paths(samples, pred_field: str, eval_key: str) -> list[str]:
    """The paths a DAVIS evaluation under ``eval_key`` writes: sample fields, ``frames.`` fields, and the
    per-object attributes on ``frames.<pred>_instances.detections`` when that field exists."""
    names = evaluation_fields(eval_key)
    return names["sample"] + ["frames." + x for x in names["frame"]] + [
        f"frames.{inst}.detections.{attr}" for inst, attr in _detection_attribute_paths(samples, pred_field, eval_key)]


def _detection_attribute_paths(samples, pred_field: str, eval_key: str) -> list[tuple[str, str]]:
    """(instances field, attribute) pairs a DAVIS evaluation writes on the predicted detections."""
    inst = f"{frame_field_name(pred_field)}_instances"
    if frame_field_type(samples, inst) is not fo.Detections:
        return []
    return [(inst, f"{eval_key}_{m}") for m in ("J", "F")]


# Detection attributes are dynamic (not always declared in the schema), so they are moved and removed in the frames'
# database collection directly, one update per attribute; a declared one is also dropped from the schema.

def _rename_detection_attribute(dataset, field: str, old: str, new: str) -> None:
    present = {"$ne": [{"$type": f"$$d.{old}"}, "missing"]}
    dataset._frame_collection.update_many({f"{field}.detections.{old}": {"$exists": True}}, [
        {"$set": {f"{field}.detections": {"$map": {"input": f"${field}.detections", "as": "d", "in": {
            "$mergeObjects": [
                {"$arrayToObject": {"$filter": {"input": {"$objectToArray": "$$d"}, "as": "kv",
                                                "cond": {"$ne": ["$$kv.k", old]}}}},
                {"$cond": [present, {new: f"$$d.{old}"}, {}]}]}}}}}])
    _undeclare(dataset, field, old)


def _unset_detection_attribute(dataset, field: str, attr: str) -> None:
    dataset._frame_collection.update_many({f"{field}.detections.{attr}": {"$exists": True}},
                                          {"$unset": {f"{field}.detections.$[].{attr}": ""}})
    _undeclare(dataset, field, attr)


def _undeclare(dataset, field: str, attr: str) -> None:
    if f"{field}.detections.{attr}" in (dataset.get_frame_field_schema(flat=True) or {}):
        dataset.delete_frame_field(f"{field}.detections.{attr}", error_level=1)


def rename_davis_evaluation(samples, pred_field: str, eval_key: str, new_eval_key: str) -> None:
    """Rename everything a DAVIS evaluation wrote (fields, detection attributes, the stored summary)."""
    dataset = samples._dataset
    names, new_names = evaluation_fields(eval_key), evaluation_fields(new_eval_key)
    schema, frame_schema = dataset.get_field_schema(), dataset.get_frame_field_schema() or {}
    for old, new in zip(names["sample"], new_names["sample"]):
        if old in schema:
            dataset.rename_sample_field(old, new)
    for old, new in zip(names["frame"], new_names["frame"]):
        if old in frame_schema:
            dataset.rename_frame_field(old, new)
    for inst, attr in _detection_attribute_paths(dataset, pred_field, eval_key):
        _rename_detection_attribute(dataset, inst, attr, new_eval_key + attr[len(eval_key):])
    info = dataset.info.get("frtm_evaluations", {})
    if eval_key in info:
        info[new_eval_key] = dict(info.pop(eval_key), eval_key=new_eval_key)
        dataset.save()
    dataset.reload()


def delete_davis_evaluation(samples, pred_field: str, eval_key: str) -> None:
    """Remove everything a DAVIS evaluation wrote (fields, detection attributes, the stored summary)."""
    dataset = samples._dataset
    names = evaluation_fields(eval_key)
    schema, frame_schema = dataset.get_field_schema(), dataset.get_frame_field_schema() or {}
    for name in names["sample"]:
        if name in schema:
            dataset.delete_sample_field(name)
    for name in names["frame"]:
        if name in frame_schema:
            dataset.delete_frame_field(name)
    for inst, attr in _detection_attribute_paths(dataset, pred_field, eval_key):
        _unset_detection_attribute(dataset, inst, attr)
    info = dataset.info.get("frtm_evaluations", {})
    if eval_key in info:
        del info[eval_key]
        dataset.save()
    dataset.reload()


def _frame_stack(sample, field: str, numbers: list[int], hw, missing: list | None = None) -> np.ndarray:
    """The masks of ``field`` on the given frames; a frame without one is an empty mask (its number is appended
    to ``missing``)."""
    out = np.zeros((len(numbers), *hw), np.uint8)
    for row, fn in enumerate(numbers):
        label = sample.frames[fn][field] if sample.frames[fn].has_field(field) else None
        mask = label.get_mask() if label is not None else None
        if mask is None and missing is not None:
            missing.append(fn)
        if mask is not None:
            if mask.shape != tuple(hw):
                raise ValueError(f"{sample.filepath}, frame {fn}: mask of '{field}' is {mask.shape[0]}x"
                                 f"{mask.shape[1]} but the ground truth is {hw[0]}x{hw[1]}")
            out[row] = mask
    return out


def compute_davis(samples, pred_field: str, gt_field: str, eval_key: str, progress=True) -> dict:
    """DAVIS J, F and J&F (``frtm_plugin.metrics``: the official protocol) for every video, stored as fields:

    - frames: ``<eval_key>_J``, ``_F``, ``_JF``: means over the objects scored on that frame (unset on frames the
      protocol excludes: an object's first frame, the last frame, frames without ground truth);
    - samples: ``<eval_key>_J``, ``_F``, ``_JF``: means over the video's objects, and ``<eval_key>_objects``: per
      object id, J/F/J&F means, recalls and decays;
    - detections of ``<pred_field>_instances`` (when present): ``<eval_key>_J`` and ``_F`` of that object on that
      frame.
    Returns the summary (DAVIS global convention: means over all objects of all videos), also stored in
    ``dataset.info["frtm_evaluations"][eval_key]``.
    """
    from ..metrics import aggregate, evaluate_sequence

    pred_field, gt_field = frame_field_name(pred_field), frame_field_name(gt_field)
    for f, what in ((pred_field, "prediction"), (gt_field, "ground truth")):
        t = frame_field_type(samples, f)
        if t is not fo.Segmentation:
            raise ValueError(f"the {what} field 'frames.{f}' must hold Segmentation masks, found "
                             f"{getattr(t, '__name__', t)}")
    inst_field = f"{pred_field}_instances"
    has_instances = frame_field_type(samples, inst_field) is fo.Detections
    dataset = samples._dataset
    names = evaluation_fields(eval_key)
    frame_schema, sample_schema = dataset.get_frame_field_schema() or {}, dataset.get_field_schema()
    for name in names["frame"]:
        if name not in frame_schema:
            dataset.add_frame_field(name, fo.FloatField)
    for name in names["sample"]:
        if name not in sample_schema:
            dataset.add_sample_field(name, fo.DictField if name.endswith("_objects") else fo.FloatField)
    results, skipped, missing = {}, {}, {}
    bar, callback = _progress(progress, len(samples))
    for i, sample in enumerate(samples.iter_samples()):
        numbers = [fn for fn, fr in sample.frames.items() if fr.has_field(gt_field) and fr[gt_field] is not None]
        if not numbers:
            skipped[sample.id] = "no ground truth"
            continue
        gt = _frame_stack(sample, gt_field, numbers, sample.frames[numbers[0]][gt_field].get_mask().shape)
        absent: list[int] = []
        pred = _frame_stack(sample, pred_field, numbers, gt.shape[1:], absent)
        if absent:
            missing[sample.id] = absent
        res = evaluate_sequence(gt, pred, name=sample.id)
        results[sample.id] = res
        target = dataset[sample.id]
        per_frame = res.per_frame()  # row -> {obj_id: (J, F)}
        for row, fn in enumerate(numbers):
            fr = target.frames[fn]
            scores = per_frame.get(row, {})
            vals = list(scores.values())
            fr[f"{eval_key}_J"] = float(np.mean([j for j, _ in vals])) if vals else None
            fr[f"{eval_key}_F"] = float(np.mean([f for _, f in vals])) if vals else None
            fr[f"{eval_key}_JF"] = float(np.mean([(j + f) / 2 for j, f in vals])) if vals else None
            if has_instances and fr.has_field(inst_field) and fr[inst_field] is not None:
                for det in fr[inst_field].detections:
                    if det.index in scores:
                        det[f"{eval_key}_J"], det[f"{eval_key}_F"] = scores[det.index]
        target[f"{eval_key}_J"] = _nan_to_none(res.J_mean)
        target[f"{eval_key}_F"] = _nan_to_none(res.F_mean)
        target[f"{eval_key}_JF"] = _nan_to_none(res.JF_mean)
        target[f"{eval_key}_objects"] = {
            str(k): {"J": _nan_to_none(o.J_mean), "F": _nan_to_none(o.F_mean), "JF": _nan_to_none(o.JF_mean),
                     "J_recall": _nan_to_none(o.J_recall), "J_decay": _nan_to_none(o.J_decay),
                     "F_recall": _nan_to_none(o.F_recall), "F_decay": _nan_to_none(o.F_decay)}
            for k, o in res.objects.items() if o.scored}
        target.save()
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback((i + 1) / len(samples), f"{i + 1} videos scored")
    if bar is not None:
        bar.close()
    if not results:
        raise ValueError(f"no video has ground truth in 'frames.{gt_field}'")
    agg = aggregate(results)
    summary = {"eval_key": eval_key, "pred_field": pred_field, "gt_field": gt_field, "overall": agg["overall"],
               "samples": {r["sequence"]: r for r in agg["rows"]}, "skipped": skipped,
               "missing_predictions": missing}
    summary = json.loads(json.dumps(summary, default=_json_default))
    dataset.reload()  # FiftyOne re-running an evaluation key changed the dataset's document under this one
    dataset.info.setdefault("frtm_evaluations", {})[eval_key] = summary
    dataset.save()
    return summary


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return _nan_to_none(float(x))
    raise TypeError(type(x))


def evaluate(samples, pred_field: str, gt_field: str, eval_key: str = "davis", progress=True) -> dict:
    """Score ``pred_field`` against ``gt_field`` with DAVIS J, F and J&F, stored per frame, object and video.

    When this package's FiftyOne plugin is installed, the scores are computed as a custom metric of FiftyOne's
    own ``evaluate_segmentations`` run under ``eval_key`` (so the App's evaluation panel lists it, next to
    FiftyOne's pixel accuracy / precision / recall); otherwise the same computation runs on its own. Prints and
    returns the summary.
    """
    if _davis_metric_available():
        samples.evaluate_segmentations(frame_field_prefix(pred_field), gt_field=frame_field_prefix(gt_field),
                                       eval_key=eval_key, custom_metrics=[DAVIS_METRIC_URI],
                                       progress=bool(progress) if not callable(progress) else False)
        summary = samples._dataset.info.get("frtm_evaluations", {}).get(eval_key)
        if summary is None:  # FiftyOne logs (and swallows) a failing custom metric: say it, and compute directly
            log.warning("FiftyOne did not run the DAVIS metric; computing it directly")
            summary = compute_davis(samples, pred_field, gt_field, eval_key, progress)
    else:
        summary = compute_davis(samples, pred_field, gt_field, eval_key, progress)
    print(format_summary(summary))
    return summary


def frame_field_prefix(field: str) -> str:
    return "frames." + frame_field_name(field)


def _davis_metric_available() -> bool:
    try:
        import fiftyone.operators as foo

        foo.get_operator(DAVIS_METRIC_URI)
        return True
    except Exception:
        return False


def format_summary(summary: dict) -> str:
    o = summary["overall"]
    lines = [f"DAVIS evaluation '{summary['eval_key']}': {summary['pred_field']} vs {summary['gt_field']}",
             f"  J&F {o['J&F']:.3f}   J {o['J']:.3f}   F {o['F']:.3f}   (means over objects; "
             f"J-recall {o['J-recall']:.3f}, F-recall {o['F-recall']:.3f})"]
    if summary.get("skipped"):
        lines.append(f"  skipped: {len(summary['skipped'])} video(s) without ground truth")
    missing = summary.get("missing_predictions") or {}
    if missing:
        n = sum(len(v) for v in missing.values())
        lines.append(f"  {n} ground-truth frame(s) in {len(missing)} video(s) have no prediction in "
                     f"'{summary['pred_field']}': DAVIS scores them as empty masks (J = 0 where an object is "
                     "present), while FiftyOne's pixel metrics of the same evaluation skip them")
    return "\n".join(lines)


# -- what the J&F panels show ---------------------------------------------------------------------------------------

def davis_evaluation_keys(dataset) -> list[str]:
    """The DAVIS evaluations stored on the dataset, oldest first."""
    return list((dataset.info or {}).get("frtm_evaluations", {}))


def jf_series(sample, dataset, eval_key: str) -> dict:
    """One video's J and F per object and frame for evaluation ``eval_key``, as the App's panel plots them:
    ``frames`` (frame numbers), ``objects`` {object id: {"J": [...], "F": [...]}} (None where the protocol does
    not score the object: its first frame, the last frame, no ground truth), ``JF`` (the frame's mean J&F, or
    None), and ``keyframes`` (frame numbers annotated in the prompt of the run that wrote the predictions)."""
    summary = dataset.info["frtm_evaluations"][eval_key]
    inst = f"{summary['pred_field']}_instances"
    numbers = sorted(sample.frames.keys())
    objects: dict[str, dict[str, list]] = {}
    jf = []
    for k, fn in enumerate(numbers):
        frame = sample.frames[fn]
        jf.append(frame[f"{eval_key}_JF"] if frame.has_field(f"{eval_key}_JF") else None)
        dets = frame[inst].detections if frame.has_field(inst) and frame[inst] is not None else []
        for d in dets:
            if d.has_field(f"{eval_key}_J") and d[f"{eval_key}_J"] is not None:
                series = objects.setdefault(str(d.index), {"J": [None] * len(numbers), "F": [None] * len(numbers)})
                series["J"][k], series["F"][k] = d[f"{eval_key}_J"], d[f"{eval_key}_F"]
    marker = output_fields(summary["pred_field"])["keyframes"]
    digests = sample[marker] if sample.has_field(marker) and sample[marker] else {}
    keyframes = sorted({int(key.split(":")[0]) + 1 for key in digests if key != "labels"})
    return {"frames": numbers, "objects": dict(sorted(objects.items(), key=lambda kv: int(kv[0]))), "JF": jf,
            "keyframes": keyframes, "eval_key": eval_key, "pred_field": summary["pred_field"],
            "gt_field": summary["gt_field"]}


def worst_frames_view(samples, eval_key: str, threshold: float):
    """The videos with only their frames whose mean J is below ``threshold`` (frames with no score, or above it,
    are left out), to step through, tag or correct in the modal."""
    from fiftyone import ViewField as F

    j = F(f"{eval_key}_J")
    return samples.match_frames((j != None) & (j < threshold))  # noqa: E711 (null sorts below numbers)
