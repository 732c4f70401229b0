"""The offline trainer of the segmentation network S (paper section 3.3, released ``train.py`` recipe).

Per sample: one reference frame and two test frames of one video; D (c = 32, lambda = (1e-5, 1e-4), no pixel
weighting, 15 first-frame samples) is fitted on the reference frame and applied, unchanged, to the test frames; S
turns D's scores and the frozen backbone's features into logits; BCE against the object's mask; Adam (lr 1e-3,
betas (0.9, 0.999), weight decay 1e-5, amsgrad) with a x0.1 step decay. Only S learns; the backbone is frozen
(eval mode), S's BatchNorms train.

Departures from the released recipe, all options: a subset of frames (``frame_step``) and of reference frames per
object (``ref_frames``) is cached; test frames may be cropped (``crop``, aligned to the stride-32 grid so every
feature level is cropped exactly; D still sees the whole frame) -- object scale stays that of inference, unlike
training at a lower resolution. With few training videos S learns the look of the training objects and fires on
salient background that D scores low; ``distractor_prob`` pastes, into that share of test frames, a window of
*another* video's frame around its object (features of every level, D's scores on that frame, label 0; ignored
where D scores it above 0.5), so S learns to follow D's scores rather than objectness. ``init_from`` starts S from
any S checkpoint (fine-tuning).

Everything heavy is cached on disk (see :mod:`.cache`), so the first epoch pays for the backbone and D and later
epochs only run S. A checkpoint is written after every epoch and a new run with the same ``out_dir`` resumes from the
latest one; the sampling of epoch e depends only on (seed, e), so an interrupted and resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.backbone import BACKBONE_CHANNELS, SEG_LAYERS, Backbone, build_backbone
from ..core.segnet import CHECKPOINT_PREFIX, SegNetwork, load_segnet_checkpoint, save_segnet_checkpoint
from ..models import OFFLINE_INFERENCE
from .cache import (TRAIN_SOLVER, FeatureCache, TargetModelCache, atomic_save, d_scores, load, resize_frame,
                    resize_label)
from .data import TrainSequence
from .warp import Warp, apply_warp, random_warp

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "Trainer", "latest_checkpoint", "segmentation_loss", "IGNORE"]

IGNORE = -1.0  # label value of pixels left out of the loss

# Settings that change what is learned: a resumed run must match the checkpoint on these.
_RESUME_KEYS = ("backbone", "target_layer", "seg_layers", "size", "crop", "frame_step", "ref_frames", "num_aug",
                "min_ref_pixels", "samples_per_epoch", "batch_size", "test_frames", "lr", "weight_decay",
                "lr_gamma", "seed", "source", "distractor_prob", "distractor_size", "init_from", "ema_decay",
                "seg_width", "warp_prob")
# what a run's meta["train"] records beyond its recipe (for comparing two runs' recipes)
_NOT_RECIPE = ("sequences", "source", "epochs_done", "steps_done", "train_seconds", "keep_checkpoints",
               "init_from_checkpoint")
# The schedule may be edited on resume (--epochs, --lr-step, --object-crop-prob): shortening, extending or
# fine-tuning a run that is under way. The learning rate is then recomputed for the new step:
# lr * gamma ** (epochs_done // lr_step_epochs).


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, test_frames: int) -> torch.Tensor:
    """The released loss: BCE per test frame (mean over the batch's pixels), summed over the test frames; pixels
    labelled ``IGNORE`` contribute nothing."""
    valid = (labels != IGNORE).float()
    return F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), weight=valid) * test_frames


@dataclass
class TrainConfig:
    backbone: str = "mobilenet_v2"
    target_layer: str = "layer4"
    seg_layers: tuple[str, ...] = SEG_LAYERS
    seg_width: int = 64  # S's channels at every level (released: 64)
    size: tuple[int, int] = (480, 854)  # frames and labels are resized to this (H, W), as the released loader does
    crop: tuple[int, int] | None = (288, 480)  # test-frame crop (multiples of 32) or None for whole frames
    object_crop_prob: float = 0.75  # share of crops centred near the object (the rest: uniform over the frame)
    frame_step: int = 1  # cache every k-th annotated frame
    ref_frames: int = 5  # reference frames (with a cached D) per object, spread over its visible frames
    num_aug: int = 15  # first-frame samples for D in training (the original + 14)
    min_ref_pixels: int = 100  # an object is "visible" on a frame with at least this many pixels
    samples_per_epoch: int = 256
    batch_size: int = 4  # samples per optimizer step (each with test_frames test frames)
    test_frames: int = 2
    epochs: int = 12
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lr_step_epochs: int = 8  # StepLR(step_size, gamma): x0.1 after this many epochs
    lr_gamma: float = 0.1
    distractor_prob: float = 0.0  # share of test frames with another video's object pasted in (label 0)
    distractor_size: float = 0.5  # pasted window: this fraction of the test frame's height and width
    # share of test frames warped (train/warp.py: random affine + smooth bend about the object), their features
    # computed on the fly instead of read from the cache
    warp_prob: float = 0.0
    # exponential moving average of S's weights (and BatchNorm statistics) over the optimizer steps, exported and
    # validated instead of the last weights; 0 = off (the released recipe)
    ema_decay: float = 0.0
    init_from: str = ""  # S checkpoint to start from (released format); "" = PyTorch's default init
    seed: int = 0
    source: str = ""  # identity of the data source (a cache folder name)
    keep_checkpoints: int = 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def validate(self) -> None:
        if self.backbone not in BACKBONE_CHANNELS:
            raise ValueError(f"unknown backbone {self.backbone!r}")
        ch = BACKBONE_CHANNELS[self.backbone]
        if self.target_layer not in ch:
            raise ValueError(f"{self.backbone} has no layer {self.target_layer!r} for D (choose from {sorted(ch)})")
        bad = [L for L in self.seg_layers if L not in ch]
        if bad:
            raise ValueError(f"{self.backbone} has no layer(s) {bad} for S")
        if self.crop is not None:
            ch_, cw = self.crop
            if ch_ % 32 or cw % 32 or ch_ <= 0 or cw <= 0:
                raise ValueError(f"crop {self.crop} must be positive multiples of 32 (the deepest stride)")
            if ch_ > self.size[0] or cw > self.size[1]:
                raise ValueError(f"crop {self.crop} is larger than the training size {self.size}")
        for name in ("seg_width", "frame_step", "ref_frames", "samples_per_epoch", "batch_size", "test_frames",
                     "epochs", "num_aug", "lr_step_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("object_crop_prob", "distractor_prob", "warp_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.distractor_size <= 1.0:
            raise ValueError(f"distractor_size must be in (0, 1], got {self.distractor_size}")
        if self.init_from and not Path(self.init_from).is_file():
            raise FileNotFoundError(f"init_from: no S checkpoint at {self.init_from}")
        if self.samples_per_epoch < self.batch_size:
            raise ValueError(f"samples_per_epoch ({self.samples_per_epoch}) < batch_size ({self.batch_size})")


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    ckdir = Path(out_dir) / "checkpoints"
    if not ckdir.is_dir():
        return None
    found = []
    for p in ckdir.glob("epoch_*.pth"):
        m = re.fullmatch(r"epoch_(\d+)\.pth", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


@dataclass
class _Item:
    seq: str
    obj: int
    refs: list[int]
    frames: list[int]  # all cached frames of the sequence
    counts: dict[int, int]  # frame -> object pixel count


class Trainer:
    """``Trainer(sequences, config, out_dir, cache_dir).run()``; rerun with the same ``out_dir`` to resume."""

    def __init__(self, sequences: Sequence[TrainSequence], config: TrainConfig, out_dir: str | os.PathLike,
                 cache_dir: str | os.PathLike, *, backbone: Backbone | None = None, progress: bool = True,
                 on_step: Callable[[int, int], None] | None = None,
                 validate_fn: Callable[[SegNetwork, int], dict] | None = None, val_every: int = 0):
        config.validate()
        if not sequences:
            raise ValueError("no training sequence")
        self.sequences = list(sequences)
        self._sequence = {s.name: s for s in self.sequences}
        self.config = config
        self.out_dir = Path(out_dir)
        self.cache_dir = Path(cache_dir)
        self.progress = progress
        self.on_step = on_step
        self.validate_fn = validate_fn
        self.val_every = val_every
        self._backbone = backbone
        self.items: list[_Item] = []
        self._d_states: dict[tuple[str, int, int], dict] = {}
        self._prepared = False
        self._init_meta: dict | None = None

        torch.manual_seed(config.seed)
        ch = BACKBONE_CHANNELS[config.backbone]
        self.segnet = SegNetwork({L: ch[L] for L in config.seg_layers}, out_channels=config.seg_width)
        if config.init_from:
            self._load_initial_weights(config.init_from)
        self.optimizer = torch.optim.Adam(self.segnet.parameters(), lr=config.lr, betas=(0.9, 0.999),
                                          weight_decay=config.weight_decay, amsgrad=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_step_epochs, config.lr_gamma)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.history: list[dict] = []
        # S's averaged state dict (config.ema_decay > 0), updated after every optimizer step
        self.ema: dict[str, torch.Tensor] | None = None
        if config.ema_decay > 0:
            self.ema = {k: v.detach().clone() for k, v in self.segnet.state_dict().items()}

    def _load_initial_weights(self, path: str) -> None:
        from ..core.segnet import load_segnet_checkpoint
        net, info = load_segnet_checkpoint(path)
        want = {L: int(self.segnet.TSE[L].reduce[0].weight.shape[1]) for L in self.config.seg_layers}
        have = {L: int(c) for L, c in info["ft_channels"].items()}
        if have != want:
            raise ValueError(f"init_from {path}: S reads {have} feature channels, this run's backbone/taps give "
                             f"{want}; start from an S trained for the same backbone")
        self.segnet.load_state_dict(net.state_dict(), strict=True)
        # lineage: a fine-tuned checkpoint says what it started from (the earlier recipe, when it is ours)
        self._init_meta = {"sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                           "train": (info.get("meta") or {}).get("train")}
        log.info("S initialised from %s", path)

    # -- meta ---------------------------------------------------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = build_backbone(self.config.backbone, target_layer=self.config.target_layer)
        return self._backbone

    def meta(self) -> dict:
        c = self.config
        return {"backbone": c.backbone, "target_layer": c.target_layer, "seg_layers": list(c.seg_layers),
                "inference": OFFLINE_INFERENCE,  # the tracker settings S is validated and shipped with
                "train": {**c.to_dict(), "epochs_done": self.epoch, "steps_done": self.step,
                          "train_seconds": round(sum(h["seconds"] for h in self.history), 1),
                          "target_model": {"channels": TRAIN_SOLVER.channels, "filter_reg": list(TRAIN_SOLVER.filter_reg),
                                           "pixel_weighting": None, "init_cg_iters": list(TRAIN_SOLVER.init_cg_iters),
                                           "num_aug": c.num_aug},
                          "optimizer": "Adam(amsgrad=True, betas=(0.9, 0.999))", "loss": "BCE",
                          "sequences": [s.name for s in self.sequences],
                          **({"init_from_checkpoint": self._init_meta} if self._init_meta else {})}}

    # -- weight averaging ---------------------------------------------------------------------------------------
    def _update_ema(self) -> None:
        """ema <- d ema + (1 - d) current, with d warmed up as (1 + step) / (10 + step) so early averages are not
        dominated by the initial weights; integer buffers (BatchNorm's batch counts) are copied."""
        d = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, v in self.segnet.state_dict().items():
                if v.is_floating_point():
                    self.ema[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
                else:
                    self.ema[k].copy_(v)

    def shipped_segnet(self) -> SegNetwork:
        """S as it is exported and validated: the averaged weights when averaging, else the network itself."""
        if self.ema is None:
            return self.segnet
        net = copy.deepcopy(self.segnet)
        net.load_state_dict(self.ema, strict=True)
        return net

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        path = self.out_dir / "checkpoints" / f"epoch_{self.epoch:04d}.pth"
        sd = {CHECKPOINT_PREFIX + k: v.detach().cpu().clone() for k, v in self.segnet.state_dict().items()}
        atomic_save({"model": sd, "meta": self.meta(), "epoch": self.epoch, "step": self.step,
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "history": self.history, "config": self.config.to_dict(),
                     **({"ema": {k: v.clone() for k, v in self.ema.items()}} if self.ema is not None else {})}, path)
        old = sorted(path.parent.glob("epoch_*.pth"))[:-max(1, self.config.keep_checkpoints)]
        for p in old:
            p.unlink(missing_ok=True)
        return path

    def resume(self) -> bool:
        """Load the latest checkpoint of ``out_dir`` if any; returns whether one was loaded."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return False
        ck = load(path)
        # runs from before averaging / the width option have none
        saved, now = {"ema_decay": 0.0, "seg_width": 64, "warp_prob": 0.0, **ck["config"]}, self.config.to_dict()
        diff = {k: (saved.get(k), now[k]) for k in _RESUME_KEYS if saved.get(k) != now[k]}
        if diff:
            raise ValueError(f"{path} was written with different settings {diff} (checkpoint, now); use another "
                             "--out folder or the same settings")
        sd = {k[len(CHECKPOINT_PREFIX):]: v for k, v in ck["model"].items()}
        self.segnet.load_state_dict(sd, strict=True)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.ema is not None:
            self.ema = {k: v.clone() for k, v in ck["ema"].items()}
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.history = list(ck["history"])
        for k in ("epochs", "object_crop_prob"):
            if saved.get(k, now[k]) != now[k]:
                log.warning("%s changed from %s to %s on resume", k, saved.get(k), now[k])
        if saved.get("lr_step_epochs") != self.config.lr_step_epochs:
            c = self.config
            self.scheduler.step_size = c.lr_step_epochs
            lr = c.lr * c.lr_gamma ** (self.epoch // c.lr_step_epochs)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.scheduler._last_lr = [lr for _ in self.optimizer.param_groups]
            log.warning("lr step changed from %s to %s epochs on resume: lr is now %.1e",
                        saved.get("lr_step_epochs"), c.lr_step_epochs, lr)
        log.info("resumed from %s (epoch %d, step %d)", path, self.epoch, self.step)
        return True

    # -- caches -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Scan labels, pick reference frames, and fill the feature and target-model caches where needed."""
        if self._prepared:
            return
        c = self.config
        layers = set(c.seg_layers) | {c.target_layer}
        fcache = FeatureCache(self.cache_dir, self.backbone, c.size, c.source, layers)
        dcache = TargetModelCache(self.cache_dir, self.backbone, c.target_layer, c.size, c.source, c.num_aug,
                                  TRAIN_SOLVER, c.seed)
        self.fcache, self.dcache = fcache, dcache
        items = []
        seqs = self.sequences
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(seqs), desc="cache", unit="seq", dynamic_ncols=True)
        for seq in seqs:
            labels = {}
            for i in range(0, seq.num_frames, c.frame_step):
                lab = seq.read_label(i)
                if lab is not None:
                    labels[i] = resize_label(lab, c.size)
            if len(labels) < 2:
                log.warning("sequence %s: fewer than 2 annotated frames in the subset; skipped", seq.name)
                if bar is not None:
                    bar.update(1)
                continue
            frames = sorted(labels)
            ids = sorted({int(v) for lab in labels.values() for v in np.unique(lab)} - {0, 255})
            todo: dict[int, list[tuple[int, np.ndarray]]] = {}
            for obj in ids:
                counts = {i: int((labels[i] == obj).sum()) for i in frames}
                visible = [i for i in frames if counts[i] >= c.min_ref_pixels]
                if not visible:
                    continue
                pick = np.unique(np.round(np.linspace(0, len(visible) - 1, min(c.ref_frames, len(visible))))
                                 .astype(int))
                refs = [visible[k] for k in pick]
                items.append(_Item(seq.name, obj, refs, frames, counts))
                for r in refs:
                    if not dcache.has(seq.name, r, obj):
                        todo.setdefault(r, []).append((obj, labels[r]))

            def fit_refs(i, image, todo=todo, name=seq.name):
                for obj, lab in todo.get(i, ()):
                    dcache.fit(name, i, obj, image, lab)

            built = fcache.build(seq, labels, on_frame=fit_refs)
            if not built and todo:  # features cached (e.g. by another run) but some D missing
                for i, image in zip(sorted(todo), seq.iter_frames(sorted(todo))):
                    fit_refs(i, resize_frame(image, c.size))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(seq=seq.name)
        if bar is not None:
            bar.close()
        if not items:
            raise ValueError("no (sequence, object) pair with a visible object on at least one cached frame")
        self.items = items
        self._prepared = True

    # -- sampling -----------------------------------------------------------------------------------------------
    def epoch_plan(self, epoch: int) -> list[tuple]:
        """The samples of ``epoch`` (1-based): (item index, reference frame, test frames, crop origins,
        distractors, warps); a function of (seed, epoch) only."""
        c = self.config
        rng = np.random.default_rng([c.seed, epoch])
        plan = []
        for _ in range(c.samples_per_epoch):
            k = int(rng.integers(len(self.items)))
            it = self.items[k]
            ref = it.refs[int(rng.integers(len(it.refs)))]
            others = [f for f in it.frames if f != ref]
            tests = rng.choice(others, size=c.test_frames, replace=len(others) < c.test_frames).tolist()
            crops = [self._crop_origin(it, int(t), rng) for t in tests]
            # drawn only when enabled, so runs without distractors keep their sampling stream
            distractors = [self._distractor(it, rng) if c.distractor_prob > 0 else None for _ in tests]
            warps = [random_warp(rng) if c.warp_prob > 0 and rng.random() < c.warp_prob else None for _ in tests]
            plan.append((k, ref, [int(t) for t in tests], crops, distractors, warps))
        return plan

    def _distractor(self, it: _Item, rng) -> tuple | None:
        """(item of another video, its frame with the object visible, window position as fractions) or None."""
        u = rng.random(3)
        others = [j for j, o in enumerate(self.items) if o.seq != it.seq]
        if not others or u[0] >= self.config.distractor_prob:
            return None
        j = others[int(rng.integers(len(others)))]
        o = self.items[j]
        visible = [f for f in o.frames if o.counts.get(f, 0) >= self.config.min_ref_pixels] or o.frames
        return j, int(visible[int(rng.integers(len(visible)))]), float(u[1]), float(u[2])

    def _crop_origin(self, it: _Item, frame: int, rng) -> tuple[int, int] | None:
        c = self.config
        if c.crop is None:
            return None
        (H, W), (ch, cw) = c.size, c.crop
        ymax, xmax = (H - ch) // 32, (W - cw) // 32
        u = rng.random(2)
        v = rng.random(2)  # always drawn, so the stream does not depend on the cache's contents
        if it.counts.get(frame, 0) > 0 and u[0] < c.object_crop_prob:
            # centred near the object (known through its bounding box, read when the sample is built)
            return ("obj", float(v[0]), float(v[1]))
        return (int(round(u[1] * ymax)) * 32, int(round(v[0] * xmax)) * 32)

    def _resolve_crop(self, crop, label: torch.Tensor, obj: int) -> tuple[int, int]:
        if crop[0] != "obj":
            return crop
        c = self.config
        (H, W), (ch, cw) = c.size, c.crop
        ys, xs = torch.nonzero(label == obj, as_tuple=True)
        cy = (int(ys.min()) + int(ys.max())) / 2 + (crop[1] - 0.5) * ch / 2
        cx = (int(xs.min()) + int(xs.max())) / 2 + (crop[2] - 0.5) * cw / 2
        y0 = int(np.clip(round((cy - ch / 2) / 32), 0, (H - ch) // 32)) * 32
        x0 = int(np.clip(round((cx - cw / 2) / 32), 0, (W - cw) // 32)) * 32
        return y0, x0

    def _d_state(self, seq: str, ref: int, obj: int) -> dict:
        key = (seq, ref, obj)
        if key not in self._d_states:
            self._d_states[key] = self.dcache.read(seq, ref, obj)
        return self._d_states[key]

    def make_batch(self, samples: Sequence[tuple]):
        """Features (dict of (N,C,h,w)), D scores (N,1,h,w) and labels (N,1,H,W; 1 target, 0 background,
        ``IGNORE`` left out of the loss) for the test frames of ``samples``."""
        c = self.config
        feats: dict[str, list] = {L: [] for L in c.seg_layers}
        scores, labels = [], []
        for k, ref, tests, crops, *rest in samples:
            it = self.items[k]
            state = self._d_state(it.seq, ref, it.obj)
            distractors = rest[0] if rest else [None] * len(tests)
            warps = rest[1] if len(rest) > 1 else [None] * len(tests)
            for t, crop, dis, warp in zip(tests, crops, distractors, warps):
                rec = self.fcache.read(it.seq, t) if warp is None else self.warped_record(it.seq, t, it.obj, warp)
                f, s, y = self._window(rec, state, it.obj, crop)
                if dis is not None:
                    self._paste_distractor(f, s, y, state, dis)
                for L in c.seg_layers:
                    feats[L].append(f[L])
                scores.append(s[0])
                labels.append(y[None])
        return ({L: torch.stack(v) for L, v in feats.items()}, torch.stack(scores), torch.stack(labels))

    def warped_record(self, seq: str, frame: int, obj: int, warp: Warp) -> dict:
        """A cache record (maps and label) of ``frame`` warped about ``obj``'s centre, computed now; the cached
        record itself when the object is not on the frame or the warp takes it out of view."""
        rec = self.fcache.read(seq, frame)
        label = rec["label"].numpy()
        ys, xs = np.nonzero(label == obj)
        if not len(ys):
            return rec
        image = resize_frame(next(iter(self._sequence[seq].iter_frames([frame]))), self.config.size)
        image, label = apply_warp(image, label, warp, ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2))
        if not (label == obj).any():
            return rec
        out = self.fcache.features(image)
        out["label"] = torch.from_numpy(np.ascontiguousarray(label))
        return out

    def _window(self, rec: dict, state: dict, obj: int, crop) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Features, D's scores (computed on the whole frame) and the object's mask, cropped to ``crop`` if any."""
        c = self.config
        strides = self.backbone.strides
        s = d_scores(state, rec[c.target_layer].float()[None])
        y = (rec["label"] == obj).float()
        if crop is None:
            return {L: rec[L].float() for L in c.seg_layers}, s, y
        y0, x0 = self._resolve_crop(crop, rec["label"], obj)
        ch, cw = c.crop
        st = strides[c.target_layer]
        s = s[..., y0 // st:(y0 + ch) // st, x0 // st:(x0 + cw) // st]
        y = y[y0:y0 + ch, x0:x0 + cw]
        f = {L: rec[L][:, y0 // strides[L]:(y0 + ch) // strides[L], x0 // strides[L]:(x0 + cw) // strides[L]].float()
             for L in c.seg_layers}
        return f, s, y

    def _paste_distractor(self, feats: dict, scores: torch.Tensor, label: torch.Tensor, state: dict,
                          distractor: tuple) -> None:
        """In place: a window of another video's frame, centred on its object, over the test frame at a random
        stride-32-aligned place: its features at every level, this D's scores on it, label 0 (not the target) or
        ``IGNORE``."""
        c = self.config
        strides = self.backbone.strides
        j, frame, fy, fx = distractor
        other = self.items[j]
        H, W = label.shape
        ph = max(32, int(H * c.distractor_size) // 32 * 32)
        pw = max(32, int(W * c.distractor_size) // 32 * 32)
        rec = self.fcache.read(other.seq, frame)
        full = d_scores(state, rec[c.target_layer].float()[None])
        # source window: centred on the other object's box
        Hs, Ws = rec["label"].shape
        ys, xs = torch.nonzero(rec["label"] == other.obj, as_tuple=True)
        cy, cx = ((int(ys.min()) + int(ys.max())) / 2, (int(xs.min()) + int(xs.max())) / 2) if len(ys) else (Hs / 2, Ws / 2)
        sy = int(np.clip(round((cy - ph / 2) / 32), 0, (Hs - ph) // 32)) * 32
        sx = int(np.clip(round((cx - pw / 2) / 32), 0, (Ws - pw) // 32)) * 32
        # destination: anywhere in the test frame, on the grid
        dy = int(round(fy * ((H - ph) // 32))) * 32
        dx = int(round(fx * ((W - pw) // 32))) * 32
        st = strides[c.target_layer]
        window = full[..., sy // st:(sy + ph) // st, sx // st:(sx + pw) // st]
        scores[..., dy // st:(dy + ph) // st, dx // st:(dx + pw) // st] = window
        # Background, except where D scores the other object high (a look-alike): calling that background would
        # teach S to overrule D from appearance, the opposite of the point; those pixels are left out of the loss.
        high = F.interpolate(window, (ph, pw), mode="bilinear", align_corners=False)[0, 0] > 0.5
        label[dy:dy + ph, dx:dx + pw] = torch.where(high, IGNORE, 0.0)
        for L in c.seg_layers:
            st = strides[L]
            feats[L][:, dy // st:(dy + ph) // st, dx // st:(dx + pw) // st] = \
                rec[L][:, sy // st:(sy + ph) // st, sx // st:(sx + pw) // st].float()

    # -- training -----------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        c = self.config
        plan = self.epoch_plan(epoch)
        steps = len(plan) // c.batch_size
        self.segnet.train()
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{c.epochs}", unit="it", dynamic_ncols=True)
        tot_loss, tot_iou, n_frames = 0.0, 0.0, 0
        for b in range(steps):
            feats, scores, y = self.make_batch(plan[b * c.batch_size:(b + 1) * c.batch_size])
            logits = self.segnet(scores, feats, y.shape[-2:])
            loss = segmentation_loss(logits, y, c.test_frames)
            valid = y != IGNORE
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self._update_ema()
            self.step += 1
            with torch.no_grad():
                p, g = (logits > 0) & valid, y > 0.5
                inter = (p & g).sum(dim=(1, 2, 3)).float()
                union = (p | g).sum(dim=(1, 2, 3)).float()
                iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            tot_loss += float(loss.detach()) / c.test_frames * len(iou)
            tot_iou += float(iou.sum())
            n_frames += len(iou)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{tot_loss / n_frames:.4f}", iou=f"{tot_iou / n_frames:.3f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.0e}")
            if self.on_step is not None:
                self.on_step(epoch, b)
        if bar is not None:
            bar.close()
        return {"loss": tot_loss / max(n_frames, 1), "iou": tot_iou / max(n_frames, 1), "steps": steps}

    def run(self, stop_after: int | None = None) -> list[dict]:
        """Train up to ``config.epochs`` (resuming from ``out_dir`` first). ``stop_after``: at most this many epochs
        in this call (for tests and time-boxed sessions). Returns the history (one dict per epoch)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        done = 0
        while self.epoch < self.config.epochs and (stop_after is None or done < stop_after):
            t0 = time.perf_counter()
            cache_s = 0.0
            if not self._prepared:
                self.prepare()
                cache_s = time.perf_counter() - t0
            epoch = self.epoch + 1
            lr = self.optimizer.param_groups[0]["lr"]
            stats = self.train_epoch(epoch)
            self.scheduler.step()
            self.epoch = epoch
            rec = {"epoch": epoch, "lr": lr, "object_crop_prob": self.config.object_crop_prob, **stats,
                   "cache_seconds": round(cache_s, 2),
                   "seconds": round(time.perf_counter() - t0, 2)}
            if self.validate_fn is not None and self.val_every and epoch % self.val_every == 0:
                rec["val"] = self.validate_fn(self.shipped_segnet(), epoch)
                self.segnet.train()
            self.history.append(rec)
            self.save_checkpoint()
            with open(self.out_dir / "history.json", "w") as f:
                json.dump(self.history, f, indent=1)
            log.info("epoch %d: loss %.4f IoU %.3f (%.0f s)", epoch, stats["loss"], stats["iou"], rec["seconds"])
            done += 1
        return self.history

    def recipe_twin(self, twin_path: str | os.PathLike) -> dict:
        """Check that ``twin_path`` is an S trained with this run's recipe on a subset of its videos and holding
        others out (the model whose held-out score stands for this one when this one was trained on every video);
        returns the twin's meta. Raises ``ValueError`` saying what differs."""
        twin = load_segnet_checkpoint(twin_path)[1]["meta"]
        mine, theirs = self.meta()["train"], dict(twin.get("train") or {})
        if not theirs:
            raise ValueError(f"{twin_path} has no training recipe in its meta: not a checkpoint this trainer wrote")
        defaults = TrainConfig().to_dict()  # settings added after the twin was trained had their defaults then
        differ = sorted(k for k in set(mine) | set(theirs) if k not in _NOT_RECIPE
                        and mine.get(k, defaults.get(k)) != theirs.get(k, defaults.get(k)))
        if differ:
            raise ValueError(f"{twin_path} was trained with another recipe: "
                             + ", ".join(f"{k} {theirs.get(k, defaults.get(k))!r} (here {mine.get(k)!r})"
                                         for k in differ))
        held_out = list(twin.get("validation_sequences") or [])
        extra = sorted(set(theirs.get("sequences") or []) - set(mine["sequences"]))
        if not held_out or extra or set(held_out) & set(theirs.get("sequences") or []):
            raise ValueError(f"{twin_path} must hold videos out of its training and train on none this run does "
                             f"not (held out: {held_out or 'none'}; trained on but not here: {extra or 'none'})")
        return twin

    def export(self, path: str | os.PathLike, extra_meta: dict | None = None) -> Path:
        """Write S in the released format (``{'model': {'refiner.*'}, 'meta'}``) with the recipe in its meta."""
        meta = self.meta()
        if extra_meta:
            meta.update(extra_meta)
        net = self.shipped_segnet()
        net.eval()
        return save_segnet_checkpoint(path, net, meta)
