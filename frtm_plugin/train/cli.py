"""``python -m frtm_plugin.train``: train S, or validate D-only / D+S on held-out sequences.

    python -m frtm_plugin.train [train] --davis ROOT --val-sequences a,b,c --out DIR [--epochs N] ...
    python -m frtm_plugin.train [train] --fiftyone DATASET [--label-field ground_truth] --out DIR ...
    python -m frtm_plugin.train validate --davis ROOT --val-sequences a,b,c [--model PATH] [--target-layer L ...]

Rerunning ``train`` with the same ``--out`` resumes from the latest epoch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from ..core.backbone import BACKBONE_NAMES, SEG_LAYERS

log = logging.getLogger("frtm_plugin.train")


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def _hw(values) -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) == 1 and values[0] == 0:
        return None
    if len(values) != 2:
        raise argparse.ArgumentTypeError("give H W (two integers), or 0 to disable")
    return int(values[0]), int(values[1])


def default_cache_dir() -> Path:
    return Path(os.environ.get("FRTM_CACHE", Path.home() / ".cache" / "frtm"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m frtm_plugin.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train the segmentation network S (resumes from --out)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--davis", type=Path, help="DAVIS / YouTube-VOS-layout root (JPEGImages/, Annotations/)")
    src.add_argument("--fiftyone", metavar="DATASET", help="name of a FiftyOne video dataset with frame masks")
    t.add_argument("--label-field", default="ground_truth", help="frame-level Segmentation field (FiftyOne)")
    t.add_argument("--sequences", help="comma-separated training sequences (default: all but --val-sequences)")
    t.add_argument("--val-sequences", default="", help="comma-separated held-out sequences (DAVIS layout only "
                   "for the J&F validation; excluded from training in both sources)")
    t.add_argument("--out", type=Path, required=True, help="output folder: checkpoints/, history.json, segnet.pth")
    t.add_argument("--cache", type=Path, default=None, help="cache folder (default $FRTM_CACHE or ~/.cache/frtm)")
    t.add_argument("--backbone", default="mobilenet_v2", choices=BACKBONE_NAMES)
    t.add_argument("--target-layer", default="layer4", help="D's feature tap (mobilenet_v2: layer4 or layer4_expand)")
    t.add_argument("--seg-layers", default=None,
                   help="comma-separated maps S reads, deep to shallow (default: the backbone's; D's tap may be one, "
                        "e.g. layer5,vit12+layer4_expand,layer4,layer3,layer2)")
    t.add_argument("--seg-width", type=int, default=64, help="S's channels at every level (released: 64)")
    t.add_argument("--size", type=int, nargs="+", default=[480, 854], metavar="N", help="training H W")
    t.add_argument("--crop", type=int, nargs="+", default=[288, 480], metavar="N",
                   help="test-frame crop H W (multiples of 32), or 0 for whole frames")
    t.add_argument("--object-crop-prob", type=float, default=0.75,
                   help="share of test-frame crops centred near the object (the rest uniform); may change on resume")
    t.add_argument("--distractor-prob", type=float, default=0.0,
                   help="share of test frames with a window of another video's object pasted in, labelled "
                        "background (teaches S to follow D's scores; 0 = the released recipe)")
    t.add_argument("--ema-decay", type=float, default=0.0,
                   help="export and validate an exponential moving average of S's weights with this decay per step "
                        "(e.g. 0.995; 0 = off, the released recipe)")
    t.add_argument("--warp-prob", type=float, default=0.0,
                   help="share of test frames warped (random affine + smooth bend about the object; features "
                        "computed on the fly): synthetic motion")
    t.add_argument("--distractor-size", type=float, default=0.5, help="pasted window, fraction of the test frame")
    t.add_argument("--init-from", type=Path, default=None,
                   help="start S from this S checkpoint (ours or the authors' released format): fine-tuning")
    t.add_argument("--frame-step", type=int, default=1, help="cache every k-th annotated frame")
    t.add_argument("--ref-frames", type=int, default=5, help="reference frames (cached D) per object")
    t.add_argument("--num-aug", type=int, default=15, help="first-frame samples to fit D (released: 15)")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--samples-per-epoch", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=4, help="samples per step (each with 2 test frames)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-step", type=int, default=None, help="epochs before lr x0.1 (default: 2/3 of --epochs)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    t.add_argument("--val-every", type=int, default=0, help="validate D+S every N epochs (0: only at the end)")
    t.add_argument("--val-frames", type=int, default=None, help="frames per validation sequence (default all)")
    t.add_argument("--no-validate", action="store_true", help="skip the final D-only / D+S validation")
    t.add_argument("--recipe-of", type=Path, default=None, metavar="TWIN",
                   help="for a run on every video: an S trained with the same recipe on fewer videos (the rest held "
                        "out); it is validated on its held-out videos at the end and the scores are stored in this "
                        "model's meta as 'recipe_validation'")
    t.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs in this call")
    t.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("validate", help="J&F of D-only and D+S on held-out DAVIS-layout sequences")
    v.add_argument("--davis", type=Path, required=True)
    v.add_argument("--val-sequences", required=True)
    v.add_argument("--model", help="S checkpoint (omit for D-only only)")
    v.add_argument("--backbone", default=None, help="default: the checkpoint's, or mobilenet_v2")
    v.add_argument("--target-layer", default=None, help="comma-separated D taps to compare (default: the "
                   "checkpoint's, or layer4)")
    v.add_argument("--max-frames", type=int, default=None)
    v.add_argument("--json", type=Path, help="write the results here")
    v.add_argument("--threads", type=int, default=None)
    return p


def cmd_train(args) -> int:
    from ..core.weights import file_sha256
    from ..models import OFFLINE_INFERENCE
    from .data import davis_sequences, fiftyone_sequences, source_key
    from .trainer import TrainConfig, Trainer
    from .validate import compare_d_only_and_ds, evaluate_model, format_comparison, stored_scores

    val = _split(args.val_sequences)
    if args.davis is not None:
        names = _split(args.sequences) or None
        seqs = davis_sequences(args.davis, names, exclude=val)
        source = source_key("davis", str(args.davis.resolve()))
    else:
        seqs = fiftyone_sequences(args.fiftyone, args.label_field, exclude=val)
        wanted = set(_split(args.sequences))
        if wanted:
            seqs = [s for s in seqs if s.name in wanted]
        source = source_key("fiftyone", f"{args.fiftyone}:{args.label_field}")
    lr_step = args.lr_step or max(1, round(args.epochs * 2 / 3))
    seg_layers = tuple(_split(args.seg_layers)) or SEG_LAYERS
    cfg = TrainConfig(backbone=args.backbone, target_layer=args.target_layer, seg_layers=seg_layers,
                      seg_width=args.seg_width, size=_hw(args.size), crop=_hw(args.crop),
                      object_crop_prob=args.object_crop_prob, frame_step=args.frame_step, ref_frames=args.ref_frames,
                      num_aug=args.num_aug, samples_per_epoch=args.samples_per_epoch, batch_size=args.batch_size,
                      epochs=args.epochs, lr=args.lr, lr_step_epochs=lr_step, seed=args.seed, source=source,
                      distractor_prob=args.distractor_prob, distractor_size=args.distractor_size,
                      warp_prob=args.warp_prob, ema_decay=args.ema_decay,
                      init_from=str(args.init_from.resolve()) if args.init_from else "")
    validate_fn = None
    if args.val_every and val and args.davis is not None:
        def validate_fn(segnet, epoch):
            r = evaluate_model(args.davis, val, segnet, backbone=trainer.backbone, max_frames=args.val_frames)
            log.info("epoch %d validation J&F %.3f", epoch, r["overall"]["J&F"])
            return r["overall"]
    trainer = Trainer(seqs, cfg, args.out, args.cache or default_cache_dir(), progress=not args.no_progress,
                      validate_fn=validate_fn, val_every=args.val_every)
    if args.recipe_of and args.davis is None:
        raise SystemExit("--recipe-of validates on DAVIS-layout sequences: give --davis")
    twin = trainer.recipe_twin(args.recipe_of) if args.recipe_of else None  # checked before hours of training
    log.info("training on %d sequences (%s), held out: %s", len(seqs), ", ".join(s.name for s in seqs),
             ", ".join(val) or "none")
    trainer.run(stop_after=args.stop_after)
    if trainer.epoch < cfg.epochs:
        log.info("stopped after epoch %d of %d; rerun the same command to resume", trainer.epoch, cfg.epochs)
        return 0
    extra = {}
    if val and args.davis is not None and not args.no_validate:
        reports = compare_d_only_and_ds(args.davis, val, trainer.shipped_segnet(), cfg.backbone,
                                        [cfg.target_layer], args.val_frames)
        (args.out / "validation.json").write_text(json.dumps(reports, indent=1))
        print(format_comparison(reports))
        extra["validation"] = stored_scores(reports)
        extra["validation_sequences"] = val
    if twin is not None:
        held_out = twin["validation_sequences"]
        # with this model's inference settings (the twin's own may predate some), so the scores describe it
        reports = compare_d_only_and_ds(args.davis, held_out, args.recipe_of, cfg.backbone, [cfg.target_layer],
                                        args.val_frames, inference=OFFLINE_INFERENCE)
        print(f"the same recipe trained without {', '.join(held_out)} ({args.recipe_of}):")
        print(format_comparison(reports))
        extra["recipe_validation"] = {
            "twin": args.recipe_of.name, "twin_sha256": file_sha256(args.recipe_of),
            "twin_sequences": twin["train"]["sequences"], "validation_sequences": held_out,
            "validation": stored_scores(reports)}
    path = trainer.export(args.out / "segnet.pth", extra)
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 2**20)
    return 0


def cmd_validate(args) -> int:
    from ..models import model_inference
    from .validate import compare_d_only_and_ds, format_comparison, warn_if_trained_on
    model, info = None, {}
    if args.model:
        from ..core.segnet import load_segnet_checkpoint
        model, info = load_segnet_checkpoint(args.model)
    # The checkpoint's meta names its backbone (a --backbone must agree) and D's tap (--target-layer may compare
    # others); without a checkpoint, D-only on MobileNetV2's layer4 unless told otherwise.
    backbone = args.backbone or info.get("backbone") or "mobilenet_v2"
    if info.get("backbone") and backbone != info["backbone"]:
        raise SystemExit(f"{args.model} was trained on {info['backbone']}'s features, not {backbone}'s: drop "
                         f"--backbone or pass --backbone {info['backbone']}")
    layers = _split(args.target_layer) or [info.get("target_layer") or "layer4"]
    inference = model_inference(info) if model is not None else None  # the checkpoint's own settings
    seqs = _split(args.val_sequences)
    reports = compare_d_only_and_ds(args.davis, seqs, model, backbone, layers, args.max_frames, inference)
    seen = warn_if_trained_on(str(args.model), info["meta"], seqs) if model is not None else []
    for r in reports.values():
        r["trained_on"] = seen if r["model"] == "D+S" else []
    print(format_comparison(reports))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("train", "validate", "-h", "--help"):
        argv.insert(0, "train")  # `train` is the default verb
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        rc = cmd_train(args) if args.command == "train" else cmd_validate(args)
    except (FileNotFoundError, ValueError) as e:  # bad input: a clear message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    log.info("done in %.1f min", (time.perf_counter() - t0) / 60)
    return rc
