"""The target model's two least-squares problems in their feature-resolution form (DESIGN.md 3.1).

D(x) = W2 * (W1 * x) with W1 a 1x1 conv (c <- C) and W2 a 3x3 conv (1 <- c), kept flat: W1 (c, C), W2 (c, 9).
The loss over a memory of K samples,

    L = sum_k g_k sum_p v_k(p) (U(D(x_k))(p) - y_k(p))^2 + l1^2 |W1|^2 + l2^2 |W2|^2,

is seen only through the per-sample stencils G_k and maps bh_k (``ops.stencil_precompute``), so no product here
touches the label grid. Because W2 has one output channel, every Jacobian product of the init problem folds onto a
single (C, 9) kernel applied to the raw features (one GEMM each way).

Every product goes through ``ops.normal_corr`` / ``ops.init_products``, which the compiled extension fuses into one
pass over the features. Where the extension runs, ``fused_solve`` also runs all Gauss-Newton steps and their CG
iterations in one call (``core.solver.gauss_newton`` uses it); it computes what the Python loop computes.
"""

from __future__ import annotations

import torch

from .. import ops


class _Data:
    """What both problems share: features (C, K, Hf, Wf), stencils (K, 9, Hf, Wf), bh (K, Hf, Wf), weights (K,)."""

    def __init__(self, features, stencil, target, sample_weights):
        self.x = features
        self.g = stencil
        self.bh = target
        self.w = sample_weights.view(-1, 1, 1)

    def normal_corr(self, kernel: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """corr3x3(x, g_k (G_k * conv3x3(x, kernel) - target_k)): J^T of a weighted residual, or J^T J of a kernel."""
        return ops.normal_corr(self.x, kernel, self.g, self.w.view(-1), target)


class InitProblem(_Data):
    """First-frame problem over (W1, W2) on raw backbone features."""

    def __init__(self, features, stencil, target, sample_weights, reg: tuple[float, float]):
        super().__init__(features, stencil, target, sample_weights)
        self.reg1, self.reg2 = reg[0] ** 2, reg[1] ** 2

    def scores(self, w1, w2) -> torch.Tensor:
        return ops.conv3x3_flat(self.x, w1.t() @ w2)

    def linearize(self, params):
        w1, w2 = params
        # J^T t for t = g (G * D(x) - bh): both weight gradients from one (C, 9) correlation.
        corr = self.normal_corr(w1.t() @ w2, self.bh)
        b = (-(w2 @ corr.t() + self.reg1 * w1), -(w1 @ corr + self.reg2 * w2))

        def apply_a(p):
            # J (P1, P2) = conv3x3(x, W2 o P1 + P2 o W1): the c channels contracted into one kernel.
            return ops.init_products(self.x, self.g, self.w.view(-1), w1, w2, *p, self.reg1, self.reg2)

        return b, apply_a

    def fused_solve(self, params, cg_iters, preconditioner):
        """All GN steps in one extension call; None where the extension does not run (the caller loops instead)."""
        if not ops.fused_solver_available(self.x):
            return None
        w1, w2 = params
        return ops.init_solve(self.x, self.g, self.bh, self.w.view(-1), w1, w2, self.reg1, self.reg2,
                              preconditioner, cg_iters)


class UpdateProblem(_Data):
    """Update problem over W2 alone on W1-projected features (c, K, Hf, Wf); linear, so A does not depend on W2."""

    def __init__(self, features, stencil, target, sample_weights, reg2: float):
        super().__init__(features, stencil, target, sample_weights)
        self.reg2 = reg2 ** 2

    def scores(self, w2) -> torch.Tensor:
        return ops.conv3x3_flat(self.x, w2)

    def linearize(self, params):
        (w2,) = params
        b = (-(self.normal_corr(w2, self.bh) + self.reg2 * w2),)

        def apply_a(p):
            (p2,) = p
            return (self.normal_corr(p2) + self.reg2 * p2,)

        return b, apply_a

    def fused_solve(self, params, cg_iters, preconditioner):
        """All GN steps in one extension call; None where the extension does not run (the caller loops instead)."""
        if not ops.fused_solver_available(self.x):
            return None
        (w2,) = params
        return (ops.update_solve(self.x, self.g, self.bh, self.w.view(-1), w2, self.reg2, preconditioner[0],
                                 cg_iters),)
