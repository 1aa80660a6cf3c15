"""The package as a user installs it (issue 19, part 3): ``pyproject.toml`` builds a wheel named
``keras-medzoo`` that carries no bundled ``.npz`` weights; installed without dependencies into a
fresh folder (the TensorFlow of this environment serves it), ``zoo list`` runs from it, and
weights resolve from ``$ZOO_WEIGHTS_DIR``.

The wheel is built from a copy of the repository in which the ``.npz`` files are symbolic links
to the real ones (cheap, and a wheel that took them would carry them), with this environment's
setuptools (``--no-build-isolation``: no download)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COPIED = ("pyproject.toml", "README.md", "LICENSE", "zoo", "cards", "training", "weights")
pytestmark = pytest.mark.slow


def _setuptools_ok() -> bool:
    try:
        import setuptools
        import wheel  # noqa: F401 - bdist_wheel of older setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 64


def _copy(src: str, dst: str) -> None:
    if src.endswith(".npz"):
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel path, target folder): the wheel built from the repository, installed with
    ``pip install --no-deps --target``."""
    if not _setuptools_ok():
        pytest.skip("needs setuptools >= 64 and wheel (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in COPIED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore, copy_function=_copy)
        else:
            shutil.copy2(REPO / name, src / name)
    assert list(src.glob("weights/*/*/*.npz")), "the copy should hold the bundled weights"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
                    str(src)], check=True, capture_output=True, text=True, timeout=600)
    (whl,) = (root / "dist").glob("*.whl")
    target = root / "target"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(whl)],
                   check=True, capture_output=True, text=True, timeout=600)
    return whl, target


def run_installed(target: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "PYTHONPATH"))}
    environ.update(PYTHONPATH=str(target), ZOO_HOME=str(cwd / "zoo_home"), **env)
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd, env=environ)


def test_wheel_is_named_and_holds_no_weights(installed):
    whl, _ = installed
    assert whl.name.startswith("keras_medzoo-")
    names = zipfile.ZipFile(whl).namelist()
    assert not [n for n in names if n.endswith(".npz")]
    assert "zoo/cards/wmh_ensemble.yaml" in names and "zoo/training/recipe_schema.json" in names
    assert "zoo/bundled_weights/__init__.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(whl).read(meta).decode()
    assert "Name: keras-medzoo" in text and "Requires-Dist: onnxruntime" in text
    entry_points = zipfile.ZipFile(whl).read(meta.replace("METADATA", "entry_points.txt")).decode()
    assert "zoo = zoo.cli:main" in entry_points
    assert whl.stat().st_size < 5 * 2**20  # cards, code, recipes: no weights


def test_installed_wheel_runs_zoo_list_and_finds_weights_dir(installed, tmp_path):
    _, target = installed
    code = "import zoo, zoo.cards; print(zoo.__file__); print(zoo.cards.__file__)"
    where = run_installed(target, [sys.executable, "-c", code], tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(target) for p in where.stdout.split()), where.stdout

    proc = run_installed(target, [str(target / "bin" / "zoo"), "list"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    wmh = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["wmh_ensemble"])
    assert "flair: missing" in wmh  # no bundled weights in a wheel, no URL in the card yet
    assert "error" not in (proc.stdout + proc.stderr).lower()

    proc = run_installed(target, [str(target / "bin" / "zoo"), "list"], tmp_path,
                         ZOO_WEIGHTS_DIR=str(REPO / "weights"))
    wmh = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["wmh_ensemble"])
    assert "flair: ZOO_WEIGHTS_DIR" in wmh, proc.stdout

    code = ("from zoo import registry, weights; c = registry.card('wmh_ensemble'); "
            "print(*weights.resolve(c.variant('flair')['weights'], 'wmh_ensemble', 'flair'))")
    proc = run_installed(target, [sys.executable, "-c", code], tmp_path, ZOO_WEIGHTS_DIR=str(REPO / "weights"))
    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in proc.stdout.split()]
    assert len(paths) == 3 and all(p.is_relative_to(REPO / "weights" / "wmh_ensemble" / "flair") for p in paths)
