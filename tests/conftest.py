"""Shared fixtures. Real scans come from ``../shared/data`` (or ``$ZOO_SHARED_DATA``); tests
that need them are marked ``realdata`` and skip with a reason when the folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ZOO_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-scan folder; skips the test when it is absent (e.g. a user's fresh clone)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real scans not found at {SHARED_DATA} (set ZOO_SHARED_DATA to run this test)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_zoo_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty weights cache so nothing leaks between tests."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.mktemp("zoo_home")))
