"""Shared fixtures. Reference geometry tables live in ../shared/geometry (tests only)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_GEOMETRY = REPO.parent / "shared" / "geometry"

os.environ.setdefault("XEC_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def reference_geometry() -> Path:
    if not (SHARED_GEOMETRY / "sensor_positions.txt").exists():
        pytest.skip(f"reference geometry tables not found at {SHARED_GEOMETRY}")
    return SHARED_GEOMETRY


@pytest.fixture
def restore_logging():
    """Undo the handlers that a CLI call's setup_logging installs on the root logger."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:], root.level = handlers, level
