"""xec.plots: every plot function writes a non-empty PNG (and PDF) from small synthetic inputs;
xec plots makes what the files of a run allow and skips the rest with a reason."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from xec import plots as P
from xec.geometry import N_SENSORS, get_geometry
from xec.metrics import opening_angle_deg

FMT = ("png",)


def _frame(n: int = 400, scale: float = 1.0, seed: int = 0, energy_range: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"run": np.zeros(n, np.int64), "event": np.arange(n, dtype=np.int64)})
    truth = {
        "uvwFI_u": rng.uniform(-20, 20, n),
        "uvwFI_v": rng.uniform(-60, 60, n),
        "uvwFI_w": rng.exponential(4, n),
        "timing_time": rng.normal(0, 1, n),
        "angle_theta": rng.uniform(70, 110, n),
        "angle_phi": rng.uniform(150, 210, n),
        "energy_energy": rng.uniform(0.015, 0.06, n) if energy_range else np.full(n, 0.0528),
    }
    for c, t in truth.items():
        df[f"true_{c}"] = t
        noise = 0.01 * t if c == "energy_energy" else 0.3
        df[f"pred_{c}"] = t + rng.normal(0, noise * scale, n)
    df["opening_angle_deg"] = opening_angle_deg(
        df.pred_angle_theta, df.pred_angle_phi, df.true_angle_theta, df.true_angle_phi
    )
    return df


def _check(files):
    assert files and all(f.exists() and f.stat().st_size > 1000 for f in files)
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def methods():
    return {"ML": _frame(), "baseline": _frame(scale=2.0, seed=1)}


@pytest.mark.slow
def test_physics_plots(methods, tmp_path):
    _check(P.residual_distributions(methods, tmp_path / "res", formats=("png", "pdf")))
    assert (tmp_path / "res.pdf").read_bytes()[:4] == b"%PDF"
    _check(P.resolution_profiles(methods, "w", tmp_path / "prof_w", n_bins=4, n_boot=5, formats=FMT))
    _check(
        P.resolution_profiles(
            {"ML": _frame(energy_range=True)}, "energy", tmp_path / "prof_e", n_bins=4, n_boot=5, formats=FMT
        )
    )
    with pytest.raises(ValueError, match="constant"):
        P.resolution_profiles(methods, "energy", tmp_path / "x", formats=FMT)
    _check(P.energy_response(methods, tmp_path / "eresp", formats=FMT))
    _check(P.timing_residuals(methods, tmp_path / "time", formats=FMT))
    _check(P.opening_angle_distribution(methods, tmp_path / "open", formats=FMT))
    real = {k: v.drop(columns=[c for c in v.columns if c.startswith("true_")]) for k, v in methods.items()}
    _check(P.realdata_distributions(real, tmp_path / "real", formats=FMT))
    with pytest.raises(ValueError):
        P.residual_distributions(real, tmp_path / "none", formats=FMT)
    assert not (tmp_path / "none.png").exists()


def _event(seed: int = 0):
    g = get_geometry()
    rng = np.random.default_rng(seed)
    d = np.linalg.norm(g.positions - g.positions[2000] - 3 * g.normals[2000], axis=1)
    npho = (2e5 / d**2).astype(np.float32)
    npho[rng.choice(N_SENSORS, 40, replace=False)] = 1e10  # dead
    time = (d / 8.5).astype(np.float32)
    time[npho < 50] = np.nan
    return npho, time


def test_event_display_all_faces(tmp_path):
    npho, time = _event()
    _check(P.event_display(npho, time, tmp_path / "ev", title="synthetic", formats=FMT))
    _check(P.event_display(npho, None, tmp_path / "ev_npho", formats=FMT))


@pytest.mark.slow
def test_model_and_training_plots(tmp_path):
    npho, _ = _event()
    rng = np.random.default_rng(0)
    mask = rng.random(N_SENSORS) < 0.5
    _check(P.mae_reconstruction(npho, mask, npho * rng.normal(1, 0.1, N_SENSORS), tmp_path / "mae", formats=FMT))
    sensor = rng.choice(N_SENSORS, 600, replace=False)
    truth = rng.exponential(300, 600)
    _check(
        P.inpainter_truth_vs_prediction(truth, truth * rng.normal(1, 0.1, 600), sensor, tmp_path / "inp", formats=FMT)
    )
    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_mae_npho": 2 / e} for e in range(1, 5)]
    metrics = {"mae": {"history": hist, "best": {"epoch": 4, "metric": "val_loss"}}, "regressor": {"history": hist}}
    _check(P.training_curves(metrics, tmp_path / "curves", formats=FMT))
    with pytest.raises(ValueError):
        P.training_curves({"mae": {"history": []}}, tmp_path / "c2", formats=FMT)


def test_standard_columns_of_regressor_predictions():
    df = pd.DataFrame(
        {"run": [1], "event": [2], "pred_u": [0.1], "true_u": [0.0], "sigma_u": [0.2], "pred_energy": [0.05]}
    )
    out = P.standard_columns(df)
    assert {"pred_uvwFI_u", "true_uvwFI_u", "sigma_uvwFI_u", "pred_energy_energy"} <= set(out.columns)


def _with_sigma(df: pd.DataFrame) -> pd.DataFrame:
    """The residuals of _frame as known per-event sigmas (0.3 cm, 1 % of E, 0.3 ns)."""
    df = df.copy()
    for c in ("uvwFI_u", "uvwFI_v", "uvwFI_w", "timing_time"):
        df[f"sigma_{c}"] = 0.3
    df["sigma_energy_energy"] = 0.01 * df["true_energy_energy"]
    return df


def test_uncertainty_plots(tmp_path):
    df = _with_sigma(_frame())
    classes = {"all": np.ones(len(df), bool), "fiducial": df["true_uvwFI_u"].abs().to_numpy() < 10}
    _check(P.kept_fraction(df, classes, tmp_path / "kept", formats=FMT))
    _check(P.pull_distributions(df, tmp_path / "pulls", formats=FMT))
    with pytest.raises(ValueError, match="no per-event uncertainties"):
        P.pull_distributions(_frame(), tmp_path / "none", formats=FMT)


@pytest.mark.slow
def test_xec_plots_cli_makes_what_exists(tmp_path):
    from xec.cli import main

    res = tmp_path / "results"
    (res / "baseline").mkdir(parents=True)
    (res / "inference").mkdir()
    (res / "mae").mkdir()
    _frame(seed=1, scale=2.0).to_parquet(res / "baseline" / "bench.parquet")
    _with_sigma(_frame()).to_parquet(res / "inference" / "bench.parquet")
    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in range(1, 4)]
    (res / "mae" / "metrics.json").write_text(json.dumps({"history": hist}))
    (tmp_path / "cfg.yaml").write_text("plots: {formats: [png], profile_bins: 4, n_boot: 3, worst_events: 1}\n")
    assert (
        main(["plots", "--results", str(res), "--config", str(tmp_path / "cfg.yaml"), "--log", str(tmp_path / "log")])
        == 0
    )
    index = json.loads((res / "plots" / "index.json").read_text())
    for name in (
        "residuals_bench",
        "residuals_bench_fiducial",
        "profile_vs_w_bench",
        "energy_response_bench",
        "timing_residuals_bench",
        "opening_angle_bench",
        "training_curves",
        "pulls_bench",
        "sigma_kept_fraction_bench",
    ):
        assert name in index["made"], name
        assert (res / "plots" / f"{name}.png").stat().st_size > 1000
    # no bench ROOT file, no checkpoints, monochromatic energy: skipped with a reason
    assert "event_display_worst" in index["skipped"] and "mae_examples" in index["skipped"]
    assert "constant" in index["skipped"]["profile_vs_energy_bench"]
    # the pipeline's two plot jobs split that list between them
    parts = {}
    for part in ("physics", "training"):
        out = tmp_path / part
        args = ["plots", "--results", str(res), "--out", str(out), "--part", part]
        assert main([*args, "--config", str(tmp_path / "cfg.yaml")]) == 0
        parts[part] = json.loads((out / "index.json").read_text())
    assert set(parts["training"]["made"]) == {"training_curves"}
    assert set(parts["physics"]["made"]) == set(index["made"]) - {"training_curves"}
    assert {**parts["physics"]["skipped"], **parts["training"]["skipped"]} == index["skipped"]
    assert main(["plots", "--results", str(tmp_path / "nope")]) == 2


# ---- issue 13 part 4: physics validation plots ----------------------------------------------------


def test_resolution_profile_reproduces_a_known_width_per_bin(tmp_path):
    """Synthetic residuals whose width grows with the true energy: u resolution 1 + 0.1 E[MeV] mm,
    energy sigma_E/E 4 % / sqrt(E / 10 MeV); every bin of the profile (68 % and core) gives it
    back, for ML and classical alike, on the same events."""
    n = 24_000
    rng = np.random.default_rng(3)
    e_mev = rng.uniform(15, 60, n)
    df = pd.DataFrame({"run": np.zeros(n, np.int64), "event": np.arange(n, dtype=np.int64)})
    df["true_energy_energy"] = e_mev / 1000
    df["true_uvwFI_u"] = rng.uniform(-20, 20, n)
    methods = {}
    for name, scale in (("ML", 1.0), ("baseline", 2.0)):
        d = df.copy()
        d["pred_uvwFI_u"] = d.true_uvwFI_u + rng.normal(0, 1, n) * scale * (1 + 0.1 * e_mev) / 10  # cm
        d["pred_energy_energy"] = d.true_energy_energy * (1 + rng.normal(0, 1, n) * scale * 0.04 / np.sqrt(e_mev / 10))
        methods[name] = d
    edges = np.linspace(15, 60, 6)
    table = P.resolution_profile_table(methods, "energy", edges, n_boot=0)
    assert set(table) == {"u_mm", "energy_pct"} and set(table["u_mm"]) == {"ML", "baseline"}
    for name, scale in (("ML", 1.0), ("baseline", 2.0)):
        for b in table["u_mm"][name]:
            # the expected width in a bin: the average of 1 + 0.1 E over it (uniform E), in mm
            want = scale * (1 + 0.1 * b["centre"])
            assert b["lo"] >= 15 and b["hi"] <= 60 and b["n"] > 4000
            assert b["width68"] == pytest.approx(want, rel=0.05), (name, b)
            assert b["sigma_core"] == pytest.approx(want, rel=0.06), (name, b)
        for b in table["energy_pct"][name]:
            lo, hi = b["lo"], b["hi"]
            # sigma ~ 1/sqrt(E): mixing over the bin; the bin's rms sigma (%) is close to sigma(centre)
            want = scale * 4.0 * np.sqrt(10 * np.log(hi / lo) / (hi - lo))
            assert b["width68"] == pytest.approx(want, rel=0.06), (name, b)
            assert b["sigma_core"] == pytest.approx(want, rel=0.06), (name, b)
    files = P.resolution_profiles(methods, "energy", tmp_path / "prof", edges=edges, n_boot=3, formats=FMT)
    _check(files)
    saved = json.loads((tmp_path / "prof.json").read_text())
    assert saved["edges"] == pytest.approx(edges.tolist()) and saved["axis"] == "true energy (MeV)"
    assert saved["observables"]["u_mm"]["ML"][0]["width68"] == pytest.approx(table["u_mm"]["ML"][0]["width68"])


def test_saliency_per_face_is_finite_and_nonzero_on_every_face(tmp_path):
    """The tiny regressor (random weights) on synthetic normalized events: every task has a finite,
    non-zero saliency on each of the six faces for npho and for time, the shares sum to 1 per
    task, sentinel inputs are left out, and the plot + JSON are written; cheap (< 10 s, 1 thread)."""
    import time

    import torch

    from xec.geometry import FACE_NAMES
    from xec.models.presets import get_preset
    from xec.models.regressor import XECRegressor
    from xec.plots.saliency import saliency_per_face

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = XECRegressor(get_preset("tiny"), ["angle", "energy", "timing", "uvwFI"]).eval()
        g = torch.Generator().manual_seed(1)
        x = torch.rand(32, N_SENSORS, 2, generator=g)
        x[:, :, 1] = torch.randn(32, N_SENSORS, generator=g) * 0.3
        x[:, :50, :] = -1.0  # dead sensors: both inputs at the sentinel
        t0 = time.perf_counter()
        res = saliency_per_face(model, x, sentinel=-1.0, batch_size=16)
        seconds = time.perf_counter() - t0
        # no sensor of the US face with a time: its time saliency is 0 (sentinels left out), npho's not
        us = torch.from_numpy(get_geometry().face == FACE_NAMES.index("us"))
        x_us = x[:4].clone()
        x_us[:, us, 1] = -1.0
        no_us_time = saliency_per_face(model, x_us, sentinel=-1.0)
    finally:
        torch.set_num_threads(threads)
    assert seconds < 10, seconds
    assert res["events"] == 32 and res["components"] == {"angle": 2, "energy": 1, "timing": 1, "uvwFI": 3}
    for task, entry in res["tasks"].items():
        for key in ("mean", "total"):
            for inp in ("npho", "time"):
                vals = np.array([entry[key][inp][f] for f in FACE_NAMES])
                assert np.all(np.isfinite(vals)) and np.all(vals > 0), (task, key, inp, vals)
        share = sum(entry["share"][inp][f] for inp in ("npho", "time") for f in FACE_NAMES)
        total = sum(entry["total_share"][inp][f] for inp in ("npho", "time") for f in FACE_NAMES)
        assert share == pytest.approx(1.0) and total == pytest.approx(1.0), task
    for task, entry in no_us_time["tasks"].items():
        assert entry["mean"]["time"]["us"] == 0.0 and entry["mean"]["npho"]["us"] > 0, task
    _check(P.saliency_bars(res, tmp_path / "sal", formats=FMT))
    saved = json.loads((tmp_path / "sal.json").read_text())
    assert saved["tasks"]["energy"]["mean"]["npho"]["inner"] == pytest.approx(
        res["tasks"]["energy"]["mean"]["npho"]["inner"]
    )


@pytest.mark.slow
def test_xec_plots_resolution_vs_energy_on_val_matches_events(tmp_path):
    """The val ML predictions (regressor/predictions.parquet, short column names) and the
    classical val (another order, 10 % fewer events) are matched on (run, event): every bin of
    profile_vs_energy_val.json counts the same events for both, in 15-60 MeV bins."""
    from xec.cli import main

    res = tmp_path / "results"
    (res / "regressor").mkdir(parents=True)
    (res / "baseline").mkdir()
    ml = _frame(n=1200, energy_range=True)
    short = {c: c.replace("uvwFI_", "").replace("angle_", "").replace("timing_", "") for c in ml.columns}
    short = {c: s.replace("energy_energy", "energy") for c, s in short.items()}
    ml.drop(columns=["opening_angle_deg"]).rename(columns=short).to_parquet(res / "regressor" / "predictions.parquet")
    base = _frame(n=1200, scale=2.0, seed=1, energy_range=True)
    base[[c for c in base.columns if c.startswith("true_")]] = ml[[c for c in base.columns if c.startswith("true_")]]
    base.sample(frac=0.9, random_state=0).to_parquet(res / "baseline" / "val.parquet")
    (tmp_path / "cfg.yaml").write_text("plots: {formats: [png], profile_bins: 3, n_boot: 0, worst_events: 0}\n")
    assert main(["plots", "--results", str(res), "--config", str(tmp_path / "cfg.yaml")]) == 0
    assert (res / "plots" / "profile_vs_energy_val.png").stat().st_size > 1000
    prof = json.loads((res / "plots" / "profile_vs_energy_val.json").read_text())
    assert prof["edges"] == [15.0, 30.0, 45.0, 60.0]
    assert set(prof["observables"]) >= {"u_mm", "v_mm", "w_mm", "energy_pct", "time_ps", "theta_deg", "phi_deg"}
    for obs in prof["observables"].values():
        n_ml = [b["n"] for b in obs["ML"]]
        assert n_ml == [b["n"] for b in obs["baseline"]] and sum(n_ml) == 1080, obs
