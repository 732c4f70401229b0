"""GPU benchmark: the solver on CUDA (pure PyTorch vs the compiled extension) and end-to-end tracking FPS.

CUDA events, warm-up, medians over ``--repeats``:
- solver ms per update (K=80, c=96, 10 CG) and per init (C_in=1024, K=5, 45 CG), pure path and extension;
- end-to-end frames per second at 480p (854x480) for ResNet-18 and ResNet-101, D-only, with 1 and 5 objects;
- the whole per-frame path of the shipped default model (backbone, D per object, S batched over the frame's
  objects, merge; all on the device): plain modules, fast path, fast path in fp16, 1/3/10 objects, with agreement.
ImageNet weights are used where found; otherwise the backbone is randomly initialised (stated in the table: the
speed is the same, the masks are meaningless). On a machine without CUDA it says so and exits 0.

    python bench/gpu.py [--repeats 10] [--frames 30] [--device cpu]   # cpu: the whole-path rows only, as a check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def cuda_median_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median of ``repeats`` timings of fn() with CUDA events, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def with_pure(fn, pure: bool):
    from frtm_plugin import ops

    def run():
        old = os.environ.get(ops.PURE_ENV)
        if pure:
            os.environ[ops.PURE_ENV] = "1"
        try:
            return fn()
        finally:
            if pure:
                if old is None:
                    del os.environ[ops.PURE_ENV]
                else:
                    os.environ[ops.PURE_ENV] = old

    return run


def solver_rows(repeats: int) -> list[str]:
    from frtm_plugin import ops
    from frtm_plugin.core.problems import InitProblem, UpdateProblem
    from frtm_plugin.core.solver import gauss_newton
    from frtm_plugin.core.target_model import SolverConfig, TargetModel, hinge_pixel_weights, initial_sample_weights

    dev = torch.device("cuda")
    cfg = SolverConfig()
    g = torch.Generator(device="cpu").manual_seed(0)
    feat_hw, label_hw = (30, 54), (480, 854)

    def samples(k, ch):
        x = torch.randn(k, ch, *feat_hw, generator=g).relu().to(dev)
        blob = F.avg_pool2d(torch.randn(k, 1, *feat_hw, generator=g), 3, 1, 1).to(dev)
        y = (ops.upsample(blob[:, 0], label_hw) > 0.2).float()
        return x, y, hinge_pixel_weights(y)

    rows = []
    paths = [("pure", True)] + ([("extension", False)] if ops.backend(dev) == "extension-cuda" else [])
    x, y, v = samples(5, 1024)
    w = initial_sample_weights(5, device=dev)
    tm = TargetModel(1024, cfg, generator=torch.Generator().manual_seed(1), device=dev)

    def init():
        stencil, target = ops.stencil_precompute(y, v, feat_hw)
        problem = InitProblem(x.permute(1, 0, 2, 3).contiguous(), stencil, target, w, cfg.filter_reg)
        return gauss_newton(problem, (tm.w1, tm.w2), cfg.init_cg_iters, cfg.precond)

    t_init = {name: cuda_median_ms(with_pure(init, pure), repeats) for name, pure in paths}
    h, y, v = samples(80, cfg.channels)
    w = torch.full((80,), 1 / 80, device=dev)
    stencil, target = ops.stencil_precompute(y, v, feat_hw)
    hf = h.permute(1, 0, 2, 3).contiguous()

    def update():
        problem = UpdateProblem(hf, stencil, target, w, cfg.filter_reg[1])
        return gauss_newton(problem, (tm.w2,), cfg.update_cg_iters, cfg.precond[1:])

    t_upd = {name: cuda_median_ms(with_pure(update, pure), repeats) for name, pure in paths}
    for label, t in (("init: K=5, C_in=1024, 45 CG, incl. precompute", t_init),
                     ("update: K=80, c=96, 10 CG", t_upd)):
        pure, ext = t["pure"], t.get("extension")
        ext_cell, ratio = (f"{ext:.3g} ms", f"{pure / ext:.3g}x") if ext else ("-", "-")
        rows.append(f"| solver {label} | {pure:.3g} ms | {ext_cell} | {ratio} |")
    return rows


def fps_rows(frames: int) -> list[str]:
    from frtm_plugin.core.backbone import build_backbone
    from frtm_plugin.core.tracker import FRTMTracker, TrackerConfig
    from frtm_plugin.core.weights import WeightsNotFoundError

    rows = []
    rng = np.random.default_rng(0)
    warmup = 3
    video = rng.integers(0, 255, (frames + 1 + warmup, 480, 854, 3), dtype=np.uint8)
    for name in ("resnet18", "resnet101"):
        try:
            backbone, weights = build_backbone(name), "ImageNet"
        except WeightsNotFoundError:
            backbone, weights = build_backbone(name, weights=None), "random (ImageNet weights not found)"
        for n_obj in (1, 5):
            masks = {}
            for i in range(n_obj):  # separate boxes, one per object
                m = np.zeros((480, 854), bool)
                m[100:300, 40 + 160 * i: 160 + 160 * i] = True
                masks[i + 1] = m
            tracker = FRTMTracker(backbone, None, TrackerConfig(), device="cuda")
            tracker.step(video[0], masks)  # the first frame fits every D (not counted)
            for f in video[1: 1 + warmup]:  # warm-up frames (allocator, kernels), not counted
                tracker.step(f)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for f in video[1 + warmup:]:
                tracker.step(f)
            end.record()
            end.synchronize()
            fps = frames / (start.elapsed_time(end) / 1e3)
            rows.append(f"| end-to-end {name}, {n_obj} object(s), 854x480, D-only, backbone weights {weights} "
                        f"| {fps:.1f} FPS | | |")
    return rows


def _timed_fps(tracker, frames, masks, device, warmup: int = 3):
    """FPS of tracker.step over ``frames[1 + warmup:]`` after fitting ``masks`` on frame 0 and ``warmup`` frames;
    returns (fps, labels of the timed frames)."""
    import time

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    tracker.step(frames[0], masks)
    for f in frames[1: 1 + warmup]:
        tracker.step(f)
    sync()
    t0, labels = time.perf_counter(), []
    for f in frames[1 + warmup:]:
        labels.append(tracker.step(f).labels)
    sync()
    seconds = time.perf_counter() - t0
    return (len(frames) - 1 - warmup) / seconds, torch.stack(labels).cpu().numpy()


def whole_path_rows(frames: int, device: str) -> list[str]:
    """The shipped default model (MobileNetV2 + S) through the whole per-frame path (backbone, every object's D
    predict and update, S, merge) on the demo clip played forwards and backwards: the plain modules, the fast path,
    and the fast path in half precision (fp16 on GPU, bf16 on CPU), for 1, 3 and 10 objects; agreement with plain."""
    from frtm_plugin.core.tracker import TrackerConfig
    from frtm_plugin.io.davis import load_sequence
    from frtm_plugin.io.labels import read_label_png
    from frtm_plugin.models import build_tracker

    seq = load_sequence(Path(__file__).resolve().parents[1] / "data" / "demo", "rollerblade")
    n = len(seq)
    order = [k % (2 * n - 2) for k in range(frames + 4)]
    video = [seq.read_frame(i if i < n else 2 * n - 2 - i) for i in order]
    skater = read_label_png(seq.annotation_paths[0]) == 1
    half = "float16" if torch.device(device).type == "cuda" else "bfloat16"
    rows = []
    for n_obj in (1, 3, 10):
        masks = {1: skater}
        for i in range(2, n_obj + 1):  # blocks of the background, a grid of them
            m = np.zeros_like(skater)
            r, c = divmod(i - 2, 5)
            m[20 + 110 * r: 110 + 110 * r, 20 + 165 * c: 150 + 165 * c] = True
            masks[i] = m & ~skater
        results = {}
        for name, cfg in (("plain", TrackerConfig(fast=False)), ("fast", TrackerConfig()),
                          (f"fast {half}", TrackerConfig(precision=half))):
            tracker = build_tracker("default", device=device, config=cfg)[0]
            results[name] = _timed_fps(tracker, video, masks, device)
        plain_fps, plain_labels = results["plain"]
        for name, (fps, labels) in results.items():
            agree = float((labels == plain_labels).mean())
            rows.append(f"| whole path, default model ({name}), {n_obj} object(s), 854x480 | {fps:.1f} FPS | "
                        f"{fps / plain_fps:.2f}x plain | agreement {agree:.5f} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu runs only the whole-path rows, as a check")
    args = ap.parse_args()
    if args.device == "cpu":
        print("| measurement | FPS | ratio | agreement |\n|---|---|---|---|")
        for row in whole_path_rows(args.frames, "cpu"):
            print(row)
        return 0
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU found (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    from frtm_plugin import ops

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, ops backend on cuda: {ops.backend('cuda')}")
    print()
    print("| measurement | pure PyTorch | extension | speedup |")
    print("|---|---|---|---|")
    for row in solver_rows(args.repeats):
        print(row)
    for row in fps_rows(args.frames):
        print(row)
    print()
    print("| measurement | FPS | ratio | agreement |\n|---|---|---|---|")
    for row in whole_path_rows(args.frames, "cuda"):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
