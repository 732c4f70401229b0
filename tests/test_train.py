"""The offline trainer of S: tiny real runs (2 short DAVIS sequences, few steps), caching, stop/resume, data sources."""


import json
import re

import numpy as np
import pytest
import torch

from frtm_plugin.core.backbone import build_backbone
from frtm_plugin.core.segnet import load_segnet_checkpoint
from frtm_plugin.core.target_model import TargetModel
from frtm_plugin.core.tracker import FRTMTracker
from frtm_plugin.train import TrainConfig, Trainer, davis_sequences, fiftyone_sequences, latest_checkpoint
from frtm_plugin.train.trainer import IGNORE, segmentation_loss
from frtm_plugin.train.cache import TRAIN_SOLVER, d_scores, load
from frtm_plugin.train.data import label_to_ids

SEQS = ["dog-agility", "rollerblade"]


def tiny_config(**kw):
    base = dict(size=(240, 427), crop=(128, 224), frame_step=4, ref_frames=1, num_aug=3, samples_per_epoch=8,
                batch_size=4, epochs=3, lr_step_epochs=2, seed=3, source="test-davis")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(2)
    return build_backbone("mobilenet_v2")


@pytest.fixture(scope="module")
def sequences(davis_root):
    return davis_sequences(davis_root, SEQS)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, backbone, sequences):
    """A 3-epoch run from an empty cache, kept for comparison."""
    root = tmp_path_factory.mktemp("train")
    cache, out = root / "cache", root / "a"
    trainer = Trainer(sequences, tiny_config(keep_checkpoints=5), out, cache, backbone=backbone, progress=False)
    history = trainer.run()
    return trainer, history, cache


def _state(trainer):
    return {k: v.clone() for k, v in trainer.segnet.state_dict().items()}


def test_cache_is_filled_once(uninterrupted):
    """Features and target models are computed in the first epoch only (later epochs read them: what makes them
    cheaper; the speed itself is a benchmark's business, not a test's)."""
    trainer, history, cache = uninterrupted
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["cache_seconds"] > 0 and history[1]["cache_seconds"] == 0 and history[2]["cache_seconds"] == 0
    feats = list((cache / "features").rglob("0*.pt"))
    dms = list((cache / "target_models").rglob("*.pt"))
    assert len(dms) == len(SEQS)  # one reference frame per sequence, one object each
    assert len(feats) == sum(len(range(0, n, 4)) for n in (25, 35))
    rec = load(feats[0])
    assert rec["layer2"].dtype == torch.float16 and rec["label"].shape == (240, 427)
    assert {"project.weight", "filter.weight"} == set(load(dms[0]))
    for h in history:
        assert np.isfinite(h["loss"]) and 0.0 <= h["iou"] <= 1.0 and h["steps"] == 2
    assert history[2]["lr"] == pytest.approx(1e-4)  # StepLR after lr_step_epochs=2


def test_stop_and_resume_ends_in_the_same_state(tmp_path, uninterrupted, backbone, sequences):
    ref, ref_history, cache = uninterrupted
    out = tmp_path / "b"
    marks = {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")}

    def crash(epoch, step):  # killed in the middle of epoch 2
        if epoch == 2 and step == 1:
            raise KeyboardInterrupt

    first = Trainer(sequences, tiny_config(), out, cache, backbone=backbone, progress=False, on_step=crash)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert latest_checkpoint(out).name == "epoch_0001.pth"
    ck = torch.load(latest_checkpoint(out), weights_only=True)
    assert ck["epoch"] == 1 and ck["step"] == 2

    resumed = Trainer(sequences, tiny_config(), out, cache, backbone=backbone, progress=False)
    assert resumed.resume()
    assert (resumed.epoch, resumed.step) == (1, 2)
    # identical weights at the resume point: the uninterrupted run's epoch-1 checkpoint
    ref_e1 = torch.load(ref.out_dir / "checkpoints" / "epoch_0001.pth", weights_only=True)
    assert ref_e1["step"] == 2
    for k, v in ck["model"].items():
        assert torch.equal(v, ref_e1["model"][k]), k
    for k, v in resumed.segnet.state_dict().items():
        assert torch.equal(v, ref_e1["model"]["refiner." + k]), k
    history = resumed.run()
    assert (resumed.epoch, resumed.step) == (ref.epoch, ref.step) == (3, 6)
    a, b = _state(ref), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6), k
    assert resumed.optimizer.param_groups[0]["lr"] == ref.optimizer.param_groups[0]["lr"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[2]["loss"] == pytest.approx(ref_history[2]["loss"], rel=1e-5)
    # the resumed run reused the cache: nothing was rewritten
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")} == marks
    assert history[1]["cache_seconds"] == 0 or history[1]["cache_seconds"] < ref_history[0]["cache_seconds"]


def test_resume_refuses_other_settings(tmp_path, uninterrupted, backbone, sequences):
    ref, _, cache = uninterrupted
    other = Trainer(sequences, tiny_config(lr=5e-4), ref.out_dir, cache, backbone=backbone, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        other.resume()


def test_resume_with_an_edited_schedule(tmp_path, uninterrupted, backbone, sequences):
    """--epochs and --lr-step may change on resume (shorten/extend a run): lr follows the new step."""
    import shutil

    ref, _, cache = uninterrupted
    out = tmp_path / "c"
    shutil.copytree(ref.out_dir, out)
    longer = Trainer(sequences, tiny_config(epochs=4, lr_step_epochs=1), out, cache, backbone=backbone,
                     progress=False)
    assert longer.resume() and longer.epoch == 3
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.1 ** 3)
    history = longer.run()
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[3]["lr"] == pytest.approx(1e-6)
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-7)  # the next step size-1 drop


def test_exported_checkpoint_runs_in_the_tracker(tmp_path, uninterrupted, backbone, davis_root):
    ref, _, _ = uninterrupted
    path = ref.export(tmp_path / "s.pth", {"note": "tiny"})
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("refiner.") for k in raw["model"])
    segnet, info = load_segnet_checkpoint(path)
    assert info["backbone"] == "mobilenet_v2" and info["target_layer"] == "layer4"
    assert info["meta"]["train"]["steps_done"] == 6 and info["meta"]["train"]["target_model"]["channels"] == 32
    for k, v in ref.segnet.state_dict().items():
        assert torch.equal(segnet.state_dict()[k], v)
    seq = davis_sequences(davis_root, ["rollerblade"])[0]
    frames = [f[:240, :320].copy() for f in seq.iter_frames([0, 1])]
    tracker = FRTMTracker(backbone, segnet)
    tracker.step(frames[0], {1: seq.read_label(0)[:240, :320] == 1})
    out = tracker.step(frames[1])
    assert out.labels.shape == frames[1].shape[:2]


def test_training_scores_match_the_tracker_target_model(backbone, sequences):
    """The trainer applies cached D weights with plain convolutions; they must equal TargetModel's own scores."""
    import cv2

    seq = sequences[1]
    image = cv2.resize(next(seq.iter_frames([0])), (427, 240), interpolation=cv2.INTER_AREA)
    mask = cv2.resize((seq.read_label(0) == 1).astype(np.uint8), (427, 240), interpolation=cv2.INTER_NEAREST)
    feats = backbone(torch.from_numpy(image).permute(2, 0, 1)[None], layers=("layer4",))["layer4"]
    model = TargetModel(feats.shape[1], TRAIN_SOLVER, generator=torch.Generator().manual_seed(0))
    model.initialize(feats, torch.from_numpy(mask.astype(np.float32))[None])
    expected = model.scores(model.project(feats[0]))
    got = d_scores(model.state_dict(), feats)[0, 0]
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    # and D did learn the target: its scores are higher on the object than off it
    fg = torch.from_numpy(cv2.resize(mask, expected.shape[::-1], interpolation=cv2.INTER_AREA) > 0)
    assert float(expected[fg].mean()) > float(expected[~fg].mean()) + 0.3


def test_distractor_windows(uninterrupted, backbone, sequences):
    """A pasted distractor is a stride-32 window of the *other* video's frame: its features at every level and this
    D's scores on that frame, labelled background (or left out of the loss where D takes it for the target);
    everything outside the window is the plain test frame."""
    ref, _, cache = uninterrupted
    plain = Trainer(sequences, tiny_config(), ref.out_dir, cache, backbone=backbone, progress=False)
    mixed = Trainer(sequences, tiny_config(distractor_prob=1.0), ref.out_dir, cache, backbone=backbone,
                    progress=False)
    plain.prepare()
    mixed.prepare()
    assert all(d is None for p in plain.epoch_plan(1) for d in p[4])
    plan = mixed.epoch_plan(1)
    assert all(d is not None and mixed.items[d[0]].seq != mixed.items[p[0]].seq for p in plan for d in p[4])
    f0, s0, y0 = plain.make_batch([p[:4] for p in plan])
    f1, s1, y1 = mixed.make_batch(plan)
    tests = [(p, t, d) for p in plan for t, d in zip(p[2], p[4])]
    pasted = 0
    for n, (p, t, (j, frame, _, _)) in enumerate(tests):
        changed = (f0["layer5"][n] != f1["layer5"][n]).any(0)
        pasted += bool(changed.any())
        rows, cols = torch.nonzero(changed, as_tuple=True)
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1  # stride 32
        assert (r1 - r0, c1 - c0) == (2, 3)  # half of 128x224, floored to the grid: 64x96 px
        other = mixed.fcache.read(mixed.items[j].seq, frame)
        win = f1["layer5"][n][:, r0:r1, c0:c1]
        src = other["layer5"].float()
        hits = [(a, b) for a in range(src.shape[1] - 1) for b in range(src.shape[2] - 2)
                if torch.equal(src[:, a:a + 2, b:b + 3], win)]
        assert len(hits) == 1
        a, b = hits[0]
        for L, st in (("layer2", 4), ("layer3", 8), ("layer4", 16)):
            k = 32 // st
            assert torch.equal(f1[L][n][:, r0 * k:r1 * k, c0 * k:c1 * k],
                               other[L][:, a * k:(a + 2) * k, b * k:(b + 3) * k].float()), L
            outside = torch.ones(f1[L].shape[-2:], dtype=torch.bool)
            outside[r0 * k:r1 * k, c0 * k:c1 * k] = False
            assert torch.equal(f1[L][n][:, outside], f0[L][n][:, outside]), L
        state = mixed._d_state(mixed.items[p[0]].seq, p[1], mixed.items[p[0]].obj)
        d_other = d_scores(state, other["layer4"].float()[None])[0]
        assert torch.allclose(s1[n][:, r0 * 2:r1 * 2, c0 * 2:c1 * 2], d_other[:, a * 2:(a + 2) * 2, b * 2:(b + 3) * 2])
        # background, or left out of the loss exactly where D scores the look-alike above 0.5
        win_label = y1[n][0, r0 * 32:r1 * 32, c0 * 32:c1 * 32]
        high = torch.nn.functional.interpolate(s1[n][None, :, r0 * 2:r1 * 2, c0 * 2:c1 * 2], win_label.shape,
                                               mode="bilinear", align_corners=False)[0, 0] > 0.5
        assert torch.equal(win_label == IGNORE, high) and not win_label[~high].any()
        keep = torch.ones(y1.shape[-2:], dtype=torch.bool)
        keep[r0 * 32:r1 * 32, c0 * 32:c1 * 32] = False
        assert torch.equal(y1[n][0][keep], y0[n][0][keep])
    assert pasted == len(tests)
    ignored = int((y1 == IGNORE).sum())
    assert 0 < ignored < int((y1 == 0).sum())  # the tiny D takes some of the other video for its target


def test_ignored_pixels_do_not_count():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    labels = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    base = segmentation_loss(logits, labels, 2)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) * 2
    assert torch.allclose(base, expected)  # no ignored pixel: the plain released loss
    labels[:, :, :4] = IGNORE
    a = segmentation_loss(logits, labels, 2)
    logits2 = logits.clone()
    logits2[:, :, :4] = 50.0 * torch.randn(2, 1, 4, 8, generator=g)
    assert torch.allclose(a, segmentation_loss(logits2, labels, 2))
    logits2.requires_grad_()
    segmentation_loss(logits2, labels, 2).backward()
    assert not logits2.grad[:, :, :4].any() and logits2.grad[:, :, 4:].abs().sum() > 0


def test_init_from_a_checkpoint(tmp_path, uninterrupted, backbone, sequences):
    """Fine-tuning: S starts from a saved S; one for other feature widths is refused with the reason."""
    from frtm_plugin.core.backbone import BACKBONE_CHANNELS, SEG_LAYERS
    from frtm_plugin.core.segnet import SegNetwork, save_segnet_checkpoint

    ref, _, cache = uninterrupted
    path = ref.export(tmp_path / "s.pth")
    tuned = Trainer(sequences, tiny_config(init_from=str(path), epochs=1), tmp_path / "ft", cache, backbone=backbone,
                    progress=False)
    for k, v in ref.segnet.state_dict().items():
        assert torch.equal(tuned.segnet.state_dict()[k], v), k
    assert tuned.meta()["train"]["init_from"] == str(path)
    lineage = tuned.meta()["train"]["init_from_checkpoint"]
    assert lineage["train"]["steps_done"] == ref.step and len(lineage["sha256"]) == 64
    wrong = save_segnet_checkpoint(tmp_path / "rn18.pth",
                                   SegNetwork({L: BACKBONE_CHANNELS["resnet18"][L] for L in SEG_LAYERS}),
                                   {"backbone": "resnet18"})
    with pytest.raises(ValueError, match="feature channels"):
        Trainer(sequences, tiny_config(init_from=str(wrong)), tmp_path / "x", cache, backbone=backbone,
                progress=False)
    with pytest.raises(FileNotFoundError, match="no S checkpoint"):
        tiny_config(init_from=str(tmp_path / "missing.pth")).validate()


def test_weight_averaging(tmp_path, uninterrupted, backbone, sequences):
    """--ema-decay: the exported and validated S is the moving average of the weights after every step (warm-up
    (1 + t) / (10 + t)), BatchNorm statistics included; it survives stop and resume; off, S is the last weights."""
    _, _, cache = uninterrupted
    decay = 0.6
    snapshots = []
    trainer = Trainer(sequences, tiny_config(ema_decay=decay, epochs=2), tmp_path / "ema", cache, backbone=backbone,
                      progress=False, on_step=lambda e, b: snapshots.append(_state(trainer)))
    expected = _state(trainer)
    trainer.run(stop_after=1)
    resumed = Trainer(sequences, tiny_config(ema_decay=decay, epochs=2), tmp_path / "ema", cache, backbone=backbone,
                      progress=False, on_step=lambda e, b: snapshots.append(_state(resumed)))
    resumed.run()
    assert len(snapshots) == resumed.step == 4
    for t, snap in enumerate(snapshots):
        d = min(decay, (1 + t) / (10 + t))
        for k, v in snap.items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v
    exported, _ = load_segnet_checkpoint(resumed.export(tmp_path / "ema.pth"))
    last = _state(resumed)
    moved = 0
    for k, v in exported.state_dict().items():
        assert torch.allclose(v, expected[k], rtol=0, atol=1e-6), k
        moved += v.is_floating_point() and not torch.allclose(v, last[k])
    assert moved > 0  # the average is not the last weights
    plain, _ = load_segnet_checkpoint(uninterrupted[0].export(tmp_path / "plain.pth"))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, uninterrupted[0].segnet.state_dict()[k]), k
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_config(ema_decay=1.0).validate()


def test_bad_settings_and_inputs(davis_root):
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_config(crop=(100, 224)).validate()
    with pytest.raises(ValueError, match="larger than"):
        tiny_config(crop=(256, 224)).validate()
    with pytest.raises(ValueError, match="no layer"):
        tiny_config(target_layer="layer9").validate()
    with pytest.raises(ValueError, match="distractor_prob"):
        tiny_config(distractor_prob=1.5).validate()
    with pytest.raises(ValueError, match="not found"):
        davis_sequences(davis_root, ["no-such-sequence"])
    with pytest.raises(ValueError, match="RGB masks"):
        label_to_ids(np.zeros((4, 4, 3), np.uint8))
    assert label_to_ids(np.array([[0, 255]], np.uint8)).tolist() == [[0, 1]]  # DAVIS-2016 binary mask
    assert label_to_ids(np.array([[0, 2, 255]], np.uint8)).tolist() == [[0, 2, 255]]  # ids, 255 void


def _fiftyone_or_skip():
    try:
        import fiftyone as fo
        ds = fo.Dataset()  # starts (or connects to) FiftyOne's database
        ds.delete()
        return fo
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"FiftyOne's database cannot start here: {type(e).__name__}: {e}")


def test_fiftyone_video_dataset_source(tmp_path, backbone, davis_root):
    fo = _fiftyone_or_skip()
    import av

    src = davis_sequences(davis_root, ["rollerblade"])[0]
    n = 6
    frames = [f[:240, :320].copy() for f in src.iter_frames(range(n))]
    video = tmp_path / "clip.avi"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    ds = fo.Dataset()
    try:
        sample = fo.Sample(filepath=str(video))
        for i in range(n):
            if i == 3:
                continue  # an unannotated frame
            m = (src.read_label(i)[:240, :320] == 1).astype(np.uint8) * 255
            sample.frames[i + 1] = fo.Frame(ground_truth=fo.Segmentation(mask=m))
        ds.add_sample(sample)
        seqs = fiftyone_sequences(ds, "ground_truth")
        assert len(seqs) == 1 and seqs[0].name == "clip"
        seq = seqs[0]
        assert seq.read_label(3) is None
        assert seq.read_label(0).max() == 1 and seq.read_label(0).shape == (240, 320)
        got = list(seq.iter_frames([0, 4]))
        assert len(got) == 2 and got[1].shape == (240, 320, 3)
        assert np.abs(got[1].astype(int) - frames[4]).mean() < 12  # the right frame (lossy codec)
        with pytest.raises(ValueError, match="no field"):
            fiftyone_sequences(ds, "nope")
        cfg = tiny_config(size=(224, 320), crop=(128, 224), frame_step=1, epochs=1, samples_per_epoch=4,
                          source="test-fo")
        trainer = Trainer(seqs, cfg, tmp_path / "out", tmp_path / "cache", backbone=backbone, progress=False)
        history = trainer.run()
        assert history[0]["steps"] == 1 and np.isfinite(history[0]["loss"])
        assert trainer.items[0].frames == [0, 1, 2, 4, 5]
    finally:
        ds.delete()


def test_validate_cli_takes_the_backbone_from_the_checkpoint(capsys, tmp_path):
    """`validate --model` reads the checkpoint's backbone (no --backbone needed); a --backbone that contradicts it is
    a clear error, not a shape mismatch deep in S."""
    from pathlib import Path

    from frtm_plugin.models import DEFAULT_CHECKPOINT
    from frtm_plugin.train.cli import main

    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    base = ["validate", "--davis", str(demo), "--val-sequences", "rollerblade", "--model", str(DEFAULT_CHECKPOINT),
            "--max-frames", "3"]
    out = tmp_path / "v.json"
    assert main(base + ["--json", str(out)]) == 0
    assert "D+S (layer4_expand)" in capsys.readouterr().out
    # the shipped S was trained on every DAVIS-2016 train video, this clip's included: the report says so
    reports = json.loads(out.read_text())
    assert reports["D+S (layer4_expand)"]["trained_on"] == ["rollerblade"]
    assert reports["D-only (layer4_expand)"]["trained_on"] == []
    with pytest.raises(SystemExit, match="trained on mobilenet_v2's features, not efficientnet_lite1's"):
        main(base + ["--backbone", "efficientnet_lite1"])


def test_s_can_read_ds_tap_at_another_width(tmp_path, sequences, davis_root):
    """``seg_layers`` may name D's tap (e.g. DINOv2 tokens for S): the trainer feeds it from the cache, the checkpoint
    keeps the level order (and S's width), and the tracker computes the maps S reads."""
    from frtm_plugin.models import build_tracker

    levels = ("layer5", "layer4_expand", "layer4", "layer3", "layer2")
    cfg = tiny_config(target_layer="layer4_expand", seg_layers=levels, seg_width=32, epochs=1)
    trainer = Trainer(sequences, cfg, tmp_path / "run", tmp_path / "cache", progress=False)
    trainer.run()
    assert trainer.segnet.seg_layers == levels and trainer.segnet.TSE["layer4_expand"].reduce[0].in_channels == 576
    path = trainer.export(tmp_path / "s.pth")
    segnet, info = load_segnet_checkpoint(path)
    assert segnet.seg_layers == levels and info["target_layer"] == "layer4_expand" and segnet.out_channels == 32
    tracker, _ = build_tracker(str(path))
    assert set(levels) <= set(tracker._layers)
    seq = davis_sequences(davis_root, ["rollerblade"])[0]
    frames = [f[:240, :320].copy() for f in seq.iter_frames([0, 1])]
    tracker.step(frames[0], {1: seq.read_label(0)[:240, :320] == 1})
    out = tracker.step(frames[1])
    # S's output, recomputed from the maps it names: the tracker fed S the D tap it was trained on
    feats = tracker.backbone(torch.from_numpy(frames[1]).permute(2, 0, 1)[None].float(), layers=list(levels))
    logits = tracker.segnet(out.coarse_scores[1][None, None].float(), feats, (240, 320), reordered=tracker.config.fast)
    assert torch.allclose(torch.sigmoid(logits)[0, 0], out.probabilities[1].float(), atol=1e-3)


def test_warp_moves_frame_and_labels_alike():
    """Synthetic motion: a half turn about the centre flips frame and labels alike; a shift moves them by as many
    pixels; the identity changes nothing."""
    from frtm_plugin.train.warp import IDENTITY, Warp, apply_warp, random_warp

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    label = np.zeros((64, 96), np.uint8)
    label[10:30, 20:50] = 1
    label[40:60, 70:90] = 2
    img, lab = apply_warp(image, label, Warp(angle=180.0), (31.5, 47.5))
    assert np.array_equal(lab, label[::-1, ::-1]) and np.abs(img.astype(int) - image[::-1, ::-1]).max() <= 1
    img, lab = apply_warp(image, label, Warp(shift=(0.0, 16 / 96)), (31.5, 47.5))
    assert np.array_equal(lab[:, 16:], label[:, :-16]) and np.abs(img[:, 16:].astype(int) - image[:, :-16]).max() <= 1
    assert apply_warp(image, label, IDENTITY, (0, 0))[1] is label
    w = random_warp(rng)
    img, lab = apply_warp(image, label, w, (20, 35))
    assert not np.array_equal(lab, label) and set(np.unique(lab)) <= {0, 1, 2}
    assert len(w.bend) == 32 and abs(w.angle) <= 15 and abs(w.scale - 1) <= 0.15


def test_warped_test_frames(tmp_path, uninterrupted, backbone, sequences):
    """Warped test frames: the identity warp computes exactly the cached record (the same maps, now); a run with
    warps draws them for about ``warp_prob`` of the test frames, trains, and resumes to the same weights."""
    from frtm_plugin.train.warp import IDENTITY

    ref, _, cache = uninterrupted
    trainer = Trainer(sequences, tiny_config(warp_prob=0.5), tmp_path / "w", cache, backbone=backbone, progress=False)
    trainer.prepare()
    it = trainer.items[0]
    frame = next(f for f in it.frames if it.counts[f] > 0)
    live, cached = trainer.warped_record(it.seq, frame, it.obj, IDENTITY), trainer.fcache.read(it.seq, frame)
    assert set(live) == set(cached)
    for k in cached:
        assert torch.allclose(live[k].float(), cached[k].float(), atol=1e-2), k
    warps = [w for sample in trainer.epoch_plan(1) for w in sample[5]]
    assert 0.2 < sum(w is not None for w in warps) / len(warps) < 0.8
    assert all(w is None for s in ref.epoch_plan(1) for w in s[5])
    history = trainer.run(stop_after=2)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    resumed = Trainer(sequences, tiny_config(warp_prob=0.5), tmp_path / "w", cache, backbone=backbone, progress=False)
    resumed.run()
    straight = Trainer(sequences, tiny_config(warp_prob=0.5), tmp_path / "w2", cache, backbone=backbone,
                       progress=False)
    straight.run()
    for k, v in straight.segnet.state_dict().items():
        assert torch.allclose(resumed.segnet.state_dict()[k].float(), v.float(), atol=1e-5), k


def test_recipe_of_a_twin_validates_it_into_the_meta(tmp_path, davis_root, capsys):
    """A model trained on every video has no held-out score of its own; ``--recipe-of TWIN`` (the same recipe on
    fewer videos) checks the recipes agree, validates the twin on the videos it held out and stores that in the
    model's meta. A twin with another recipe, or one trained on a video this run was not, is refused up front."""
    from frtm_plugin.core.weights import file_sha256
    from frtm_plugin.train.cli import main
    from frtm_plugin.train.validate import evaluate_model, trained_on

    def tiny(seed=3):
        return ["--davis", str(davis_root), "--cache", str(tmp_path / "cache"), "--size", "240", "427", "--crop",
                "128", "224", "--frame-step", "4", "--ref-frames", "1", "--num-aug", "3", "--samples-per-epoch", "8",
                "--batch-size", "4", "--epochs", "2", "--lr-step", "1", "--seed", str(seed), "--val-frames", "3",
                "--threads", "2", "--no-progress"]
    assert main(["train", *tiny(), "--sequences", "dog-agility", "--val-sequences", "rollerblade",
                 "--out", str(tmp_path / "twin")]) == 0
    twin = tmp_path / "twin" / "segnet.pth"
    assert main(["train", *tiny(), "--sequences", "dog-agility,rollerblade", "--out", str(tmp_path / "all"),
                 "--recipe-of", str(twin)]) == 0
    meta = load_segnet_checkpoint(tmp_path / "all" / "segnet.pth")[1]["meta"]
    assert meta["train"]["sequences"] == ["dog-agility", "rollerblade"] and "validation" not in meta
    rv = meta["recipe_validation"]
    assert rv["twin_sha256"] == file_sha256(twin) and rv["twin_sequences"] == ["dog-agility"]
    assert rv["validation_sequences"] == ["rollerblade"]
    again = evaluate_model(davis_root, ["rollerblade"], twin, max_frames=3)
    assert rv["validation"]["D+S (layer4)"]["overall"]["J&F"] == pytest.approx(again["overall"]["J&F"], abs=1e-6)
    assert set(rv["validation"]) == {"D-only (layer4)", "D+S (layer4)"}
    # scores of a model on videos it was trained on say so
    assert again["trained_on"] == [] and trained_on(twin, ["rollerblade", "dog-agility"]) == ["dog-agility"]
    assert trained_on(tmp_path / "all" / "segnet.pth", ["bear", "rollerblade"]) == ["rollerblade"]
    assert trained_on("d-only", ["rollerblade"]) == []

    def refused(args, message):
        capsys.readouterr()
        assert main(["train", *args]) == 2
        assert re.search(message, capsys.readouterr().err)

    refused([*tiny(seed=4), "--sequences", "dog-agility,rollerblade", "--out", str(tmp_path / "b"), "--recipe-of",
             str(twin)], r"another recipe: seed 3 \(here 4\)")
    assert not list((tmp_path / "b").glob("checkpoints/*"))  # refused before training
    refused([*tiny(), "--sequences", "rollerblade", "--out", str(tmp_path / "c"), "--recipe-of", str(twin)],
            r"trained on but not here: \['dog-agility'\]")
    refused([*tiny(), "--sequences", "dog-agility,rollerblade", "--out", str(tmp_path / "d"),  # nothing held out
             "--recipe-of", str(tmp_path / "all" / "segnet.pth")], "must hold videos out")
