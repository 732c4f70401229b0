"""The command line end to end on the shipped demo clip (always present) and on video files."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frtm_plugin.cli import main
from frtm_plugin.io.davis import load_sequence
from frtm_plugin.io.labels import read_label_png, write_label_png
from frtm_plugin.io.video import TruncatedVideoError, VideoReadError, iter_video_frames, video_info, write_video

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
FAST = ["--num-aug", "1", "--max-size", "320", "--threads", "2", "--no-progress", "--model", "d-only"]


def test_track_and_evaluate_demo(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["track", "--davis", str(DEMO), "--out", str(out), "--save-probs", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "FPS:" in printed and "mobilenet_v2" in printed and "threads 2" in printed and "at 320x180" in printed
    seq = load_sequence(DEMO, "rollerblade")
    pngs = sorted((out / "rollerblade").glob("*.png"))
    assert [p.stem for p in pngs] == seq.frame_names()
    with Image.open(pngs[3]) as im:
        assert im.mode == "P" and im.size == (854, 480)
        assert im.getpalette()[3:6] == [128, 0, 0]  # DAVIS colour of object 1
    probs = np.load(out / "rollerblade" / "00003.npz")
    assert list(probs.keys()) == ["1"] and probs["1"].dtype == np.float32 and probs["1"].shape == (480, 854)
    assert ((probs["1"] > 0.5) == (read_label_png(pngs[3]) == 1)).mean() > 0.999  # one object: label = p > 0.5

    assert main(["evaluate", "--davis", str(DEMO), "--results", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed
    lines = (out / "evaluation.csv").read_text().strip().splitlines()
    assert lines[0] == "sequence,J,F,J&F,J-recall,J-decay,F-recall,F-decay"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["rollerblade", "overall"]
    j, f, jf = (float(x) for x in lines[-1].split(",")[1:4])
    assert 0.3 < j <= 1 and 0.2 < f <= 1 and abs(jf - (j + f) / 2) < 1e-6


def test_track_video_with_first_frame_mask(tmp_path):
    seq = load_sequence(DEMO, "rollerblade")
    frames = [seq.read_frame(i) for i in range(6)]
    video = tmp_path / "clip.mp4"
    write_video(video, frames)
    assert video_info(video)["num_frames"] == 6
    mask = tmp_path / "mask.png"
    write_label_png(mask, read_label_png(seq.annotation_paths[0]))
    out = tmp_path / "res"
    assert main(["track", "--video", str(video), "--mask", str(mask), "--out", str(out), *FAST]) == 0
    pngs = sorted((out / "clip").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(6)]
    gt = read_label_png(seq.annotation_paths[4]) == 1
    pred = read_label_png(pngs[4]) == 1
    assert (gt & pred).sum() / (gt | pred).sum() > 0.4  # D-only, no augmentation, 320 px: a plumbing check


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.png"
    write_label_png(empty, np.zeros((480, 854), np.uint8))
    video = tmp_path / "clip.mp4"
    seq = load_sequence(DEMO, "rollerblade")
    write_video(video, [seq.read_frame(0), seq.read_frame(1)])
    assert main(["track", "--video", str(video), "--mask", str(empty), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "holds no object" in capsys.readouterr().err

    assert main(["track", "--davis", str(DEMO), "--sequences", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "sequence 'nope' not found" in capsys.readouterr().err

    assert main(["track", "--davis", str(DEMO), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "x.pth")]) == 2
    assert "model checkpoint not found" in capsys.readouterr().err

    # A first-frame mask two pixels narrower than the frame.
    narrow = tmp_path / "narrow.png"
    write_label_png(narrow, read_label_png(seq.annotation_paths[0])[:, :852])
    assert main(["track", "--video", str(video), "--mask", str(narrow), "--out", str(tmp_path / "n"), *FAST]) == 2
    assert "480x852" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()  # a rejected mask leaves no (empty) output folder behind

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(VideoReadError):
        next(iter_video_frames(corrupt))
    mask = tmp_path / "m.png"
    write_label_png(mask, read_label_png(seq.annotation_paths[0]))
    assert main(["track", "--video", str(corrupt), "--mask", str(mask), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "corrupt.mp4" in err and "Invalid data found" in err
    assert "[Errno" not in err  # FFmpeg's words, not PyAV's error number


def _truncated_copy(whole: Path, dest: Path, fraction: float) -> Path:
    """A copy of a video cut short as an interrupted download leaves it (``head -c``)."""
    import subprocess

    size = int(whole.stat().st_size * fraction)
    with open(dest, "wb") as f:
        subprocess.run(["head", "-c", str(size), str(whole)], stdout=f, check=True)
    return dest


def test_truncated_video_is_an_error_not_a_short_video(tmp_path, capsys):
    """An MP4 whose index says 30 frames but whose data stops early: the frames that decode are written, the
    command says the file is truncated and exits 3; the whole file then runs to the end."""
    import cv2

    seq = load_sequence(DEMO, "rollerblade")
    frames = [cv2.resize(seq.read_frame(i), (320, 180)) for i in range(30)]
    whole = write_video(tmp_path / "whole.mp4", frames, faststart=True)
    cut = _truncated_copy(whole, tmp_path / "cut.mp4", 0.4)
    assert video_info(cut)["num_frames"] == 30
    with pytest.raises(TruncatedVideoError) as info:
        for _ in iter_video_frames(cut):
            pass
    assert 0 < info.value.decoded < 30 and info.value.expected == 30
    mask = tmp_path / "m.png"
    write_label_png(mask, cv2.resize(read_label_png(seq.annotation_paths[0]), (320, 180),
                                     interpolation=cv2.INTER_NEAREST))
    out = tmp_path / "res"
    args = ["--mask", str(mask), "--out", str(out), "--direction", "forward", *FAST]
    assert main(["track", "--video", str(cut), *args]) == 3
    err = capsys.readouterr().err
    assert f"ended after {info.value.decoded} of its 30 frames" in err and "truncated" in err
    assert f"({info.value.decoded} frames were labelled" in err  # forward: every decoded frame was written
    assert len(list((out / "cut").glob("*.png"))) == info.value.decoded
    assert main(["track", "--video", str(whole), *args]) == 0
    assert len(list((out / "whole").glob("*.png"))) == 30


def test_decodes_non_h264_avi(long_video):
    """vtest.avi: MS-MPEG4v3 in AVI, 768x576; frames come out as RGB uint8, one at a time."""
    it = iter_video_frames(long_video)
    frames = [next(it) for _ in range(3)]
    it.close()
    assert all(f.shape == (576, 768, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[2])


def _released_rn18_checkpoint(path: Path):
    """A checkpoint in the authors' format for ResNet-18 widths (random weights): only S, under 'model'."""
    import torch

    from frtm_plugin.core.segnet import SegNetwork

    torch.manual_seed(0)
    segnet = SegNetwork({"layer5": 512, "layer4": 256, "layer3": 128, "layer2": 64})
    torch.save({"model": {f"refiner.{k}": v for k, v in segnet.state_dict().items()}}, path)


def test_released_checkpoint_resolves_backbone_weights(tmp_path, monkeypatch, capsys):
    """--model PATH: the backbone is inferred from the file (RN18 here), its ImageNet weights are looked up in the
    torch hub cache, and a missing file is an error naming where it looked."""
    import torch
    import torchvision

    ckpt = tmp_path / "rn18_test.pth"
    _released_rn18_checkpoint(ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FRTM_ALLOW_DOWNLOAD", raising=False)
    args = ["track", "--davis", str(DEMO), "--out", str(tmp_path / "res"), "--model", str(ckpt),
            "--num-aug", "1", "--max-size", "160", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "torch") in err

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), hub / "resnet18-f37072fd.pth")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "backbone resnet18" in out and "S from rn18_test.pth" in out and "D+S" in out
    assert len(list((tmp_path / "res" / "rollerblade").glob("*.png"))) == 35


def test_video_with_keyframe_pngs_both_directions(tmp_path, capsys):
    """--video FILE --annotations DIR: PNGs named by frame index are keyframes; a middle-frame annotation labels
    every frame with --direction both (the default), and only the frames from it on with forward."""
    seq = load_sequence(DEMO, "rollerblade")
    frames = [seq.read_frame(i) for i in range(8)]
    video = write_video(tmp_path / "clip.mp4", frames)
    ann = tmp_path / "ann"
    ann.mkdir()
    gt4 = read_label_png(seq.annotation_paths[4])
    write_label_png(ann / "00004.png", gt4)
    out = tmp_path / "res"
    assert main(["track", "--video", str(video), "--annotations", str(ann), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "1 keyframe(s), both" in printed
    masks = [read_label_png(out / "clip" / f"{i:05d}.png") for i in range(8)]
    assert np.array_equal(masks[4] == 1, gt4 == 1)  # the keyframe is the annotation
    assert all((m == 1).any() for m in masks)  # every frame labelled, before the keyframe too
    assert main(["track", "--video", str(video), "--annotations", str(ann), "--out", str(tmp_path / "fw"),
                 "--direction", "forward", *FAST]) == 0
    fw = [read_label_png(tmp_path / "fw" / "clip" / f"{i:05d}.png") for i in range(8)]
    assert not any(m.any() for m in fw[:4]) and all((m == 1).any() for m in fw[4:])
    bad = tmp_path / "bad"
    bad.mkdir()
    write_label_png(bad / "frame4.png", gt4)
    assert main(["track", "--video", str(video), "--annotations", str(bad), "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "named by 0-based frame index" in capsys.readouterr().err
    write_label_png(bad / "frame4.png", gt4)
    (bad / "frame4.png").rename(bad / "00009.png")
    assert main(["track", "--video", str(video), "--annotations", str(bad), "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "annotates frame 9, but the video has 8 frames" in capsys.readouterr().err


def test_frames_folder_every_png_is_a_keyframe(judo_root, tmp_path, capsys):
    """--frames/--annotations: the judo clip's sparse PNGs are all keyframes (objects 1..4 entering on frames 0, 5, 8,
    13); the benchmark protocol (--davis) reads first appearances only."""
    out = tmp_path / "res"
    assert main(["track", "--frames", str(judo_root / "JPEGImages"), "--annotations", str(judo_root / "Annotations"),
                 "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    pngs = sorted((out / "judo-sparse").glob("*.png"))
    assert len(pngs) == 16
    assert "4 object(s)" in printed and ", both," in printed
