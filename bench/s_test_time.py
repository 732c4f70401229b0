"""Would S do better at test time, with no new training? (issue 11; experiments, not shipped)

Two test-time levers of S, run through the real tracker on the held-out DAVIS-2016 videos (``evaluate_tracker``),
one JSON line per variant appended to ``--results``:

- ``finetune``: OSVOS-style online adaptation on top of FRTM. When an object starts, after D's first-frame fit, S (a
  copy per video) is fine-tuned for a few steps on warped copies of that frame (``train/warp.py``: affine + smooth
  bend about the object), each fed D's scores on the warped copy, against the warped mask (BCE, BatchNorm
  statistics frozen); the rest of the video is tracked with the adapted S.
- ``mirror``: on every tracked frame the backbone also reads the frame mirrored left-right, S runs on those features
  with D's scores mirrored (resampled onto the mirrored frame's cell grid, which is offset when the width is not a
  multiple of the stride), and its logits (``mode=logits``) or probabilities (``mode=prob``), mirrored back, are
  averaged with S's own. D, its memory and its window are unchanged.

    python bench/s_test_time.py --model twin.pth --results tt.jsonl \
        --variants "base:" "ft10:kind=finetune,steps=10,lr=1e-4" "ft10_tse:kind=finetune,steps=10,params=TSE" \
        "mirror:kind=mirror,mode=logits"
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "davis2016-train-480p"
HELD_OUT = "bmx-bumps,dog-agility,motorbike,rollerblade,soccerball"

DEFAULTS = dict(kind="none", mode="logits", steps=20, lr=1e-4, copies=8, batch=2, angle=15.0, scale=0.15, shift=0.1,
                bend=0.03, params="all", with_original=False)


def mirror_scores(scores: torch.Tensor, width: int, stride: int) -> torch.Tensor:
    """(N, Hf, Wf) scores of a frame ``width`` px wide -> the same scores on the mirrored frame's cell grid: cell j
    of the mirrored frame is centred on pixel (width - 1) - (stride * j + (stride - 1) / 2) of the original."""
    wf = scores.shape[-1]
    j = torch.arange(wf, dtype=torch.float32)
    src = ((width - 1) - (stride * j + (stride - 1) / 2) - (stride - 1) / 2) / stride  # in cells of the original
    x0 = src.floor().clamp(0, wf - 1)
    a = (src - x0).clamp(0, 1)
    x1 = (x0 + 1).clamp(max=wf - 1)
    return scores[..., x0.long()] * (1 - a) + scores[..., x1.long()] * a


def fine_tuning_tracker_class():
    from frtm_plugin.core.fast import fast_segnet
    from frtm_plugin.core.tracker import FRTMTracker
    from frtm_plugin.train.warp import apply_warp, random_warp

    class FineTuningTracker(FRTMTracker):
        """FRTMTracker whose S is fine-tuned on warped copies of each object's first keyframe."""

        def __init__(self, backbone, segnet, config, ft: dict):
            super().__init__(backbone, segnet, config)
            self.base_segnet = copy.deepcopy(segnet).eval()
            self.ft = ft
            self.ft_seconds = 0.0
            self._tuned = None

        def reset(self):
            super().reset()
            self.segnet = fast_segnet(self.base_segnet)
            self._tuned = None

        def _start_object(self, obj_id, image, mask, frame_feature, index):
            super()._start_object(obj_id, image, mask, frame_feature, index)
            if self.ft["steps"] > 0 and mask.any():
                t0 = time.perf_counter()
                with torch.enable_grad():
                    self._finetune(obj_id, image, mask)
                self.ft_seconds += time.perf_counter() - t0

        def _finetune(self, obj_id, image, mask):
            ft = self.ft
            rng = np.random.default_rng(1000 + obj_id)
            ys, xs = np.nonzero(mask)
            center = (float(ys.mean()), float(xs.mean()))
            images, labels = [], []
            if ft["with_original"]:
                images.append(image)
                labels.append(mask.astype(np.uint8))
            while len(images) < ft["copies"]:
                w = random_warp(rng, ft["angle"], ft["scale"], ft["shift"], ft["bend"])
                im, lab = apply_warp(image, mask.astype(np.uint8), w, center)
                images.append(im)
                labels.append(lab)
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
            with torch.no_grad():
                feats = self._features(batch, self._layers)
                tm = self.objects[obj_id].target_model
                scores = torch.stack([tm.predict(feats[self.backbone.target_layer][i].contiguous())[1]
                                      for i in range(len(images))])
            y = torch.from_numpy(np.stack(labels)).float()
            net = self._tuned if self._tuned is not None else copy.deepcopy(self.base_segnet)
            net.eval()  # BatchNorm statistics frozen
            for p in net.parameters():
                p.requires_grad_(False)
            params = [p for n, p in net.named_parameters() if ft["params"] == "all" or n.startswith(ft["params"])]
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=ft["lr"])
            hw = image.shape[:2]
            g = torch.Generator().manual_seed(obj_id)
            for _ in range(ft["steps"]):
                pick = torch.randperm(len(images), generator=g)[: ft["batch"]]
                f = {k: v[pick].contiguous() for k, v in feats.items()}
                logits = net(scores[pick][:, None], f, hw, reordered=False)[:, 0]
                loss = F.binary_cross_entropy_with_logits(logits, y[pick])
                opt.zero_grad()
                loss.backward()
                opt.step()
            for p in net.parameters():
                p.requires_grad_(False)
            self._tuned = net
            self.segnet = fast_segnet(net)

    return FineTuningTracker


def mirrored_look_tracker_class():
    from frtm_plugin.core.tracker import FRTMTracker

    class FlipTracker(FRTMTracker):
        mode = "logits"  # or "prob"

        def _features(self, images, layers):
            if images.shape[0] != 1 or self.segnet is None or len(layers) == 1:
                self._mirrored = None
                return super()._features(images, layers)
            both = super()._features(torch.cat([images, images.flip(-1)]), layers)
            self._mirrored = {k: v[1:] for k, v in both.items()}
            return {k: v[:1] for k, v in both.items()}

        def _probability(self, scores, feats, hw):
            if self.segnet is None or getattr(self, "_mirrored", None) is None:
                return super()._probability(scores, feats, hw)
            with self._autocast():
                a = self.segnet(scores[:, None], feats, hw, reordered=self.config.fast)[:, 0].float()
                m = mirror_scores(scores, hw[1], self.backbone.stride)
                mf = {k: v.expand(len(scores), *v.shape[1:]) for k, v in self._mirrored.items()}
                b = self.segnet(m[:, None], mf, hw, reordered=self.config.fast)[:, 0].float().flip(-1)
            if self.mode == "prob":
                return (torch.sigmoid(a) + torch.sigmoid(b)) / 2
            return torch.sigmoid((a + b) / 2)

    return FlipTracker


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition(":")
    settings = dict(DEFAULTS)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in settings:
            raise SystemExit(f"unknown key {key!r} in {spec!r}; keys: {sorted(settings)}")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    if settings["kind"] not in ("none", "finetune", "mirror"):
        raise SystemExit(f"kind must be none, finetune or mirror, got {settings['kind']!r}")
    return name, settings


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--variants", nargs="+", default=["base:"],
                   help="\"name:key=val,key=val\" (keys: %s)" % list(DEFAULTS))
    p.add_argument("--sequences", default=HELD_OUT)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--search-margin", type=float, default=0.25, help="the shipped default's window")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path)
    args = p.parse_args(argv)

    from frtm_plugin.core.backbone import build_backbone
    from frtm_plugin.core.segnet import load_segnet_checkpoint
    from frtm_plugin.core.tracker import FRTMTracker, TrackerConfig
    from frtm_plugin.models import model_config, model_inference
    from frtm_plugin.train.validate import evaluate_tracker

    torch.set_num_threads(args.threads)
    net, info = load_segnet_checkpoint(args.model)
    backbone = build_backbone(info["backbone"], target_layer=info["target_layer"])
    config = model_config(TrackerConfig(search_margin=args.search_margin), model_inference(info))
    for name, settings in map(parse_variant, args.variants):
        if settings["kind"] == "finetune":
            tracker = fine_tuning_tracker_class()(backbone, net, config, settings)
        elif settings["kind"] == "mirror":
            tracker = mirrored_look_tracker_class()(backbone, net, config)
            tracker.mode = settings["mode"]
        else:
            tracker = FRTMTracker(backbone, net, config)
        r = evaluate_tracker(tracker, args.data, args.sequences.split(","))
        per = {k: round(100 * v["J&F"], 1) for k, v in r["per_sequence"].items()}
        o = r["overall"]
        tuning = getattr(tracker, "ft_seconds", 0.0)
        print(f"{name}: {per} J&F {100 * o['J&F']:.2f} (J {100 * o['J']:.1f} / F {100 * o['F']:.1f}), "
              f"{r['frames'] / r['seconds']:.2f} FPS (fine-tuning {tuning:.0f} s of {r['seconds']:.0f} s)", flush=True)
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps({"name": name, "settings": settings, "model": str(args.model), "per_sequence": per,
                                    "overall": o, "seconds": r["seconds"], "frames": r["frames"],
                                    "ft_seconds": tuning}) + "\n")


if __name__ == "__main__":
    main()
