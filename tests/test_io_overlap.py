"""Decoding ahead and writing labels behind the model (issue 12): the threads change when work happens, never what
is produced or stored, and their errors reach the caller."""

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from frtm_plugin.io.video import Prefetch


def _source(n, fail_after=None, log=None):
    try:
        for i in range(n):
            if fail_after is not None and i == fail_after:
                raise OSError(f"decoding failed after {i} frames")
            yield i
    finally:
        if log is not None:
            log.append(("closed", threading.current_thread().name))


def test_prefetch_yields_the_source_in_order_then_its_error():
    assert list(Prefetch(_source(50), depth=3)) == list(range(50))
    got = []
    with pytest.raises(OSError, match="after 7 frames"):
        for x in Prefetch(_source(20, fail_after=7)):
            got.append(x)
            time.sleep(0.001)  # a consumer slower than the source: it stays ahead, the error still comes last
    assert got == list(range(7))


def test_prefetch_close_stops_the_thread_and_closes_the_source_in_it():
    log = []
    p = Prefetch(_source(10_000, log=log), depth=2)
    assert [next(p) for _ in range(3)] == [0, 1, 2]
    p.close()
    assert log == [("closed", "frtm-decode-ahead")] and not p._thread.is_alive()
    with pytest.raises(StopIteration):
        next(p)


fo = pytest.importorskip("fiftyone")


def test_label_writer_saves_in_chunks_and_raises_a_lost_lock_in_the_caller(tmp_path):
    """Frames go in order into the sample, one save per chunk; a lock lost in the writer's thread stops the writing
    before the next save and is raised in the caller; what was saved before stays."""
    from frtm_plugin.fo.runs import FieldLockLostError
    from frtm_plugin.fo.sdk import _LabelWriter

    class Lock:
        lost = False

        def check(self):
            if self.lost:
                raise FieldLockLostError("taken over")

    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "v.mp4")))
    ds.add_sample_field("out_frtm", fo.StringField)  # declared up front, as propagate does
    sid = ds.first().id
    lock = Lock()
    job = SimpleNamespace(dataset=ds, chunk=3, lock=lock, out={"marker": "out_frtm"})

    def write(target, index):
        if index == 4:
            lock.lost = True  # another run takes the field over while frame 4 (in the 2nd chunk) is written
        target.frames[index + 1]["out"] = fo.Classification(label=str(index))

    writer = _LabelWriter(job, sid, write)
    with pytest.raises(FieldLockLostError):
        for i in range(12):
            writer.put(i)
            time.sleep(0.01)
        writer.finish()
    ds.reload()
    stored = {n: fr["out"].label for n, fr in ds.first().frames.items() if fr["out"] is not None}
    assert stored == {1: "0", 2: "1", 3: "2"}  # the first chunk; nothing after the loss
    assert ds.first()["out_frtm"] is None  # marked in progress, never done

    ok = _LabelWriter(SimpleNamespace(dataset=ds, chunk=4, lock=Lock(), out={"marker": "out_frtm"}), sid,
                      lambda target, i: target.frames[i + 1].__setitem__("out", fo.Classification(label=f"v{i}")))
    for i in range(10):
        ok.put(i)
    target, written = ok.finish()
    ds.reload()
    assert written == 10 and [fr["out"].label for fr in ds.first().frames.values()] == [f"v{i}" for i in range(10)]
    ds.delete()


def test_threads_on_and_off_store_the_same_labels(demo_clip, video_dataset):
    """propagate with decode-ahead and write-behind threads (the default) and without: identical frame labels."""
    import frtm_plugin

    path, gts = demo_clip(8)
    ds = video_dataset("io-threads", path)
    s = ds.first()
    s.frames[1]["prompt"] = fo.Segmentation(mask=gts[0].astype(np.uint8))
    s.save()
    for field, threads in (("threaded", True), ("plain", False)):
        frtm_plugin.propagate(ds, "prompt", field, model="d-only", max_size=256, chunk_frames=3, io_threads=threads,
                              store_heatmaps=True, progress=False)
    frames = ds.first().frames
    for n in range(1, 9):
        for suffix in ("", "_instances", "_scores"):
            a, b = frames[n][f"threaded{suffix}"], frames[n][f"plain{suffix}"]
            assert (a is None) == (b is None), (n, suffix)
            if a is not None:
                da, db = a.to_dict(), b.to_dict()
                for d in (da, db):
                    d.pop("_id", None)
                    for det in d.get("detections", []):
                        det.pop("_id", None)
                assert da == db, (n, suffix)
    ds.delete()
