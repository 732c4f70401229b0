"""Re-propagation after a correction is incremental: only the frames the changed keyframe can change are rewritten,
every other stored label stays byte for byte. Real clip (the shipped demo clip), D-only at a small size."""

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

import frtm_plugin  # noqa: E402
from frtm_plugin.core.prompts import changed_spans, keyframe_digests  # noqa: E402
FAST = dict(model="d-only", max_size=256, num_aug=1)
N = 12


def test_changed_spans():
    m = np.zeros((4, 4), bool)
    m[1, 1] = True
    m2 = m.copy()
    m2[2, 2] = True
    old = keyframe_digests({0: {1: m, 2: m}, 6: {1: m}, 11: {1: m}})
    new = keyframe_digests({0: {1: m, 2: m}, 6: {1: m}, 8: {1: m2}, 11: {1: m}})
    assert changed_spans(old, new, N, "both") == {1: (6, 11)}  # between the neighbouring keyframes
    assert changed_spans(old, new, N, "forward") == {1: (8, 11)}  # forward: from the new keyframe on
    edited = keyframe_digests({0: {1: m, 2: m2}, 6: {1: m}, 11: {1: m}})
    assert changed_spans(old, edited, N, "both") == {2: (0, N - 1)}  # object 2's only keyframe: the whole video
    removed = keyframe_digests({0: {1: m, 2: m}, 11: {1: m}})
    assert changed_spans(old, removed, N, "both") == {1: (0, 11)}
    assert changed_spans(old, old, N, "both") == {}


@pytest.fixture(scope="module")
def clip(demo_clip):
    return demo_clip(N)



def _one_video(name, path):
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.add_sample(fo.Sample(filepath=str(path)))
    return ds

def _snapshot(ds):
    s = ds.first()
    return {fn: (fr["out"].get_mask().copy(), fr["out_instances"].to_json()) for fn, fr in s.frames.items()}


def test_one_added_keyframe_rewrites_only_its_span(clip):
    path, gts = clip
    ds = _one_video("incremental", path)
    try:
        ground = np.zeros(gts[0].shape, bool)
        ground[400:470, 500:700] = True  # a second object: a patch of ground, annotated once
        s = ds.first()
        for k in (0, 6, 11):
            lm = np.zeros(gts[0].shape, np.uint8)
            lm[gts[k]] = 1
            if k == 0:
                lm[ground] = 2
            s.frames[k + 1]["prompt"] = fo.Segmentation(mask=lm)
        s.save()
        first = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        assert first.recomputed[s.id] == N
        before = _snapshot(ds)

        # The user corrects the skater on frame 8 (index 8): only frames 6..11 can change.
        s = ds.first()
        lm = np.zeros(gts[0].shape, np.uint8)
        lm[gts[8]] = 1
        s.frames[9]["prompt"] = fo.Segmentation(mask=lm)
        s.save()
        again = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        assert again.reasons[s.id] == "its prompts changed since it was propagated"
        assert again.recomputed[s.id] == 6 and again.keyframes[s.id] == 5
        after = _snapshot(ds)
        for fn in range(1, 7):  # frames 0..5: byte for byte as stored
            assert np.array_equal(before[fn][0], after[fn][0]) and before[fn][1] == after[fn][1], fn
        assert np.array_equal(after[9][0] == 1, gts[8])  # the new keyframe, exactly
        for fn in range(7, N + 1):  # the ground patch keeps its pixels except where the skater now is
            old2, new2 = before[fn][0] == 2, after[fn][0] == 2
            assert np.array_equal(new2, old2 & (after[fn][0] != 1)), fn
        assert ds.first()["out_frtm"] is not None  # done again
        third = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **FAST)
        assert third.processed == [] and len(third.skipped) == 1
    finally:
        ds.delete()


def _detection(mask, instance):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return fo.Detection(label="skater", instance=instance, keyframe=True, mask=mask[rows[0]:rows[-1] + 1,
                                                                                  cols[0]:cols[-1] + 1],
                        bounding_box=[cols[0] / w, rows[0] / h, (cols[-1] + 1 - cols[0]) / w,
                                      (rows[-1] + 1 - rows[0]) / h])


def test_what_a_span_cannot_hold_is_recomputed_in_full(clip):
    """Heatmaps (per frame, of all objects) and a "not visible" keyframe alone in its span (forward: the object must
    be tracked from before it) make the next run redo the whole video instead of a span, and it succeeds."""
    path, gts = clip
    ds = _one_video("incremental-full", path)
    try:
        skater = fo.Instance()
        s = ds.first()
        s.frames[1]["prompt"] = fo.Detections(detections=[_detection(gts[0], skater)])
        s.save()
        opts = dict(FAST, direction="forward", store_heatmaps=True)
        assert frtm_plugin.propagate(ds, "prompt", "out", progress=False, **opts).recomputed[s.id] == N
        hidden = _detection(gts[6], skater)
        hidden.mask = np.zeros_like(hidden.mask)  # "not visible here" on frame 6
        s.frames[7]["prompt"] = fo.Detections(detections=[hidden])
        s.save()
        again = frtm_plugin.propagate(ds, "prompt", "out", progress=False, **opts)
        assert not again.failed and again.recomputed[s.id] == N  # the whole video, not the span 6..11
        frames = ds.first().frames
        assert not frames[7]["out"].get_mask().any() and (frames[6]["out"].get_mask() == 1).any()
        # rewritten with the rest (D has no scores on its keyframes, frames 1 and 7)
        assert all(frames[n]["out_scores"] is not None for n in range(1, N + 1) if n not in (1, 7))
    finally:
        ds.delete()
