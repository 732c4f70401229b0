"""Nothing lost, nothing stale: the user's labels are never overwritten, resume knows the prompts, truncated videos
are never marked done, two runs never write one field at once, and 4K runs at the default inference cap.
Real clips (the shipped demo clip), a throwaway database (conftest.py)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

import frtm_plugin  # noqa: E402
from frtm_plugin.core.tracker import DEFAULT_MAX_SIZE  # noqa: E402
from frtm_plugin.fo.runs import FieldLock, FieldLockedError, output_fields  # noqa: E402
from frtm_plugin.io.davis import load_sequence  # noqa: E402
from frtm_plugin.io.labels import read_label_png  # noqa: E402
from frtm_plugin.io.video import write_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
FAST = dict(model="d-only", max_size=256, num_aug=1)
N_FRAMES = 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    seq = load_sequence(DEMO, "rollerblade")
    path = tmp_path_factory.mktemp("media") / "rollerblade.mp4"
    write_video(path, [seq.read_frame(i) for i in range(N_FRAMES)])
    return path, [read_label_png(seq.annotation_paths[i]) for i in range(N_FRAMES)]


def _dataset(name, path, gts, n_videos=1, persistent=False):
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=persistent)
    ds.add_samples([fo.Sample(filepath=str(path)) for _ in range(n_videos)])
    for s in ds.iter_samples(autosave=True):
        for i, gt in enumerate(gts):
            s.frames[i + 1]["gt"] = fo.Segmentation(mask=gt)
        s.frames[1]["prompt"] = fo.Segmentation(mask=gts[0])
    return ds


def _masks(ds, field):
    return [[None if fr[field] is None else fr[field].get_mask().copy() for fr in s.frames.values()]
            for s in ds.select_fields(f"frames.{field}")]


# -- 1. the user's labels ---------------------------------------------------------------------------------------------

def test_ground_truth_and_foreign_labels_are_never_overwritten(clip):
    ds = _dataset("guard-gt", *clip)
    try:
        before = _masks(ds, "gt")
        for kwargs in ({}, {"overwrite": True}):  # overwrite replaces only FRTM's own outputs
            with pytest.raises(ValueError, match="'frames.gt' already hold.*FRTM did not write.*force=True"):
                frtm_plugin.propagate(ds, "prompt", "gt", progress=False, **kwargs, **FAST)
        assert all(np.array_equal(a, b) for a, b in zip(before[0], _masks(ds, "gt")[0]))
        assert "gt_instances" not in ds.get_frame_field_schema() and "gt_frtm" not in ds.get_field_schema()
        assert "frtm_gt" not in ds.list_runs()

        # Once the field is the ground truth of an evaluation, not even force=True writes it.
        frtm_plugin.propagate(ds, "prompt", "pred", progress=False, **FAST)
        frtm_plugin.evaluate(ds, "pred", "gt", eval_key="ev", progress=False)
        with pytest.raises(ValueError, match="'frames.gt' holds the ground truth of evaluation 'ev'"):
            frtm_plugin.propagate(ds, "prompt", "gt", progress=False, force=True, **FAST)
        assert all(np.array_equal(a, b) for a, b in zip(before[0], _masks(ds, "gt")[0]))

        # Our own field: overwrite and resume work as before, without force.
        again = frtm_plugin.propagate(ds, "prompt", "pred", progress=False, overwrite=True, **FAST)
        assert len(again.processed) == 1 and again.reasons[ds.first().id] == "overwrite requested"

        # force=True replaces labels FRTM did not write, in a field no evaluation uses.
        s = ds.first()
        s.frames[2]["mine"] = fo.Segmentation(mask=np.full((480, 854), 3, np.uint8))
        s.save()
        with pytest.raises(ValueError, match="'frames.mine' already hold"):
            frtm_plugin.propagate(ds, "prompt", "mine", progress=False, **FAST)
        assert (ds.first().frames[2]["mine"].get_mask() == 3).all()
        forced = frtm_plugin.propagate(ds, "prompt", "mine", progress=False, force=True, **FAST)
        assert len(forced.processed) == 1 and not (ds.first().frames[2]["mine"].get_mask() == 3).any()
    finally:
        ds.delete()


def test_outputs_never_equal_or_derive_into_the_prompt_field(clip):
    ds = _dataset("guard-prompt", *clip)
    try:
        frtm_plugin.propagate(ds, "prompt", "p", progress=False, **FAST)  # writes p and p_instances
        prompt_before = [[(d.index, d.bounding_box) for d in fr["p_instances"].detections]
                         for fr in ds.first().frames.values()]
        for kwargs in ({}, {"overwrite": True}, {"overwrite": True, "force": True}):
            with pytest.raises(ValueError, match=r"'frames.p_instances' derives .* the prompt field"):
                frtm_plugin.propagate(ds, "p_instances", "p", progress=False, **kwargs, **FAST)
        with pytest.raises(ValueError, match="'frames.p_instances' is the prompt field"):
            frtm_plugin.propagate(ds, "frames.p_instances", "frames.p_instances", progress=False, **FAST)
        _add_detections_prompt(ds, "q_scores")
        with pytest.raises(ValueError, match="'frames.q_scores' derives"):
            frtm_plugin.propagate(ds, "q_scores", "q", progress=False, store_heatmaps=True, **FAST)
        assert len(frtm_plugin.propagate(ds, "q_scores", "q", progress=False, **FAST).processed) == 1  # no heatmap
        after = [[(d.index, d.bounding_box) for d in fr["p_instances"].detections] for fr in ds.first().frames.values()]
        assert after == prompt_before
    finally:
        ds.delete()


def _add_detections_prompt(ds, field):
    """The first frame's ground truth as a Detections prompt in ``field``."""
    s = ds.first()
    gt0 = s.frames[1]["gt"].get_mask() == 1
    rows, cols = np.flatnonzero(gt0.any(1)), np.flatnonzero(gt0.any(0))
    h, w = gt0.shape
    box = [cols[0] / w, rows[0] / h, (cols[-1] + 1 - cols[0]) / w, (rows[-1] + 1 - rows[0]) / h]
    s.frames[1][field] = fo.Detections(detections=[fo.Detection(
        label="x", bounding_box=box, mask=gt0[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])])
    s.save()


# -- 2. resume knows the prompts ---------------------------------------------------------------------------------------

def test_a_changed_prompt_is_recomputed_on_resume(clip):
    ds = _dataset("guard-resume", *clip, n_videos=2)
    try:
        first = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        ids = [s.id for s in ds]
        assert set(first.processed) == set(ids) and all("not propagated yet" in first.reasons[i] for i in ids)
        again = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        assert again.processed == [] and set(again.skipped) == set(ids)
        assert "this configuration and these prompts" in again.skipped[ids[0]]

        # Correct the prompt of one video (a shrunk mask, as an annotator's fix): only that video is redone.
        s = ds[ids[1]]
        corrected = cv2.erode(s.frames[1]["prompt"].get_mask(), np.ones((15, 15), np.uint8))
        s.frames[1]["prompt"] = fo.Segmentation(mask=corrected)
        s.save()
        before_other = _masks(ds.select(ids[0]), "out")[0]
        resumed = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        assert resumed.processed == [ids[1]] and resumed.reasons[ids[1]] == \
            "its prompts changed since it was propagated"
        assert list(resumed.skipped) == [ids[0]]
        assert np.array_equal(ds[ids[1]].frames[1]["out"].get_mask() == 1, corrected == 1)  # the new prompt
        assert all(np.array_equal(a, b) for a, b in zip(before_other, _masks(ds.select(ids[0]), "out")[0]))

        # Another prompt field (same masks, as Detections with a class label) is another set of prompts.
        for smp in ds.iter_samples(autosave=True):
            m = smp.frames[1]["prompt"].get_mask() == 1
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            h, w = m.shape
            smp.frames[1]["objs"] = fo.Detections(detections=[fo.Detection(
                label="skater", index=1, mask=m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1],
                bounding_box=[cols[0] / w, rows[0] / h, (cols[-1] + 1 - cols[0]) / w, (rows[-1] + 1 - rows[0]) / h])])
        other = frtm_plugin.propagate(ds, "objs", "out", progress=False, **FAST)
        assert set(other.processed) == set(ids)
        assert ds.first().frames[3]["out_instances"].detections[0].label == "skater"

        # Another configuration: redone, and said so.
        cfg = frtm_plugin.propagate(ds, "objs", "out", progress=False, model="d-only", max_size=200, num_aug=1)
        assert set(cfg.processed) == set(ids) and all("configuration changed" in r for r in cfg.reasons.values())
    finally:
        ds.delete()


# -- 3. truncated videos -----------------------------------------------------------------------------------------------

def test_a_truncated_video_is_reported_and_not_marked_done(tmp_path):
    seq = load_sequence(DEMO, "rollerblade")
    n = 30
    frames = [cv2.resize(seq.read_frame(i), (320, 180)) for i in range(n)]
    gt0 = cv2.resize(read_label_png(seq.annotation_paths[0]), (320, 180), interpolation=cv2.INTER_NEAREST)
    whole = write_video(tmp_path / "whole.mp4", frames, faststart=True)
    video = tmp_path / "video.mp4"
    with open(video, "wb") as f:  # cut as an interrupted copy leaves it
        subprocess.run(["head", "-c", str(int(whole.stat().st_size * 0.4)), str(whole)], stdout=f, check=True)
    ds = _dataset("guard-truncated", video, [gt0])
    try:
        report = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        sid = ds.first().id
        assert report.processed == [] and sid in report.failed
        msg = report.failed[sid]
        assert "ended after" in msg and "of its 30 frames" in msg and "not marked done" in msg
        decoded = int(msg.split("ended after ")[1].split(" ")[0])
        labelled = int(msg.split("(")[-1].split(" frames were labelled")[0])
        assert 0 < decoded < n and 0 < labelled <= decoded
        s = ds.first()
        assert s["out_frtm"] is None  # never done
        assert ds.count("frames.out") == labelled  # what the report says was written, and no more
        again = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        assert sid in again.failed  # still truncated: still not done, never skipped

        video.write_bytes(whole.read_bytes())  # the file restored whole
        fixed = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        assert fixed.processed == [sid] and fixed.frames == n and not fixed.failed
        assert ds.count("frames.out") == n and ds.first()["out_frtm"] is not None
    finally:
        ds.delete()


# -- 4. one run per field ----------------------------------------------------------------------------------------------

RUN = """
import json, sys, frtm_plugin, fiftyone as fo
from frtm_plugin.fo.runs import FieldLockedError
ds = fo.load_dataset({name!r})
try:
    r = frtm_plugin.propagate(ds, "prompt", "out", model="d-only", max_size={max_size}, num_aug=1, progress=False,
                              lock_wait={wait})
    print(json.dumps({{"processed": len(r.processed), "t": __import__("time").time()}}))
except FieldLockedError as e:
    print(json.dumps({{"refused": str(e)}}))
"""


def _concurrent(name, waits):
    procs = [subprocess.Popen([sys.executable, "-c", RUN.format(name=name, max_size=size, wait=wait)],
                              stdout=subprocess.PIPE, text=True, env=os.environ.copy())
             for size, wait in zip((256, 200), waits)]
    return [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]


def _consistent(ds):
    """Every video's done key is the recorded run's configuration, and its masks are that configuration's size."""
    ds.reload()
    cfg = frtm_plugin.run_config(ds, "out")
    keys = ds.values("out_frtm")
    assert all(k is not None and k.split(":")[0] == cfg["config_hash"] for k in keys)
    assert cfg["status"] == "done" and cfg["processed"] == len(ds)
    return cfg


@pytest.mark.slow
def test_two_concurrent_runs_into_one_field_never_mix(clip):
    name = "guard-concurrent"
    ds = _dataset(name, *clip, n_videos=3, persistent=True)
    try:
        results = _concurrent(name, (0, 0))
        refused = [r for r in results if "refused" in r]
        done = [r for r in results if "processed" in r]
        assert len(refused) == 1 and len(done) == 1, results  # one claimed the field, the other was refused
        assert "another FRTM run is writing 'frames.out'" in refused[0]["refused"]
        cfg = _consistent(ds)
        winner = 256 if results[0] is done[0] else 200
        assert cfg["max_size"] == winner
        assert FieldLock.holder(ds, "out") is None  # released

        # With lock_wait the second run waits for the first and then runs: serialised, the record is the last one's.
        results = _concurrent(name, (300, 300))
        assert all("processed" in r for r in results), results
        last = max(range(2), key=lambda i: results[i]["t"])
        cfg = _consistent(ds)
        assert cfg["max_size"] == (256, 200)[last]
    finally:
        ds.delete()


def test_field_lock_claims_waits_and_takes_over_dead_owners(clip):
    ds = _dataset("guard-lock", *clip)
    try:
        from fiftyone.core.odm import get_db_conn

        from frtm_plugin.fo.runs import LOCK_COLLECTION

        coll = get_db_conn()[LOCK_COLLECTION]
        a = FieldLock(ds, "out", description="model A", heartbeat_s=0.2).acquire()
        held = FieldLock.holder(ds, "frames.out")
        assert held["description"] == "model A" and held["pid"] == os.getpid()
        beat0 = held["heartbeat"]
        t0 = time.monotonic()
        with pytest.raises(FieldLockedError, match="another FRTM run is writing 'frames.out'.*model A"):
            FieldLock(ds, "out").acquire(wait_s=1.0)
        assert time.monotonic() - t0 >= 0.9  # it waited before refusing
        assert FieldLock.holder(ds, "out")["heartbeat"] > beat0  # the owner's heartbeat goes on
        # A claim deleted from under its owner: the owner notices and stops writing.
        coll.delete_one({"_id": held["_id"]})
        time.sleep(0.6)
        assert a.lost
        with pytest.raises(RuntimeError, match="taken over"):
            a.check()
        a.release()

        # A claim left by a process of this host that no longer exists is taken over at once.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        coll.insert_one(dict(held, owner="dead", pid=dead.pid))
        b = FieldLock(ds, "out").acquire()
        assert "has exited" in b.took_over["reason"]
        b.release()
        # Another host's claim: kept while its heartbeat is fresh, taken over once it is older than the expiry.
        now = get_db_conn().command("hello")["localTime"]
        coll.insert_one(dict(held, owner="remote", host="elsewhere", heartbeat=now))
        with pytest.raises(FieldLockedError, match="host elsewhere"):
            FieldLock(ds, "out", expire_s=60).acquire()
        coll.update_one({"_id": held["_id"]}, {"$set": {"heartbeat": now.replace(year=now.year - 1)}})
        c = FieldLock(ds, "out", expire_s=60).acquire()
        assert "no heartbeat for" in c.took_over["reason"]
        c.release()
        assert FieldLock.holder(ds, "out") is None
    finally:
        ds.delete()


# -- 5. 4K at the default cap ------------------------------------------------------------------------------------------

def test_4k_runs_at_the_default_cap_and_matches_the_480p_run(tmp_path, capsys):
    seq = load_sequence(DEMO, "rollerblade")
    n = 3
    frames = [seq.read_frame(i) for i in range(n)]
    gt0 = read_label_png(seq.annotation_paths[0])
    big = [cv2.resize(f, (3840, 2160), interpolation=cv2.INTER_CUBIC) for f in frames]
    gt0_big = cv2.resize(gt0, (3840, 2160), interpolation=cv2.INTER_NEAREST)
    p480 = write_video(tmp_path / "clip480.mp4", frames)
    p4k = write_video(tmp_path / "clip4k.mp4", big)
    ds480, ds4k = _dataset("guard-480", p480, [gt0]), _dataset("guard-4k", p4k, [gt0_big])
    try:
        for ds in (ds480, ds4k):
            report = frtm_plugin.propagate(ds, "prompt", "out", model="default", progress=False)
            assert report.frames == n and not report.failed
        assert frtm_plugin.run_config(ds4k, "out")["max_size"] == DEFAULT_MAX_SIZE
        m480, m4k = _masks(ds480, "out")[0], _masks(ds4k, "out")[0]
        assert m4k[1].shape == (2160, 3840)  # stored at the video's size
        ious = []
        for a, b in zip(m480[1:], m4k[1:]):
            up = cv2.resize(a, (3840, 2160), interpolation=cv2.INTER_NEAREST) == 1
            ious.append(((up & (b == 1)).sum() / (up | (b == 1)).sum()))
        with capsys.disabled():
            print(f"\n4K at the default cap vs 480p: IoU per frame {[round(float(x), 3) for x in ious]}")
        assert min(ious) > 0.9
        assert np.array_equal(m4k[0] == 1, gt0_big == 1)  # the keyframe keeps its annotation exactly
    finally:
        ds480.delete()
        ds4k.delete()


# -- 6. smaller: missing predictions are said ---------------------------------------------------------------------------

def test_missing_prediction_frames_are_reported_in_the_summary(clip, capsys):
    ds = _dataset("guard-missing", *clip)
    try:
        frtm_plugin.propagate(ds, "prompt", "pred", progress=False, **FAST)
        s = ds.first()
        s.frames[3]["pred"] = None
        s.save()
        summary = frtm_plugin.evaluate(ds, "pred", "gt", eval_key="ev", progress=False)
        assert summary["missing_predictions"] == {s.id: [3]}
        printed = capsys.readouterr().out
        assert "1 ground-truth frame(s) in 1 video(s) have no prediction in 'pred'" in printed
        assert "J = 0" in printed and "FiftyOne's pixel metrics" in printed
        assert ds.first().frames[3]["ev_J"] == 0.0  # scored as an empty mask, as the DAVIS protocol does
    finally:
        ds.delete()


def test_output_field_names():
    assert output_fields("frames.x") == {"segmentation": "x", "instances": "x_instances", "heatmap": "x_scores",
                                         "marker": "x_frtm", "keyframes": "x_frtm_keyframes"}
