"""First-frame augmentation (FRTM, reference section 2.5).

The target is cut out of the first frame, the hole is inpainted, the background is
lightly warped and blurred, and the target is pasted back with a random affine
transform and an optional motion blur.  Sample 0 is always the untouched original.

CPU only: numpy + OpenCV.  All randomness comes from a local ``np.random.Generator``
seeded by ``seed``, so the output is a pure function of the inputs.

Coordinates follow OpenCV's pixel-centre convention (pixel (x, y) covers
[x - 0.5, x + 0.5]); transforms map source -> destination (``cv2.warpAffine``
without ``WARP_INVERSE_MAP``).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "FG_AUG_PARAMS",
    "BG_AUG_PARAMS",
    "augment_first_frame",
    "cut_and_inpaint",
    "motion_blur_kernel",
    "target_grid_locations",
]

# Parameter lists of the released inference configuration.  Each list is shuffled
# independently and drawn without replacement (repeated when more samples are needed).
FG_AUG_PARAMS: Dict[str, list] = {
    "rotation": [5, -5, 10, -10, 20, -20, 30, -30, 45, -45],
    "fliplr": [False, False, False, False, True],
    "scale": [0.5, 0.7, 1.0, 1.5, 2.0, 2.5],
    "skew": [(0.0, 0.0), (0.0, 0.0), (0.1, 0.1)],
    "blur_size": [0.0, 0.0, 0.0, 2.0],
    "blur_angle": [0, 45, 90, 135],
}
BG_AUG_PARAMS: Dict[str, list] = {
    "scale": [1.0, 1.0, 1.2],
    "blur_size": [0.0, 0.0, 1.0, 2.0, 5.0],
    "blur_angle": [0, 45, 90, 135],
}
MIN_TARGET_SIZE = 10  # pixels: lower bound on the scaled target's bbox width and height


# ----------------------------------------------------------------------------------------
# Small geometry helpers (3x3 homogeneous matrices)

def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _scale(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def _rotate(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def _skew(kx: float, ky: float) -> np.ndarray:
    return np.array([[1.0, kx, 0.0], [ky, 1.0, 0.0], [0.0, 0.0, 1.0]])


def motion_blur_kernel(size: float, angle_deg: float) -> np.ndarray:
    """Rotated anisotropic Gaussian (motion blur) kernel, float32, sums to 1.

    ``size`` and 0.1 form the diagonal of the covariance before rotation, as in the
    released code (so the along-motion std is sqrt(size)); the kernel is square with
    half-width round(size / 2) forced odd (size 2 -> 3x3, size 5 -> 7x7).
    """
    if size <= 0:
        return np.ones((1, 1), np.float32)
    R = _rotate(angle_deg)[:2, :2]
    cov = R @ np.diag((float(size), 0.1)) @ R.T
    half = int(size / 2 + 0.5)
    half += (half + 1) % 2  # odd half-width, as released
    r = np.arange(-half, half + 1, dtype=np.float64)
    X = np.stack(np.meshgrid(r, r))  # X[0] = x (columns), X[1] = y (rows)
    q = (X * np.tensordot(np.linalg.inv(cov), X, axes=[1, 0])).sum(0)
    G = np.exp(-0.5 * q)
    return (G / G.sum()).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Building blocks

def cut_and_inpaint(image: np.ndarray, mask: np.ndarray, d: int = 1, f: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Cut the target out of ``image`` and inpaint the hole (cv2.INPAINT_TELEA, radius d).

    :param image: HxWx3 uint8
    :param mask:  HxW uint8 in {0, 1}
    :return: (target RGBA HxWx4 uint8 with RGB = image * mask and a feathered alpha,
              inpainted background HxWx3 uint8)
    """
    m = mask.astype(np.uint8)
    rgb = image * m[..., None]
    # Feathered alpha (f=1 makes both operations identities, i.e. a hard alpha).
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (f, f))
    alpha = cv2.blur(cv2.erode(m, k) * 255, (f, f))
    target = np.concatenate((rgb, alpha[..., None]), axis=-1)

    # Hole: the mask dilated by a (2d x 2d) ellipse, as released; then blur the seam.
    mask0 = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d)))
    mask1 = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * d, 2 * d)))
    bg = cv2.inpaint(image, mask1, d, cv2.INPAINT_TELEA)
    if d > 1:  # with d=1 the seam blur is a 1x1 box filter, i.e. a no-op
        seam = cv2.blur(((1 - mask0) * mask1) * 255, (d, d)).astype(np.float32)[..., None] / 255
        bim = cv2.blur(bg, (d, d)).astype(np.float32)
        bg = (bim * seam + (1 - seam) * bg).astype(np.uint8)
    return target, bg


def target_grid_locations(num_aug: int, height: int, width: int, rng: np.random.Generator) -> List[Tuple[float, float]]:
    """Jittered grid of new target centres as (x, y) fractions of the image size, shuffled.

    nrows = ceil(sqrt(num_aug / aspect)), ncols = ceil(aspect * nrows) (2x4 for 5 samples at
    480x854); each cell centre is jittered by N(0, (cell size / 2) / 4); the first num_aug kept.
    """
    aspect = width / height
    nrows = int(np.ceil(np.sqrt(num_aug / aspect)))
    ncols = int(np.ceil(aspect * nrows))
    locs = []
    for r in range(nrows):
        for c in range(ncols):
            x = (c + 0.5) / ncols + rng.normal(0.0, 0.5 / ncols / 4)
            y = (r + 0.5) / nrows + rng.normal(0.0, 0.5 / nrows / 4)
            locs.append((float(x), float(y)))
    order = rng.permutation(len(locs))
    return [locs[i] for i in order[:num_aug]]


def _draw(values: Sequence, n: int, rng: np.random.Generator) -> list:
    """n draws without replacement from ``values`` (the list is repeated when n > len)."""
    pool = list(values) * ((n + len(values) - 1) // len(values))
    order = rng.permutation(len(pool))
    return [pool[i] for i in order[:n]]


def _make_specs(n: int, locations: Sequence, rng: np.random.Generator) -> List[dict]:
    lists = {"location": locations, **FG_AUG_PARAMS}
    fg = {k: _draw(v, n, rng) for k, v in lists.items()}
    bg = {k: _draw(v, n, rng) for k, v in BG_AUG_PARAMS.items()}
    specs = []
    for i in range(n):
        s = {k: fg[k][i] for k in fg}
        s.update({"bg_" + k: bg[k][i] for k in bg})
        specs.append(s)
    return specs


def _target_transform(spec: dict, bbox: Tuple[float, float, float, float], H: int, W: int) -> Tuple[np.ndarray, float]:
    """3x3 source->destination transform of the target, and the scale actually used."""
    cx, cy, tw, th = bbox
    s = float(spec["scale"])
    # Lower bound first, then the upper bound, so a target always fits in the image
    # (the released code applies them the other way; they only conflict for >~48:1 slivers).
    if s * tw < MIN_TARGET_SIZE or s * th < MIN_TARGET_SIZE:
        s = max(MIN_TARGET_SIZE / tw, MIN_TARGET_SIZE / th)
    if s * tw > W or s * th > H:
        s = min(W / tw, H / th)
    m = -1.0 if spec["fliplr"] else 1.0
    lx, ly = spec["location"]
    # Location fractions are of the image extent [-0.5, W - 0.5] in pixel-centre coordinates.
    T = (_translate(lx * W - 0.5, ly * H - 0.5) @ _skew(*spec["skew"]) @ _rotate(spec["rotation"])
         @ _scale(m * s, s) @ _translate(-cx, -cy))
    return T, s


def _filter(img: np.ndarray, kernel: np.ndarray, border: int) -> np.ndarray:
    if kernel.shape == (1, 1):
        return img
    return cv2.filter2D(img, -1, kernel, borderType=border)


def _warp_background(bg: np.ndarray, spec: dict) -> np.ndarray:
    H, W = bg.shape[:2]
    out = bg
    s = float(spec["bg_scale"])
    if s != 1.0:
        c = ((W - 1) / 2.0, (H - 1) / 2.0)
        T = _translate(*c) @ _scale(s, s) @ _translate(-c[0], -c[1])
        # Replicated border: with scale >= 1 only the bicubic taps at the frame edge reach outside.
        out = cv2.warpAffine(out, T[:2], (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    G = motion_blur_kernel(spec["bg_blur_size"], spec["bg_blur_angle"])
    # Reflected border for the background blur (the released conv2d zero-pads, darkening the frame edge).
    return _filter(out, G, cv2.BORDER_REFLECT_101)


def _paste_target(bg: np.ndarray, tgt_crop: np.ndarray, lab_crop: np.ndarray, src_xy: Tuple[int, int],
                  T: np.ndarray, kernel: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Warp the cropped RGBA target and its label with T, blur the target, and alpha-blend it.

    Only the destination region the warped target can reach is computed.
    """
    H, W = bg.shape[:2]
    sx0, sy0 = src_xy
    ch, cw = tgt_crop.shape[:2]
    M = T @ _translate(sx0, sy0)  # crop coordinates -> image coordinates
    corners = np.array([[-0.5, -0.5, 1], [cw - 0.5, -0.5, 1], [-0.5, ch - 0.5, 1], [cw - 0.5, ch - 0.5, 1]]).T
    dst = (M @ corners)[:2]
    margin = 3 + kernel.shape[0] // 2  # bicubic support + blur half-width
    x0 = max(int(np.floor(dst[0].min())) - margin, 0)
    y0 = max(int(np.floor(dst[1].min())) - margin, 0)
    x1 = min(int(np.ceil(dst[0].max())) + margin + 1, W)
    y1 = min(int(np.ceil(dst[1].max())) + margin + 1, H)

    labels = np.zeros((H, W), np.uint8)
    image = bg.copy()
    if x1 <= x0 or y1 <= y0:  # the target lands entirely outside the frame
        return image, labels

    Mr = (_translate(-x0, -y0) @ M)[:2]
    size = (x1 - x0, y1 - y0)
    wt = cv2.warpAffine(tgt_crop, Mr, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    wl = cv2.warpAffine(lab_crop, Mr, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    wt = _filter(wt.astype(np.float32), kernel, cv2.BORDER_CONSTANT)  # labels are never blurred

    alpha = wt[..., 3:4] * (1.0 / 255.0)
    roi = image[y0:y1, x0:x1].astype(np.float32)
    blended = wt[..., :3] * alpha + roi * (1.0 - alpha)
    image[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)  # rounded (released code truncates)
    labels[y0:y1, x0:x1] = wl
    return image, labels


# ----------------------------------------------------------------------------------------
# Public entry point

def _validate(image, mask) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = (f"dtype={image.dtype}, shape={image.shape}" if isinstance(image, np.ndarray) else type(image).__name__)
        raise ValueError(f"image must be an HxWx3 uint8 RGB array, got {desc}")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be an HxW array, got shape {mask.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask size {mask.shape[0]}x{mask.shape[1]} (HxW) does not match "
                         f"image size {image.shape[0]}x{image.shape[1]} (HxW)")
    binary = (mask > 0.5).astype(np.uint8)
    if not binary.any():
        raise ValueError("mask has no foreground pixels (nothing > 0.5); cannot augment an empty target")
    return np.ascontiguousarray(image), binary


def augment_first_frame(image: np.ndarray, mask: np.ndarray, num_aug: int = 5, seed: int = 0, *,
                        min_px_count: int = 1, max_retries: int = 100, return_params: bool = False):
    """Generate the FRTM first-frame training set.

    :param image:  HxWx3 uint8 RGB first frame.
    :param mask:   HxW target mask (bool, 0/1 or 0/255 integers, or floats in [0, 1]); binarised > 0.5.
    :param num_aug: number of samples returned, the original included (5 at inference, 15 in training).
    :param seed:   seed of the local random generator; equal seeds give identical outputs.
    :param min_px_count: a sample is rejected when its warped target has fewer pixels than this
                   (or when it covers all but fewer than this many pixels while the input had background).
    :param max_retries: number of extra rounds of samples to draw before giving up with RuntimeError.
    :param return_params: also return one dict of drawn parameters per augmented sample
                   (with the clamped "scale" actually used and the 2x3 "transform").
    :return: (images (num_aug,H,W,3) uint8, masks (num_aug,H,W) float32 in {0,1}) [, params]
             where images[0] / masks[0] are the input (binarised mask).
    """
    image, m = _validate(image, mask)
    if int(num_aug) != num_aug or num_aug < 1:
        raise ValueError(f"num_aug must be a positive integer, got {num_aug!r}")
    num_aug = int(num_aug)
    H, W = m.shape
    rng = np.random.default_rng(seed)

    images = np.empty((num_aug, H, W, 3), np.uint8)
    masks = np.empty((num_aug, H, W), np.float32)
    images[0] = image
    masks[0] = m
    params: List[dict] = []
    N = num_aug - 1
    if N == 0:
        return (images, masks, params) if return_params else (images, masks)

    # Target bounding box (pixel-centre coordinates) and a crop of the RGBA cut-out around it.
    ys, xs = np.nonzero(m)
    bx0, bx1, by0, by1 = xs.min(), xs.max(), ys.min(), ys.max()
    bbox = ((bx0 + bx1) / 2.0, (by0 + by1) / 2.0, float(bx1 - bx0 + 1), float(by1 - by0 + 1))
    target, inpainted = cut_and_inpaint(image, m, d=1, f=1)
    pad = 2  # zeros around the crop keep the bicubic taps consistent with a full-frame warp
    cx0, cy0 = max(bx0 - pad, 0), max(by0 - pad, 0)
    cx1, cy1 = min(bx1 + pad + 1, W), min(by1 + pad + 1, H)
    tgt_crop = np.ascontiguousarray(target[cy0:cy1, cx0:cx1])
    lab_crop = np.ascontiguousarray(m[cy0:cy1, cx0:cx1])

    total = int(m.sum())
    has_background = total < H * W
    max_px = H * W - min_px_count
    locations = target_grid_locations(num_aug, H, W, rng)

    count = 0
    retries = -1
    while count < N:
        retries += 1
        if retries > max_retries:
            raise RuntimeError(f"Augmentation failed: only {count} of {N} acceptable samples after "
                               f"{max_retries} retries (target of {total} px, min_px_count={min_px_count})")
        # Each round draws a fresh set of N specs; we stop as soon as N samples are accepted
        # (the released code finishes the round and then picks N at random).
        for spec in _make_specs(N, locations, rng):
            T, s = _target_transform(spec, bbox, H, W)
            bg = _warp_background(inpainted, spec)
            kernel = motion_blur_kernel(spec["blur_size"], spec["blur_angle"])
            aug_im, aug_lb = _paste_target(bg, tgt_crop, lab_crop, (cx0, cy0), T, kernel)
            px = int(np.count_nonzero(aug_lb))
            if px < min_px_count or (px >= max_px and has_background):
                continue
            count += 1
            images[count] = aug_im
            masks[count] = aug_lb
            if return_params:
                p = dict(spec)
                p["scale_drawn"], p["scale"], p["transform"] = spec["scale"], s, T[:2].copy()
                params.append(p)
            if count == N:
                break

    return (images, masks, params) if return_params else (images, masks)
