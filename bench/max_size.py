"""Which inference size cap for large videos? Masks, time and memory at 4K against the native 480p run.

Real DAVIS-2016 frames (854x480) are upscaled to 3840x2160 (bicubic; masks nearest) and tracked with the default
model under several caps of the longest side; each cap runs in its own process so its peak resident memory is its
own. Scored as J (IoU) against the upscaled ground truth and against the native 480p run's masks (upscaled), per
frame after the first, averaged over frames and sequences. Not a test: prints a table.

    python bench/max_size.py [--sequences bmx-bumps,dog-agility,motorbike] [--frames 10] [--caps 640,854,1280]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "davis2016-train-480p"
SIZE_4K = (2160, 3840)


def _frames(seq_name: str, n: int, scale_to=None):
    import cv2

    from frtm_plugin.io.davis import load_sequence
    from frtm_plugin.io.labels import read_label_png

    seq = load_sequence(DATA, seq_name)
    frames, gts = [], []
    for i in range(n):
        f, g = seq.read_frame(i), (read_label_png(seq.annotation_paths[i]) > 0).astype(np.uint8)
        if scale_to is not None:
            f = cv2.resize(f, scale_to[::-1], interpolation=cv2.INTER_CUBIC)
            g = cv2.resize(g, scale_to[::-1], interpolation=cv2.INTER_NEAREST)
        frames.append(f)
        gts.append(g.astype(bool))
    return frames, gts


def run_one(seq_name: str, n: int, cap: int | None, native: bool, out: Path) -> None:
    """Child process: track one sequence, save masks (as 480p-comparable bool arrays) and stats."""
    import torch

    from frtm_plugin.core.tracker import TrackerConfig
    from frtm_plugin.models import build_tracker

    torch.set_num_threads(2)
    frames, _ = _frames(seq_name, n, None if native else SIZE_4K)
    tracker, _ = build_tracker("default", config=TrackerConfig(max_size=cap))
    _, gts = _frames(seq_name, 1, None if native else SIZE_4K)
    masks = []
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        res = tracker.step(f, {1: gts[0]} if i == 0 else None)
        masks.append(res.labels.numpy() == 1)
    seconds = time.perf_counter() - t0
    np.savez_compressed(out.with_suffix(".npz"), masks=np.stack(masks))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "rss_mb": rss_mb}))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sequences", default="bmx-bumps,dog-agility,motorbike")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--caps", default="640,854,1024,1280", help="comma-separated; 0 = full 4K resolution (slow)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        seq, cap, native, out = args.child
        run_one(seq, args.frames, int(cap) or None, native == "1", Path(out))
        return
    import cv2
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="frtm-maxsize-"))
    seqs = args.sequences.split(",")
    caps = [int(c) for c in args.caps.split(",")]
    rows = {}
    for seq in seqs:
        _, gts4k = _frames(seq, args.frames, SIZE_4K)
        runs = [("480p native", 0, True)] + [(f"4K, cap {c or 'none'}", c, False) for c in caps]
        native_masks = None
        for label, cap, native in runs:
            out = tmp / f"{seq}-{cap}-{int(native)}"
            subprocess.run([sys.executable, __file__, "--frames", str(args.frames), "--child", seq, str(cap),
                            "1" if native else "0", str(out)], check=True)
            masks = np.load(out.with_suffix(".npz"))["masks"]
            stats = json.loads(out.with_suffix(".json").read_text())
            if native:
                masks = np.stack([cv2.resize(m.astype(np.uint8), SIZE_4K[::-1], interpolation=cv2.INTER_NEAREST)
                                  for m in masks]).astype(bool)
                native_masks = masks
            j_gt = np.mean([iou(m, g) for m, g in zip(masks[1:], gts4k[1:])])
            j_native = np.mean([iou(m, g) for m, g in zip(masks[1:], native_masks[1:])])
            r = rows.setdefault(label, {"j_gt": [], "j_native": [], "fps": [], "rss": []})
            r["j_gt"].append(j_gt)
            r["j_native"].append(j_native)
            r["fps"].append(args.frames / stats["seconds"])
            r["rss"].append(stats["rss_mb"])
            print(f"  {seq:14s} {label:18s} J vs GT {j_gt:.3f}  vs 480p run {j_native:.3f}  "
                  f"{args.frames / stats['seconds']:.2f} FPS  peak RSS {stats['rss_mb']:.0f} MB", flush=True)
    print(f"\n{len(seqs)} sequences x {args.frames} frames, default model (MobileNetV2 + S), CPU, 2 threads; "
          "J over frames 2..N")
    print(f"| run | J vs GT | J vs 480p run | FPS | peak RSS (MB) |\n|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {np.mean(r['j_gt']):.3f} | {np.mean(r['j_native']):.3f} | {np.mean(r['fps']):.2f} | "
              f"{max(r['rss']):.0f} |")


if __name__ == "__main__":
    main()
