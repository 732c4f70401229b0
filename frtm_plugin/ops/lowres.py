"""The target model's least-squares problem, evaluated entirely on the feature grid (DESIGN.md 3.1).

Pure PyTorch. These functions define the maths that the compiled extension must reproduce; they know nothing of
videos, trackers or networks.

Conventions
-----------
- Feature maps are stored channel-first over the whole memory: ``X`` has shape (C, K, Hf, Wf), so that
  ``X.reshape(C, K * Hf * Wf)`` is one matrix and every product below is a single GEMM over it.
- A 3x3 kernel with one output channel is flattened to (C, 9); tap ``t = 3 * dy + dx`` reads the input at offset
  (dy - 1, dx - 1), exactly as ``F.conv2d(x, w.view(1, C, 3, 3), padding=1)`` (a cross-correlation).
- The bilinear upsampling U from (Hf, Wf) to (H, W) is PyTorch's ``align_corners=False`` one; it is separable,
  ``U s = Uy @ s @ Ux.T``, with the matrices from :func:`interp_matrix`.
- ``U^T diag(v) U`` is a 9-point stencil ``G`` of shape (K, 9, Hf, Wf): ``(G * s)[a, b] = sum_t G[t, a, b] *
  s[a + da, b + db]`` with ``t = 3 * (da + 1) + (db + 1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "interp_matrix",
    "upsample",
    "stencil_precompute",
    "stencil_apply",
    "conv3x3_flat",
    "corr3x3_flat",
]


def interp_matrix(out_size: int, in_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(out_size, in_size) matrix of 1-D linear interpolation, PyTorch's align_corners=False convention."""
    scale = in_size / out_size
    dst = torch.arange(out_size, dtype=torch.float64, device=device)
    src = ((dst + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0.to(torch.float64)
    m = torch.zeros(out_size, in_size, dtype=torch.float64, device=device)
    rows = torch.arange(out_size, device=device)
    m.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m.to(dtype)


def upsample(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (..., Hf, Wf) maps to (..., H, W), as ``F.interpolate`` does it."""
    lead = scores.shape[:-2]
    out = F.interpolate(scores.reshape(-1, 1, *scores.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def _band_products(u: torch.Tensor) -> torch.Tensor:
    """For U (n_out, n_in): B[d + 1, a, p] = U[p, a] * U[p, a + d], d in -1..1 (zero where a + d is off the grid)."""
    ut = u.t()  # (n_in, n_out)
    band = torch.zeros(3, *ut.shape, dtype=u.dtype, device=u.device)
    band[1] = ut * ut
    band[0, 1:] = ut[1:] * ut[:-1]  # d = -1: partner a - 1
    band[2, :-1] = ut[:-1] * ut[1:]  # d = +1: partner a + 1
    return band


def stencil_precompute(
    labels: torch.Tensor, pixel_weights: torch.Tensor, feat_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce K label-resolution samples to the feature grid.

    labels, pixel_weights: (K, H, W). Returns ``G`` (K, 9, Hf, Wf) with
    ``G[k, t, a, b] = sum_p v_k(p) u_ab(p) u_{a+da, b+db}(p)`` and ``bh`` (K, Hf, Wf) with
    ``bh[k, a, b] = sum_p v_k(p) y_k(p) u_ab(p)``, so that for any score map s:
    ``U^T (v * (U s - y)) = stencil_apply(G, s) - bh``.
    """
    if labels.shape != pixel_weights.shape or labels.dim() != 3:
        raise ValueError(f"labels and pixel_weights must both be (K, H, W); got {tuple(labels.shape)} and "
                         f"{tuple(pixel_weights.shape)}")
    k, h, w = labels.shape
    hf, wf = feat_hw
    dtype, dev = labels.dtype, labels.device
    uy, ux = interp_matrix(h, hf, dtype, dev), interp_matrix(w, wf, dtype, dev)
    by, bx = _band_products(uy), _band_products(ux)  # (3, Hf, H), (3, Wf, W)
    v = pixel_weights
    # Contract rows first (H -> Hf, three bands), then columns (W -> Wf, three bands): 9 maps per sample.
    rows = torch.einsum("dah,khw->kdaw", by, v)  # (K, 3, Hf, W)
    g = torch.einsum("kdaw,ebw->kdeab", rows, bx)  # (K, 3, 3, Hf, Wf)
    bh = uy.t() @ (v * labels) @ ux  # (K, Hf, Wf)
    return g.reshape(k, 9, hf, wf).contiguous(), bh.contiguous()


def _shifted(s: torch.Tensor) -> list[torch.Tensor]:
    """The nine views s[a + da, b + db] (zero outside), for t = 3 * (da + 1) + (db + 1)."""
    hf, wf = s.shape[-2:]
    sp = F.pad(s, (1, 1, 1, 1))
    return [sp[..., dy : dy + hf, dx : dx + wf] for dy in range(3) for dx in range(3)]


def stencil_apply(g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(K, 9, Hf, Wf) stencil applied to (K, Hf, Wf) maps: the feature-grid form of U^T diag(v) U s."""
    out = torch.zeros_like(s)
    for t, view in enumerate(_shifted(s)):
        out += g[:, t] * view
    return out


def conv3x3_flat(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Single-output 3x3 convolution (padding 1) of every sample: x (C, K, Hf, Wf), kernel (C, 9) -> (K, Hf, Wf)."""
    c, k, hf, wf = x.shape
    taps = (kernel.t() @ x.reshape(c, k * hf * wf)).reshape(9, k, hf, wf)  # one GEMM over all samples
    # Output (a, b) takes tap t's response at (a + dy - 1, b + dx - 1): shift each tap map back into place.
    padded = F.pad(taps, (1, 1, 1, 1))
    out = torch.zeros(k, hf, wf, dtype=x.dtype, device=x.device)
    for t in range(9):
        dy, dx = divmod(t, 3)
        out += padded[t, :, dy : dy + hf, dx : dx + wf]
    return out


def corr3x3_flat(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`conv3x3_flat` in the kernel: x (C, K, Hf, Wf), t (K, Hf, Wf) -> (C, 9).

    ``out[j, tap] = sum_k sum_ab x[j, k, a + dy - 1, b + dx - 1] * t[k, a, b]``: shift the small map t instead
    of the wide features, then one GEMM.
    """
    c, k, hf, wf = x.shape
    padded = F.pad(t, (1, 1, 1, 1))
    # x at (a', b') pairs with t at (a' - dy + 1, b' - dx + 1).
    shifted = torch.stack([padded[:, 2 - dy : 2 - dy + hf, 2 - dx : 2 - dx + wf]
                           for dy in range(3) for dx in range(3)], dim=-1)  # (K, Hf, Wf, 9)
    return x.reshape(c, k * hf * wf) @ shifted.reshape(k * hf * wf, 9)
