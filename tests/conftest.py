"""Shared fixtures. The one reference outside the repository: the optional MEG II reference geometry
tables in ../shared/geometry, compared with xec.geometry when present (skipped when absent)."""

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
    if not all((SHARED_GEOMETRY / f).is_file() for f in ("sensor_positions.txt", "sensor_directions.txt")):
        pytest.skip(f"reference geometry tables not found at {SHARED_GEOMETRY}")
    return SHARED_GEOMETRY


@pytest.fixture(autouse=True)
def _close_log_files():
    """Close the log files that a CLI call's setup_logging opened during the test: its tmp_path is
    deleted after a passing test, and a root-logger FileHandler left pointing there fails the
    next test that logs (seen with `make test-fast`, whose order lacks the slow tests' own
    setup_logging calls that used to replace it)."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler) and h not in before]:
        root.removeHandler(h)
        h.close()


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
