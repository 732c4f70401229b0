"""DAVIS J/F metrics: hand-made edge cases, bit-level agreement with vos-benchmark on real DAVIS-2016 masks,
late-entering objects (judo-sparse), and the folder -> CSV round trip."""

import csv
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from frtm_plugin import metrics as M

# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def square(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def read_gt(davis_root, seq, n=None):
    d = davis_root / "Annotations" / "480p" / seq
    names = sorted(p.name for p in d.glob("*.png"))[:n]
    return np.stack([M.read_label_png(d / f) for f in names]), names


def official_decay_ids(n):
    """The official formula, uint8 cast included. Returned as Python ints: under NumPy >= 2 the official
    ``v[ids[i]:ids[i + 1] + 1]`` also overflows ``255 + 1`` in uint8 (n = 256), which NumPy 1 (the toolkit's era)
    did not; the ids themselves are what the test compares."""
    return [int(i) for i in (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.uint8)]


# ---------------------------------------------------------------------------------------------------------------------
# disk and radius
# ---------------------------------------------------------------------------------------------------------------------


def test_disk_matches_skimage():
    from skimage.morphology import disk as sk_disk

    for r in [0, 1, 2, 3, 5, 8, 8.0, 13, 18]:
        ours, ref = M.disk(r), sk_disk(r)
        assert ours.dtype == np.uint8
        assert ours.shape == ref.shape and np.array_equal(ours, ref.astype(np.uint8)), r


def test_boundary_radius():
    assert M.boundary_radius((480, 854)) == 8
    assert M.boundary_radius((1080, 1920)) == 18
    assert M.boundary_radius((3, 480, 854)) == 8  # stacks use the last two axes
    assert M.boundary_radius((480, 854), bound_th=3) == 3  # >= 1 is already in pixels
    assert M.disk(M.boundary_radius((480, 854))).shape == (17, 17)


# ---------------------------------------------------------------------------------------------------------------------
# seg2bmap
# ---------------------------------------------------------------------------------------------------------------------


def test_seg2bmap_one_pixel():
    seg = np.zeros((10, 10), bool)
    seg[5, 5] = True
    b = M.seg2bmap(seg)
    assert b.dtype == bool
    # boundary is offset half a pixel towards the origin: the pixel itself plus its N, W and NW neighbours
    assert set(zip(*np.nonzero(b))) == {(4, 4), (4, 5), (5, 4), (5, 5)}


def test_seg2bmap_top_left_border_is_not_a_boundary():
    seg = square(10, 10, 0, 5, 0, 5)
    expected = np.zeros((10, 10), bool)
    expected[4, :5] = True  # bottom side (last object row)
    expected[:5, 4] = True  # right side (last object column)
    assert np.array_equal(M.seg2bmap(seg), expected)


def test_seg2bmap_last_row_and_column():
    seg = np.zeros((6, 7), bool)
    seg[-1, :] = True  # object = the whole last row
    expected = np.zeros((6, 7), bool)
    expected[-2, :] = True  # boundary is on the row above; the last row itself is not marked
    assert np.array_equal(M.seg2bmap(seg), expected)

    seg = np.zeros((6, 7), bool)
    seg[:, -1] = True  # the whole last column
    expected = np.zeros((6, 7), bool)
    expected[:, -2] = True
    assert np.array_equal(M.seg2bmap(seg), expected)

    # a full frame has no boundary at all, and the bottom-right corner is always cleared
    assert not M.seg2bmap(np.ones((6, 7), bool)).any()
    seg = np.zeros((6, 7), bool)
    seg[-1, -1] = True
    assert not M.seg2bmap(seg)[-1, -1]


def test_seg2bmap_matches_vos_benchmark_and_is_vectorised():
    from vos_benchmark.utils import _seg2bmap

    rng = np.random.default_rng(0)
    stack = rng.random((5, 23, 31)) > 0.6
    stack[1] = True
    stack[2] = False
    ours = M.seg2bmap(stack)
    for t in range(stack.shape[0]):
        assert np.array_equal(ours[t], _seg2bmap(stack[t].copy()))


# ---------------------------------------------------------------------------------------------------------------------
# J and F on hand-made frames
# ---------------------------------------------------------------------------------------------------------------------


def test_empty_vs_empty_is_perfect():
    z = np.zeros((40, 50), bool)
    assert M.db_eval_iou(z, z) == 1.0
    assert M.db_eval_boundary(z, z) == 1.0


def test_empty_prediction_and_empty_gt():
    gt = square(40, 50, 10, 20, 10, 30)
    z = np.zeros_like(gt)
    assert M.db_eval_iou(gt, z) == 0.0
    assert M.db_eval_boundary(gt, z) == 0.0  # P=1, R=0
    assert M.db_eval_iou(z, gt) == 0.0
    assert M.db_eval_boundary(z, gt) == 0.0  # P=0, R=1


def test_partial_overlap_values():
    gt = square(40, 50, 10, 20, 10, 20)  # 100 px
    pred = square(40, 50, 10, 20, 15, 25)  # 100 px, 50 shared
    assert M.db_eval_iou(gt, pred) == pytest.approx(50 / 150)
    # diag ~64 -> 1 px tolerance; a 5 px shift leaves only the shared rows/columns matched
    f = M.db_eval_boundary(gt, pred)
    assert 0 < f < 1


def test_void_pixels_are_excluded_from_j_and_f():
    gt = square(100, 100, 10, 30, 10, 30)
    pred = gt | square(100, 100, 60, 90, 60, 90)  # an extra blob, far (> 2 px) from the object
    void = square(100, 100, 55, 95, 55, 95)  # ...lying entirely in void
    assert M.boundary_radius(gt.shape) == 2
    # without void the blob costs a lot
    assert M.db_eval_iou(gt, pred) == pytest.approx(400 / 1300)
    assert M.db_eval_boundary(gt, pred) < 0.8
    # with void it does not exist
    assert M.db_eval_iou(gt, pred, void) == 1.0
    assert M.db_eval_boundary(gt, pred, void) == 1.0
    # void also removes GT pixels: half the object is void, the prediction covers only the other half
    void2 = square(100, 100, 0, 100, 20, 100)
    half = square(100, 100, 10, 30, 10, 20)
    assert M.db_eval_iou(gt, half) == 0.5
    assert M.db_eval_iou(gt, half, void2) == 1.0
    assert M.db_eval_boundary(gt, half, void2) == 1.0


def test_one_pixel_object_boundary():
    gt = np.zeros((100, 100), bool)
    gt[50, 50] = True
    near = np.zeros_like(gt)
    near[51, 51] = True  # within the 2 px tolerance
    far = np.zeros_like(gt)
    far[50, 60] = True
    assert M.db_eval_boundary(gt, gt) == 1.0
    assert M.db_eval_boundary(gt, near) == 1.0
    assert M.db_eval_iou(gt, near) == 0.0
    assert M.db_eval_boundary(gt, far) == 0.0


def test_object_touching_image_border():
    # object on the left border: the image border is not a boundary, so the GT boundary is the top (row 19),
    # right (col 29) and bottom (row 59) sides only. A prediction stopping 1 px short of the border gains a left
    # side (col 0, rows 19..59) of which only rows 19..21 and 57..59 lie within the 2 px tolerance.
    gt = square(100, 100, 20, 60, 0, 30)
    pred = square(100, 100, 20, 60, 1, 30)
    assert M.seg2bmap(gt)[:, 0].sum() == 2  # only where the top and bottom sides reach the border
    assert M.seg2bmap(pred)[19:60, 0].all()
    precision = (138 - 35) / 138  # pred boundary: 30 top + 40 right + 28 bottom + 40 left; 35 left px unmatched
    assert M.db_eval_boundary(gt, pred) == pytest.approx(2 * precision / (precision + 1), abs=1e-12)
    assert M.db_eval_boundary(gt, gt) == 1.0
    # a full-frame object has no boundary (official quirk): F = 1 even against an empty prediction, J = 0
    full = np.ones((100, 100), bool)
    assert M.db_eval_boundary(full, np.zeros_like(full)) == 1.0
    assert M.db_eval_iou(full, np.zeros_like(full)) == 0.0


def test_frames_functions_match_single_frame_ones():
    rng = np.random.default_rng(1)
    gt = np.stack([square(60, 80, r0, r0 + 25, 5, 50) for r0 in rng.integers(0, 30, 4)])
    pred = np.roll(gt, 3, axis=2)
    pred[2] = False
    void = np.zeros_like(gt)
    void[1, :10] = True
    j = M.db_eval_iou_frames(gt, pred, void)
    f = M.db_eval_boundary_frames(gt, pred, void)
    assert j.shape == f.shape == (4,)
    for t in range(4):
        assert j[t] == M.db_eval_iou(gt[t], pred[t], void[t])
        assert f[t] == M.db_eval_boundary(gt[t], pred[t], void[t])


# ---------------------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------------------


def test_db_statistics_hand_computed():
    v = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # n = 9: ids = [0, 2, 4, 6, 8]; first bin v[0:3] (mean 0.9), last bin v[6:9] (mean 0.3)
    mean, recall, decay = M.db_statistics(v)
    assert mean == pytest.approx(0.6)
    assert recall == pytest.approx(5 / 9)  # 0.5 itself is not > 0.5
    assert decay == pytest.approx(0.6)
    # n = 3: ids = [0, 1, 1, 2, 2] -> bins v[0:2], ..., v[2:3]
    assert M.db_statistics([1.0, 0.5, 0.0])[2] == pytest.approx(0.75)
    # a constant vector does not decay; a rising one has negative decay
    assert M.db_statistics(np.full(20, 0.7))[2] == pytest.approx(0.0)
    assert M.db_statistics(np.linspace(0, 1, 20))[2] < 0
    # NaN frames are ignored
    assert M.db_statistics([1.0, np.nan, 0.0])[:2] == (0.5, 0.5)
    assert all(math.isnan(x) for x in M.db_statistics([]))


def test_decay_matches_official_formula_up_to_256_frames():
    rng = np.random.default_rng(2)
    for n in list(range(1, 40)) + [97, 128, 200, 255, 256]:
        v = rng.random(n)
        ids = official_decay_ids(n)
        official = np.nanmean(v[ids[0]: ids[1] + 1]) - np.nanmean(v[ids[3]: ids[4] + 1])
        assert M.db_statistics(v)[2] == pytest.approx(official, abs=1e-15), n
        assert M.db_statistics(v, official_uint8_bug=True)[2] == M.db_statistics(v)[2]


def test_decay_uint8_overflow_only_behind_flag():
    v = np.linspace(1.0, 0.0, 300)
    fixed = M.db_statistics(v)[2]
    assert 0.5 < fixed < 1.0  # correct bins: first quarter ~0.87, last quarter ~0.13
    # the wrapped last index (299 % 256 = 43) makes the last bin v[225:44] empty -> NaN, like the official code
    assert np.isnan(M.db_statistics(v, official_uint8_bug=True)[2])
    assert official_decay_ids(300)[-1] == 43  # numpy's own uint8 cast wraps the same way


# ---------------------------------------------------------------------------------------------------------------------
# evaluate_sequence / aggregate
# ---------------------------------------------------------------------------------------------------------------------


def test_evaluate_sequence_frames_and_errors():
    T = 6
    gt = np.zeros((T, 30, 40), np.uint8)
    gt[:, 5:15, 5:15] = 1
    gt[:, 20:25, 20:30] = 255  # void: the prediction may do anything there
    pred = gt.copy()
    pred[pred == 255] = 1
    res = M.evaluate_sequence(gt, pred)
    assert list(res.objects) == [1]
    o = res.objects[1]
    assert o.first_frame == 0
    assert o.frames.tolist() == [1, 2, 3, 4]  # official 1..T-2
    assert np.all(o.J == 1.0) and np.all(o.F == 1.0)
    assert res.J_mean == res.F_mean == res.JF_mean == 1.0
    assert sorted(res.per_frame()) == [1, 2, 3, 4] and res.per_frame()[2] == {1: (1.0, 1.0)}

    # first and last frame are never scored: ruining them changes nothing; ruining frame 1 does
    bad = pred.copy()
    bad[0] = bad[-1] = 0
    assert M.evaluate_sequence(gt, bad).J_mean == 1.0
    bad[1] = 0
    r = M.evaluate_sequence(gt, bad)
    assert r.objects[1].J.tolist() == [0.0, 1.0, 1.0, 1.0] and r.J_mean == 0.75

    # an explicit void stack adds to gt == 255
    extra_void = np.zeros(gt.shape, bool)
    extra_void[1] = True
    assert M.evaluate_sequence(gt, bad, void=extra_void).J_mean == 1.0

    with pytest.raises(ValueError, match=r"object id\(s\) \[2\]"):
        p2 = pred.copy()
        p2[3, 0, 0] = 2
        M.evaluate_sequence(gt, p2)
    with pytest.raises(ValueError, match="255"):
        M.evaluate_sequence(gt, gt)  # 255 in a prediction is not an object id
    with pytest.raises(ValueError, match="255 -> 1"):
        M.evaluate_sequence((gt > 0).astype(np.uint8) * 255, pred)  # DAVIS-2016 0/255 not mapped
    with pytest.raises(ValueError, match="shape"):
        M.evaluate_sequence(gt, pred[:, :, :-1])


def test_aggregate_weights_objects_not_sequences():
    T, H, W = 4, 20, 20
    a = np.zeros((T, H, W), np.uint8)
    a[:, 2:8, 2:8] = 1
    b = np.zeros((T, H, W), np.uint8)
    b[:, 2:6, 2:6], b[:, 10:14, 2:6], b[:, 2:6, 10:14] = 1, 2, 3
    results = {"a": M.evaluate_sequence(a, a), "b": M.evaluate_sequence(b, np.zeros_like(b))}
    agg = M.aggregate(results)
    rows, overall = agg["rows"], agg["overall"]
    assert [r["sequence"] for r in rows] == ["a", "b"]
    assert rows[0]["J"] == 1.0 and rows[1]["J"] == 0.0
    assert overall["J"] == pytest.approx(0.25)  # 1 of 4 objects perfect; the mean over sequences would be 0.5
    assert overall["F"] == pytest.approx(0.25)
    assert overall["J&F"] == pytest.approx(0.25)
    assert overall["J-recall"] == pytest.approx(0.25)
    assert overall["n_objects"] == 4 and len(agg["objects"]) == 4


# ---------------------------------------------------------------------------------------------------------------------
# PNG reading
# ---------------------------------------------------------------------------------------------------------------------


def test_read_label_png_modes(tmp_path):
    a = np.zeros((8, 9), np.uint8)
    a[2:5, 3:6] = 255
    Image.fromarray(a, mode="L").save(tmp_path / "l.png")
    assert set(np.unique(M.read_label_png(tmp_path / "l.png")).tolist()) == {0, 1}
    assert set(np.unique(M.read_label_png(tmp_path / "l.png", binary_to_object=False)).tolist()) == {0, 255}

    p = Image.fromarray(a, mode="P")
    p.putpalette([0, 0, 0, 128, 0, 0] + [255, 255, 255] * 254)
    p.save(tmp_path / "p.png")
    assert set(np.unique(M.read_label_png(tmp_path / "p.png")).tolist()) == {0, 255}  # indexed: 255 stays void

    la = np.stack([a, np.full_like(a, 255)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(M.read_label_png(tmp_path / "la.png"), (a == 255).astype(np.uint8))

    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="colour"):
        M.read_label_png(tmp_path / "rgb.png")


def test_read_label_png_real_davis(davis_root):
    # bear/00077.png is stored as grey+alpha in DAVIS-2016
    m = M.read_label_png(davis_root / "Annotations/480p/bear/00077.png")
    assert m.shape == (480, 854) and set(np.unique(m).tolist()) == {0, 1}


# ---------------------------------------------------------------------------------------------------------------------
# bit-level agreement with vos-benchmark on real DAVIS-2016 masks
# ---------------------------------------------------------------------------------------------------------------------


def _variants(gt):
    k = np.ones((7, 7), np.uint8)
    eroded = np.stack([cv2.erode(f, k) for f in gt])
    shifted = np.roll(gt, (6, -9), axis=(1, 2))
    dropped = eroded.copy()
    dropped[::4] = 0  # every 4th frame predicted empty
    dropped[5] = 1  # and one frame predicted as the full image
    return {"eroded": eroded, "shifted": shifted, "dropped": dropped}


@pytest.mark.parametrize("seq", ["dog-agility", "rollerblade", "motorbike"])
def test_identical_to_vos_benchmark(davis_root, seq):
    from vos_benchmark.evaluator import Evaluator

    gt, _ = read_gt(davis_root, seq)
    assert set(np.unique(gt).tolist()) <= {0, 1}
    T = gt.shape[0]
    for vname, pred in _variants(gt).items():
        ours = M.evaluate_sequence(gt, pred).objects[1]
        assert ours.frames.tolist() == list(range(1, T - 1))

        ev = Evaluator()
        for t in range(1, T - 1):  # vos-benchmark skips the first and the last frame too
            ev.feed_frame(pred[t], gt[t])
        ref_j = np.array(ev.object_iou[1], dtype=np.float64)
        ref_f = np.array(ev.boundary_f[1], dtype=np.float64)
        assert ref_j.shape == ours.J.shape == ref_f.shape == ours.F.shape == (T - 2,)
        np.testing.assert_allclose(ours.J, ref_j, rtol=0, atol=1e-12, err_msg=f"{seq}/{vname} J")
        np.testing.assert_allclose(ours.F, ref_f, rtol=0, atol=1e-12, err_msg=f"{seq}/{vname} F")
        ref_jm, ref_fm = ev.conclude()
        assert ours.J_mean * 100 == pytest.approx(ref_jm[1], abs=1e-10)
        assert ours.F_mean * 100 == pytest.approx(ref_fm[1], abs=1e-10)
        # the variants are real errors, not trivially perfect
        assert ours.J_mean < 0.99 and ours.F_mean < 0.99


# ---------------------------------------------------------------------------------------------------------------------
# objects entering late (judo-sparse)
# ---------------------------------------------------------------------------------------------------------------------


def test_judo_sparse_late_objects(judo_root):
    ann = judo_root / "Annotations"
    entries = {0: 1, 5: 2, 8: 3, 13: 4}
    T, H, W = 16, 480, 854
    sparse = {}
    for t in entries:
        m = np.array(Image.open(ann / f"{t:05d}.png"))
        if m.shape != (H, W):  # 00005.png is 853 px wide: pad the missing column with background
            m = np.pad(m, ((0, H - m.shape[0]), (0, W - m.shape[1])))
        sparse[t] = m
    assert sparse[5].shape == (H, W)
    gt = np.zeros((T, H, W), np.uint8)
    for t in range(T):  # each object stays where it was annotated from its entry frame on
        for a in sorted(a for a in sparse if a <= t):
            gt[t][sparse[a] > 0] = sparse[a][sparse[a] > 0]

    pred = gt.copy()
    pred[0:13, 100:140, 100:140] = 4  # object 4 predicted before it exists: not scored, no penalty
    pred[5][pred[5] == 2] = 0  # object 2 missed on its own reference frame: not scored
    pred[15] = 0  # last frame: never scored
    res = M.evaluate_sequence(gt, pred)
    assert sorted(res.objects) == [1, 2, 3, 4]
    assert {k: o.first_frame for k, o in res.objects.items()} == {1: 0, 2: 5, 3: 8, 4: 13}
    assert res.objects[1].frames.tolist() == list(range(1, 15))
    assert res.objects[2].frames.tolist() == list(range(6, 15))
    assert res.objects[3].frames.tolist() == list(range(9, 15))
    assert res.objects[4].frames.tolist() == [14]
    for o in res.objects.values():
        assert np.all(o.J == 1.0) and np.all(o.F == 1.0), o.object_id
    pf = res.per_frame()
    assert set(pf[1]) == {1} and set(pf[6]) == {1, 2} and set(pf[14]) == {1, 2, 3, 4}

    # the one scored frame of object 4 does count
    pred[14][pred[14] == 4] = 0
    o4 = M.evaluate_sequence(gt, pred).objects[4]
    assert o4.J.tolist() == [0.0] and o4.F.tolist() == [0.0]

    # an object entering on the second-to-last frame has nothing to score and is left out of the means
    gt2, pred2 = gt[:15], gt[:15].copy()
    r2 = M.evaluate_sequence(gt2, pred2)
    assert r2.objects[4].frames.size == 0 and not r2.objects[4].scored
    assert M.aggregate({"judo": r2})["overall"]["n_objects"] == 3


# ---------------------------------------------------------------------------------------------------------------------
# folder evaluation and CSV
# ---------------------------------------------------------------------------------------------------------------------

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 253


def _write_predictions(davis_root, out, seq):
    gt, names = read_gt(davis_root, seq)
    k = np.ones((5, 5), np.uint8)
    (out / seq).mkdir(parents=True)
    preds = []
    for f, n in zip(gt, names):
        p = cv2.erode(f, k)
        im = Image.fromarray(p, mode="P")
        im.putpalette(PALETTE)
        im.save(out / seq / n)
        preds.append(p)
    return gt, np.stack(preds), names


def test_evaluate_folder_csv_round_trip(davis_root, tmp_path):
    res_dir = tmp_path / "results"
    seqs = ["dog-agility", "rollerblade"]
    data = {s: _write_predictions(davis_root, res_dir, s) for s in seqs}
    (res_dir / "not-a-davis-sequence").mkdir()  # ignored: no GT folder

    rows, overall = M.evaluate_folder(davis_root, res_dir)
    assert [r["sequence"] for r in rows] == seqs
    for r in rows:  # same numbers as evaluating the in-memory arrays
        gt, pred, _ = data[r["sequence"]]
        ref = M.evaluate_sequence(gt, pred)
        assert r["J"] == ref.J_mean and r["F"] == ref.F_mean and r["J-decay"] == ref.J_decay
        assert 0.3 < r["J"] < 1.0

    out = tmp_path / "scores.csv"
    M.write_csv(out, rows, overall)
    text = out.read_text()
    assert text.splitlines()[0] == "sequence,J,F,J&F,J-recall,J-decay,F-recall,F-decay"
    table = list(csv.DictReader(text.splitlines()))
    assert [t["sequence"] for t in table] == seqs + ["overall"]
    for t in table:
        for c in M.CSV_COLUMNS[1:]:
            assert len(t[c].split(".")[1]) == 6  # %.6f
            lo = -1.0 if c.endswith("decay") else 0.0
            assert lo <= float(t[c]) <= 1.0, (t["sequence"], c)
    # overall = mean over objects (one object per DAVIS-2016 sequence here)
    for c in ("J", "F", "J-recall", "J-decay", "F-recall", "F-decay"):
        assert float(table[-1][c]) == pytest.approx(np.mean([r[c] for r in rows]), abs=1e-6)
    assert float(table[-1]["J&F"]) == pytest.approx((overall["J"] + overall["F"]) / 2, abs=1e-6)

    txt = M.format_table(rows, overall)
    assert "overall" in txt and "dog-agility" in txt and "J&F" in txt


def test_evaluate_folder_errors(davis_root, tmp_path):
    res_dir = tmp_path / "results"
    _, _, names = _write_predictions(davis_root, res_dir, "dog-agility")
    (res_dir / "dog-agility" / names[3]).unlink()
    with pytest.raises(FileNotFoundError, match=names[3]):
        M.evaluate_folder(davis_root, res_dir)

    narrow = Image.fromarray(np.zeros((480, 853), np.uint8), mode="P")
    narrow.putpalette(PALETTE)
    narrow.save(res_dir / "dog-agility" / names[3])
    with pytest.raises(ValueError, match="853x480"):
        M.evaluate_folder(davis_root, res_dir, sequences=["dog-agility"])

    with pytest.raises(FileNotFoundError, match="rollerblade"):
        M.evaluate_folder(davis_root, res_dir, sequences=["rollerblade"])
