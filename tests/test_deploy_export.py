"""`xec export`: real tiny regressor/inpainter checkpoints -> ONNX, parity vs PyTorch on
val-shard events at two batch sizes, EMA weights, metadata, failure modes, and the exported
models running through `xec infer`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from helpers_rootfiles import write_root_file

from xec.cli import main as cli_main
from xec.data.loader import ShardLoader
from xec.data.shards import ShardSettings, write_shards
from xec.deploy.export import export_checkpoint, parity_path
from xec.deploy.infer import run_inference
from xec.deploy.onnx_meta import read_metadata
from xec.deploy.runtime import make_session
from xec.errors import XecError
from xec.models import sigma_calibration as SC
from xec.normalization import get_normalizer
from xec.targets import TargetStandardizer

TASKS = ("angle", "energy", "timing", "uvwFI")
TS = {
    "angle": {"mean": [90.0, -180.0], "std": [15.0, 20.0]},
    "energy": {"mean": [0.04], "std": [0.012]},
    "timing": {"mean": [0.1], "std": [0.5]},
    "uvwFI": {"mean": [0.0, 0.0, 5.0], "std": [15.0, 40.0, 6.0]},
}


SIGMA_TASKS = ("energy", "timing", "uvwFI")
# energy: a three-knot monotone map around the random heads' sigma (~0.012 GeV); the others in
# the older one-scale-per-column form
SIGMA_CAL = {
    "energy": {"log_sigma": [[-6.0, -4.4, -3.0]], "log_factor": [[0.5, 0.0, 0.3]]},
    "timing": [0.8],
    "uvwFI": [1.0, 1.2, 2.0],
}


def _spec(stage: str, sigma: bool = False) -> dict:
    from xec.models.presets import get_preset

    spec = {
        "stage": stage,
        "model": {"preset": "tiny", **get_preset("tiny").to_dict()},
        "normalization": get_normalizer("meg2").to_dict(),
        "tasks": [],
        "target_standardization": None,
        "model_args": {"freeze_encoder": False},
    }  # the inpainter's constructor options, as training saves them
    if stage == "inpainter":  # with the sensor-level correction, as config.yaml trains it
        spec["model"]["inpaint_local_neighbours"] = 8
    if stage == "regressor":
        args = {"tasks": list(TASKS), "nll_tasks": [], **({"sigma_tasks": list(SIGMA_TASKS)} if sigma else {})}
        spec.update(tasks=list(TASKS), target_standardization=TS, model_args=args)
        if sigma:
            spec["sigma_calibration"] = SIGMA_CAL
    return spec


def _save_ckpt(path: Path, stage: str, sigma: bool = False) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A checkpoint in the documented payload format with distinct raw and EMA weights
    (``sigma``: a regressor with uncertainty heads and a sigma calibration)."""
    from xec.train.checkpoint import save_checkpoint
    from xec.train.stages import build_stage_model

    spec = _spec(stage, sigma)
    torch.manual_seed(3)
    raw = build_stage_model(spec).eval()
    ema = build_stage_model(spec).eval()
    g = torch.Generator().manual_seed(4)
    if getattr(raw, "aggregates", None) is not None:
        # a trained regressor's light-sum scale (set on its first batch): energies of O(0.05 GeV)
        raw.aggregates.energy_log_scale.data.fill_(-16.0)
        raw.aggregates.energy_scale_set.fill_(True)
    ema.load_state_dict(raw.state_dict())
    with torch.no_grad():  # EMA = raw + noise: an export that took the raw weights would fail the tests
        for p in ema.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    payload = {
        **spec,
        "model_state": raw.state_dict(),
        "ema_state": ema.state_dict(),
        "optimizer": {},
        "scheduler": {},
        "epoch": 1,
        "step": 10,
        "config": {},
        "rng": {},
        "metrics": {},
        "xec_version": "0.1.0",
    }
    save_checkpoint(path, payload)
    return path, raw, ema


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    root = write_root_file(d / "val.root", n_events=48, seed=11, dead_fraction=0.02)
    settings = ShardSettings(normalizer=get_normalizer("meg2"), events_per_shard=32, block_size=16, tasks=TASKS)
    write_shards([str(root)], d / "shards", "val", settings)
    reg = _save_ckpt(d / "reg.pt", "regressor")
    inp = _save_ckpt(d / "inp.pt", "inpainter")
    return {"dir": d, "root": root, "manifest": d / "shards" / "manifest.json", "reg": reg, "inp": inp}


@pytest.fixture(scope="module")
def exported(setup):
    """Each model exported once: the regressor through the API, the inpainter through the CLI."""
    d = setup["dir"]
    reg, inp, log = d / "reg.onnx", d / "inp.onnx", d / "export_inp.log"
    report = export_checkpoint(
        str(setup["reg"][0]), str(reg), val_shards=str(setup["manifest"]), parity_events=40, parity_batch_size=16
    )
    rc = cli_main(
        [
            "export",
            "--checkpoint",
            str(setup["inp"][0]),
            "--out",
            str(inp),
            "--val-shards",
            str(setup["manifest"]),
            "--log",
            str(log),
        ]
    )
    assert rc == 0
    return {"reg": reg, "reg_report": report, "inp": inp, "inp_log": log}


def _val_events(manifest: Path, n: int) -> np.ndarray:
    loader = ShardLoader(manifest, batch_size=n, tasks=(), shuffle=False, max_events=n)
    return next(iter(loader))[0].numpy()


def _physical(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """The regressor's physical-unit output, computed independently of the export wrapper."""
    std = TargetStandardizer.from_dict(TS)
    with torch.no_grad():
        z = model(torch.from_numpy(x))
    return {t: std.destandardize(t, z[t].numpy()) for t in TASKS}


def test_regressor_export_parity_ema_and_metadata(setup, exported):
    out, report = exported["reg"], exported["reg_report"]
    assert report["passed"] and report["events"] == 40 and report["batch_sizes"] == [1, 8, 16]
    assert 0 <= report["max_abs"] < 1e-3 and report["max_rel"] < 1e-4
    side = json.loads(parity_path(out).read_text())
    assert side["passed"] and side["outputs"].keys() == {f"output_{t}" for t in TASKS}
    assert side["max_abs"] == report["max_abs"] and side["rtol"] == 1e-4 and side["atol"] == 1e-4
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left

    meta = read_metadata(out, expected_stage="regressor")
    assert meta.tasks == TASKS and meta.units["energy"] == "GeV" and meta.units["angle"] == "deg"
    assert meta.normalizer == get_normalizer("meg2") and meta.target_standardization == TS
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [4760, 2]

    # ONNX (physical units) == de-standardized EMA model, at two batch sizes; != the raw weights
    _, raw, ema = setup["reg"]
    sess = make_session(out, "cpu")
    x = _val_events(setup["manifest"], 6)
    ref, ref_raw = _physical(ema, x), _physical(raw, x)
    for xb, sl in ((x, slice(None)), (x[2:3], slice(2, 3))):
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": xb})))
        for t in TASKS:
            np.testing.assert_allclose(got[f"output_{t}"], ref[t][sl], rtol=1e-4, atol=1e-5)
    assert np.abs(got["output_angle"] - ref_raw["angle"][2:3]).max() > 1e-3


def test_inpainter_export_parity_via_cli(setup, exported):
    out = exported["inp"]
    text = exported["inp_log"].read_text()
    assert "parity output: max abs" in text and "inpainter exported" in text
    meta = read_metadata(out, expected_stage="inpainter")
    assert meta.inputs == ("input", "mask") and meta.outputs == ("output",)
    side = json.loads(parity_path(out).read_text())
    assert side["passed"] and side["events"] == 48 and side["batch_sizes"] == [1, 48]

    _, _, ema = setup["inp"]
    x = _val_events(setup["manifest"], 5)
    mask = np.zeros(x.shape[:2], np.float32)
    mask[:, ::7] = 1.0
    mask[x[..., 0] == -1.0] = 1.0
    sess = make_session(out, "cpu")
    for sl in (slice(None), slice(1, 2)):
        (got,) = sess.run(None, {"input": x[sl], "mask": mask[sl]})
        with torch.no_grad():
            ref = ema(torch.from_numpy(x[sl]), torch.from_numpy(mask[sl] > 0.5)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        keep = mask[sl] == 0
        np.testing.assert_allclose(got[keep], x[sl][keep], atol=1e-6)  # unmasked sensors pass through
        assert np.abs(got[~keep] - x[sl][~keep]).max() > 1e-3  # masked ones are predicted


@pytest.mark.slow
def test_parity_failure_leaves_no_output(setup, tmp_path, monkeypatch):
    import xec.deploy.export as export

    original = export.export_graph

    class Off(torch.nn.Module):  # an exporter bug: the graph is off by 1e-3 in every output
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, x):
            return tuple(o + 1e-3 for o in self.g(x))

    monkeypatch.setattr(export, "export_graph", lambda g, *a, **k: original(Off(g), *a, **k))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"older model")
    with pytest.raises(XecError, match=r"reg\.pt: ONNX vs PyTorch parity failed.*max abs 0\.001"):
        export_checkpoint(
            str(setup["reg"][0]),
            str(out),
            val_shards=None,
            parity_events=8,  # synthetic events
            parity_batch_size=4,
        )
    assert out.read_bytes() == b"older model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_parity_forgives_pytorch_float32_rounding(setup, tmp_path, monkeypatch):
    """Where PyTorch's own float32 result is off and ONNX Runtime agrees with the graph evaluated
    in float64, the export passes and counts the events (float32_reference_events); an export
    that is off in every precision still fails (test_parity_failure_leaves_no_output)."""
    import json

    import xec.deploy.export as export

    original = export.check_parity

    class Float32Off(torch.nn.Module):  # the reference graph's float32 rounding, exaggerated
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, x):
            return tuple(o + 1e-3 if o.dtype == torch.float32 else o for o in self.g(x))

    monkeypatch.setattr(export, "check_parity", lambda path, g, *a, **k: original(path, Float32Off(g), *a, **k))
    out = tmp_path / "model.onnx"
    export_checkpoint(str(setup["reg"][0]), str(out), val_shards=None, parity_events=8, parity_batch_size=4)
    report = json.loads(export.parity_path(out).read_text())
    assert report["passed"] and report["float32_reference_events"] == 8 + 2  # the batches and two single events
    assert report["unstable_events"] == 0


def test_parity_of_regressor_outputs_is_judged_in_standardized_units():
    """Float32 rounding of a 60 cm position (1.4e-4 cm here) must not fail an atol of 1e-5 that
    is meant for the network's standardized outputs; a real error of 1e-3 standard deviations must."""
    from xec.deploy.export import _Errors

    ref = np.array([[60.0, -0.2, 3.0]], dtype=np.float32)
    plain = _Errors(["output_uvwFI"], rtol=1e-4, atol=1e-5)
    plain.add("output_uvwFI", ref + np.float32(1.4e-4), ref)
    assert not plain.ok
    std = {"output_uvwFI": (np.array([0.0, 0.0, 3.5]), np.array([25.6, 25.6, 25.6]))}
    scaled = _Errors(["output_uvwFI"], rtol=1e-4, atol=1e-5, standardization=std)
    scaled.add("output_uvwFI", ref + np.float32(1.4e-4), ref)
    assert scaled.ok and scaled.stats["output_uvwFI"]["max_abs"] == pytest.approx(1.4e-4, rel=0.1)
    wrong = _Errors(["output_uvwFI"], rtol=1e-4, atol=1e-5, standardization=std)
    wrong.add("output_uvwFI", ref + np.float32(25.6e-3), ref)
    assert not wrong.ok


def test_export_bad_inputs(setup, tmp_path):
    from xec.train.checkpoint import save_checkpoint

    out = tmp_path / "m.onnx"
    with pytest.raises(XecError, match="nope.pt: checkpoint not found"):
        export_checkpoint(str(tmp_path / "nope.pt"), str(out))
    save_checkpoint(tmp_path / "mae.pt", {"stage": "mae", "model_state": {}})
    with pytest.raises(XecError, match=r"mae\.pt: checkpoint of stage 'mae'"):
        export_checkpoint(str(tmp_path / "mae.pt"), str(out))
    legacy = write_shards(
        [str(setup["root"])],
        tmp_path / "legacy",
        "val",
        ShardSettings(normalizer=get_normalizer("legacy"), tasks=TASKS),
    )
    assert legacy["events"] == 48
    with pytest.raises(XecError, match="normalization mismatch.*legacy"):
        export_checkpoint(
            str(setup["reg"][0]), str(out), val_shards=str(tmp_path / "legacy" / "manifest.json"), parity_events=8
        )
    assert not out.exists() and not parity_path(out).exists()


@pytest.mark.slow
def test_exported_models_in_infer(setup, exported, tmp_path):
    reg, inp = exported["reg"], exported["inp"]
    data = write_root_file(tmp_path / "real.root", n_events=30, seed=5, dead_fraction=0.0002)
    run_inference(str(reg), [str(data)], str(tmp_path / "plain.root"), batch_size=8)
    run_inference(str(reg), [str(data)], str(tmp_path / "filled.root"), inpainter=str(inp), batch_size=8)
    plain, filled = pd.read_parquet(tmp_path / "plain.parquet"), pd.read_parquet(tmp_path / "filled.parquet")
    dead = plain["n_dead"].to_numpy() > 0
    assert 0 < dead.sum() < len(dead)
    diff = np.abs(plain["pred_energy_energy"] - filled["pred_energy_energy"]).to_numpy()
    assert (diff[dead] > 0).all() and (diff[~dead] == 0).all()
    # the physical-unit predictions match the checkpoint's EMA regressor
    x = get_normalizer("meg2").normalize_events(*_read_sensors(data))
    ref = _physical(setup["reg"][2], x)
    np.testing.assert_allclose(plain["pred_uvwFI_w"], ref["uvwFI"][:, 2], rtol=1e-4, atol=1e-4)


def test_sigma_outputs_through_export_and_infer(setup, tmp_path):
    """A regressor with uncertainty heads: output_<task>_sigma after the predictions, in the
    task's physical units (calibration inside the graph), parity checked, positive, equal to
    the EMA model's; xec infer writes them as sigma_<task>_<col> in ROOT and parquet."""
    import uproot

    ckpt, _, ema = _save_ckpt(tmp_path / "reg_sigma.pt", "regressor", sigma=True)
    out = tmp_path / "reg_sigma.onnx"
    report = export_checkpoint(
        str(ckpt), str(out), val_shards=str(setup["manifest"]), parity_events=16, parity_batch_size=8
    )
    names = [f"output_{t}" for t in TASKS] + [f"output_{t}_sigma" for t in SIGMA_TASKS]
    assert report["passed"] and list(report["outputs"]) == names
    meta = read_metadata(out, expected_stage="regressor")
    assert meta.outputs == tuple(names) and meta.sigma_tasks == SIGMA_TASKS
    assert meta.units["timing"] == "ns" and meta.sigma_calibration.keys() == SIGMA_CAL.keys()
    for t, cal in SIGMA_CAL.items():
        assert meta.sigma_calibration[t] == SC.normalize(cal, len(TS[t]["mean"]), t)
    x = _val_events(setup["manifest"], 5)
    got = dict(
        zip([o.name for o in make_session(out, "cpu").get_outputs()], make_session(out, "cpu").run(None, {"input": x}))
    )
    with torch.no_grad():
        ref = ema.forward_physical(torch.from_numpy(x))
    for t in SIGMA_TASKS:
        sig = got[f"output_{t}_sigma"]
        assert sig.shape == (5, len(ref[t][0])) and (sig > 0).all()
        np.testing.assert_allclose(sig, ref[f"{t}_sigma"].numpy(), rtol=1e-4, atol=1e-7)
    with torch.no_grad():  # the calibration scale is in the graph: sigma = exp(logvar / 2) * std * scale
        logvar = ema(torch.from_numpy(x))
    std = TargetStandardizer.from_dict(TS).std
    raw_u = np.exp(0.5 * logvar["uvwFI_logvar"].numpy()) * std["uvwFI"]
    np.testing.assert_allclose(got["output_uvwFI_sigma"], raw_u * SIGMA_CAL["uvwFI"], rtol=1e-4)
    raw_e = np.exp(0.5 * logvar["energy_logvar"].numpy()) * std["energy"]
    expected_e = SC.apply_numpy(SC.normalize(SIGMA_CAL["energy"], 1, "energy"), raw_e)
    assert not np.allclose(expected_e, raw_e, rtol=0.05)  # the map does something at these sigmas
    np.testing.assert_allclose(got["output_energy_sigma"], expected_e, rtol=1e-4)

    data = write_root_file(tmp_path / "real.root", n_events=12, seed=5)
    run_inference(str(out), [str(data)], str(tmp_path / "inf.root"), batch_size=8)
    pq = pd.read_parquet(tmp_path / "inf.parquet")
    tree = uproot.open(tmp_path / "inf.root")["tree"].arrays(library="pd")
    cols = ["sigma_energy_energy", "sigma_timing_time", "sigma_uvwFI_u", "sigma_uvwFI_v", "sigma_uvwFI_w"]
    for c in cols:
        assert c in pq.columns and c in tree.columns and (pq[c] > 0).all(), c
        np.testing.assert_array_equal(pq[c].to_numpy(), tree[c].to_numpy())
    assert not [c for c in pq.columns if c.startswith("sigma_angle")]
    xs = get_normalizer("meg2").normalize_events(*_read_sensors(data))
    with torch.no_grad():
        ref = ema.forward_physical(torch.from_numpy(xs))
    np.testing.assert_allclose(pq["sigma_timing_time"], ref["timing_sigma"][:, 0].numpy(), rtol=1e-4)


def _read_sensors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import uproot

    arrays = uproot.open(path)["tree"].arrays(["npho", "relative_time"], library="np")
    return np.stack(arrays["npho"]), np.stack(arrays["relative_time"])


def test_raw_unit_inpainter_parity_passthrough_and_metadata(setup, exported, tmp_path):
    """`xec export --raw-units`: raw npho / relative_time in and out, normalization inside the
    graph; unmasked live sensors bit-exact; the filled ones as the normalized path fills them."""
    out = tmp_path / "raw.onnx"
    report = export_checkpoint(
        str(setup["inp"][0]), str(out), val_shards=str(setup["manifest"]), parity_events=16, raw_units=True
    )
    assert report["passed"] and report["passthrough_exact"] and report["io_units"] == "raw"
    meta = read_metadata(out, expected_stage="inpainter")
    assert meta.io_units == "raw" and meta.inputs == ("npho", "relative_time", "mask")
    assert meta.outputs == ("output_npho", "output_relative_time") and "bit-exactly" in meta.description
    assert json.loads(parity_path(out).read_text())["passthrough_exact"]

    npho, time = (a[:6].astype(np.float32) for a in _read_sensors(setup["root"]))
    norm = get_normalizer("meg2")
    dead = npho > 9e9
    mask = np.zeros(npho.shape, np.float32)
    mask[:, ::11] = 1.0
    got_n, got_t = make_session(out, "cpu").run(None, {"npho": npho, "relative_time": time, "mask": mask})
    keep = (mask == 0) & ~dead
    assert np.array_equal(got_n[keep], npho[keep]) and np.array_equal(got_t[keep], time[keep])
    # the reference: numpy normalization, the normalized EMA inpainter, numpy inverse
    x = norm.normalize_events(npho, time)
    with torch.no_grad():
        ref = setup["inp"][2](torch.from_numpy(x), torch.from_numpy((mask > 0.5) | dead)).numpy()
    fill = ~keep
    ref_n = norm.denormalize_npho(ref[..., 0])[fill]
    np.testing.assert_allclose(got_n[fill], ref_n, rtol=1e-3, atol=1e-2)
    ref_t = np.nan_to_num(norm.denormalize_time(ref[..., 1]), nan=1e10)[fill]
    has_t = ref_t < 9e9
    np.testing.assert_allclose(got_t[fill][has_t], ref_t[has_t], rtol=1e-4, atol=1e-12)
    assert np.all(got_t[fill][~has_t] == np.float32(1e10))
    # xec infer takes only the normalized export; a regressor has no raw-unit form
    with pytest.raises(XecError, match="raw-unit inpainter"):
        run_inference(str(exported["reg"]), [str(setup["root"])], str(tmp_path / "x.root"), inpainter=str(out))
    with pytest.raises(XecError, match="--raw-units exports an inpainter"):
        export_checkpoint(str(setup["reg"][0]), str(tmp_path / "r.onnx"), raw_units=True)


def test_time_threshold_flips_are_counted_not_failed():
    """A filled npho exactly at the time threshold may get a time in PyTorch and none in ONNX
    Runtime (float32 rounding): counted and forgiven; a flip away from the threshold is kept."""
    from xec.deploy.export import _threshold_flips
    from xec.deploy.onnx_meta import inpainter_metadata

    norm = get_normalizer("meg2")
    meta = inpainter_metadata(norm, {})
    thr = float(norm.npho_forward(np.float64(norm.npho_threshold)))
    ref = np.array([[[thr, 0.5], [0.9, 0.4], [0.3, 0.2]]], np.float32)
    got = ref.copy()
    got[0, 0, 1] = got[0, 1, 1] = norm.sentinel  # no time: at the threshold, and far above it
    out = [got]
    assert _threshold_flips(meta, out, [ref], rtol=1e-4, atol=1e-4) == 1
    assert out[0][0, 0, 1] == ref[0, 0, 1] and out[0][0, 1, 1] == np.float32(norm.sentinel)


def test_ill_conditioned_events_are_told_from_export_errors():
    """An event on a discontinuity of the network (here a step in the brightest sensor's value,
    like the peak window's argmax between two equal sensors) moves in PyTorch alone under 1e-6
    input rounding: counted as unstable. A smooth model whose ONNX output is off is not."""
    from xec.deploy.export import _unstable

    class Step(torch.nn.Module):
        def forward(self, x):
            return (x[..., 0].amax(1, keepdim=True) > 0.5).float(), x[..., 0].mean(1, keepdim=True)

    x = np.full((3, 10, 2), 0.2, np.float32)
    x[0, 3, 0] = 0.5  # on the step: 1e-6 rounding decides the side
    x[1, 3, 0] = 0.9
    x[2, 4, 0] = -1.0  # a sentinel sensor stays untouched
    with torch.no_grad():
        ref = [o.numpy() for o in Step()(torch.from_numpy(x))]
    names, std = ("output_a", "output_b"), {}
    deviation = np.array([1.0, 1.0, 1e-3])  # what ONNX Runtime would have differed by
    rng = np.random.default_rng(0)
    ill = _unstable(Step(), x, ref, deviation, names, std, sentinel=-1.0, rng=rng, draws=8)
    assert ill.tolist() == [True, False, False]
