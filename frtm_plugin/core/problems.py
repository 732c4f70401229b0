"""The target model's two least-squares problems in their feature-resolution form (DESIGN.md 3.1).

D(x) = W2 * (W1 * x) with W1 a 1x1 conv (c <- C) and W2 a 3x3 conv (1 <- c), kept flat: W1 (c, C), W2 (c, 9).
The loss over a memory of K samples,

    L = sum_k g_k sum_p v_k(p) (U(D(x_k))(p) - y_k(p))^2 + l1^2 |W1|^2 + l2^2 |W2|^2,

is seen only through the per-sample stencils G_k and maps bh_k (``ops.stencil_precompute``), so no product here
touches the label grid. Because W2 has one output channel, every Jacobian product of the init problem folds onto a
single (C, 9) kernel applied to the raw features (one GEMM each way).
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

    def residual_map(self, scores: torch.Tensor) -> torch.Tensor:
        """t_k = g_k (G_k * s_k - bh_k): U^T of the weighted full-resolution residual, on the feature grid."""
        return self.w * (ops.stencil_apply(self.g, scores) - self.bh)

    def normal_map(self, scores: torch.Tensor) -> torch.Tensor:
        """g_k G_k * s_k: U^T diag(g v) U applied to a score perturbation."""
        return self.w * ops.stencil_apply(self.g, scores)


class InitProblem(_Data):
    """First-frame problem over (W1, W2) on raw backbone features."""

    def __init__(self, features, stencil, target, sample_weights, reg: tuple[float, float]):
        super().__init__(features, stencil, target, sample_weights)
        self.reg1, self.reg2 = reg[0] ** 2, reg[1] ** 2

    def _jt(self, w1, w2, t):
        """J^T t for a feature-grid residual t: both weight gradients from one (C, 9) correlation."""
        corr = ops.corr3x3_flat(self.x, t)
        return w2 @ corr.t(), w1 @ corr

    def scores(self, w1, w2) -> torch.Tensor:
        return ops.conv3x3_flat(self.x, w1.t() @ w2)

    def linearize(self, params):
        w1, w2 = params
        t = self.residual_map(self.scores(w1, w2))
        g1, g2 = self._jt(w1, w2, t)
        b = (-(g1 + self.reg1 * w1), -(g2 + self.reg2 * w2))

        def apply_a(p):
            p1, p2 = p
            # J (P1, P2) = conv3x3(x, W2 o P1 + P2 o W1): the c channels contracted into one kernel.
            jp = ops.conv3x3_flat(self.x, p1.t() @ w2 + w1.t() @ p2)
            a1, a2 = self._jt(w1, w2, self.normal_map(jp))
            return a1 + self.reg1 * p1, a2 + self.reg2 * p2

        return b, apply_a


class UpdateProblem(_Data):
    """Update problem over W2 alone on W1-projected features (c, K, Hf, Wf); linear, so A does not depend on W2."""

    def __init__(self, features, stencil, target, sample_weights, reg2: float):
        super().__init__(features, stencil, target, sample_weights)
        self.reg2 = reg2 ** 2

    def scores(self, w2) -> torch.Tensor:
        return ops.conv3x3_flat(self.x, w2)

    def linearize(self, params):
        (w2,) = params
        t = self.residual_map(self.scores(w2))
        b = (-(ops.corr3x3_flat(self.x, t) + self.reg2 * w2),)

        def apply_a(p):
            (p2,) = p
            q = self.normal_map(ops.conv3x3_flat(self.x, p2))
            return (ops.corr3x3_flat(self.x, q) + self.reg2 * p2,)

        return b, apply_a
