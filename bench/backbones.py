"""Which backbone features make the target model D best? D-only survey on held-out DAVIS-2016 train videos (issue 11).

The real streaming tracker (``FRTMTracker(backbone, None, TrackerConfig())``: default solver, 5 augmented first-frame
samples, released merge, 854 cap) runs over whole sequences, scored with the DAVIS metrics by the same functions
as ``frtm_plugin.train.validate`` (``track_sequence`` + ``evaluate_sequence`` + ``aggregate``). FPS counts the
time spent inside ``tracker.step`` only (frame decoding, ground-truth reading and scoring excluded), over every frame
including the first (D's initial fit), with ``torch.set_num_threads(threads)``. Not a test: prints a table.

    python bench/backbones.py --variants mobilenet_v2:layer4_expand,efficientnet_lite0:layer4 \
        [--sequences bmx-bumps,dog-agility,motorbike,rollerblade,soccerball] [--results out.jsonl]
    python bench/backbones.py --speed --variants ...   # interleaved timing only (FPS comparable across variants)

A variant is ``backbone:tap[:option]`` with option ``imagenet`` (EfficientNet-Lite with ImageNet mean/std instead
of the TF ``(x-127)/128``) or ``sigmoid<k>`` (D-only probability ``sigmoid(k * (s - 0.5))`` instead of
``clamp(s, 0, 1)``). Every finished variant is appended to ``--results`` (JSON lines); the table printed at the
end covers every row in that file, so a survey can be run one variant per process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "davis2016-train-480p"
HELD_OUT = ("bmx-bumps", "dog-agility", "motorbike", "rollerblade", "soccerball")


def build(backbone: str, tap: str, option: str | None):
    if backbone.startswith("efficientnet_lite"):
        from frtm_plugin.core.efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(backbone, target_layer=tap,
                                       normalization="imagenet" if option == "imagenet" else "tf")
    from frtm_plugin.core.backbone import build_backbone

    if option == "imagenet":
        raise ValueError("option 'imagenet' is for EfficientNet-Lite only")
    return build_backbone(backbone, target_layer=tap)


def run_variant(spec: str, root: Path, sequences, threads: int) -> dict:
    import torch

    from frtm_plugin import ops
    from frtm_plugin.core.tracker import FRTMTracker, TrackerConfig
    from frtm_plugin.metrics import aggregate, evaluate_sequence
    from frtm_plugin.train.validate import track_sequence

    torch.set_num_threads(threads)
    parts = spec.split(":")
    backbone_name, tap = parts[0], parts[1]
    option = parts[2] if len(parts) > 2 else None
    backbone = build(backbone_name, tap, None if option and option.startswith("sigmoid") else option)
    tracker = FRTMTracker(backbone, None, TrackerConfig())
    if option and option.startswith("sigmoid"):
        k = float(option[len("sigmoid"):])

        def prob(scores, feats, hw):
            return torch.sigmoid(k * (ops.upsample(scores, hw) - 0.5))

        tracker._probability = prob

    step_seconds = [0.0]
    real_step = tracker.step

    def timed_step(*a, **kw):
        t0 = time.perf_counter()
        out = real_step(*a, **kw)
        step_seconds[0] += time.perf_counter() - t0
        return out

    tracker.step = timed_step
    results, frames, per_seq_fps = {}, 0, {}
    for name in sequences:
        before = step_seconds[0]
        gt, pred = track_sequence(tracker, root, name)
        per_seq_fps[name] = len(gt) / (step_seconds[0] - before)
        frames += len(gt)
        results[name] = evaluate_sequence(gt, pred, name=name)
        r = results[name]
        print(f"  {spec} {name}: J {100 * r.J_mean:.1f} F {100 * r.F_mean:.1f}  "
              f"{per_seq_fps[name]:.2f} fps", file=sys.stderr, flush=True)
    agg = aggregate(results)
    per = {r["sequence"]: {"J": r["J"], "F": r["F"], "J&F": r["J&F"]} for r in agg["rows"]}
    o = agg["overall"]
    return {"variant": spec, "backbone": backbone_name, "tap": tap, "option": option,
            "channels": backbone.channels[tap], "per_sequence": per,
            "overall": {"J": o["J"], "F": o["F"], "J&F": o["J&F"]}, "frames": frames,
            "step_seconds": step_seconds[0], "fps": frames / step_seconds[0], "threads": threads,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(),
            "torch": torch.__version__, "ops_backend": ops.backend("cpu")}


def speed(specs, root: Path, sequence: str, frames: int, rounds: int, threads: int) -> str:
    """Per-frame ``tracker.step`` time of each variant on the first ``frames`` frames of ``sequence`` (frame 0, the
    initial fit, excluded from the average), the variants interleaved round by round (A B C A B C ...) so that a
    shift in the machine's load hits all of them; the best round of each is reported."""
    import torch

    from frtm_plugin.core.tracker import FRTMTracker, TrackerConfig, masks_from_label_map
    from frtm_plugin.io.davis import load_sequence

    torch.set_num_threads(threads)
    seq = load_sequence(root, sequence)
    imgs = [seq.read_frame(i) for i in range(frames)]
    first = masks_from_label_map(seq.prompts()[0])
    trackers = {}
    for spec in specs:
        parts = spec.split(":")
        trackers[spec] = FRTMTracker(build(parts[0], parts[1], None), None, TrackerConfig())
    times = {spec: [] for spec in specs}
    for _ in range(rounds):
        for spec, tr in trackers.items():
            tr.reset()
            tr.step(imgs[0], first)
            t0 = time.perf_counter()
            for im in imgs[1:]:
                tr.step(im)
            times[spec].append((time.perf_counter() - t0) / (len(imgs) - 1))
    # the backbone alone (one 854x480 frame, the target tap only), interleaved the same way
    x = torch.from_numpy(imgs[1]).permute(2, 0, 1)[None]
    bb_times = {spec: [] for spec in specs}
    with torch.no_grad():
        for _ in range(rounds):
            for spec, tr in trackers.items():
                t0 = time.perf_counter()
                for _ in range(3):
                    tr.backbone(x, layers=(tr.backbone.target_layer,))
                bb_times[spec].append((time.perf_counter() - t0) / 3)
    lines = [f"| variant | step ms/frame, best of {rounds} | FPS | backbone ms, best of {rounds} | "
             "step ms, all rounds |", "|---|---|---|---|---|"]
    for spec, ts in times.items():
        lines.append(f"| {spec} | {1e3 * min(ts):.0f} | {1 / min(ts):.2f} | {1e3 * min(bb_times[spec]):.0f} | "
                     + ", ".join(f"{1e3 * t:.0f}" for t in ts) + " |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    seqs = list(rows[0]["per_sequence"])
    head = ("| variant | tap | ch | " + " | ".join(seqs) + " | mean J | mean F | **J&F** | FPS |")
    lines = [head, "|" + "---|" * (len(seqs) + 7)]
    for r in rows:
        name = r["backbone"] + (f" ({r['option']})" if r.get("option") else "")
        cells = [f"{100 * r['per_sequence'][s]['J&F']:.1f}" for s in seqs]
        o = r["overall"]
        lines.append(f"| {name} | {r['tap']} | {r['channels']} | " + " | ".join(cells)
                     + f" | {100 * o['J']:.1f} | {100 * o['F']:.1f} | **{100 * o['J&F']:.1f}** | {r['fps']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="mobilenet_v2:layer4_expand")
    p.add_argument("--sequences", default=",".join(HELD_OUT))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=None, help="JSON lines file to append to (and tabulate)")
    p.add_argument("--speed", action="store_true", help="only time the variants, interleaved (see speed())")
    p.add_argument("--speed-sequence", default="bmx-bumps")
    p.add_argument("--speed-frames", type=int, default=16)
    p.add_argument("--speed-rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.speed:
        print(speed([v for v in args.variants.split(",") if v], args.data, args.speed_sequence, args.speed_frames,
                    args.speed_rounds, args.threads))
        return
    seqs = [s for s in args.sequences.split(",") if s]
    rows = []
    for spec in [v for v in args.variants.split(",") if v]:
        row = run_variant(spec, args.data, seqs, args.threads)
        rows.append(row)
        print(f"{spec}: J&F {100 * row['overall']['J&F']:.1f}, {row['fps']:.2f} fps", file=sys.stderr, flush=True)
        if args.results is not None:
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.results is not None and args.results.exists():
        rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
