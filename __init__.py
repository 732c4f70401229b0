"""FiftyOne plugin entry point (this repository is the plugin directory): the operators live in
``frtm_plugin.fo.operators``, a library that also works from plain Python."""

import os
import sys

try:
    import frtm_plugin  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # the plugin directory itself holds the package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from frtm_plugin.fo.operators import register  # noqa: E402,F401
