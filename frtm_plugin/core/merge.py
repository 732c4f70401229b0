"""Multi-object merging of per-object foreground probabilities, as the released tracker does it."""

from __future__ import annotations

import torch

EPS = 1e-7


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(dim=0)`` for a few rows of large maps (first maximum wins, as argmax), without the strided
    reduction torch runs on the CPU for dim 0, which is ~20x slower at 480p."""
    best, index = x[0], torch.zeros(x.shape[1:], dtype=torch.long, device=x.device)
    for row in range(1, x.shape[0]):
        better = x[row] > best
        index[better] = row
        best = torch.maximum(best, x[row])
    return index


def soft_aggregate(probs: torch.Tensor) -> torch.Tensor:
    """(N, H, W) object probabilities -> (N + 1, H, W), row 0 the background.

    Background is ``min_k (1 - p_k)``; every row is turned into odds ``p / (1 - p)`` (the released code's choice,
    not log-odds), soft-maxed over rows, and each pixel keeps only its winner's value (others are 0).
    """
    p = probs.clamp(EPS, 1 - EPS)
    p = torch.cat([(1 - p).min(dim=0, keepdim=True).values, p], dim=0)
    segs = torch.softmax(p / (1 - p), dim=0)
    winner = argmax_rows(segs)[None]
    return segs * (torch.arange(segs.shape[0], device=segs.device).view(-1, 1, 1) == winner)


def merge_labels(probs: torch.Tensor, mode: str = "released") -> torch.Tensor:
    """(N, H, W) probabilities -> (H, W) index map, 0 = background, k = the k-th object (1-based).

    ``released``: the released ``run_sequence`` aggregates a second time on the already merged maps, so a pixel is
    labelled k only if k won the first softmax *and* kept more than 0.5 there. ``single``: one aggregation, label =
    winner (the ``ytvos_validation`` variant). With one object both reduce to ``p > 0.5``.
    """
    if mode not in ("released", "single"):
        raise ValueError(f"merge mode must be 'released' or 'single', not {mode!r}")
    if probs.shape[0] == 0:
        return torch.zeros(probs.shape[-2:], dtype=torch.long, device=probs.device)
    merged = soft_aggregate(probs)
    if mode == "released":
        merged = soft_aggregate(merged[1:])
    return argmax_rows(merged)
