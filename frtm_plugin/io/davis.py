"""DAVIS / YouTube-VOS style folders: ``JPEGImages/[480p/]<seq>/*.jpg`` with ``Annotations/[480p/]<seq>/*.png``.

Annotations may be sparse: an object starts on the first annotated frame where its id appears (YouTube-VOS style);
later annotations of an already started object are ground truth for evaluation, never fed to the tracker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import VOID, read_label_png

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass
class SequenceFolder:
    name: str
    frame_paths: list[Path]
    annotation_paths: dict[int, Path]  # frame index -> PNG of the same stem

    def __len__(self) -> int:
        return len(self.frame_paths)

    def frame_names(self) -> list[str]:
        return [p.stem for p in self.frame_paths]

    def read_frame(self, index: int) -> np.ndarray:
        return read_image(self.frame_paths[index])

    def prompts(self) -> dict[int, np.ndarray]:
        """Frame index -> label map holding only the objects that start on that frame (others zeroed)."""
        seen: set[int] = set()
        out = {}
        for index in sorted(self.annotation_paths):
            labels = read_label_png(self.annotation_paths[index])
            ids = {int(i) for i in np.unique(labels)} - {0, VOID} - seen
            if ids:
                out[index] = np.where(np.isin(labels, list(ids)), labels, 0)
                seen |= ids
        return out


def read_image(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def _sorted_files(folder: Path, extensions) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions)


def sequence_from_dirs(images_dir: str | os.PathLike, annotations_dir: str | os.PathLike,
                       name: str | None = None) -> SequenceFolder:
    images_dir, annotations_dir = Path(images_dir), Path(annotations_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"frame folder not found: {images_dir}")
    frames = _sorted_files(images_dir, IMAGE_EXTENSIONS)
    if not frames:
        raise FileNotFoundError(f"no frames (.jpg/.png) in {images_dir}")
    by_stem = {p.stem: i for i, p in enumerate(frames)}
    annotations = {}
    if annotations_dir.is_dir():
        for p in _sorted_files(annotations_dir, (".png",)):
            if p.stem in by_stem:
                annotations[by_stem[p.stem]] = p
    if not annotations:
        raise FileNotFoundError(f"no annotation PNG in {annotations_dir} matches a frame of {images_dir}: "
                                "the first frame of each object needs its mask")
    if name is None:  # a bare "JPEGImages" folder is named after the folder holding it
        name = images_dir.parent.name if images_dir.name in ("JPEGImages", "images", "frames") else images_dir.name
    return SequenceFolder(name, frames, annotations)


def _level(root: Path, kind: str, resolution: str) -> Path:
    with_res = root / kind / resolution
    return with_res if with_res.is_dir() else root / kind


def list_sequences(root: str | os.PathLike, resolution: str = "480p") -> list[str]:
    images = _level(Path(root), "JPEGImages", resolution)
    if not images.is_dir():
        raise FileNotFoundError(f"{root} is not a DAVIS-style folder: {images} does not exist")
    return sorted(p.name for p in images.iterdir() if p.is_dir())


def load_sequence(root: str | os.PathLike, name: str, resolution: str = "480p") -> SequenceFolder:
    root = Path(root)
    images = _level(root, "JPEGImages", resolution) / name
    if not images.is_dir():
        raise FileNotFoundError(f"sequence {name!r} not found under {images.parent} "
                                f"(available: {', '.join(list_sequences(root, resolution)[:10])} ...)")
    return sequence_from_dirs(images, _level(root, "Annotations", resolution) / name, name)
