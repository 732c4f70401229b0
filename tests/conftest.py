"""Shared fixtures. Real data lives in ../shared/data beside the checkout (CI has it; a user's machine may not)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
def long_video() -> Path:
    return _need(SHARED_DATA / "videos" / "vtest.avi")
