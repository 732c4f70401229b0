"""The segmentation network S ("refiner") of FRTM, layer for layer as in the released code.

Module names, registration order and Sequential indices are those of the released ``model/seg_network.py``, so
``SegNetwork.state_dict(prefix='refiner.')`` has exactly the keys (and order) of the released checkpoints
``rn101_*.pth`` / ``rn18_*.pth``. ReLUs are ``nn.ReLU`` (the released code uses ``nn.LeakyReLU(0.0)``, the same
function; ReLUs carry no parameters, but they keep their Sequential index so the parameter indices match).

Data flow per level L (deep to shallow): ``x = RRB2(CAB(hpool, RRB1(TSE(ft_L, score, x_prev))))``, then the
``BackwardCompatibleUpsampler`` (exact x2 bicubic pyramid, conv, x2 pyramid, bilinear to the image size, conv)
gives logits at image resolution. Every resize except the pyramid is bilinear with ``align_corners=False`` and
is skipped when the size already matches (as the released ``interpolate`` helper does).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "conv", "relu", "interpolate", "TSE", "RRB", "CAB", "PyrUpBicubic2d", "BackwardCompatibleUpsampler",
    "SegNetwork", "load_segnet_checkpoint", "save_segnet_checkpoint", "segnet_from_state_dict",
    "CHECKPOINT_PREFIX", "BACKBONE_BY_WIDTH",
]

CHECKPOINT_PREFIX = "refiner."
#: width of ``TSE.layer4.reduce.0.weight``'s input -> backbone, for the released checkpoints
BACKBONE_BY_WIDTH = {1024: "resnet101", 256: "resnet18"}
_WIDTH_KEY = "TSE.layer4.reduce.0.weight"


# ---------------------------------------------------------------------------------------------------------------
# helpers (lib/utils.py of the released code)

def conv(ic: int, oc: int, ksize: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(ic, oc, ksize, padding=ksize // 2, bias=bias)


def relu() -> nn.Module:
    return nn.ReLU()


def _size2(size) -> Tuple[int, int]:
    if torch.is_tensor(size):
        size = size.tolist()
    size = tuple(int(s) for s in size)
    return size[-2], size[-1]


def interpolate(t: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to ``size`` (last two entries), skipped when already that size."""
    size = _size2(size)
    if tuple(t.shape[-2:]) == size:
        return t
    return F.interpolate(t, size, mode="bilinear", align_corners=False)


def _gap(t: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(t, (1, 1))


# ---------------------------------------------------------------------------------------------------------------
# blocks

class TSE(nn.Module):
    """Target segmentation encoder: reduce the features, concatenate the score, transform."""

    def __init__(self, fc: int, ic: int, oc: int):
        super().__init__()
        nc = ic + oc
        self.reduce = nn.Sequential(conv(fc, oc, 1), relu(), conv(oc, oc, 1))
        self.transform = nn.Sequential(conv(nc, nc, 3), relu(), conv(nc, nc, 3), relu(), conv(nc, oc, 3), relu())

    def forward(self, ft: torch.Tensor, score: torch.Tensor, x: Optional[torch.Tensor] = None):
        h = self.reduce(ft)
        if score.shape[0] != h.shape[0]:
            if h.shape[0] != 1:
                raise ValueError(f"{score.shape[0]} score maps for {h.shape[0]} feature maps: features must have "
                                 "batch 1 (shared by every target) or the same batch as the scores")
            h = h.expand(score.shape[0], -1, -1, -1)  # several targets on one frame: reduce once, share
        hpool = _gap(h) if x is None else x
        h = torch.cat((h, interpolate(score, h.shape[-2:])), dim=1)
        h = self.transform(h)
        return h, hpool


class RRB(nn.Module):
    """Residual refinement block (with BatchNorm, ``use_bn=True``)."""

    def __init__(self, oc: int, use_bn: bool = True):
        super().__init__()
        self.conv1x1 = conv(oc, oc, 1)
        if use_bn:
            self.bblock = nn.Sequential(conv(oc, oc, 3), nn.BatchNorm2d(oc), relu(), conv(oc, oc, 3, bias=False))
        else:
            self.bblock = nn.Sequential(conv(oc, oc, 3), relu(), conv(oc, oc, 3, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1x1(x)
        return F.relu(h + self.bblock(h))


class CAB(nn.Module):
    """Channel attention block: gate the shallower map with pooled context, add the (resized) deeper map."""

    def __init__(self, oc: int, deepest: bool):
        super().__init__()
        self.convreluconv = nn.Sequential(conv(2 * oc, oc, 1), relu(), conv(oc, oc, 1))
        self.deepest = deepest

    def forward(self, deeper: torch.Tensor, shallower: torch.Tensor) -> torch.Tensor:
        shallow_pool = _gap(shallower)
        deeper_pool = deeper if self.deepest else _gap(deeper)
        g = self.convreluconv(torch.cat((shallow_pool, deeper_pool), dim=1))
        # at the deepest level `deeper` is 1x1: the bilinear resize is a broadcast (kept as the released code does)
        return shallower * torch.sigmoid(g) + interpolate(deeper, shallower.shape[-2:])


def _keys_cubic(x: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


class PyrUpBicubic2d(nn.Module):
    """Exact x2 bicubic upsampling (Keys, a = -0.75) as four depthwise 4x4 kernels with replicate padding.

    Pad 2 px (replicate), convolve with K_ee, K_eo, K_oe, K_oo (outer products of the tap vectors for source
    offsets d = -0.25 (even outputs) and d = -0.75 (odd outputs); vertical taps x horizontal taps), interleave
    into (2H+2, 2W+2), crop one pixel on every side: (2H, 2W).

    ``transposed=True`` computes the same with one depthwise transposed convolution (stride 2, 8x8 kernel: the four
    phase kernels interleaved), which writes the interleaved output directly: on channels-last maps on CPU it
    measured 9x faster than the four convolutions and their interleaving copy (64 x 120 x 214: 1.9 against 17.5 ms,
    2 threads), equal up to float rounding (its sums run in another order). S's fast path uses it.

    The kernels are plain attributes, cached per (device, dtype) and built at forward time: not buffers, so
    they are not in the state_dict (the released checkpoints have none). They are computed in float64 and cast;
    their values (dyadic rationals) are exact in float32.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        taps = torch.arange(-1, 3, dtype=torch.float64)
        w_e = _keys_cubic(-0.25 + taps)
        w_o = _keys_cubic(-0.75 + taps)
        # (4, 4, 4): K_ee, K_eo, K_oe, K_oo ; K[r, c] = w_vertical[r] * w_horizontal[c]
        self._base = torch.stack([torch.outer(w_e, w_e), torch.outer(w_e, w_o),
                                  torch.outer(w_o, w_e), torch.outer(w_o, w_o)])
        # The transposed convolution's 1-D taps: output 2i + r takes input i + a with weight w_r[a] at kernel index
        # r - 2a + 6 (so its output is shifted by 6 against the interleaved four-kernel result)
        w8 = torch.empty(8, dtype=torch.float64)
        for a in range(4):
            w8[6 - 2 * a], w8[7 - 2 * a] = w_e[a], w_o[a]
        self._base_transposed = torch.outer(w8, w8)
        self._cache: Dict[Tuple[torch.device, torch.dtype, int], Tuple[torch.Tensor, ...]] = {}
        self._cache_transposed: Dict[Tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def kernels(self, device, dtype, channels: Optional[int] = None) -> Tuple[torch.Tensor, ...]:
        """The four depthwise weights (channels, 1, 4, 4): K_ee, K_eo, K_oe, K_oo."""
        channels = self.channels if channels is None else channels
        key = (torch.device(device), dtype, channels)
        ws = self._cache.get(key)
        if ws is None:
            base = self._base.to(dtype=dtype, device=device)
            ws = tuple(base[k].expand(channels, 1, 4, 4).contiguous() for k in range(4))
            self._cache[key] = ws
        return ws

    def transposed_kernel(self, device, dtype, channels: int) -> torch.Tensor:
        """The depthwise (channels, 1, 8, 8) weight of the transposed-convolution form."""
        key = (torch.device(device), dtype, channels)
        k = self._cache_transposed.get(key)
        if k is None:
            k = self._base_transposed.to(dtype=dtype, device=device).expand(channels, 1, 8, 8).contiguous()
            self._cache_transposed[key] = k
        return k

    def forward(self, x: torch.Tensor, any_channels: bool = False, transposed: bool = False) -> torch.Tensor:
        """``any_channels``: upsample however many channels ``x`` has (the same per-channel operator).
        ``transposed``: the transposed-convolution form (see the class docstring)."""
        n, c, h, w = x.shape
        if c != self.channels and not any_channels:
            raise ValueError(f"PyrUpBicubic2d({self.channels}) got {c} channels")
        if transposed:
            # at least float32, and channels-last, whatever the input: only so is the depthwise transposed convolution
            # fast on CPU (in bfloat16, under autocast or not, it measured 60 ms against 2 ms for the same map)
            work = torch.float64 if x.dtype == torch.float64 else torch.float32
            with torch.autocast(x.device.type, enabled=False):
                xp = F.pad(x.to(work).contiguous(memory_format=torch.channels_last), (2, 2, 2, 2), mode="replicate")
                # padding=7 crops the 7 extra outputs on each side inside the op: the result is dense, no copy
                y = F.conv_transpose2d(xp, self.transposed_kernel(x.device, work, c), stride=2, padding=7, groups=c)
            return y.to(x.dtype)
        xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
        # four depthwise convs (measured faster on CPU than one conv with a channel multiplier of 4)
        ys = [F.conv2d(xp, k, groups=c) for k in self.kernels(x.device, x.dtype, c)]  # each (n, c, h+1, w+1)
        y = torch.stack(ys, dim=2).view(n, c, 2, 2, h + 1, w + 1)  # (.., row parity, col parity, i, j)
        y = y.permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h + 2, 2 * w + 2)  # out[2i+r, 2j+s] = I_rs[i, j]
        return y[:, :, 1:-1, 1:-1]

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class BackwardCompatibleUpsampler(nn.Module):
    """up1 (x2 pyramid) -> conv1 3x3 + ReLU -> up2 (x2 pyramid) -> bilinear to the image size -> conv2 3x3 -> 1."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.up1 = PyrUpBicubic2d(in_channels)
        self.conv1 = conv(in_channels, in_channels // 2, 3)
        self.up2 = PyrUpBicubic2d(in_channels // 2)
        self.conv2 = conv(in_channels // 2, 1, 3)

    def forward(self, x: torch.Tensor, image_size, reordered: bool = True) -> torch.Tensor:
        """``reordered=True`` computes the same logits with the last, full-resolution steps reordered: conv2 (3x3,
        C -> 1) after two linear per-channel resamplings (up2, bilinear) equals the sum of 9 shifted resampled maps,
        one per kernel tap, of the taps' channel mixes taken at the low resolution (zero padding included). So 9
        maps are upsampled instead of C (32 for the released width) and no C-channel conv runs at image size:
        measured 190 -> ~90 ms per object at 854x480 on 2 CPU cores. Equal up to float rounding (tested)."""
        x = self.up1(x, transposed=reordered)
        x = F.relu(self.conv1(x))
        if not reordered:
            x = self.up2(x)
            x = interpolate(x, image_size)
            return self.conv2(x)
        w = self.conv2.weight  # (1, C, 3, 3)
        taps = F.conv2d(x, w[0].permute(1, 2, 0).reshape(9, -1, 1, 1))  # (N, 9, h, w): tap (u, v) at 3u + v
        taps = interpolate(self.up2(taps, any_channels=True, transposed=True), image_size)
        H, W = taps.shape[-2:]
        padded = F.pad(taps, (1, 1, 1, 1))
        out = self.conv2.bias.view(1, 1, 1, 1).expand(taps.shape[0], 1, H, W).clone() if self.conv2.bias is not None \
            else taps.new_zeros(taps.shape[0], 1, H, W)
        for u in range(3):
            for v in range(3):
                out += padded[:, 3 * u + v: 3 * u + v + 1, u:u + H, v:v + W]
        return out


# ---------------------------------------------------------------------------------------------------------------
# the network

class SegNetwork(nn.Module):
    """S: coarse target scores + backbone features -> logits at image resolution.

    ``ft_channels``: FRTM key -> channels, **deep to shallow** (released: layer5, layer4, layer3, layer2); the
    iteration order is the dict's order and the first entry is the deepest level. Widths follow the backbone
    (ResNet-101 2048/1024/512/256, ResNet-18 512/256/128/64, MobileNetV2 1280/96/32/24).
    """

    def __init__(self, ft_channels: Mapping[str, int], in_channels: int = 1, out_channels: int = 64,
                 use_bn: bool = True):
        super().__init__()
        if not ft_channels:
            raise ValueError("ft_channels is empty")
        self.ft_channels: Dict[str, int] = {str(k): int(v) for k, v in ft_channels.items()}
        self.in_channels = in_channels
        self.out_channels = out_channels
        deepest = next(iter(self.ft_channels))
        oc, ic = out_channels, in_channels
        # Registration order TSE, RRB1, CAB, RRB2, project and level order deep->shallow = the released key order.
        self.TSE = nn.ModuleDict()
        self.RRB1 = nn.ModuleDict()
        self.CAB = nn.ModuleDict()
        self.RRB2 = nn.ModuleDict()
        for L, fc in self.ft_channels.items():
            self.TSE[L] = TSE(fc, ic, oc)
            self.RRB1[L] = RRB(oc, use_bn=use_bn)
            self.CAB[L] = CAB(oc, deepest=(L == deepest))
            self.RRB2[L] = RRB(oc, use_bn=use_bn)
        self.project = BackwardCompatibleUpsampler(out_channels)

    @property
    def seg_layers(self) -> Tuple[str, ...]:
        return tuple(self.ft_channels)

    def forward(self, scores: torch.Tensor, features: Mapping[str, torch.Tensor], image_size,
                reordered: bool = True) -> torch.Tensor:
        """``scores`` (N,1,h,w) from D; ``features`` by FRTM key with batch N, or batch 1 shared by N targets;
        ``image_size`` (H, W) (or any shape/sequence whose last two entries are H, W). Returns (N,1,H,W) logits.
        ``reordered``: the upsampler's full-resolution steps in the cheaper, equal order (``False``: as released)."""
        x = None
        for L in self.ft_channels:
            ft = features[L]
            s = interpolate(scores, ft.shape[-2:])
            h, hpool = self.TSE[L](ft, s, x)
            h = self.RRB1[L](h)
            h = self.CAB[L](hpool, h)
            x = self.RRB2[L](h)
        return self.project(x, image_size, reordered=reordered)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

def _levels_in_order(sd: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> list:
    levels = []
    for k in sd:
        parts = k.split(".")
        if len(parts) > 2 and parts[0] == "TSE" and parts[1] not in levels:
            levels.append(parts[1])
    order = meta.get("seg_layers")
    if order is not None:
        order = [str(L) for L in order]
        if sorted(order) != sorted(levels):
            raise ValueError(f"meta seg_layers {order} do not match the levels in the weights {levels}")
        return order
    if set(levels) == {"layer5", "layer4", "layer3", "layer2"}:
        return ["layer5", "layer4", "layer3", "layer2"]
    return levels


def segnet_from_state_dict(sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, Any]] = None,
                           source: str = "<state dict>") -> Tuple[SegNetwork, Dict[str, Any]]:
    """Build S from a state dict WITHOUT the 'refiner.' prefix and load it strictly.

    Missing ``num_batches_tracked`` entries (files saved by PyTorch < 0.4.1 have none) are filled with 0 before
    the strict load; they are unused in eval mode. Any other missing or unexpected key, or a shape mismatch, is
    a ValueError naming ``source``.
    """
    meta = dict(meta or {})
    if _WIDTH_KEY not in sd:
        raise ValueError(f"{source}: no '{CHECKPOINT_PREFIX}{_WIDTH_KEY}' entry; not an FRTM segmentation network")
    levels = _levels_in_order(sd, meta)
    try:
        ft_channels = {L: int(sd[f"TSE.{L}.reduce.0.weight"].shape[1]) for L in levels}
        out_channels = int(sd[f"TSE.{levels[0]}.reduce.0.weight"].shape[0])
        in_channels = int(sd[f"TSE.{levels[0]}.transform.0.weight"].shape[1]) - out_channels
    except KeyError as e:
        raise ValueError(f"{source}: missing key {CHECKPOINT_PREFIX}{e.args[0]}") from None

    width = int(sd[_WIDTH_KEY].shape[1])
    inferred = BACKBONE_BY_WIDTH.get(width)
    meta_backbone = meta.get("backbone")
    if meta_backbone is not None and inferred is not None and meta_backbone != inferred:
        raise ValueError(f"{source}: meta says backbone {meta_backbone!r} but the layer4 width {width} is that of "
                         f"{inferred!r}")
    backbone = meta_backbone or inferred
    if backbone is None:
        raise ValueError(f"{source}: cannot tell the backbone: layer4 width {width} is neither 1024 (resnet101) nor "
                         "256 (resnet18), and the file has no meta['backbone']")

    net = SegNetwork(ft_channels, in_channels=in_channels, out_channels=out_channels)
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    filled = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    problems = []
    if missing:
        problems.append(f"missing keys {[CHECKPOINT_PREFIX + k for k in missing]}")
    if unexpected:
        problems.append(f"unexpected keys {[CHECKPOINT_PREFIX + k for k in unexpected]}")
    for k, v in expected.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            problems.append(f"shape mismatch for {CHECKPOINT_PREFIX}{k}: file {tuple(sd[k].shape)}, "
                            f"model {tuple(v.shape)}")
    if problems:
        raise ValueError(f"{source}: not a valid FRTM segmentation network for {backbone} "
                         f"(ft_channels {ft_channels}): " + "; ".join(problems))
    full = dict(sd)
    for k in filled:
        full[k] = torch.zeros((), dtype=torch.long)
    net.load_state_dict(full, strict=True)
    net.eval()
    info = {
        "backbone": backbone,
        "target_layer": meta.get("target_layer", "layer4"),
        "ft_channels": dict(ft_channels),
        "in_channels": in_channels,
        "out_channels": out_channels,
        "num_params": sum(p.numel() for p in net.parameters()),
        "filled_num_batches_tracked": len(filled),
        "meta": meta,
        "source": source,
    }
    return net, info


def _unpickling_reason(e: Exception) -> str:
    """What torch's weights-only loader objected to, without its advice to load the file unsafely (never advise that
    for a file from an unknown source)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:"):
            return ln[len("WeightsUnpickler error:"):].strip().split(". ")[0]
    safe = [ln for ln in lines if "weights_only" not in ln and "safe_globals" not in ln and "trusted" not in ln]
    return (safe[0] if safe else "unsupported content").rstrip(".")


def load_segnet_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> Tuple[SegNetwork, Dict[str, Any]]:
    """Load a released FRTM checkpoint (or one of ours) strictly.

    The file must be ``{'model': {'refiner.<key>': tensor, ...}, ...}`` (other top-level entries such as
    'epoch', 'optimizer' or our 'meta' are allowed). The backbone is inferred from
    ``refiner.TSE.layer4.reduce.0.weight.shape[1]`` (1024: resnet101, 256: resnet18), else from
    ``ckpt['meta']['backbone']``. Read with ``torch.load(..., weights_only=True)``.

    Returns ``(segnet, info)``; the network is in eval mode. ``info`` holds 'backbone', 'target_layer',
    'ft_channels', 'in_channels', 'out_channels', 'num_params', 'filled_num_batches_tracked', 'meta', 'path'
    and the other top-level entries' names ('extra_entries').
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused: it holds Python objects, not only tensors and plain containers "
                         f"({_unpickling_reason(e)}). Nothing in it was run. Use a checkpoint saved as tensors "
                         "(the released FRTM files are), or re-save one you trust as `{'model': state_dict}`") \
            from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'truncated file?'})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], Mapping):
        kind = type(ckpt).__name__ if not isinstance(ckpt, dict) else f"dict with keys {sorted(map(str, ckpt))[:8]}"
        raise ValueError(f"{path}: expected a dict with a 'model' state dict (the released FRTM format), got {kind}")
    model = ckpt["model"]
    foreign = [k for k in model if not (isinstance(k, str) and k.startswith(CHECKPOINT_PREFIX))]
    if foreign:
        raise ValueError(f"{path}: {len(foreign)} key(s) of 'model' do not start with {CHECKPOINT_PREFIX!r}, "
                         f"e.g. {foreign[:5]}")
    not_tensor = [k for k, v in model.items() if not torch.is_tensor(v)]
    if not_tensor:
        raise ValueError(f"{path}: non-tensor entries in 'model': {not_tensor[:5]}")
    meta = ckpt.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise ValueError(f"{path}: 'meta' must be a dict, got {type(meta).__name__}")
    sd = {k[len(CHECKPOINT_PREFIX):]: v for k, v in model.items()}
    net, info = segnet_from_state_dict(sd, meta, source=str(path))
    info["path"] = str(path)
    info["extra_entries"] = sorted(str(k) for k in ckpt if k not in ("model", "meta"))
    return net, info


def save_segnet_checkpoint(path: Union[str, os.PathLike], segnet: SegNetwork, meta: Mapping[str, Any]) -> Path:
    """Write ``{'model': {'refiner.<key>': tensor}, 'meta': meta}`` (loadable by the released code's strict load,
    and by :func:`load_segnet_checkpoint`). ``meta`` should carry 'backbone' and 'target_layer'; 'seg_layers'
    (the level order) is added when absent. The write is atomic (temporary file + rename)."""
    path = Path(path)
    meta = dict(meta)
    meta.setdefault("seg_layers", list(segnet.ft_channels))
    sd = {CHECKPOINT_PREFIX + k: v.detach().cpu() for k, v in segnet.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": sd, "meta": meta}, tmp)
    os.replace(tmp, path)
    return path
