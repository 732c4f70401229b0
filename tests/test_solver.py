"""The feature-resolution solver against the autograd full-resolution reference (DESIGN.md 3.1, 3.3)."""

import pytest
import torch
import torch.nn.functional as F

from frtm_plugin import ops
from frtm_plugin.core.problems import InitProblem, UpdateProblem
from frtm_plugin.core.reference import ReferenceProblem
from frtm_plugin.core.solver import conjugate_gradient, gauss_newton
from frtm_plugin.core.target_model import (SampleMemory, SolverConfig, TargetModel, hinge_pixel_weights,
                                           initial_sample_weights)

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def rel_err(a, b):
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


def random_case(dtype, k=3, c_in=24, c=8, feat_hw=(30, 54), label_hw=(480, 854), seed=0):
    """Random features, soft labels, hinge-like pixel weights and sample weights; non-integer scale factors."""
    g = torch.Generator().manual_seed(seed)
    hf, wf = feat_hw
    x = torch.randn(k, c_in, hf, wf, generator=g, dtype=torch.float64)
    y = torch.rand(k, *label_hw, generator=g, dtype=torch.float64)
    v = 0.5 + torch.rand(k, *label_hw, generator=g, dtype=torch.float64)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    w1 = torch.randn(c, c_in, generator=g, dtype=torch.float64) / c_in ** 0.5
    w2 = torch.randn(c, 9, generator=g, dtype=torch.float64) / 3
    return [t.to(dtype) for t in (x, y, v, w, w1, w2)]


# -- primitives ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("out_size,in_size", [(480, 30), (854, 54), (7, 3), (5, 5), (3, 7)])
def test_interp_matrix_matches_f_interpolate(out_size, in_size):
    s = torch.randn(2, in_size, 4, dtype=torch.float64)
    u = ops.interp_matrix(out_size, in_size, torch.float64)
    ref = F.interpolate(s[None], size=(out_size, 4), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(u @ s, ref, atol=1e-12)


def test_conv_and_corr_match_torch():
    x = torch.randn(5, 3, 7, 9, dtype=torch.float64)
    kernel = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x.permute(1, 0, 2, 3), kernel.view(1, 5, 3, 3), padding=1)[:, 0]
    out = ops.conv3x3_flat(x, kernel)
    assert torch.allclose(out, ref, atol=1e-12)
    t = torch.randn_like(ref)
    (grad,) = torch.autograd.grad((ref * t).sum(), kernel)
    assert torch.allclose(ops.corr3x3_flat(x, t), grad, atol=1e-12)


@pytest.mark.parametrize("feat_hw,label_hw", [((30, 54), (480, 854)), ((5, 7), (37, 61)), ((1, 1), (3, 5))])
def test_stencil_equals_upsampling_adjoint(feat_hw, label_hw):
    """U^T (v (U s - y)) computed on the feature grid equals autograd through the full-resolution loss."""
    y = torch.rand(2, *label_hw, dtype=torch.float64)
    v = torch.rand(2, *label_hw, dtype=torch.float64)
    s = torch.randn(2, *feat_hw, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * (v * (ops.upsample(s, label_hw) - y).square()).sum()
    (grad,) = torch.autograd.grad(loss, s)
    g, bh = ops.stencil_precompute(y, v, feat_hw)
    fast = ops.stencil_apply(g, s.detach()) - bh
    assert ((fast - grad).norm() / grad.norm()).item() < 1e-12


# -- the two problems ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_init_problem_gradient_and_gn_product(dtype):
    x, y, v, w, w1, w2 = random_case(dtype)
    reg = (1e-2, 1e-1)
    stencil, target = ops.stencil_precompute(y, v, x.shape[-2:])
    fast = InitProblem(x.permute(1, 0, 2, 3).contiguous(), stencil, target, w, reg)
    ref = ReferenceProblem(x, y, v, w, reg, project=True)
    b_fast, a_fast = fast.linearize((w1, w2))
    b_ref, a_ref = ref.linearize((w1, w2))
    assert rel_err(b_fast, b_ref) <= TOL[dtype]
    p = (torch.randn_like(w1), torch.randn_like(w2))
    assert rel_err(a_fast(p), a_ref(p)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_update_problem_gradient_and_gn_product(dtype):
    x, y, v, w, _, w2 = random_case(dtype, c_in=8)
    stencil, target = ops.stencil_precompute(y, v, x.shape[-2:])
    fast = UpdateProblem(x.permute(1, 0, 2, 3).contiguous(), stencil, target, w, 1e-1)
    ref = ReferenceProblem(x, y, v, w, (1e-2, 1e-1), project=False)
    b_fast, a_fast = fast.linearize((w2,))
    b_ref, a_ref = ref.linearize((w2,))
    assert rel_err(b_fast, b_ref) <= TOL[dtype]
    p = (torch.randn_like(w2),)
    assert rel_err(a_fast(p), a_ref(p)) <= TOL[dtype]


def test_reference_gradient_is_half_the_loss_gradient():
    """The reference itself: -b must be half of dL/dW (a check that the yardstick measures the stated loss)."""
    x, y, v, w, w1, w2 = random_case(torch.float64, feat_hw=(4, 6), label_hw=(29, 45))
    ref = ReferenceProblem(x, y, v, w, (1e-2, 1e-1), project=True)
    params = (w1.clone().requires_grad_(), w2.clone().requires_grad_())
    grads = torch.autograd.grad(ref.loss(params), params)
    b, _ = ref.linearize((w1, w2))
    assert rel_err([-bi * 2 for bi in b], grads) < 1e-12


def test_cg_solves_spd_system_exactly_in_n_steps():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.t() + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    (x,) = conjugate_gradient(lambda p: (a @ p[0],), (b,), (1.0,), 6)
    assert torch.allclose(a @ x, b, atol=1e-9)
    # A zero right-hand side gives a zero step, not NaN.
    (z,) = conjugate_gradient(lambda p: (a @ p[0],), (torch.zeros(6, dtype=torch.float64),), (1.0,), 3)
    assert torch.equal(z, torch.zeros(6, dtype=torch.float64))


def realistic_case(dtype, k=5, c_in=64, c=16, feat_hw=(30, 54), label_hw=(480, 854), seed=0):
    """Backbone-like (non-negative) features, blob-shaped binary labels with hinge weights, the released sample
    weights and D's default initialisation: a 480x854 label grid on a 30x54 feature grid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, c_in, *feat_hw, generator=g, dtype=torch.float64).relu()
    blob = F.avg_pool2d(torch.randn(k, 1, *feat_hw, generator=g, dtype=torch.float64), 3, 1, 1)
    y = (ops.upsample(blob[:, 0], label_hw) > 0.2).double()
    v = hinge_pixel_weights(y)
    w = initial_sample_weights(k, torch.float64)
    tm = TargetModel(c_in, SolverConfig(channels=c), generator=torch.Generator().manual_seed(seed + 1),
                     dtype=torch.float64)
    return [t.to(dtype) for t in (x, y, v, w, tm.w1, tm.w2)]


def whole_run(x, y, v, w, w1, w2, fast: bool):
    """Init (5 GN steps over W1, W2 with 5+10+10+10+10 CG iterations), then one update of W2 (10 CG iterations) on
    the projected features; returns the scores after each."""
    cfg = SolverConfig(channels=w1.shape[0])
    stencil, target = ops.stencil_precompute(y, v, x.shape[-2:])
    xf = x.permute(1, 0, 2, 3).contiguous()
    init = (InitProblem(xf, stencil, target, w, cfg.filter_reg) if fast
            else ReferenceProblem(x, y, v, w, cfg.filter_reg, project=True))
    w1, w2 = gauss_newton(init, (w1, w2), cfg.init_cg_iters, cfg.precond)
    h = F.conv2d(x, w1[:, :, None, None])
    update = (UpdateProblem(h.permute(1, 0, 2, 3).contiguous(), stencil, target, w, cfg.filter_reg[1]) if fast
              else ReferenceProblem(h, y, v, w, cfg.filter_reg, project=False))
    (w2_new,) = gauss_newton(update, (w2,), cfg.update_cg_iters, cfg.precond[1:])
    return init.scores(w1, w2), update.scores(w2_new), (w1, w2_new)


@pytest.mark.parametrize("seed", [0, 1])
def test_whole_run_fast_equals_reference_float32(seed):
    """From the same initial weights, the fast path and the autograd reference give scores that agree to 1e-4."""
    data = realistic_case(torch.float32, seed=seed)
    fast = whole_run(*data, fast=True)
    ref = whole_run(*data, fast=False)
    for f, r in zip(fast[:2], ref[:2]):
        assert (f - r).abs().max().item() <= 1e-4
    # The fit did something: the full-resolution loss fell clearly below its value at the initial weights.
    x, y, v, w, w1, w2 = data
    loss = ReferenceProblem(x, y, v, w, SolverConfig().filter_reg, project=True).loss
    assert loss(fast[2]) < 0.8 * loss((w1, w2))


def test_whole_run_float32_is_as_accurate_as_reference():
    """On a badly conditioned case (few channels, small grid) float32 runs of *any* implementation drift from the
    float64 answer, because 45 CG iterations with no tolerance amplify rounding along the directions that only the
    tiny W1 regulariser (1e-8) controls. The fast path must drift no more than the reference does."""
    data64 = realistic_case(torch.float64, c_in=16, c=8, feat_hw=(15, 27), label_hw=(240, 427))
    truth = whole_run(*data64, fast=False)
    data32 = [t.float() for t in data64]
    fast = whole_run(*data32, fast=True)
    ref = whole_run(*data32, fast=False)
    for f, r, t in zip(fast[:2], ref[:2], truth[:2]):
        err_fast = ((f.double() - t).norm() / t.norm()).item()
        err_ref = ((r.double() - t).norm() / t.norm()).item()
        assert err_fast <= 1.5 * err_ref + 1e-5


# -- memory and pixel weights ------------------------------------------------------------------------------------

def test_hinge_pixel_weights_rules():
    h, w = 20, 50  # 1000 px
    small = torch.zeros(1, h, w)
    small[0, :2, :25] = 1  # 50 px = 5 % < kappa
    wts = hinge_pixel_weights(small)
    assert torch.allclose(wts[0][small[0] > 0], torch.tensor(0.1 / 0.05))
    assert torch.allclose(wts[0][small[0] == 0], torch.tensor(0.9 / 0.95))
    # The foreground carries exactly kappa of the total weight.
    assert abs((wts[0] * small[0]).sum() / wts[0].sum() - 0.1) < 1e-6
    large = torch.zeros(1, h, w)
    large[0, :10] = 1  # 50 % > kappa: uniform
    tiny = torch.zeros(1, h, w)
    tiny[0, 0, :9] = 1  # 9 px < 10: uniform
    assert torch.equal(hinge_pixel_weights(large), torch.ones(1, h, w))
    assert torch.equal(hinge_pixel_weights(tiny), torch.ones(1, h, w))
    assert torch.equal(hinge_pixel_weights(small, kappa=None), torch.ones(1, h, w))


def _hinge_per_sample(masks, kappa=0.1, min_pixels=10):
    """The released rule written plainly, one sample at a time with Python floats (the reference)."""
    fg = masks > 0.5
    out = torch.ones(fg.shape, dtype=masks.dtype)
    for k in range(fg.shape[0]):
        n_fg = int(fg[k].sum())
        frac = n_fg / fg[k].numel()
        if n_fg >= min_pixels and frac <= kappa:
            out[k] = torch.where(fg[k], torch.tensor(kappa / frac, dtype=masks.dtype),
                                 torch.tensor((1.0 - kappa) / (1.0 - frac), dtype=masks.dtype))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hinge_pixel_weights_on_the_device_equal_the_per_sample_rule(dtype):
    g = torch.Generator().manual_seed(3)
    masks = torch.zeros(6, 30, 40, dtype=dtype)
    masks[0, :3, :7] = 1  # 21 px: weighted
    masks[1, 0, :9] = 1  # 9 px: too few
    masks[2, :20] = 1  # 67 %: too large
    masks[3] = (torch.rand(30, 40, generator=g) < 0.05).to(dtype)  # scattered, ~5 %
    masks[4, 10:12, 10:70 // 2] = 0.7  # soft values above 0.5
    # masks[5] empty
    assert torch.equal(hinge_pixel_weights(masks), _hinge_per_sample(masks))
    assert torch.equal(hinge_pixel_weights(masks, kappa=0.3, min_pixels=5), _hinge_per_sample(masks, 0.3, 5))


def test_memory_insert_takes_the_lowest_unprotected_slot_first_of_equals():
    mem = SampleMemory(capacity=6, channels=1, feat_hw=(2, 2), learning_rate=0.1, dtype=torch.float64)
    mem.weights[:] = torch.tensor([0.3, 0.1, 0.1, 0.05, 0.2, 0.25], dtype=torch.float64)
    mem.protected[3] = True  # the lowest, but protected
    mem.count = 6
    zeros = (torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(9, 2, 2, dtype=torch.float64),
             torch.zeros(2, 2, dtype=torch.float64))
    assert int(mem.insert(*zeros)) == 1  # 0.1 at slots 1 and 2: the first
    for _ in range(5):  # the rule as a stable sort of the unprotected weights would give it
        expected = int(torch.sort(mem.weights.masked_fill(mem.protected, float("inf")), stable=True).indices[0])
        assert int(mem.insert(*zeros)) == expected != 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a host round trip only exists on a GPU)")
def test_memory_insert_and_pixel_weights_make_no_host_round_trip_on_cuda():
    mem = SampleMemory(8, 4, (6, 8), 0.1, device="cuda")
    masks = (torch.rand(2, 96, 128, device="cuda") < 0.03).float()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        hinge_pixel_weights(masks)
        for _ in range(3):
            mem.insert(torch.ones(4, 6, 8, device="cuda"), torch.ones(9, 6, 8, device="cuda"),
                       torch.ones(6, 8, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_memory_weights_decay_and_replacement():
    mem = SampleMemory(capacity=8, channels=2, feat_hw=(3, 4), learning_rate=0.1, dtype=torch.float64)
    k0 = 5
    w0 = initial_sample_weights(k0, torch.float64)
    assert torch.allclose(w0, torch.tensor([1 / 3] + [1 / 6] * 4, dtype=torch.float64))
    mem.initialize(torch.zeros(2, k0, 3, 4, dtype=torch.float64), torch.zeros(k0, 9, 3, 4, dtype=torch.float64),
                   torch.zeros(k0, 3, 4, dtype=torch.float64), w0)
    slots = []
    for i in range(6):
        slots.append(mem.insert(torch.full((2, 3, 4), float(i + 1), dtype=torch.float64),
                                torch.zeros(9, 3, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)))
        assert abs(mem.weights.sum().item() - 1) < 1e-12
    # Empty slots fill first, in order; then the lowest weight goes: the earliest update samples (they entered at
    # eta = 0.1, below the augmented copies' 1/6), as the released memory does.
    assert slots[:3] == [5, 6, 7]
    assert slots[3:5] == [5, 6]
    # Geometric growth by age: each new sample weighs 1/(1 - eta) times the previous newest.
    ratio = mem.weights[slots[5]] / mem.weights[slots[4]]
    assert abs(ratio.item() - 1 / 0.9) < 1e-12
    assert mem.count == 8
    f, _, _, w = mem.active()
    assert f.shape[1] == 8 and torch.equal(f[0, slots[5]], torch.full((3, 4), 6.0, dtype=torch.float64))


def test_memory_bytes_at_480p_k80():
    """The per-object memory at 480p with K = 80, c = 96 is about 55 MB (features + stencils), fixed in advance."""
    mem = SampleMemory(80, 96, (30, 54), 0.1)
    assert 50e6 < mem.nbytes < 60e6


def test_target_model_learns_and_updates_on_schedule():
    g = torch.Generator().manual_seed(0)
    c_in, hf, wf = 16, 8, 12
    feats = torch.randn(3, c_in, hf, wf, generator=g)
    # A target whose label is a linear function of the features: D can fit it.
    labels = (feats[:, 0] > 0.5).float()
    labels = F.interpolate(labels[:, None], size=(64, 96), mode="nearest")[:, 0]
    cfg = SolverConfig(channels=4, update_every=2)
    tm = TargetModel(c_in, cfg, generator=torch.Generator().manual_seed(0))
    tm.initialize(feats, labels)
    assert tm.memory.count == 3
    h, s = tm.predict(feats[0])
    up = ops.upsample(s, (64, 96))
    iou = ((up > 0.5) & (labels[0] > 0.5)).sum() / ((up > 0.5) | (labels[0] > 0.5)).sum()
    assert iou > 0.5
    w2_before = tm.w2.clone()
    assert tm.update(h, labels[0])  # frame 1: stored, not refitted (update_every = 2)
    assert torch.equal(tm.w2, w2_before) and tm.memory.count == 4
    h, s = tm.predict(feats[1])
    assert not tm.update(h, torch.zeros(64, 96))  # lost target: nothing stored, nothing refitted
    assert tm.memory.count == 4 and torch.equal(tm.w2, w2_before)
    h, s = tm.predict(feats[2])
    assert tm.update(h, labels[2])  # frame 3
    h, s = tm.predict(feats[1])
    assert tm.update(h, labels[1])  # frame 4: refit
    assert not torch.equal(tm.w2, w2_before)
    sd = tm.state_dict()
    assert sd["project.weight"].shape == (4, c_in, 1, 1) and sd["filter.weight"].shape == (1, 4, 3, 3)
