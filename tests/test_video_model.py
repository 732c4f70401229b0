"""FRTM as a FiftyOne video model: ``apply_model(model, prompt_field=...)`` equals the SDK's ``propagate``; the
zoo source in this checkout registers and loads (served over a local HTTP server, as a URL source is)."""

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

import frtm_plugin  # noqa: E402

FAST = dict(max_size=256, num_aug=1)
N = 6


def _dataset(name, demo_clip, video_dataset):
    path, gts = demo_clip(N)
    ds = video_dataset(name, path)
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


def test_apply_model_equals_propagate_frame_by_frame(demo_clip, video_dataset):
    ds = _dataset("video-model", demo_clip, video_dataset)
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


def test_bad_options_and_missing_prompt_field_say_what_to_do(demo_clip, video_dataset):
    with pytest.raises(TypeError, match="unknown option"):
        frtm_plugin.load_model("d-only", max_sise=3)
    with pytest.raises(ValueError, match="output must be one of"):
        frtm_plugin.load_model("d-only", output="masks")
    ds = _dataset("video-model-bad", demo_clip, video_dataset)
    try:
        model = frtm_plugin.load_model("d-only", **FAST)
        with pytest.raises(ValueError, match="no prompt field: pass prompt_field="):
            ds.apply_model(model, label_field="x", skip_failures=False)
        with pytest.raises(ValueError, match="Frame field 'nothing' does not exist"):  # FiftyOne's own check
            ds.apply_model(model, label_field="x", prompt_field="frames.nothing", skip_failures=False)
        assert not ds.has_frame_field("x")
    finally:
        fo.delete_dataset(ds.name)


def test_zoo_source_registers_and_loads_from_this_checkout(tmp_path, monkeypatch):
    """The checkout as a remotely-sourced zoo source: an archive of it served over HTTP on localhost (a URL source,
    as users register a GitHub repository), registered into a scratch zoo folder, then loaded by name."""
    import functools
    import http.server
    import json
    import tarfile
    import threading
    from pathlib import Path

    import fiftyone.zoo as foz

    root = Path(__file__).resolve().parents[1]
    manifest = json.loads((root / "manifest.json").read_text())
    names = [m["base_name"] for m in manifest["models"]]
    assert names == ["frtm-vos-default"]
    archive = tmp_path / "serve" / "frtm-vos.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("manifest.json", "__init__.py", "fiftyone.yml"):
            tar.add(root / name, arcname=f"frtm-vos/{name}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_path / "zoo"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        foz.register_zoo_model_source(url)
        assert url in foz.list_zoo_model_sources()
        assert "frtm-vos-default" in foz.list_zoo_models(source=url)
        model = foz.load_zoo_model("frtm-vos-default", max_size=256, prompt_field="frames.prompts")
        assert model.media_type == "video" and model.needs_fields == {"prompt_field": "frames.prompts"}
        assert model.info.segnet_path.endswith("frtm_mobilenet_v2_davis16.pth")
    finally:
        server.shutdown()
