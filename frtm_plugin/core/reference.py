"""The yardstick: the target model's problems built at full label resolution, differentiated by autograd.

This is how the authors' released code does it (DESIGN.md 3.3): the residual vector
``[sqrt(g_k v_k) (U(D(x_k)) - y_k), l1 W1, l2 W2]`` is built at label resolution and the Gauss-Newton products
come from the double-backward trick (``J^T u`` with ``create_graph``, then ``J p`` as its derivative in ``u``).
It is slow and memory-hungry on purpose; the fast problems must agree with it. Same interface as
:mod:`frtm_plugin.core.problems`: flat weights W1 (c, C) and W2 (c, 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ReferenceProblem:
    """features (K, C, Hf, Wf); labels and pixel_weights (K, H, W); sample_weights (K,).

    ``project=True``: the init problem over (W1, W2). ``project=False``: the update problem over W2 alone, the
    features being already projected (C = c).
    """

    def __init__(self, features, labels, pixel_weights, sample_weights, reg, project: bool):
        self.x = features
        self.y = labels
        self.sqrt_w = (sample_weights.view(-1, 1, 1) * pixel_weights).sqrt()
        self.project = project
        self.reg = tuple(reg) if project else (reg[-1],)

    def scores(self, *params) -> torch.Tensor:
        h = self.x
        if self.project:
            w1, w2 = params
            h = F.conv2d(h, w1[:, :, None, None])
        else:
            (w2,) = params
        s = F.conv2d(h, w2.reshape(1, -1, 3, 3), padding=1)
        return s[:, 0]

    def residuals(self, params) -> torch.Tensor:
        s = F.interpolate(self.scores(*params)[:, None], size=self.y.shape[-2:], mode="bilinear",
                          align_corners=False)[:, 0]
        data = self.sqrt_w * (s - self.y)
        return torch.cat([data.reshape(-1)] + [lam * p.reshape(-1) for lam, p in zip(self.reg, params)])

    def loss(self, params) -> torch.Tensor:
        return self.residuals(params).square().sum()

    def linearize(self, params):
        params = tuple(p.detach().requires_grad_(True) for p in params)
        with torch.enable_grad():
            f0 = self.residuals(params)
            u = f0.detach().clone().requires_grad_(True)
            jt_u = torch.autograd.grad(f0, params, u, create_graph=True)  # = J^T f0, and a function of u
        b = tuple(-g.detach() for g in jt_u)

        def apply_a(p):
            with torch.enable_grad():
                jp = torch.autograd.grad(jt_u, u, p, retain_graph=True)[0]
                return tuple(torch.autograd.grad(f0, params, jp, retain_graph=True))

        return b, apply_a
