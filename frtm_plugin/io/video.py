"""Decoding video files to RGB frames, one at a time (nothing holds a whole video in memory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np


class VideoReadError(RuntimeError):
    """A video that cannot be opened or decoded, or that holds no frame."""


def iter_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of any container/codec FFmpeg reads, as (H, W, 3) uint8 RGB, in display order."""
    import av  # PyAV: FFmpeg's decoders without a subprocess

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises several error types for unreadable files
        raise VideoReadError(f"cannot open video {path}: {e}") from e
    n = 0
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                n += 1
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise VideoReadError(f"decoding {path} failed after {n} frames: {e}") from e
    if n == 0:
        raise VideoReadError(f"{path} holds no decodable frame")


def video_info(path: str | os.PathLike) -> dict:
    """Frame count (from the container, or by decoding when it does not say), rate and size."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = stream.frames
        rate = float(stream.average_rate) if stream.average_rate else None
        height, width = stream.codec_context.height, stream.codec_context.width
    if not count:
        count = sum(1 for _ in iter_video_frames(path))
    return {"num_frames": count, "fps": rate, "height": height, "width": width}


def write_video(path: str | os.PathLike, frames, fps: int = 24, codec: str = "libx264") -> Path:
    """Encode RGB frames ((H, W, 3) uint8, even sizes for H.264) to a video file with PyAV."""
    import av

    path = Path(path)
    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        for f in (first, *frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
