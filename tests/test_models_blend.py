"""The position blend with the in-graph classical fit (xec.models.blend, xec.train.blend) and the
float64 arctangent the fit runs on (xec.models.solidfit.atan64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.models.blend import N_INPUTS, FitBlend, gate_inputs
from xec.models.solidfit import atan2_64, atan64
from xec.train.blend import cross_fit, fit_gate, fold_of


def test_atan64_is_float64_exact():
    z = torch.cat(
        [
            torch.linspace(-60, 60, 20001, dtype=torch.float64),
            torch.tensor([0.0, 1e-300, 1.0, -1.0, 0.66, 2.4142135, 1e8, -1e150], dtype=torch.float64),
        ]
    )
    np.testing.assert_allclose(atan64(z).numpy(), np.arctan(z.numpy()), rtol=0, atol=1e-15)
    assert atan64(z).dtype == torch.float64


def test_atan2_64_in_every_quadrant():
    """Against torch.atan2, magnitudes over 1e-40 .. 1e40, the axes and the negative x axis with
    signed zeros (the half-angle form's hard case)."""
    g = torch.Generator().manual_seed(0)
    exponent = torch.randint(-40, 40, (2, 100000), generator=g).double()
    y, x = torch.randn(2, 100000, dtype=torch.float64, generator=g) * 10.0**exponent
    y = torch.cat([y, torch.tensor([0.0, -0.0, 1e-300, -1e-20, 1.0, -1.0, 0.0, 5.0], dtype=torch.float64)])
    x = torch.cat([x, torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.0, 0.0, 2.0, -1e-300], dtype=torch.float64)])
    np.testing.assert_allclose(atan2_64(y, x).numpy(), torch.atan2(y, x).numpy(), rtol=0, atol=2e-15)


def test_blend_starts_at_the_network_and_keeps_w():
    torch.manual_seed(0)
    net = torch.randn(64, 3) * 10
    fit = net + torch.randn(64, 3)
    inputs = gate_inputs(net, torch.cat([fit / 10.0, torch.zeros(64, 2)], 1), 10.0)
    assert inputs.shape == (64, N_INPUTS)
    blend = FitBlend(8)
    a = blend.weight(inputs)
    torch.testing.assert_close(a, torch.full_like(a, 1 / (1 + np.exp(3.0))))  # sigmoid(-3)
    out = blend(net, fit, inputs)
    torch.testing.assert_close(out[:, 2], net[:, 2])  # w is the network's
    lo, hi = torch.minimum(net[:, :2], fit[:, :2]), torch.maximum(net[:, :2], fit[:, :2])
    assert bool(((out[:, :2] >= lo - 1e-5) & (out[:, :2] <= hi + 1e-5)).all())  # convex


def synthetic(n: int, seed: int):
    """Events where the fit is 4x better than the network for w > 4 cm and 4x worse below."""
    rng = np.random.default_rng(seed)
    true = np.column_stack([rng.uniform(-20, 20, n), rng.uniform(-60, 60, n), rng.exponential(4.0, n)])
    deep = true[:, 2] > 4.0
    net_err = np.where(deep, 0.8, 0.2)[:, None] * rng.standard_normal((n, 3))
    fit_err = np.where(deep, 0.2, 0.8)[:, None] * rng.standard_normal((n, 3))
    net, fit = true + net_err, true + fit_err
    net[:, 2] = true[:, 2] + 0.1 * rng.standard_normal(n)  # the depth the gate reads
    fit_feats = np.column_stack([fit / 10.0, np.zeros((n, 2))]).astype(np.float32)
    inputs = gate_inputs(torch.from_numpy(net).float(), torch.from_numpy(fit_feats), 10.0).numpy()
    return dict(blend_inputs=inputs, net_uvw=net, fit_uvw=fit, true_uvw=true, run=np.zeros(n), event=np.arange(n)), deep


def test_gate_learns_when_to_trust_the_fit():
    cols, deep = synthetic(3000, 1)
    gate = fit_gate(cols["blend_inputs"], cols["net_uvw"], cols["fit_uvw"], cols["true_uvw"], 16, 600, 1e-2, 0)
    test, tdeep = synthetic(3000, 2)
    with torch.no_grad():
        a = gate.weight(torch.from_numpy(test["blend_inputs"])).numpy()
        out = gate(*(torch.from_numpy(np.asarray(test[k], np.float32)) for k in ("net_uvw", "fit_uvw", "blend_inputs")))
    assert a[tdeep].mean() > 0.8 and a[~tdeep].mean() < 0.2
    err = np.abs(out.numpy()[:, :2] - test["true_uvw"][:, :2]).mean()
    assert err < 0.7 * np.abs(test["net_uvw"][:, :2] - test["true_uvw"][:, :2]).mean()
    # deterministic: the same seed gives the same gate
    again = fit_gate(cols["blend_inputs"], cols["net_uvw"], cols["fit_uvw"], cols["true_uvw"], 16, 600, 1e-2, 0)
    for p, q in zip(gate.parameters(), again.parameters()):
        assert torch.equal(p, q)


def test_cross_fit_predicts_each_part_from_the_others():
    cols, deep = synthetic(2000, 3)
    part = fold_of(cols["run"], cols["event"], 2)
    assert set(np.unique(part)) == {0, 1} and 0.4 < part.mean() < 0.6
    np.testing.assert_array_equal(part, fold_of(cols["run"], cols["event"], 2))
    spec = {"hidden": 16, "steps": 300, "lr": 1e-2, "folds": 2}
    full, blended, metrics = cross_fit(cols, spec, seed=5)
    # each part's prediction comes from the gate fitted on the other part, not the full one
    with torch.no_grad():
        in_sample = full(
            *(torch.from_numpy(np.asarray(cols[k], np.float32)) for k in ("net_uvw", "fit_uvw", "blend_inputs"))
        )
    assert not np.allclose(blended[:, :2], in_sample.numpy()[:, :2])
    np.testing.assert_array_equal(blended[:, 2], cols["net_uvw"][:, 2].astype(np.float32))
    for c in "uv":
        assert metrics[f"val_fit_blend_{c}_mm_blend"] < 0.8 * metrics[f"val_fit_blend_{c}_mm_net"]
    assert metrics["val_fit_blend_weight_u"] == pytest.approx(deep.mean(), abs=0.15)


def test_blend_config_errors_name_the_key():
    from xec.errors import XecError
    from xec.train.regressor import fit_blend_spec

    spec = {"enabled": True, "hidden": 16, "steps": 10, "lr": 1e-2, "folds": 2}
    with pytest.raises(XecError, match=r"regressor\.fit_blend\.enabled.*uvwFI"):
        fit_blend_spec(spec, ["energy", "timing"], peak_window=11)
    with pytest.raises(XecError, match=r"regressor\.fit_blend\.enabled.*peak_window"):
        fit_blend_spec(spec, ["uvwFI"], peak_window=0)
    assert fit_blend_spec({**spec, "enabled": False}, ["energy"], peak_window=0)["enabled"] is False
