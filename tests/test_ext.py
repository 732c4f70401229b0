"""The compiled extension frtm_plugin._C against the pure-PyTorch path and the autograd full-resolution reference.

Every op is compared, in float64 (1e-9) and float32 (1e-4), with the pure feature-resolution definition in
ops.lowres and with autograd through the full-resolution loss; then the fused solvers against the Python CG loop
and the reference; then the tracker with and without the extension on a real clip. CUDA variants skip without a GPU.
"""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frtm_plugin import ops
from frtm_plugin.core.problems import InitProblem, UpdateProblem
from frtm_plugin.core.reference import ReferenceProblem
from frtm_plugin.core.solver import gauss_newton
from frtm_plugin.ops import ext, lowres

pytestmark = pytest.mark.skipif(not ext.CPU_AVAILABLE, reason=f"extension not built: {ext.CPU_ERROR}")

ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
DTYPES = [torch.float64, torch.float32]
FRTM = torch.ops.frtm
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and ext.CUDA_AVAILABLE), reason="no CUDA device (or _C_cuda not built)"))]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def noncontig(t):
    """The same values in a non-contiguous tensor (a strided slice of a larger one)."""
    big = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    out = big[..., ::2]
    assert not out.is_contiguous() or t.shape[-1] == 1  # (a single column is contiguous whatever its stride)
    return out


def case(dtype, k=3, c=5, feat_hw=(7, 9), label_hw=(61, 83), device="cpu", seed=0, zero_weight=False):
    """Random features (C, K, Hf, Wf), kernel, soft labels, pixel weights and sample weights."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = torch.randn(c, k, *feat_hw, generator=g, dtype=torch.float64)
    kernel = torch.randn(c, 9, generator=g, dtype=torch.float64)
    y, v, w = r(k, *label_hw), 0.5 + r(k, *label_hw), r(k) + 0.1
    if zero_weight:  # empty memory slots and ignored pixels weigh exactly 0
        w[::2] = 0
        v[:, : label_hw[0] // 3] = 0
    return [t.to(dtype=dtype, device=device) for t in (x, kernel, y, v, w)]


SHAPES = [  # (K, C, feature grid, label grid): odd, 1x1, non-integer scales, K = 1, K = 80
    (3, 5, (7, 9), (61, 83)),
    (1, 1, (1, 1), (3, 5)),
    (1, 6, (5, 3), (37, 21)),
    (2, 4, (30, 54), (480, 854)),
    (80, 3, (4, 6), (29, 45)),
]


# -- the kernels -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,c,feat_hw,label_hw", SHAPES)
def test_stencil_ops_match_pure_and_autograd(device, dtype, k, c, feat_hw, label_hw):
    _, _, y, v, _ = case(dtype, k, c, feat_hw, label_hw, device, zero_weight=True)
    g, bh = FRTM.stencil_precompute(noncontig(y), v, *feat_hw)
    g0, bh0 = lowres.stencil_precompute(y, v, feat_hw)
    assert rel(g, g0) <= TOL[dtype] and rel(bh, bh0) <= TOL[dtype]
    # Against autograd through the full-resolution loss: U^T (v (U s - y)) = G * s - bh.
    s = torch.randn(k, *feat_hw, dtype=torch.float64, device=device, requires_grad=True)
    loss = 0.5 * (v.double() * (lowres.upsample(s, label_hw) - y.double()).square()).sum()
    (grad,) = torch.autograd.grad(loss, s)
    fast = FRTM.stencil_apply(g, noncontig(s.detach().to(dtype))) - bh
    assert rel(fast.double(), grad) <= TOL[dtype]
    assert rel(FRTM.stencil_apply(g, s.detach().to(dtype)), lowres.stencil_apply(g, s.detach().to(dtype))) <= TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,c,feat_hw,label_hw", SHAPES)
def test_conv_corr_match_pure_and_autograd(device, dtype, k, c, feat_hw, label_hw):
    x, kernel, _, _, _ = case(dtype, k, c, feat_hw, label_hw, device)
    out = FRTM.conv3x3_flat(x, kernel)
    assert rel(out, lowres.conv3x3_flat(x, kernel)) <= TOL[dtype]
    kd = kernel.double().requires_grad_()
    ref = F.conv2d(x.double().permute(1, 0, 2, 3), kd.view(1, c, 3, 3), padding=1)[:, 0]
    assert rel(out.double(), ref) <= TOL[dtype]
    t = torch.randn_like(ref)
    (grad,) = torch.autograd.grad((ref * t).sum(), kd)
    corr = FRTM.corr3x3_flat(x, t.to(dtype))
    assert rel(corr, lowres.corr3x3_flat(x, t.to(dtype))) <= TOL[dtype]
    assert rel(corr.double(), grad) <= TOL[dtype]
    # Non-contiguous features: a channel-strided slice (as the sample memory hands out) and a transposed copy.
    wide = torch.zeros(c, k + 2, *feat_hw, dtype=dtype, device=device)
    wide[:, :k] = x
    assert rel(FRTM.conv3x3_flat(wide[:, :k], kernel), out) <= TOL[dtype]
    assert rel(FRTM.corr3x3_flat(noncontig(x), t.to(dtype)), corr) <= TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_target", [True, False])
@pytest.mark.parametrize("k,c,feat_hw,label_hw", SHAPES)
def test_normal_corr_matches_pure_and_autograd(device, dtype, with_target, k, c, feat_hw, label_hw):
    x, kernel, y, v, w = case(dtype, k, c, feat_hw, label_hw, device, zero_weight=True)
    g, bh = lowres.stencil_precompute(y, v, feat_hw)
    target = bh if with_target else None
    out = FRTM.normal_corr(noncontig(x), kernel, g, w, target)
    pure = lowres.corr3x3_flat(x, w.view(-1, 1, 1) * (lowres.stencil_apply(g, lowres.conv3x3_flat(x, kernel))
                                                      - (bh if with_target else 0)))
    assert rel(out, pure) <= TOL[dtype]
    # Autograd: half the gradient in the kernel of sum_k w_k sum_p v (U conv(x, kernel) - y)^2 (y = 0: no target).
    kd = kernel.double().requires_grad_()
    s = F.conv2d(x.double().permute(1, 0, 2, 3), kd.view(1, c, 3, 3), padding=1)[:, 0]
    resid = lowres.upsample(s, label_hw) - (y.double() if with_target else 0)
    (grad,) = torch.autograd.grad(0.5 * (w.double().view(-1, 1, 1) * v.double() * resid.square()).sum(), kd)
    assert rel(out.double(), grad) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_normal_corr_is_thread_count_independent_and_bands_agree(dtype):
    """The CPU kernel splits rows between threads and walks them in bands; the split must not change the answer."""
    x, kernel, y, v, w = case(dtype, 6, 40, (17, 23), (90, 130))
    g, bh = lowres.stencil_precompute(y, v, (17, 23))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = FRTM.normal_corr(x, kernel, g, w, bh)
        torch.set_num_threads(2)
        two = FRTM.normal_corr(x, kernel, g, w, bh)
    finally:
        torch.set_num_threads(n)
    assert rel(one, two) <= TOL[dtype] / 10


def test_cpu_module_is_built_with_openmp():
    """at::parallel_for runs on one thread unless the module was compiled with -fopenmp: its OpenMP regions show
    up as calls into the OpenMP runtime."""
    import frtm_plugin._C as mod

    assert b"GOMP_parallel" in Path(mod.__file__).read_bytes()


# -- the problems' products and the fused solvers -------------------------------------------------------------------

def problem_case(dtype, k=4, c_in=12, c=5, feat_hw=(9, 13), label_hw=(70, 101), seed=0, zero_weight=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, c_in, *feat_hw, generator=g, dtype=torch.float64).relu()
    y = (torch.rand(k, *label_hw, generator=g, dtype=torch.float64) > 0.6).double()
    v = 0.5 + torch.rand(k, *label_hw, generator=g, dtype=torch.float64)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    if zero_weight:
        w[-1] = 0
    w1 = torch.randn(c, c_in, generator=g, dtype=torch.float64) / c_in ** 0.5
    w2 = torch.randn(c, 9, generator=g, dtype=torch.float64) / 3
    return [t.to(dtype) for t in (x, y, v, w, w1, w2)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_init_products_match_pure_and_reference(dtype):
    x, y, v, w, w1, w2 = problem_case(dtype)
    reg = (1e-2, 1e-1)
    g, bh = ops.stencil_precompute(y, v, x.shape[-2:])
    xf = x.permute(1, 0, 2, 3)  # non-contiguous (C, K, Hf, Wf) view
    p = (torch.randn_like(w1), torch.randn_like(w2))
    fast = FRTM.init_products(xf, g, w, w1, w2, *p, reg[0] ** 2, reg[1] ** 2)
    xc = xf.contiguous()
    corr = lowres.corr3x3_flat(xc, w.view(-1, 1, 1) * lowres.stencil_apply(g, lowres.conv3x3_flat(
        xc, p[0].t() @ w2 + w1.t() @ p[1])))
    pure = (w2 @ corr.t() + reg[0] ** 2 * p[0], w1 @ corr + reg[1] ** 2 * p[1])
    _, apply_ref = ReferenceProblem(x, y, v, w, reg, project=True).linearize((w1, w2))
    for f, q, r in zip(fast, pure, apply_ref(p)):
        assert rel(f, q) <= TOL[dtype] and rel(f, r) <= TOL[dtype]


def _solve_both(dtype, init: bool, **kw):
    """(fused extension call, Python CG loop over the extension's products, autograd reference) from one start."""
    x, y, v, w, w1, w2 = problem_case(dtype, **kw)
    reg, precond, iters = (1e-2, 1e-1), (1e-2, 1e-1), (3, 4)
    g, bh = ops.stencil_precompute(y, v, x.shape[-2:])
    if init:
        problem = InitProblem(x.permute(1, 0, 2, 3).contiguous(), g, bh, w, reg)
        ref = ReferenceProblem(x, y, v, w, reg, project=True)
        params = (w1, w2)
    else:
        problem = UpdateProblem(x.permute(1, 0, 2, 3).contiguous(), g, bh, w, reg[1])
        ref = ReferenceProblem(x, y, v, w, reg, project=False)
        start = torch.randn(x.shape[1], 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        params, precond = (start.to(dtype) * 0.1,), precond[1:]  # seeded: the result must not depend on test order
    fused = gauss_newton(problem, params, iters, precond)
    loop = gauss_newton(problem, params, iters, precond, fused=False)
    reference = gauss_newton(ref, params, iters, precond)
    return fused, loop, reference


@pytest.mark.parametrize("init", [True, False])
def test_fused_solve_equals_python_loop_and_reference_float64(init):
    fused, loop, reference = _solve_both(torch.float64, init)
    for f, lp, r in zip(fused, loop, reference):
        assert rel(f, lp) <= 1e-9 and rel(f, r) <= 1e-9


@pytest.mark.parametrize("init", [True, False])
def test_fused_solve_equals_python_loop_float32(init):
    fused, loop, reference = _solve_both(torch.float32, init, zero_weight=False)
    for f, lp, r in zip(fused, loop, reference):
        assert rel(f, lp) <= 1e-4 and rel(f, r) <= 1e-3  # float32 CG amplifies rounding; the loop is the spec


def test_update_solve_k80_zero_weight_slots():
    """A memory of 80 slots, half of them still empty (weight 0), as the tracker's memory views it."""
    x, y, v, w, _, _ = problem_case(torch.float64, k=80, c_in=16, feat_hw=(5, 7), label_hw=(37, 53),
                                    zero_weight=False)
    w[40:] = 0
    g, bh = ops.stencil_precompute(y, v, x.shape[-2:])
    w2 = torch.randn(16, 9, dtype=torch.float64) * 0.1
    problem = UpdateProblem(x.permute(1, 0, 2, 3).contiguous(), g, bh, w, 0.1)
    # 4 iterations: this small problem is solved to rounding by then, and further iterations of a CG without
    # tolerance only amplify rounding (in any implementation, the reference included).
    (fused,) = gauss_newton(problem, (w2,), (4,), (0.01,))
    (loop,) = gauss_newton(problem, (w2,), (4,), (0.01,), fused=False)
    (ref,) = gauss_newton(ReferenceProblem(x, y, v, w, (0.1, 0.1), project=False), (w2,), (4,), (0.01,))
    assert rel(fused, loop) <= 1e-9 and rel(fused, ref) <= 1e-9
    assert rel(fused, w2) > 1e-3  # it moved


def test_fused_solve_stops_on_zero_gradient():
    """rho == 0 stops CG (a zero right-hand side gives a zero step, not NaN), as core.solver does."""
    x, y, v, w, _, _ = problem_case(torch.float64)
    g, _ = ops.stencil_precompute(y, v, x.shape[-2:])
    xf = x.permute(1, 0, 2, 3).contiguous()
    w2 = torch.zeros(xf.shape[0], 9, dtype=torch.float64)
    out = FRTM.update_solve(xf, g, torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.float64), w, w2, 0.1, 0.01,
                            [5])
    assert torch.equal(out, w2)


# -- registration: opcheck, fake kernels, torch.compile --------------------------------------------------------------

def _opcheck_args():
    x, kernel, y, v, w = case(torch.float64, 2, 3, (4, 5), (13, 17))
    g, bh = lowres.stencil_precompute(y, v, (4, 5))
    w1, w2 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 9, dtype=torch.float64)
    s = torch.randn(2, 4, 5, dtype=torch.float64)
    return {
        "stencil_precompute": (y, v, 4, 5),
        "stencil_apply": (g, s),
        "conv3x3_flat": (x, kernel),
        "corr3x3_flat": (x, s),
        "normal_corr": (x, kernel, g, w, bh),
        "init_products": (x, g, w, w1, w2, torch.randn_like(w1), torch.randn_like(w2), 1e-4, 1e-2),
        "init_solve": (x, g, bh, w, w1, w2, 1e-4, 1e-2, 1e-4, 1e-2, [2, 1]),
        "update_solve": (torch.randn(2, 2, 4, 5, dtype=torch.float64), g, bh, w, w2, 1e-2, 1e-2, [3]),
    }


@pytest.mark.parametrize("name", ext.OPS)
def test_opcheck(name):
    torch.library.opcheck(getattr(FRTM, name).default, _opcheck_args()[name])


def test_torch_compile_traces_through_the_ops():
    x, kernel, y, v, w = case(torch.float32, 2, 3, (6, 7), (25, 31))
    g, bh = ops.stencil_precompute(y, v, (6, 7))

    def step(x, kernel, g, w, bh):
        return FRTM.normal_corr(x, kernel, g, w, bh) * 2 + FRTM.conv3x3_flat(x, kernel).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(x, kernel, g, w, bh), step(x, kernel, g, w, bh))


# -- the bridge ---------------------------------------------------------------------------------------------------------

def test_bridge_picks_extension_pure_env_and_autograd(monkeypatch, caplog):
    x, kernel, _, _, _ = case(torch.float64)
    monkeypatch.delenv(ops.PURE_ENV, raising=False)
    assert ops.backend("cpu") == "extension-cpu"
    assert ops.backend("cuda") == ("extension-cuda" if ext.CUDA_AVAILABLE else "pure")
    assert ops.fused_solver_available(x)
    monkeypatch.setenv(ops.PURE_ENV, "1")
    ops._logged.clear()
    with caplog.at_level(logging.INFO, logger="frtm_plugin.ops"):
        assert ops.backend("cpu") == "pure" and not ops.fused_solver_available(x)
        ops.backend("cpu")
    assert sum("FRTM_PURE_OPS=1" in r.getMessage() for r in caplog.records) == 1  # logged once
    monkeypatch.delenv(ops.PURE_ENV)
    # Inputs that need a gradient take the differentiable pure path, with the same values.
    kd = kernel.clone().requires_grad_()
    out = ops.conv3x3_flat(x, kd)
    assert out.requires_grad and torch.allclose(out, FRTM.conv3x3_flat(x, kernel))
    # float16 has no compiled kernel: pure path (same maths, no error).
    half = ops.conv3x3_flat(x.half(), kernel.half())
    assert half.dtype == torch.float16 and rel(half.double(), out.detach()) < 1e-2


# -- the tracker on a real clip ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tracker_masks_extension_vs_pure(monkeypatch):
    from frtm_plugin.core.backbone import build_backbone
    from frtm_plugin.core.tracker import FRTMTracker, TrackerConfig, masks_from_label_map
    from frtm_plugin.io.davis import load_sequence

    torch.set_num_threads(2)
    seq = load_sequence(ROOT / "data" / "demo", "rollerblade")
    backbone = build_backbone("mobilenet_v2")
    n_frames = min(len(seq), 10)  # the init and one refit (every 8th frame)
    frames = [seq.read_frame(i) for i in range(n_frames)]
    first = masks_from_label_map(seq.prompts()[0])

    def run():
        tracker = FRTMTracker(backbone, None, TrackerConfig())
        return np.stack([tracker.step(f, first if i == 0 else None).labels.numpy() for i, f in enumerate(frames)])

    monkeypatch.delenv(ops.PURE_ENV, raising=False)
    assert ops.backend("cpu") == "extension-cpu"
    with_ext = run()
    monkeypatch.setenv(ops.PURE_ENV, "1")
    pure = run()
    assert (pure[1:] > 0).mean() > 0.01  # the object is tracked, not lost
    agree = (with_ext == pure).mean()
    assert agree >= 0.999, f"masks agree on {agree:.5%} of pixels"
