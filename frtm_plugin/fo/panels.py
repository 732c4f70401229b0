"""The J&F panels: where along a video a mask went wrong, and which videos to look at first.

- ``JFTimelinePanel`` (sample modal): J and F of each object over the open video's frames for a DAVIS evaluation,
  with the frame's J&F; the current frame is marked and follows the modal's playhead (FiftyOne's frame-loader view);
  a click on the plot moves the playhead there; keyframes of the prompt are marked on the same axis. Frames the
  protocol does not score (an object's first frame, the last frame) are gaps in the lines, on grey bands.
- ``JFVideosPanel`` (grid): J&F per video for an evaluation (two evaluations side by side when there are two), the
  dataset summary, a click on a bar opens that video, and a button builds the view of the worst frames.
FiftyOne-facing, like the operators: the numbers come from ``sdk`` (the stored evaluation).
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

PLUGIN = "@frtm/frtm-vos"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _keys(ctx) -> list[str]:
    from . import sdk

    return sdk.davis_evaluation_keys(ctx.dataset) if ctx.dataset is not None else []


class _EvaluationPanel(foo.Panel):
    """What both panels share: load and reload on a new evaluation key, and the offer to evaluate when none exists."""

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_key(self, ctx):
        ctx.panel.state.eval_key = ctx.params.get("value")
        self._refresh(ctx)

    def open_evaluate(self, ctx):
        ctx.prompt(f"{PLUGIN}/evaluate")

    def _no_evaluation(self, message: str):
        panel = types.Object()
        panel.md(message, name="no_eval")
        panel.btn("evaluate", label="Evaluate (DAVIS J&F)", on_click=self.open_evaluate)
        return types.Property(panel, view=types.GridView(orientation="vertical"))

    def _key_dropdown(self, ctx, panel, keys) -> None:
        panel.enum("eval_key", keys, default=ctx.panel.state.eval_key, label="Evaluation",
                   view=types.DropdownView(), on_change=self.on_change_key)


class JFTimelinePanel(_EvaluationPanel):
    @property
    def config(self):
        return foo.PanelConfig(name="frtm_jf_timeline", label="FRTM: J&F over the video", surfaces="modal",
                               help_markdown="J (region) and F (boundary) of each object on every frame, for a "
                                             "DAVIS evaluation: click the plot to go to a frame.")

    def on_change_current_sample(self, ctx):
        self._refresh(ctx)

    def _refresh(self, ctx):
        from . import sdk

        keys = _keys(ctx)
        key = ctx.panel.state.eval_key if ctx.panel.state.eval_key in keys else (keys[-1] if keys else None)
        ctx.panel.state.eval_key = key
        ctx.panel.state.has_eval = key is not None
        if key is None or ctx.current_sample is None:
            return
        sample = ctx.dataset[ctx.current_sample]
        if f"{key}_J" not in (ctx.dataset.get_frame_field_schema() or {}) or sample.media_type != "video":
            ctx.panel.state.has_eval = False
            return
        s = sdk.jf_series(sample, ctx.dataset, key)
        traces = []
        for k, (obj, series) in enumerate(s["objects"].items()):
            color = COLORS[k % len(COLORS)]
            traces.append({"type": "scatter", "mode": "lines+markers", "name": f"object {obj} J", "x": s["frames"],
                           "y": series["J"], "line": {"color": color}, "marker": {"size": 5}})
            traces.append({"type": "scatter", "mode": "lines", "name": f"object {obj} F", "x": s["frames"],
                           "y": series["F"], "line": {"color": color, "dash": "dot"}})
        traces.append({"type": "scatter", "mode": "lines", "name": "frame J&F", "x": s["frames"], "y": s["JF"],
                       "line": {"color": "#444", "width": 3}})
        if s["keyframes"]:
            traces.append({"type": "scatter", "mode": "markers", "name": "keyframes", "x": s["keyframes"],
                           "y": [1.04] * len(s["keyframes"]),
                           "marker": {"symbol": "triangle-down", "size": 11, "color": "#ffb000"}})
        not_scored = [f for f, v in zip(s["frames"], s["JF"]) if v is None]
        if not_scored:  # a legend entry for the grey bands the layout draws there
            traces.append({"type": "scatter", "mode": "markers", "name": "not scored (DAVIS protocol)", "x": [None],
                           "y": [None], "marker": {"symbol": "square", "size": 11, "color": "rgba(150,150,150,0.35)"}})
        ctx.panel.state.traces = traces  # the frame loader adds the playhead marker to these, frame by frame
        ctx.panel.state.num_frames = len(s["frames"])
        ctx.panel.state.not_scored = not_scored
        ctx.panel.data.plot = traces + [self._marker(1)]

    @staticmethod
    def _marker(frame: int) -> dict:
        """The current frame: a vertical line across the plot."""
        return {"type": "scatter", "mode": "lines", "name": "current frame", "x": [frame, frame], "y": [0, 1.1],
                "line": {"color": "#ff6d04", "width": 2}, "hoverinfo": "skip", "showlegend": False}

    @staticmethod
    def _layout(num_frames: int, not_scored=()) -> dict:
        """Frames the protocol does not score (an object's first frame, the last frame, no ground truth) are grey
        bands across the plot."""
        bands = [{"type": "rect", "xref": "x", "yref": "paper", "x0": f - 0.5, "x1": f + 0.5, "y0": 0, "y1": 1,
                  "fillcolor": "rgba(150,150,150,0.35)", "line": {"width": 0}, "layer": "below"} for f in not_scored]
        return {"shapes": bands, "xaxis": {"title": {"text": "frame"}, "range": [0.5, max(num_frames, 1) + 0.5]},
                "yaxis": {"title": {"text": "J / F"}, "range": [0, 1.1]}, "height": 340, "width": 520,
                "margin": {"l": 50, "r": 10, "t": 10, "b": 90}, "showlegend": True,
                "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.3, "yanchor": "top"},
                "hovermode": "closest"}

    def on_load_range(self, ctx):
        """The frame loader asks for the plot on a range of frames (1-based frame numbers, both ends included): the
        plot with the playhead marker on each. A new signature with the frames tells the loader they arrived."""
        start, end = ctx.params.get("range", [1, 0])
        traces = ctx.panel.state.traces or []
        update = {f"frame_data.frames[{f}]": traces + [self._marker(f)] for f in range(int(start), int(end) + 1)}
        update["frame_data.signature"] = f"{ctx.panel.state.eval_key}:{ctx.current_sample}:{start}-{end}"
        ctx.panel.set_data(update)

    def on_click(self, ctx):
        x = ctx.params.get("x")
        if x is not None:
            frame = int(round(float(x)))
            # The plugin's JS operator (frtm_plugin/js/frtm.js): 1.22's modal video ignores set_frame_number.
            ctx.trigger(f"{PLUGIN}/seek_modal_frame", {"frame_number": frame})
            ctx.panel.state.clicked_frame = frame

    def render(self, ctx):
        if not ctx.panel.state.has_eval:
            return self._no_evaluation("No DAVIS evaluation of this video yet: score predictions against ground "
                                       "truth first.")
        panel = types.Object()
        self._key_dropdown(ctx, panel, _keys(ctx))
        # The JS bridge creates the timeline the FrameLoaderView follows (1.22's modal video no longer does).
        panel.view("timeline_bridge", types.View(component="FrtmTimelineBridge", composite_view=True,
                                                 total_frames=ctx.panel.state.num_frames or 1))
        panel.obj("frame_data", view=types.FrameLoaderView(on_load_range=self.on_load_range, target="plot"))
        panel.plot("plot", layout=self._layout(ctx.panel.state.num_frames or 1, ctx.panel.state.not_scored or ()),
                   on_click=self.on_click,
                   config={"displayModeBar": False}, height="340px", width="520px")
        return types.Property(panel, view=types.GridView(orientation="vertical"))


class JFVideosPanel(_EvaluationPanel):
    @property
    def config(self):
        return foo.PanelConfig(name="frtm_jf_videos", label="FRTM: J&F per video", surfaces="grid",
                               help_markdown="J&F of every video for a DAVIS evaluation (two side by side), the "
                                             "dataset summary; click a bar to open the video.")

    def on_change_other(self, ctx):
        ctx.panel.state.other_key = ctx.params.get("value")
        self._refresh(ctx)

    def _refresh(self, ctx):
        keys = _keys(ctx)
        ctx.panel.state.has_eval = bool(keys)
        if not keys:
            return
        key = ctx.panel.state.eval_key if ctx.panel.state.eval_key in keys else keys[-1]
        other = ctx.panel.state.other_key if ctx.panel.state.other_key in keys else \
            (keys[-2] if len(keys) > 1 else None)
        ctx.panel.state.eval_key, ctx.panel.state.other_key = key, other
        ds = ctx.dataset
        ids = ds.values("id")
        names = [p.rsplit("/", 1)[-1] for p in ds.values("filepath")]
        shown = [x for x in (key, other) if x]
        values = {name: ds.values(f"{name}_JF") if f"{name}_JF" in ds.get_field_schema() else [None] * len(ids)
                  for name in shown}
        order = list(range(len(ids)))
        if ctx.panel.state.sort_by == "worst":  # the evaluation's J&F, lowest first; unscored videos last
            order.sort(key=lambda i: (values[key][i] is None, values[key][i] or 0.0))
        else:
            order.sort(key=lambda i: names[i])
        traces = []
        for k, name in enumerate(shown):
            traces.append({"type": "bar", "name": name, "x": [names[i] for i in order],
                           "y": [values[name][i] for i in order], "ids": [ids[i] for i in order],
                           "marker": {"color": COLORS[k]}})
        ctx.panel.data.bars = traces
        rows = []
        for name in shown:
            o = ds.info["frtm_evaluations"][name]["overall"]
            cells = [o.get(k) for k in ("J&F", "J", "F", "J-recall", "J-decay", "F-recall", "F-decay")]
            rows.append(f"| {name} ({ds.info['frtm_evaluations'][name]['pred_field']}) | " +
                        " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
        ctx.panel.state.summary = ("| evaluation | J&F | J | F | J recall | J decay | F recall | F decay |\n"
                                   "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))

    def on_change_sort(self, ctx):
        ctx.panel.state.sort_by = ctx.params.get("value")
        self._refresh(ctx)

    def on_click(self, ctx):
        sample_id = ctx.params.get("id")
        if sample_id:
            ctx.ops.open_sample(id=sample_id)

    def show_worst(self, ctx):
        from . import sdk

        threshold = float(ctx.panel.state.threshold or 0.5)
        view = sdk.worst_frames_view(ctx.dataset, ctx.panel.state.eval_key, threshold)
        ctx.ops.set_view(view)

    def render(self, ctx):
        if not ctx.panel.state.has_eval:
            return self._no_evaluation("No DAVIS evaluation on this dataset yet.")
        panel = types.Object()
        keys = _keys(ctx)
        self._key_dropdown(ctx, panel, keys)
        if len(keys) > 1:
            panel.enum("other_key", keys, default=ctx.panel.state.other_key, label="Compare with",
                       view=types.DropdownView(), on_change=self.on_change_other)
        sort = types.Dropdown()
        sort.add_choice("name", label="video name")
        sort.add_choice("worst", label="J&F, worst first")
        panel.enum("sort_by", sort.values(), default=ctx.panel.state.sort_by or "name", label="Sort videos by",
                   view=sort, on_change=self.on_change_sort)
        panel.md(ctx.panel.state.summary or "", name="summary")
        panel.plot("bars", layout={"barmode": "group", "yaxis": {"title": "J&F", "range": [0, 1]}, "height": 320,
                                   "margin": {"l": 50, "r": 10, "t": 10, "b": 80}}, on_click=self.on_click,
                   config={"displayModeBar": False}, height="320px", width="100%")
        panel.float("threshold", default=0.5, label="Worst frames: J below", min=0.0, max=1.0)
        panel.btn("show_worst", label="Show the worst frames", on_click=self.show_worst)
        return types.Property(panel, view=types.GridView(orientation="vertical"))
