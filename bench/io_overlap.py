"""Decode-ahead and write-behind threads (``propagate(..., io_threads=True)``, the default) against the same run with
all I/O in the caller's thread, end to end through the SDK on one H.264 video at 854x480 (the demo clip's frames,
played forwards and backwards to the requested length), the shipped default model, a first-frame prompt, instances
stored. Rounds alternate A B A B so both see the same machine load; each row is one ``propagate`` (model start-up
excluded: ``report.seconds`` times the videos' loop). Not a test: prints a markdown table.

    python bench/io_overlap.py [--frames 60] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="default")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="frtm-io-bench-"))
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(tmp / "db"))
    import fiftyone as fo
    import torch

    import frtm_plugin
    from frtm_plugin.io.davis import load_sequence
    from frtm_plugin.io.labels import read_label_png
    from frtm_plugin.io.video import write_video

    torch.set_num_threads(args.threads)
    seq = load_sequence(ROOT / "data" / "demo", "rollerblade")
    n = len(seq)
    order = [k % (2 * n - 2) for k in range(args.frames)]  # forwards, then backwards, and again
    order = [i if i < n else 2 * n - 2 - i for i in order]
    path = write_video(tmp / "clip.mp4", (seq.read_frame(i) for i in order))
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(path)))
    s = ds.first()
    s.frames[1]["prompt"] = fo.Segmentation(mask=read_label_png(seq.annotation_paths[0]))
    s.save()

    rows = []
    for r in range(args.rounds):
        for threads in (True, False):
            report = frtm_plugin.propagate(ds, "prompt", f"out_{int(threads)}", model=args.model, io_threads=threads,
                                           overwrite=True, progress=False)
            rows.append((r, threads, report.frames, report.seconds))
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, {args.threads} threads, model {args.model}, 854x480, {args.frames} frames")
    print("\n| round | io threads | frames | seconds | FPS |\n|---|---|---|---|---|")
    for r, threads, frames, sec in rows:
        print(f"| {r} | {'on' if threads else 'off'} | {frames} | {sec:.1f} | {frames / sec:.2f} |")
    on = [f / s for _, t, f, s in rows if t]
    off = [f / s for _, t, f, s in rows if not t]
    ratios = [a / b for a, b in zip(on, off)]
    print(f"\nFPS on / off per round: {', '.join(f'{x:.3f}' for x in ratios)}; best-round FPS on {max(on):.2f}, "
          f"off {max(off):.2f}")
    ds.delete()


if __name__ == "__main__":
    main()
