"""Benchmark: the feature-resolution solver against the autograd full-resolution reference (DESIGN.md 3, 7).

One run, same inputs, CPU, float32, a stated thread count; medians over ``--repeats`` after one warm-up. Each
operation runs on the pure-PyTorch path, on the compiled extension (when built) and on the reference, interleaved:
- init: 5 GN steps / 45 CG iterations over (W1, W2), fast path including its stencil precompute for the K samples;
- update: 1 GN step / 10 CG iterations over W2 on a full memory (stencils already stored, as in the tracker), plus
  the one-sample stencil precompute a new frame pays;
- memory per object: our SampleMemory against the released layout (features + full-resolution labels and weights).

The last line sums up the path the tracker uses by default (the extension when it is built).

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
from frtm_plugin.core.target_model import (RELEASED_LEARNING_RATE, SampleMemory, SolverConfig,  # noqa: E402
                                           TargetModel, hinge_pixel_weights, initial_sample_weights)

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


def on_path(fn, path):
    """fn run on the pure-PyTorch path ("pure": FRTM_PURE_OPS=1 for the call) or on the default bridge choice."""
    if path != "pure":
        return fn

    def pure():
        old = os.environ.get(ops.PURE_ENV)
        os.environ[ops.PURE_ENV] = "1"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[ops.PURE_ENV]
            else:
                os.environ[ops.PURE_ENV] = old

    return pure


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

    ext_built = ops.backend("cpu") != "pure"
    default = "extension" if ext_built else "pure"
    paths = ["pure", "extension"] if ext_built else ["pure"]

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

    fns = [on_path(init_fast, p) for p in paths] + [init_ref]
    times, outs = timed(fns, repeats)
    t_init = dict(zip(paths + ["reference"], times))
    s_ref = outs[-1]
    init_diff = {p: (o - s_ref).abs().max().item() for p, o in zip(paths, outs)}
    init_scale = s_ref.abs().max().item()

    # Both cores at work? The fused product of the init, on 1 thread and on all of them.
    threads_row = None
    if ext_built and args.threads > 1:
        stencil, target = ops.stencil_precompute(y, v, feat_hw)
        xf = x.permute(1, 0, 2, 3).contiguous()
        kern = tm.w1.t() @ tm.w2

        def product():
            return ops.normal_corr(xf, kern, stencil, w, target)

        torch.set_num_threads(1)
        (t_one,), _ = timed([product], max(repeats, 5))
        torch.set_num_threads(args.threads)
        (t_all,), _ = timed([product], max(repeats, 5))
        threads_row = (t_one, t_all)
        del xf, stencil, target
    del x, y, v, outs, s_ref

    # -- update: a full memory of K projected samples, over W2 ------------------------------------------------------
    h, y, v = samples(s["k_mem"], s["c"], feat_hw, label_hw, g)
    w = memory_weights(s["k_init"], s["k_mem"], RELEASED_LEARNING_RATE)
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

    fns = [on_path(update_fast, p) for p in paths] + [update_ref] + [on_path(precompute_one, p) for p in paths]
    times, outs = timed(fns, repeats)
    t_upd = dict(zip(paths + ["reference"], times[: len(paths) + 1]))
    t_pre = dict(zip(paths, times[len(paths) + 1:]))
    upd_diff = {p: ((o[0] - outs[len(paths)][0]).norm() / outs[len(paths)][0].norm()).item()
                for p, o in zip(paths, outs)}
    del h, hf, y, v, stencil, target, outs
    gc.collect()

    # -- memory per object -----------------------------------------------------------------------------------------
    k, c, (fh, fw), (lh, lw) = s["k_mem"], s["c"], feat_hw, label_hw
    ours = SampleMemory(k, c, feat_hw, RELEASED_LEARNING_RATE).nbytes / 1e6
    released = 4 * (k * c * fh * fw + 2 * k * lh * lw) / 1e6

    def cell(t, p):
        return f"{t[p]:.4g}" if p in t else "-"

    def ratio(t, p):
        return f"{t['reference'] / t[p]:.4g}x" if p in t else "-"

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}, float32, "
          f"median of {repeats} after 1 warm-up{' (quick sizes)' if args.quick else ''}, "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; extension "
          f"{'built (frtm_plugin._C)' if ext_built else 'NOT built: pure path only'}; default path: {default}")
    print("sanity: max |path - reference| score after init: "
          + ", ".join(f"{p} {d:.3g}" for p, d in init_diff.items())
          + f" (max |score| {init_scale:.3g}; float32, 45 CG iterations with no tolerance); "
          + "W2 after update, relative: " + ", ".join(f"{p} {d:.3g}" for p, d in upd_diff.items()))
    print()
    print("| operation | pure s | extension s | reference s | pure speedup | extension speedup |")
    print("|---|---|---|---|---|---|")
    print(f"| init: K={s['k_init']}, C_in={s['c_in']}, c={c}, {lh}x{lw} labels on {fh}x{fw}, "
          f"{len(cfg.init_cg_iters)} GN / {sum(cfg.init_cg_iters)} CG (incl. stencil precompute) "
          f"| {cell(t_init, 'pure')} | {cell(t_init, 'extension')} | {t_init['reference']:.4g} "
          f"| {ratio(t_init, 'pure')} | {ratio(t_init, 'extension')} |")
    print(f"| update: K={k}, c={c}, {lh}x{lw} labels on {fh}x{fw}, {len(cfg.update_cg_iters)} GN / "
          f"{sum(cfg.update_cg_iters)} CG | {cell(t_upd, 'pure')} | {cell(t_upd, 'extension')} "
          f"| {t_upd['reference']:.4g} | {ratio(t_upd, 'pure')} | {ratio(t_upd, 'extension')} |")
    print(f"| new-frame stencil precompute (1 sample, paid on insert) | {cell(t_pre, 'pure')} "
          f"| {cell(t_pre, 'extension')} | - | - | - |")
    if threads_row:
        t_one, t_all = threads_row
        print(f"| extension: one fused init product (normal_corr), 1 thread vs {args.threads} threads "
              f"| - | {t_one:.4g} / {t_all:.4g} | - | - | {t_one / t_all:.3g}x from threads |")
    print()
    print("| memory per object (K={}) | MB |".format(k))
    print("|---|---|")
    print(f"| ours: SampleMemory (features + stencils + maps + weights) | {ours:.4g} |")
    print(f"| released: features {k}x{c}x{fh}x{fw} + labels and pixel weights {k}x{lh}x{lw}, float32 "
          f"| {released:.4g} |")
    print(f"| ratio | {released / ours:.4g}x |")
    # The required summary, for the path the tracker uses by default (the extension when it is built).
    up, ip = t_upd["reference"] / t_upd[default], t_init["reference"] / t_init[default]
    print(f"update_s={t_upd[default]:.4g} init_s={t_init[default]:.4g} update_speedup={up:.4g} "
          f"init_speedup={ip:.4g} memory_mb={ours:.4g}")


if __name__ == "__main__":
    main()
