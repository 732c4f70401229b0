"""Coarse-score heatmaps (the paper's Figure 1 view): at the frame's size, per object on request, with a colour scale.

The map is built by the same steps that make the D-only model's probabilities, so with that model a tracked object's
heatmap is its probability; switching objects redraws only the heatmaps' maps and leaves every other label as it was.
"""

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")
import fiftyone.operators as foo  # noqa: E402

import frtm_plugin  # noqa: E402
from frtm_plugin.core.tracker import TrackerConfig, coarse_score_map, inference_size  # noqa: E402
from frtm_plugin.fo.sdk import HEATMAP_COLORSCALE  # noqa: E402
from frtm_plugin.io.video import iter_video_frames  # noqa: E402
from frtm_plugin.models import build_tracker  # noqa: E402

N_FRAMES = 8
MAX_SIZE = 256


@pytest.fixture(scope="module")
def two_objects(demo_clip):
    """The demo clip (its MP4 and its frames) with the skater split in two objects: top half 1, bottom half 2."""
    path, gts = demo_clip(N_FRAMES)
    frames = list(iter_video_frames(path))
    rows = np.flatnonzero(gts[0].any(1))
    split = (rows[0] + rows[-1]) // 2
    labels = np.zeros(gts[0].shape, np.uint8)
    labels[:split][gts[0][:split]] = 1
    labels[split:][gts[0][split:]] = 2
    return path, frames, labels


def test_heatmap_of_the_d_only_model_is_its_probability(two_objects):
    _, frames, labels = two_objects
    tracker, _ = build_tracker("d-only", config=TrackerConfig(max_size=MAX_SIZE))
    frame_hw = frames[0].shape[:2]
    hw = inference_size(frame_hw, MAX_SIZE)
    assert hw != frame_hw  # the map goes through both resizes
    tracker.step(frames[0], {1: labels == 1})
    out = tracker.step(frames[1])
    heat = coarse_score_map(out.coarse_scores[1].cpu().numpy(), hw, frame_hw)
    assert heat.shape == frame_hw and heat.min() >= 0.0 and heat.max() <= 1.0
    # the heatmap is D's score; D-only's probability is that score through the model's gain about 0.5
    gain = tracker.config.d_only_gain
    assert gain is not None and gain > 1
    # (exactly, but for the pixels next to where the mapped score meets its clamps: the probability is clamped at the
    # inference size and then resized to the frame's, the heatmap resized first)
    diff = np.abs(np.clip(0.5 + gain * (heat - 0.5), 0, 1) - out.probabilities[1].cpu().numpy())
    assert (diff < 1e-5).mean() > 0.97 and diff.max() < 0.1, ((diff >= 1e-5).mean(), diff.max())
    assert np.array_equal(heat > 0.5, out.probabilities[1].cpu().numpy() > 0.5)


def _dataset(name, two_objects, video_dataset, scheme=None):
    path, _, labels = two_objects
    ds = video_dataset(name, path)
    s = ds.first()
    s.frames[1]["prompt"] = fo.Segmentation(mask=labels)
    s.save()
    if scheme is not None:
        ds.app_config.color_scheme = scheme
        ds.save()
    return ds


def _maps(ds, field="out_scores"):
    return [None if fr[field] is None else fr[field].map.copy() for fr in ds.first().frames.values()]


def test_heatmaps_per_object_on_request(two_objects, video_dataset):
    """Stored at the frame's size (uint8, 255 = score 1) as the max over objects; show_heatmap redraws one object's
    scores (equal to coarse_score_map of its stored scores) and back, and touches nothing else."""
    _, frames, _ = two_objects
    user_scale = {"path": "frames.gt", "name": "viridis"}
    ds = _dataset("heatmaps", two_objects, video_dataset, fo.ColorScheme(colorscales=[user_scale], opacity=0.5))
    frtm_plugin.propagate(ds, "prompt", "out", model="d-only", max_size=MAX_SIZE, store_heatmaps=True,
                          progress=False)
    frame_hw = frames[0].shape[:2]
    hm = ds.first().frames[3]["out_scores"]
    assert hm.map.dtype == np.uint8 and hm.map.shape == frame_hw and hm.range == [0, 255]
    assert hm.object_ids == [1, 2] and hm.object_scores.dtype == np.float16 and hm.shown is None
    per_object = [coarse_score_map(hm.object_scores[r], hm.inference_size, frame_hw) for r in range(2)]
    np.testing.assert_array_equal(hm.map, np.round(np.maximum(*per_object) * 255).astype(np.uint8))
    assert hm.map.max() > 200 and hm.map.min() < 30  # the objects stand out of the background

    scheme = ds.app_config.color_scheme  # the plugin's scale for its field; the user's scheme kept
    assert user_scale in scheme.colorscales and scheme.opacity == 0.5
    assert {"path": "frames.out_scores", "name": HEATMAP_COLORSCALE} in scheme.colorscales

    def digest(field):
        return [None if fr[field] is None else fr[field].to_json() for fr in ds.first().frames.values()]

    before_all, before_seg, before_inst = _maps(ds), digest("out"), digest("out_instances")
    assert frtm_plugin.show_heatmap(ds, "frames.out", 2) == N_FRAMES - 1  # no scores on the prompt's frame
    shown = ds.first().frames[3]["out_scores"]
    assert shown.shown == 2
    np.testing.assert_array_equal(shown.map, np.round(per_object[1] * 255).astype(np.uint8))
    assert not np.array_equal(shown.map, hm.map)
    assert digest("out") == before_seg and digest("out_instances") == before_inst
    frtm_plugin.show_heatmap(ds, "out_scores", None)  # the heatmap field itself, and back to all objects
    after = _maps(ds)
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(after, before_all))

    with pytest.raises(ValueError, match=r"object 5 has no scores.*\[1, 2\]"):
        frtm_plugin.show_heatmap(ds, "out", 5)
    with pytest.raises(ValueError, match="store_heatmaps=True"):
        frtm_plugin.show_heatmap(ds, "prompt", None)
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(_maps(ds), after))
    ds.delete()


def test_show_heatmap_operator(two_objects, video_dataset):
    ds = _dataset("heatmaps-op", two_objects, video_dataset)
    frtm_plugin.propagate(ds, "prompt", "out", model="d-only", max_size=MAX_SIZE, store_heatmaps=True,
                          progress=False)
    uri = "@frtm/frtm-vos/show_heatmap"
    result = foo.execute_operator(uri, ctx={"dataset": ds, "params": {"field": "out_scores", "object": "1"}})
    assert result.error is None and result.result["frames"] == N_FRAMES - 1
    assert ds.first().frames[2]["out_scores"].shown == 1
    # The form offers the objects the heatmaps hold.
    import asyncio

    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    request = {"dataset_name": ds.name, "params": {"field": "out_scores"}}
    form = asyncio.run(resolve_type(OperatorRegistry(), uri, request))
    choices = [c["value"] for c in form.to_json()["type"]["properties"]["object"]["view"]["choices"]]
    assert choices == ["all", "1", "2"]
    ds.delete()
