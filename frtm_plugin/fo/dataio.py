"""DAVIS-style folders <-> FiftyOne video datasets.

* :func:`import_davis` encodes each sequence's frames to an H.264 MP4 (the only video the FiftyOne App plays) and
  stores its annotations as frame-level :class:`fiftyone.core.labels.Segmentation` label maps: every annotated frame
  in ``gt_field``, and in ``prompt_field`` only the objects that *start* on that frame (what FRTM is given).
* :func:`export_davis` writes a frame-level Segmentation field back out as DAVIS indexed PNGs
  (``out_dir/<sequence>/<frame>.png``) that :func:`frtm_plugin.metrics.evaluate_folder` can score.

Conventions: FiftyOne frame numbers are 1-based, so frame index ``i`` (``0000i.jpg``) is frame number ``i + 1``.
Masks hold object ids as ``uint8`` (0 background, 255 void). H.264 in yuv420p needs even sizes: an odd width or height
is padded by one pixel (edge pixels repeated in the video, zeros in the masks), never scaled; the original size is
kept on the sample (``source_width``/``source_height``) and :func:`export_davis` crops back to it.

This module imports FiftyOne; only FiftyOne-facing code imports it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..io.davis import (IMAGE_EXTENSIONS, SequenceFolder, list_sequences, load_sequence, read_image,
                       sequence_from_dirs)
from ..io.labels import VOID, read_label_png, write_label_png

logger = logging.getLogger(__name__)

#: How many pixels a mask may differ from its frame (per axis) and still be padded/cropped to it
#: (DAVIS has masks one column narrower than their frames); larger differences are an error on import.
MASK_SIZE_TOLERANCE = 2
DEFAULT_CRF = 18

__all__ = ["import_davis", "export_davis", "default_media_dir", "encode_frames", "FFmpegError"]


class FFmpegError(RuntimeError):
    """ffmpeg is missing or failed to encode."""


# ----------------------------------------------------------------------------------------------------------- helpers

def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise FFmpegError("ffmpeg was not found on PATH; it is needed to encode the frames as H.264 MP4 "
                          "(the only video the FiftyOne App plays). Install it, e.g. `apt-get install ffmpeg` "
                          "on Debian/Ubuntu (it also provides ffprobe, which FiftyOne's compute_metadata needs).")
    return exe


def _even(n: int) -> int:
    return n + (n % 2)


def _fit(labels: np.ndarray, height: int, width: int, tolerance: int | None = MASK_SIZE_TOLERANCE,
         what: str = "mask") -> np.ndarray:
    """Zero-pad or crop (bottom/right) a label map to (height, width).

    ``tolerance``: the largest per-axis difference accepted; beyond it raise (``None``: resize by nearest neighbour).
    """
    h, w = labels.shape[:2]
    if (h, w) == (height, width):
        return labels
    if tolerance is not None and (abs(h - height) > tolerance or abs(w - width) > tolerance):
        raise ValueError(f"{what} is {w}x{h} (WxH) but its frame is {width}x{height}: only differences of up to "
                         f"{tolerance} px are padded/cropped")
    if tolerance is None and (abs(h - height) > MASK_SIZE_TOLERANCE or abs(w - width) > MASK_SIZE_TOLERANCE):
        from PIL import Image
        return np.array(Image.fromarray(labels.astype(np.uint8)).resize((width, height), Image.NEAREST))
    out = np.zeros((height, width), dtype=labels.dtype)
    hh, ww = min(h, height), min(w, width)
    out[:hh, :ww] = labels[:hh, :ww]
    return out


def _pad_even(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    ph, pw = _even(h) - h, _even(w) - w
    if ph or pw:
        pad = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
        image = np.pad(image, pad, mode="edge")
    return image


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image
    with Image.open(path) as im:
        return im.size  # (W, H)


def encode_frames(frame_paths: Iterable[str | os.PathLike], out_path: str | os.PathLike, fps: float = 24,
                  crf: int = DEFAULT_CRF, preset: str = "medium") -> dict:
    """Encode image files (all the same size) to an H.264 / yuv420p MP4 with ffmpeg, atomically.

    Frames are piped to ffmpeg as raw RGB, so their file names need not follow a pattern. An odd width/height is
    padded by one pixel (edge repeated). Returns ``{"width", "height", "encoded_width", "encoded_height",
    "num_frames"}``. Raises :class:`FFmpegError` when ffmpeg is missing or fails.
    """
    exe = _ffmpeg()
    frame_paths = [Path(p) for p in frame_paths]
    if not frame_paths:
        raise ValueError("no frames to encode")
    width, height = _image_size(frame_paths[0])
    ew, eh = _even(width), _even(height)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # ffmpeg creates the file (usual permissions); renamed into place once complete
    tmp = str(out_path.parent / f".{out_path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.mp4")
    cmd = [exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{ew}x{eh}", "-framerate", str(fps), "-i", "pipe:0",
           "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
           # swscale converts RGB with the BT.601 matrix (limited range): say so, so players decode it the same way
           "-colorspace", "smpte170m", "-color_primaries", "smpte170m", "-color_trc", "smpte170m",
           "-movflags", "+faststart", "-f", "mp4", tmp]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for p in frame_paths:
                image = read_image(p)
                if image.shape[:2] != (height, width):
                    raise ValueError(f"frame {p} is {image.shape[1]}x{image.shape[0]} (WxH) but {frame_paths[0]} "
                                     f"is {width}x{height}: all frames of a sequence must have one size")
                proc.stdin.write(np.ascontiguousarray(_pad_even(image)).tobytes())
            proc.stdin.close()
            rc = proc.wait()
        except BrokenPipeError:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            Path(tmp).unlink(missing_ok=True)
            raise
        if rc != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()
            Path(tmp).unlink(missing_ok=True)
            raise FFmpegError(f"ffmpeg failed (exit {rc}) encoding {len(frame_paths)} frames of "
                              f"{frame_paths[0].parent} to {out_path}: {msg[-2000:]}")
    os.replace(tmp, out_path)
    return {"width": width, "height": height, "encoded_width": ew, "encoded_height": eh,
            "num_frames": len(frame_paths)}


def _reusable(mp4: Path, frame_paths: list[Path], width: int, height: int, fps: float) -> bool:
    """An existing MP4 is reused when it is newer than every frame and has their count, (padded) size and rate."""
    if not mp4.is_file():
        return False
    try:
        if mp4.stat().st_mtime < max(p.stat().st_mtime for p in frame_paths):
            return False
        from ..io.video import video_info
        info = video_info(mp4)
    except Exception:  # unreadable / truncated file: encode again
        return False
    return (info["num_frames"] == len(frame_paths) and (info["width"], info["height"]) == (width, height)
            and info["fps"] is not None and abs(info["fps"] - fps) < 1e-3)


def _discover(root: Path, resolution: str, sequences: Iterable[str] | None) -> tuple[str, list[SequenceFolder]]:
    """("davis" | "flat", sequence folders) of a DAVIS root or of a flat single-sequence folder."""
    if isinstance(sequences, str):
        sequences = [sequences]
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    images = root / "JPEGImages"
    hint = (f"{root} is not a DAVIS-style folder: expected {root}/JPEGImages/[{resolution}/]<sequence>/*.jpg with "
            f"{root}/Annotations/[{resolution}/]<sequence>/*.png, or a single sequence as {root}/JPEGImages/*.jpg "
            f"with {root}/Annotations/*.png")
    if not images.is_dir():
        raise FileNotFoundError(hint)
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in images.iterdir()):
        folder = sequence_from_dirs(images, root / "Annotations", name=root.name)
        if sequences is not None and set(sequences) != {folder.name}:
            raise ValueError(f"{root} holds one sequence, {folder.name!r}; asked for {sorted(set(sequences))}")
        return "flat", [folder]
    names = list_sequences(root, resolution)
    if not names:
        raise FileNotFoundError(hint)
    if sequences is not None:
        sequences = list(sequences)
        missing = [s for s in sequences if s not in names]
        if missing:
            raise ValueError(f"sequences not found under {root}: {missing} (available: {', '.join(names[:20])}"
                             f"{' ...' if len(names) > 20 else ''})")
        names = sequences
    return "davis", [load_sequence(root, n, resolution) for n in names]


def _split_tags(root: Path, resolution: str) -> dict[str, list[str]]:
    """sequence -> names of the ImageSets/**.txt lists that hold it (e.g. ["train"])."""
    out: dict[str, list[str]] = {}
    sets = root / "ImageSets"
    if not sets.is_dir():
        return out
    for txt in sorted(sets.rglob("*.txt")):
        try:
            lines = txt.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            tok = line.split()
            if not tok:
                continue
            seq = Path(tok[0]).parent.name if "/" in tok[0] else tok[0]  # "bear" or "/JPEGImages/480p/bear/0.jpg"
            tags = out.setdefault(seq, [])
            if txt.stem not in tags:
                tags.append(txt.stem)
    return out


def default_media_dir(dataset_name: str) -> Path:
    """``<fo.config.default_dataset_dir>/frtm-vos/<dataset_name>`` (``~/fiftyone/frtm-vos/<name>`` by default)."""
    import fiftyone as fo
    return Path(fo.config.default_dataset_dir).expanduser() / "frtm-vos" / dataset_name


# ------------------------------------------------------------------------------------------------------------ import

def import_davis(root: str | os.PathLike, dataset_name: str | None = None, sequences: Iterable[str] | None = None,
                 resolution: str = "480p", media_dir: str | os.PathLike | None = None, gt_field: str = "ground_truth",
                 prompt_field: str = "prompt", fps: float = 24, overwrite: bool = False, persistent: bool = True,
                 progress: bool | None = True, max_frames: int | None = None, crf: int = DEFAULT_CRF):
    """Import a DAVIS-style folder as a FiftyOne video dataset, one sample per sequence.

    Args:
        root: a DAVIS root (``JPEGImages/[<resolution>/]<seq>/*.jpg``, ``Annotations/[<resolution>/]<seq>/*.png``)
            or a flat single-sequence folder (``JPEGImages/*.jpg`` + ``Annotations/*.png``; the sequence is named
            after ``root``). Annotations may be sparse (YouTube-VOS style).
        dataset_name: defaults to ``root``'s folder name.
        sequences: names to import (default: all).
        media_dir: where ``<seq>.mp4`` are written; default :func:`default_media_dir` (``dataset_name``). With
            ``max_frames`` cutting a sequence, the file is ``<seq>-first<N>.mp4``. An existing MP4 newer than its
            frames with the right frame count, size and rate is reused, so re-importing is cheap.
        gt_field: frame-level Segmentation on every annotated frame (uint8 object ids, 255 void).
        prompt_field: frame-level Segmentation on the frames where objects start, holding only those objects.
        fps: the frame rate written into the MP4 (DAVIS is 24 fps).
        overwrite: replace an existing dataset of that name (else it is an error).
        persistent: keep the dataset when the database shuts down (needed to share it with the App/CLI).
        max_frames: import only the first ``max_frames`` frames of each sequence (previews, quick tests).
        crf: x264 quality (lower = better, 18 is visually lossless).

    Sample fields: ``sequence``, ``tags`` (the ImageSets lists holding the sequence, e.g. ``train``),
    ``frame_names`` (source frame stems, used by :func:`export_davis`), ``source_width``/``source_height`` (frame size
    before padding to even), ``object_ids``, ``annotated_frames`` / ``prompt_frames`` (frame numbers), ``source_dir``.
    ``dataset.info["frtm_source"]`` records the import; ``default_mask_targets`` names ids ("object <i>", "void").
    """
    import fiftyone as fo
    import fiftyone.core.utils as fou

    root = Path(root).expanduser().resolve()
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    layout, folders = _discover(root, resolution, sequences)
    _ffmpeg()
    dataset_name = dataset_name or root.name
    if fo.dataset_exists(dataset_name) and not overwrite:
        raise ValueError(f"a FiftyOne dataset named {dataset_name!r} already exists: pass overwrite=True to "
                         "replace it, or another dataset_name")
    media_dir = Path(media_dir).expanduser() if media_dir is not None else default_media_dir(dataset_name)
    media_dir.mkdir(parents=True, exist_ok=True)
    splits = _split_tags(root, resolution) if layout == "davis" else {}

    dataset = fo.Dataset(dataset_name, persistent=persistent, overwrite=overwrite)
    all_ids: set[int] = set()
    seq_info = []
    try:
        with fou.ProgressBar(total=len(folders), progress=progress, iters_str="sequences") as pb:
            for folder in pb(folders):
                sample, ids, info = _import_sequence(folder, media_dir, fps, crf, max_frames, gt_field,
                                                     prompt_field, splits.get(folder.name, []))
                dataset.add_sample(sample)
                all_ids |= ids
                seq_info.append(info)
        _fill_metadata(dataset, progress)
        targets = {i: f"object {i}" for i in sorted(all_ids - {0, VOID})}
        if VOID in all_ids:
            targets[VOID] = "void"
        dataset.default_mask_targets = targets
        dataset.info["frtm_source"] = {
            "root": str(root), "layout": layout, "resolution": resolution if layout == "davis" else None,
            "sequences": [s["sequence"] for s in seq_info], "fps": fps, "crf": crf, "max_frames": max_frames,
            "media_dir": str(media_dir), "gt_field": gt_field, "prompt_field": prompt_field,
            "frame_numbering": "frame number = source frame index + 1", "encoded": seq_info,
        }
        dataset.save()
    except BaseException:
        dataset.delete()
        raise
    return dataset


def _import_sequence(folder: SequenceFolder, media_dir: Path, fps: float, crf: int, max_frames: int | None,
                     gt_field: str, prompt_field: str, tags: list[str]):
    import fiftyone as fo

    n = len(folder) if max_frames is None else min(len(folder), int(max_frames))
    frame_paths = folder.frame_paths[:n]
    width, height = _image_size(frame_paths[0])
    ew, eh = _even(width), _even(height)
    mp4 = media_dir / (f"{folder.name}.mp4" if n == len(folder) else f"{folder.name}-first{n}.mp4")
    reused = _reusable(mp4, frame_paths, ew, eh, fps)
    if reused:
        logger.info("reusing %s", mp4)
    else:
        encode_frames(frame_paths, mp4, fps=fps, crf=crf)

    def prepare(labels: np.ndarray, path: Path) -> np.ndarray:
        labels = _fit(labels, height, width, what=f"annotation {path}")
        if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
            raise ValueError(f"annotation {path} has ids outside 0..255")
        out = np.zeros((eh, ew), dtype=np.uint8)
        out[:height, :width] = labels
        return out

    sample = fo.Sample(filepath=str(mp4), tags=list(tags))
    ids: set[int] = set()
    annotated, prompt_frames = [], []
    for index in sorted(i for i in folder.annotation_paths if i < n):
        path = folder.annotation_paths[index]
        labels = prepare(read_label_png(path), path)
        ids |= {int(v) for v in np.unique(labels)}
        sample.frames[index + 1][gt_field] = fo.Segmentation(mask=labels)
        annotated.append(index + 1)
    for index, labels in sorted(folder.prompts().items()):
        if index < n:
            sample.frames[index + 1][prompt_field] = fo.Segmentation(
                mask=prepare(labels, folder.annotation_paths[index]))
            prompt_frames.append(index + 1)
    sample["sequence"] = folder.name
    sample["frame_names"] = [p.stem for p in frame_paths]
    sample["source_width"] = width
    sample["source_height"] = height
    sample["object_ids"] = sorted(ids - {0, VOID})
    sample["annotated_frames"] = annotated
    sample["prompt_frames"] = prompt_frames
    sample["source_dir"] = str(frame_paths[0].parent)
    info = {"sequence": folder.name, "video": str(mp4), "num_frames": n, "width": width, "height": height,
            "encoded_width": ew, "encoded_height": eh, "padded": (ew, eh) != (width, height), "reused": reused}
    return sample, ids, info


def _fill_metadata(collection, progress) -> None:
    """``compute_metadata`` (ffprobe); samples it could not do get metadata from PyAV."""
    if shutil.which("ffprobe"):
        collection.compute_metadata(progress=progress)
    else:
        logger.warning("ffprobe not found (Debian/Ubuntu: `apt-get install ffmpeg`); video metadata from PyAV")
    for sample in collection.exists("metadata", False):
        sample.metadata = _pyav_metadata(sample.filepath)
        sample.save()


def _pyav_metadata(path: str):
    import fiftyone as fo
    from ..io.video import video_info

    info = video_info(path)
    return fo.VideoMetadata(size_bytes=os.path.getsize(path), mime_type="video/mp4",
                            frame_width=info["width"], frame_height=info["height"], frame_rate=info["fps"],
                            total_frame_count=info["num_frames"],
                            duration=info["num_frames"] / info["fps"] if info["fps"] else None)


# ------------------------------------------------------------------------------------------------------------ export

FrameNamer = Callable[[object, int], str]


def export_davis(samples, label_field: str, out_dir: str | os.PathLike,
                 frame_names: str | FrameNamer | None = None, crop_to_source: bool = True) -> Path:
    """Write a frame-level Segmentation field as DAVIS indexed PNGs ``out_dir/<sequence>/<frame>.png``.

    Args:
        samples: a video dataset/view, or one video sample.
        label_field: the frame-level :class:`fiftyone.core.labels.Segmentation` field (``"pred"`` or
            ``"frames.pred"``); ``mask`` or ``mask_path`` masks, uint8/int object ids (a 3-channel mask must be grey).
        out_dir: the results root; one folder per sample, named ``sample["sequence"]`` if set, else the video stem.
        frame_names: PNG stems. ``None``: the sample's ``frame_names`` (set by :func:`import_davis`) when it lists
            every frame, else ``"%05d"`` of ``frame number - 1`` (DAVIS). A format string (``"%05d"``/``"{:05d}"``)
            is applied to ``frame number - 1``; a callable gets ``(sample, frame_number)``.
        crop_to_source: write maps at ``source_width x source_height`` when the sample has them (the size before
            import padded the video to even dimensions), else at the video's ``metadata.frame_width/height``.

    One PNG per video frame (``metadata.total_frame_count``); frames without a label are all zero. Masks that
    differ from the output size by up to 2 px are padded/cropped, others resized (nearest). Existing PNGs of the
    same names are overwritten; other files in ``out_dir`` are left alone. Returns ``out_dir``.
    """
    import fiftyone.core.sample as fos

    field = label_field[len("frames."):] if label_field.startswith("frames.") else label_field
    out_dir = Path(out_dir)
    if isinstance(samples, (fos.Sample, fos.SampleView)):
        items = [samples]
    else:
        if samples.media_type != "video":
            raise ValueError(f"export_davis needs a video collection, got media type {samples.media_type!r}")
        _check_field(samples, field)
        if len(samples.exists("metadata", False)):
            _fill_metadata(samples.exists("metadata", False), progress=False)
        items = samples
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for sample in items:
        seq = _get(sample, "sequence") or Path(sample.filepath).stem
        if seq in seen:
            raise ValueError(f"two samples export to the same folder {out_dir / seq}: {seen[seq]} and "
                             f"{sample.filepath} (set distinct 'sequence' fields)")
        seen[seq] = sample.filepath
        _export_sample(sample, field, out_dir / seq, frame_names, crop_to_source)
    return out_dir


def _get(sample, name):
    try:
        return sample[name]
    except (KeyError, AttributeError):
        return None


def _check_field(collection, field: str) -> None:
    if collection is None:
        return
    import fiftyone as fo
    schema = collection.get_frame_field_schema() or {}
    if field not in schema:
        raise ValueError(f"no frame-level field {field!r}; frame fields: {sorted(schema)}")
    f = schema[field]
    doc_type = getattr(f, "document_type", None)
    if doc_type is not None and not issubclass(doc_type, fo.Segmentation):
        raise ValueError(f"frame field {field!r} holds {doc_type.__name__}, not Segmentation")


def _export_sample(sample, field: str, seq_dir: Path, frame_names, crop_to_source: bool) -> None:
    import fiftyone as fo

    meta = sample.metadata
    if meta is None or not meta.frame_width or not meta.total_frame_count:
        meta = _pyav_metadata(sample.filepath)
    width, height = meta.frame_width, meta.frame_height
    sw, sh = _get(sample, "source_width"), _get(sample, "source_height")
    if crop_to_source and sw and sh:
        width, height = int(sw), int(sh)
    labels: dict[int, np.ndarray] = {}
    for fn, frame in sample.frames.items():
        label = frame.get_field(field) if frame.has_field(field) else None
        if label is None:
            continue
        if not isinstance(label, fo.Segmentation):
            raise ValueError(f"{sample.filepath} frame {fn}: {field!r} is a {type(label).__name__}, not Segmentation")
        mask = label.get_mask()
        if mask is None:
            continue
        mask = np.asarray(mask)
        if mask.ndim == 3:
            if not np.all(mask[..., :3] == mask[..., :1]):
                raise ValueError(f"{sample.filepath} frame {fn}: an RGB mask cannot be exported as object ids")
            mask = mask[..., 0]
        if mask.dtype == bool:
            mask = mask.astype(np.uint8)
        labels[fn] = _fit(mask, height, width, tolerance=None, what=f"{sample.filepath} frame {fn}")
    n = max([int(meta.total_frame_count)] + list(labels))
    stored = _get(sample, "frame_names")
    if frame_names is None and stored and len(stored) == n:
        namer = lambda s, fn: stored[fn - 1]  # noqa: E731
    elif frame_names is None or isinstance(frame_names, str):
        fmt = frame_names or "%05d"
        namer = (lambda s, fn: fmt.format(fn - 1)) if "{" in fmt else (lambda s, fn: fmt % (fn - 1))  # noqa: E731
    else:
        namer = frame_names
    zeros = np.zeros((height, width), dtype=np.uint8)
    seq_dir.mkdir(parents=True, exist_ok=True)
    for fn in range(1, n + 1):
        write_label_png(seq_dir / f"{namer(sample, fn)}.png", labels.get(fn, zeros))
