"""FRTM as a FiftyOne video model, for ``apply_model`` and the model zoo.

    model = frtm_plugin.load_model("default")                      # or foz.load_zoo_model("frtm-vos-default")
    dataset.apply_model(model, label_field="frtm", prompt_field="frames.prompts")

Like FiftyOne's SAM 2 video model, the prompts come from a frame field of each sample, named through
``needs_fields`` (``prompt_field=`` of ``apply_model``, or of :func:`load_model`), spelled ``frames.<name>`` or
``<name>``. The keyframe semantics are the SDK's (:func:`frtm_plugin.propagate`): every annotated (object, frame) is
a keyframe, App copies (``keyframe=False``) are skipped, identity is ``instance`` > ``index`` > position, boxes
become masks, empty masks say "not visible here", ``direction="both"`` by default.

``predict`` returns ``{frame_number: Detections}`` (``output="detections"``, the default: one label per object and
frame with its cropped mask, ``index`` = object id, one ``instance`` per object, editable in the App as a track),
or ``{frame_number: {"segmentation": Segmentation, "instances": Detections}}`` (``output="both"``), which
``apply_model`` stores as ``<label_field>_segmentation`` and ``<label_field>_instances``. Unlike ``propagate`` it
keeps no run record, lock or resume state: ``apply_model`` writes what it returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import fiftyone.core.models as fom

from ..core.defaults import DEFAULT_MAX_SIZE
from .labels import frame_field_name, to_detections, to_segmentation
from .sdk import open_video_prompts

OUTPUTS = ("detections", "both")


@dataclass
class FRTMVideoModelConfig:
    """What :class:`FRTMVideoModel` runs with (``apply_model`` looks for FiftyOne's optional config attributes)."""

    name: str = "default"  # a shipped model name, "d-only", or a checkpoint path
    backbone: str | None = None
    device: str | None = None  # None: CUDA when available
    max_size: int | None = DEFAULT_MAX_SIZE
    num_aug: int = 5
    merge: str = "released"
    seed: int = 0
    direction: str = "both"
    combine: str = "blend"
    output: str = "detections"


class FRTMVideoModel(fom.Model, fom.SamplesMixin):
    """A FiftyOne model for videos (``media_type == "video"``) that propagates each sample's prompts."""

    def __init__(self, config: FRTMVideoModelConfig | None = None, prompt_field: str | None = None):
        import torch

        from ..core.target_model import SolverConfig
        from ..core.tracker import TrackerConfig
        from ..core.video_loop import COMBINE_MODES, DIRECTIONS
        from ..models import build_tracker

        fom.SamplesMixin.__init__(self)
        self.config = config = config or FRTMVideoModelConfig()
        if config.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {config.output!r}")
        if config.direction not in DIRECTIONS or config.combine not in COMBINE_MODES:
            raise ValueError(f"direction must be one of {DIRECTIONS} and combine one of {COMBINE_MODES}, got "
                             f"{config.direction!r} and {config.combine!r}")
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        tracker_config = TrackerConfig(solver=SolverConfig(), num_aug=config.num_aug, merge=config.merge,
                                       max_size=config.max_size, seed=config.seed)
        self.tracker, self.info = build_tracker(config.name, config.backbone, device, tracker_config)
        self.default_prompt_field = prompt_field

    def __repr__(self) -> str:
        return f"FRTMVideoModel({self.info.describe()}, {asdict(self.config)})"

    # -- fiftyone.core.models.Model ------------------------------------------------------------------------------
    @property
    def media_type(self) -> str:
        return "video"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value) -> None:
        pass  # frames are read and shrunk by the tracker itself

    # apply_model sets needs_fields from its keyword arguments (none: {}) and loads only those fields of each
    # sample: the prompt field given to load_model stands in when none is given, and both spellings load
    @property
    def needs_fields(self) -> dict:
        fields = dict(self._fields) or ({"prompt_field": self.default_prompt_field} if self.default_prompt_field
                                        else {})
        return {k: "frames." + frame_field_name(v) for k, v in fields.items() if v}

    @needs_fields.setter
    def needs_fields(self, fields) -> None:
        self._fields = dict(fields or {})

    def prompt_field(self) -> str:
        """The prompt frame field's name (without ``frames.``), from ``needs_fields``."""
        fields = self.needs_fields
        field = fields.get("prompt_field", next(iter(fields.values()), None))
        if not field:
            raise ValueError("no prompt field: pass prompt_field='frames.<field>' to apply_model (or to "
                             "load_model): the frame field whose boxes, masks or polylines are the keyframes")
        return frame_field_name(field)

    def predict(self, arg, sample=None) -> dict:
        """Propagate one video's prompts. ``arg``: FiftyOne's video reader (its frames are decoded again here, by
        the decoder the SDK uses, so both give the same masks); ``sample``: the video's sample."""
        from ..core.video_loop import propagate_in_video

        if sample is None:
            raise ValueError("FRTMVideoModel needs the sample (its prompt field): use dataset.apply_model()")
        if getattr(sample, "support", None) is not None:
            raise ValueError("FRTMVideoModel runs on whole videos, not clip views: apply it to the videos")
        field = self.prompt_field()
        out: dict = {}
        with open_video_prompts(sample, field) as video:
            for res in propagate_in_video(self.tracker, video.frames, video.prompts.keyframes,
                                          direction=self.config.direction, combine=self.config.combine,
                                          num_frames=video.num_frames):
                dets = to_detections(res.labels, res.probabilities, video.prompts.names, video.instances)
                if self.config.output == "detections":
                    out[res.index + 1] = dets
                else:
                    out[res.index + 1] = {"segmentation": to_segmentation(res.labels), "instances": dets}
        return out


def load_model(name: str = "default", *, prompt_field: str | None = None, **options) -> FRTMVideoModel:
    """The FiftyOne video model for ``apply_model``. ``name``: ``"default"`` (the shipped model), ``"d-only"``,
    or a checkpoint path; ``options``: the fields of :class:`FRTMVideoModelConfig` (``max_size``, ``direction``,
    ``output``, ``device``, ...)."""
    unknown = set(options) - set(FRTMVideoModelConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; FRTMVideoModel takes "
                        f"{sorted(set(FRTMVideoModelConfig.__dataclass_fields__) - {'name'})}")
    return FRTMVideoModel(FRTMVideoModelConfig(name=str(name), **options), prompt_field=prompt_field)


__all__ = ["FRTMVideoModel", "FRTMVideoModelConfig", "load_model"]
