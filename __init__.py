"""FiftyOne plugin entry point (this repository is the plugin directory): the operators live in
``frtm_plugin.fo.operators``, a library that also works from plain Python."""

import os
import sys

try:
    import frtm_plugin  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # the plugin directory itself holds the package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from frtm_plugin.fo.operators import register  # noqa: E402,F401


# -- FiftyOne model zoo source (manifest.json beside this file): foz.register_zoo_model_source(<this repository>),
# then foz.load_zoo_model("frtm-vos-default"). The weights ship inside the package: "downloading" copies them.
def download_model(model_name, model_path):
    import shutil

    from frtm_plugin.models import zoo_checkpoint

    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    shutil.copyfile(zoo_checkpoint(model_name), model_path)


def load_model(model_name, model_path, **kwargs):
    from frtm_plugin.fo.model import load_model as _load

    return _load(model_path, **kwargs)
