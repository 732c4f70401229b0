"""Inference-only rewrites of the frozen networks that keep their outputs (up to float rounding; tested):
BatchNorm folded into the convolution before it, and channels-last memory for the backbone's convolutions.

The tracker applies them to its own copies (``TrackerConfig.fast``); the modules a caller passed in stay as they
were. Measured on 2 CPU cores at 854x480 (MobileNetV2): backbone 0.22 s -> 0.16 s folded -> 0.075 s folded and
channels-last; S 0.16 -> 0.14 s per object (bench/e2e.py has the end-to-end numbers).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """In place: every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in a ``Sequential`` is folded
    into that convolution's weight and bias and replaced by ``Identity`` (indices, and so names, are kept)."""
    for child in module.children():
        if isinstance(child, nn.Sequential):
            for i in range(len(child) - 1):
                conv, bn = child[i], child[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                    child[i] = fuse_conv_bn_eval(conv, bn)
                    child[i + 1] = nn.Identity()
        fold_batchnorm(child)
    return module


def fast_backbone(backbone: nn.Module) -> nn.Module:
    """A copy of a frozen backbone with BatchNorm folded and channels-last weights (its inputs, RGB frames
    permuted from HWC, are channels-last already)."""
    fast = fold_batchnorm(copy.deepcopy(backbone).eval())
    return fast.to(memory_format=torch.channels_last)


def fast_segnet(segnet: nn.Module) -> nn.Module:
    """A copy of S with BatchNorm folded and channels-last weights (fed the backbone's channels-last features:
    measured 0.16 -> 0.14 s per object at 854x480 with the reordered upsampler)."""
    return fold_batchnorm(copy.deepcopy(segnet).eval()).to(memory_format=torch.channels_last)
