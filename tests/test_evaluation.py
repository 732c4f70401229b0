"""A DAVIS evaluation is a FiftyOne evaluation like any other: renaming it moves, and deleting it removes,
everything it wrote (sample and frame fields, the per-object scores on the predicted detections, the stored
summary)."""

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

import frtm_plugin  # noqa: E402

N = 6


def _leftovers(ds, key):
    """Every trace of evaluation ``key``: field names, detection attributes (in the data), the summary."""
    found = [f for f in ds.get_field_schema() if f.startswith(key + "_")]
    found += ["frames." + f for f in (ds.get_frame_field_schema(flat=True) or {}) if f.split(".")[-1].startswith(key + "_")]
    for fr in ds.first().frames.values():
        for d in fr["p_instances"].detections:
            found += [f"detection.{k}" for k in d.field_names if k.startswith(key + "_")]
    if key in ds.info.get("frtm_evaluations", {}):
        found.append("info summary")
    return sorted(set(found))


def test_rename_and_delete_reach_everything_the_evaluation_wrote(demo_clip):
    path, gts = demo_clip(N)
    if fo.dataset_exists("eval-cleanup"):
        fo.delete_dataset("eval-cleanup")
    ds = fo.Dataset("eval-cleanup")
    ds.add_sample(fo.Sample(filepath=str(path)))
    s = ds.first()
    for i, g in enumerate(gts):
        s.frames[i + 1]["gt"] = fo.Segmentation(mask=g.astype(np.uint8))
    s.frames[1]["prompt"] = fo.Segmentation(mask=gts[0].astype(np.uint8))
    s.save()
    try:
        frtm_plugin.propagate(ds, "prompt", "p", model="d-only", max_size=256, num_aug=1, progress=False)
        frtm_plugin.evaluate(ds, "p", "gt", eval_key="ev", progress=False)
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
    finally:
        fo.delete_dataset(ds.name)
