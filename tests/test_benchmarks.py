"""The benchmark scripts stay runnable: the GPU script parses, and the Python ones import and
show their options (their numbers are measured by hand: docs/performance.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_parses():
    r = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "script",
    [
        "model.py",
        "inference.py",
        "refit.py",
        "sigma_heads.py",
        "normalization.py",
        "precision.py",
        "metrics.py",
        "angle_floor.py",
    ],
)
def test_benchmark_scripts_import(script):
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout


def test_model_benchmark_preset_overrides():
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import model; "
        "print(model.model_section('tiny:physics_aggregates=false,head_hidden=32'))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "{'preset': 'tiny', 'physics_aggregates': False, 'head_hidden': 32}"


def test_refit_benchmark_runs_both_precisions():
    """The alternating runs (benchmarks/ab_runs.py) in spawned processes, one row per precision."""
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "refit.py"), "--repeats", "1", "--events", "256", "--epochs", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("| fp32") or line.startswith("| bf16")]
    assert len(table) == 2


def test_normalization_benchmark_runs(tmp_path):
    """benchmarks/normalization.py on a few simulated events: a row per numpy precision and block,
    and the ONNX Runtime rows (its exported graph runs)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "normalization.py"), "--events", "64", "--repeats", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| numpy") or line.startswith("| ONNX")]
    assert len(rows) == 7
    assert not list(tmp_path.glob("xec-bench-norm-*"))  # the simulated file is removed


def test_angle_floor_scale_for_known_answer():
    """angle_floor.scale_for on Gaussian parts: a position part p of width 1 and a floor f of
    width 2, target the width of 0.5 p + f: k = 0.5 (within the sample's noise); a target below
    the floor's own width gives 0, one above 2 p + f gives the cap 2."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import numpy as np, angle_floor as A;"
        "from xec.metrics import width68;"
        "r = np.random.default_rng(0); p = r.standard_normal(200000); f = 2 * r.standard_normal(200000);"
        "print(A.scale_for(p, f, width68(0.5 * p + f)), A.scale_for(p, f, 1.0), A.scale_for(p, f, 10.0))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    k, below, above = map(float, r.stdout.split())
    assert abs(k - 0.5) < 0.02
    assert below == 0.0 and above == 2.0
