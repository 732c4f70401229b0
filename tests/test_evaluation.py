"""A DAVIS evaluation is a FiftyOne evaluation like any other: renaming it moves, and deleting it removes,
everything it wrote (sample and frame fields, the per-object scores on the predicted detections, the stored
summary)."""

import contextlib

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

import frtm_plugin  # noqa: E402

N = 6


@contextlib.contextmanager
def _evaluated(name, demo_clip, video_dataset):
    """A one-video dataset of the demo clip: ground truth on every frame, a first-frame prompt, propagated D-only
    into 'p' and evaluated as 'ev'; deleted afterwards."""
    path, gts = demo_clip(N)
    ds = video_dataset(name, path)
    s = ds.first()
    for i, g in enumerate(gts):
        s.frames[i + 1]["gt"] = fo.Segmentation(mask=g.astype(np.uint8))
    s.frames[1]["prompt"] = fo.Segmentation(mask=gts[0].astype(np.uint8))
    s.save()
    try:
        frtm_plugin.propagate(ds, "prompt", "p", model="d-only", max_size=256, num_aug=1, progress=False)
        frtm_plugin.evaluate(ds, "p", "gt", eval_key="ev", progress=False)
        yield ds, gts
    finally:
        fo.delete_dataset(name)


def _leftovers(ds, key):
    """Every trace of evaluation ``key``: field names, detection attributes (in the data), the summary."""
    found = [f for f in ds.get_field_schema() if f.startswith(key + "_")]
    found += ["frames." + f for f in (ds.get_frame_field_schema(flat=True) or {})
              if f.split(".")[-1].startswith(key + "_")]
    for fr in ds.first().frames.values():
        for d in fr["p_instances"].detections:
            found += [f"detection.{k}" for k in d.field_names if k.startswith(key + "_")]
    if key in ds.info.get("frtm_evaluations", {}):
        found.append("info summary")
    return sorted(set(found))


def test_rename_and_delete_reach_everything_the_evaluation_wrote(demo_clip, video_dataset):
    with _evaluated("eval-cleanup", demo_clip, video_dataset) as (ds, gts):
        assert "ev" in ds.list_evaluations()
        before = _leftovers(ds, "ev")
        assert {"ev_J", "ev_JF", "ev_objects", "frames.ev_J", "detection.ev_J", "detection.ev_F",
                "info summary"} <= set(before), before
        value = ds.first().frames[3]["p_instances"].detections[0]["ev_J"]

        ds.rename_evaluation("ev", "ev2")
        assert _leftovers(ds, "ev") == []
        after = _leftovers(ds, "ev2")
        assert {b.replace("ev_", "ev2_") for b in before} == set(after)
        assert ds.first().frames[3]["p_instances"].detections[0]["ev2_J"] == value
        assert ds.info["frtm_evaluations"]["ev2"]["eval_key"] == "ev2"

        ds.delete_evaluation("ev2")
        assert _leftovers(ds, "ev2") == [] and "ev2" not in ds.list_evaluations()
        assert len(ds.first().frames[3]["p_instances"].detections) == 1  # the predictions themselves stay


def test_panel_numbers_equal_evaluate_sequence(demo_clip, video_dataset):
    """What the modal J&F panel plots (sdk.jf_series) is, frame by frame and object by object, what
    metrics.evaluate_sequence computes on the same masks; the worst-frames view holds the frames below a J."""
    from frtm_plugin.fo.sdk import davis_evaluation_keys, jf_series, worst_frames_view
    from frtm_plugin.metrics import evaluate_sequence

    with _evaluated("eval-panel", demo_clip, video_dataset) as (ds, gts):
        assert davis_evaluation_keys(ds) == ["ev"]
        series = jf_series(ds.first(), ds, "ev")
        pred = np.stack([fr["p"].get_mask() for fr in ds.first().frames.values()])
        res = evaluate_sequence(np.stack([g.astype(np.uint8) for g in gts]), pred)
        per_frame = res.per_frame()
        assert series["frames"] == list(range(1, N + 1)) and list(series["objects"]) == ["1"]
        for row in range(N):
            want = per_frame.get(row, {}).get(1)
            got = (series["objects"]["1"]["J"][row], series["objects"]["1"]["F"][row])
            if want is None:  # the protocol's excluded frames: the first and the last
                assert got == (None, None) and row in (0, N - 1)
            else:
                assert got == pytest.approx(want)
        assert series["keyframes"] == [1]
        worst = worst_frames_view(ds, "ev", 0.7)
        js = [j for j in series["objects"]["1"]["J"] if j is not None]
        assert worst.count("frames") == sum(j < 0.7 for j in js) > 0


def test_evaluating_again_under_the_same_key_replaces_it(demo_clip, caplog, video_dataset):
    """FiftyOne deletes the old run (our cleanup) and runs the metric again: the same summary, through the custom
    metric (no fallback), with one set of fields."""
    with _evaluated("eval-again", demo_clip, video_dataset) as (ds, _):
        first = ds.info["frtm_evaluations"]["ev"]
        with caplog.at_level("WARNING"):
            again = frtm_plugin.evaluate(ds, "p", "gt", eval_key="ev", progress=False)
        assert "did not run the DAVIS metric" not in caplog.text
        assert again["overall"] == first["overall"] and ds.list_evaluations() == ["ev"]
        custom = ds.load_evaluation_results("ev").custom_metrics["@frtm/frtm-vos/davis_jf"]
        assert custom["value"] == pytest.approx(first["overall"]["J&F"])


class _State:
    """ctx.panel.state as panels see it: attributes, None when never set."""

    def __getattr__(self, name):
        return None


def test_videos_panel_sorts_by_name_or_worst_first(tmp_path):
    from types import SimpleNamespace

    from frtm_plugin.fo.panels import JFVideosPanel

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(tmp_path / f"{n}.mp4"), ev_JF=v)
                    for n, v in (("b", 0.7), ("c", None), ("a", 0.3), ("d", 0.9))])
    ds.info["frtm_evaluations"] = {"ev": {"pred_field": "p", "overall": {"J&F": 0.63, "J": 0.6, "F": 0.66}}}
    ds.save()
    ctx = SimpleNamespace(dataset=ds, panel=SimpleNamespace(state=_State(), data=SimpleNamespace()))
    panel = JFVideosPanel()
    panel._refresh(ctx)
    bars = ctx.panel.data.bars[0]
    assert bars["x"] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"] and bars["y"] == [0.3, 0.7, None, 0.9]
    ctx.params = {"value": "worst"}
    panel.on_change_sort(ctx)
    bars = ctx.panel.data.bars[0]
    assert bars["x"] == ["a.mp4", "b.mp4", "d.mp4", "c.mp4"] and bars["y"] == [0.3, 0.7, 0.9, None]
    assert bars["ids"][0] == ds.match({"filepath": {"$regex": "a.mp4$"}}).first().id  # a click opens that video
    ds.delete()
