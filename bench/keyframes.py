"""Keyframes, measured: what one correction, a middle-frame prompt and a box instead of a mask do to J&F.

On held-out DAVIS-2016 train videos (whole videos), with the default model at 854x480, CPU:
- baseline: the first frame's mask, forward (the benchmark protocol);
- one correction round: the ground truth of the frame the baseline got worst (J&F; among equals the one with the
  most pixels wrong; empty where the object is hidden: a "not visible" keyframe) added as a keyframe, run forward,
  with both directions (blend / nearest), forward with the correction learned from 5 augmented samples, and forward
  with D refitted from scratch there;
- middle: the middle frame's mask only, both directions;
- box: the first frame's box only (box-to-mask), forward.
J and F per frame as the DAVIS toolkit computes them, over the frames it scores (all but the first and the last) that
are not annotated (so a middle-frame run is scored on the frames before it too); J&F = (mean J + mean F) / 2 per
video, then the mean over videos.
Not a test: prints a table (markdown) and writes the per-video rows as JSON lines next to it when --out is given.

    python bench/keyframes.py [--sequences bmx-bumps,...] [--max-frames N] [--out docs/keyframes.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "davis2016-train-480p"
HELD_OUT = "bmx-bumps,dog-agility,motorbike,rollerblade,soccerball"
RUNS = ("baseline", "correction_forward", "correction_both_blend", "correction_both_nearest", "correction_forward_aug5",
        "correction_forward_restart", "middle_both", "box_forward")


def _score(gt: np.ndarray, pred: np.ndarray, skip: set[int]) -> tuple[float, float, list[float]]:
    """Mean J, mean F over the frames not in ``skip``, and per-frame (J + F) / 2 (NaN on skipped frames)."""
    from frtm_plugin.metrics import db_eval_boundary_frames, db_eval_iou_frames

    keep = [i for i in range(1, len(gt) - 1) if i not in skip]  # DAVIS drops the first and the last frame
    j = db_eval_iou_frames(gt[keep], pred[keep])
    f = db_eval_boundary_frames(gt[keep], pred[keep])
    per = np.full(len(gt), np.nan)
    per[keep] = (j + f) / 2
    return float(np.mean(j)), float(np.mean(f)), per.tolist()


def _run(tracker, frames, keyframes, direction="forward", combine="blend"):
    from frtm_plugin.core.video_loop import propagate_in_video

    t0 = time.perf_counter()
    out = {o.index: o.labels == 1 for o in propagate_in_video(tracker, iter(frames), keyframes, direction=direction,
                                                              combine=combine, num_frames=len(frames))}
    return np.stack([out[i] for i in range(len(frames))]), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sequences", default=HELD_OUT)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--model", default="default")
    p.add_argument("--out", type=Path)
    p.add_argument("--only", help="comma-separated run names (default: all)")
    p.add_argument("--search-margin", type=float, default=None,
                   help="TrackerConfig.search_margin (default: the model's own; the held-out twin in "
                        "MODEL_CARD.md predates it: pass 0.25 to run it as the shipped default runs)")
    p.add_argument("--ours", action="store_true",
                   help="run the model with this project's current inference settings (models.OFFLINE_INFERENCE), "
                        "as the shipped default runs: for the held-out twin, whose own settings predate some")
    p.add_argument("--tie-break", choices=("wrong", "first"), default="wrong",
                   help="among frames of equal worst J&F, correct the one with the most pixels wrong (default) or "
                        "the first (the rule before 2026-12-03)")
    p.add_argument("--fix", action="append", default=[], metavar="SEQ:FRAME",
                   help="correct this frame of SEQ instead of the one the baseline got worst (a diagnosis)")
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else set(RUNS)
    unknown = only - set(RUNS)
    if unknown:
        p.error(f"unknown run(s) {sorted(unknown)}; choose from {RUNS}")

    def wanted(key):
        return key in only

    import torch

    from frtm_plugin.core.box_prompt import BoxPrompt
    from frtm_plugin.core.tracker import TrackerConfig
    from frtm_plugin.io.davis import load_sequence
    from frtm_plugin.io.labels import read_label_png
    from frtm_plugin.models import OFFLINE_INFERENCE, build_tracker, model_config
    from frtm_plugin.train.validate import trained_on

    torch.set_num_threads(2)
    seen = trained_on(args.model, args.sequences.split(","))
    if seen:
        print(f"warning: model {args.model} was trained on {', '.join(seen)}: not held-out numbers (for the shipped "
              "default, measure its held-out twin instead: frtm_plugin/weights/MODEL_CARD.md)", file=sys.stderr)

    def config(**kw):
        c = TrackerConfig(search_margin=args.search_margin, **kw)
        return model_config(c, OFFLINE_INFERENCE) if args.ours else c

    trackers = {aug: build_tracker(args.model, config=config(reanchor_aug=aug))[0] for aug in (1, 5)}
    trackers["restart"] = build_tracker(args.model, config=config(reanchor="restart"))[0]
    tracker = trackers[1]
    rows = []
    for name in args.sequences.split(","):
        seq = load_sequence(DATA, name)
        n = len(seq) if args.max_frames is None else min(len(seq), args.max_frames)
        frames = [seq.read_frame(i) for i in range(n)]
        gt = np.stack([read_label_png(seq.annotation_paths[i]) > 0 for i in range(n)])
        row = {"sequence": name, "frames": n}

        def record(key, pred, seconds, skip):
            j, f, per = _score(gt, pred, skip)
            row[key] = {"J": j, "F": f, "JF": (j + f) / 2, "fps": n / seconds}
            return per

        base, s = _run(tracker, frames, {0: {1: gt[0]}})
        per = record("baseline", base, s, {0})
        # the frame the baseline got worst (J&F; among equals, the one with the most pixels wrong, as an annotator
        # would pick it: J&F ties at 0 on frames the object hides, and the first of them can be a sliver): its ground
        # truth becomes a keyframe, an empty mask ("not visible here") where the object is hidden there
        wrong = [int((gt[i] != base[i]).sum()) for i in range(n)]
        worst = min(range(1, n - 1), key=lambda i: (per[i], -wrong[i]) if args.tie_break == "wrong" else per[i])
        forced = [int(f.split(":")[1]) for f in args.fix if f.split(":")[0] == name]
        worst = forced[0] if forced else worst
        row["corrected_frame"] = worst
        kf = {0: {1: gt[0]}, worst: {1: gt[worst]}}
        for key, direction, combine, aug in (("correction_forward", "forward", "blend", 1),
                                             ("correction_both_blend", "both", "blend", 1),
                                             ("correction_both_nearest", "both", "nearest", 1),
                                             ("correction_forward_aug5", "forward", "blend", 5),
                                             ("correction_forward_restart", "forward", "blend", "restart")):
            if wanted(key):
                pred, s = _run(trackers[aug], frames, kf, direction, combine)
                record(key, pred, s, {0, worst})
        mid = n // 2
        if wanted("middle_both"):
            pred, s = _run(tracker, frames, {mid: {1: gt[mid]}}, "both")
            record("middle_both", pred, s, {mid})
        if wanted("box_forward"):
            rows_, cols_ = np.flatnonzero(gt[0].any(1)), np.flatnonzero(gt[0].any(0))
            box = BoxPrompt(int(cols_[0]), int(rows_[0]), int(cols_[-1]) + 1, int(rows_[-1]) + 1)
            pred, s = _run(tracker, frames, {0: {1: box}})
            record("box_forward", pred, s, {0})
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    keys = [k for k in RUNS if k in rows[0]]
    print(f"\nmodel {args.model}, 854x480, CPU {torch.get_num_threads()} threads; J&F (x100) per video")
    print("| sequence | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for r in rows:
        print(f"| {r['sequence']} (fix #{r['corrected_frame']}) | " +
              " | ".join(f"{100 * r[k]['JF']:.1f}" for k in keys) + " |")
    mean = {k: float(np.mean([r[k]["JF"] for r in rows])) for k in keys}
    print("| **mean** | " + " | ".join(f"**{100 * mean[k]:.1f}**" for k in keys) + " |")
    base = mean["baseline"]
    for k in keys[1:]:
        print(f"{k}: {100 * (mean[k] - base):+.1f} J&F, {mean[k] / base:.2f}x the baseline")


if __name__ == "__main__":
    main()
