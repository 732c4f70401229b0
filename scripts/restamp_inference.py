"""Give a checkpoint of this project the current inference settings (``models.OFFLINE_INFERENCE``) without
retraining it: S's weights are unchanged, ``meta["inference"]`` is replaced, and when the checkpoint carries a
``recipe_validation`` its twin (``--twin``, checked against the stored sha256) is validated again on its held-out
videos with those settings, as ``train --recipe-of`` does at export.

    python scripts/restamp_inference.py frtm_plugin/weights/frtm_mobilenet_v2_davis16.pth \
        --twin twin.pth --davis ../shared/data/davis2016-train-480p --threads 2

Writes the checkpoint in place (atomically) and prints the new held-out scores; update manifest.json's size after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--twin", type=Path, help="the recipe twin named in the checkpoint's recipe_validation")
    p.add_argument("--davis", type=Path, help="DAVIS-layout root holding the twin's held-out videos")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from frtm_plugin.core.segnet import load_segnet_checkpoint, save_segnet_checkpoint
    from frtm_plugin.core.weights import file_sha256
    from frtm_plugin.models import OFFLINE_INFERENCE
    from frtm_plugin.train.validate import compare_d_only_and_ds, format_comparison, stored_scores

    torch.set_num_threads(args.threads)
    segnet, info = load_segnet_checkpoint(args.checkpoint)
    meta = dict(info["meta"])
    rv = meta.get("recipe_validation")
    if rv is not None:
        if args.twin is None or args.davis is None:
            raise SystemExit(f"{args.checkpoint} carries a recipe validation of {rv['twin']}: give --twin (that "
                             "file) and --davis to measure it again with the new settings")
        if file_sha256(args.twin) != rv["twin_sha256"]:
            raise SystemExit(f"{args.twin} is not the twin {rv['twin']} this checkpoint names (sha256 "
                             f"{rv['twin_sha256'][:12]}...)")
        reports = compare_d_only_and_ds(args.davis, rv["validation_sequences"], args.twin, meta["backbone"],
                                        [meta["target_layer"]], inference=OFFLINE_INFERENCE)
        print(format_comparison(reports))
        rv = dict(rv, validation=stored_scores(reports))
        meta["recipe_validation"] = rv
    meta["inference"] = OFFLINE_INFERENCE
    save_segnet_checkpoint(args.checkpoint, segnet, meta)
    print(f"wrote {args.checkpoint} ({args.checkpoint.stat().st_size} bytes), inference {OFFLINE_INFERENCE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
