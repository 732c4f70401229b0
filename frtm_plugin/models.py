"""Named models -> a ready tracker: ``"default"`` (the offline MobileNetV2 model), ``"d-only"``, or a checkpoint path.

A checkpoint in the released format (``{'model': {'refiner.*': ...}}``) holds only S; its backbone is inferred from
its widths (or its ``meta``), and the backbone's ImageNet weights are resolved as ``core.weights`` says.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .core.backbone import build_backbone
from .core.segnet import load_segnet_checkpoint
from .core.target_model import OFFLINE_LEARNING_RATE
from .core.tracker import FRTMTracker, TrackerConfig
from .core.weights import file_sha256

log = logging.getLogger(__name__)

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = PACKAGE_WEIGHTS / "frtm_mobilenet_v2_davis16.pth"
#: the FiftyOne zoo's names (manifest.json at the repository root) -> the shipped checkpoints
ZOO_MODELS = {"frtm-vos-default": DEFAULT_CHECKPOINT}


def zoo_checkpoint(zoo_name: str) -> Path:
    """The packaged checkpoint of a zoo model name (what the zoo source's ``download_model`` copies)."""
    if zoo_name not in ZOO_MODELS:
        raise ValueError(f"unknown FRTM zoo model {zoo_name!r}; this version ships {sorted(ZOO_MODELS)}")
    return ZOO_MODELS[zoo_name]


DEFAULT_BACKBONE = "mobilenet_v2"
#: The inference settings this project's models use where the released ones were measured worse (a checkpoint's
#: ``meta["inference"]``, written by the trainer; D-only uses them too). Checkpoints without them, such as the
#: authors' released ones, keep the released settings. D's memory rate, and D's scores kept near the object's last
#: box (held-out D+S 77.5 -> 78.4, all 30 D-only 75.3 -> 75.6; docs/tracker_settings.md).
SEARCH_MARGIN = 0.25
OFFLINE_INFERENCE = {"solver": {"learning_rate": OFFLINE_LEARNING_RATE}, "tracker": {"search_margin": SEARCH_MARGIN}}
#: D-only's: the same, and D's score mapped to a probability with a gain of 2 about 0.5, so that D's memory learns
#: sharper labels of its own output (all 30 DAVIS-2016 train videos 74.2 -> 75.3 J&F, better on 20)
D_ONLY_INFERENCE = {"solver": {"learning_rate": OFFLINE_LEARNING_RATE},
                    "tracker": {"d_only_gain": 2.0, "search_margin": SEARCH_MARGIN}}


def model_inference(checkpoint_info: dict | None) -> dict:
    """A model's own inference settings: a checkpoint's ``meta["inference"]`` (none in the authors' released
    checkpoints: the released settings), or for D-only (``None``) :data:`D_ONLY_INFERENCE`."""
    if checkpoint_info is None:
        return D_ONLY_INFERENCE
    return (checkpoint_info.get("meta") or {}).get("inference") or {}


def model_config(config: TrackerConfig, inference: dict) -> TrackerConfig:
    """``config`` with the settings it leaves to the model (``None``) filled from the model's inference settings
    (:func:`model_inference`): ``{"solver": {SolverConfig field: value}, "tracker": {TrackerConfig field: value}}``."""
    solver, tracker = inference.get("solver") or {}, inference.get("tracker") or {}
    unknown = (sorted(set(inference) - {"solver", "tracker"})
               + sorted(set(solver) - {f.name for f in dataclasses.fields(config.solver)})
               + sorted(set(tracker) - ({f.name for f in dataclasses.fields(config)} - {"solver"})))
    if unknown:
        raise ValueError(f"the model's inference settings have unknown entries {unknown} (expected "
                         "{'solver': {SolverConfig field: value}, 'tracker': {TrackerConfig field: value}})")
    own_solver = {k: v for k, v in solver.items() if getattr(config.solver, k) is None}
    own = {k: v for k, v in tracker.items() if getattr(config, k) is None}
    if own_solver:
        own["solver"] = dataclasses.replace(config.solver, **own_solver)
    return dataclasses.replace(config, **own) if own else config


@dataclass
class ModelInfo:
    """What a run used, for logs and for recording alongside results."""

    model: str
    backbone: str
    target_layer: str
    segnet_path: str | None = None
    segnet_sha256: str | None = None
    backbone_weights: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        s = f"{self.model} (backbone {self.backbone}, D on {self.target_layer}"
        s += f", S from {Path(self.segnet_path).name})" if self.segnet_path else ", no S: D-only)"
        return s


def build_tracker(model: str = "default", backbone: str | None = None, device: str = "cpu",
                  config: TrackerConfig = TrackerConfig(), backbone_weights: str | os.PathLike | None = "imagenet",
                  target_layer: str | None = None) -> tuple[FRTMTracker, ModelInfo]:
    segnet, meta, path = None, {}, None
    notes = []
    if model == "default":
        if DEFAULT_CHECKPOINT.is_file():
            path = DEFAULT_CHECKPOINT
        else:
            notes.append(f"no trained segmentation network is shipped yet ({DEFAULT_CHECKPOINT} is absent): "
                         "running D-only")
    elif model != "d-only":
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model checkpoint not found: {path} (give 'default', 'd-only' or the path of a "
                                    "checkpoint in the released FRTM format)")
    if path is not None:
        segnet, meta = load_segnet_checkpoint(path)
        ckpt_backbone = meta["backbone"]
        if backbone is not None and backbone != ckpt_backbone:
            raise ValueError(f"{path} was trained on {ckpt_backbone} features; it cannot run on {backbone} "
                             f"(omit --backbone or pass {ckpt_backbone})")
        backbone = ckpt_backbone
        target_layer = target_layer or meta.get("target_layer")
    backbone = backbone or DEFAULT_BACKBONE
    net = build_backbone(backbone, weights=backbone_weights, target_layer=target_layer)
    for n in notes:
        log.warning(n)
    inference = model_inference(meta if path is not None else None)
    tracker = FRTMTracker(net, segnet, model_config(config, inference), device=device)
    info = ModelInfo(model=model, backbone=backbone, target_layer=net.target_layer,
                     segnet_path=str(path) if path else None,
                     segnet_sha256=file_sha256(path) if path else None,
                     backbone_weights=str(getattr(net, "weights_path", None)), notes=notes)
    return tracker, info
