"""The segmentation network S: released checkpoint layout, strict loading, the x2 bicubic pyramid, forward shapes."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from frtm_plugin.core.segnet import (PyrUpBicubic2d, SegNetwork, load_segnet_checkpoint, save_segnet_checkpoint)

RN101_FC = {"layer5": 2048, "layer4": 1024, "layer3": 512, "layer2": 256}
RN18_FC = {"layer5": 512, "layer4": 256, "layer3": 128, "layer2": 64}
MBV2_FC = {"layer5": 1280, "layer4": 96, "layer3": 32, "layer2": 24}


def released_keys(fc):
    """The released checkpoints' 'model' keys and shapes, written out from the reference's key list (sec. 1.4)."""
    out = []
    for L in ("layer5", "layer4", "layer3", "layer2"):
        t = f"refiner.TSE.{L}."
        out += [(t + "reduce.0.weight", (64, fc[L], 1, 1)), (t + "reduce.0.bias", (64,)),
                (t + "reduce.2.weight", (64, 64, 1, 1)), (t + "reduce.2.bias", (64,)),
                (t + "transform.0.weight", (65, 65, 3, 3)), (t + "transform.0.bias", (65,)),
                (t + "transform.2.weight", (65, 65, 3, 3)), (t + "transform.2.bias", (65,)),
                (t + "transform.4.weight", (64, 65, 3, 3)), (t + "transform.4.bias", (64,))]

    def rrb(prefix):
        return [(prefix + "conv1x1.weight", (64, 64, 1, 1)), (prefix + "conv1x1.bias", (64,)),
                (prefix + "bblock.0.weight", (64, 64, 3, 3)), (prefix + "bblock.0.bias", (64,)),
                (prefix + "bblock.1.weight", (64,)), (prefix + "bblock.1.bias", (64,)),
                (prefix + "bblock.1.running_mean", (64,)), (prefix + "bblock.1.running_var", (64,)),
                (prefix + "bblock.1.num_batches_tracked", ()),
                (prefix + "bblock.3.weight", (64, 64, 3, 3))]

    for L in ("layer5", "layer4", "layer3", "layer2"):
        out += rrb(f"refiner.RRB1.{L}.")
    for L in ("layer5", "layer4", "layer3", "layer2"):
        c = f"refiner.CAB.{L}."
        out += [(c + "convreluconv.0.weight", (64, 128, 1, 1)), (c + "convreluconv.0.bias", (64,)),
                (c + "convreluconv.2.weight", (64, 64, 1, 1)), (c + "convreluconv.2.bias", (64,))]
    for L in ("layer5", "layer4", "layer3", "layer2"):
        out += rrb(f"refiner.RRB2.{L}.")
    out += [("refiner.project.conv1.weight", (32, 64, 3, 3)), ("refiner.project.conv1.bias", (32,)),
            ("refiner.project.conv2.weight", (1, 32, 3, 3)), ("refiner.project.conv2.bias", (1,))]
    return out


def fake_checkpoint(fc, seed=0, with_nbt=True):
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for k, shape in released_keys(fc):
        if k.endswith("num_batches_tracked"):
            if with_nbt:
                sd[k] = torch.tensor(1234, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    return sd


@pytest.mark.parametrize("fc,backbone,nparams", [(RN101_FC, "resnet101", 1_410_449),
                                                 (RN18_FC, "resnet18", 1_226_129)])
def test_released_layout_loads_strictly(tmp_path, fc, backbone, nparams):
    keys = released_keys(fc)
    assert len(keys) == 140
    sd = fake_checkpoint(fc)
    f = tmp_path / "released.pth"
    torch.save({"model": sd, "epoch": 260}, f)
    net, info = load_segnet_checkpoint(f)
    assert info["backbone"] == backbone
    assert info["target_layer"] == "layer4"
    assert info["ft_channels"] == fc and list(info["ft_channels"]) == list(fc)
    assert info["num_params"] == nparams == sum(p.numel() for p in net.parameters())
    # key order and shapes equal the released list exactly
    mine = net.state_dict(prefix="refiner.")
    assert [(k, tuple(v.shape)) for k, v in mine.items()] == keys
    # values really came from the file
    for k, v in sd.items():
        assert torch.equal(mine[k], v), k
    assert not net.training


def test_independent_build_matches_released_keys():
    net = SegNetwork(RN101_FC)
    assert [(k, tuple(v.shape)) for k, v in net.state_dict(prefix="refiner.").items()] == released_keys(RN101_FC)
    assert not any("W00" in k or "kernel" in k or "up1" in k or "up2" in k for k in net.state_dict())


def test_missing_num_batches_tracked_is_filled(tmp_path):
    sd = fake_checkpoint(RN18_FC, with_nbt=False)
    assert len(sd) == 140 - 8  # one BN per RRB, 8 RRBs
    f = tmp_path / "old.pth"
    torch.save({"model": sd}, f)
    net, info = load_segnet_checkpoint(f)
    assert info["filled_num_batches_tracked"] == 8
    assert info["backbone"] == "resnet18"
    assert net.RRB1["layer2"].bblock[1].num_batches_tracked.item() == 0
    assert torch.equal(net.TSE["layer5"].reduce[0].weight, sd["refiner.TSE.layer5.reduce.0.weight"])


def test_bad_checkpoints_give_clear_errors(tmp_path):
    base = fake_checkpoint(RN18_FC)

    extra = OrderedDict(base)
    extra["refiner.TSE.layer5.extra.weight"] = torch.zeros(3)
    f = tmp_path / "extra.pth"
    torch.save({"model": extra}, f)
    with pytest.raises(ValueError, match="unexpected keys.*extra.weight") as e:
        load_segnet_checkpoint(f)
    assert "extra.pth" in str(e.value)

    missing = OrderedDict(base)
    del missing["refiner.CAB.layer3.convreluconv.2.bias"]
    f = tmp_path / "missing.pth"
    torch.save({"model": missing}, f)
    with pytest.raises(ValueError, match="missing keys.*CAB.layer3.convreluconv.2.bias") as e:
        load_segnet_checkpoint(f)
    assert "missing.pth" in str(e.value)

    wrong = OrderedDict(base)
    wrong["refiner.RRB2.layer4.bblock.0.weight"] = torch.zeros(64, 64, 1, 1)
    f = tmp_path / "shape.pth"
    torch.save({"model": wrong}, f)
    with pytest.raises(ValueError, match=r"shape mismatch for refiner.RRB2.layer4.bblock.0.weight") as e:
        load_segnet_checkpoint(f)
    assert "shape.pth" in str(e.value)

    foreign = OrderedDict(base)
    foreign["backbone.conv1.weight"] = torch.zeros(1)
    f = tmp_path / "foreign.pth"
    torch.save({"model": foreign}, f)
    with pytest.raises(ValueError, match="refiner") as e:
        load_segnet_checkpoint(f)
    assert "foreign.pth" in str(e.value)

    f = tmp_path / "bare.pth"
    torch.save(dict(base), f)  # a bare state dict, no 'model'
    with pytest.raises(ValueError, match="'model'") as e:
        load_segnet_checkpoint(f)
    assert "bare.pth" in str(e.value)

    # an unknown width without meta cannot be attributed to a backbone
    f = tmp_path / "mbv2_nometa.pth"
    torch.save({"model": fake_checkpoint(MBV2_FC)}, f)
    with pytest.raises(ValueError, match="backbone"):
        load_segnet_checkpoint(f)


class _Payload:
    """Unpickling this would run code: the weights-only loader must refuse it before anything runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    marker = tmp_path / "code-ran"
    f = tmp_path / "evil.pth"
    torch.save({"model": fake_checkpoint(RN18_FC), "payload": _Payload(marker)}, f)
    with pytest.raises(ValueError) as e:
        load_segnet_checkpoint(f)
    msg = str(e.value)
    assert not marker.exists()  # nothing in the file ran
    assert "evil.pth" in msg and "refused" in msg and "Nothing in it was run" in msg
    assert "weights_only" not in msg and "trusted source" not in msg  # never advise loading it unsafely
    assert "Unsupported global: GLOBAL getattr" in msg  # what it held, so the user knows why

    f = tmp_path / "cut.pth"
    good = tmp_path / "good.pth"
    torch.save({"model": fake_checkpoint(RN18_FC)}, good)
    f.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.pth: not a readable torch checkpoint"):
        load_segnet_checkpoint(f)


def test_save_and_load_own_checkpoint_with_meta(tmp_path):
    torch.manual_seed(0)
    net = SegNetwork(MBV2_FC)
    f = tmp_path / "sub" / "mbv2.pth"
    save_segnet_checkpoint(f, net, {"backbone": "mobilenet_v2", "target_layer": "layer4_expand"})
    raw = torch.load(f, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "meta"}
    assert all(k.startswith("refiner.") for k in raw["model"])
    net2, info = load_segnet_checkpoint(f)
    assert info["backbone"] == "mobilenet_v2" and info["target_layer"] == "layer4_expand"
    assert info["ft_channels"] == MBV2_FC
    for (k1, v1), (k2, v2) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def _bicubic_ref(x):
    return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_pyrup_bicubic_matches_torch_bicubic(dtype, tol):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 13, 19, generator=g, dtype=torch.float64).to(dtype) * 10
    up = PyrUpBicubic2d(5)
    y = up(x)
    assert y.shape == (2, 5, 26, 38) and y.dtype == dtype
    ref = _bicubic_ref(x)
    interior = (y - ref)[..., 4:-4, 4:-4].abs().max().item()
    assert interior < tol * 10  # values are ~10 in magnitude
    # Near the border: torch's bicubic clamps the tap indices into the image, which is exactly what replicate
    # padding does, and its source coordinate is not clamped at 0 (cubic mode), so the pyramid agrees there too
    # (computed: the max border error is at rounding level, like the interior).
    border = (y - ref).abs().max().item()
    assert border < tol * 10
    # ... whereas zero padding (a different border rule) would be visibly different at the border
    xp = F.pad(x, (2, 2, 2, 2))
    up_zero = torch.stack([F.conv2d(xp, k, groups=5) for k in up.kernels(x.device, dtype)], 2)
    n, c, _, _, = x.shape
    up_zero = up_zero.view(n, c, 2, 2, 14, 20).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 28, 40)[:, :, 1:-1, 1:-1]
    assert (up_zero - ref)[..., 4:-4, 4:-4].abs().max().item() < tol * 10
    assert (up_zero - ref).abs().max().item() > 1e-2


def test_pyrup_kernels_are_exact_and_sum_to_one():
    up = PyrUpBicubic2d(3)
    ws32 = up.kernels("cpu", torch.float32)
    ws64 = up.kernels("cpu", torch.float64)
    assert len(ws32) == 4
    for a, b in zip(ws32, ws64):
        assert a.shape == (3, 1, 4, 4)
        assert torch.equal(a.double(), b)  # dyadic values: exact in float32
        assert torch.allclose(b.sum(dim=(-1, -2)), torch.ones(3, 1, dtype=torch.float64), atol=0, rtol=0)
    # w_e = f(-1.25, -0.25, 0.75, 1.75) with a = -0.75
    w_e = ws64[0][0, 0].sum(dim=0)
    assert torch.equal(w_e, torch.tensor([-0.10546875, 0.87890625, 0.26171875, -0.03515625], dtype=torch.float64))


@pytest.mark.parametrize("channels_last", [False, True])
def test_pyrup_transposed_form_equals_the_four_kernels(channels_last):
    g = torch.Generator().manual_seed(2)
    up = PyrUpBicubic2d(4)
    for h, w in [(1, 1), (2, 3), (13, 19), (30, 54)]:
        x = torch.randn(2, 4, h, w, generator=g) * 10
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        four, transposed = up(x), up(x, transposed=True)
        assert transposed.shape == four.shape == (2, 4, 2 * h, 2 * w)
        assert torch.allclose(transposed, four, atol=1e-5, rtol=0)  # values ~10: float rounding only
    x64 = torch.randn(1, 3, 7, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(up(x64, any_channels=True, transposed=True), up(x64, any_channels=True), atol=1e-12, rtol=0)


def test_pyrup_tiny_inputs():
    for h, w in [(1, 1), (1, 3), (2, 2)]:
        x = torch.randn(1, 2, h, w, dtype=torch.float64)
        y = PyrUpBicubic2d(2)(x)
        assert y.shape == (1, 2, 2 * h, 2 * w)
        assert torch.allclose(y, _bicubic_ref(x), atol=1e-12, rtol=0)


def _features(fc, h, w, batch=1, dtype=torch.float32):
    def sz(s):  # sizes of the ResNet/MobileNetV2 maps at stride s for an h x w image
        hh, ww = h, w
        for _ in range({4: 2, 8: 3, 16: 4, 32: 5}[s]):
            hh, ww = (hh + 1) // 2, (ww + 1) // 2
        return hh, ww
    strides = {"layer5": 32, "layer4": 16, "layer3": 8, "layer2": 4}
    return {L: torch.randn(batch, c, *sz(strides[L]), dtype=dtype) for L, c in fc.items()}, sz(16)


@pytest.mark.parametrize("hw", [(480, 854), (123, 201)])
def test_segnet_forward_shapes(hw):
    torch.manual_seed(0)
    net = SegNetwork(RN18_FC).eval()
    feats, (fh, fw) = _features(RN18_FC, *hw)
    if hw == (480, 854):
        assert (fh, fw) == (30, 54) and feats["layer2"].shape[-2:] == (120, 214)
    scores = torch.randn(1, 1, fh, fw)
    with torch.no_grad():
        y = net(scores, feats, hw)
    assert y.shape == (1, 1, *hw)
    assert torch.isfinite(y).all()
    assert not any("up1" in k or "up2" in k for k in net.state_dict())


def test_segnet_several_targets_share_features():
    torch.manual_seed(0)
    net = SegNetwork(MBV2_FC).eval()
    feats, (fh, fw) = _features(MBV2_FC, 123, 201)
    scores = torch.randn(3, 1, fh, fw)
    with torch.no_grad():
        y = net(scores, feats, (123, 201))
        y1 = net(scores[1:2], feats, torch.Size([1, 3, 123, 201]))
    assert y.shape == (3, 1, 123, 201)
    assert torch.allclose(y[1:2], y1, atol=1e-5)
    assert not torch.allclose(y[0], y[1])


def test_segnet_float64_and_gradients():
    torch.manual_seed(0)
    net = SegNetwork(RN18_FC).double().train()
    feats, (fh, fw) = _features(RN18_FC, 64, 96, batch=2, dtype=torch.float64)
    scores = torch.randn(2, 1, fh, fw, dtype=torch.float64)
    y = net(scores, feats, (64, 96))
    assert y.dtype == torch.float64 and y.shape == (2, 1, 64, 96)
    y.sum().backward()
    assert net.project.conv2.weight.grad is not None
    assert net.TSE["layer5"].reduce[0].weight.grad.abs().sum() > 0
