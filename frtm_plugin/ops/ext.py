"""Loading the compiled extension (``frtm_plugin._C``, ``frtm_plugin._C_cuda``) and its fake kernels.

Importing this module never compiles anything: it imports the modules ``setup.py`` built, if they exist, and
records why not otherwise. The fake (meta) kernels below give every ``torch.ops.frtm`` op its output shapes, so
``torch.compile`` traces through the ops and ``torch.library.opcheck`` can check them.
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["CPU_AVAILABLE", "CPU_ERROR", "CUDA_AVAILABLE", "CUDA_ERROR", "OPS"]

# The ops of the ``frtm`` namespace (schemas in csrc/frtm_ops.cpp).
OPS = ("stencil_precompute", "stencil_apply", "conv3x3_flat", "corr3x3_flat", "normal_corr", "init_products",
       "init_solve", "update_solve")


def _import(name: str) -> str | None:
    """Import ``frtm_plugin.<name>``; the reason it failed, or None."""
    try:
        importlib.import_module(f"frtm_plugin.{name}")
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        return f"{type(exc).__name__}: {exc}"
    return None


CPU_ERROR = _import("_C")
CPU_AVAILABLE = CPU_ERROR is None
# The CUDA kernels live in their own module: a CPU-only torch cannot load CUDA code, and the CPU module must
# still work there.
CUDA_ERROR = _import("_C_cuda") if CPU_AVAILABLE else "the CPU module frtm_plugin._C is not available"
CUDA_AVAILABLE = CUDA_ERROR is None


def _register_fakes() -> None:
    reg = torch.library.register_fake

    @reg("frtm::stencil_precompute")
    def _(labels, pixel_weights, hf, wf):
        k = labels.shape[0]
        return labels.new_empty(k, 9, hf, wf), labels.new_empty(k, hf, wf)

    @reg("frtm::stencil_apply")
    def _(g, s):
        return s.new_empty(s.shape)

    @reg("frtm::conv3x3_flat")
    def _(x, kernel):
        return x.new_empty(x.shape[1:])

    @reg("frtm::corr3x3_flat")
    def _(x, t):
        return x.new_empty(x.shape[0], 9)

    @reg("frtm::normal_corr")
    def _(x, kernel, g, sample_weights, target):
        return x.new_empty(x.shape[0], 9)

    @reg("frtm::init_products")
    def _(x, g, sample_weights, w1, w2, p1, p2, reg1, reg2):
        return p1.new_empty(p1.shape), p2.new_empty(p2.shape)

    @reg("frtm::init_solve")
    def _(x, g, target, sample_weights, w1, w2, reg1, reg2, precond1, precond2, cg_iters):
        return w1.new_empty(w1.shape), w2.new_empty(w2.shape)

    @reg("frtm::update_solve")
    def _(x, g, target, sample_weights, w2, reg2, precond2, cg_iters):
        return w2.new_empty(w2.shape)


if CPU_AVAILABLE:
    _register_fakes()
