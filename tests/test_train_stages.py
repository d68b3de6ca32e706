"""The three training stages on tiny random shards: outputs, metrics, encoder hand-over from the
MAE, checkpoint rebuild, resume after SIGKILL, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_rootfiles import write_root_file

from xec.config import load_config
from xec.errors import XecError
from xec.train.checkpoint import load_checkpoint, save_checkpoint
from xec.train.cli import run_stage
from xec.train.stages import build_model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL = 192, 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from xec.data.shards import settings_from_config, write_shards

    d = tmp_path_factory.mktemp("train_stages")
    cfg = load_config()
    settings = settings_from_config(cfg, events_per_shard=128, block_size=32)
    for split, n, seed in (("train", N_TRAIN, 1), ("val", N_VAL, 2)):
        f = write_root_file(d / f"{split}.root", n_events=n, seed=seed, run=seed)
        write_shards([str(f)], d / "shards" / split, split, settings)
    return d


def make_cfg(d: Path, **overrides) -> dict:
    over = {
        "mae.epochs": 1,
        "mae.batch_size": 32,
        "inpainter.epochs": 1,
        "inpainter.batch_size": 32,
        "regressor.epochs": 1,
        "regressor.batch_size": 32,
        "mlflow.tracking_uri": f"sqlite:///{d}/mlflow.db",
        **overrides,
    }
    return load_config(None, overrides=over)


@pytest.fixture(scope="module")
def mae_run(data):
    summary = run_stage("mae", make_cfg(data), shards=data / "shards", out=data / "mae")
    return data / "mae", summary


def _encoder_state(state: dict) -> dict:
    return {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}


def test_mae_outputs_and_metrics(mae_run):
    out, summary = mae_run
    for name in ("checkpoint.pt", "checkpoint_last.pt", "checkpoint_best.pt", "metrics.json", "config.yaml"):
        assert (out / name).exists(), name
    val = json.loads((out / "metrics.json").read_text())["val"]
    for key in (
        "val_loss",
        "val_loss_npho",
        "val_loss_time",
        "val_loss_inner",
        "val_loss_top",
        "val_mae_npho",
        "val_rmse_time",
        "val_mae_npho_phot",
        "val_rmse_time_ns",
        "val_mae_npho_inner",
        "val_actual_mask_ratio",
    ):
        assert np.isfinite(val[key]), key
    assert 0.5 < val["val_actual_mask_ratio"] < 0.7  # config mae.mask_ratio 0.6
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["stage"] == "mae" and ck["model"]["preset"] == "tiny" and ck["normalization"]["preset"] == "meg2"
    model = build_model_from_checkpoint(ck)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["ema_state"][k]), k


def test_mlflow_run_recorded(mae_run, data):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data}/mlflow.db")
    exp = client.get_experiment_by_name("xec-mae")
    runs = client.search_runs([exp.experiment_id])
    assert runs and runs[0].info.status == "FINISHED"
    r = runs[0]
    assert r.data.params["mae.mask_ratio"] == "0.6"
    for key in ("val_loss", "train_loss", "events_per_s", "data_wait_fraction", "rss_mb"):
        assert key in r.data.metrics, key
    arts = [a.path for a in client.list_artifacts(r.info.run_id)]
    assert "metrics.json" in arts and "config.yaml" in arts


def test_regressor_encoder_initialized_from_mae(mae_run, data):
    from xec.data.loader import ShardLoader
    from xec.normalization import normalizer_from_config
    from xec.train.regressor import RegressorStage

    out, _ = mae_run
    cfg = make_cfg(data)
    stage = RegressorStage(cfg, normalizer_from_config(cfg), init_checkpoint=str(out / "checkpoint.pt"))
    tl = ShardLoader(data / "shards" / "train", 32, tasks=stage.tasks)
    stage.attach_data(tl, ShardLoader(data / "shards" / "val", 32, tasks=stage.tasks, shuffle=False))
    torch.manual_seed(0)
    model = stage.build_model()
    mae_enc = _encoder_state(load_checkpoint(out / "checkpoint.pt")["ema_state"])
    assert any(not torch.equal(v, mae_enc[k]) for k, v in model.encoder.state_dict().items())
    stage.prepare_model(model)
    got = model.encoder.state_dict()
    assert set(got) == set(mae_enc)
    for k, v in mae_enc.items():
        assert torch.equal(got[k], v), k


def test_regressor_stage_outputs(mae_run, data):
    import pandas as pd

    from xec.data.weights import HistogramWeights

    out, _ = mae_run
    cfg = make_cfg(
        data,
        **{
            "regressor.channel_dropout": 0.05,
            "train.max_train_events": 96,
            "regressor.losses": {"energy": {"type": "gaussian_nll", "weight": 1.0, "beta": 0.5}},
        },
    )
    from xec.data.loader import ShardLoader

    tl = ShardLoader(data / "shards" / "train", 64)
    targets = {t: [] for t in cfg["regressor"]["tasks"]}
    for _, tg, _ in tl:
        for t in targets:
            targets[t].append(tg[t].numpy())
    w = HistogramWeights.fit(
        {t: np.concatenate(v) for t, v in targets.items()},
        {t: cfg["reweighting"]["bins"][t] for t in targets},
        max_weight=10.0,
    )
    w.save(data / "weights.npz")
    summary = run_stage(
        "regressor",
        cfg,
        shards=data / "shards",
        out=data / "regressor",
        init=str(out / "checkpoint.pt"),
        weights=str(data / "weights.npz"),
    )
    val = summary["val"]
    for key in (
        "val_loss",
        "val_loss_angle",
        "val_loss_energy",
        "val_loss_timing",
        "val_loss_uvwFI",
        "val_theta_deg_bias",
        "val_theta_deg_res",
        "val_phi_rms_deg",
        "val_theta_skewness",
        "val_opening_angle_q68_deg",
        "val_energy_pct_bias",
        "val_energy_pct_res",
        "val_time_ps_res",
        "val_u_mm_res",
        "val_v_mm_res",
        "val_w_mm_res",
        "val_u_mm_gain",
    ):
        assert key in val and np.isfinite(val[key]), key
    pred = pd.read_parquet(data / "regressor" / "predictions.parquet")
    assert len(pred) == N_VAL
    for col in (
        "run",
        "event",
        "true_theta",
        "pred_theta",
        "true_energy",
        "pred_energy",
        "true_time",
        "pred_time",
        "true_u",
        "pred_w",
    ):
        assert col in pred.columns, col
    ck = load_checkpoint(data / "regressor" / "checkpoint.pt", expected_stage="regressor")
    assert ck["tasks"] == ["angle", "energy", "timing", "uvwFI"]
    assert set(ck["target_standardization"]) == set(ck["tasks"])
    model = build_model_from_checkpoint(ck)
    with torch.no_grad():
        x = torch.from_numpy(np.zeros((2, 4760, 2), np.float32))
        phys = model.forward_physical(x)
    assert phys["uvwFI"].shape == (2, 3)


def test_sigma_heads_do_not_change_the_point_estimates(mae_run, data, tmp_path):
    """The same training with and without uncertainty heads gives bit-identical point
    predictions (heads built last, on detached features, clipped on their own); with them the
    val predictions carry positive sigmas, calibrated on val to a pull width of 1."""
    import pandas as pd

    from xec.metrics import pulls, width68

    out, _ = mae_run
    preds, summaries = {}, {}
    for name, tasks in (("plain", []), ("sigma", ["energy", "timing", "uvwFI"])):
        cfg = make_cfg(data, **{"train.max_train_events": 96, "regressor.sigma.tasks": tasks, "mlflow.enabled": False})
        summaries[name] = run_stage(
            "regressor", cfg, shards=data / "shards", out=tmp_path / name, init=str(out / "checkpoint.pt")
        )
        preds[name] = pd.read_parquet(tmp_path / name / "predictions.parquet")
    plain, sig = preds["plain"], preds["sigma"]
    assert not [c for c in plain.columns if c.startswith("sigma_")]
    for c in plain.columns:
        np.testing.assert_array_equal(plain[c].to_numpy(), sig[c].to_numpy(), err_msg=c)
    for c in ("energy", "time", "u", "v", "w"):
        assert (sig[f"sigma_{c}"] > 0).all(), c
        # unit pull width in each sigma bin makes the whole val's close to 1 (exactly 1 with one bin)
        assert width68(pulls(sig[f"pred_{c}"], sig[f"true_{c}"], sig[f"sigma_{c}"])) == pytest.approx(1.0, abs=0.1)
    assert "sigma_theta" not in sig.columns
    val = summaries["sigma"]["val"]
    assert val["val_loss_uvwFI"] == summaries["plain"]["val"]["val_loss_uvwFI"]
    assert np.isfinite(val["val_loss_uvwFI_sigma"]) and val["val_sigma_scale_u"] > 0
    assert np.isfinite(val["val_pull68_w_uncal"]) and val["val_pull68_w"] == pytest.approx(1.0, abs=0.1)
    ck = load_checkpoint(tmp_path / "sigma" / "checkpoint.pt", expected_stage="regressor")
    assert ck["model_args"]["sigma_tasks"] == ["energy", "timing", "uvwFI"]
    assert len(ck["sigma_calibration"]["uvwFI"]["log_sigma"]) == 3
    model = build_model_from_checkpoint(ck)
    assert model.sigma_calibration() == ck["sigma_calibration"]


def test_head_refit_replaces_the_position_head_only(mae_run, data, tmp_path):
    """regressor.head_refit: the saved model carries the refitted uvwFI head (its width in
    model_args, the same shapes in model_state and ema_state); the energy is bit-identical to a
    run without the refit, the angle is the direction to the new position, and the val metrics
    are those of the new head."""
    import pandas as pd

    from xec.geometry import direction_to_angles, uvw_to_xyz
    from xec.metrics import width68

    out, _ = mae_run
    preds, summaries = {}, {}
    refit = {"tasks": ["uvwFI"], "hidden": 24, "epochs": 2, "max_events": 64}
    variants = (
        ("plain", {"tasks": []}),
        ("refit", refit),
        ("peak", {**refit, "peak": True}),
        ("solid", {**refit, "peak": True, "solid_fit": True}),
        ("blend", {**refit, "peak": True}),
    )
    for name, spec in variants:
        blend = {"enabled": name == "blend", "steps": 50}
        cfg = make_cfg(
            data,
            **{
                "train.max_train_events": 96,
                "regressor.head_refit": spec,
                "regressor.fit_blend": blend,
                "mlflow.enabled": False,
            },
        )
        summaries[name] = run_stage(
            "regressor", cfg, shards=data / "shards", out=tmp_path / name, init=str(out / "checkpoint.pt")
        )
        preds[name] = pd.read_parquet(tmp_path / name / "predictions.parquet")
    plain, new = preds["plain"], preds["refit"]
    for c in ("pred_energy", "true_u"):
        np.testing.assert_array_equal(plain[c].to_numpy(), new[c].to_numpy(), err_msg=c)
    assert not np.array_equal(plain["pred_u"].to_numpy(), new["pred_u"].to_numpy())
    # model.angle_from_position (config.yaml): the angle follows the refitted position
    theta, phi = direction_to_angles(uvw_to_xyz(new[["pred_u", "pred_v", "pred_w"]].to_numpy(np.float64)))
    np.testing.assert_allclose(new["pred_theta"], theta, atol=1e-3)
    np.testing.assert_allclose(new["pred_phi"], phi, atol=1e-3)
    assert not np.array_equal(plain["pred_theta"].to_numpy(), new["pred_theta"].to_numpy())
    val = summaries["refit"]["val"]
    assert val["val_u_mm_res"] == pytest.approx(10 * width68(new["pred_u"] - new["true_u"]))
    assert val["val_u_mm_res"] != summaries["refit"]["history"][-1]["val_u_mm_res"]  # the last epoch, before
    ck = load_checkpoint(tmp_path / "refit" / "checkpoint.pt", expected_stage="regressor")
    assert ck["model_args"]["head_hidden"] == {"uvwFI": 24}
    for state in ("model_state", "ema_state"):
        assert ck[state]["heads.uvwFI.fc1.weight"].shape[0] == 24, state
        assert ck[state]["heads.angle.fc1.weight"].shape[0] == 64, state
    model = build_model_from_checkpoint(ck)
    assert model.head_hidden["uvwFI"] == 24
    assert ck["model_args"]["peak_refit_tasks"] == [] and model.peak_mlp is None

    # head_refit.peak: the refitted head reads the window through its own refitted copy of the
    # peak MLP; the shared MLP, and so the energy, stay as trained
    peak = preds["peak"]
    np.testing.assert_array_equal(plain["pred_energy"].to_numpy(), peak["pred_energy"].to_numpy())
    assert not np.array_equal(new["pred_u"].to_numpy(), peak["pred_u"].to_numpy())
    ckp = load_checkpoint(tmp_path / "peak" / "checkpoint.pt", expected_stage="regressor")
    assert ckp["model_args"]["peak_refit_tasks"] == ["uvwFI"]
    for state in ("model_state", "ema_state"):
        assert torch.equal(ckp[state]["peak.mlp.0.weight"], ck[state]["peak.mlp.0.weight"]), state
        assert ckp[state]["peak_mlp.0.weight"].shape == ck[state]["peak.mlp.0.weight"].shape, state
        assert not torch.equal(ckp[state]["peak_mlp.0.weight"], ck[state]["peak.mlp.0.weight"]), state
    model = build_model_from_checkpoint(ckp)
    assert model.peak_refit_tasks == ("uvwFI",)
    assert summaries["peak"]["val"]["val_u_mm_res"] == pytest.approx(10 * width68(peak["pred_u"] - peak["true_u"]))

    # head_refit.solid_fit: the refitted head also reads the in-graph solid-angle fit (5 more
    # inputs); the rest of the model is the peak variant's (its export: tests/test_models_solidfit.py,
    # on simulated showers; these random events leave the fit unconverged and chaotic)
    solid = preds["solid"]
    np.testing.assert_array_equal(plain["pred_energy"].to_numpy(), solid["pred_energy"].to_numpy())
    assert not np.array_equal(peak["pred_u"].to_numpy(), solid["pred_u"].to_numpy())
    cks = load_checkpoint(tmp_path / "solid" / "checkpoint.pt", expected_stage="regressor")
    assert cks["model_args"]["solid_fit_tasks"] == ["uvwFI"]
    for state in ("model_state", "ema_state"):
        assert cks[state]["heads.uvwFI.fc1.weight"].shape[1] == ckp[state]["heads.uvwFI.fc1.weight"].shape[1] + 5
    model = build_model_from_checkpoint(cks)
    assert model.solid_fit_tasks == ("uvwFI",) and model.solid_fit is not None
    assert summaries["solid"]["val"]["val_u_mm_res"] == pytest.approx(10 * width68(solid["pred_u"] - solid["true_u"]))

    # fit_blend: the peak variant's model with u, v blended with the in-graph fit (cross-fitted on
    # val); w, energy and time unchanged, the angle follows the blended position
    blend = preds["blend"]
    for c in ("pred_energy", "pred_time", "pred_w", "sigma_energy"):  # sigma_u: calibrated on the blend
        np.testing.assert_array_equal(peak[c].to_numpy(), blend[c].to_numpy(), err_msg=c)
    assert not np.array_equal(peak["pred_v"].to_numpy(), blend["pred_v"].to_numpy())
    theta, phi = direction_to_angles(uvw_to_xyz(blend[["pred_u", "pred_v", "pred_w"]].to_numpy(np.float64)))
    np.testing.assert_allclose(blend["pred_theta"], theta, atol=1e-3)
    val = summaries["blend"]["val"]
    assert 0 < val["val_fit_blend_weight_v"] < 1
    assert val["val_fit_blend_v_mm_blend"] == pytest.approx(10 * width68(blend["pred_v"] - blend["true_v"]), rel=1e-5)
    assert val["val_fit_blend_v_mm_net"] == pytest.approx(10 * width68(peak["pred_v"] - peak["true_v"]), rel=1e-5)
    ckb = load_checkpoint(tmp_path / "blend" / "checkpoint.pt", expected_stage="regressor")
    assert ckb["model_args"]["fit_blend_hidden"] == 16
    for key in ("fit_blend.gate.0.weight", "fit_blend.gate.2.bias"):
        assert torch.equal(ckb["model_state"][key], ckb["ema_state"][key]), key
    model = build_model_from_checkpoint(ckb)
    assert model.fit_blend is not None and model.solid_fit is not None and model.solid_fit_tasks == ()


def test_regressor_in_two_phases_equals_one_run(mae_run, data, tmp_path):
    """--phase epochs then --phase finish (the pipeline's two regressor jobs) save the model and
    val predictions of one uninterrupted run; a finish with another head refit (a key only the
    finish reads) reuses the trained epochs; a finish without them, or with more epochs asked
    for than were trained, is one clear error."""
    import pandas as pd

    out, _ = mae_run
    refit = {"tasks": ["uvwFI"], "hidden": 24, "epochs": 2, "max_events": 64, "peak": True}
    over = {"train.max_train_events": 96, "regressor.epochs": 2, "regressor.head_refit": refit}
    init = str(out / "checkpoint.pt")

    def run(d, phase, **extra):
        cfg = make_cfg(data, **{**over, **extra, "mlflow.enabled": False})
        return run_stage("regressor", cfg, shards=data / "shards", out=d, init=init, phase=phase, resume="auto")

    with pytest.raises(XecError, match=r"checkpoint_trained.pt not found: --phase finish"):
        run(tmp_path / "split", "finish")
    one = run(tmp_path / "one", "all")
    epochs = run(tmp_path / "split", "epochs")
    assert epochs["epochs"] == 2 and not (tmp_path / "split" / "checkpoint.pt").exists()
    assert (tmp_path / "split" / "checkpoint_trained.pt").is_file()
    two = run(tmp_path / "split", "finish")
    assert two["val"] == one["val"] and two["steps"] == one["steps"]
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert b["model_args"] == a["model_args"] and b["epoch"] == 2
    for state in ("model_state", "ema_state"):
        for k, v in a[state].items():
            assert torch.equal(v, b[state][k]), (state, k)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "one" / "predictions.parquet"),
        pd.read_parquet(tmp_path / "split" / "predictions.parquet"),
    )
    # another refit width: the same trained epochs (no training step), a new head
    wider = run(tmp_path / "split", "finish", **{"regressor.head_refit": {**refit, "hidden": 40}})

    def losses(summary):
        return [(h["step"], h["val_loss"]) for h in summary["history"]]

    assert wider["steps"] == one["steps"] and losses(wider) == losses(one)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model_args"]["head_hidden"] == {"uvwFI": 40}
    # ... and so does the epochs phase run again (as Snakemake does when a refit key changes)
    last = tmp_path / "split" / "checkpoint_last.pt"
    mtime = last.stat().st_mtime_ns
    again = run(tmp_path / "split", "epochs", **{"regressor.head_refit": {**refit, "hidden": 40}})
    assert losses(again) == losses(one) and last.stat().st_mtime_ns == mtime  # resumed, not retrained
    with pytest.raises(XecError, match=r"trained.pt \(--resume\): made with a different config; run --phase epochs"):
        run(tmp_path / "split", "finish", **{"regressor.epochs": 3})


def test_inpainter_frozen_encoder_and_root_stream(mae_run, data):
    import uproot

    out, _ = mae_run
    cfg = make_cfg(
        data, **{"inpainter.predictions_root": True, "train.max_train_events": 64, "model.inpaint_context": True}
    )
    run_stage("inpainter", cfg, shards=data / "shards", out=data / "inpainter", init=str(out / "checkpoint.pt"))
    ck = load_checkpoint(data / "inpainter" / "checkpoint.pt", expected_stage="inpainter")
    mae_enc = _encoder_state(load_checkpoint(out / "checkpoint.pt")["ema_state"])
    for state in (ck["model_state"], ck["ema_state"]):
        enc = _encoder_state(state)
        for k, v in mae_enc.items():
            assert torch.equal(enc[k], v), k  # frozen: still exactly the MAE's encoder
    val = json.loads((data / "inpainter" / "metrics.json").read_text())["val"]
    for key in ("val_mae_npho_inner", "val_rmse_npho_outer", "val_mae_time_ns", "val_rmse_npho_phot"):
        assert np.isfinite(val[key]), key
    with uproot.open(data / "inpainter" / "predictions.root") as f:
        t = f["inpaint"]
        arr = t.arrays(["event", "sensor", "face", "truth_npho", "pred_npho", "error_npho"], library="np")
    assert t.num_entries == val["predictions_root_rows"] > 0
    assert ((arr["sensor"] >= 0) & (arr["sensor"] < 4760)).all()
    np.testing.assert_allclose(arr["error_npho"], arr["pred_npho"] - arr["truth_npho"], rtol=1e-5, atol=1e-2)


def test_inpainter_without_the_encoder_trains_rebuilds_and_exports(data):
    """model.inpaint_context false (the default, with the shower-peak context): the stage trains
    the correction alone, without --init; the checkpoint holds no encoder and rebuilds and exports
    (parity) as such."""
    from xec.deploy.export import export_checkpoint

    out = data / "inpainter_alone"
    cfg = make_cfg(data, **{"model.inpaint_context": False, "train.max_train_events": 64})
    assert cfg["model"]["inpaint_peak_context"]
    run_stage("inpainter", cfg, shards=data / "shards", out=out, init=None)
    ck = load_checkpoint(out / "checkpoint.pt", expected_stage="inpainter")
    assert ck["model"]["inpaint_context"] is False and ck["model"]["inpaint_peak_context"] is True
    assert ck["model_state"] and all(k.startswith("local.") for k in ck["model_state"])
    assert build_model_from_checkpoint(ck).encoder is None
    val = json.loads((out / "metrics.json").read_text())["val"]
    assert np.isfinite(val["val_mae_npho_inner"]) and np.isfinite(val["val_mae_time_ns"])
    report = export_checkpoint(
        str(out / "checkpoint.pt"), str(out / "model.onnx"), val_shards=str(data / "shards" / "val" / "manifest.json")
    )
    assert report["passed"]


# ---------------------------------------------------------------- bad input
def test_missing_mae_checkpoint(data):
    with pytest.raises(XecError, match="nope.pt: checkpoint not found"):
        run_stage("inpainter", make_cfg(data), shards=data / "shards", out=data / "x", init=str(data / "nope.pt"))


def test_checkpoint_of_another_stage(mae_run, data, tmp_path):
    out, _ = mae_run
    ck = load_checkpoint(out / "checkpoint.pt")
    ck["stage"] = "inpainter"
    save_checkpoint(tmp_path / "inp.pt", ck)
    with pytest.raises(XecError, match="inp.pt: checkpoint of stage 'inpainter', expected 'mae'"):
        run_stage(
            "regressor", make_cfg(data), shards=data / "shards", out=tmp_path / "r", init=str(tmp_path / "inp.pt")
        )


def test_checkpoint_of_another_normalization_preset(mae_run, data):
    from xec.normalization import get_normalizer

    out, _ = mae_run
    with pytest.raises(XecError, match="normalization mismatch"):
        load_checkpoint(out / "checkpoint.pt", expected_stage="mae", expected_normalizer=get_normalizer("legacy"))


def test_manifest_preset_differs_from_config(data, tmp_path):
    cfg = make_cfg(data, **{"normalization.preset": "legacy"})
    with pytest.raises(XecError, match="normalization mismatch.*manifest"):
        run_stage("mae", cfg, shards=data / "shards", out=tmp_path / "m")


def test_mae_checkpoint_of_another_model_preset(mae_run, data, tmp_path):
    out, _ = mae_run
    ck = load_checkpoint(out / "checkpoint.pt")
    ck["model"] = {**ck["model"], "preset": "base", "token_dim": 256}
    save_checkpoint(tmp_path / "base.pt", ck)
    with pytest.raises(XecError, match="model configuration differs.*'base' vs 'tiny'"):
        run_stage(
            "inpainter", make_cfg(data), shards=data / "shards", out=tmp_path / "i", init=str(tmp_path / "base.pt")
        )


def test_mae_initializes_a_regressor_with_other_heads(mae_run, data, tmp_path):
    """Only the encoder keys must agree with the MAE: another regressor head (peak window
    width) fine-tunes from it; another encoder width is an error naming the key."""
    out, _ = mae_run
    cfg = make_cfg(
        data,
        **{"model.peak_hidden": 32, "train.max_train_events": 32, "train.max_val_events": 32, "mlflow.enabled": False},
    )
    summary = run_stage("regressor", cfg, shards=data / "shards", out=tmp_path / "r", init=str(out / "checkpoint.pt"))
    assert summary["epochs"] == 1
    with pytest.raises(XecError, match="token_dim: checkpoint 48 vs config 64"):
        run_stage(
            "regressor",
            make_cfg(data, **{"model.token_dim": 64}),
            shards=data / "shards",
            out=tmp_path / "r2",
            init=str(out / "checkpoint.pt"),
        )


def test_resume_with_another_model_preset(mae_run, data, tmp_path):
    import shutil

    out, _ = mae_run
    d = tmp_path / "mae"
    d.mkdir()
    ck = load_checkpoint(out / "checkpoint_last.pt")
    ck["model"] = {**ck["model"], "preset": "base", "token_dim": 256}
    save_checkpoint(d / "checkpoint_last.pt", ck)
    with pytest.raises(XecError, match=r"checkpoint_last.pt \(--resume\): model configuration differs"):
        run_stage("mae", make_cfg(data), shards=data / "shards", out=d, resume=True)
    # --resume auto (the Snakemake rules) starts over instead
    summary = run_stage(
        "mae",
        make_cfg(data, **{"train.max_train_events": 32, "train.max_val_events": 32, "mlflow.enabled": False}),
        shards=data / "shards",
        out=d,
        resume="auto",
    )
    assert summary["epochs"] == 1
    shutil.rmtree(d)


# ---------------------------------------------------------------- resume after SIGKILL (real stage)
@pytest.mark.slow
def test_mae_cli_resume_after_sigkill_matches_uninterrupted(data, tmp_path):
    cfg = make_cfg(
        data, **{"mae.epochs": 2, "mlflow.enabled": False, "train.max_train_events": 64, "train.max_val_events": 32}
    )
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, XEC_NO_PROGRESS="1")

    def cmd(out, *extra):
        return [
            sys.executable,
            "-m",
            "xec.cli",
            "train",
            "mae",
            "--config",
            str(cfg_path),
            "--shards",
            str(data / "shards"),
            "--out",
            str(out),
            *extra,
        ]

    ref = subprocess.run(cmd(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint_last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "checkpoint.pt").exists()
    assert load_checkpoint(out / "checkpoint_last.pt")["epoch"] == 1
    res = subprocess.run(cmd(out, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed mae" in res.stderr
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for k, v in a["val"].items():
        assert b["val"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k  # bit-identical in practice on CPU
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (tmp_path / "ref", out))
    for k, v in ca["ema_state"].items():
        torch.testing.assert_close(cb["ema_state"][k], v, rtol=0, atol=1e-6)


def test_inpainter_face_balance_weighs_every_face_alike():
    """inpainter.face_balance: 0 -> every sensor 1; 1 -> each face the same total weight, mean 1.
    In the loss, two hidden sensors of different faces then count alike in the npho terms
    however many sensors each face has, and the time term stays unweighted."""
    from xec.geometry import get_geometry
    from xec.normalization import normalizer_from_config
    from xec.train.inpainter import InpainterStage, face_balance_weights

    faces = np.asarray(get_geometry().face)
    assert torch.equal(face_balance_weights(0.0), torch.ones(len(faces)))
    w = face_balance_weights(1.0).double().numpy()
    totals = [w[faces == f].sum() for f in np.unique(faces)]
    assert w.mean() == pytest.approx(1.0) and max(totals) == pytest.approx(min(totals), rel=1e-6)
    inner, pmt = int(np.flatnonzero(faces == 0)[0]), int(np.flatnonzero(faces == faces.max())[0])
    assert w[pmt] / w[inner] == pytest.approx((faces == 0).sum() / (faces == faces.max()).sum(), rel=1e-5)

    cfg = load_config(None, overrides={"inpainter.relative_loss_weight": 1.0, "inpainter.face_balance": 1.0})
    norm = normalizer_from_config(cfg)
    stage = InpainterStage(cfg, norm)
    true = np.full((1, len(faces)), 1000.0)
    x = torch.from_numpy(np.stack(norm.normalize(true, np.full(true.shape, 3e-8)), -1))
    est = true.copy()
    est[0, inner], est[0, pmt] = 500.0, 1100.0  # -50 % and +10 %
    pred = x.clone()
    pred[..., 0] = torch.from_numpy(norm.npho_forward(est).astype(np.float32))
    pred[0, inner, 1] += 0.3  # a time error on the inner sensor only
    mask = torch.zeros(1, len(faces), dtype=torch.bool)
    mask[0, [inner, pmt]] = True
    _, logs = stage._loss(pred, x, mask)
    rel = (0.5 * w[inner] + 0.1 * w[pmt]) / (w[inner] + w[pmt])  # the PMT's error dominates
    assert float(logs["rel_mae_npho_bright"]) == pytest.approx(rel, rel=1e-4) and rel < 0.15
    plain = InpainterStage(load_config(None, overrides={"inpainter.face_balance": 0.0}), norm)
    _, logs0 = plain._loss(pred, x, mask)
    assert float(logs0["loss_time"]) > 0
    assert float(logs["loss_time"]) == pytest.approx(float(logs0["loss_time"]), rel=1e-6)
    assert float(logs0["rel_mae_npho_bright"]) == pytest.approx(0.3, rel=1e-4)


def test_inpainter_relative_loss_term_sees_the_bright_hidden_sensors():
    """relative_loss_weight adds the mean |pred - true| / true (photons) of the hidden sensors
    with true npho >= the threshold (100): here 2 of them, off by -50 % and +10 %;
    log_loss_weight the mean |log(1 + pred) - log(1 + true)| of every hidden one."""
    from xec.normalization import normalizer_from_config
    from xec.train.inpainter import InpainterStage

    cfg = load_config(None, overrides={"inpainter.relative_loss_weight": 2.0, "inpainter.log_loss_weight": 1.5})
    norm = normalizer_from_config(cfg)
    stage = InpainterStage(cfg, norm)
    true = np.array([[2500.0, 300.0, 50.0, 1000.0]])  # photons; the 4th is not hidden
    est = np.array([[1250.0, 330.0, 80.0, 0.0]])
    x = torch.from_numpy(np.stack(norm.normalize(true, np.full(true.shape, 3e-8)), -1))
    pred = x.clone()
    pred[..., 0] = torch.from_numpy(norm.npho_forward(est).astype(np.float32))
    mask = torch.tensor([[True, True, True, False]])
    loss, logs = stage._loss(pred, x, mask)
    assert float(logs["rel_mae_npho_bright"]) == pytest.approx((0.5 + 0.1) / 2, rel=1e-4)
    # log_loss_weight: the mean |log(1 + est) - log(1 + true)| of all three hidden sensors
    log_err = np.abs(np.log1p(est) - np.log1p(true))[0, :3].mean()
    assert float(logs["mae_log_npho"]) == pytest.approx(log_err, rel=1e-4)
    base = float(logs["loss_npho"] + logs["loss_time"])
    assert float(loss) == pytest.approx(base + 2.0 * 0.3 + 1.5 * log_err, rel=1e-4)
