"""Gauss-Newton with preconditioned conjugate gradient, as the authors' released optimizer runs it.

A *problem* is anything with ``linearize(params) -> (b, apply_A)``: ``b = -J^T r`` at ``params`` and
``apply_A(p) = J^T J p`` (regularisation included), both as tuples of tensors shaped like ``params``. Two kinds
exist: the fast feature-resolution problems in :mod:`frtm_plugin.core.problems` and the autograd full-resolution
reference in :mod:`frtm_plugin.core.reference`; this module runs either, so they are compared like for like.

The released code's CG (pytracking's ``ConjugateGradientBase`` trimmed by the authors):
- preconditioned with a constant per parameter block, ``z = r / precond``;
- Polak-Ribiere ``beta = max(0, (rho - <r_prev, z>) / rho_prev)``, standard ``alpha = rho / <p, A p>``;
- starts from a zero step, runs a fixed number of iterations (no tolerance), skips the last residual update;
- its search direction survives between runs but ``rho`` is divided by ``0.9 ** 750 = 4.8e-35`` at the start of
  each run, so ``beta`` is ~1e-35 on a run's first iteration: the direction is reset, to float rounding. We reset
  it outright.
- The GN update is ``params += delta`` (its step length is capped at 1 and starts at 1).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

Tensors = tuple[torch.Tensor, ...]


class LeastSquaresProblem(Protocol):
    def linearize(self, params: Tensors) -> tuple[Tensors, Callable[[Tensors], Tensors]]: ...


def _dot(a: Tensors, b: Tensors) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def conjugate_gradient(
    apply_a: Callable[[Tensors], Tensors], b: Tensors, preconditioner: Sequence[float], num_iters: int
) -> Tensors:
    """Approximately solve ``A x = b`` from x = 0 with ``num_iters`` preconditioned Polak-Ribiere CG iterations."""
    x = tuple(torch.zeros_like(t) for t in b)
    r = b
    p = rho = r_prev = None
    for it in range(num_iters):
        z = tuple(ri / m for ri, m in zip(r, preconditioner))
        rho_prev, rho = rho, _dot(r, z)
        if rho == 0:  # exact solution reached (e.g. a zero gradient): further steps would divide by zero
            break
        if p is None:
            p = z
        else:
            beta = ((rho - _dot(r_prev, z)) / rho_prev).clamp(min=0)
            p = tuple(zi + beta * pi for zi, pi in zip(z, p))
        q = apply_a(p)
        alpha = rho / _dot(p, q)
        x = tuple(xi + alpha * pi for xi, pi in zip(x, p))
        if it < num_iters - 1:
            r_prev = r
            r = tuple(ri - alpha * qi for ri, qi in zip(r, q))
    return x


def gauss_newton(
    problem: LeastSquaresProblem, params: Tensors, cg_iters: Sequence[int], preconditioner: Sequence[float],
    fused: bool = True,
) -> Tensors:
    """One Gauss-Newton step per entry of ``cg_iters``, each solved with that many CG iterations.

    A problem may offer ``fused_solve(params, cg_iters, preconditioner)``: the same steps in one compiled call
    (returning None where it cannot run). ``fused=False`` forces the Python loop below.
    """
    params = tuple(p.detach() for p in params)
    solve = getattr(problem, "fused_solve", None) if fused else None
    if solve is not None:
        out = solve(params, tuple(cg_iters), tuple(preconditioner))
        if out is not None:
            return out
    for n in cg_iters:
        b, apply_a = problem.linearize(params)
        delta = conjugate_gradient(apply_a, b, preconditioner, n)
        params = tuple((p + d).detach() for p, d in zip(params, delta))
    return params
