"""The PEP 517 build backend of the portres Python package, in-tree.

Owns turning ``src/portres`` into a wheel (and an sdist, and a PEP 660
editable wheel) with the standard library alone. Why not setuptools, flit_core
or hatchling: pip would have to download them into its isolated build
environment, and ``pip install ./clients/python`` must work offline. The
package is a handful of pure-Python files, so a wheel is a zip of them plus
the ``.dist-info`` files the wheel spec (PEP 427, PEP 376 RECORD) requires.

The metadata lives here (one place); the version is read from
``src/portres/__init__.py`` (``__version__``), which the Rust test suite
checks against the workspace's version.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
NAME = "portres"
SUMMARY = (
    "Client for portres, the Linux port reservation daemon: kernel-guaranteed "
    "ports, and a pytest plugin"
)
REQUIRES_PYTHON = ">=3.9"
LICENSE = "MIT OR Apache-2.0"
# No console script: `portres` is the Rust CLI's name; `python -m portres`
# prints the daemon's status instead.
ENTRY_POINTS = "[pytest11]\nportres = portres.pytest_plugin\n"
CLASSIFIERS = [
    "Framework :: Pytest",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3",
    "Typing :: Typed",
]
# A fixed timestamp keeps wheels byte-for-byte reproducible.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _version() -> str:
    text = (ROOT / "src" / NAME / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if m is None:
        raise RuntimeError("src/portres/__init__.py has no __version__ line")
    return m.group(1)


def _metadata() -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {NAME}",
        f"Version: {_version()}",
        f"Summary: {SUMMARY}",
        f"License: {LICENSE}",
        f"Requires-Python: {REQUIRES_PYTHON}",
    ]
    lines += [f"Classifier: {c}" for c in CLASSIFIERS]
    lines.append("Description-Content-Type: text/markdown")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return "\n".join(lines) + "\n\n" + readme


def _package_files() -> List[Tuple[str, bytes]]:
    """(path inside the wheel, content) of every file of the package."""
    out = []
    pkg = ROOT / "src" / NAME
    for path in sorted(pkg.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        out.append((path.relative_to(ROOT / "src").as_posix(), path.read_bytes()))
    return out


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"{name},sha256={digest.decode()},{len(data)}"


def _write_wheel(directory: str, files: List[Tuple[str, bytes]]) -> str:
    version = _version()
    dist_info = f"{NAME}-{version}.dist-info"
    files = files + [
        (f"{dist_info}/METADATA", _metadata().encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: portres_build\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (f"{dist_info}/entry_points.txt", ENTRY_POINTS.encode()),
        (f"{dist_info}/top_level.txt", f"{NAME}\n".encode()),
    ]
    record_name = f"{dist_info}/RECORD"
    record = "".join(_record_line(n, d) + "\n" for n, d in files) + f"{record_name},,\n"
    files.append((record_name, record.encode()))
    wheel_name = f"{NAME}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, wheel_name), "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return wheel_name


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Dict[str, object]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    """PEP 517: a wheel of the package."""
    return _write_wheel(wheel_directory, _package_files())


def build_editable(
    wheel_directory: str,
    config_settings: Optional[Dict[str, object]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    """PEP 660: a wheel whose .pth file puts this source tree's src/ on sys.path."""
    pth = (str(ROOT / "src") + "\n").encode()
    return _write_wheel(wheel_directory, [(f"__editable__.{NAME}.pth", pth)])


def build_sdist(
    sdist_directory: str, config_settings: Optional[Dict[str, object]] = None
) -> str:
    """PEP 517: a source archive that builds with this same backend."""
    base = f"{NAME}-{_version()}"
    name = f"{base}.tar.gz"
    members = ["pyproject.toml", "README.md", "build_backend/portres_build.py"]
    members += [f"src/{n}" for n, _ in _package_files()]
    members += sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tests").glob("*.py")
    )
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:

        def add(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{base}/{arcname}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
            tar.addfile(info, io.BytesIO(data))

        add("PKG-INFO", _metadata().encode())
        for m in members:
            add(m, (ROOT / m).read_bytes())
    return name
