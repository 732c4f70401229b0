"""The README's main job: a persistent FiftyOne video dataset from the shipped clip, masks propagated by the plugin's
operator with the offline default model, scored with DAVIS J&F, ready to open in the App."""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_CLIP = REPO / "data" / "demo"
PLUGIN_NAME = "frtm-vos"


def ensure_plugin_installed() -> Path | None:
    """Make FiftyOne find this plugin: link the repository (the plugin directory) into the plugins folder."""
    import fiftyone as fo
    import fiftyone.operators as foo

    if any(op.uri.startswith("@frtm/frtm-vos/") for op in foo.list_operators()):
        return None
    plugins = Path(fo.config.plugins_dir or Path.home() / "fiftyone" / "__plugins__")
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / PLUGIN_NAME
    if not (REPO / "fiftyone.yml").is_file():
        raise RuntimeError(f"{REPO} is not the plugin directory (no fiftyone.yml): install the plugin from a "
                           "checkout of this repository")
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return link


def run_demo(name: str = "frtm-demo", model: str = "default", max_size: int | None = None) -> dict:
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone.operators as foo

    from .dataio import import_davis

    link = ensure_plugin_installed()
    if link is not None:
        print(f"installed the plugin for FiftyOne: {link} -> {REPO}")
    ds = import_davis(DEMO_CLIP, dataset_name=name, overwrite=True, persistent=True, progress=False)
    print(f"dataset '{name}': {len(ds)} video ({ds.count('frames')} frames) from {DEMO_CLIP} "
          "(see its ATTRIBUTION.md)")

    add_app_prompts(ds)

    t0 = time.perf_counter()
    params = {"prompt_field": "frames.prompts", "label_field": "frtm", "model": model}
    if max_size is not None:
        params["max_size"] = max_size  # 0: full resolution
    result = foo.execute_operator("@frtm/frtm-vos/propagate", ctx={"dataset": ds, "params": params})
    result.raise_exceptions()
    out = result.result
    print(f"propagated with the '{model}' model: {out['frames']} frames, {out['fps']:.2f} FPS "
          f"({time.perf_counter() - t0:.1f} s with model loading)")
    if out["failed"]:
        print("failed:", out["failed"])

    result = foo.execute_operator("@frtm/frtm-vos/evaluate", ctx={"dataset": ds, "params": {
        "pred_field": "frtm", "gt_field": "ground_truth", "eval_key": "davis"}})
    result.raise_exceptions()
    scores = result.result
    print(f"DAVIS J&F {scores['J&F']:.3f} (J {scores['J']:.3f}, F {scores['F']:.3f})")
    print(f"\nOpen it in the App:\n  {Path(os.sys.executable).parent / 'fiftyone'} app launch {name}\n"
          "then open the video, Annotate, draw a box or paint a mask on any frame in 'prompts' (or correct the "
          "skater on a frame), and run 'FRTM: propagate masks through videos' again.")
    return {"propagate": out, "evaluate": scores}


def add_app_prompts(ds, field: str = "prompts", source: str = "prompt", label: str = "object") -> None:
    """``frames.<field>``: the first annotated frame of ``source`` (a Segmentation) as the App stores a drawn mask
    (one ``fo.Instance`` per object, ``keyframe=True``), with the App's annotation schema active, so the dataset
    opens ready to draw more keyframes."""
    import fiftyone as fo
    import numpy as np

    from .labels import object_detection

    for sample in ds.iter_samples(autosave=True):
        instances = {}
        for frame_number, frame in sample.frames.items():
            seg = frame[source] if frame.has_field(source) else None
            if seg is None or seg.get_mask() is None:
                continue
            labels = seg.get_mask()
            dets = []
            for obj in (int(i) for i in np.unique(labels) if i not in (0, 255)):
                inst = instances.setdefault(obj, fo.Instance())
                dets.append(object_detection(labels == obj, obj, label, instance=inst, keyframe=True))
            frame[field] = fo.Detections(detections=dets)
    schema = ds.generate_label_schemas(f"frames.{field}")
    ds.set_label_schemas({**ds.label_schemas, f"frames.{field}": schema})
    ds.activate_label_schemas(f"frames.{field}")
