"""Validation: the real streaming tracker, D-only and D+S, on held-out sequences, scored with the DAVIS metrics.

This is the same code path a user runs (``FRTMTracker`` with the inference solver settings), not the training
approximation (D fitted on one frame, never updated), so the numbers compare directly with ``frtm-vos evaluate``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..core.backbone import Backbone, build_backbone
from ..core.segnet import load_segnet_checkpoint
from ..core.prompts import keyframes_from_label_maps
from ..core.tracker import FRTMTracker, TrackerConfig
from ..core.video_loop import propagate_in_video
from ..io.davis import load_sequence
from ..io.labels import read_label_png
from ..metrics import SequenceResult, aggregate, evaluate_sequence
from ..models import DEFAULT_CHECKPOINT, model_config, model_inference

log = logging.getLogger(__name__)

__all__ = ["track_sequence", "evaluate_model", "evaluate_tracker", "compare_d_only_and_ds", "stored_scores",
           "format_comparison", "trained_on", "warn_if_trained_on"]


def track_sequence(tracker: FRTMTracker, root: str | os.PathLike, name: str, max_frames: int | None = None):
    """Run ``tracker`` over one DAVIS-layout sequence from its first-frame prompts; returns (gt, pred) (T, H, W)
    label stacks. Every scored frame must be annotated (DAVIS 2016/2017 train/val are)."""
    seq = load_sequence(root, name)
    n = len(seq) if max_frames is None else min(len(seq), int(max_frames))
    missing = [i for i in range(n) if i not in seq.annotation_paths]
    if missing:
        raise ValueError(f"sequence {name!r}: frames {missing[:5]}... have no annotation; validation needs every "
                         "frame annotated (DAVIS layout)")
    keyframes = {i: m for i, m in keyframes_from_label_maps(seq.prompts()).items() if i < n}  # first appearances
    outputs = propagate_in_video(tracker, (seq.read_frame(i) for i in range(n)), keyframes, num_frames=n)
    pred = [out.labels for out in outputs]  # forward: in frame order
    gt = [read_label_png(seq.annotation_paths[i]).astype(np.uint8) for i in range(n)]
    return np.stack(gt), np.stack(pred)


def trained_on(model, sequences: Sequence[str]) -> list[str]:
    """Those of ``sequences`` that ``model``'s S was trained on, so its scores there are not held-out scores:
    ``model`` a checkpoint path, ``"default"`` or a checkpoint's meta; ``[]`` for D-only (D has no offline
    training) and for checkpoints that do not record their videos (the authors' released ones)."""
    if model is None or (isinstance(model, str) and model == "d-only") or isinstance(model, torch.nn.Module):
        return []
    if isinstance(model, Mapping):
        meta = model
    else:
        path = DEFAULT_CHECKPOINT if str(model) == "default" else Path(model)
        if not path.is_file():
            return []
        meta = load_segnet_checkpoint(path)[1]["meta"]
    seen = set((meta.get("train") or {}).get("sequences") or [])
    return [s for s in sequences if s in seen]


def warn_if_trained_on(name: str, meta: Mapping, sequences: Sequence[str]) -> list[str]:
    """:func:`trained_on` for a loaded checkpoint's ``meta``, with a warning naming ``name`` when it is not empty."""
    seen = trained_on(meta, sequences)
    if seen:
        log.warning("%s was trained on %s: its scores there are not held-out scores", name, ", ".join(seen))
    return seen


def _segnet(model) -> torch.nn.Module | None:
    if model is None or (isinstance(model, str) and model == "d-only"):
        return None
    if isinstance(model, torch.nn.Module):  # a SegNetwork, or any module called as one (bench/s_ensemble.py)
        return model
    net, _ = load_segnet_checkpoint(model)
    return net


def evaluate_model(root: str | os.PathLike, sequences: Sequence[str], model=None, *,
                   backbone: Backbone | str = "mobilenet_v2", target_layer: str | None = None,
                   max_frames: int | None = None, config: TrackerConfig = TrackerConfig(),
                   progress: bool = False, inference: dict | None = None) -> dict:
    """Track and score ``sequences`` of a DAVIS-layout ``root``.

    ``model``: ``None``/``"d-only"`` (D alone), a :class:`SegNetwork`, or a checkpoint path (its meta decides the
    target layer unless ``target_layer`` is given). ``inference``: the model's own tracker settings (see
    ``models.model_config``; default: a checkpoint's, else this project's). Returns ``{"per_sequence": {name:
    {"J", "F", "J&F"}}, "overall": {...}, "seconds": wall time, "frames": n}`` with scores as fractions.
    """
    if not sequences:
        raise ValueError("no validation sequence given")
    # the model's own inference settings where ``config`` leaves them open: ``inference``, else a checkpoint's,
    # else this project's (an S being trained here, or D-only)
    info, seen = None, []
    if isinstance(model, (str, Path)) and str(model) != "d-only":
        net, info = load_segnet_checkpoint(model)
        target_layer = target_layer or info["target_layer"]
        model = net
        seen = warn_if_trained_on(Path(info["path"]).name, info["meta"], sequences)
    config = model_config(config, model_inference(info) if inference is None else inference)
    segnet = _segnet(model)
    if isinstance(backbone, str):
        backbone = build_backbone(backbone, target_layer=target_layer)
    elif target_layer is not None and backbone.target_layer != target_layer:
        raise ValueError(f"backbone reads D's features from {backbone.target_layer!r}, not {target_layer!r}")
    was_training = segnet.training if segnet is not None else False
    try:
        report = evaluate_tracker(FRTMTracker(backbone, segnet, config), root, sequences, max_frames=max_frames,
                                  progress=progress)
    finally:
        if segnet is not None and was_training:
            segnet.train()
    return dict(report, target_layer=backbone.target_layer, trained_on=seen)


def evaluate_tracker(tracker: FRTMTracker, root: str | os.PathLike, sequences: Sequence[str], *,
                     max_frames: int | None = None, progress: bool = False) -> dict:
    """Track and score ``sequences`` of a DAVIS-layout ``root`` with a ready tracker (any :class:`FRTMTracker`,
    e.g. a variant in ``bench/``); the report of :func:`evaluate_model` without its model fields."""
    results: dict[str, SequenceResult] = {}
    t0, frames = time.perf_counter(), 0
    model = "D+S" if tracker.segnet is not None else "D-only"
    it = sequences
    if progress:
        from tqdm import tqdm
        it = tqdm(sequences, desc=f"validate {model}", leave=False)
    for name in it:
        gt, pred = track_sequence(tracker, root, name, max_frames)
        frames += len(gt)
        results[name] = evaluate_sequence(gt, pred, name=name)
    agg = aggregate(results)
    per = {r["sequence"]: {"J": r["J"], "F": r["F"], "J&F": r["J&F"]} for r in agg["rows"]}
    o = agg["overall"]
    return {"per_sequence": per, "overall": {"J": o["J"], "F": o["F"], "J&F": o["J&F"]},
            "seconds": time.perf_counter() - t0, "frames": frames, "model": model}


def compare_d_only_and_ds(root, sequences: Sequence[str], model, backbone_name: str, layers: Sequence[str],
                          max_frames: int | None = None, inference: dict | None = None) -> dict:
    """D-only and (when ``model`` is not None) D+S reports for each of D's ``layers``, keyed "D-only (layer)" /
    "D+S (layer)": what ``train validate`` prints and a trained checkpoint stores."""
    reports = {}
    for layer in layers:
        bb = build_backbone(backbone_name, target_layer=layer)
        reports[f"D-only ({layer})"] = evaluate_model(root, sequences, "d-only", backbone=bb, max_frames=max_frames,
                                                      progress=True)
        if model is not None:
            reports[f"D+S ({layer})"] = evaluate_model(root, sequences, model, backbone=bb, max_frames=max_frames,
                                                       progress=True, inference=inference)
    return reports


def stored_scores(reports: dict) -> dict:
    """The part of :func:`compare_d_only_and_ds`' reports a checkpoint's meta keeps."""
    return {k: {"overall": v["overall"], "per_sequence": v["per_sequence"]} for k, v in reports.items()}


def format_comparison(reports: Mapping[str, dict]) -> str:
    """A Markdown table: one column per report (e.g. 'D-only', 'D+S'), J&F per sequence then the overall row."""
    names = list(reports)
    seqs = list(next(iter(reports.values()))["per_sequence"])
    head = "| sequence | " + " | ".join(f"{n} J&F (J / F)" for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    for s in seqs + ["overall"]:
        cells = []
        for n in names:
            r = reports[n]["overall"] if s == "overall" else reports[n]["per_sequence"][s]
            cells.append(f"{100 * r['J&F']:.1f} ({100 * r['J']:.1f} / {100 * r['F']:.1f})")
        lines.append(f"| {'**overall**' if s == 'overall' else s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
