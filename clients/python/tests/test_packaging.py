"""The in-tree build backend: the wheel holds every module, ``py.typed`` and
the ``pytest11`` entry point, with a RECORD that matches; the editable wheel
points at ``src``; the sdist builds again. No network, no build tools."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import portres

ROOT = Path(__file__).resolve().parents[1]


def backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "portres_build", ROOT / "build_backend" / "portres_build.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_wheel_holds_the_package_and_its_metadata(tmp_path: Path) -> None:
    name = backend().build_wheel(str(tmp_path))
    assert name == f"portres-{portres.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(tmp_path / name) as z:
        names = set(z.namelist())
        modules = {p.name for p in (ROOT / "src" / "portres").glob("*.py")}
        assert {f"portres/{m}" for m in modules} | {"portres/py.typed"} <= names
        assert not any("__pycache__" in n for n in names)
        info = f"portres-{portres.__version__}.dist-info"
        meta = z.read(f"{info}/METADATA").decode()
        assert f"Version: {portres.__version__}\n" in meta
        assert "Requires-Python: >=3.9\n" in meta and "Requires-Dist" not in meta
        assert z.read(f"{info}/entry_points.txt").decode() == (
            "[pytest11]\nportres = portres.pytest_plugin\n"
        )
        for line in z.read(f"{info}/RECORD").decode().splitlines():
            path, digest, size = line.split(",")
            if path == f"{info}/RECORD":
                continue
            data = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == f"sha256={want.decode()}" and int(size) == len(data), path
    # Reproducible.
    again = tmp_path / "again"
    again.mkdir()
    backend().build_wheel(str(again))
    assert (again / name).read_bytes() == (tmp_path / name).read_bytes()


def test_the_editable_wheel_points_at_src(tmp_path: Path) -> None:
    name = backend().build_editable(str(tmp_path))
    with zipfile.ZipFile(tmp_path / name) as z:
        assert z.read("__editable__.portres.pth").decode().strip() == str(ROOT / "src")


def test_the_sdist_builds_a_wheel_again(tmp_path: Path) -> None:
    name = backend().build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as t:
        # filter="data" where tarfile has it (3.12+ warns without one).
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        t.extractall(tmp_path / "x", **extra)  # type: ignore[arg-type]
    root = tmp_path / "x" / f"portres-{portres.__version__}"
    assert (root / "PKG-INFO").exists() and (root / "src" / "portres" / "py.typed").exists()
    sys.path.insert(0, str(root / "build_backend"))
    try:
        spec = importlib.util.spec_from_file_location(
            "portres_build_sdist", root / "build_backend" / "portres_build.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out = tmp_path / "wheel"
        out.mkdir()
        assert mod.build_wheel(str(out)).endswith(".whl")
    finally:
        sys.path.remove(str(root / "build_backend"))
