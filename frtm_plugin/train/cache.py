"""Disk caches: frozen-backbone features per frame (fp16) and target models D fitted on reference frames.

Layout under the cache root (keep it outside the repository, e.g. ``~/.cache/frtm``)::

    features/<backbone>-<H>x<W>/<source>/<seq>/<frame:05d>.pt   {layer: (C,h,w) fp16, "label": (H,W) uint8}
    features/<backbone>-<H>x<W>/<source>/<seq>/index.pt         frames, layers, per-object pixel counts (written last)
    target_models/<backbone>-<layer>-c<c>-aug<K>-<H>x<W>/<source>/<seq>/<frame:05d>.<obj>.pt
                                                                {"project.weight", "filter.weight"} (released layout)

A sequence's features are valid once its ``index.pt`` exists (written last, atomically), so an interrupted build
resumes cleanly. All files are read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..core.augment import augment_first_frame
from ..core.backbone import Backbone
from ..core.target_model import SolverConfig, TargetModel
from .data import TrainSequence

__all__ = ["TRAIN_SOLVER", "FeatureCache", "TargetModelCache", "resize_frame", "resize_label", "d_scores",
           "atomic_save", "load"]

#: the released training recipe's D (train.py): c = 32, lambda = (1e-5, 1e-4), no pixel weighting
TRAIN_SOLVER = SolverConfig(channels=32, filter_reg=(1e-5, 1e-4), hinge_kappa=None, memory_size=20)


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def resize_frame(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """To the training size as the released loader does: INTER_AREA to shrink, INTER_CUBIC to enlarge."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return image
    shrink = image.shape[0] * image.shape[1] >= h * w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_label(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    if label.shape == (h, w):
        return label
    return cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)


def d_scores(state: dict, features: torch.Tensor) -> torch.Tensor:
    """D's coarse scores from its released-layout state dict: filter(project(x)); (N,C,h,w) -> (N,1,h,w)."""
    w1, w2 = state["project.weight"].to(features.dtype), state["filter.weight"].to(features.dtype)
    return F.conv2d(F.conv2d(features, w1), w2, padding=1)


@dataclass
class SequenceIndex:
    frames: list[int]  # cached frame indices (annotated frames of the subset), ascending
    objects: dict[int, list[int]]  # object id -> foreground pixel count per cached frame (at the training size)


class FeatureCache:
    """Backbone features of a subset of every sequence's annotated frames, at a fixed training size."""

    def __init__(self, root: str | os.PathLike, backbone: Backbone, size: tuple[int, int], source: str,
                 layers: Iterable[str]):
        self.backbone = backbone
        self.size = (int(size[0]), int(size[1]))
        self.layers = tuple(sorted(set(layers)))
        self.dir = Path(root) / "features" / f"{backbone.name}-{self.size[0]}x{self.size[1]}" / source

    def seq_dir(self, name: str) -> Path:
        return self.dir / name

    def frame_path(self, name: str, index: int) -> Path:
        return self.seq_dir(name) / f"{index:05d}.pt"

    def index(self, name: str) -> SequenceIndex | None:
        p = self.seq_dir(name) / "index.pt"
        if not p.is_file():
            return None
        d = load(p)
        if not set(self.layers) <= set(d["layers"]):
            return None
        return SequenceIndex([int(i) for i in d["frames"]], {int(k): [int(x) for x in v] for k, v in d["objects"].items()})

    def build(self, seq: TrainSequence, labels: dict[int, np.ndarray], on_frame=None) -> bool:
        """Cache the frames ``labels`` names (frame index -> id map at the training size) unless the sequence's
        index already lists exactly them. ``on_frame(index, resized_image)`` is called for every frame decoded
        (the trainer fits D on reference frames there). Returns whether anything was computed."""
        keep = sorted(labels)
        have = self.index(seq.name)
        if have is not None and have.frames == keep:
            return False
        ids = sorted({int(v) for lab in labels.values() for v in np.unique(lab)} - {0, 255})
        objects = {o: [int((labels[i] == o).sum()) for i in keep] for o in ids}
        for i, image in zip(keep, seq.iter_frames(keep)):
            image = resize_frame(image, self.size)
            item = self.features(image)
            item["label"] = torch.from_numpy(np.ascontiguousarray(labels[i]))
            atomic_save(item, self.frame_path(seq.name, i))
            if on_frame is not None:
                on_frame(i, image)
        atomic_save({"frames": keep, "layers": list(self.layers), "objects": objects},
                    self.seq_dir(seq.name) / "index.pt")
        return True

    def read(self, name: str, index: int) -> dict:
        return load(self.frame_path(name, index))

    def features(self, image: np.ndarray) -> dict:
        """The cached maps of one frame at the training size (H, W, 3) uint8, as stored (float16)."""
        with torch.no_grad():
            feats = self.backbone(torch.from_numpy(image).permute(2, 0, 1)[None], layers=self.layers)
        return {k: v[0].to(torch.float16).contiguous() for k, v in feats.items()}


class TargetModelCache:
    """D fitted (training settings) on one reference frame and its ``num_aug - 1`` augmented copies, per object."""

    def __init__(self, root: str | os.PathLike, backbone: Backbone, target_layer: str, size: tuple[int, int],
                 source: str, num_aug: int = 15, solver: SolverConfig = TRAIN_SOLVER, seed: int = 0):
        self.backbone = backbone
        self.target_layer = target_layer
        self.num_aug = num_aug
        self.solver = solver
        self.seed = seed
        tag = f"{backbone.name}-{target_layer}-c{solver.channels}-aug{num_aug}-{size[0]}x{size[1]}-s{seed}"
        self.dir = Path(root) / "target_models" / tag / source

    def path(self, name: str, frame: int, obj: int) -> Path:
        return self.dir / name / f"{frame:05d}.{obj}.pt"

    def has(self, name: str, frame: int, obj: int) -> bool:
        return self.path(name, frame, obj).is_file()

    def fit(self, name: str, frame: int, obj: int, image: np.ndarray, label: np.ndarray) -> dict:
        """Fit and store D for object ``obj`` on ``image`` (RGB at the training size) with its id map ``label``."""
        mask = label == obj
        seed = self.seed * 1_000_003 + frame * 256 + obj
        images, masks = augment_first_frame(image, mask, num_aug=self.num_aug, seed=seed)
        with torch.no_grad():
            feats = self.backbone(torch.from_numpy(images).permute(0, 3, 1, 2), layers=(self.target_layer,))
        x = feats[self.target_layer]
        model = TargetModel(x.shape[1], self.solver, generator=torch.Generator().manual_seed(seed))
        model.initialize(x, torch.from_numpy(masks))
        state = model.state_dict()
        atomic_save(state, self.path(name, frame, obj))
        return state

    def read(self, name: str, frame: int, obj: int) -> dict:
        return load(self.path(name, frame, obj))
