"""The inference rewrites keep the masks: BatchNorm folding, channels-last, S's reordered upsampler (each against
the plain module), the whole fast tracker against the plain one on a real clip (float32: >= 99.9 % of pixels
equal), and the reduced-precision mode at the agreement bench/e2e.py reports."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from frtm_plugin.core.backbone import build_backbone
from frtm_plugin.core.fast import fast_backbone, fast_segnet, fold_batchnorm
from frtm_plugin.core.segnet import SegNetwork
from frtm_plugin.core.tracker import TrackerConfig
from frtm_plugin.core.video_loop import propagate_in_video
from frtm_plugin.io.davis import load_sequence
from frtm_plugin.io.labels import read_label_png

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


@pytest.fixture(scope="module")
def clip():
    seq = load_sequence(DEMO, "rollerblade")
    return [seq.read_frame(i) for i in range(10)], read_label_png(seq.annotation_paths[0]) == 1


def test_folded_channels_last_backbone_equals_the_plain_one(clip):
    plain = build_backbone("mobilenet_v2", target_layer="layer4_expand")
    fast = fast_backbone(plain)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())  # the caller's module is untouched
    x = torch.from_numpy(clip[0][0]).permute(2, 0, 1)[None]
    with torch.no_grad():
        a, b = plain(x), fast(x)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4 * float(a[k].abs().max())), k


def test_folded_segnet_and_reordered_upsampler_equal_the_released_order():
    torch.manual_seed(0)
    S = SegNetwork({"layer5": 64, "layer4": 32, "layer3": 16, "layer2": 8}).eval()
    for m in S.modules():  # BatchNorm statistics that are not the identity, so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    feats = {"layer5": torch.randn(1, 64, 4, 7), "layer4": torch.randn(1, 32, 8, 14),
             "layer3": torch.randn(1, 16, 16, 27), "layer2": torch.randn(1, 8, 31, 54)}
    scores = torch.randn(3, 1, 8, 14)
    with torch.no_grad():
        released = S(scores, feats, (123, 215), reordered=False)
        reordered = S(scores, feats, (123, 215))
        folded = fast_segnet(S)(scores, {k: v.contiguous(memory_format=torch.channels_last)
                                         for k, v in feats.items()}, (123, 215))
    assert released.shape == reordered.shape == (3, 1, 123, 215)
    assert torch.allclose(released, reordered, atol=1e-5)
    assert torch.allclose(released, folded, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batchnorm(copy.deepcopy(S)).modules())


def _masks(config, clip):
    from frtm_plugin.models import build_tracker

    frames, gt = clip
    tracker = build_tracker("default", config=config)[0]
    return np.stack([o.labels for o in propagate_in_video(tracker, frames, {0: {1: gt}})])


def test_fast_tracker_masks_equal_the_plain_modules_on_a_real_clip(clip):
    plain = _masks(TrackerConfig(fast=False), clip)
    fast = _masks(TrackerConfig(), clip)
    assert (plain[1:] == 1).sum() > 50_000  # the skater is tracked
    assert (fast == plain).mean() >= 0.999
    bf16 = _masks(TrackerConfig(precision="bfloat16"), clip)
    assert (bf16 == plain).mean() >= 0.999  # measured 0.9997 on these frames (bench/e2e.py)
    with pytest.raises(ValueError, match="precision must be one of"):
        _masks(TrackerConfig(precision="int8"), clip)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA-only: no GPU here"))])
def test_s_batched_over_a_frames_objects_equals_one_object_at_a_time(clip, device):
    """On a GPU the fast path runs S once per frame for all its objects (features reduced once, shared): the same
    probabilities as running it per object (float32, to rounding); checked on the CPU too."""
    import torch.nn.functional as F

    from frtm_plugin.models import build_tracker

    frames, gt = clip
    tracker = build_tracker("default", device=device, config=TrackerConfig())[0]
    small = tracker.shrink(frames[3])
    hw = small.shape[:2]
    feats = tracker._features(tracker._to_tensor(small)[None], tracker._layers)
    hf, wf = feats[tracker.backbone.target_layer].shape[-2:]
    skater = F.interpolate(torch.from_numpy(gt).float()[None, None], size=(hf, wf), mode="area")[0, 0]
    wall = torch.zeros(hf, wf)
    wall[2: hf // 3, wf // 2: -2] = 0.9
    scores = torch.stack([skater, wall, 0.5 * skater + 0.2]).to(device)
    batched = tracker._probability(scores, feats, hw)
    single = torch.cat([tracker._probability(s[None], feats, hw) for s in scores])
    assert batched.shape == (3, *hw)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert ((batched > 0.5) == (single > 0.5)).float().mean() == 1.0
