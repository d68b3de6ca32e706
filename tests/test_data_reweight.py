"""Histogram reweighting: inverse frequency, mean 1, clipping, save/load, CLI + plot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers_rootfiles import shared_sample

from xec.cli import main as cli_main
from xec.data.manifest import read_manifest
from xec.data.reweight import read_targets
from xec.data.weights import HistogramWeights
from xec.errors import XecError


def test_weights_are_inverse_frequency_with_mean_one():
    # 1D: bins with 100, 300, 600 events -> weights proportional to 1/100 : 1/300 : 1/600
    v = np.concatenate([np.full(100, 0.5), np.full(300, 1.5), np.full(600, 2.5)])[:, None]
    v[0, 0], v[-1, 0] = 0.0, 3.0  # fixes the histogram range [0, 3]
    hw = HistogramWeights.fit({"energy": v}, {"energy": [3]}, max_weight=100.0, range_percentiles=(0, 100))
    w = hw.event_weights("energy", v)
    assert w.mean() == pytest.approx(1.0, rel=1e-6)
    assert w[1] / w[500] == pytest.approx(6.0, rel=1e-5) and w[200] / w[500] == pytest.approx(2.0, rel=1e-5)
    # weighted histogram is flat: every bin carries the same total weight
    np.testing.assert_allclose(
        [w[v[:, 0] < 1].sum(), w[(v[:, 0] >= 1) & (v[:, 0] < 2)].sum(), w[v[:, 0] >= 2].sum()], 1000 / 3, rtol=1e-5
    )
    # out-of-range values fall into the edge bins
    np.testing.assert_allclose(hw.event_weights("energy", np.array([[-5.0], [9.0]])), [w[1], w[500]])


def test_clip_keeps_the_largest_weight_and_mean_one():
    rng = np.random.default_rng(0)
    v = rng.exponential(1.0, (5000, 1))
    hw = HistogramWeights.fit({"timing": v}, {"timing": [40]}, max_weight=3.0)
    w = hw.event_weights("timing", v)
    assert w.max() <= 3.0 * (1 + 1e-6) and w.max() == pytest.approx(3.0, rel=1e-6)
    assert w.mean() == pytest.approx(1.0, rel=1e-5)


def test_multi_dimensional_bins_and_dropped_axes_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    uvw = np.stack([rng.normal(0, 10, 4000), rng.uniform(-60, 60, 4000), rng.exponential(8, 4000)], axis=1)
    ang = np.stack([rng.normal(90, 10, 4000), rng.uniform(-30, 30, 4000)], axis=1)
    hw = HistogramWeights.fit(
        {"uvwFI": uvw, "angle": ang}, {"uvwFI": [6, 5, 1], "angle": [8, 4]}, max_weight=8.0, meta={"note": "x"}
    )
    assert hw.tables["uvwFI"]["weights"].shape == (6, 5) and hw.tables["uvwFI"]["axes"] == [0, 1]
    assert hw.tables["angle"]["weights"].shape == (8, 4)
    w = hw.event_weights("uvwFI", uvw)
    # w is ignored: changing it does not change the weight
    shifted = uvw.copy()
    shifted[:, 2] += 30
    np.testing.assert_array_equal(hw.event_weights("uvwFI", shifted), w)
    hw.save(tmp_path / "w.npz")
    back = HistogramWeights.load(tmp_path / "w.npz")
    assert back.meta["note"] == "x" and back.tasks == ["uvwFI", "angle"]
    for t, v in (("uvwFI", uvw), ("angle", ang)):
        np.testing.assert_array_equal(back.event_weights(t, v), hw.event_weights(t, v))
    np.testing.assert_array_equal(back.event_weights("energy", uvw[:, :1]), 1.0)


def test_bad_binning_and_missing_file(tmp_path):
    with pytest.raises(XecError, match="bins.angle has 1 entries"):
        HistogramWeights.fit({"angle": np.zeros((10, 2))}, {"angle": [5]})
    with pytest.raises(XecError, match="nope.npz: no such reweighting file"):
        HistogramWeights.load(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_text("garbage")
    with pytest.raises(XecError, match="bad.npz: not a readable reweighting file"):
        HistogramWeights.load(tmp_path / "bad.npz")


def test_cli_fits_on_shards_and_plots(tmp_path, restore_logging):
    m = shared_sample()["shards"]
    out = tmp_path / "rw" / "weights.npz"
    rc = cli_main(
        [
            "reweight",
            "--manifest",
            str(m),
            "--out",
            str(out),
            "--plot",
            str(tmp_path / "rw" / "w.png"),
            "--log",
            str(tmp_path / "rw.log"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "rw" / "w.png").read_bytes()[:4] == b"\x89PNG"
    hw = HistogramWeights.load(out)
    assert hw.tasks == ["angle", "energy", "timing", "uvwFI"]
    targets = read_targets(read_manifest(m), hw.tasks)
    for t in hw.tasks:
        w = hw.event_weights(t, targets[t])
        assert w.mean() == pytest.approx(1.0, rel=1e-5) and w.max() <= 10.0 + 1e-6
    assert "effective sample size" in (tmp_path / "rw.log").read_text()


def test_reweight_module_does_not_import_torch():
    # `xec reweight` must stay light: a fresh interpreter, since this test process has torch loaded already
    code = "import sys, xec.data.reweight; assert 'torch' not in sys.modules, 'xec.data.reweight imports torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
