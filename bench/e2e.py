"""End to end speed on CPU: the tracking loop as the pre-issue code ran it (plain modules, S's upsampler in the
released order: ``TrackerConfig(fast=False)``) against the fast path (BatchNorm folded, channels-last, reordered
upsampler: the default) and the fast path in bfloat16, for 1, 3 and 10 objects at 854x480.

Each row runs ``propagate_in_video`` over the same frames of the shipped demo clip (object 1: the skater's mask;
the others: cells of a grid over the first frame), start-up (D's first-frame fits) included; the variants of one
row run back to back, so their ratio is measured under the same machine load. Agreement: the share of pixels whose
label equals the plain path's. Models: the shipped default (MobileNetV2 + S) and the released ResNet-18 layout
(ImageNet-free random weights: the speed of RN18 and S does not depend on their values).
Not a test: prints a markdown table.

    python bench/e2e.py [--frames 20] [--objects 1,3,10] [--models default,rn18] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _objects(gt: np.ndarray, n: int) -> dict[int, np.ndarray]:
    """Object 1 = the skater; objects 2..n = grid cells away from him."""
    h, w = gt.shape
    masks = {1: gt}
    cols = 5
    cells = [(r, c) for r in range(4) for c in range(cols)]
    for obj, (r, c) in zip(range(2, n + 1), cells):
        m = np.zeros_like(gt)
        m[r * h // 4 + 10: (r + 1) * h // 4 - 10, c * w // cols + 10: (c + 1) * w // cols - 10] = True
        masks[obj] = m & ~gt
    return masks


def _tracker(model: str, config):
    from frtm_plugin.core.backbone import BACKBONE_CHANNELS, build_backbone
    from frtm_plugin.core.segnet import SegNetwork
    from frtm_plugin.core.tracker import FRTMTracker
    from frtm_plugin.models import build_tracker

    if model == "default":
        return build_tracker("default", config=config)[0]
    import torch

    torch.manual_seed(0)
    ch = BACKBONE_CHANNELS["resnet18"]
    segnet = SegNetwork({k: ch[k] for k in ("layer5", "layer4", "layer3", "layer2")})
    return FRTMTracker(build_backbone("resnet18", weights=None), segnet.eval(), config)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--objects", default="1,3,10")
    p.add_argument("--models", default="default,rn18")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from frtm_plugin.core.tracker import TrackerConfig
    from frtm_plugin.core.video_loop import propagate_in_video
    from frtm_plugin.io.davis import load_sequence
    from frtm_plugin.io.labels import read_label_png

    torch.set_num_threads(args.threads)
    seq = load_sequence(ROOT / "data" / "demo", "rollerblade")
    frames = [seq.read_frame(i) for i in range(args.frames)]
    gt = read_label_png(seq.annotation_paths[0]) == 1
    variants = {"plain (pre-issue path)": TrackerConfig(fast=False), "fast": TrackerConfig(),
                "fast, bf16": TrackerConfig(precision="bfloat16")}
    print(f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads; {args.frames} frames at 854x480, start-up included")
    print("| model | objects | " + " | ".join(f"{v} FPS" for v in variants) +
          " | fast / plain | bf16 / plain | agreement fast | agreement bf16 |")
    print("|---" * (2 + len(variants) + 4) + "|")
    for model in args.models.split(","):
        for n in (int(x) for x in args.objects.split(",")):
            keyframes = {0: _objects(gt, n)}
            fps, labels = {}, {}
            for name, config in variants.items():
                tracker = _tracker(model, config)
                t0 = time.perf_counter()
                labels[name] = np.stack([o.labels for o in propagate_in_video(tracker, frames, keyframes)])
                fps[name] = len(frames) / (time.perf_counter() - t0)
            plain, fast, bf16 = (labels[v] for v in variants)
            f = list(fps.values())
            print(f"| {model} | {n} | " + " | ".join(f"{x:.2f}" for x in f) + f" | {f[1] / f[0]:.2f}x | "
                  f"{f[2] / f[0]:.2f}x | {(fast == plain).mean():.5f} | {(bf16 == plain).mean():.5f} |",
                  flush=True)


if __name__ == "__main__":
    main()
