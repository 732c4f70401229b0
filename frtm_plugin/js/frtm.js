/*
 * FRTM's App bridge: the two pieces of the J&F timeline panel that a Python panel cannot reach in FiftyOne 1.22.
 *
 * 1.22 plays a native video in the sample modal with its new playback store; the older named timeline
 * ("timeline-<sample id>"), which a panel's FrameLoaderView follows and the builtin `set_frame_number` operator
 * moves, is no longer created for it, although the video's looker still publishes every frame it shows to it.
 *
 * - `FrtmTimelineBridge` (a component the panel renders, drawing nothing) creates that timeline, so the panel's
 *   FrameLoaderView is told each frame the video shows and moves its playhead marker.
 * - `seek_modal_frame` (an unlisted operator the panel triggers on a click) moves the modal's video to a frame:
 *   the video's looker is sought directly; any other player gets the timeline's set-frame-number event.
 *
 * Hand-written against the globals FiftyOne gives its plugins (window.React, window.recoil, window.__fos__,
 * __fop__, __foo__, __fopb__), so there is no build step; without them it logs why and registers nothing.
 */
(function () {
  "use strict";

  var PLUGIN = "@frtm/frtm-vos";
  var React = window.React;
  var recoil = window.recoil;
  var fos = window.__fos__;
  var fop = window.__fop__;
  var foo = window.__foo__;
  var fopb = window.__fopb__;
  if (!React || !recoil || !fos || !fop || !foo || !fopb || !fopb.useCreateTimeline || !fos.modalLooker) {
    console.warn(PLUGIN + ": this App lacks the plugin globals the J&F panel's playhead sync needs; it is off.");
    return;
  }

  function TimelineBridge(props) {
    var view = (props && props.schema && props.schema.view) || {};
    var totalFrames = view.total_frames;
    console.debug("frtm bridge render", JSON.stringify(view));
    var config = React.useMemo(function () {
      return totalFrames ? { totalFrames: totalFrames, loop: false } : undefined;
    }, [totalFrames]);
    // No name: the App's default for the open sample, the one its video looker publishes to. No animation: the
    // video's own player drives the frames.
    fopb.useCreateTimeline({ name: view.timeline_name || undefined, config: config, optOutOfAnimation: true });
    return null;
  }

  fop.registerComponent({
    name: "FrtmTimelineBridge",
    label: "FRTM timeline bridge",
    component: TimelineBridge,
    type: fop.PluginComponentType.Component,
    activator: function () {
      return true;
    },
  });

  class SeekModalFrame extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({ name: "seek_modal_frame", label: "FRTM: go to frame", unlisted: true });
    }

    useHooks() {
      return { looker: recoil.useRecoilValue(fos.modalLooker) };
    }

    async execute(ctx) {
      var frame = Math.max(1, Math.round(Number(ctx.params.frame_number)));
      if (!Number.isFinite(frame)) {
        throw new Error("seek_modal_frame needs a frame_number (1-based), got " + ctx.params.frame_number);
      }
      var looker = ctx.hooks.looker;
      if (looker && typeof looker.seekToFrame === "function") {
        if (typeof looker.pause === "function") looker.pause();
        looker.seekToFrame(frame);
      } else {
        fopb.dispatchTimelineSetFrameNumberEvent({ timelineName: ctx.params.timeline_name, newFrameNumber: frame });
      }
    }
  }

  foo.registerOperator(SeekModalFrame, PLUGIN);
})();
