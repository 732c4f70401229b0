"""Keyframes, measured: what one correction, a middle-frame prompt and a box instead of a mask do to J&F.

On held-out DAVIS-2016 train videos (whole videos), with the default model at 854x480, CPU:
- baseline: the first frame's mask, forward (the benchmark protocol);
- one correction round: the ground truth of the frame the baseline got worst (among those where the object shows at
  least a quarter of its median area) added as a keyframe, run forward, with both directions (blend / nearest),
  forward with the correction learned from 5 augmented samples, and forward with D refitted from scratch there;
- middle: the middle frame's mask only, both directions;
- box: the first frame's box only (box-to-mask), forward.
J and F per frame as the DAVIS toolkit computes them; J&F = mean over frames of (J + F) / 2, over every frame but the
annotated ones (so a middle-frame run is scored on the frames before it too), then over videos.
Not a test: prints a table (markdown) and writes the per-video rows as JSON lines next to it when --out is given.

    python bench/keyframes.py [--sequences bmx-bumps,...] [--max-frames N] [--out docs/keyframes.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "davis2016-train-480p"
HELD_OUT = "bmx-bumps,dog-agility,motorbike,rollerblade,soccerball"


def _score(gt: np.ndarray, pred: np.ndarray, skip: set[int]) -> tuple[float, float, list[float]]:
    from frtm_plugin.metrics import db_eval_boundary_frames, db_eval_iou_frames

    keep = [i for i in range(len(gt)) if i not in skip]
    j = db_eval_iou_frames(gt[keep], pred[keep])
    f = db_eval_boundary_frames(gt[keep], pred[keep])
    per = np.full(len(gt), np.nan)
    per[keep] = j
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
    args = p.parse_args()

    import torch

    from frtm_plugin.core.box_prompt import BoxPrompt
    from frtm_plugin.core.tracker import TrackerConfig
    from frtm_plugin.io.davis import load_sequence
    from frtm_plugin.io.labels import read_label_png
    from frtm_plugin.models import build_tracker

    torch.set_num_threads(2)
    trackers = {aug: build_tracker(args.model, config=TrackerConfig(reanchor_aug=aug))[0] for aug in (1, 5)}
    trackers["restart"] = build_tracker(args.model, config=TrackerConfig(reanchor="restart"))[0]
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
        # the frame a user would correct first: the worst one where the object is clearly visible (a correction is
        # a mask; a sliver of an object about to vanish is not what anyone corrects): at least 25 % of its median area
        area = gt.sum(axis=(1, 2))
        visible = [i for i in range(1, n - 1) if area[i] >= 0.25 * np.median(area[area > 0])]
        worst = min(visible, key=lambda i: per[i])
        row["corrected_frame"] = worst
        kf = {0: {1: gt[0]}, worst: {1: gt[worst]}}
        for key, direction, combine, aug in (("correction_forward", "forward", "blend", 1),
                                             ("correction_both_blend", "both", "blend", 1),
                                             ("correction_both_nearest", "both", "nearest", 1),
                                             ("correction_forward_aug5", "forward", "blend", 5),
                                             ("correction_forward_restart", "forward", "blend", "restart")):
            pred, s = _run(trackers[aug], frames, kf, direction, combine)
            record(key, pred, s, {0, worst})
        mid = n // 2
        pred, s = _run(tracker, frames, {mid: {1: gt[mid]}}, "both")
        record("middle_both", pred, s, {mid})
        rows_, cols_ = np.flatnonzero(gt[0].any(1)), np.flatnonzero(gt[0].any(0))
        box = BoxPrompt(int(cols_[0]), int(rows_[0]), int(cols_[-1]) + 1, int(rows_[-1]) + 1)
        pred, s = _run(tracker, frames, {0: {1: box}})
        record("box_forward", pred, s, {0})
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    keys = ["baseline", "correction_forward", "correction_both_blend", "correction_both_nearest",
            "correction_forward_aug5", "correction_forward_restart", "middle_both", "box_forward"]
    print(f"\nmodel {args.model}, 854x480, CPU {torch.get_num_threads()} threads; J&F (x100) per video")
    print("| sequence | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for r in rows:
        print(f"| {r['sequence']} (fix #{r['corrected_frame']}) | " +
              " | ".join(f"{100 * r[k]['JF']:.1f}" for k in keys) + " |")
    mean = {k: float(np.mean([r[k]["JF"] for r in rows])) for k in keys}
    print("| **mean** | " + " | ".join(f"**{100 * mean[k]:.1f}**" for k in keys) + " |")
    base = mean["baseline"]
    print(f"\none correction (forward): {100 * (mean['correction_forward'] - base):+.1f} J&F; "
          f"box-only / mask: {mean['box_forward'] / base:.2f}x; middle frame, both: {100 * mean['middle_both']:.1f}")


if __name__ == "__main__":
    main()
