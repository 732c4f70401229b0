"""Decoding video files to RGB frames, one at a time (nothing holds a whole video in memory).

A video that ends before the frame count its container declares (a file cut short by a failed copy or download)
raises :class:`TruncatedVideoError` once its last decodable frame has been yielded, so a caller never mistakes it
for a complete video.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Iterator

import numpy as np


class VideoReadError(RuntimeError):
    """A video that cannot be opened or decoded, or that holds no frame."""


class TruncatedVideoError(VideoReadError):
    """A video that decoded fewer frames than its container (or the caller's metadata) says it holds."""

    def __init__(self, path, decoded: int, expected: int, labelled: int | None = None):
        self.path, self.decoded, self.expected, self.labelled = Path(path), decoded, expected, labelled
        msg = (f"{path} ended after {decoded} of its {expected} frames: the file is truncated or damaged (an "
               "interrupted copy or download?); restore the whole file and run again")
        if labelled is not None:
            msg += f" ({labelled} frames were labelled; the video is not marked done)"
        super().__init__(msg)


def ffmpeg_message(e: BaseException) -> str:
    """FFmpeg's own words for an error, without PyAV's '[Errno 1094995529]' code and the repeated file name."""
    text = getattr(e, "strerror", None) or str(e)
    return text.rstrip(".") if text else type(e).__name__


def _open(path: Path):
    import av  # PyAV: FFmpeg's decoders without a subprocess

    if not path.is_file():
        raise VideoReadError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes): not a video")
    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises several error types for unreadable files
        raise VideoReadError(f"cannot open video {path}: {ffmpeg_message(e)} (not a video FFmpeg can read, or a "
                             "damaged file)") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path} has no video stream")
    return container


def iter_video_frames(path: str | os.PathLike, expected_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of any container/codec FFmpeg reads, as (H, W, 3) uint8 RGB, in display order.

    The number of frames decoded is checked against the count the container's index declares and against
    ``expected_frames`` (e.g. FiftyOne's ``metadata.total_frame_count``) when given: fewer raises
    :class:`TruncatedVideoError` after the last frame that could be decoded."""
    import av

    path = Path(path)
    container = _open(path)
    n = 0
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = max(int(stream.frames or 0), int(expected_frames or 0))
        try:
            for frame in container.decode(stream):
                n += 1
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise VideoReadError(f"decoding {path} failed after {n} frames: {ffmpeg_message(e)}") from e
    if n == 0:
        raise VideoReadError(f"{path} holds no decodable frame")
    if declared and n < declared:
        raise TruncatedVideoError(path, n, declared)


class Prefetch:
    """Iterate ``source`` (e.g. :func:`iter_video_frames`) in a background thread, up to ``depth`` items ahead, so
    the consumer (the model) never waits for decoding. Items come in order; an exception the source raises comes
    after the items before it, as it would unthreaded. :meth:`close` (also on garbage collection of a ``with``
    block) stops the thread and closes the source in it (a generator cannot be closed from another thread)."""

    _ITEM, _ERROR, _END = range(3)

    def __init__(self, source, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(source,), name="frtm-decode-ahead", daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source) -> None:
        try:
            for item in source:
                if not self._put((self._ITEM, item)):
                    break
            else:
                self._put((self._END, None))
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            self._put((self._ERROR, e))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == self._ITEM:
            return value
        self._done = True
        self._thread.join()
        if kind == self._ERROR:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop decoding ahead; the source is closed in its thread before this returns."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room for a put the thread may be blocked in
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def video_info(path: str | os.PathLike) -> dict:
    """Frame count (from the container, or by decoding when it does not say), rate and size."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        count = stream.frames
        rate = float(stream.average_rate) if stream.average_rate else None
        height, width = stream.codec_context.height, stream.codec_context.width
    if not count:
        count = sum(1 for _ in iter_video_frames(path))
    return {"num_frames": count, "fps": rate, "height": height, "width": width}


def write_video(path: str | os.PathLike, frames, fps: int = 24, codec: str = "libx264",
                faststart: bool = False) -> Path:
    """Encode RGB frames ((H, W, 3) uint8, even sizes for H.264) to a video file with PyAV. ``faststart`` puts an
    MP4's index first (as streaming services do), so that a file cut short still opens."""
    import av

    path = Path(path)
    frames = iter(frames)
    first = next(frames)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        for f in (first, *frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
