"""The streaming tracker: feed frames one by one, annotate objects on any frame, get masks back. Videos go through
:func:`.video_loop.propagate_in_video` (keyframes, both directions), which steps this tracker.

    tracker = FRTMTracker(backbone, segnet)            # segnet=None: D-only
    for i, frame in enumerate(frames):                 # frame: (H, W, 3) uint8 RGB
        out = tracker.step(frame, masks.get(i))        # {obj_id: (H, W) mask} where objects are annotated
        out.labels, out.probabilities, out.coarse_scores

Per frame, as the released tracker (``Tracker.initialize`` + ``Tracker.track``):
1. backbone features once for the frame, shared by all objects;
2. every object started on an earlier frame: D's coarse scores (with this project's models, kept near the object's
   last box: ``TrackerConfig.search_margin``), then S (or D's scores upsampled when D-only), a sigmoid, the
   foreground probability;
3. objects annotated on this frame take their given mask, and carve it out of the other objects' probabilities;
4. multi-object merge, and each tracked object's D learns from its merged soft mask.
Objects starting on this frame get a new D fitted on their mask and augmented copies of the frame; an object
annotated again (a correction) is re-anchored: its D learns the mask as a protected memory sample
(``TargetModel.reanchor``). Neither is also updated on that frame (its sample is already in the memory). The
tracker holds per object only D's weights, its fixed-size memory and its last box, never per-frame history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from .augment import augment_first_frame
from .defaults import DEFAULT_MAX_SIZE, MAX_OBJECT_ID  # noqa: F401  (re-exported)
from .prompts import check_keyframes, fit_mask, masks_from_label_map  # noqa: F401  (re-exported)
from .merge import merge_labels, soft_aggregate
from .target_model import SolverConfig, TargetModel, enough_pixels



PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONFIDENT_CELLS_RATE = 0.2  # the running mean of an object's confident cells (TrackerConfig.auto_hide)


@dataclass(frozen=True)
class TrackerConfig:
    solver: SolverConfig = field(default_factory=SolverConfig)
    num_aug: int = 5  # the first frame plus 4 augmented copies; 1 turns augmentation off
    merge: str = "released"  # or "single" (see merge.merge_labels)
    max_size: int | None = DEFAULT_MAX_SIZE  # longest side at which to infer (None: full resolution); masks are
    # returned at the input size
    seed: int = 0
    reanchor_aug: int = 1  # samples learned from a later keyframe of a tracked object (1: the frame alone)
    # "memory": a later keyframe enters D's memory as a protected sample and W2 is refitted; "restart": D is fitted
    # anew on it, as on a first frame (num_aug samples), and the object's history is dropped
    reanchor: str = "memory"
    # After a keyframe that says an object is not visible, its output stays empty (and D learns nothing) until D
    # scores above 0.5 on at least this fraction of the cells its mask covered at its last visible keyframe: S alone
    # would paint something on every frame from D's faint leftovers (bmx-bumps behind the ramp, docs/keyframes.md).
    reappear_fraction: float = 0.25
    # inference-only rewrites that keep the masks (core/fast.py: BatchNorm folded, channels-last backbone, S's
    # upsampler in its cheaper equal order, on a GPU S run once per frame for all its objects); False runs the
    # modules as given, one object at a time, as the released code does
    fast: bool = True
    # "float32", or reduced precision for the backbone and S ("bfloat16": CPUs with AVX-512 BF16 / AMX, and GPUs;
    # "float16": GPUs); D and its solver stay float32. Measured mask agreement: bench/e2e.py
    precision: str = "float32"
    # D-only: an object's probability is clamp(0.5 + d_only_gain * (score - d_only_center), 0, 1) of D's upsampled
    # score (D is fitted to 0/1 labels; 1.0 / 0.5: the score itself). The mask is where it passes 0.5, and D's memory
    # learns the merged probabilities, so a gain above 1 feeds D sharper labels of its own output. None: the
    # model's own (``models.D_ONLY_INFERENCE`` for the named D-only model), else 1.0
    d_only_gain: float | None = None
    d_only_center: float = 0.5
    # Where D's scores count: inside the object's box on the previous frame grown on every side by search_margin
    # times the box's longer side; D's positive scores outside it are cut to 0 before S (and so before D's memory
    # learns the output), so a look-alike far from the object is neither segmented nor learned. The whole frame
    # while the object has no box (lost, or hidden after a "not visible" keyframe). None: the model's own
    # (``models.OFFLINE_INFERENCE``: 0.25 for this project's models and D-only), else the whole frame as released;
    # math.inf: the whole frame. Measured in docs/tracker_settings.md.
    search_margin: float | None = None
    # For objects that hide and reappear in place; off for every model (with the shipped one a ball hidden for a
    # frame was never found again: docs/tracker_settings.md). While a tracked object's output is empty (lost, not
    # declared hidden), its window stays at its last box and grows on every side by search_growth * search_margin
    # times the box's longer side per frame lost (None: the model's own, else math.inf: the whole frame at once).
    search_growth: float | None = None
    # An object on whose frame D scores above 0.5 on fewer than auto_hide times its usual number of such cells (a
    # running mean over its visible frames) is hidden from that frame on, as after a "not visible" keyframe (empty
    # output, D learns nothing, its window stays where it was lost), until reappear_fraction of that number returns.
    # None: the model's own, else 0 (never, as released)
    auto_hide: float | None = None


@dataclass
class StepOutput:
    labels: torch.Tensor  # (H, W) int64 object ids at the input resolution, 0 = background
    probabilities: dict[int, torch.Tensor]  # per object, (H, W) float32 before the multi-object merge
    coarse_scores: dict[int, torch.Tensor]  # per tracked object, D's (Hf, Wf) scores (absent on its keyframes)
    inference_probabilities: dict[int, torch.Tensor] = field(default_factory=dict)  # the same at the inference size


@dataclass
class _Object:
    target_model: TargetModel
    start_frame: int
    visible_cells: float = 0.0  # the object's size at its last visible keyframe, in D's score cells
    hidden: bool = False  # annotated "not visible" (or hidden by auto_hide) and not seen again since
    last_box: tuple[float, float, float, float] | None = None  # its output's last box (inference size)
    lost_frames: int = 0  # frames since its output was last followed (its window grows meanwhile)
    confident_cells: float | None = None  # running mean of D's cells above 0.5 on its visible tracked frames


def _box(mask: torch.Tensor) -> tuple[float, float, float, float] | None:
    """(y0, x0, y1, x1) pixel edges of a (H, W) boolean mask's bounding box; None when it is empty."""
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    if ys.numel() == 0:
        return None
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    return float(ys[0]), float(xs[0]), float(ys[-1] + 1), float(xs[-1] + 1)


def search_window(scores: torch.Tensor, box: tuple[float, float, float, float], hw: tuple[int, int],
                  margin: float) -> torch.Tensor:
    """D's scores (Hf, Wf) on a frame of size ``hw`` with the positive ones cut to 0 on the cells whose centres lie
    outside ``box`` (pixel edges at ``hw``) grown on every side by ``margin`` times its longer side."""
    if math.isinf(margin):
        return scores
    hf, wf = scores.shape[-2:]
    y0, x0, y1, x1 = box
    pad = margin * max(y1 - y0, x1 - x0)
    cy = (torch.arange(hf, device=scores.device, dtype=torch.float32) + 0.5) * (hw[0] / hf)
    cx = (torch.arange(wf, device=scores.device, dtype=torch.float32) + 0.5) * (hw[1] / wf)
    inside = ((cy >= y0 - pad) & (cy <= y1 + pad))[:, None] & ((cx >= x0 - pad) & (cx <= x1 + pad))[None]
    return torch.where(inside, scores, scores.clamp(max=0.0))


def inference_size(hw: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    h, w = hw
    if max_size is None or max(h, w) <= max_size:
        return h, w
    s = max_size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def coarse_score_map(scores, inference_hw: tuple[int, int], frame_hw: tuple[int, int]) -> np.ndarray:
    """D's coarse scores (Hf, Wf) as a (H, W) float32 map of the frame in [0, 1] (the paper's Figure 1 view): the
    same steps that make the D-only model's probabilities (upsampled to the inference size, clipped) and its output
    (resized to the frame), so with the D-only model the map of a tracked object is its probability."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    m = ops.upsample(s, tuple(inference_hw)).clamp(0.0, 1.0)
    if tuple(inference_hw) != tuple(frame_hw):
        m = F.interpolate(m[None, None], size=tuple(frame_hw), mode="bilinear", align_corners=False)[0, 0]
    return m.numpy()


class FRTMTracker:
    def __init__(self, backbone, segnet=None, config: TrackerConfig = TrackerConfig(), device="cpu"):
        if config.reanchor not in ("memory", "restart"):
            raise ValueError(f"reanchor must be 'memory' or 'restart', got {config.reanchor!r}")
        if config.search_margin is not None and not config.search_margin >= 0:
            raise ValueError(f"search_margin must be >= 0 (math.inf: the whole frame; None: the model's own), got "
                             f"{config.search_margin!r}")
        if config.search_growth is not None and not config.search_growth >= 0:
            raise ValueError(f"search_growth must be >= 0 (math.inf: the whole frame once lost; None: the model's "
                             f"own), got {config.search_growth!r}")
        if config.auto_hide is not None and not 0 <= config.auto_hide < 1:
            raise ValueError(f"auto_hide must be in [0, 1) (0: off; None: the model's own), got {config.auto_hide!r}")
        if config.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {config.precision!r}")
        self.backbone = backbone.to(device).eval()
        self.segnet = segnet.to(device).eval() if segnet is not None else None
        if config.fast:
            from .fast import fast_backbone, fast_segnet

            self.backbone = fast_backbone(self.backbone)
            self.segnet = fast_segnet(self.segnet) if self.segnet is not None else None
        self.config = config
        self.device = torch.device(device)
        self.objects: dict[int, _Object] = {}
        self.frame_index = -1
        layers = {backbone.target_layer}
        if segnet is not None:  # the maps S reads (its levels may include D's tap)
            layers |= set(segnet.seg_layers)
        self._layers = tuple(sorted(layers))

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.objects)

    def reset(self) -> None:
        self.objects.clear()
        self.frame_index = -1

    # -- the per-frame API ------------------------------------------------------------------------------------
    def shrink(self, image) -> np.ndarray:
        """A frame at the inference size (the longest side at most ``config.max_size``), as :meth:`step` uses it;
        pass the result with ``frame_hw`` to step over frames shrunk once (e.g. cached for a second pass)."""
        image = self._check_image(image)
        hw = inference_size(image.shape[:2], self.config.max_size)
        if hw == image.shape[:2]:
            return image
        return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)

    @torch.no_grad()
    def step(self, image, new_masks: dict[int, object] | None = None, *, frame_hw=None) -> StepOutput:
        """Process the next frame. ``image``: (H, W, 3) uint8 RGB. ``new_masks``: masks of the objects annotated on
        this frame, at the frame's size: an object not yet tracked starts there; a tracked one is re-anchored (its
        D learns the mask as a protected sample) and its output there is the mask. An empty mask says the object is
        not visible on this frame: a tracked object's D learns the frame as background; an untracked one waits.
        ``frame_hw``: the frame's own size when ``image`` was already shrunk by :meth:`shrink` (outputs come back at
        ``frame_hw``)."""
        image = self._check_image(image)
        index = self.frame_index + 1  # committed at the end: a step that raises leaves the tracker as it was
        if frame_hw is None:
            full_hw = image.shape[:2]
            image = self.shrink(image)
        else:
            full_hw = (int(frame_hw[0]), int(frame_hw[1]))
            if inference_size(full_hw, self.config.max_size) != image.shape[:2]:
                raise ValueError(f"a shrunk {image.shape[0]}x{image.shape[1]} frame does not match frame_hw {full_hw} "
                                 f"at max_size {self.config.max_size}: pass tracker.shrink(frame)")
        hw = image.shape[:2]
        prompts, full_prompts = self._prepare_prompts(new_masks or {}, full_hw, hw, index)
        for obj_id in [i for i, m in prompts.items() if i not in self.objects and not m.any()]:
            del prompts[obj_id], full_prompts[obj_id]  # "not visible here" for an object not started yet: nothing to do
        if not self.objects and not prompts:
            raise ValueError("no object to track: give the masks of the objects to follow on the frame where each "
                             "first appears (new_masks={obj_id: mask})")

        probs: dict[int, torch.Tensor] = {}
        coarse: dict[int, torch.Tensor] = {}
        projected: dict[int, torch.Tensor] = {}
        tracked = [i for i in self.objects if i not in prompts]
        reanchored = [i for i in prompts if i in self.objects]
        target_feat = None
        if tracked or reanchored:
            layers = self._layers if tracked else (self.backbone.target_layer,)
            feats = self._features(self._to_tensor(image)[None], layers)
            target_feat = feats[self.backbone.target_layer][0].contiguous()  # D's kernels read NCHW
            visible = []
            for obj_id in tracked:
                obj = self.objects[obj_id]
                h, s = obj.target_model.predict(target_feat)
                if self.config.search_margin is not None and obj.last_box is not None:
                    s = search_window(s, obj.last_box, hw, self._margin(obj))
                projected[obj_id], coarse[obj_id] = h, s
                if self._stays_hidden(obj, s):
                    probs[obj_id] = torch.zeros(hw, device=self.device)
                    continue
                visible.append(obj_id)
            # On a GPU, S once for all the frame's objects (features reduced once, shared; one launch per layer).
            # Not on CPU: measured slower there (3 objects, 854x480, 2 threads: 1.77 against 2.23 FPS per object).
            if self.config.fast and len(visible) > 1 and self.device.type == "cuda":
                batch = self._probability(torch.stack([coarse[i] for i in visible]), feats, hw)
                probs.update(zip(visible, batch))
            else:
                probs.update((i, self._probability(coarse[i][None], feats, hw)[0]) for i in visible)

        for obj_id, mask in prompts.items():
            if obj_id in self.objects:
                self._reanchor(obj_id, image, mask, target_feat, index)
            else:
                self._start_object(obj_id, image, mask, target_feat, index)
            obj = self.objects[obj_id]
            obj.hidden = not mask.any()
            if not obj.hidden:
                obj.visible_cells = float(mask.sum()) / self.backbone.stride ** 2
            probs[obj_id] = torch.from_numpy(mask).to(self.device, torch.float32)
            if self.config.search_margin is not None:
                obj.last_box, obj.lost_frames = _box(probs[obj_id] > 0.5), 0
        if prompts and tracked:
            keep = 1.0 - torch.stack([probs[i] for i in prompts]).amax(dim=0)
            for obj_id in tracked:
                probs[obj_id] = probs[obj_id] * keep

        if tracked:
            ids = sorted(probs)
            merged = soft_aggregate(torch.stack([probs[i] for i in ids]))
            visible = enough_pixels(merged[1:].float(), self.config.solver.min_update_pixels)
            for row, obj_id in enumerate(ids):
                if obj_id in projected:
                    self.objects[obj_id].target_model.update(projected[obj_id], merged[row + 1], visible[row])
                    if self.config.search_margin is not None:
                        self._follow(self.objects[obj_id], merged[row + 1] > 0.5)

        out = self.finish(probs, full_hw, full_prompts, coarse)
        out.inference_probabilities = probs
        self.frame_index = index
        return out

    def finish(self, probs: dict[int, torch.Tensor], full_hw, keyframe_masks: dict[int, np.ndarray] | None = None,
               coarse: dict[int, torch.Tensor] | None = None) -> StepOutput:
        """Per-object probabilities at the inference size -> the frame's output at ``full_hw``: upsampled, the
        objects annotated on the frame given their masks exactly (and carved out of the others), merged."""
        ids = sorted(probs)
        if not ids:
            return StepOutput(labels=torch.zeros(full_hw, dtype=torch.long, device=self.device), probabilities={},
                              coarse_scores=coarse or {})
        stacked = torch.stack([probs[i].to(self.device, torch.float32) for i in ids])
        if tuple(stacked.shape[-2:]) != tuple(full_hw):
            stacked = F.interpolate(stacked[None], size=full_hw, mode="bilinear", align_corners=False)[0]
        if keyframe_masks:  # an annotated frame keeps its annotation exactly, not a resampled copy
            given = {i: torch.from_numpy(np.ascontiguousarray(m)).to(stacked) for i, m in keyframe_masks.items()}
            keep = 1.0 - torch.stack(list(given.values())).amax(dim=0)
            for row, obj_id in enumerate(ids):
                stacked[row] = given[obj_id] if obj_id in given else stacked[row] * keep
        winner = merge_labels(stacked, self.config.merge)
        lut = torch.tensor([0] + ids, device=winner.device)
        return StepOutput(labels=lut[winner], probabilities={i: stacked[r] for r, i in enumerate(ids)},
                          coarse_scores=coarse or {})

    # -- internals ----------------------------------------------------------------------------------------------
    def _stays_hidden(self, obj: _Object, scores: torch.Tensor) -> bool:
        """Whether a tracked object's output is empty on this frame: hidden (by a "not visible" keyframe, or by
        ``auto_hide`` when D's confident cells fall below that share of their running mean) and D does not score
        ``reappear_fraction`` of its cells yet. Updates the hidden state and the running mean."""
        auto_hide = self.config.auto_hide
        if not (obj.hidden or auto_hide):  # nothing to count (on a GPU the count waits for the device)
            return False
        confident = float((scores > 0.5).sum())
        if not obj.hidden and auto_hide and obj.confident_cells is not None \
                and confident < auto_hide * obj.confident_cells:
            obj.hidden, obj.visible_cells = True, obj.confident_cells  # D lost it: hidden until found again
        if obj.hidden and confident < max(1.0, self.config.reappear_fraction * obj.visible_cells):
            return True
        obj.hidden = False
        if auto_hide:
            rate = CONFIDENT_CELLS_RATE
            obj.confident_cells = confident if obj.confident_cells is None else (
                (1 - rate) * obj.confident_cells + rate * confident)
        return False

    def _margin(self, obj: _Object) -> float:
        """The object's search window margin on this frame: ``search_margin``, grown while it is lost."""
        if obj.lost_frames == 0:
            return self.config.search_margin
        growth = self.config.search_growth
        if growth is None or math.isinf(growth):
            return math.inf
        return self.config.search_margin * (1.0 + growth * obj.lost_frames)

    def _follow(self, obj: _Object, mask: torch.Tensor) -> None:
        """After a tracked frame: the window follows the output's box; an empty output keeps the last box (the
        object was lost there, so it is looked for there first) and counts the frame as lost."""
        box = _box(mask)
        if box is None and obj.last_box is not None:  # (a "not visible" keyframe cleared the box: the whole frame)
            obj.lost_frames += 1
        else:
            obj.last_box, obj.lost_frames = box, 0

    def _check_image(self, image) -> np.ndarray:
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB arrays, got shape {image.shape} dtype {image.dtype}")
        return np.ascontiguousarray(image)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).to(self.device).permute(2, 0, 1)

    def _prepare_prompts(self, new_masks, full_hw, hw, index) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """Checked prompt masks at the inference size, and at the frame's size (always: the output there is exact)."""
        prompts, full = {}, {}
        for obj_id, m in check_keyframes({index: dict(new_masks)}, full_hw).get(index, {}).items():
            if not isinstance(m, np.ndarray):
                raise ValueError(f"frame {index}: object {obj_id} is given a box; the tracker takes masks (boxes are "
                                 "turned into masks by propagate_in_video, or core.box_prompt.box_to_mask)")
            full[obj_id] = m
            if hw != full_hw:
                small = cv2.resize(m.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0
                if m.any() and not small.any():  # a sliver that vanished when shrinking: keep its nearest pixel
                    ys, xs = np.nonzero(m)
                    small[int(ys[0] * hw[0] / full_hw[0]), int(xs[0] * hw[1] / full_hw[1])] = True
                m = small
            prompts[obj_id] = m
        return prompts, full

    def _keyframe_samples(self, obj_id: int, image: np.ndarray, mask: np.ndarray, frame_feature, num_aug: int):
        """Target-layer features and labels of a keyframe and its augmented copies (sample 0: the frame itself,
        whose features are reused when already computed)."""
        if num_aug == 1:
            images, labels = image[None], np.asarray(mask, np.float32)[None]
        else:
            images, labels = augment_first_frame(image, mask, num_aug=num_aug, seed=self.config.seed + obj_id)
        layer = self.backbone.target_layer
        first = 1 if frame_feature is not None else 0
        parts = [frame_feature[None]] if frame_feature is not None else []
        if len(images) > first:
            batch = torch.from_numpy(images[first:]).to(self.device).permute(0, 3, 1, 2)
            parts.append(self._features(batch, (layer,))[layer].contiguous())
        return torch.cat(parts), torch.from_numpy(labels).to(self.device)

    def _reanchor(self, obj_id: int, image: np.ndarray, mask: np.ndarray, frame_feature, index: int) -> None:
        visible = bool(mask.any())
        if self.config.reanchor == "restart" and visible:
            self._start_object(obj_id, image, mask, frame_feature, index)
            return
        # "not visible here": the frame alone, all background (augmenting an empty target adds nothing)
        num_aug = self.config.reanchor_aug if visible else 1
        feats, labels = self._keyframe_samples(obj_id, image, mask, frame_feature, num_aug)
        self.objects[obj_id].target_model.reanchor(feats, labels)

    def _start_object(self, obj_id: int, image: np.ndarray, mask: np.ndarray, frame_feature, index: int) -> None:
        """Fit a new D on the frame and its augmented copies (the released first-frame fit)."""
        cfg = self.config
        feats, labels = self._keyframe_samples(obj_id, image, mask, frame_feature, cfg.num_aug)
        generator = torch.Generator().manual_seed(cfg.seed + obj_id)
        model = TargetModel(feats.shape[1], cfg.solver, generator=generator, device=self.device)
        model.initialize(feats, labels)
        self.objects[obj_id] = _Object(model, index)

    def _autocast(self):
        dtype = PRECISIONS[self.config.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _features(self, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        """Backbone features in float32 (whatever the precision), in the backbone's memory format (S reads them
        as they are; D's kernels take a contiguous copy of their layer)."""
        with self._autocast():
            feats = self.backbone(images, layers=layers)
        return {k: v.float() for k, v in feats.items()}

    def _probability(self, scores: torch.Tensor, feats: dict, hw) -> torch.Tensor:
        """D's scores (N, Hf, Wf) of N objects on one frame -> their probabilities (N, H, W)."""
        if self.segnet is None:  # D-only: D was fitted to 0/1 labels, so its upsampled score is a probability
            cfg = self.config
            up = ops.upsample(scores, hw)
            gain = 1.0 if cfg.d_only_gain is None else cfg.d_only_gain
            if gain != 1.0 or cfg.d_only_center != 0.5:
                up = 0.5 + gain * (up - cfg.d_only_center)
            return up.clamp(0.0, 1.0)
        with self._autocast():
            logits = self.segnet(scores[:, None], feats, hw, reordered=self.config.fast)
        return torch.sigmoid(logits[:, 0].float())

    def memory_bytes(self) -> int:
        """Bytes held by all objects' sample memories (fixed once each object has started)."""
        return sum(o.target_model.memory.nbytes for o in self.objects.values())

