"""frtm_plugin.fo.dataio against a temporary FiftyOne database (real DAVIS-2016 and judo-sparse data)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from frtm_plugin.io.davis import load_sequence, sequence_from_dirs
from frtm_plugin.io.labels import read_label_png
from frtm_plugin.io.video import iter_video_frames

DAVIS_SEQS = ["dog-agility", "rollerblade"]
N_FRAMES = 8

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (apt-get install ffmpeg)")


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    """fiftyone on a throwaway database; env vars are set before the first import (unless another test did it)."""
    base = tmp_path_factory.mktemp("fiftyone")
    if "fiftyone" not in sys.modules:
        os.environ.update({
            "FIFTYONE_DATABASE_VALIDATION": "false",
            "FIFTYONE_DO_NOT_TRACK": "true",
            "FIFTYONE_DATABASE_DIR": str(base / "db"),
            "FIFTYONE_PLUGINS_DIR": str(base / "plugins"),
            "FIFTYONE_DEFAULT_DATASET_DIR": str(base / "datasets"),
            "FIFTYONE_SHOW_PROGRESS_BARS": "false",
        })
    try:
        import fiftyone
        fiftyone.list_datasets()  # starts the database
    except Exception as e:  # no MongoDB build for this machine, no disk, ...
        pytest.skip(f"FiftyOne's database cannot start here: {type(e).__name__}: {e}")
    created = set(fiftyone.list_datasets())
    yield fiftyone
    for name in set(fiftyone.list_datasets()) - created:
        fiftyone.delete_dataset(name)


@pytest.fixture(scope="module")
def dio(fo):
    from frtm_plugin.fo import dataio
    return dataio


@pytest.fixture(scope="module")
def davis_ds(dio, davis_root, tmp_path_factory):
    media = tmp_path_factory.mktemp("media-davis")
    return dio.import_davis(davis_root, "test-davis", sequences=DAVIS_SEQS, media_dir=media, max_frames=N_FRAMES,
                            persistent=False, progress=False)


@pytest.fixture(scope="module")
def judo_ds(dio, judo_root, tmp_path_factory):
    media = tmp_path_factory.mktemp("media-judo")
    return dio.import_davis(judo_root, "test-judo", media_dir=media, persistent=False, progress=False)


def _codec(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,pix_fmt", "-of", "json", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["streams"][0]


def _frames(sample):
    return {fn: frame for fn, frame in sample.frames.items()}


def test_davis_import(davis_ds, davis_root):
    assert len(davis_ds) == len(DAVIS_SEQS)
    assert davis_ds.media_type == "video"
    assert sorted(davis_ds.values("sequence")) == DAVIS_SEQS
    assert davis_ds.info["frtm_source"]["layout"] == "davis"
    assert davis_ds.default_mask_targets == {1: "object 1"}
    for sample in davis_ds:
        seq = load_sequence(davis_root, sample["sequence"])
        assert "train" in sample.tags
        # the video: one frame per JPEG, original size, H.264 the App can play
        decoded = list(iter_video_frames(sample.filepath))
        assert len(decoded) == N_FRAMES
        h, w = seq.read_frame(0).shape[:2]
        assert decoded[0].shape == (h, w, 3)
        assert np.abs(decoded[0].astype(int) - seq.read_frame(0).astype(int)).mean() < 6
        assert _codec(sample.filepath)["codec_name"] == "h264"
        assert _codec(sample.filepath)["pix_fmt"] == "yuv420p"
        assert sample.metadata.total_frame_count == N_FRAMES
        assert (sample.metadata.frame_width, sample.metadata.frame_height) == (w, h)
        # GT on every frame = the PNG; the prompt (object 1) only on frame number 1
        frames = _frames(sample)
        assert sorted(frames) == list(range(1, N_FRAMES + 1)) == sample["annotated_frames"]
        for fn, frame in frames.items():
            mask = frame["ground_truth"].mask
            assert mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, read_label_png(seq.annotation_paths[fn - 1]))
            assert (frame["prompt"] is not None) == (fn == 1)
        np.testing.assert_array_equal(frames[1]["prompt"].mask, frames[1]["ground_truth"].mask)
        assert set(np.unique(frames[1]["prompt"].mask)) == {0, 1}
        assert sample["prompt_frames"] == [1]


def test_judo_sparse_import(judo_ds, judo_root):
    seq = sequence_from_dirs(judo_root / "JPEGImages", judo_root / "Annotations")
    assert len(judo_ds) == 1
    sample = judo_ds.first()
    assert sample["sequence"] == "judo-sparse"
    assert judo_ds.info["frtm_source"]["layout"] == "flat"
    assert sample.metadata.total_frame_count == len(seq) == 16
    assert (sample.metadata.frame_width, sample.metadata.frame_height) == (854, 480)
    frames = _frames(sample)
    gt = {fn for fn, f in frames.items() if f["ground_truth"] is not None}
    prompts = {fn: f["prompt"].mask for fn, f in frames.items() if f["prompt"] is not None}
    assert gt == {1, 6, 9, 14}
    assert sorted(prompts) == [1, 6, 9, 14]
    for k, fn in enumerate([1, 6, 9, 14]):  # each prompt holds only the object that enters there
        assert set(np.unique(prompts[fn])) == {0, k + 1}
    narrow = read_label_png(judo_root / "Annotations" / "00005.png")
    assert narrow.shape == (480, 853)
    padded = frames[6]["ground_truth"].mask
    assert padded.shape == (480, 854)
    np.testing.assert_array_equal(padded[:, :853], narrow)
    assert not padded[:, 853].any()


def test_export_roundtrip_and_metrics(dio, davis_ds, davis_root, tmp_path):
    from frtm_plugin.metrics import evaluate_folder

    out = dio.export_davis(davis_ds, "frames.ground_truth", tmp_path / "export")
    gt_subset = tmp_path / "gt" / "Annotations" / "480p"
    for seq in DAVIS_SEQS:
        pngs = sorted((out / seq).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(N_FRAMES)]
        (gt_subset / seq).mkdir(parents=True)
        for p in pngs:
            orig = davis_root / "Annotations" / "480p" / seq / p.name
            np.testing.assert_array_equal(read_label_png(p), read_label_png(orig))
            os.symlink(orig, gt_subset / seq / p.name)
    rows, overall = evaluate_folder(tmp_path / "gt", out)
    assert len(rows) == len(DAVIS_SEQS)
    assert overall["J"] == pytest.approx(1.0) and overall["F"] == pytest.approx(1.0), overall


def test_export_sparse_fills_and_crops(dio, judo_ds, judo_root, tmp_path):
    out = dio.export_davis(judo_ds.first(), "ground_truth", tmp_path, frame_names="{:05d}")
    pngs = sorted((out / "judo-sparse").glob("*.png"))
    assert len(pngs) == 16
    for p in pngs:
        labels = read_label_png(p)
        assert labels.shape == (480, 854)
        orig = judo_root / "Annotations" / p.name
        if orig.exists():
            ref = read_label_png(orig)
            np.testing.assert_array_equal(labels[:, :ref.shape[1]], ref)
        else:
            assert not labels.any()


def test_reimport_reuses_video_and_overwrite(dio, fo, judo_root, tmp_path):
    ds = dio.import_davis(judo_root, "test-judo-again", media_dir=tmp_path, persistent=False, progress=False,
                          max_frames=3)
    mp4 = Path(ds.first().filepath)
    assert mp4.name == "judo-sparse-first3.mp4" and ds.first().metadata.total_frame_count == 3
    mtime = mp4.stat().st_mtime_ns
    with pytest.raises(ValueError, match="already exists"):
        dio.import_davis(judo_root, "test-judo-again", media_dir=tmp_path, persistent=False, progress=False)
    ds = dio.import_davis(judo_root, "test-judo-again", media_dir=tmp_path, persistent=False, progress=False,
                          max_frames=3, overwrite=True)
    assert len(ds) == 1 and ds.info["frtm_source"]["encoded"][0]["reused"]
    assert mp4.stat().st_mtime_ns == mtime
    ds.delete()


def test_errors(dio, tmp_path, judo_root, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not a DAVIS-style folder"):
        dio.import_davis(tmp_path, "test-bad", persistent=False, progress=False)
    monkeypatch.setattr(dio.shutil, "which", lambda name: None)
    with pytest.raises(dio.FFmpegError, match="apt-get install ffmpeg"):
        dio.import_davis(judo_root, "test-noffmpeg", media_dir=tmp_path, persistent=False, progress=False)


def test_odd_size_padded_not_scaled(dio, tmp_path):
    """Synthetic 75x51 frames: the video is 76x52 (edge-padded), masks zero-padded, export crops back to 75x51."""
    from PIL import Image

    from frtm_plugin.io.labels import write_label_png

    root = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    masks = {}
    for i in range(4):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (51, 75, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i:05d}.jpg")
    for i, ids in [(0, [1]), (2, [1, 2])]:
        m = np.zeros((51, 75), np.uint8)
        for k in ids:
            m[10 * k:10 * k + 8, 5 * k:5 * k + 30] = k
        m[0, 0] = 255  # void survives as 255
        write_label_png(root / "Annotations" / f"{i:05d}.png", m)
        masks[i] = m
    ds = dio.import_davis(root, "test-tiny", media_dir=tmp_path / "media", persistent=False, progress=False)
    sample = ds.first()
    assert (sample.metadata.frame_width, sample.metadata.frame_height) == (76, 52)
    assert (sample["source_width"], sample["source_height"]) == (75, 51)
    assert ds.default_mask_targets == {1: "object 1", 2: "object 2", 255: "void"}
    frames = _frames(sample)
    gt = frames[3]["ground_truth"].mask
    assert gt.shape == (52, 76) and not gt[51].any() and not gt[:, 75].any()
    np.testing.assert_array_equal(gt[:51, :75], masks[2])
    assert set(np.unique(frames[3]["prompt"].mask)) == {0, 2}  # object 2 only, void dropped
    out = dio.export_davis(ds, "ground_truth", tmp_path / "out")
    pngs = sorted((out / "tiny").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(4)]
    for i, p in enumerate(pngs):
        np.testing.assert_array_equal(read_label_png(p), masks.get(i, np.zeros((51, 75), np.uint8)))
    ds.delete()
