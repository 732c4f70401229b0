"""Numerical primitives of the target model's solver, on the feature grid.

Today these are the pure-PyTorch definitions in :mod:`.lowres`; the compiled extension (``frtm_plugin._C``) will
provide the same functions, and this module is where the choice between them is made.
"""

from .lowres import conv3x3_flat, corr3x3_flat, interp_matrix, stencil_apply, stencil_precompute, upsample

__all__ = ["conv3x3_flat", "corr3x3_flat", "interp_matrix", "stencil_apply", "stencil_precompute", "upsample"]
