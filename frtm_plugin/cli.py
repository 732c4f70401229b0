"""``python -m frtm_plugin`` (also ``frtm-vos``): track DAVIS-style folders or a video, and evaluate results.

    track --davis ROOT [--sequences a,b] --out DIR [--model default|d-only|PATH] [--backbone ...] [--num-aug N]
          [--device cpu|cuda] [--max-size PX] [--save-probs]
    track --frames DIR --annotations DIR --out DIR [--direction forward|both]   every annotation PNG a keyframe
    track --video FILE --annotations DIR --out DIR [--direction ...]          PNGs named by 0-based frame index
    track --video FILE --mask PNG [--mask-frame N] --out DIR ...               one annotated frame
    evaluate --davis ROOT --results DIR [--sequences a,b]
    demo [--name frtm-demo]      FiftyOne: import the shipped clip, propagate with the plugin's operator, score it

The verbs and options are kept stable: scripts call them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

log = logging.getLogger("frtm_plugin")


def _split(s: str | None) -> list[str] | None:
    return [x for x in s.split(",") if x] if s else None


def build_parser() -> argparse.ArgumentParser:
    from .core.backbone import BACKBONE_NAMES
    from .core.tracker import DEFAULT_MAX_SIZE

    p = argparse.ArgumentParser(prog="frtm-vos", description="FRTM video object segmentation")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("track", help="propagate annotated masks through videos")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--davis", type=Path, help="DAVIS-style root: JPEGImages/[480p/]<seq>, Annotations/[480p/]<seq>")
    src.add_argument("--frames", type=Path, help="a folder of frames (use with --annotations)")
    src.add_argument("--video", type=Path, help="a video file (use with --annotations or --mask)")
    t.add_argument("--annotations", type=Path,
                   help="the annotation PNGs (object ids as pixel values): every one is a keyframe; for --frames named "
                        "as the frames, for --video by 0-based frame index")
    t.add_argument("--direction", choices=["forward", "both"],
                   help="both (default for --frames/--video): also propagate backwards from each object's keyframes "
                        "and combine the two between keyframes; forward (default for --davis, the benchmark "
                        "protocol: first appearance only)")
    t.add_argument("--mask", type=Path, help="label PNG (object ids, or 0/255 for one object) for --video")
    t.add_argument("--mask-frame", type=int, default=0, help="frame index that --mask annotates (default 0)")
    t.add_argument("--sequences", help="comma-separated sequence names (default: all)")
    t.add_argument("--resolution", default="480p")
    t.add_argument("--out", type=Path, required=True, help="output folder: <out>/<seq>/<frame>.png")
    t.add_argument("--model", default="default", help="default | d-only | path to a checkpoint (released format)")
    t.add_argument("--backbone", choices=BACKBONE_NAMES)
    t.add_argument("--num-aug", type=int, default=5, help="first-frame samples incl. the original; 1 = no augmentation")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"infer with the longest side at most this many pixels (default {DEFAULT_MAX_SIZE}, the scale "
                        "the default model was trained at; 0 = full resolution)")
    t.add_argument("--merge", default="released", choices=["released", "single"])
    t.add_argument("--search-margin", type=float, default=None,
                   help="D's scores count only near each object's last box grown by this many times its longer "
                        "side (default: the model's own, 0.25 for ours; 'inf': the whole frame)")
    t.add_argument("--save-probs", action="store_true", help="also write <frame>.npz of per-object probabilities")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="FiftyOne demo: import the shipped clip, propagate with the plugin, score it")
    d.add_argument("--name", default="frtm-demo", help="dataset name (persistent; replaced if it exists)")
    d.add_argument("--model", default="default")
    d.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="0 = full resolution")

    e = sub.add_parser("evaluate", help="DAVIS J, F, J&F of a results folder")
    e.add_argument("--davis", type=Path, required=True)
    e.add_argument("--results", type=Path, required=True)
    e.add_argument("--sequences")
    e.add_argument("--resolution", default="480p")
    return p


@dataclass
class TrackJob:
    """One sequence to track: where its frames come from, its keyframes (frame index -> label map), how to run it."""

    name: str
    frames: Callable[[], Iterator[np.ndarray]]  # a fresh iterator over the frames, in order
    frame_names: Callable[[int], str]  # output file stem of frame i
    num_frames: int
    frame_hw: tuple[int, int]
    label_maps: dict[int, np.ndarray]
    direction: str

    @cached_property
    def keyframes(self):
        from .core.prompts import keyframes_from_label_maps

        return keyframes_from_label_maps(self.label_maps)


def _folder_job(seq, direction: str, all_keyframes: bool) -> TrackJob:
    """A DAVIS-style sequence folder: every annotation PNG a keyframe, or (the benchmark protocol) each object's
    first appearance only."""
    from .io.labels import read_label_png

    if all_keyframes:
        maps = {i: read_label_png(p) for i, p in sorted(seq.annotation_paths.items())}
    else:
        maps = seq.prompts()
    return TrackJob(seq.name, lambda: (seq.read_frame(i) for i in range(len(seq))),
                    lambda i: seq.frame_paths[i].stem, len(seq), seq.read_frame(0).shape[:2], maps, direction)


def _video_job(video: Path, annotations: Path | None, mask: Path | None, mask_frame: int, direction: str) -> TrackJob:
    """A video file with a mask PNG (``--mask``, on ``--mask-frame``) or a folder of PNGs named by 0-based frame
    index (``--annotations``: ``12.png`` or ``00012.png`` annotates frame 12)."""
    from .io.labels import read_label_png
    from .io.video import iter_video_frames, video_info

    info = video_info(video)
    n = info["num_frames"]
    if mask is not None:
        if not mask.is_file():
            raise FileNotFoundError(f"mask PNG not found: {mask}")
        if not 0 <= mask_frame < n:
            raise ValueError(f"--mask-frame {mask_frame} is outside the video's {n} frames")
        maps = {mask_frame: read_label_png(mask)}
    else:
        if not annotations.is_dir():
            raise FileNotFoundError(f"annotation folder not found: {annotations}")
        maps = {}
        for p in sorted(annotations.glob("*.png")):
            if not p.stem.isdigit():
                raise ValueError(f"{p.name}: annotation PNGs for a video are named by 0-based frame index "
                                 "(e.g. 00012.png)")
            if int(p.stem) >= n:
                raise ValueError(f"{p.name} annotates frame {int(p.stem)}, but the video has {n} frames")
            maps[int(p.stem)] = read_label_png(p)
    if not any(((m != 0) & (m != 255)).any() for m in maps.values()):
        where = mask if mask is not None else annotations
        raise ValueError(f"{where} holds no object: annotate at least one object (pixel values 1..254)")
    # the container's frame count is checked as frames are read: a truncated file raises after its last frame
    return TrackJob(video.stem, lambda: iter_video_frames(video, expected_frames=n), lambda i: f"{i:05d}", n,
                    (info["height"], info["width"]), maps, direction)


def check_prompts(job: TrackJob) -> None:
    """Every keyframe against the frame size, before a model is loaded or an output folder is made."""
    from .core.prompts import check_keyframes

    if not job.keyframes:
        raise ValueError(f"sequence {job.name}: no annotation holds an object; annotate each object on at least "
                         "one frame")
    try:
        check_keyframes(job.keyframes, job.frame_hw)
    except ValueError as e:
        raise ValueError(f"sequence {job.name}, {e}") from None


def track_sequence(tracker, job: TrackJob, out_dir: Path, save_probs: bool, progress: bool) -> dict:
    """Run one sequence through the core's video loop, writing a palette PNG per frame (and npz of
    probabilities). Returns timing stats."""
    from tqdm import tqdm

    from .core.video_loop import propagate_in_video
    from .io.labels import write_label_png
    from .io.video import TruncatedVideoError

    keyframes = job.keyframes
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds, n, objects = 0.0, 0, set()
    outputs = propagate_in_video(tracker, job.frames(), keyframes, direction=job.direction,
                                 num_frames=job.num_frames)
    bar = tqdm(total=job.num_frames, desc=job.name, unit="frame", disable=not progress, leave=False)
    t0 = time.perf_counter()
    try:
        for res in outputs:
            if tracker.device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            n += 1
            objects |= set(res.probabilities)
            name = job.frame_names(res.index)
            write_label_png(out_dir / f"{name}.png", res.labels)
            if save_probs:
                np.savez_compressed(out_dir / f"{name}.npz",
                                    **{str(k): v.astype(np.float32) for k, v in res.probabilities.items()})
            bar.update(1)
            t0 = time.perf_counter()
    except TruncatedVideoError as e:
        raise TruncatedVideoError(e.path, e.decoded, e.expected, labelled=n) from None
    finally:
        bar.close()
    return {"sequence": job.name, "frames": n, "seconds": seconds, "height": job.frame_hw[0],
            "width": job.frame_hw[1], "objects": len(objects), "keyframes": sum(len(v) for v in keyframes.values())}


def cmd_track(args) -> int:
    from .core.target_model import SolverConfig
    from .core.tracker import TrackerConfig, inference_size
    from .io import davis
    from .io.video import TruncatedVideoError
    from .models import build_tracker

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device; use --device cpu")
    if args.num_aug < 1:
        raise SystemExit("error: --num-aug must be at least 1 (1 = the first frame alone, no augmentation)")

    # Resolve inputs first, so that bad input fails before any model is loaded.
    if args.davis:  # the benchmark protocol: each object's first appearance, forward
        names = _split(args.sequences) or davis.list_sequences(args.davis, args.resolution)
        jobs = [_folder_job(davis.load_sequence(args.davis, n, args.resolution), args.direction or "forward", False)
                for n in names]
    elif args.frames:
        if not args.annotations:
            raise SystemExit("error: --frames needs --annotations (the folder of mask PNGs)")
        jobs = [_folder_job(davis.sequence_from_dirs(args.frames, args.annotations), args.direction or "both", True)]
    else:
        if not args.mask and not args.annotations:
            raise SystemExit("error: --video needs --annotations (PNGs named by frame index) or --mask (one PNG)")
        jobs = [_video_job(args.video, args.annotations, args.mask, args.mask_frame, args.direction or "both")]

    for job in jobs:
        check_prompts(job)

    max_size = None if args.max_size == 0 else args.max_size
    config = TrackerConfig(solver=SolverConfig(), num_aug=args.num_aug, merge=args.merge, max_size=max_size,
                           seed=args.seed, search_margin=args.search_margin)
    tracker, info = build_tracker(args.model, args.backbone, args.device, config)
    print(f"model: {info.describe()}")  # notes (e.g. "running D-only") were logged as warnings

    stats = []
    for job in jobs:
        try:
            st = track_sequence(tracker, job, args.out / job.name, args.save_probs, not args.no_progress)
        except TruncatedVideoError as e:
            print(f"error: {e}\n  those masks are in {args.out / job.name}", file=sys.stderr)
            return 3
        fps = st["frames"] / st["seconds"] if st["seconds"] else float("nan")
        ih, iw = inference_size((st["height"], st["width"]), max_size)
        print(f"{job.name}: {st['frames']} frames, {st['objects']} object(s), {st['keyframes']} keyframe(s), "
              f"{job.direction}, {fps:.2f} FPS at {iw}x{ih}")
        stats.append(st)
    total_frames = sum(s["frames"] for s in stats)
    total_s = sum(s["seconds"] for s in stats)
    threads = torch.get_num_threads() if args.device == "cpu" else "n/a"
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"FPS: {total_frames / max(total_s, 1e-9):.2f} over {total_frames} frames "
          f"(backbone {info.backbone}, {'D+S' if info.segnet_path else 'D-only'}, device {dev}, threads {threads}; "
          f"includes decoding and first-frame fitting, excludes writing)")
    print(f"results: {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from .metrics import evaluate_folder, format_table, write_csv

    rows, overall = evaluate_folder(args.davis, args.results, _split(args.sequences), args.resolution)
    print(format_table(rows, overall))
    csv_path = args.results / "evaluation.csv"
    write_csv(csv_path, rows, overall)
    print(f"written: {csv_path}")
    return 0


def cmd_demo(args) -> int:
    from .fo.demo import run_demo

    run_demo(args.name, args.model, args.max_size)
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return {"track": cmd_track, "evaluate": cmd_evaluate, "demo": cmd_demo}[args.command](args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
