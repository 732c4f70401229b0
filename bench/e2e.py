"""End to end speed on CPU: the tracking loop as the pre-issue code ran it (plain modules, S's upsampler in the
released order: ``TrackerConfig(fast=False)``) against the fast path (BatchNorm folded, channels-last, reordered
upsampler: the default) and the fast path in bfloat16, for 1, 3 and 10 objects at 854x480.

Each row runs ``propagate_in_video`` over the same frames of the shipped demo clip (object 1: the skater's mask;
the others: cells of a grid over the first frame), start-up (D's first-frame fits) included; the variants of one
row run back to back, so their ratio is measured under the same machine load. Agreement: the share of pixels whose
label equals the plain path's. Models: the shipped default (MobileNetV2 + S) and the released ResNet-18 layout:
random RN18 weights (no ImageNet ResNet weights install here; the speed of RN18 and S does not depend on their
values) and an S whose weights pass D's score through (foreground where D scores above ~1), so that masks are not
empty and D's memory updates and Gauss-Newton refits run as with trained weights (a random S outputs nothing, and
an empty mask skips them).

``--authors RUNNER`` adds the authors' released code to the RN18 rows, timed on the same frames, first-frame masks
and S checkpoint (written in the released format) in the same run: RUNNER is a script that runs their tracker
(``evaluate.py``'s ``Parameters(weights, fast=True).get_model()``, ``run_sequence``: how their README runs the RN18
models) and prints JSON lines with ``fps``, called as
``RUNNER --frames DIR --mask PNG --weights PTH --n-frames N --threads T``. Their code is not in this repository;
to run it on a CPU with torch 2.14 it needs four changes, none to its arithmetic: no NPP extension (its
``warp_affine`` then takes its own ``cv2.warpAffine`` branch), torchvision ``weights=None`` instead of
``pretrained=True``, no ``torch.cuda.synchronize()``, and ``TensorList.__getattr__`` refusing
``__torch_function__`` (current torch otherwise dispatches ``autograd.grad`` to the list). Their RN18 settings
do less solver work than this project's defaults (GN/CG init (5, 10, 10, 10), updates (5,); ours
(5, 10, 10, 10, 10) and (10,), the released non-fast settings), so the comparison is conservative.
Not a test: prints a markdown table.

    python bench/e2e.py [--frames 20] [--objects 1,3,10] [--models default,rn18] [--threads 2] [--authors RUNNER]
                        [--authors-objects 1,3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
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


def _passthrough_segnet():
    """The released RN18-layout S with weights that carry D's score through every level to the output (logit
    5 * (s' - 1) for a positive multiple s' of the score): dense convolutions as with trained weights."""
    import torch

    from frtm_plugin.core.backbone import BACKBONE_CHANNELS
    from frtm_plugin.core.segnet import SegNetwork

    ch = BACKBONE_CHANNELS["resnet18"]
    net = SegNetwork({k: ch[k] for k in ("layer5", "layer4", "layer3", "layer2")})
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var") or name.endswith("bblock.1.weight"):
                t.fill_(1.0)  # BatchNorm as identity
            elif not name.endswith("num_batches_tracked"):
                t.zero_()
        oc = net.out_channels
        for level in net.TSE:
            tse = net.TSE[level].transform  # input: the oc reduced channels, then the score at channel oc
            tse[0].weight[oc, oc, 1, 1] = 1.0
            tse[2].weight[oc, oc, 1, 1] = 1.0
            tse[4].weight[0, oc, 1, 1] = 1.0
            for rrb in (net.RRB1[level], net.RRB2[level]):
                rrb.conv1x1.weight[:, :, 0, 0] = torch.eye(oc)
        net.project.conv1.weight[0, 0, 1, 1] = 1.0
        net.project.conv2.weight[0, 0, 1, 1] = 5.0
        net.project.conv2.bias[0] = -5.0
    return net.eval()


def _tracker(model: str, config):
    from frtm_plugin.core.backbone import build_backbone
    from frtm_plugin.core.tracker import FRTMTracker
    from frtm_plugin.models import build_tracker

    if model == "default":
        return build_tracker("default", config=config)[0]
    import torch

    torch.manual_seed(0)
    return FRTMTracker(build_backbone("resnet18", weights=None), _passthrough_segnet(), config)


def _authors_fps(runner: str, frames_dir: Path, masks: dict[int, np.ndarray], n_frames: int, threads: int,
                 tmp: Path) -> float:
    """The authors' released code on the same frames and masks (see the module docstring), in a subprocess."""
    from PIL import Image

    from frtm_plugin.core.segnet import save_segnet_checkpoint

    weights = tmp / "rn18_passthrough.pth"
    if not weights.exists():
        save_segnet_checkpoint(weights, _passthrough_segnet(), {"backbone": "resnet18", "target_layer": "layer4"})
    ids = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for obj, m in masks.items():
        ids[m] = obj
    mask_png = tmp / f"mask_{len(masks)}.png"
    Image.fromarray(ids, mode="L").save(mask_png)
    out = subprocess.run([sys.executable, runner, "--frames", str(frames_dir), "--mask", str(mask_png),
                          "--weights", str(weights), "--n-frames", str(n_frames), "--threads", str(threads)],
                         check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if not rows or rows[-1].get("objects") not in (None, len(masks)):
        raise RuntimeError(f"the authors' runner did not report {len(masks)} objects: {out.stdout[-500:]}")
    return float(rows[-1]["fps"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--objects", default="1,3,10")
    p.add_argument("--models", default="default,rn18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--authors", metavar="RUNNER", help="a script timing the authors' released code (RN18 rows)")
    p.add_argument("--authors-objects", default="1,3",
                   help="object counts to time the authors' code at (10 objects take it about 10 minutes)")
    args = p.parse_args()

    import torch

    from frtm_plugin.core.tracker import TrackerConfig
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
    authors = " | authors' code FPS | fast / authors" if args.authors else ""
    print("| model | objects | " + " | ".join(f"{v} FPS" for v in variants) +
          " | fast / plain | bf16 / plain | agreement fast | agreement bf16" + authors + " |")
    print("|---" * (2 + len(variants) + 4 + 2 * bool(args.authors)) + "|")
    with tempfile.TemporaryDirectory(prefix="frtm-e2e-") as tmp:
        _rows(args, variants, frames, gt, seq.frame_paths[0].parent, Path(tmp))


def _rows(args, variants, frames, gt, frames_dir: Path, tmp: Path) -> None:
    """One table row per (model, object count): the variants back to back, then the authors' code if asked."""
    from frtm_plugin.core.video_loop import propagate_in_video

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
            extra = ""
            if args.authors:
                extra = " n/a | n/a |"
                if model == "rn18" and str(n) in args.authors_objects.split(","):
                    theirs = _authors_fps(args.authors, frames_dir, keyframes[0], args.frames, args.threads, tmp)
                    extra = f" {theirs:.2f} | {f[1] / theirs:.2f}x |"
            print(f"| {model} | {n} | " + " | ".join(f"{x:.2f}" for x in f) + f" | {f[1] / f[0]:.2f}x | "
                  f"{f[2] / f[0]:.2f}x | {(fast == plain).mean():.5f} | {(bf16 == plain).mean():.5f} |" + extra,
                  flush=True)


if __name__ == "__main__":
    main()
