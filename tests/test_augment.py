"""Tests of the first-frame augmentation (frtm_plugin.core.augment)."""


import cv2
import numpy as np
import pytest

from frtm_plugin.core.augment import (
    FG_AUG_PARAMS,
    augment_first_frame,
    motion_blur_kernel,
    target_grid_locations,
)

H, W = 240, 400
RED = np.array([230, 20, 20], np.float64)
GREEN = np.array([20, 230, 20], np.float64)


def _background(h=H, w=W):
    """Smooth textured background with no red and no green-dominant pixels (R, G <= 70, B >= 120)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    im = np.empty((h, w, 3), np.uint8)
    im[..., 0] = (30 + 25 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + 10).astype(np.uint8)
    im[..., 1] = (40 + 20 * np.cos(xx / 11.0 + yy / 29.0)).astype(np.uint8)
    im[..., 2] = (150 + 60 * (xx / w) - 30 * (yy / h)).astype(np.uint8)
    return im


def _red_scene(box=(100, 130, 60, 100)):
    """Background with a uniformly red rectangle target at rows y0:y1, cols x0:x1."""
    y0, y1, x0, x1 = box
    im = _background()
    im[y0:y1, x0:x1] = RED.astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return im, mask


def _two_tone_scene():
    """Target rectangle whose left half is red and right half is green."""
    im = _background()
    mask = np.zeros((H, W), np.uint8)
    mask[90:130, 150:210] = 1
    im[90:130, 150:180] = RED.astype(np.uint8)
    im[90:130, 180:210] = GREEN.astype(np.uint8)
    return im, mask


def _is_red(im):
    return (im[..., 0] > 150) & (im[..., 1] < 100) & (im[..., 2] < 100)


def _is_green(im):
    return (im[..., 1] > 150) & (im[..., 0] < 100) & (im[..., 2] < 100)


def _fully_inside(T, box, h=H, w=W, margin=1.0):
    """Whether the target box (y0, y1, x0, x1) mapped by the 2x3 transform stays inside the frame."""
    y0, y1, x0, x1 = box
    c = np.array([[x0 - 0.5, y0 - 0.5, 1], [x1 - 0.5, y0 - 0.5, 1], [x0 - 0.5, y1 - 0.5, 1], [x1 - 0.5, y1 - 0.5, 1]]).T
    d = T @ c
    return d[0].min() >= margin and d[1].min() >= margin and d[0].max() <= w - 1 - margin and d[1].max() <= h - 1 - margin


# ---------------------------------------------------------------------------------------------------------------------

def test_shapes_dtypes_and_original_first():
    im, mask = _red_scene()
    ims, ms = augment_first_frame(im, mask, num_aug=5, seed=3)
    assert ims.shape == (5, H, W, 3) and ims.dtype == np.uint8
    assert ms.shape == (5, H, W) and ms.dtype == np.float32
    assert np.array_equal(ims[0], im)
    assert np.array_equal(ms[0], mask.astype(np.float32))
    # augmented samples differ from the original
    for i in range(1, 5):
        assert not np.array_equal(ms[i], ms[0]) or not np.array_equal(ims[i], ims[0])
    # the input is not modified
    im2, mask2 = _red_scene()
    assert np.array_equal(im, im2) and np.array_equal(mask, mask2)


def test_num_aug_one_and_fifteen():
    im, mask = _red_scene()
    ims, ms = augment_first_frame(im, mask, num_aug=1, seed=0)
    assert ims.shape == (1, H, W, 3) and ms.shape == (1, H, W)
    assert np.array_equal(ims[0], im)
    ims, ms = augment_first_frame(im, mask, num_aug=15, seed=0)
    assert ims.shape == (15, H, W, 3)
    assert all(ms[i].sum() > 0 for i in range(15))
    with pytest.raises(ValueError):
        augment_first_frame(im, mask, num_aug=0)


def test_determinism():
    im, mask = _red_scene()
    a_ims, a_ms = augment_first_frame(im, mask, num_aug=5, seed=7)
    b_ims, b_ms = augment_first_frame(im, mask, num_aug=5, seed=7)
    assert np.array_equal(a_ims, b_ims) and np.array_equal(a_ms, b_ms)
    c_ims, c_ms = augment_first_frame(im, mask, num_aug=5, seed=8)
    assert not np.array_equal(a_ms[1:], c_ms[1:])
    assert not np.array_equal(a_ims[1:], c_ims[1:])
    # global numpy state is neither used nor disturbed
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    d_ims, _ = augment_first_frame(im, mask, num_aug=5, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(d_ims, a_ims)


def test_mask_input_types_are_equivalent():
    im, mask = _red_scene()
    ref_ims, ref_ms = augment_first_frame(im, mask, seed=1)
    for m in (mask.astype(bool), mask * 255, mask.astype(np.float32) * 0.9, mask[..., None]):
        ims, ms = augment_first_frame(im, m, seed=1)
        assert np.array_equal(ims, ref_ims) and np.array_equal(ms, ref_ms)


def test_masks_binary_nonempty_and_area_follows_scale():
    box = (100, 130, 60, 100)  # 30 x 40 target: every listed scale fits without clamping
    im, mask = _red_scene(box)
    area = mask.sum()
    n_checked_tight = 0
    for seed in range(5):
        ims, ms, params = augment_first_frame(im, mask, num_aug=5, seed=seed, return_params=True)
        assert len(params) == 4
        for m, p in zip(ms[1:], params):
            assert set(np.unique(m)) <= {0.0, 1.0}
            px = m.sum()
            assert px > 0
            assert p["scale"] in FG_AUG_PARAMS["scale"]  # no clamping for this target
            assert p["rotation"] in FG_AUG_PARAMS["rotation"]
            # generic bounds of the recipe: 0.5^2 .. 2.5^2 times the area (rounding/rotation slack)
            assert px <= 2.5 ** 2 * area * 1.15
            if _fully_inside(p["transform"], box):
                assert px >= 0.5 ** 2 * 0.99 * area * 0.85
                kx, ky = p["skew"]
                expected = p["scale"] ** 2 * (1 - kx * ky) * area
                assert abs(px / expected - 1) < 0.15, (px, expected, p)
                n_checked_tight += 1
    assert n_checked_tight >= 8


def test_labels_are_nearest_warps_of_the_mask():
    """Each label is the mask warped nearest-neighbour with the reported transform (never blurred)."""
    im, mask = _two_tone_scene()
    for seed in range(3):
        _, ms, params = augment_first_frame(im, mask, num_aug=5, seed=seed, return_params=True)
        for m, p in zip(ms[1:], params):
            ref = cv2.warpAffine(mask, p["transform"], (W, H), flags=cv2.INTER_NEAREST)
            assert np.count_nonzero(ref != m) <= 2, (seed, np.count_nonzero(ref != m))


def test_scale_clamped_to_fit_and_min_size():
    # large target: 150 x 100 in 240 x 400 -> scale <= min(400/100, 240/150) = 1.6
    big_box = (40, 190, 100, 200)
    im, mask = _red_scene(big_box)
    _, ms, params = augment_first_frame(im, mask, num_aug=9, seed=0, return_params=True)
    for m, p in zip(ms[1:], params):
        assert p["scale"] <= 1.6 + 1e-9
        assert m.sum() <= 1.6 ** 2 * mask.sum() * 1.15
    # tiny target: 4 x 4 -> scaled up so it is at least 10 px
    tiny_box = (118, 122, 198, 202)
    im, mask = _red_scene(tiny_box)
    _, ms, params = augment_first_frame(im, mask, num_aug=9, seed=0, return_params=True)
    for m, p in zip(ms[1:], params):
        assert p["scale"] >= 2.5 - 1e-9
        ys, xs = np.nonzero(m)
        assert ys.max() - ys.min() + 1 >= 9 and xs.max() - xs.min() + 1 >= 9
        assert m.sum() >= 60


def test_pasted_content_and_inpainted_hole():
    box = (100, 130, 60, 100)
    y0, y1, x0, x1 = box
    im, mask = _red_scene(box)
    orig = np.zeros((H, W), bool)
    orig[y0:y1, x0:x1] = True
    moved = 0
    for seed in range(3):
        ims, ms = augment_first_frame(im, mask, num_aug=5, seed=seed)
        for aug, m in zip(ims[1:], ms[1:]):
            m8 = m.astype(np.uint8)
            inner = cv2.erode(m8, np.ones((3, 3), np.uint8), iterations=2).astype(bool)
            assert inner.sum() > 20
            mean = aug[inner].mean(axis=0)
            assert np.abs(mean - RED).max() < 12, mean
            assert _is_red(aug[inner]).mean() > 0.95
            # no red anywhere outside the pasted target (+ a fringe for bicubic/motion blur)
            near = cv2.dilate(m8, np.ones((3, 3), np.uint8), iterations=4).astype(bool)
            assert _is_red(aug[~near]).sum() == 0
            # where the target was and is no more, the hole is filled with background-like colour
            hole = orig & ~near
            if hole.sum() > 0.5 * orig.sum():
                moved += 1
                assert aug[hole][:, 0].mean() < 100
                assert aug[hole][:, 2].mean() > 100
    assert moved >= 3


def test_fliplr_happens_and_mirrors_the_target():
    im, mask = _two_tone_scene()
    flips = 0
    for seed in range(5):
        ims, ms, params = augment_first_frame(im, mask, num_aug=5, seed=seed, return_params=True)
        for aug, m, p in zip(ims[1:], ms[1:], params):
            inside = m > 0
            red = _is_red(aug) & inside
            green = _is_green(aug) & inside
            assert red.sum() > 10 and green.sum() > 10
            dx = np.nonzero(red)[1].mean() - np.nonzero(green)[1].mean()
            # unflipped: red (left half) stays left of green, rotation is at most 45 degrees
            assert (dx > 0) == bool(p["fliplr"]), (dx, p)
            flips += bool(p["fliplr"])
    assert 1 <= flips < 20


def test_target_touching_border_and_very_small_targets():
    im, mask = _red_scene((0, 30, 0, 40))  # top-left corner
    ims, ms = augment_first_frame(im, mask, num_aug=5, seed=0)
    assert all(ms[i].sum() > 0 for i in range(5))
    im, mask = _red_scene((H - 20, H, W - 1, W))  # 20x1 sliver on the right edge
    ims, ms = augment_first_frame(im, mask, num_aug=5, seed=0)
    assert all(ms[i].sum() > 0 for i in range(5))
    im = _background()
    mask = np.zeros((H, W), np.uint8)
    mask[50, 50] = 1  # a single pixel
    ims, ms = augment_first_frame(im, mask, num_aug=5, seed=0)
    assert all(ms[i].sum() > 0 for i in range(5))
    assert all(ms[i].sum() >= 50 for i in range(1, 5))  # upscaled to >= 10 px


def test_full_frame_mask_does_not_crash():
    im = _background()
    ims, ms = augment_first_frame(im, np.ones((H, W), bool), num_aug=3, seed=0)
    assert ims.shape == (3, H, W, 3) and all(ms[i].sum() > 0 for i in range(3))


def test_input_errors():
    im, mask = _red_scene()
    with pytest.raises(ValueError, match="no foreground"):
        augment_first_frame(im, np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="no foreground"):
        augment_first_frame(im, np.full((H, W), 0.4, np.float32))
    with pytest.raises(ValueError) as e:
        augment_first_frame(im, mask[:-1])
    assert "239x400" in str(e.value) and "240x400" in str(e.value)
    with pytest.raises(ValueError, match="uint8"):
        augment_first_frame(im.astype(np.float32), mask)
    with pytest.raises(ValueError, match="HxWx3"):
        augment_first_frame(im[..., 0], mask)
    with pytest.raises(ValueError, match="HxWx3"):
        augment_first_frame(np.concatenate([im, im[..., :1]], -1), mask)


def test_gives_up_with_runtime_error():
    im, mask = _red_scene()
    with pytest.raises(RuntimeError, match="retries"):
        augment_first_frame(im, mask, num_aug=3, seed=0, min_px_count=10 ** 9, max_retries=2)


def test_grid_and_blur_kernel():
    rng = np.random.default_rng(0)
    locs = target_grid_locations(5, 480, 854, rng)
    assert len(locs) == 5
    # 2 rows x 4 columns: every centre is near one of the 8 cell centres
    for x, y in locs:
        assert min(abs(x - (c + 0.5) / 4) for c in range(4)) < 0.1
        assert min(abs(y - (r + 0.5) / 2) for r in range(2)) < 0.15
    assert len(set(locs)) == 5
    k = motion_blur_kernel(2.0, 0)
    assert k.shape == (3, 3) and abs(k.sum() - 1) < 1e-5
    assert k[1].sum() > 0.95  # horizontal motion: mass on the middle row
    k90 = motion_blur_kernel(2.0, 90)
    assert k90[:, 1].sum() > 0.95
    assert motion_blur_kernel(5.0, 45).shape == (7, 7)
    assert motion_blur_kernel(0.0, 45).shape == (1, 1)


def test_davis_bear_first_frame(davis_root):
    from PIL import Image

    im = np.array(Image.open(davis_root / "JPEGImages/480p/bear/00000.jpg").convert("RGB"))
    lb = np.array(Image.open(davis_root / "Annotations/480p/bear/00000.png"))
    if lb.ndim == 3:
        lb = lb[..., 0]
    assert set(np.unique(lb)) <= {0, 255}
    ims, ms = augment_first_frame(im, lb, num_aug=5, seed=0)
    assert ims.shape == (5, 480, 854, 3) and ms.shape == (5, 480, 854)
    assert np.array_equal(ims[0], im) and np.array_equal(ms[0], (lb > 0).astype(np.float32))
    area = (lb > 0).sum()
    for i in range(1, 5):
        assert set(np.unique(ms[i])) <= {0.0, 1.0}
        assert 0 < ms[i].sum() <= 2.5 ** 2 * area * 1.15
        assert not np.array_equal(ims[i], im)
