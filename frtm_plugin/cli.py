"""``python -m frtm_plugin`` (also ``frtm-vos``): track DAVIS-style folders or a video, and evaluate results.

    track --davis ROOT [--sequences a,b] --out DIR [--model default|d-only|PATH] [--backbone ...] [--num-aug N]
          [--device cpu|cuda] [--max-size PX] [--save-probs]
    track --frames DIR --annotations DIR --out DIR ...          one sequence folder pair
    track --video FILE --mask PNG [--mask-frame N] --out DIR ...  a video and the mask of its first annotated frame
    evaluate --davis ROOT --results DIR [--sequences a,b]
    demo [--name frtm-demo]      FiftyOne: import the shipped clip, propagate with the plugin's operator, score it

The verbs and options are kept stable: scripts call them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("frtm_plugin")


def _split(s: str | None) -> list[str] | None:
    return [x for x in s.split(",") if x] if s else None


def build_parser() -> argparse.ArgumentParser:
    from .core.tracker import DEFAULT_MAX_SIZE

    p = argparse.ArgumentParser(prog="frtm-vos", description="FRTM video object segmentation")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("track", help="propagate first-frame masks through videos")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--davis", type=Path, help="DAVIS-style root: JPEGImages/[480p/]<seq>, Annotations/[480p/]<seq>")
    src.add_argument("--frames", type=Path, help="a folder of frames (use with --annotations)")
    src.add_argument("--video", type=Path, help="a video file (use with --mask)")
    t.add_argument("--annotations", type=Path, help="the annotation PNG folder for --frames")
    t.add_argument("--mask", type=Path, help="label PNG (object ids, or 0/255 for one object) for --video")
    t.add_argument("--mask-frame", type=int, default=0, help="frame index that --mask annotates (default 0)")
    t.add_argument("--sequences", help="comma-separated sequence names (default: all)")
    t.add_argument("--resolution", default="480p")
    t.add_argument("--out", type=Path, required=True, help="output folder: <out>/<seq>/<frame>.png")
    t.add_argument("--model", default="default", help="default | d-only | path to a checkpoint (released format)")
    t.add_argument("--backbone", choices=["resnet18", "resnet101", "mobilenet_v2"])
    t.add_argument("--num-aug", type=int, default=5, help="first-frame samples incl. the original; 1 = no augmentation")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"infer with the longest side at most this many pixels (default {DEFAULT_MAX_SIZE}, the scale "
                        "the default model was trained at; 0 = full resolution)")
    t.add_argument("--merge", default="released", choices=["released", "single"])
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


class _VideoSequence:
    """A video file with one annotated frame, shaped like io.davis.SequenceFolder for the track loop."""

    def __init__(self, video: Path, mask: Path, mask_frame: int):
        from .io.labels import read_label_png
        from .io.video import iter_video_frames, video_info

        self.name = video.stem
        self._iter = iter_video_frames
        self.video = video
        info = video_info(video)
        self.num_frames, self.frame_hw = info["num_frames"], (info["height"], info["width"])
        if not mask.is_file():
            raise FileNotFoundError(f"mask PNG not found: {mask}")
        labels = read_label_png(mask)
        if not (labels[(labels != 0) & (labels != 255)]).any():
            raise ValueError(f"{mask} holds no object: the start frame needs a mask with at least one object id")
        if not 0 <= mask_frame < self.num_frames:
            raise ValueError(f"--mask-frame {mask_frame} is outside the video's {self.num_frames} frames")
        self._prompts = {mask_frame: labels}

    def __len__(self):
        return self.num_frames

    def prompts(self):
        return self._prompts

    def frames(self):
        # the container's frame count is checked as frames are read: a truncated file raises after its last frame
        for i, frame in enumerate(self._iter(self.video, expected_frames=self.num_frames)):
            yield i, f"{i:05d}", frame


def check_prompts(seq) -> None:
    """Every prompt mask against the frame size, before a model is loaded or an output folder is made."""
    from .core.tracker import fit_mask, masks_from_label_map

    hw = getattr(seq, "frame_hw", None) or seq.read_frame(0).shape[:2]
    for index, label_map in seq.prompts().items():
        for obj_id, mask in masks_from_label_map(label_map).items():
            try:
                fit_mask(mask, hw, obj_id)
            except ValueError as e:
                raise ValueError(f"sequence {seq.name}, frame {index}: {e}") from None


def _folder_frames(seq):
    for i, path in enumerate(seq.frame_paths):
        yield i, path.stem, seq.read_frame(i)


def track_sequence(tracker, seq, frames, out_dir: Path, save_probs: bool, progress: bool) -> dict:
    """Run one sequence, writing a palette PNG per frame (and npz of probabilities). Returns timing stats."""
    from tqdm import tqdm

    from .core.tracker import masks_from_label_map
    from .io.labels import write_label_png

    prompts = seq.prompts()
    if not prompts:
        raise ValueError(f"sequence {seq.name}: no annotation holds an object; the first frame of each object needs "
                         "its mask")
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker.reset()
    seconds, n, hw = 0.0, 0, None
    for i, name, frame in tqdm(frames, total=len(seq), desc=seq.name, unit="frame", disable=not progress,
                               leave=False):
        hw = frame.shape[:2]
        if not tracker.objects and i not in prompts:  # before the first object appears
            write_label_png(out_dir / f"{name}.png", np.zeros(hw, np.uint8))
            continue
        t0 = time.perf_counter()
        out = tracker.step(frame, masks_from_label_map(prompts[i]) if i in prompts else None)
        if tracker.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        n += 1
        write_label_png(out_dir / f"{name}.png", out.labels.cpu().numpy().astype(np.uint8))
        if save_probs:
            np.savez_compressed(out_dir / f"{name}.npz",
                                **{str(k): v.cpu().numpy().astype(np.float32) for k, v in out.probabilities.items()})
    return {"sequence": seq.name, "frames": n, "seconds": seconds, "height": hw[0], "width": hw[1],
            "objects": len(tracker.objects)}


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
    if args.davis:
        names = _split(args.sequences) or davis.list_sequences(args.davis, args.resolution)
        seqs = [davis.load_sequence(args.davis, n, args.resolution) for n in names]
        jobs = [(s, _folder_frames(s)) for s in seqs]
    elif args.frames:
        if not args.annotations:
            raise SystemExit("error: --frames needs --annotations (the folder of mask PNGs)")
        s = davis.sequence_from_dirs(args.frames, args.annotations)
        jobs = [(s, _folder_frames(s))]
    else:
        if not args.mask:
            raise SystemExit("error: --video needs --mask (a PNG of the objects on its first frame)")
        s = _VideoSequence(args.video, args.mask, args.mask_frame)
        jobs = [(s, s.frames())]

    for seq, _ in jobs:
        check_prompts(seq)

    max_size = None if args.max_size == 0 else args.max_size
    config = TrackerConfig(solver=SolverConfig(), num_aug=args.num_aug, merge=args.merge, max_size=max_size,
                           seed=args.seed)
    tracker, info = build_tracker(args.model, args.backbone, args.device, config)
    print(f"model: {info.describe()}")  # notes (e.g. "running D-only") were logged as warnings

    stats = []
    for seq, frames in jobs:
        try:
            st = track_sequence(tracker, seq, frames, args.out / seq.name, args.save_probs, not args.no_progress)
        except TruncatedVideoError as e:
            print(f"error: {e}\n  the masks of the {e.decoded} frames that decoded are in {args.out / seq.name}",
                  file=sys.stderr)
            return 3
        fps = st["frames"] / st["seconds"] if st["seconds"] else float("nan")
        ih, iw = inference_size((st["height"], st["width"]), max_size)
        print(f"{seq.name}: {st['frames']} frames, {st['objects']} object(s), {fps:.2f} FPS at {iw}x{ih}")
        stats.append(st)
    total_frames = sum(s["frames"] for s in stats)
    total_s = sum(s["seconds"] for s in stats)
    threads = torch.get_num_threads() if args.device == "cpu" else "n/a"
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"FPS: {total_frames / max(total_s, 1e-9):.2f} over {total_frames} frames "
          f"(backbone {info.backbone}, {'D+S' if info.segnet_path else 'D-only'}, device {dev}, threads {threads}; "
          f"includes first-frame fitting, excludes decoding and writing)")
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
