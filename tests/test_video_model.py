"""FRTM as a FiftyOne video model: ``apply_model(model, prompt_field=...)`` equals the SDK's ``propagate``; the
zoo source in this checkout registers and loads (served over a local HTTP server, as a URL source is)."""

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

import frtm_plugin  # noqa: E402

FAST = dict(max_size=256, num_aug=1)
N = 6


def _dataset(name, demo_clip):
    path, gts = demo_clip(N)
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.add_sample(fo.Sample(filepath=str(path)))
    s = ds.first()
    rows, cols = np.flatnonzero(gts[2].any(1)), np.flatnonzero(gts[2].any(0))
    h, w = gts[2].shape
    box = [cols[0] / w, rows[0] / h, (cols[-1] + 1 - cols[0]) / w, (rows[-1] + 1 - rows[0]) / h]
    crop = gts[2][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    s.frames[3]["prompts"] = fo.Detections(detections=[fo.Detection(label="skater", bounding_box=box, mask=crop,
                                                                      instance=fo.Instance(), keyframe=True)])
    s.save()
    return ds


def _masks(dets, hw=(480, 854)):
    from frtm_plugin.fo.labels import detection_to_mask

    return {d.index: detection_to_mask(d, hw) for d in dets.detections}


def test_apply_model_equals_propagate_frame_by_frame(demo_clip):
    ds = _dataset("video-model", demo_clip)
    try:
        frtm_plugin.propagate(ds, "frames.prompts", "sdk", model="d-only", progress=False, **FAST)
        model = frtm_plugin.load_model("d-only", **FAST)
        assert model.media_type == "video"
        ds.apply_model(model, label_field="am", prompt_field="frames.prompts", skip_failures=False)
        s = ds.first()
        assert len(s.frames) == N
        for n, frame in s.frames.items():
            a, b = frame["am"], frame["sdk_instances"]
            assert [d.index for d in a.detections] == [d.index for d in b.detections] == [1], n
            ma, mb = _masks(a), _masks(b)
            assert np.array_equal(ma[1], mb[1]), n
            assert a.detections[0].instance_id == b.detections[0].instance_id
            assert a.detections[0].label == "skater"
        # both outputs, and the field spelled without "frames."
        both = frtm_plugin.load_model("d-only", output="both", prompt_field="prompts", **FAST)
        ds.apply_model(both, label_field="am2", skip_failures=False)
        fr = ds.first().frames[2]
        assert np.array_equal(fr["am2_segmentation"].mask == 1, _masks(fr["am2_instances"])[1])
        assert np.array_equal(fr["am2_segmentation"].mask, fr["sdk"].mask)
    finally:
        fo.delete_dataset(ds.name)


def test_bad_options_and_missing_prompt_field_say_what_to_do(demo_clip):
    with pytest.raises(TypeError, match="unknown option"):
        frtm_plugin.load_model("d-only", max_sise=3)
    with pytest.raises(ValueError, match="output must be one of"):
        frtm_plugin.load_model("d-only", output="masks")
    ds = _dataset("video-model-bad", demo_clip)
    try:
        model = frtm_plugin.load_model("d-only", **FAST)
        with pytest.raises(ValueError, match="no prompt field: pass prompt_field="):
            ds.apply_model(model, label_field="x", skip_failures=False)
        with pytest.raises(ValueError, match="Frame field 'nothing' does not exist"):  # FiftyOne's own check
            ds.apply_model(model, label_field="x", prompt_field="frames.nothing", skip_failures=False)
        assert not ds.has_frame_field("x")
    finally:
        fo.delete_dataset(ds.name)
