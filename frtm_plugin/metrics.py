"""DAVIS region similarity J and boundary accuracy F, computed as the official toolkit computes them.

Written from the protocol in ``shared/reference/davis-evaluation-protocol.md`` (davis2017-evaluation, semi-supervised
track). Pure numpy + OpenCV: no torch, no scikit-image, no FiftyOne.

Conventions (matching the official code unless stated):

* Label maps are integer arrays, 0 = background, 1..N = objects, **255 = void** (excluded from J and F).
* J: intersection over union on the non-void pixels; an empty union scores 1.
* F: boundary F-measure. Boundaries come from :func:`seg2bmap` (1 px wide, no thinning), are matched by dilating
  with a disk of radius ``ceil(0.008 * image diagonal)`` px (8 px at 854x480), and precision/recall follow the
  official edge cases.
* A sequence scores each object on the frames strictly after the frame where it first appears in the GT and strictly
  before the last frame. For objects present from frame 0 that is exactly the official ``1 .. T-2``; objects that
  enter later (YouTube-VOS style) are not scored on their own reference frame or before it.
* Global numbers weight every object of every sequence equally (DAVIS convention), not every sequence.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np

from .io.labels import VOID, read_label_png

__all__ = [
    "VOID",
    "CSV_COLUMNS",
    "disk",
    "boundary_radius",
    "seg2bmap",
    "db_eval_iou",
    "db_eval_iou_frames",
    "db_eval_boundary",
    "db_eval_boundary_frames",
    "db_statistics",
    "ObjectResult",
    "SequenceResult",
    "evaluate_sequence",
    "aggregate",
    "read_label_png",
    "load_sequence",
    "evaluate_sequence_dirs",
    "evaluate_folder",
    "write_csv",
    "format_table",
]

CSV_COLUMNS = ("sequence", "J", "F", "J&F", "J-recall", "J-decay", "F-recall", "F-decay")


# --------------------------------------------------------------------------------------------------------------------
# Per-frame measures
# --------------------------------------------------------------------------------------------------------------------

def disk(radius: float) -> np.ndarray:
    """Disk structuring element, built as ``skimage.morphology.disk`` builds it: ``x^2 + y^2 <= r^2``, uint8.

    The official code dilates with ``skimage.morphology.disk(bound_pix)``; reproducing the exact footprint (not e.g.
    ``cv2.getStructuringElement(MORPH_ELLIPSE)``, which differs on the rim) is what makes F match bit for bit.
    """
    ax = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(ax, ax)
    return ((x ** 2 + y ** 2) <= radius ** 2).astype(np.uint8)


def boundary_radius(shape: Sequence[int], bound_th: float = 0.008) -> float:
    """Dilation radius in pixels: ``bound_th`` itself if >= 1, else ``ceil(bound_th * ||(H, W)||_2)``.

    8 px for 480x854, 18 px for 1080x1920. ``sqrt(H*H + W*W)`` on exact integers is what ``np.linalg.norm(shape)``
    computes, so the ceil lands on the same side as the official code.
    """
    if bound_th >= 1:
        return bound_th
    h, w = int(shape[-2]), int(shape[-1])
    return float(math.ceil(bound_th * math.sqrt(h * h + w * w)))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-px boundary map of a binary mask (D. Martin's BSDS ``seg2bmap``, as used by DAVIS), as a bool array.

    A pixel is boundary if it differs from its east, south or south-east neighbour. The boundary therefore sits on
    the object's last row/column on the bottom/right and one pixel *outside* it on the top/left ("offset by half a
    pixel towards the origin"); pixels outside the image count as equal to their neighbour, so image borders are not
    boundaries (a mask filling the whole frame has no boundary at all). Works on ``(..., H, W)`` stacks.
    The official function's resize branch (buggy, never used by the evaluation) is not reproduced.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim < 2:
        raise ValueError(f"seg2bmap needs an (..., H, W) mask, got shape {seg.shape}")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[..., :, :-1] = seg[..., :, 1:]
    s[..., :-1, :] = seg[..., 1:, :]
    se[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    # Last row / column: only the neighbour that exists inside the image is compared.
    b[..., -1, :] = seg[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def _as_bool(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(bool, copy=False)


def _void_or_none(void, shape) -> np.ndarray | None:
    if void is None:
        return None
    void = _as_bool(void)
    if void.shape != tuple(shape):
        raise ValueError(f"void mask shape {void.shape} does not match the masks {tuple(shape)}")
    return void


def db_eval_iou_frames(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Per-frame J for binary ``(..., H, W)`` stacks; an empty (non-void) union gives J = 1."""
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} != prediction shape {pred.shape}")
    void = _void_or_none(void, gt.shape)
    keep = np.ones_like(gt) if void is None else ~void
    inter = np.count_nonzero(gt & pred & keep, axis=(-2, -1))
    union = np.count_nonzero((gt | pred) & keep, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union.astype(np.float64)
    return np.where(union == 0, 1.0, j)


def db_eval_iou(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of one frame: ``|gt & pred & ~void| / |(gt | pred) & ~void|``, 1 when the union is empty."""
    if np.ndim(gt) != 2:
        raise ValueError(f"db_eval_iou takes one (H, W) frame, got shape {np.shape(gt)}; use db_eval_iou_frames")
    return float(db_eval_iou_frames(gt, pred, void))


def _f_from_boundaries(gt_b: np.ndarray, fg_b: np.ndarray, kernel: np.ndarray) -> float:
    """Precision/recall of two boundary maps under disk dilation, with the official edge cases."""
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel)
        gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel)
        precision = np.count_nonzero(fg_b & (gt_dil > 0)) / float(n_fg)
        recall = np.count_nonzero(gt_b & (fg_dil > 0)) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    # Same operation order as the official code, so results agree to the last bit.
    return 2 * precision * recall / (precision + recall)


def db_eval_boundary_frames(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                            bound_th: float = 0.008) -> np.ndarray:
    """Per-frame F for binary ``(T, H, W)`` stacks (boundaries vectorised, dilation per frame)."""
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} != prediction shape {pred.shape}")
    if gt.ndim != 3:
        raise ValueError(f"expected (T, H, W) stacks, got shape {gt.shape}")
    void = _void_or_none(void, gt.shape)
    if void is not None:
        # Void pixels are removed from both masks *before* taking boundaries (official behaviour).
        gt, pred = gt & ~void, pred & ~void
    gt_b, fg_b = seg2bmap(gt), seg2bmap(pred)
    kernel = disk(boundary_radius(gt.shape, bound_th))
    return np.array([_f_from_boundaries(gt_b[t], fg_b[t], kernel) for t in range(gt.shape[0])], dtype=np.float64)


def db_eval_boundary(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = 0.008) -> float:
    """F of one frame (the official ``f_measure(pred, gt, void, bound_th)``; precision is w.r.t. the prediction)."""
    if np.ndim(gt) != 2:
        raise ValueError(f"db_eval_boundary takes one (H, W) frame, got shape {np.shape(gt)}")
    v = None if void is None else np.asarray(void)[None]
    return float(db_eval_boundary_frames(np.asarray(gt)[None], np.asarray(pred)[None], v, bound_th)[0])


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def db_statistics(values: Iterable[float], official_uint8_bug: bool = False) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F values (the scored frames only).

    * mean = nanmean(v); recall = fraction of (non-NaN) frames with v > 0.5.
    * decay = nanmean(first bin) - nanmean(last bin), bins cut at ``round(linspace(1, n, 5) + 1e-10) - 1`` with
      ``bins[i] = v[ids[i] : ids[i+1] + 1]`` (neighbouring bins share their boundary frame). Positive = gets worse.

    The official code casts ``ids`` to uint8, so on sequences with more than 256 scored frames the indices wrap
    around and the decay is garbage (often NaN). We use correct integer indices by default; they are identical to
    the official ones up to 256 frames. ``official_uint8_bug=True`` reproduces the wrap-around (as ``% 256``, which is
    what the float->uint8 cast does in practice) for bug-for-bug comparisons. (Run under NumPy >= 2, the official
    ``ids[i + 1] + 1`` also overflows in uint8 when an index is 255, i.e. already at exactly 256 frames; NumPy 1,
    which the toolkit was written for, promoted to int there. The flag follows NumPy 1 behaviour.)

    NaN handling: the official recall is ``nanmean(v > 0.5)``, which counts a NaN frame as a failure; here NaN frames
    are ignored in all three statistics. J and F as computed in this module are never NaN, so this never differs.
    An empty vector gives (nan, nan, nan).
    """
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    finite = v[~np.isnan(v)]
    mean = float(finite.mean()) if finite.size else float("nan")
    recall = float(np.mean(finite > 0.5)) if finite.size else float("nan")

    ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
    if official_uint8_bug:
        ids = ids % 256
    bins = [v[ids[i]: ids[i + 1] + 1] for i in range(4)]
    decay = _nanmean(bins[0]) - _nanmean(bins[3])
    return mean, recall, decay


# --------------------------------------------------------------------------------------------------------------------
# Sequence evaluation
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class ObjectResult:
    """Scores of one object of one sequence. ``frames[i]`` is the frame index that ``J[i]`` and ``F[i]`` belong to."""

    object_id: int
    first_frame: int  # first frame where the object is in the GT (its reference frame; never scored)
    frames: np.ndarray
    J: np.ndarray
    F: np.ndarray
    J_mean: float
    J_recall: float
    J_decay: float
    F_mean: float
    F_recall: float
    F_decay: float

    @property
    def JF_mean(self) -> float:
        return (self.J_mean + self.F_mean) / 2

    @property
    def scored(self) -> bool:
        """False when the object enters on the last or second-to-last frame: no frame is left to score."""
        return self.frames.size > 0


@dataclass
class SequenceResult:
    """Per-object, per-frame scores of one sequence. Sequence-level properties average over the scored objects."""

    num_frames: int
    objects: dict[int, ObjectResult] = field(default_factory=dict)
    name: str = ""

    def _over_objects(self, attr: str) -> float:
        return _nanmean(np.array([getattr(o, attr) for o in self.objects.values() if o.scored], dtype=np.float64))

    @property
    def J_mean(self) -> float:
        return self._over_objects("J_mean")

    @property
    def F_mean(self) -> float:
        return self._over_objects("F_mean")

    @property
    def JF_mean(self) -> float:
        return (self.J_mean + self.F_mean) / 2

    @property
    def J_recall(self) -> float:
        return self._over_objects("J_recall")

    @property
    def J_decay(self) -> float:
        return self._over_objects("J_decay")

    @property
    def F_recall(self) -> float:
        return self._over_objects("F_recall")

    @property
    def F_decay(self) -> float:
        return self._over_objects("F_decay")

    def per_frame(self) -> dict[int, dict[int, tuple[float, float]]]:
        """``{frame_index: {object_id: (J, F)}}`` over the scored frames, for storing scores frame by frame."""
        out: dict[int, dict[int, tuple[float, float]]] = {}
        for oid, o in self.objects.items():
            for t, j, f in zip(o.frames.tolist(), o.J.tolist(), o.F.tolist()):
                out.setdefault(t, {})[oid] = (j, f)
        return dict(sorted(out.items()))


def _as_label_stack(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8)
    if x.ndim != 3:
        raise ValueError(f"{what} must be a (T, H, W) label array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{what} must hold integer object ids, got dtype {x.dtype}")
    return x


def evaluate_sequence(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, *,
                      bound_th: float = 0.008, name: str = "") -> SequenceResult:
    """Score a predicted ``(T, H, W)`` label sequence against the GT one.

    Objects are the ids other than 0 and 255 present anywhere in ``gt``. Pixels where ``gt == 255`` are void, as are
    pixels set in the optional boolean ``void`` stack; void pixels count for neither J nor F. Each object is scored on
    frames ``first_appearance + 1 .. T - 2``. A prediction id that is not an object of the GT raises ``ValueError``
    (the official toolkit aborts likewise); this includes 255 in a prediction.
    """
    gt = _as_label_stack(gt, "gt")
    pred = _as_label_stack(pred, "prediction")
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} != prediction shape {pred.shape} (T, H, W)")
    void_mask = gt == VOID
    if void is not None:
        void_mask = void_mask | _void_or_none(void, gt.shape)

    gt_ids = [int(i) for i in np.unique(gt) if i != 0 and i != VOID]
    if not gt_ids:
        hint = (" (it only holds 0/255: a DAVIS-2016 binary mask must be mapped 255 -> 1 first, "
                "read_label_png does this)") if np.any(void_mask) else ""
        raise ValueError(f"gt of sequence {name!r} contains no object ids{hint}")
    extra = sorted(set(int(i) for i in np.unique(pred)) - set(gt_ids) - {0})
    if extra:
        first = int(np.argmax(np.isin(pred, extra).any(axis=(1, 2))))
        raise ValueError(f"prediction of sequence {name!r} contains object id(s) {extra} (first on frame {first}) "
                         f"that are not in the ground truth (GT objects: {gt_ids})")

    T = gt.shape[0]
    result = SequenceResult(num_frames=T, name=name)
    for oid in gt_ids:
        g_all = gt == oid
        first = int(np.argmax(g_all.any(axis=(1, 2))))
        frames = np.arange(first + 1, T - 1, dtype=np.int64)  # empty when the object enters on frame >= T-2
        g, p, v = g_all[frames], pred[frames] == oid, void_mask[frames]
        j = db_eval_iou_frames(g, p, v) if frames.size else np.zeros(0)
        f = db_eval_boundary_frames(g, p, v, bound_th) if frames.size else np.zeros(0)
        jm, jr, jd = db_statistics(j)
        fm, fr, fd = db_statistics(f)
        result.objects[oid] = ObjectResult(oid, first, frames, j, f, jm, jr, jd, fm, fr, fd)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Aggregation and reports
# --------------------------------------------------------------------------------------------------------------------

def _row(name: str, objs: Sequence[ObjectResult]) -> dict:
    def m(attr):
        return _nanmean(np.array([getattr(o, attr) for o in objs], dtype=np.float64))

    j, f = m("J_mean"), m("F_mean")
    return {"sequence": name, "J": j, "F": f, "J&F": (j + f) / 2,
            "J-recall": m("J_recall"), "J-decay": m("J_decay"),
            "F-recall": m("F_recall"), "F-decay": m("F_decay"), "n_objects": len(objs)}


def aggregate(results: Mapping[str, SequenceResult]) -> dict:
    """DAVIS global scores: every object of every sequence weighs the same (not every sequence).

    Returns ``{"rows": [per-sequence rows], "overall": row, "objects": [per-object rows]}``; a row is a dict with the
    :data:`CSV_COLUMNS` keys (values in [0, 1], decays in [-1, 1]) plus ``n_objects``; per-object rows also carry
    ``object``. ``J&F = (J + F) / 2``. Objects without any scored frame are left out (they cannot be scored);
    a sequence with none gets NaN values.
    """
    rows, objects, all_objs = [], [], []
    for name, res in results.items():
        objs = [o for o in res.objects.values() if o.scored]
        rows.append(_row(name, objs))
        for o in objs:
            objects.append({**_row(name, [o]), "object": o.object_id})
        all_objs.extend(objs)
    overall = _row("overall", all_objs)
    return {"rows": rows, "overall": overall, "objects": objects}


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], overall: Mapping) -> None:
    """CSV with columns ``sequence,J,F,J&F,J-recall,J-decay,F-recall,F-decay``: one row per sequence, then
    ``overall``. Scores are fractions (not percent) written with ``%.6f``."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in [*rows, {**overall, "sequence": "overall"}]:
            w.writerow([r["sequence"], *("%.6f" % float(r[c]) for c in CSV_COLUMNS[1:])])


def format_table(rows: Sequence[Mapping], overall: Mapping) -> str:
    """Fixed-width text table of the same columns as the CSV, scores as fractions with 3 decimals."""
    all_rows = [*rows, {**overall, "sequence": "overall"}]
    w0 = max(len("sequence"), *(len(str(r["sequence"])) for r in all_rows))
    widths = [max(len(c), 6) for c in CSV_COLUMNS[1:]]
    head = "  ".join([f"{'sequence':<{w0}}", *(f"{c:>{w}}" for c, w in zip(CSV_COLUMNS[1:], widths))])
    lines = [head, "-" * len(head)]
    for i, r in enumerate(all_rows):
        if i == len(all_rows) - 1:
            lines.append("-" * len(head))
        lines.append("  ".join([f"{str(r['sequence']):<{w0}}",
                                *(f"{float(r[c]):>{w}.3f}" for c, w in zip(CSV_COLUMNS[1:], widths))]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Folders of PNGs
# --------------------------------------------------------------------------------------------------------------------

def load_sequence(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a GT folder ``*.png`` (sorted by name) and the prediction PNGs of the same names as (T, H, W) stacks.

    Extra prediction files are ignored. Missing prediction frames and size mismatches raise with the file named.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    names = sorted(p.name for p in gt_dir.glob("*.png"))
    if not names:
        raise FileNotFoundError(f"no GT PNGs in {gt_dir}")
    gts, preds = [], []
    for n in names:
        g = read_label_png(gt_dir / n)
        if gts and g.shape != gts[0].shape:
            raise ValueError(f"GT frame {gt_dir / n} is {g.shape[1]}x{g.shape[0]} (WxH) but {gt_dir / names[0]} is "
                             f"{gts[0].shape[1]}x{gts[0].shape[0]}")
        pp = pred_dir / n
        if not pp.is_file():
            raise FileNotFoundError(f"missing prediction frame {pp} (GT {gt_dir / n} exists)")
        p = read_label_png(pp)
        if p.shape != g.shape:
            raise ValueError(f"prediction {pp} is {p.shape[1]}x{p.shape[0]} (WxH) but its GT {gt_dir / n} is "
                             f"{g.shape[1]}x{g.shape[0]}")
        gts.append(g)
        preds.append(p)
    return np.stack(gts), np.stack(preds), names


def evaluate_sequence_dirs(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike, name: str = "",
                           bound_th: float = 0.008) -> SequenceResult:
    """:func:`evaluate_sequence` on one GT folder and its prediction folder (see :func:`load_sequence`)."""
    gt, pred, _ = load_sequence(gt_dir, pred_dir)
    try:
        return evaluate_sequence(gt, pred, bound_th=bound_th, name=name or Path(gt_dir).name)
    except ValueError as exc:
        raise ValueError(f"{exc} [GT {gt_dir}, prediction {pred_dir}]") from None


def evaluate_folder(davis_root: str | os.PathLike, results_dir: str | os.PathLike,
                    sequences: Iterable[str] | None = None, resolution: str = "480p") -> tuple[list[dict], dict]:
    """Evaluate ``results_dir/<seq>/<frame>.png`` against ``davis_root/Annotations/<resolution>/<seq>/<frame>.png``.

    ``sequences`` defaults to every folder of ``results_dir`` that also has a GT folder. Returns ``(rows, overall)``
    as :func:`aggregate` makes them (overall = mean over all objects).
    """
    gt_root = Path(davis_root) / "Annotations" / resolution
    res_root = Path(results_dir)
    if not gt_root.is_dir():
        raise FileNotFoundError(f"no GT annotations folder {gt_root}")
    if not res_root.is_dir():
        raise FileNotFoundError(f"no results folder {res_root}")
    if sequences is None:
        seqs = sorted(p.name for p in res_root.iterdir() if p.is_dir() and (gt_root / p.name).is_dir())
        if not seqs:
            raise ValueError(f"no folder of {res_root} matches a GT sequence in {gt_root}")
    else:
        seqs = list(sequences)
        for s in seqs:
            if not (gt_root / s).is_dir():
                raise FileNotFoundError(f"sequence {s!r}: no GT folder {gt_root / s}")
            if not (res_root / s).is_dir():
                raise FileNotFoundError(f"sequence {s!r}: no prediction folder {res_root / s}")
    results = {s: evaluate_sequence_dirs(gt_root / s, res_root / s, name=s) for s in seqs}
    agg = aggregate(results)
    return agg["rows"], agg["overall"]
