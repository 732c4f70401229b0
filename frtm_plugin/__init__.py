"""FRTM video object segmentation (Robinson, Lawin et al., CVPR 2020), as a library and a FiftyOne plugin.

Layers, one way only:
    frtm_plugin.ops     feature-resolution maths of the target model's loss (and its autograd reference)
    frtm_plugin.core    backbones, target model D + solver, memory, augmentation, segmentation network S, tracker
    frtm_plugin.io      video decoding, DAVIS folders, palette PNGs
    frtm_plugin.metrics DAVIS J / F exactly as the official toolkit computes them
    frtm_plugin.cli     ``python -m frtm_plugin``
Nothing here downloads anything, at import or otherwise, unless explicitly asked to.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # The FiftyOne SDK is imported only when asked for: the core library does not need FiftyOne.
    if name in ("propagate", "evaluate", "compute_davis", "run_config", "show_heatmap"):
        from .fo import sdk

        return getattr(sdk, name)
    if name in ("load_model", "FRTMVideoModel"):
        from .fo import model

        return getattr(model, name)
    if name in ("import_davis", "export_davis"):
        from .fo import dataio

        return getattr(dataio, name)
    raise AttributeError(f"module 'frtm_plugin' has no attribute {name!r}")
