"""Shared fixtures. Real data lives in ../shared/data beside the checkout (CI has it; a user's machine may not)."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# FiftyOne reads its configuration when first imported: point it at a throwaway database and a plugins folder
# holding this repository (the plugin directory) before any test imports it.
_FO_TMP = Path(tempfile.mkdtemp(prefix="frtm-fiftyone-"))
(_FO_TMP / "plugins").mkdir()
(_FO_TMP / "plugins" / "frtm-vos").symlink_to(ROOT, target_is_directory=True)
os.environ.update(
    FIFTYONE_DATABASE_DIR=str(_FO_TMP / "db"),
    FIFTYONE_PLUGINS_DIR=str(_FO_TMP / "plugins"),
    FIFTYONE_DATABASE_VALIDATION="false",
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DEFAULT_DATASET_DIR=str(_FO_TMP / "datasets"),
)
FIFTYONE_TMP = _FO_TMP


def pytest_sessionfinish(session, exitstatus):
    # The database outlives the session by a moment (it stops when this process exits): remove its folder from a
    # detached watcher once this process is gone, not under the running database's feet.
    subprocess.Popen(["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; sleep 5; "
                      f"rm -rf '{_FO_TMP}'"], start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
SHARED_DATA = Path(os.environ.get("FRTM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set FRTM_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """DAVIS-2016 train at 480p: JPEGImages/480p/<seq>, Annotations/480p/<seq> (masks 0/255, one object)."""
    return _need(SHARED_DATA / "davis2016-train-480p")


@pytest.fixture(scope="session")
def judo_root() -> Path:
    """16 frames, objects 1..4 enter on frames 0, 5, 8, 13; Annotations/00005.png is one column narrow."""
    return _need(SHARED_DATA / "judo-sparse")


@pytest.fixture(scope="session")
def video_dataset():
    """``make(name, path)`` -> a new dataset (not persistent) holding the one video at ``path``, replacing a dataset
    of that name left by an earlier run."""
    import fiftyone as fo

    def make(name: str, path) -> "fo.Dataset":
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        ds = fo.Dataset(name)
        ds.add_sample(fo.Sample(filepath=str(path)))
        return ds

    return make


@pytest.fixture(scope="session")
def demo_clip(tmp_path_factory):
    """``make(n)`` -> (H.264 MP4 of the shipped demo clip's first n frames, their object-1 masks as bool arrays);
    each length is encoded once per session."""
    from frtm_plugin.io.davis import load_sequence
    from frtm_plugin.io.labels import read_label_png
    from frtm_plugin.io.video import write_video

    seq = load_sequence(ROOT / "data" / "demo", "rollerblade")
    made = {}

    def make(n: int):
        if n not in made:
            path = tmp_path_factory.mktemp("demo-clip") / "rollerblade.mp4"
            write_video(path, [seq.read_frame(i) for i in range(n)])
            made[n] = path, [read_label_png(seq.annotation_paths[i]) == 1 for i in range(n)]
        return made[n]

    return make


@pytest.fixture(scope="session")
def long_video() -> Path:
    return _need(SHARED_DATA / "videos" / "vtest.avi")
