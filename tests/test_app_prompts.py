"""Prompts stored the way FiftyOne 1.22's App stores video annotations (measured there): one ``fo.Instance`` per drawn
object on all its labels, ``keyframe=True`` where drawn or edited, copies with ``keyframe=False`` (box only) on later
frames, brush masks at screen resolution, boxes without masks, polylines. Real clip (the shipped demo clip)."""

import cv2
import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

import frtm_plugin  # noqa: E402
from frtm_plugin.fo.labels import prompt_digest, read_prompts  # noqa: E402
FAST = dict(model="d-only", max_size=256, num_aug=1)
N = 8
HW = (480, 854)


@pytest.fixture(scope="module")
def clip(demo_clip):
    return demo_clip(N)


def _box(mask):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return [cols[0] / w, rows[0] / h, (cols[-1] + 1 - cols[0]) / w, (rows[-1] + 1 - rows[0]) / h], \
        (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)


def _app_detection(mask, instance, label="skater", screen_scale=1.2, keyframe=True, with_mask=True):
    """A detection as the App stores a brush mask: mask at screen resolution (not the box's pixel size)."""
    box, (y0, y1, x0, x1) = _box(mask)
    det = fo.Detection(label=label, bounding_box=box, instance=instance, keyframe=keyframe)
    if with_mask:
        crop = mask[y0:y1, x0:x1].astype(np.uint8)
        det.mask = cv2.resize(crop, (round((x1 - x0) * screen_scale), round((y1 - y0) * screen_scale)),
                              interpolation=cv2.INTER_NEAREST) > 0
    return det


def _dataset(name, clip):
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.add_sample(fo.Sample(filepath=str(clip[0])))
    for s in ds.iter_samples(autosave=True):
        for i, gt in enumerate(clip[1]):
            s.frames[i + 1]["gt"] = fo.Segmentation(mask=gt.astype(np.uint8))
    return ds


def _labels(ds, field):
    return [fr[field].get_mask() for fr in ds.first().frames.values()]


def test_app_keyframe_with_copies_and_a_screen_size_mask(clip):
    """A mask painted on a middle frame, copied by the App onto later frames as boxes (keyframe=False): only the
    keyframe is a prompt; with direction both every frame is labelled; outputs share the prompt's instance."""
    ds = _dataset("app-brush", clip)
    try:
        gts = clip[1]
        k = 4
        skater = fo.Instance()
        s = ds.first()
        s.frames[k + 1]["prompts"] = fo.Detections(detections=[_app_detection(gts[k], skater)])
        for i in range(k + 1, N):  # the App's copies: same instance, keyframe=False, box only
            s.frames[i + 1]["prompts"] = fo.Detections(detections=[
                _app_detection(gts[k], skater, keyframe=False, with_mask=False)])
        s.save()
        report = frtm_plugin.propagate(ds, "frames.prompts", "frtm", progress=False, **FAST)
        assert report.keyframes[s.id] == 1 and not report.failed
        labels = _labels(ds, "frtm")
        pasted = read_prompts(ds.first().frames.items(), "prompts", HW).keyframes[k][1]
        assert np.array_equal(labels[k] == 1, pasted)  # the keyframe is its (resized, pasted) annotation
        # the screen-size mask lands on the object (up to nearest resampling)
        assert (pasted ^ gts[k]).sum() < 0.1 * gts[k].sum()
        assert all((m == 1).any() for m in labels)  # both directions: the frames before it too
        instances = {d.instance_id for fr in ds.first().frames.values() for d in fr["frtm_instances"].detections}
        assert instances == {skater.id}  # one track, the prompt's instance
        indices = {d.index for fr in ds.first().frames.values() for d in fr["frtm_instances"].detections}
        assert indices == {1}

        # An edit of a copy (the App then sets keyframe=True on it) is a new prompt: the digest changes.
        before = prompt_digest(ds.first().frames.items(), "prompts")
        s = ds.first()
        s.frames[N]["prompts"].detections[0]["keyframe"] = True
        s.save()
        assert prompt_digest(ds.first().frames.items(), "prompts") != before
    finally:
        ds.delete()


def test_identity_follows_instance_not_position(clip):
    """Two objects drawn on different frames: on the second object's frame the App's copy of the first comes first
    in the list, so list position would swap them; the instances keep them apart."""
    ds = _dataset("app-identity", clip)
    try:
        gts = clip[1]
        skater, other = fo.Instance(), fo.Instance()
        left = np.zeros(HW, bool)
        left[300:420, 40:160] = True  # a patch of ground on the left, as the second object
        s = ds.first()
        s.frames[1]["prompts"] = fo.Detections(detections=[_app_detection(gts[0], skater, "skater")])
        s.frames[3]["prompts"] = fo.Detections(detections=[
            _app_detection(gts[0], skater, "skater", keyframe=False, with_mask=False),
            _app_detection(left, other, "ground")])
        s.save()
        prompts = read_prompts(ds.first().frames.items(), "prompts", HW)
        assert sorted(prompts.keyframes) == [0, 2] and list(prompts.keyframes[2]) == [2]
        assert prompts.names == {1: "skater", 2: "ground"}
        assert prompts.instances[1].id == skater.id and prompts.instances[2].id == other.id
        frtm_plugin.propagate(ds, "prompts", "out", progress=False, direction="forward", **FAST)
        dets = ds.first().frames[3]["out_instances"].detections
        by_label = {d.label: d for d in dets}
        assert by_label["ground"].instance_id == other.id and by_label["ground"].index == 2
        assert by_label["skater"].instance_id == skater.id and by_label["skater"].index == 1
        assert np.array_equal(ds.first().frames[3]["out"].get_mask() == 2, left)
    finally:
        ds.delete()


def test_box_only_and_polyline_prompts(clip):
    ds = _dataset("app-box", clip)
    try:
        gts = clip[1]
        s = ds.first()
        s.frames[1]["boxes"] = fo.Detections(detections=[
            _app_detection(gts[0], fo.Instance(), with_mask=False)])
        ys, xs = np.nonzero(gts[0])
        hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32))[:, 0]
        points = [[(float(x) / HW[1], float(y) / HW[0]) for x, y in hull]]
        s.frames[1]["polys"] = fo.Polylines(polylines=[fo.Polyline(label="skater", points=points, closed=True,
                                                                   filled=True)])
        s.save()
        box_report = frtm_plugin.propagate(ds, "boxes", "from_box", progress=False, **FAST)
        assert not box_report.failed
        first = ds.first().frames[1]["from_box"].get_mask() == 1
        _, (y0, y1, x0, x1) = _box(gts[0])
        outside = first.copy()
        outside[y0:y1, x0:x1] = False
        assert first.any() and not outside.any()  # the box became a mask inside the box
        # GrabCut found the skater, roughly (0.79 on the JPEG frame, 0.53 on this H.264 copy: a plumbing floor)
        assert (first & gts[0]).sum() / (first | gts[0]).sum() > 0.35
        assert all((m == 1).any() for m in _labels(ds, "from_box"))

        frtm_plugin.propagate(ds, "polys", "from_poly", progress=False, **FAST)
        poly = ds.first().frames[1]["from_poly"].get_mask() == 1
        expected = np.zeros(HW, np.uint8)
        cv2.fillPoly(expected, [np.round(np.asarray(points[0]) * [HW[1], HW[0]]).astype(np.int32)], 1)
        assert np.array_equal(poly, expected > 0)  # the rasterised polygon, exactly

        s = ds.first()
        s.frames[2]["open"] = fo.Polylines(polylines=[fo.Polyline(points=points, closed=False, filled=False)])
        s.save()
        report = frtm_plugin.propagate(ds, "open", "from_open", progress=False, **FAST)
        assert "is open" in list(report.failed.values())[0]
    finally:
        ds.delete()


def test_a_correction_keyframe_reanchors_and_is_counted(clip):
    ds = _dataset("app-correct", clip)
    try:
        gts = clip[1]
        inst = fo.Instance()
        s = ds.first()
        s.frames[1]["prompts"] = fo.Detections(detections=[_app_detection(gts[0], inst, screen_scale=1.0)])
        s.save()
        base = frtm_plugin.propagate(ds, "prompts", "out", progress=False, direction="forward", **FAST)
        before = _labels(ds, "out")
        s = ds.first()
        s.frames[5]["prompts"] = fo.Detections(detections=[_app_detection(gts[4], inst, screen_scale=1.0)])
        s.save()
        again = frtm_plugin.propagate(ds, "prompts", "out", progress=False, direction="forward", **FAST)
        assert base.keyframes[s.id] == 1 and again.keyframes[s.id] == 2
        assert again.reasons[s.id] == "its prompts changed since it was propagated"
        after = _labels(ds, "out")
        assert all(np.array_equal(a, b) for a, b in zip(before[:4], after[:4]))  # forward: before it, unchanged
        assert np.array_equal(after[4] == 1, gts[4])
    finally:
        ds.delete()


def test_a_correction_made_on_the_output_in_the_app_is_a_keyframe_on_the_next_run(clip):
    """The user edits an output label in the App (the App sets keyframe=True on what it edits): the next run takes
    it as a keyframe of that object, keeps it, and redoes the video because of it; outputs it did not correct stay
    keyframe=False."""
    ds = _dataset("app-output-fix", clip)
    try:
        gts = clip[1]
        inst = fo.Instance()
        s = ds.first()
        s.frames[1]["prompts"] = fo.Detections(detections=[_app_detection(gts[0], inst, screen_scale=1.0)])
        s.save()
        frtm_plugin.propagate(ds, "prompts", "out", progress=False, direction="forward", **FAST)
        assert all(d["keyframe"] is False for fr in ds.first().frames.values()
                   for d in fr["out_instances"].detections)
        s = ds.first()  # the user replaces the object's mask on frame 6 with the true one, in the output field
        box, (y0, y1, x0, x1) = _box(gts[5])
        det = s.frames[6]["out_instances"].detections[0]
        det.bounding_box, det.mask, det["keyframe"] = box, gts[5][y0:y1, x0:x1], True
        s.save()
        again = frtm_plugin.propagate(ds, "prompts", "out", progress=False, direction="forward", **FAST)
        assert again.reasons[s.id] == "its prompts changed since it was propagated" and again.keyframes[s.id] == 2
        fixed = ds.first().frames[6]
        assert np.array_equal(fixed["out"].get_mask() == 1, gts[5])
        kept = fixed["out_instances"].detections[0]
        assert kept["keyframe"] is True and kept.instance_id == inst.id  # still a keyframe for the run after
        third = frtm_plugin.propagate(ds, "prompts", "out", progress=False, direction="forward", **FAST)
        assert third.processed == []  # nothing changed since: skipped
    finally:
        ds.delete()


def test_an_empty_mask_keyframe_says_not_visible_here(clip):
    """A keyframe detection of a known instance with an all-zero mask marks the object hidden on that frame: no
    output label there (the other frames keep theirs), and read as an empty keyframe."""
    ds = _dataset("app-hidden", clip)
    try:
        gts = clip[1]
        skater = fo.Instance()
        s = ds.first()
        s.frames[1]["prompts"] = fo.Detections(detections=[_app_detection(gts[0], skater, screen_scale=1.0)])
        hidden = _app_detection(gts[3], skater, screen_scale=1.0)
        hidden.mask = np.zeros_like(hidden.mask)
        s.frames[4]["prompts"] = fo.Detections(detections=[hidden])
        s.save()
        kf = read_prompts(ds.first().frames.items(), "prompts", HW).keyframes
        assert sorted(kf) == [0, 3] and not kf[3][1].any()
        report = frtm_plugin.propagate(ds, "frames.prompts", "frtm", progress=False, **FAST)
        assert report.keyframes[s.id] == 2 and not report.failed
        labels = _labels(ds, "frtm")
        assert not labels[3].any() and (labels[1] == 1).any() and (labels[2] == 1).any()
        assert not ds.first().frames[4]["frtm_instances"].detections
    finally:
        fo.delete_dataset(ds.name)
