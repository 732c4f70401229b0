"""Numerical primitives of the target model's solver, on the feature grid: the bridge to the compiled extension.

Every function here exists twice with the same maths: the pure-PyTorch definition (:mod:`.lowres`, the spec) and
the compiled op ``torch.ops.frtm.<name>`` (``csrc/``, loaded by :mod:`.ext`). Per call, by the device of the
first tensor:

- CPU tensors use the extension's CPU module (``frtm_plugin._C``), CUDA tensors its CUDA module
  (``frtm_plugin._C_cuda``), when that module was built and imports;
- otherwise, and always when ``FRTM_PURE_OPS=1``, the pure-PyTorch path runs;
- the pure path also runs for dtypes other than float32/float64 and when an input requires grad (the compiled ops
  have no autograd formula; the pure ones differentiate).

The choice is logged once per device type (logger ``frtm_plugin.ops``); :func:`backend` reports it.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from . import ext, lowres
from .lowres import interp_matrix, upsample

__all__ = [
    "backend",
    "interp_matrix",
    "upsample",
    "stencil_precompute",
    "stencil_apply",
    "conv3x3_flat",
    "corr3x3_flat",
    "normal_corr",
    "init_products",
    "fused_solver_available",
    "init_solve",
    "update_solve",
]

log = logging.getLogger(__name__)
PURE_ENV = "FRTM_PURE_OPS"
_EXT_DTYPES = (torch.float32, torch.float64)
_logged: set[tuple[str, str]] = set()


def _pure_forced() -> bool:
    return os.environ.get(PURE_ENV, "").strip() not in ("", "0")


def backend(device: torch.device | str | None = "cpu") -> str:
    """Which implementation runs for tensors on ``device``: ``"extension-cpu"``, ``"extension-cuda"`` or ``"pure"``."""
    kind = torch.device(device if device is not None else "cpu").type
    if _pure_forced():
        name, why = "pure", f"{PURE_ENV}=1 is set"
    elif kind == "cpu" and ext.CPU_AVAILABLE:
        name, why = "extension-cpu", "compiled module frtm_plugin._C"
    elif kind == "cuda" and ext.CUDA_AVAILABLE:
        name, why = "extension-cuda", "compiled module frtm_plugin._C_cuda"
    else:
        err = ext.CPU_ERROR if kind == "cpu" else ext.CUDA_ERROR if kind == "cuda" else "no kernels for this device"
        name, why = "pure", f"compiled extension unavailable ({err})"
    if (kind, name) not in _logged:
        _logged.add((kind, name))
        log.info("frtm ops on %s tensors: %s (%s)", kind, "pure PyTorch" if name == "pure" else name, why)
    return name


def _use_ext(*tensors: torch.Tensor | None) -> bool:
    t0 = tensors[0]
    if backend(t0.device) == "pure" or t0.dtype not in _EXT_DTYPES:
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


# -- kernels --------------------------------------------------------------------------------------------------------

def stencil_precompute(labels: torch.Tensor, pixel_weights: torch.Tensor,
                       feat_hw: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, H, W) labels and pixel weights -> stencil G (K, 9, Hf, Wf) and map bh (K, Hf, Wf); see lowres."""
    if _use_ext(labels, pixel_weights):
        hf, wf = (int(n) for n in feat_hw)
        return torch.ops.frtm.stencil_precompute(labels, pixel_weights, hf, wf)
    return lowres.stencil_precompute(labels, pixel_weights, tuple(feat_hw))


def stencil_apply(g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(K, 9, Hf, Wf) stencil applied to (K, Hf, Wf) maps."""
    if _use_ext(g, s):
        return torch.ops.frtm.stencil_apply(g, s)
    return lowres.stencil_apply(g, s)


def conv3x3_flat(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """x (C, K, Hf, Wf), kernel (C, 9) -> (K, Hf, Wf): single-output 3x3 convolution, padding 1."""
    if _use_ext(x, kernel):
        return torch.ops.frtm.conv3x3_flat(x, kernel)
    return lowres.conv3x3_flat(x, kernel)


def corr3x3_flat(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x (C, K, Hf, Wf), t (K, Hf, Wf) -> (C, 9): the adjoint of conv3x3_flat in the kernel."""
    if _use_ext(x, t):
        return torch.ops.frtm.corr3x3_flat(x, t)
    return lowres.corr3x3_flat(x, t)


def normal_corr(x: torch.Tensor, kernel: torch.Tensor, g: torch.Tensor, sample_weights: torch.Tensor,
                target: torch.Tensor | None = None) -> torch.Tensor:
    """``corr3x3(x, w_k (G_k * conv3x3(x, kernel) - target_k))`` -> (C, 9); ``target=None`` means zero.

    The Gauss-Newton building block of both problems (J^T of the weighted residual, or J^T J applied to a folded
    kernel). The extension does it in one pass over x; the pure path is the three primitives in a row.
    """
    if _use_ext(x, kernel, g, sample_weights, target):
        return torch.ops.frtm.normal_corr(x, kernel, g, sample_weights, target)
    q = lowres.stencil_apply(g, lowres.conv3x3_flat(x, kernel))
    if target is not None:
        q = q - target
    return lowres.corr3x3_flat(x, sample_weights.reshape(-1, 1, 1) * q)


def init_products(x, g, sample_weights, w1, w2, p1, p2, reg1: float, reg2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The init problem's Gauss-Newton product (J^T J + reg)(P1, P2) at (W1, W2), with W1 folded into the kernel:
    J (P1, P2) = conv3x3(x, P1^T W2 + W1^T P2), J^T t = (W2 Corr^T, W1 Corr) with Corr = corr3x3(x, t)."""
    if _use_ext(x, g, sample_weights, w1, w2, p1, p2):
        return torch.ops.frtm.init_products(x, g, sample_weights, w1, w2, p1, p2, float(reg1), float(reg2))
    corr = normal_corr(x, p1.t() @ w2 + w1.t() @ p2, g, sample_weights)
    return w2 @ corr.t() + reg1 * p1, w1 @ corr + reg2 * p2


# -- fused solvers (extension only: the pure path is core.solver's Python loop over the products above) -----------

def fused_solver_available(x: torch.Tensor) -> bool:
    """Whether :func:`init_solve` / :func:`update_solve` can run for features ``x``."""
    return _use_ext(x)


def init_solve(x, g, target, sample_weights, w1, w2, reg1: float, reg2: float, precond: Sequence[float],
               cg_iters: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """All Gauss-Newton steps of the init problem (CG iterations per step in ``cg_iters``) in one extension call."""
    return torch.ops.frtm.init_solve(x, g, target, sample_weights, w1, w2, float(reg1), float(reg2),
                                     float(precond[0]), float(precond[1]), [int(n) for n in cg_iters])


def update_solve(x, g, target, sample_weights, w2, reg2: float, precond2: float,
                 cg_iters: Sequence[int]) -> torch.Tensor:
    """All Gauss-Newton steps of the update problem over W2 in one extension call."""
    return torch.ops.frtm.update_solve(x, g, target, sample_weights, w2, float(reg2), float(precond2),
                                       [int(n) for n in cg_iters])
