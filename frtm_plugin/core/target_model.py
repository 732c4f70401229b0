"""The target model D, its sample memory and its online learning, as the authors' released code runs them.

One ``TargetModel`` per object. It is fitted on the first frame (plus augmented copies) over (W1, W2), then keeps
W1 fixed, stores W1-projected features in a bounded memory and refits W2 every ``update_every`` frames. The memory
holds, per sample, the projected features and the label reduced to the feature grid (stencil G and map bh): its
size is fixed at construction, so a long video never grows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .problems import InitProblem, UpdateProblem
from .solver import gauss_newton


RELEASED_LEARNING_RATE = 0.1
# Measured (docs/tracker_settings.md): D-only on all 30 DAVIS-2016 train videos 71.3 -> 74.2 J&F, D+S on the 5 held-out
# 76.6 -> 77.5; lower rates gain little more and would adapt more slowly on long videos.
OFFLINE_LEARNING_RATE = 0.025


@dataclass(frozen=True)
class SolverConfig:
    """The released inference settings (``evaluate.py``); training uses channels=32, filter_reg=(1e-5, 1e-4)."""

    channels: int = 96
    init_cg_iters: tuple[int, ...] = (5, 10, 10, 10, 10)
    update_cg_iters: tuple[int, ...] = (10,)
    update_every: int = 8
    filter_reg: tuple[float, float] = (1e-4, 1e-2)  # enters the residual linearly: effective L2 weights 1e-8, 1e-4
    precond: tuple[float, float] = (1e-4, 1e-2)
    memory_size: int = 80
    # The memory's update rate (a new sample weighs 1/(1 - rate) times the previous one). None: the model's own
    # (``models.build_tracker`` reads it from the checkpoint; this project's models use OFFLINE_LEARNING_RATE),
    # else the released RELEASED_LEARNING_RATE, which the authors' checkpoints keep.
    learning_rate: float | None = None
    hinge_kappa: float | None = 0.1  # None: all pixel weights 1 (the training recipe)
    min_update_pixels: int = 10
    # Re-anchoring on a later keyframe (not in the released code, which reads one mask per object): the keyframe's
    # samples take this share of the memory's weight, are never replaced, and W2 is refitted with these CG steps.
    reanchor_share: float = 0.8  # measured: 0.8 >= 0.5 on each of 5 held-out videos (docs/keyframes.md)
    reanchor_cg_iters: tuple[int, ...] = (10, 10)
    absent_share: float = 0.8  # the same for a keyframe that says the object is not visible (an empty mask)
    max_protected_share: float = 0.5  # of the memory's slots; the oldest keyframes' samples are released first


def enough_pixels(soft_labels: torch.Tensor, min_pixels: int) -> list[bool]:
    """For each of N soft masks (N, H, W): whether at least ``min_pixels`` pixels are above 0.5 (D's update rule)."""
    return ((soft_labels > 0.5).flatten(1).sum(1) >= min_pixels).tolist()


def hinge_pixel_weights(masks: torch.Tensor, kappa: float | None = 0.1, min_pixels: int = 10) -> torch.Tensor:
    """The released "hinge" pixel weighting, per sample of (K, H, W) binary masks.

    Small objects are up-weighted so the foreground carries a fraction kappa of the total weight; objects of
    fewer than ``min_pixels`` pixels, or covering more than kappa of the frame, get uniform weights.
    """
    fg = masks > 0.5
    dtype = torch.float32 if not masks.is_floating_point() else masks.dtype
    if kappa is None:
        return torch.ones(fg.shape, dtype=dtype, device=masks.device)
    # on the device, no host round trip; the weights in float64 then cast, as Python floats would give them
    n_fg = fg.flatten(1).sum(1).to(torch.float64)
    frac = n_fg / fg[0].numel()
    weighted = ((n_fg >= min_pixels) & (frac <= kappa)).view(-1, *([1] * (fg.dim() - 1)))
    # (tensor / tensor: a Python number over a tensor is computed as a reciprocal times the number, 1 ulp away)
    fg_weight = (torch.full_like(frac, kappa) / frac).to(dtype).view_as(weighted)
    bg_weight = (torch.full_like(frac, 1.0 - kappa) / (1.0 - frac)).to(dtype).view_as(weighted)
    ones = torch.ones((), dtype=dtype, device=masks.device)
    return torch.where(weighted, torch.where(fg, fg_weight, bg_weight), ones)


class SampleMemory:
    """K_max slots of (projected features, stencil, bh) with geometrically decaying sample weights.

    The weight rule is pytracking's ``update_sample_weights`` as the released code uses it: the lowest-weight slot
    is replaced (empty slots weigh 0, so they fill first, in order); the new sample weighs 1/(1 - eta) times the
    previous newest one (eta on the first insert, after the others are scaled by 1/(1 - eta)); then weights are
    normalised. No sample of the first frame is protected: it eventually ages out too, as in the released code.

    Keyframes added later (:meth:`insert_keyframe`) are protected: their slots are never replaced, until protected
    slots would exceed ``max_protected`` and the oldest keyframe's slots are released.
    """

    def __init__(self, capacity: int, channels: int, feat_hw: tuple[int, int], learning_rate: float, *,
                 dtype=torch.float32, device=None):
        hf, wf = feat_hw
        self.capacity = capacity
        self.learning_rate = learning_rate
        self.features = torch.zeros(channels, capacity, hf, wf, dtype=dtype, device=device)
        self.stencil = torch.zeros(capacity, 9, hf, wf, dtype=dtype, device=device)
        self.target = torch.zeros(capacity, hf, wf, dtype=dtype, device=device)
        self.weights = torch.zeros(capacity, dtype=dtype, device=device)
        self.protected = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.count = 0
        self._newest: int | None = None
        self._keyframe_slots: list[list[int]] = []  # protected slots per keyframe, oldest first

    def initialize(self, features, stencil, target, weights) -> None:
        k = features.shape[1]
        if k > self.capacity:
            raise ValueError(f"{k} initial samples exceed the memory capacity {self.capacity}")
        self.features[:, :k] = features
        self.stencil[:k] = stencil
        self.target[:k] = target
        self.weights.zero_()
        self.weights[:k] = weights
        self.count = k
        self._newest = None

    def insert(self, feature, stencil, target) -> torch.Tensor:
        """Add one sample (c, Hf, Wf) with its (9, Hf, Wf) stencil and (Hf, Wf) map; returns the slot used (a 0-d
        tensor on the memory's device)."""
        w, eta = self.weights, self.learning_rate
        # the first of _free_slots' order, chosen on the device (argmin takes the first of equals): no host round trip
        slot = torch.argmin(self._replaceable_weights())
        if self._newest is None:
            w /= 1.0 - eta
            w[slot] = eta
        else:
            w[slot] = w[self._newest] / (1.0 - eta)
        w /= w.sum()
        self.features[:, slot] = feature
        self.stencil[slot] = stencil
        self.target[slot] = target
        self._newest = slot
        self.count = min(self.count + 1, self.capacity)
        return slot

    def _replaceable_weights(self) -> torch.Tensor:
        """The slots' weights with protected slots at infinity: the lowest is replaced first."""
        return self.weights.masked_fill(self.protected, float("inf"))

    def _free_slots(self, k: int) -> list[int]:
        """The k unprotected slots of lowest weight (empty slots weigh 0, so they come first, in order)."""
        return [int(i) for i in torch.sort(self._replaceable_weights(), stable=True).indices[:k]]

    def insert_keyframe(self, features, stencil, target, share: float, max_protected: int) -> list[int]:
        """Add a keyframe's samples ((c, K, Hf, Wf) projected features, their stencils and maps; sample 0 the frame,
        the others augmented copies) as protected samples holding ``share`` of the total weight (the original
        counted double, as on the first frame); the other samples keep the rest in their proportions. The next
        tracked frame then enters as the first one after initialisation does (weight eta)."""
        k = features.shape[1]
        while self._keyframe_slots and int(self.protected.sum()) + k > max_protected:
            self.protected[self._keyframe_slots.pop(0)] = False  # the oldest correction may age out now
        if int(self.protected.sum()) + k > self.capacity:
            raise ValueError(f"{k} keyframe samples do not fit in a memory of {self.capacity}")
        slots = self._free_slots(k)
        idx = torch.tensor(slots, device=self.weights.device)
        self.weights[idx] = 0.0
        rest = self.weights.sum()
        if rest > 0:
            self.weights *= (1.0 - share) / rest
        self.weights[idx] = initial_sample_weights(k, self.weights.dtype, self.weights.device) * (share if rest > 0
                                                                                                 else 1.0)
        self.features[:, idx] = features
        self.stencil[idx] = stencil
        self.target[idx] = target
        self.protected[idx] = True
        self._keyframe_slots.append(slots)
        self._newest = None
        self.count = max(self.count, max(slots) + 1)
        return slots

    def active(self):
        """Views of the filled slots (always the first ``count``: slots fill in order and never empty)."""
        n = self.count
        return self.features[:, :n], self.stencil[:n], self.target[:n], self.weights[:n]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.features, self.stencil, self.target, self.weights))


def initial_sample_weights(k: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The original frame counts double: (2, 1, 1, ...) / (k + 1)."""
    w = torch.ones(k, dtype=dtype, device=device)
    w[0] = 2.0
    return w / w.sum()


class TargetModel:
    """D for one object: ``initialize`` on the first frame, then per frame ``predict`` and ``update``."""

    def __init__(self, in_channels: int, config: SolverConfig = SolverConfig(), *, generator=None,
                 dtype=torch.float32, device=None):
        self.config = config
        c = config.channels
        # PyTorch's default Conv2d init (kaiming_uniform, a = sqrt(5)): U(+-1/sqrt(fan_in)).
        b1, b2 = 1.0 / in_channels ** 0.5, 1.0 / (9 * c) ** 0.5
        self.w1 = ((torch.rand(c, in_channels, generator=generator, dtype=torch.float64) * 2 - 1) * b1).to(dtype)
        self.w2 = ((torch.rand(c, 9, generator=generator, dtype=torch.float64) * 2 - 1) * b2).to(dtype)
        self.w1, self.w2 = self.w1.to(device), self.w2.to(device)
        self.memory: SampleMemory | None = None
        self.frame_num = 0

    # -- first frame ---------------------------------------------------------------------------------------
    def initialize(self, features: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None):
        """Fit (W1, W2) on K samples: features (K, C, Hf, Wf) and binary labels (K, H, W); sample 0 is the original."""
        cfg = self.config
        k = features.shape[0]
        features = features.to(self.w1.dtype)
        labels = labels.to(self.w1.dtype)
        if sample_weights is None:
            sample_weights = initial_sample_weights(k, self.w1.dtype, self.w1.device)
        pixel_weights = hinge_pixel_weights(labels, cfg.hinge_kappa, cfg.min_update_pixels)
        stencil, target = ops.stencil_precompute(labels, pixel_weights, features.shape[-2:])
        x = features.permute(1, 0, 2, 3).contiguous()  # (C, K, Hf, Wf)
        problem = InitProblem(x, stencil, target, sample_weights, cfg.filter_reg)
        self.w1, self.w2 = gauss_newton(problem, (self.w1, self.w2), cfg.init_cg_iters, cfg.precond)

        # W1 is final from here on: keep only projected features.
        rate = RELEASED_LEARNING_RATE if cfg.learning_rate is None else cfg.learning_rate
        self.memory = SampleMemory(cfg.memory_size, cfg.channels, features.shape[-2:], rate,
                                   dtype=self.w1.dtype, device=self.w1.device)
        self.memory.initialize(self._project_all(x), stencil, target, sample_weights)
        self.frame_num = 0
        self._refit_filter()

    # -- per frame -----------------------------------------------------------------------------------------
    def _project_all(self, x: torch.Tensor) -> torch.Tensor:
        c_in = x.shape[0]
        return (self.w1 @ x.reshape(c_in, -1)).reshape(self.w1.shape[0], *x.shape[1:])

    def project(self, feature: torch.Tensor) -> torch.Tensor:
        """W1 * x for one frame's features (C, Hf, Wf) -> (c, Hf, Wf)."""
        return self._project_all(feature.to(self.w1.dtype)[:, None])[:, 0]

    def scores(self, projected: torch.Tensor) -> torch.Tensor:
        """W2 * h -> coarse target scores (Hf, Wf)."""
        return ops.conv3x3_flat(projected[:, None], self.w2)[0]

    def predict(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores for a new frame; also returns the projected features that :meth:`update` stores."""
        self.frame_num += 1
        h = self.project(feature)
        return h, self.scores(h)

    def update(self, projected: torch.Tensor, soft_label: torch.Tensor, visible: bool | None = None) -> bool:
        """Insert the frame's (projected features, soft mask) and refit W2 on every ``update_every``-th frame.

        A mask with fewer than ``min_update_pixels`` pixels above 0.5 means the target is lost or tiny: nothing is
        stored and nothing is refitted. ``visible``: that test's result when the caller has it (the tracker counts
        the pixels of all the frame's objects at once: one host round trip per frame, not one per object).
        Returns whether the sample was stored.
        """
        cfg = self.config
        soft_label = soft_label.to(self.w1.dtype)
        if visible is None:
            visible = enough_pixels(soft_label[None], cfg.min_update_pixels)[0]
        if not visible:
            return False
        pixel_weights = hinge_pixel_weights(soft_label[None], cfg.hinge_kappa, cfg.min_update_pixels)
        stencil, target = ops.stencil_precompute(soft_label[None], pixel_weights, projected.shape[-2:])
        self.memory.insert(projected, stencil[0], target[0])
        if self.frame_num % cfg.update_every == 0:
            self._refit_filter()
        return True

    def reanchor(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Learn a keyframe of an object already tracked (a user's correction): features (K, C, Hf, Wf) of the frame
        (sample 0) and its augmented copies, binary labels (K, H, W). W1 stays (the memory holds W1-projected
        features); the samples enter the memory protected, then W2 is refitted on the whole memory."""
        cfg = self.config
        labels = labels.to(self.w1.dtype)
        pixel_weights = hinge_pixel_weights(labels, cfg.hinge_kappa, cfg.min_update_pixels)
        stencil, target = ops.stencil_precompute(labels, pixel_weights, features.shape[-2:])
        x = features.to(self.w1.dtype).permute(1, 0, 2, 3).contiguous()
        max_protected = max(features.shape[0], int(cfg.max_protected_share * cfg.memory_size))
        share = cfg.reanchor_share if bool((labels > 0.5).any()) else cfg.absent_share
        self.memory.insert_keyframe(self._project_all(x), stencil, target, share, max_protected)
        self._refit_filter(cfg.reanchor_cg_iters)

    def _refit_filter(self, cg_iters: tuple[int, ...] | None = None) -> None:
        features, stencil, target, weights = self.memory.active()
        problem = UpdateProblem(features, stencil, target, weights, self.config.filter_reg[1])
        (self.w2,) = gauss_newton(problem, (self.w2,), cg_iters or self.config.update_cg_iters,
                                  self.config.precond[1:])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The released layout: ``project.weight`` (c, C, 1, 1) and ``filter.weight`` (1, c, 3, 3)."""
        c = self.w1.shape[0]
        return {"project.weight": self.w1[:, :, None, None].clone(), "filter.weight": self.w2.reshape(1, c, 3, 3).clone()}
