"""Per-event uncertainties: the NLL sigma head learns a known heteroscedastic noise, the pull and
kept-fraction metrics on synthetic data with known answers, sigma heads leave the point
estimates alone, and the summary's uncertainty section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from xec.errors import XecError
from xec.metrics import kept_fraction_resolution, pulls, split_by_sigma, width68


def test_nll_sigma_head_learns_heteroscedastic_noise():
    """y = sin(3x) + sigma(x) * N(0, 1) with sigma(x) = 0.05 + 0.3 |x|; the mean is known (as a
    trained, detached point estimate would be): a TaskHead trained with the stage's beta-NLL must
    give calibrated pulls and recover sigma(x)."""
    from xec.models.regressor import TaskHead
    from xec.train.regressor import elementwise

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = 2000
    x = torch.rand(n, 1, generator=g) * 2 - 1
    sigma_true = 0.05 + 0.3 * x.abs()
    y = torch.sin(3 * x) + sigma_true * torch.randn(n, 1, generator=g)
    pred = torch.sin(3 * x)  # the point estimate, detached
    z = torch.zeros(n, 1)  # no token features: the event features enter like the peak-fit ones

    def feats(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.abs(), x**2], 1)

    head = TaskHead(1, 3, 32, 1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        logvar = head(z, feats(x))
        loss = elementwise("gaussian_nll", pred.detach(), y, 0.5, logvar).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        # fresh events for the check
        x2 = torch.rand(n, 1, generator=g) * 2 - 1
        s2 = 0.05 + 0.3 * x2.abs()
        y2 = torch.sin(3 * x2) + s2 * torch.randn(n, 1, generator=g)
        sigma = torch.exp(0.5 * head(z, feats(x2)))
    pull = pulls(torch.sin(3 * x2).numpy(), y2.numpy(), sigma.numpy())
    assert 0.95 < width68(pull) < 1.05  # 0.99 measured
    rel = (sigma / s2).numpy()
    assert np.median(np.abs(rel - 1)) < 0.06  # sigma(x) itself, not just its average (0.03 measured)


def test_pull_and_ranking_metrics_known_answers():
    rng = np.random.default_rng(0)
    n = 20000
    sigma = np.where(np.arange(n) < n // 2, 1.0, 3.0)
    true = rng.normal(size=n)
    pred = true + sigma * rng.normal(size=n)
    p = pulls(pred, true, sigma)
    assert abs(width68(p) - 1.0) < 0.03
    assert abs(width68(pulls(pred, true, 2 * sigma)) - 0.5) < 0.02  # sigma twice too large
    assert np.isnan(pulls([1.0, 1.0], [0.0, 0.0], [0.0, np.nan])).all()  # no sigma, no pull
    r = pred - true
    split = split_by_sigma(r, sigma, 0.5)
    assert abs(split["best"] - 1.0) < 0.04 and abs(split["rest"] - 3.0) < 0.1
    assert abs(split["ratio"] - 3.0) < 0.15
    kept = kept_fraction_resolution(r, sigma, (0.25, 0.5, 1.0))
    assert [k["n"] for k in kept] == [n // 4, n // 2, n]
    assert abs(kept[0]["width68"] - 1.0) < 0.05 and kept[0]["sigma_cut"] == 1.0
    assert kept[2]["width68"] == pytest.approx(width68(r))
    # a sigma that does not rank events: no gain from the cut
    flat = split_by_sigma(r, rng.random(n), 0.5)
    assert abs(flat["ratio"] - 1.0) < 0.1


def _regressor(sigma_tasks):
    from xec.models.presets import get_preset
    from xec.models.regressor import XECRegressor

    torch.manual_seed(5)
    return XECRegressor(get_preset("tiny"), ["angle", "energy", "timing", "uvwFI"], sigma_tasks=sigma_tasks).eval()


def test_sigma_heads_leave_the_point_estimates_alone():
    """Same seed: identical weights and predictions with or without sigma heads; the sigma loss
    sends no gradient into the encoder or the prediction heads."""
    from xec.train.regressor import elementwise

    plain, with_sigma = _regressor(()), _regressor(["energy", "timing", "uvwFI"])
    sd = with_sigma.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.rand(3, 4760, 2)
    a, b = plain(x), with_sigma(x)
    for t in plain.tasks:
        assert torch.equal(a[t], b[t])
    assert set(b) - set(a) == {"energy_logvar", "timing_logvar", "uvwFI_logvar"}
    assert b["uvwFI_logvar"].shape == (3, 3)
    loss = sum(elementwise("gaussian_nll", b[t].detach(), torch.zeros_like(b[t]), 0.5, b[f"{t}_logvar"]).sum()
               for t in with_sigma.sigma_tasks)  # fmt: skip
    loss.backward()
    for name, p in with_sigma.named_parameters():
        if name.startswith("sigma_heads."):
            continue
        assert p.grad is None or not p.grad.any(), name
    assert any(p.grad is not None and p.grad.any() for p in with_sigma.sigma_heads.parameters())


def test_physical_sigma_units_and_calibration():
    from xec.targets import TargetStandardizer

    model = _regressor(["energy", "uvwFI"])
    std = TargetStandardizer.from_dict(
        {
            "angle": {"mean": [90.0, 180.0], "std": [10.0, 10.0]},
            "energy": {"mean": [0.04], "std": [0.01]},
            "timing": {"mean": [0.0], "std": [0.5]},
            "uvwFI": {"mean": [0.0, 0.0, 5.0], "std": [20.0, 20.0, 20.0]},
        }
    )
    model.set_standardization(std)
    x = torch.rand(2, 4760, 2)
    with torch.no_grad():
        raw = model(x)
        phys = model.forward_physical(x)
        model.set_sigma_calibration({"energy": [2.0], "uvwFI": [1.0, 1.0, 0.5]})
        cal = model.forward_physical(x)
    assert "timing_sigma" not in phys
    expected = torch.exp(0.5 * raw["energy_logvar"]) * 0.01  # GeV: sigma in target spreads x std
    assert torch.allclose(phys["energy_sigma"], expected)
    assert torch.allclose(cal["energy_sigma"], 2 * expected)
    assert torch.allclose(cal["uvwFI_sigma"][:, 2], 0.5 * phys["uvwFI_sigma"][:, 2])
    # the older form (one scale per column) reads as a one-knot map
    assert model.sigma_calibration()["energy"] == {"log_sigma": [[0.0]], "log_factor": [[pytest.approx(np.log(2.0))]]}
    assert not [k for k in model.state_dict() if k.startswith("sigma_knots")]  # travels as sigma_calibration instead
    with pytest.raises(XecError, match="positive"):
        model.set_sigma_calibration({"energy": [0.0]})


def test_sigma_tasks_outside_the_trained_tasks_is_an_error():
    from xec.train.regressor import sigma_spec

    sigma = {"tasks": ["energy", "angleVec"], "weight": 1.0, "beta": 0.5, "calibrate": True}
    sec = {"sigma": sigma, "losses": {}}
    with pytest.raises(XecError, match=r"regressor\.sigma\.tasks.*angleVec"):
        sigma_spec(sec, ["angle", "energy"])
    # a loss that cannot produce the uncertainty: the error names the key
    sec = {"sigma": {**sigma, "tasks": ["energy"], "weight": 0.0}, "losses": {}}
    with pytest.raises(XecError, match=r"regressor\.sigma\.weight is 0.*'energy' \(loss l1"):
        sigma_spec(sec, ["angle", "energy"])
    nll = {"energy": {"type": "gaussian_nll", "weight": 0.0, "beta": 0.5}}
    with pytest.raises(XecError, match=r"regressor\.losses\.energy\.weight is 0"):
        sigma_spec({"sigma": {**sigma, "tasks": ["energy"]}, "losses": nll}, ["energy"])
    nll["energy"]["weight"] = 1.0  # sigma weight 0 is fine when the task's own NLL trains the sigma
    assert sigma_spec({"sigma": {**sigma, "tasks": ["energy"], "weight": 0.0}, "losses": nll}, ["energy"])
    with pytest.raises(XecError, match="not among the tasks"):
        _regressor(["angleVec"])


def test_summary_uncertainty_section_known_answers(tmp_path):
    """Bench-like frames with sigma columns: a sigma of 1x and 2x the true per-event width gives
    pull widths 1 and 0.5; events with sigma 1 vs 3 give best/rest resolutions 1 and 3."""
    from xec.summary import sample_summary
    from xec.summary_tables import to_markdown

    rng = np.random.default_rng(2)
    n = 4000
    df = pd.DataFrame({"run": np.zeros(n, np.int64), "event": np.arange(n, dtype=np.int64)})
    s = np.where(rng.random(n) < 0.5, 0.1, 0.3)  # cm
    for c in "uvw":
        df[f"true_uvwFI_{c}"] = rng.uniform(-20, 20, n) if c != "w" else rng.uniform(0, 10, n)
        df[f"pred_uvwFI_{c}"] = df[f"true_uvwFI_{c}"] + s * rng.normal(size=n)
        df[f"sigma_uvwFI_{c}"] = s if c != "w" else 2 * s
    df["true_energy_energy"] = 0.0528
    df["pred_energy_energy"] = 0.0528 + 0.001 * rng.normal(size=n)
    df["sigma_energy_energy"] = 0.001
    df.to_parquet(tmp_path / "ml.parquet")
    lim = {"u": [-10.0, 10.0], "v": [-100.0, 100.0], "w": [0.0, 42.0]}
    out = sample_summary({"ml": str(tmp_path / "ml.parquet")}, "baseline", 20, 0, 2.0, 3.0, 4, lim)
    unc = out["uncertainty"]["methods"]["ml"]
    assert set(unc) == {"u_mm", "v_mm", "w_mm", "energy_pct"}
    assert abs(unc["u_mm"]["all"]["pull"]["width68"] - 1.0) < 0.05
    assert abs(unc["w_mm"]["fiducial"]["pull"]["width68"] - 0.5) < 0.04
    assert abs(unc["energy_pct"]["all"]["pull"]["width68"] - 1.0) < 0.05
    split = unc["v_mm"]["all"]["split"]
    assert abs(split["best"] - 1.0) < 0.06 and abs(split["rest"] - 3.0) < 0.15  # mm
    assert unc["u_mm"]["fiducial"]["kept"][-1]["n"] == out["fiducial"]["events"]
    assert out["uncertainty"]["pull_goal"] == [0.9, 1.1]
    md = to_markdown({"bench": out})
    assert "### per-event uncertainties" in md and "u (mm) [fiducial]" in md


def test_bad_sigma_config_stops_the_regressor_before_writing(tmp_path, capsys):
    from xec.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("regressor: {sigma: {tasks: [energy], weight: 0.0}}\nmlflow: {enabled: false}\n")
    out = tmp_path / "regressor"
    rc = main(["train", "regressor", "--config", str(cfg), "--init", "none", "--out", str(out)])
    assert rc != 0 and "regressor.sigma.weight" in capsys.readouterr().err
    assert not out.exists()


def test_calibration_window_selects_the_signal_region_events():
    """The sigma map is fitted on the val events with the true energy in
    regressor.sigma.calibration_energy_mev: events whose pulls are twice as wide there give a
    factor of 2, not the whole sample's mixture; null, a window with too few events or no energy
    truth keep every event; a reversed window is an error."""
    from xec.config import load_config
    from xec.models import sigma_calibration as SC
    from xec.train.regressor import RegressorStage, energy_window_rows, sigma_spec

    rng = np.random.default_rng(3)
    n = 6000
    e_gev = rng.uniform(0.015, 0.060, n)
    inside = (e_gev >= 0.045) & (e_gev <= 0.060)
    sigma = np.full(n, 0.5e-3)
    resid = rng.normal(0.0, 1.0, n) * sigma * np.where(inside, 2.0, 1.0)
    cols = {"true_energy": e_gev, "pred_energy": e_gev + resid, "sigma_energy": sigma}

    stage = RegressorStage.__new__(RegressorStage)  # only .sigma is read
    stage.sigma = {"calibration_energy_mev": [45.0, 60.0], "calibration_bins": 4}
    rows = stage.calibration_rows(cols)
    assert rows.sum() == inside.sum() and np.array_equal(rows, inside)
    fit = SC.fit(cols["pred_energy"][rows, None], e_gev[rows, None], sigma[rows, None], 4)
    factor = SC.apply_numpy(fit, sigma[:1, None])[0, 0] / sigma[0]
    assert factor == pytest.approx(2.0, rel=0.05)
    mixture = SC.fit(cols["pred_energy"][:, None], e_gev[:, None], sigma[:, None], 4)
    assert SC.apply_numpy(mixture, sigma[:1, None])[0, 0] / sigma[0] < 1.6  # what the whole sample gives

    stage.sigma["calibration_energy_mev"] = None
    assert stage.calibration_rows(cols) is None
    stage.sigma["calibration_energy_mev"] = [45.0, 60.0]
    assert stage.calibration_rows({k: v for k, v in cols.items() if k != "true_energy"}) is None  # no energy task

    # a reversed window stops the stage at its construction, not after the training
    sec = load_config(None)["regressor"]
    sec = {**sec, "sigma": {**sec["sigma"], "calibration_energy_mev": [60.0, 45.0]}}
    with pytest.raises(XecError, match=r"calibration_energy_mev.*not an interval"):
        sigma_spec(sec, sec["tasks"])
    assert energy_window_rows(e_gev, [59.9, 60.0]) is None  # ~13 events: every val event, with a warning
