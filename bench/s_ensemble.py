"""Would several S on one backbone and one D beat one S? (issue 11; an experiment, not shipped)

Averages the logits of the given S checkpoints (all trained on the same backbone and D tap) inside the real tracker
and scores the held-out DAVIS-2016 videos with ``evaluate_model`` (J&F per video, FPS). Appends a JSON line to
``--results``. The checkpoints' own inference settings (the first one's) apply unless ``--search-margin`` is given.

    python bench/s_ensemble.py --name twin+ema twin.pth ema.pth --results ensembles.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "davis2016-train-480p"
HELD_OUT = "bmx-bumps,dog-agility,motorbike,rollerblade,soccerball"


class SegEnsemble(nn.Module):
    """Several S read the same D scores and features; their logits are averaged."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    @property
    def seg_layers(self):
        return tuple(dict.fromkeys(layer for n in self.nets for layer in n.seg_layers))

    def forward(self, scores, features, image_size, reordered=True):
        return torch.stack([n(scores, features, image_size, reordered=reordered) for n in self.nets]).mean(0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--sequences", default=HELD_OUT)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--search-margin", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path)
    args = p.parse_args(argv)

    from frtm_plugin.core.segnet import load_segnet_checkpoint
    from frtm_plugin.core.tracker import TrackerConfig
    from frtm_plugin.models import model_inference
    from frtm_plugin.train.validate import evaluate_model

    torch.set_num_threads(args.threads)
    loaded = [load_segnet_checkpoint(c) for c in args.checkpoints]
    taps = {(i["backbone"], i["target_layer"]) for _, i in loaded}
    if len(taps) != 1:
        raise SystemExit(f"the checkpoints read different backbones / D taps {sorted(taps)}: one ensemble needs one")
    ensemble = SegEnsemble([n for n, _ in loaded])
    info = loaded[0][1]
    r = evaluate_model(args.data, args.sequences.split(","), ensemble, backbone=info["backbone"],
                       target_layer=info["target_layer"], inference=model_inference(info),
                       config=TrackerConfig(search_margin=args.search_margin))
    per = {k: round(100 * v["J&F"], 1) for k, v in r["per_sequence"].items()}
    print(f"{args.name}: {per} J&F {100 * r['overall']['J&F']:.2f} at {r['frames'] / r['seconds']:.2f} FPS "
          f"({args.threads} threads)")
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps({"name": args.name, "checkpoints": [str(c) for c in args.checkpoints],
                                "per_sequence": r["per_sequence"], "overall": r["overall"],
                                "seconds": r["seconds"], "frames": r["frames"]}) + "\n")


if __name__ == "__main__":
    main()
