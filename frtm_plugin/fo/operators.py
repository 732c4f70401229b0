"""The plugin's operators: thin forms over :mod:`frtm_plugin.fo.sdk`, which is imported only when an operator runs
(listing the plugin or drawing a form never loads torch).

``@frtm/frtm-vos/propagate``: propagate prompt masks through the target videos (immediate or delegated).
``@frtm/frtm-vos/evaluate``: DAVIS J, F and J&F per frame, object and video.
``@frtm/frtm-vos/show_heatmap``: show one object's coarse scores (or the max over objects) in stored heatmaps.
``@frtm/frtm-vos/davis_jf``: the same scores as a custom metric of FiftyOne's ``evaluate_segmentations``.
"""

from __future__ import annotations

import math

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.evaluation_metric import EvaluationMetric, EvaluationMetricConfig

from ..core.defaults import DEFAULT_MAX_SIZE
from .labels import PROMPT_TYPES, frame_field_name

MODEL_CHOICES = {"default": "Offline default (MobileNetV2)", "d-only": "Target model only (no S)",
                 "path": "Checkpoint file (released FRTM format)"}


def _frame_fields(ctx, types_wanted) -> list[str]:
    schema = ctx.dataset.get_frame_field_schema() or {} if ctx.dataset is not None else {}
    return sorted(name for name, f in schema.items() if getattr(f, "document_type", None) in types_wanted)


def _prompt_fields(ctx) -> list[str]:
    """Frame fields that can hold prompts: Segmentation, Detections (masks or boxes) and Polylines."""
    return _frame_fields(ctx, PROMPT_TYPES)


def _keyframes_found(ctx, name: str) -> str:
    """What the form says about the chosen prompt field: how many keyframe labels, in how many videos."""
    view = ctx.target_view()
    kind = (ctx.dataset.get_frame_field_schema() or {})[name].document_type
    if kind is fo.Segmentation:
        frames, videos = view.count(f"frames.{name}"), len(view.exists(f"frames.{name}"))
        return f"{_n(frames, 'annotated frame')} in {_n(videos, 'video')}"
    items = "detections" if kind is fo.Detections else "polylines"
    total = view.count(f"frames.{name}.{items}")
    copies = view.count_values(f"frames.{name}.{items}.keyframe").get(False, 0)
    return (f"{_n(total - copies, 'keyframe label')} in {_n(len(view.exists(f'frames.{name}')), 'video')}"
            + (f" (the {_n(copies, 'copy', 'copies')} the App made between keyframes are ignored)" if copies else ""))


def _shards(ctx) -> int:
    try:
        return max(1, int(ctx.params.get("shards") or 1)) if ctx.params.get("delegate") else 1
    except (TypeError, ValueError):
        return 1


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def _progress_callback(ctx):
    def report(fraction, message):
        ctx.set_progress(progress=fraction, label=message)
    return report


class PropagateOperator(foo.Operator):
    @property
    def config(self):
        # allow_distributed_execution: FiftyOne Enterprise may split the run itself (open source ignores it; there
        # the form's "Shards" queues that many delegated operations over disjoint videos)
        return foo.OperatorConfig(name="propagate", label="FRTM: propagate masks through videos", dynamic=True,
                                  allow_immediate_execution=True, allow_delegated_execution=True,
                                  allow_distributed_execution=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()  # opts the form into the system's dataset / current view / selected samples choice
        if ctx.dataset is None or ctx.dataset.media_type != "video":
            inputs.view("warning", types.Warning(label="FRTM propagates masks through videos: open a video "
                                                       "dataset"), invalid=True, error_message="not a video dataset")
            return types.Property(inputs)
        prompts = _prompt_fields(ctx)
        if not prompts:
            inputs.view("warning", types.Warning(
                label="No frame-level mask field",
                description="Prompts are frame-level Detections (boxes or masks, as the App draws them), "
                            "Polylines or Segmentation masks (object ids) on one or more keyframes per object."),
                        invalid=True, error_message="no prompt field")
            return types.Property(inputs)
        choices = types.Dropdown()
        for p in prompts:
            choices.add_choice(f"frames.{p}", label=f"frames.{p}")
        default = next((p for p in prompts if "prompt" in p), prompts[0])
        # a string with a dropdown, not an enum: FiftyOne's "frames.name" and the bare "name" are both accepted
        inputs.str("prompt_field", default=f"frames.{default}", required=True, label="Prompt field",
                   description="Boxes, masks or polylines on keyframes (every annotated frame steers the result)",
                   view=choices)
        inputs.str("label_field", default="frtm", required=True, label="Output field",
                   description="Writes frames.<field> (Segmentation), <field>_instances (Detections)")
        chosen = ctx.params.get("prompt_field") or f"frames.{default}"
        if frame_field_name(chosen) not in prompts:
            inputs.view("bad_prompt", types.Warning(
                label=f"'{chosen}' is not a prompt field of this dataset",
                description="Choose one of: " + ", ".join(f"frames.{p}" for p in prompts)), invalid=True,
                error_message=f"'{chosen}' is not a prompt field")
        else:
            inputs.view("found", types.Notice(label=f"Keyframes: {_keyframes_found(ctx, frame_field_name(chosen))}"))
        direction = types.RadioGroup()
        direction.add_choice("both", label="Both directions",
                             description="Also fill the frames before each object's first keyframe")
        direction.add_choice("forward", label="Forward only")
        inputs.enum("direction", direction.values(), default="both", label="Direction", view=direction)
        model = types.RadioGroup()
        for k, v in MODEL_CHOICES.items():
            model.add_choice(k, label=v)
        inputs.enum("model", model.values(), default="default", label="Model", view=model)
        if ctx.params.get("model") == "path":
            inputs.str("model_path", required=True, label="Checkpoint path",
                       description="e.g. rn101_all.pth; its backbone is inferred from the file")
        inputs.int("max_size", label="Inference size cap (px)", required=False, default=DEFAULT_MAX_SIZE,
                   description=f"Longest side at which to infer (default {DEFAULT_MAX_SIZE}, the scale the model was "
                               "trained at; 0 = full resolution); masks are stored at full resolution")
        inputs.bool("whole_frame", default=False, label="Search the whole frame",
                    description="Off: each object is looked for near where it was on the previous frame (our "
                                "models' default; ignores look-alikes elsewhere). On: anywhere, for objects that jump "
                                "far between frames")
        inputs.bool("store_heatmaps", default=False, label="Store coarse-score heatmaps",
                    description="frames.<field>_scores: the target model's scores (the paper's Figure 1 view)")
        inputs.bool("overwrite", default=False, label="Overwrite",
                    description="Off: resume, skipping videos already done with the same configuration and prompts")
        inputs.bool("force", default=False, label="Replace labels FRTM did not write",
                    description="Allow writing into an output field that already holds other labels (never the "
                                "prompt field or an evaluation's ground truth)")
        inputs.bool("delegate", default=False, label="Delegate",
                    description="Run in a delegated worker (recommended for whole datasets)")
        if ctx.params.get("delegate"):
            inputs.int("shards", default=1, label="Shards", min=1,
                       description="Queue this many delegated operations over disjoint videos (balanced by frames), "
                                   "for as many `fiftyone delegated launch` workers on this database (docs/scale.md)")
            if (ctx.params.get("shards") or 1) < 1:
                inputs.view("bad_shards", types.Warning(label="Shards must be at least 1"), invalid=True,
                            error_message="shards must be at least 1")
        return types.Property(inputs, view=types.View(label="FRTM: propagate masks"))

    def resolve_delegation(self, ctx):
        # a sharded request only queues its shards (each one delegated): that part runs at once
        return bool(ctx.params.get("delegate", False)) and _shards(ctx) == 1

    def execute(self, ctx):
        p = ctx.params
        model = p.get("model", "default")
        if model == "path":
            model = p["model_path"]
        from . import sdk

        max_size = p.get("max_size")
        max_size = None if max_size == 0 else (max_size or DEFAULT_MAX_SIZE)  # 0: full resolution; empty: default
        shard = p.get("shard")
        samples = ctx.dataset.select(shard["sample_ids"], ordered=True) if shard else ctx.target_view()
        if not shard and _shards(ctx) > 1:
            # fail now on bad fields, not in each worker
            sdk.check_request(samples, p["prompt_field"], p.get("label_field", "frtm"), force=bool(p.get("force")),
                              store_heatmaps=bool(p.get("store_heatmaps")))
            params = {k: v for k, v in p.items() if k not in ("delegate", "shards")}
            queued = sdk.queue_shards(samples, params, _shards(ctx), self.uri)
            return {"queued": len(queued["operations"]), "videos_per_shard": queued["videos"],
                    "shard_run": queued["run"]}
        report = sdk.propagate(samples, p["prompt_field"], p.get("label_field", "frtm"), model=model,
                               max_size=max_size, store_heatmaps=bool(p.get("store_heatmaps")),
                               direction=p.get("direction", "both"),
                               search_margin=math.inf if p.get("whole_frame") else None,
                               overwrite=bool(p.get("overwrite")), force=bool(p.get("force")),
                               progress=_progress_callback(ctx), shard=shard)
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        return {"processed": len(report.processed), "skipped": len(report.skipped), "failed": report.failed,
                "keyframes": sum(report.keyframes.values()), "frames": report.frames,
                "reasons": report.reasons,
                "fps": round(report.fps, 2) if report.seconds else None}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("processed", label="Videos propagated")
        outputs.int("skipped", label="Videos skipped (already done)")
        outputs.obj("failed", label="Videos that failed, and why")
        outputs.int("keyframes", label="Keyframes used")
        outputs.int("frames", label="Frames written (only what changed, after a correction)")
        outputs.obj("reasons", label="Why each video was (re)computed")
        outputs.float("fps", label="FPS")
        outputs.int("queued", label="Delegated operations queued (shards)")
        outputs.list("videos_per_shard", types.Number(), label="Videos per shard")
        outputs.str("shard_run", label="Sharded run id")
        return types.Property(outputs)


class EvaluateOperator(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="evaluate", label="FRTM: DAVIS J&F evaluation", dynamic=True,
                                  allow_immediate_execution=True, allow_delegated_execution=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()
        segs = _frame_fields(ctx, (fo.Segmentation,))
        if len(segs) < 2:
            inputs.view("warning", types.Warning(label="Needs two frame-level Segmentation fields"), invalid=True,
                        error_message="needs two Segmentation fields")
            return types.Property(inputs)
        inputs.enum("pred_field", segs, default="frtm" if "frtm" in segs else segs[0], required=True,
                    label="Predictions")
        gt_default = "ground_truth" if "ground_truth" in segs else segs[-1]
        inputs.enum("gt_field", segs, default=gt_default, required=True, label="Ground truth")
        inputs.str("eval_key", default="davis", required=True, label="Evaluation key")
        inputs.bool("delegate", default=False, label="Delegate")
        return types.Property(inputs, view=types.View(label="FRTM: DAVIS J&F"))

    def resolve_delegation(self, ctx):
        return bool(ctx.params.get("delegate", False))

    def execute(self, ctx):
        from . import sdk

        p = ctx.params
        summary = sdk.evaluate(ctx.target_view(), p["pred_field"], p["gt_field"], p.get("eval_key", "davis"),
                               progress=_progress_callback(ctx))
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        o = summary["overall"]
        return {"J&F": o["J&F"], "J": o["J"], "F": o["F"]}


class ShowHeatmapOperator(foo.Operator):
    """Switch stored coarse-score heatmaps between one object and the max over objects, on the open video (modal)
    or the current view: the map is redrawn from the per-object scores kept on each heatmap."""

    @property
    def config(self):
        return foo.OperatorConfig(name="show_heatmap", label="FRTM: show an object's coarse scores", dynamic=True)

    @staticmethod
    def _samples(ctx):
        return ctx.dataset.select(ctx.current_sample) if ctx.current_sample else ctx.target_view()

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = [f for f in _frame_fields(ctx, (fo.Heatmap,)) if f.endswith("_scores")]
        if not fields:
            inputs.view("none", types.Warning(label="No coarse-score heatmaps here",
                                              description="Propagate with 'Store coarse-score heatmaps' first"),
                        invalid=True, error_message="no heatmaps stored")
            return types.Property(inputs)
        field = ctx.params.get("field") if ctx.params.get("field") in fields else fields[0]
        inputs.enum("field", fields, default=field, required=True, label="Heatmaps")
        ids = sorted({i for ids in self._samples(ctx).values(f"frames.{field}.object_ids", unwind=True) if ids
                      for i in ids})
        choices = types.Dropdown()
        choices.add_choice("all", label="All objects (max)")
        for i in ids:
            choices.add_choice(str(i), label=f"Object {i}")
        inputs.enum("object", choices.values(), default="all", required=True, label="Show", view=choices)
        where = "the open video" if ctx.current_sample else "every video of the current view"
        inputs.view("where", types.Notice(label=f"Redraws the heatmaps of {where}"))
        return types.Property(inputs, view=types.View(label="FRTM: show an object's coarse scores"))

    def execute(self, ctx):
        from . import sdk

        chosen = ctx.params.get("object", "all")
        n = sdk.show_heatmap(self._samples(ctx), ctx.params["field"], None if chosen == "all" else int(chosen))
        ctx.trigger("reload_dataset")
        return {"frames": n}


class DavisJFMetric(EvaluationMetric):
    """DAVIS J&F as a custom metric of ``evaluate_segmentations`` (its value: J&F over all objects)."""

    @property
    def config(self):
        cfg = EvaluationMetricConfig(name="davis_jf", label="DAVIS J&F", description="Region similarity J and "
                                     "boundary accuracy F (DAVIS protocol), per frame, object and video",
                                     eval_types=["segmentation"], lower_is_better=False, unlisted=True)
        cfg.kwargs["lower_is_better"] = False  # FiftyOne reads the flag from here when it stores the value
        return cfg

    def compute(self, samples, results, progress=False, **kwargs):
        from . import sdk

        cfg = results.config
        summary = sdk.compute_davis(samples, cfg.pred_field, cfg.gt_field, results.key, progress=progress)
        return summary["overall"]["J&F"]

    def get_fields(self, samples, config, eval_key):
        """Everything the evaluation wrote that is a field: per video, per frame, and the per-object scores on the
        predicted instances' detections (``frames.<pred>_instances.detections.<key>_J`` / ``_F``)."""
        from . import sdk

        return sdk.evaluation_field_paths(samples, config.pred_field, eval_key)

    def rename(self, samples, config, eval_key, new_eval_key):
        from . import sdk

        sdk.rename_davis_evaluation(samples, config.pred_field, eval_key, new_eval_key)

    def cleanup(self, samples, config, eval_key):
        from . import sdk

        sdk.delete_davis_evaluation(samples, config.pred_field, eval_key)


def register(plugin):
    from .panels import JFTimelinePanel, JFVideosPanel

    plugin.register(JFTimelinePanel)
    plugin.register(JFVideosPanel)
    plugin.register(PropagateOperator)
    plugin.register(EvaluateOperator)
    plugin.register(ShowHeatmapOperator)
    plugin.register(DavisJFMetric)
