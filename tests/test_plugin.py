"""The FiftyOne plugin: operators run through FiftyOne's operator execution (immediate and delegated), against a
throwaway database (see conftest.py), compared frame by frame with the SDK; bad input; kill and resume."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")
import fiftyone.operators as foo  # noqa: E402
from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402

import frtm_plugin  # noqa: E402
from frtm_plugin.io.davis import load_sequence  # noqa: E402
from frtm_plugin.io.labels import read_label_png  # noqa: E402
from frtm_plugin.io.video import write_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
FAST = dict(model="d-only", max_size=256)
N_FRAMES = 8


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The demo clip's first frames as an H.264 MP4, with its ground-truth masks."""
    seq = load_sequence(DEMO, "rollerblade")
    path = tmp_path_factory.mktemp("media") / "rollerblade.mp4"
    write_video(path, [seq.read_frame(i) for i in range(N_FRAMES)])
    gts = [read_label_png(seq.annotation_paths[i]) for i in range(N_FRAMES)]
    return path, gts


def _dataset(name, clip, n_videos=1, prompt=True, persistent=False):
    path, gts = clip
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=persistent)
    samples = [fo.Sample(filepath=str(path)) for _ in range(n_videos)]
    ds.add_samples(samples)
    for s in ds.iter_samples(autosave=True):
        for i, gt in enumerate(gts):
            s.frames[i + 1]["gt"] = fo.Segmentation(mask=gt)
        if prompt:
            s.frames[1]["prompt"] = fo.Segmentation(mask=gts[0])
    return ds


def _masks(ds, field):
    return [[None if fr[field] is None else fr[field].get_mask() for fr in s.frames.values()]
            for s in ds.select_fields(f"frames.{field}")]


def _run_op(uri, ds, params, delegate=False):
    if delegate:
        params = dict(params, delegate=True)
    result = foo.execute_operator(uri, ctx={"dataset": ds, "params": params})
    if delegate:
        DelegatedOperationService().execute_queued_operations(dataset_name=ds.name)
        ds.reload()
    return result


def test_plugin_is_registered():
    uris = {op.uri for op in foo.list_operators()}
    assert {"@frtm/frtm-vos/propagate", "@frtm/frtm-vos/evaluate", "@frtm/frtm-vos/davis_jf",
            "@frtm/frtm-vos/frtm_jf_timeline", "@frtm/frtm-vos/frtm_jf_videos"} <= uris


@pytest.mark.parametrize("delegate", [False, True])
def test_propagate_operator_equals_sdk(clip, delegate):
    ds = _dataset(f"op-{delegate}", clip, persistent=delegate)
    try:
        report = frtm_plugin.propagate(ds, "prompt", "sdk", progress=False, **FAST)
        assert len(report.processed) == 1 and report.frames == N_FRAMES
        result = _run_op("@frtm/frtm-vos/propagate", ds, {"prompt_field": "prompt", "label_field": "op", **FAST},
                         delegate)
        if not delegate:
            assert result.error is None and result.result["processed"] == 1
        else:
            ops = DelegatedOperationService().list_operations(dataset_name=ds.name)
            assert [o.run_state for o in ops] == ["completed"]
            assert ops[0].status.progress == 1.0 and "1 video(s) propagated" in ops[0].status.label
        sdk, op = _masks(ds, "sdk"), _masks(ds, "op")
        assert len(op[0]) == N_FRAMES
        for a, b in zip(sdk[0], op[0]):
            assert np.array_equal(a, b)
        # Instances: one detection per object, index = object id, confidence in (0, 1].
        for fr in ds.first().frames.values():
            dets = fr["op_instances"].detections
            assert len(dets) == 1 and dets[0].index == 1 and 0 < dets[0].confidence <= 1
            assert [d.confidence for d in dets] == [d.confidence for d in fr["sdk_instances"].detections]
        # The first frame's mask is the prompt itself; later frames follow the object.
        gts = clip[1]
        assert np.array_equal(op[0][0] == 1, gts[0] == 1)
        inter = ((op[0][-1] == 1) & (gts[-1] == 1)).sum()
        assert inter / ((op[0][-1] == 1) | (gts[-1] == 1)).sum() > 0.4
        cfg = frtm_plugin.run_config(ds, "op")
        assert cfg["model"] == "d-only" and cfg["max_size"] == 256 and cfg["solver"]["channels"] == 96
        assert cfg["status"] == "done" and cfg["processed"] == 1
        if not delegate:  # the form's "Search the whole frame" runs without the search window
            whole = _run_op("@frtm/frtm-vos/propagate", ds, {"prompt_field": "prompt", "label_field": "op",
                                                              "whole_frame": True, **FAST})
            assert whole.error is None and whole.result["processed"] == 1  # another configuration: redone
            assert frtm_plugin.run_config(ds, "op")["search_margin"] == math.inf
    finally:
        ds.delete()


def test_resume_skips_done_videos_and_overwrite_redoes_them(clip):
    ds = _dataset("resume", clip, n_videos=2)
    first = frtm_plugin.propagate(ds, "prompt", "p", progress=False, **FAST)
    assert len(first.processed) == 2
    again = frtm_plugin.propagate(ds, "prompt", "p", progress=False, **FAST)
    assert again.processed == [] and len(again.skipped) == 2
    other = frtm_plugin.propagate(ds, "prompt", "p", progress=False, model="d-only", max_size=200)
    assert len(other.processed) == 2  # another configuration: not the same result, so redone
    forced = frtm_plugin.propagate(ds, "prompt", "p", progress=False, overwrite=True, model="d-only", max_size=200)
    assert len(forced.processed) == 2
    # the run records the settings the tracker ran with, the model's own filled in: another search window redoes
    cfg = frtm_plugin.run_config(ds, "p")
    assert cfg["search_margin"] == 0.25 and cfg["d_only_gain"] == 2.0 and cfg["solver"]["learning_rate"] == 0.025
    whole = frtm_plugin.propagate(ds, "prompt", "p", progress=False, model="d-only", max_size=200,
                                  search_margin=math.inf)
    assert len(whole.processed) == 2 and frtm_plugin.run_config(ds, "p")["search_margin"] == math.inf
    ds.delete()


def test_heatmaps_and_detection_prompts(clip):
    """Detections with instance masks as prompts (index = object id) and the coarse-score heatmap."""
    ds = _dataset("dets", clip, prompt=False)
    gt0 = clip[1][0] == 1
    s = ds.first()
    rows, cols = np.flatnonzero(gt0.any(1)), np.flatnonzero(gt0.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = gt0.shape
    det = fo.Detection(label="skater", index=7, bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
                       mask=gt0[y0:y1, x0:x1])
    s.frames[1]["boxes"] = fo.Detections(detections=[det])
    s.save()
    frtm_plugin.propagate(ds, "frames.boxes", "out", store_heatmaps=True, progress=False, **FAST)
    fr = ds.first().frames
    assert np.array_equal(fr[1]["out"].get_mask() == 7, gt0)  # the prompt round-trips through the box
    assert fr[3]["out_instances"].detections[0].label == "skater"
    assert fr[1]["out_scores"] is None  # no coarse score on the start frame
    hm = fr[3]["out_scores"]
    assert hm.map.dtype == np.uint8 and hm.map.shape == gt0.shape and hm.range == [0, 255]  # at the frame's size
    assert hm.object_ids == [7] and hm.object_scores.shape == (1, 9, 16)  # and D's own grid, per object
    ds.delete()


def test_evaluate_operator_and_sdk(clip):
    ds = _dataset("eval", clip)
    frtm_plugin.propagate(ds, "prompt", "pred", progress=False, **FAST)
    summary = frtm_plugin.evaluate(ds, "pred", "gt", eval_key="sdk", progress=False)
    result = _run_op("@frtm/frtm-vos/evaluate", ds, {"pred_field": "pred", "gt_field": "gt", "eval_key": "op"})
    assert result.error is None
    assert abs(result.result["J&F"] - summary["overall"]["J&F"]) < 1e-12
    # Registered with FiftyOne's own evaluation, the DAVIS metric as its custom metric.
    assert {"sdk", "op"} <= set(ds.list_evaluations())
    custom = ds.load_evaluation_results("op").custom_metrics["@frtm/frtm-vos/davis_jf"]
    assert abs(custom["value"] - summary["overall"]["J&F"]) < 1e-12 and custom["lower_is_better"] is False
    # Per frame, per object, per video; first and last frames excluded as in the DAVIS protocol.
    s = ds.first()
    values = [fr["op_JF"] for fr in s.frames.values()]
    assert values[0] is None and values[-1] is None and all(v is not None for v in values[1:-1])
    from frtm_plugin.metrics import evaluate_sequence

    pred = np.stack(_masks(ds, "pred")[0])
    ref = evaluate_sequence(np.stack(clip[1]), pred)
    assert abs(s["op_JF"] - ref.JF_mean) < 1e-12 and abs(s["op_J"] - ref.J_mean) < 1e-12
    assert set(s["op_objects"]) == {"1"}
    det = s.frames[3]["pred_instances"].detections[0]
    assert abs(det["op_J"] - ref.objects[1].J[1]) < 1e-12  # frame 3 is the second scored frame
    # Sortable in the App: the sample field is a float field.
    assert isinstance(ds.get_field("op_JF"), fo.FloatField)
    ds.delete()


# -- bad input ------------------------------------------------------------------------------------------------------

def test_bad_fields_are_clear_errors_and_write_nothing(clip):
    ds = _dataset("bad", clip)
    with pytest.raises(ValueError, match="'frames.nope' does not exist"):
        frtm_plugin.propagate(ds, "nope", "out", progress=False, **FAST)
    ds.first().frames[1]["cls"] = fo.Classification(label="x")
    ds.first().save()
    s = ds.first()
    s.frames[1]["cls"] = fo.Classification(label="x")
    s.save()
    with pytest.raises(ValueError, match="prompts must be Segmentation masks or Detections"):
        frtm_plugin.propagate(ds, "cls", "out", progress=False, **FAST)
    # An output field that exists with another type: refused, its labels untouched.
    with pytest.raises(ValueError, match="'frames.cls' already holds Classification"):
        frtm_plugin.propagate(ds, "prompt", "cls", progress=False, **FAST)
    assert ds.first().frames[1]["cls"].label == "x"
    assert "out" not in ds.get_frame_field_schema()
    ds.delete()


def test_bad_videos_are_reported_and_skipped(clip, tmp_path):
    """No prompt, a prompt mask of the wrong size, a corrupt file, a zero-frame file: each reported and skipped,
    the good video processed, and labels already stored on the bad ones left intact."""
    ds = _dataset("badvideos", clip, n_videos=2)
    no_prompt, wrong_size = list(ds)
    no_prompt.frames[1].clear_field("prompt")
    no_prompt.save()
    wrong_size.frames[1]["prompt"] = fo.Segmentation(mask=clip[1][0][:, :-2])
    wrong_size.frames[2]["out"] = fo.Segmentation(mask=np.full((480, 854), 9, np.uint8))  # an earlier label
    wrong_size.save()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    good = _dataset("good-tmp", clip)  # a good video, added to the same dataset
    extra = [fo.Sample(filepath=str(corrupt)), fo.Sample(filepath=str(empty)), good.first().copy()]
    good.delete()
    for e in extra[:2]:
        e.frames[1]["prompt"] = fo.Segmentation(mask=clip[1][0])
    ds.add_samples(extra)
    report = frtm_plugin.propagate(ds, "prompt", "out", progress=False, force=True, **FAST)
    assert len(report.processed) == 1 and len(report.failed) == 4
    reasons = " | ".join(report.failed.values())
    assert "no prompt" in reasons and "480x852" in reasons and "corrupt.mp4" in reasons and "empty.mp4" in reasons
    ds.reload()
    kept = ds[wrong_size.id].frames[2]["out"].get_mask()
    assert (kept == 9).all()  # untouched
    ds.delete()


# -- a delegated run killed halfway, then resumed --------------------------------------------------------------------

WORKER = """
from fiftyone.operators.delegated import DelegatedOperationService
DelegatedOperationService().execute_queued_operations(dataset_name={name!r})
"""


@pytest.mark.slow
def test_killed_delegated_run_resumes_to_complete_labels(clip):
    name, n_videos = "killed", 4
    ds = _dataset(name, clip, n_videos=n_videos, persistent=True)
    try:
        params = {"prompt_field": "prompt", "label_field": "out", "model": "d-only", "max_size": 256,
                  "delegate": True}
        foo.execute_operator("@frtm/frtm-vos/propagate", ctx={"dataset": ds, "params": params})
        worker = subprocess.Popen([sys.executable, "-c", WORKER.format(name=name)], env=os.environ.copy(),
                                  start_new_session=True)
        deadline = time.time() + 240
        done = 0
        while time.time() < deadline and worker.poll() is None:
            ds.reload()
            done = len(ds.exists("out_frtm").match(fo.ViewField("out_frtm") != None))  # noqa: E711
            if done >= 1:
                break
            time.sleep(0.2)
        assert worker.poll() is None, "the worker finished before it could be interrupted"
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and anything it started
        worker.wait()
        ds.reload()
        finished = ds.match(fo.ViewField("out_frtm") != None)  # noqa: E711
        assert 1 <= len(finished) < n_videos, "kill should land halfway"

        # Resume: the same operation again; finished videos are skipped, the rest (re)done.
        foo.execute_operator("@frtm/frtm-vos/propagate", ctx={"dataset": ds, "params": params})
        DelegatedOperationService().execute_queued_operations(dataset_name=name)
        ds.reload()
        assert len(ds.match(fo.ViewField("out_frtm") != None)) == n_videos  # noqa: E711
        reference = None
        for s in ds:
            frames = list(s.frames.values())
            assert len(frames) == N_FRAMES
            masks = [fr["out"].get_mask() for fr in frames]
            assert all(len(fr["out_instances"].detections) == 1 for fr in frames)  # none duplicated
            if reference is None:
                reference = masks
            assert all(np.array_equal(a, b) for a, b in zip(masks, reference))  # all videos complete and equal
    finally:
        ds.delete()


def test_demo_builds_scores_and_keeps_the_dataset(capsys):
    """The README's main job, on a smaller setting: persistent dataset, operator run, J&F printed."""
    from frtm_plugin.fo.demo import run_demo

    out = run_demo("demo-test", model="d-only", max_size=256)
    printed = capsys.readouterr().out
    ds = fo.load_dataset("demo-test")
    try:
        assert ds.persistent and len(ds) == 1 and ds.count("frames") == 35
        assert out["propagate"]["frames"] == 35 and out["propagate"]["failed"] == {}
        assert 0.3 < out["evaluate"]["J&F"] <= 1
        assert "DAVIS J&F" in printed and "FPS" in printed and "app launch demo-test" in printed
        assert ds.first()["davis_JF"] == pytest.approx(out["evaluate"]["J&F"])
        # Ready to annotate in the App: an App-style prompt field with its schema active, and outputs as tracks.
        assert "frames.prompts" in ds.active_label_schemas
        first = ds.first().frames[1]["prompts"].detections[0]
        assert first["keyframe"] is True and first.instance_id is not None
        instances = {d.instance_id for fr in ds.first().frames.values() for d in fr["frtm_instances"].detections}
        assert instances == {first.instance_id}
    finally:
        ds.delete()


def test_form_takes_both_field_spellings_and_refuses_bad_input_without_raising(clip):
    """FiftyOne's own spelling 'frames.name' and the bare name both run; a field that is not a prompt, or a dataset
    without one, makes the form invalid (a message, no KeyError from execute)."""
    ds = _dataset("form", clip)
    try:
        for spelling, out in (("frames.prompt", "a"), ("prompt", "b")):
            result = _run_op("@frtm/frtm-vos/propagate", ds, {"prompt_field": spelling, "label_field": out, **FAST})
            assert result.error is None and result.result["processed"] == 1, result.error
            assert isinstance(result.result["fps"], float) and result.result["fps"] == round(result.result["fps"], 2)
        assert np.array_equal(ds.first().frames[4]["a"].get_mask(), ds.first().frames[4]["b"].get_mask())
        from fiftyone.operators.executor import ExecutionError

        with pytest.raises(ExecutionError, match="Validation error.*'frames.gtx' is not a prompt field"):
            _run_op("@frtm/frtm-vos/propagate", ds, {"prompt_field": "frames.gtx", "label_field": "c", **FAST})
        assert "c" not in ds.get_frame_field_schema()
        empty = fo.Dataset("form-empty")
        empty.add_sample(fo.Sample(filepath=str(clip[0])))
        with pytest.raises(ExecutionError, match="Validation error.*no prompt field"):
            _run_op("@frtm/frtm-vos/propagate", empty, {"prompt_field": "prompt", "label_field": "c"})
        empty.delete()
    finally:
        ds.delete()
