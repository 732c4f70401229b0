"""Benchmark: the feature-resolution solver against the autograd full-resolution reference (DESIGN.md 3, 7).

One run, same inputs, CPU, float32, a stated thread count; medians over ``--repeats`` after one warm-up:
- init: 5 GN steps / 45 CG iterations over (W1, W2), fast path including its stencil precompute for the K samples;
- update: 1 GN step / 10 CG iterations over W2 on a full memory (stencils already stored, as in the tracker), plus
  the one-sample stencil precompute a new frame pays;
- memory per object: our SampleMemory against the released layout (features + full-resolution labels and weights).

    python bench/solver.py [--repeats 5] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from frtm_plugin import ops  # noqa: E402
from frtm_plugin.core.problems import InitProblem, UpdateProblem  # noqa: E402
from frtm_plugin.core.reference import ReferenceProblem  # noqa: E402
from frtm_plugin.core.solver import gauss_newton  # noqa: E402
from frtm_plugin.core.target_model import (SampleMemory, SolverConfig, TargetModel, hinge_pixel_weights,  # noqa: E402
                                           initial_sample_weights)

FULL = dict(c_in=1024, k_init=5, k_mem=80, c=96, feat_hw=(30, 54), label_hw=(480, 854))
QUICK = dict(c_in=256, k_init=5, k_mem=20, c=96, feat_hw=(15, 27), label_hw=(240, 427))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def samples(k, channels, feat_hw, label_hw, g):
    """Non-negative features (K, C, Hf, Wf), blob-shaped binary labels and their hinge pixel weights (K, H, W)."""
    x = torch.randn(k, channels, *feat_hw, generator=g).relu()
    blob = F.avg_pool2d(torch.randn(k, 1, *feat_hw, generator=g), 3, 1, 1)
    y = (ops.upsample(blob[:, 0], label_hw) > 0.2).float()
    return x, y, hinge_pixel_weights(y)


def memory_weights(k_init, k_mem, learning_rate):
    """The released sample weights of a full memory: the first frame's samples, then k_mem - k_init updates."""
    mem = SampleMemory(k_mem, 1, (1, 1), learning_rate)
    mem.initialize(torch.zeros(1, k_init, 1, 1), torch.zeros(k_init, 9, 1, 1), torch.zeros(k_init, 1, 1),
                   initial_sample_weights(k_init))
    for _ in range(k_mem - k_init):
        mem.insert(torch.zeros(1, 1, 1), torch.zeros(9, 1, 1), torch.zeros(1, 1))
    return mem.weights.clone()


def timed(fns, repeats):
    """Median wall time of each fn() over ``repeats`` rounds after one warm-up round; the fns run interleaved, so
    load from other processes hits them alike. Also returns each fn's last result."""
    times, outs = [[] for _ in fns], [None] * len(fns)
    for i in range(repeats + 1):
        for j, fn in enumerate(fns):
            outs[j] = None
            gc.collect()
            t0 = time.perf_counter()
            outs[j] = fn()
            if i:
                times[j].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times], outs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small sizes and 1 repeat: a smoke run")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    cfg = SolverConfig(channels=s["c"])
    feat_hw, label_hw = s["feat_hw"], s["label_hw"]
    g = torch.Generator().manual_seed(0)

    # -- init: K first-frame samples of C_in raw channels, over (W1, W2) ------------------------------------------
    x, y, v = samples(s["k_init"], s["c_in"], feat_hw, label_hw, g)
    w = initial_sample_weights(s["k_init"])
    tm = TargetModel(s["c_in"], cfg, generator=torch.Generator().manual_seed(1))
    w0 = (tm.w1, tm.w2)

    def init_fast():
        stencil, target = ops.stencil_precompute(y, v, feat_hw)
        problem = InitProblem(x.permute(1, 0, 2, 3).contiguous(), stencil, target, w, cfg.filter_reg)
        return problem.scores(*gauss_newton(problem, w0, cfg.init_cg_iters, cfg.precond))

    def init_ref():
        problem = ReferenceProblem(x, y, v, w, cfg.filter_reg, project=True)
        return problem.scores(*gauss_newton(problem, w0, cfg.init_cg_iters, cfg.precond))

    (t_init_fast, t_init_ref), (s_fast, s_ref) = timed([init_fast, init_ref], repeats)
    init_diff, init_scale = (s_fast - s_ref).abs().max().item(), s_ref.abs().max().item()
    del x, y, v, s_fast, s_ref

    # -- update: a full memory of K projected samples, over W2 ------------------------------------------------------
    h, y, v = samples(s["k_mem"], s["c"], feat_hw, label_hw, g)
    w = memory_weights(s["k_init"], s["k_mem"], cfg.learning_rate)
    stencil, target = ops.stencil_precompute(y, v, feat_hw)  # done when each sample entered the memory
    hf = h.permute(1, 0, 2, 3).contiguous()

    def update_fast():
        problem = UpdateProblem(hf, stencil, target, w, cfg.filter_reg[1])
        return gauss_newton(problem, (tm.w2,), cfg.update_cg_iters, cfg.precond[1:])

    def update_ref():
        problem = ReferenceProblem(h, y, v, w, cfg.filter_reg, project=False)
        return gauss_newton(problem, (tm.w2,), cfg.update_cg_iters, cfg.precond[1:])

    def precompute_one():
        return ops.stencil_precompute(y[:1], v[:1], feat_hw)

    (t_upd_fast, t_upd_ref, t_pre), _ = timed([update_fast, update_ref, precompute_one], repeats)
    del h, hf, y, v, stencil, target
    gc.collect()

    # -- memory per object -----------------------------------------------------------------------------------------
    k, c, (fh, fw), (lh, lw) = s["k_mem"], s["c"], feat_hw, label_hw
    ours = SampleMemory(k, c, feat_hw, cfg.learning_rate).nbytes / 1e6
    released = 4 * (k * c * fh * fw + 2 * k * lh * lw) / 1e6

    up, ip = t_upd_ref / t_upd_fast, t_init_ref / t_init_fast
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}, float32, "
          f"median of {repeats} after 1 warm-up{' (quick sizes)' if args.quick else ''}, "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"sanity: max |fast - reference| score after init = {init_diff:.3g} (max |score| {init_scale:.3g}; "
          "float32, 45 CG iterations with no tolerance)")
    print()
    print("| operation | fast median s | reference median s | speedup |")
    print("|---|---|---|---|")
    print(f"| init: K={s['k_init']}, C_in={s['c_in']}, c={c}, {lh}x{lw} labels on {fh}x{fw}, "
          f"{len(cfg.init_cg_iters)} GN / {sum(cfg.init_cg_iters)} CG (fast incl. precompute) "
          f"| {t_init_fast:.4g} | {t_init_ref:.4g} | {ip:.4g}x |")
    print(f"| update: K={k}, c={c}, {lh}x{lw} labels on {fh}x{fw}, "
          f"{len(cfg.update_cg_iters)} GN / {sum(cfg.update_cg_iters)} CG | {t_upd_fast:.4g} | {t_upd_ref:.4g} "
          f"| {up:.4g}x |")
    print(f"| new-frame stencil precompute (1 sample, paid on insert) | {t_pre:.4g} | - | - |")
    print()
    print("| memory per object (K={}) | MB |".format(k))
    print("|---|---|")
    print(f"| ours: SampleMemory (features + stencils + maps + weights) | {ours:.4g} |")
    print(f"| released: features {k}x{c}x{fh}x{fw} + labels and pixel weights {k}x{lh}x{lw}, float32 "
          f"| {released:.4g} |")
    print(f"| ratio | {released / ours:.4g}x |")
    print(f"update_s={t_upd_fast:.4g} init_s={t_init_fast:.4g} update_speedup={up:.4g} init_speedup={ip:.4g} "
          f"memory_mb={ours:.4g}")


if __name__ == "__main__":
    main()
