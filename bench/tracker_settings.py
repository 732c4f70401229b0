"""Which inference settings of the tracker (D's solver, memory, first-frame samples) score best? (issue 11)

Each variant is a set of overrides of ``TrackerConfig`` / ``SolverConfig`` run through the real streaming tracker
on whole DAVIS-layout sequences and scored with the DAVIS metrics, by the same code as
``python -m frtm_plugin.train validate`` (``evaluate_model``). D-only needs no offline training, so D's settings
can be compared on all 30 DAVIS-2016 train videos without bias; D+S with the default S only on the 5 videos S
never saw. Not a test: prints a table (J&F per sequence and overall, %), and appends every finished variant to
``--results`` (JSON lines) so a sweep can run one variant per process and be tabulated at the end.

    python bench/tracker_settings.py --model d-only --sequences all \
        --variants "base:solver.learning_rate=0.1;aug15:num_aug=15" --results dsweep.jsonl
    python bench/tracker_settings.py --model default --variants "own:;lr05:solver.learning_rate=0.05"

A variant is ``name:key=value,key=value`` (``key`` a ``TrackerConfig`` field, or ``solver.<field>``; ``value`` a
Python literal); variants are separated by ``;``. Settings left out are the model's own (``models.model_config``:
D-only and this project's checkpoints run D's memory at ``OFFLINE_LEARNING_RATE``), so a baseline at the released
settings says so: ``base:solver.learning_rate=0.1``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "davis2016-train-480p"
HELD_OUT = ("bmx-bumps", "dog-agility", "motorbike", "rollerblade", "soccerball")


def parse_variants(text: str) -> list[tuple[str, dict]]:
    variants = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        name, _, body = chunk.partition(":")
        overrides = {}
        for item in filter(None, (i.strip() for i in _split_top(body))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"variant {name!r}: {item!r} is not key=value")
            overrides[key.strip()] = ast.literal_eval(value.strip())
        variants.append((name.strip(), overrides))
    return variants


def _split_top(body: str) -> list[str]:
    """Split on commas outside brackets (values may be tuples)."""
    out, depth, cur = [], 0, ""
    for ch in body:
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def make_config(overrides: dict):
    from frtm_plugin.core.target_model import SolverConfig
    from frtm_plugin.core.tracker import TrackerConfig

    top, solver = {}, {}
    for key, value in overrides.items():
        if key.startswith("solver."):
            solver[key[len("solver."):]] = value
        else:
            top[key] = value
    names = {f.name for f in dataclasses.fields(TrackerConfig)} | {
        "solver." + f.name for f in dataclasses.fields(SolverConfig)}
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(names)}")
    return TrackerConfig(solver=SolverConfig(**solver), **top)


def table(rows: list[dict]) -> str:
    seqs = list(dict.fromkeys(s for r in rows for s in r["per_sequence"]))
    short = [s[:10] for s in seqs]
    lines = ["| variant | model | " + " | ".join(short) + " | **J&F** | J | F |",
             "|" + "---|" * (len(seqs) + 5)]
    for r in rows:
        cells = [f"{100 * r['per_sequence'][s]['J&F']:.1f}" if s in r["per_sequence"] else "" for s in seqs]
        o = r["overall"]
        lines.append(f"| {r['variant']} | {r['model']} | " + " | ".join(cells)
                     + f" | **{100 * o['J&F']:.1f}** | {100 * o['J']:.1f} | {100 * o['F']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="base:")
    p.add_argument("--model", default="default", help="default, d-only, or an S checkpoint path")
    p.add_argument("--sequences", default=",".join(HELD_OUT), help="comma list, or 'all' (every sequence of --data)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--backbone", default="mobilenet_v2",
                   help="D's backbone for --model d-only: mobilenet_v2, efficientnet_lite0/1/2 or dinov2 "
                        "(tap vit1..vit12)")
    p.add_argument("--feature-scale", type=float, default=1.0, help="dinov2: multiply D's features by this")
    p.add_argument("--token-stride", type=int, default=16, help="dinov2: run the ViT on a coarser grid (32: 1/4 "
                   "of the tokens), resampled to D's stride-16 grid")
    p.add_argument("--pair-d", default=None, metavar="dinov2:vitN[+]",
                   help="D on DINOv2's tap, S on the checkpoint's backbone (PairedBackbone); with a trailing '+', D "
                        "reads DINOv2's tap and the checkpoint's D tap stacked. With --model d-only: MobileNetV2's "
                        "layer4_expand is the other backbone")
    p.add_argument("--target-layer", default="layer4_expand",
                   help="D's tap for --model d-only (a checkpoint's own meta decides otherwise)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from frtm_plugin.train.validate import evaluate_model
    from frtm_plugin.models import DEFAULT_CHECKPOINT

    torch.set_num_threads(args.threads)
    if args.sequences == "all":
        sequences = sorted(d.name for d in (args.data / "JPEGImages" / "480p").iterdir() if d.is_dir())
    else:
        sequences = args.sequences.split(",")
    model = DEFAULT_CHECKPOINT if args.model == "default" else args.model
    backbone = "mobilenet_v2"
    if args.model == "d-only" and args.backbone.startswith("efficientnet_lite"):
        from frtm_plugin.core.efficientnet_lite import build_efficientnet_lite

        backbone = build_efficientnet_lite(args.backbone, target_layer=args.target_layer)
    elif args.model == "d-only" and args.backbone == "dinov2":
        from frtm_plugin.core.dinov2 import build_dinov2

        backbone = build_dinov2(args.target_layer, feature_scale=args.feature_scale, token_stride=args.token_stride)
    elif args.model == "d-only":
        backbone = args.backbone
    target_layer = args.target_layer if args.model == "d-only" else None
    inference = None
    if args.pair_d:
        from frtm_plugin.core.backbone import build_backbone
        from frtm_plugin.core.dinov2 import PairedBackbone, build_dinov2
        from frtm_plugin.core.segnet import load_segnet_checkpoint
        from frtm_plugin.models import model_inference

        kind, tap = args.pair_d.split(":")
        concat = tap.endswith("+")
        if kind != "dinov2":
            raise SystemExit("--pair-d takes dinov2:vitN or dinov2:vitN+")
        if args.model == "d-only":
            info = {"backbone": "mobilenet_v2", "target_layer": "layer4_expand"}
        else:
            net, info = load_segnet_checkpoint(model)
            model, inference = net, model_inference(info)
        backbone = PairedBackbone(build_dinov2(tap.rstrip("+"), feature_scale=args.feature_scale,
                                               token_stride=args.token_stride),
                                  build_backbone(info["backbone"], target_layer=info["target_layer"]), concat=concat)
        target_layer = None
    rows = []
    for name, overrides in parse_variants(args.variants):
        config = make_config(overrides)
        report = evaluate_model(args.data, sequences, model, config=config, backbone=backbone,
                                target_layer=target_layer, inference=inference)
        row = {"variant": name, "backbone": args.backbone if args.model == "d-only" else (
                   f"S on checkpoint's, D on {args.pair_d}" if args.pair_d else "checkpoint's"),
               "target_layer": report["target_layer"], "overrides": {k: repr(v) for k, v in overrides.items()}, "model": report["model"],
               "per_sequence": report["per_sequence"], "overall": report["overall"],
               "seconds": round(report["seconds"], 1), "frames": report["frames"], "threads": args.threads,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        rows.append(row)
        print(f"{name}: J&F {100 * row['overall']['J&F']:.2f} ({row['frames']} frames, {row['seconds']} s)",
              file=sys.stderr, flush=True)
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.results:
        rows = [json.loads(line) for line in open(args.results) if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
