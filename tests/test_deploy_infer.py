"""`xec infer`: streaming ONNX inference on ROOT files, its outputs and its bad-input errors.

The models here are small hand-written torch modules exported with the xec metadata, so the
expected predictions can be computed exactly in numpy; the parity of the real exported
networks is tested in test_deploy_export.py."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import uproot

from xec.cli import main as cli_main
from xec.deploy.infer import run_inference
from xec.deploy.onnx_meta import inpainter_metadata, read_metadata, regressor_metadata, set_metadata, software_versions
from xec.errors import XecError
from xec.geometry import N_SENSORS
from xec.metrics import opening_angle_deg
from xec.normalization import get_normalizer

TASKS = ("angle", "energy", "timing", "uvwFI")
N_EVENTS = 150


class _MeanRegressor(torch.nn.Module):
    """Outputs fixed affine functions of the per-event mean npho_n and time_n."""

    def forward(self, x):
        m = x.mean(dim=1)  # (B, 2)
        a, b = m[:, :1], m[:, 1:]
        return (
            torch.cat([60.0 + 10.0 * a, -170.0 + 5.0 * b], 1),
            0.05 * a + 0.01,
            b - 2.0,
            torch.cat([a, b, a * b], 1),
        )


class _ConstantInpainter(torch.nn.Module):
    def forward(self, x, mask):
        m = (mask > 0.5).to(x.dtype).unsqueeze(-1)
        return x * (1.0 - m) + 0.5 * m


def _reference_preds(x: np.ndarray) -> dict[str, np.ndarray]:
    m = x.astype(np.float64).mean(axis=1)
    a, b = m[:, :1], m[:, 1:]
    return {
        "angle": np.concatenate([60 + 10 * a, -170 + 5 * b], 1),
        "energy": 0.05 * a + 0.01,
        "timing": b - 2.0,
        "uvwFI": np.concatenate([a, b, a * b], 1),
    }


def _export(module: torch.nn.Module, path: Path, meta, with_meta: bool = True) -> Path:
    import onnx

    inputs = (
        (torch.zeros(2, N_SENSORS, 2),)
        if meta.stage == "regressor"
        else (torch.zeros(2, N_SENSORS, 2), torch.zeros(2, N_SENSORS))
    )
    axes = {name: {0: "batch"} for name in (*meta.inputs, *meta.outputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(meta.inputs),
            output_names=list(meta.outputs),
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    if with_meta:
        model = onnx.load(str(path))
        set_metadata(model, meta)
        onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    norm = get_normalizer("meg2")
    reg_meta = regressor_metadata(norm, TASKS, None, software_versions(17))
    inp_meta = inpainter_metadata(norm, software_versions(17))
    return {
        "regressor": _export(_MeanRegressor(), d / "reg.onnx", reg_meta),
        "inpainter": _export(_ConstantInpainter(), d / "inp.onnx", inp_meta),
        "bare": _export(_MeanRegressor(), d / "bare.onnx", reg_meta, with_meta=False),
        "legacy": _export(
            _MeanRegressor(),
            d / "legacy.onnx",
            regressor_metadata(get_normalizer("legacy"), TASKS, None, software_versions(17)),
        ),
        "legacy_inp": _export(
            _ConstantInpainter(),
            d / "legacy_inp.onnx",
            inpainter_metadata(get_normalizer("legacy"), software_versions(17)),
        ),
    }


def _events(n: int, seed: int, n_sensors: int = N_SENSORS, dead_fraction: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    npho = rng.exponential(400.0, size=(n, n_sensors)).astype(np.float32)
    time = rng.normal(2e-8, 5e-9, size=(n, n_sensors)).astype(np.float32)
    dead = rng.random((n, n_sensors)) < dead_fraction
    dead[: n // 3] = False  # a third of the events without dead sensors
    npho[dead] = 1e10
    time[dead] = 1e10
    return {
        "npho": npho,
        "relative_time": time,
        "run": np.full(n, 7, np.int32),
        "event": np.arange(100, 100 + n, dtype=np.int32),
        "emiAng": np.stack([rng.uniform(60, 120, n), rng.uniform(-240, -120, n)], 1).astype(np.float32),
        "energyTruth": np.full(n, 0.0528, np.float32),
        "timeTruth": rng.normal(0, 1, n).astype(np.float32),
        "uvwTruth": rng.normal(0, 10, (n, 3)).astype(np.float32),
    }


def _write_root(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with uproot.recreate(path) as f:
        types = {k: np.dtype((v.dtype, v.shape[1:])) if v.ndim > 1 else v.dtype for k, v in arrays.items()}
        f.mktree("tree", types)
        if len(next(iter(arrays.values()))):
            f["tree"].extend(arrays)
    return path


@pytest.fixture(scope="module")
def root_file(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = _events(N_EVENTS, seed=1)
    return _write_root(tmp_path_factory.mktemp("data") / "realdata.root", arrays), arrays


def _read_root(path: Path) -> pd.DataFrame:
    return uproot.open(path)["tree"].arrays(library="pd")


def test_outputs_match_numpy_reference(models, root_file, tmp_path):
    path, arrays = root_file
    out = tmp_path / "inf.root"
    stats = run_inference(str(models["regressor"]), [str(path)], str(out), chunk_size=64, batch_size=7)
    assert stats["events"] == N_EVENTS and stats["events_per_s"] > 0
    df = pd.read_parquet(tmp_path / "inf.parquet")
    root = _read_root(out)
    assert list(root.columns) == list(df.columns)
    np.testing.assert_array_equal(root.to_numpy(), df.to_numpy())
    assert df["run"].dtype == np.int64 and (df["run"] == 7).all()
    np.testing.assert_array_equal(df["event"], arrays["event"])

    x = get_normalizer("meg2").normalize_events(arrays["npho"], arrays["relative_time"])
    ref = _reference_preds(x)
    for task, cols in {
        "angle": ("theta", "phi"),
        "energy": ("energy",),
        "timing": ("time",),
        "uvwFI": ("u", "v", "w"),
    }.items():
        for j, col in enumerate(cols):
            np.testing.assert_allclose(df[f"pred_{task}_{col}"], ref[task][:, j], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(df["true_angle_theta"], arrays["emiAng"][:, 0])
    np.testing.assert_array_equal(df["true_uvwFI_w"], arrays["uvwTruth"][:, 2])
    np.testing.assert_array_equal(df["true_energy_energy"], arrays["energyTruth"])
    assert not any(c.startswith("reco_") for c in df.columns)  # no reco branches in the file
    np.testing.assert_array_equal(df["n_dead"], (arrays["npho"] > 9e9).sum(1))
    expected_angle = opening_angle_deg(
        df["pred_angle_theta"], df["pred_angle_phi"], arrays["emiAng"][:, 0], arrays["emiAng"][:, 1]
    )
    np.testing.assert_allclose(df["opening_angle_deg"], expected_angle, rtol=1e-5)
    assert (df["opening_angle_deg"] > 0).all() and (df["opening_angle_deg"] <= 180).all()


def test_chunking_and_batching_do_not_change_results(models, root_file, tmp_path):
    path, _ = root_file
    copy = tmp_path / "copy.root"  # a second file with the same events (one file twice is an error)
    shutil.copy(path, copy)
    a = run_inference(str(models["regressor"]), [str(path)], str(tmp_path / "a.root"), chunk_size=1000, batch_size=256)
    b = run_inference(
        str(models["regressor"]), [str(path), str(copy)], str(tmp_path / "b.root"), chunk_size=50, batch_size=1
    )
    assert (a["events"], b["events"]) == (N_EVENTS, 2 * N_EVENTS)
    da, db = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(da, db.iloc[:N_EVENTS].reset_index(drop=True), rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(da, db.iloc[N_EVENTS:].reset_index(drop=True), rtol=1e-5, atol=1e-7)


def test_inpainter_fills_dead_sensors_before_regressor(models, root_file, tmp_path):
    path, arrays = root_file
    run_inference(
        str(models["regressor"]),
        [str(path)],
        str(tmp_path / "i.root"),
        inpainter=str(models["inpainter"]),
        chunk_size=40,
        batch_size=16,
    )
    df = pd.read_parquet(tmp_path / "i.parquet")
    x = get_normalizer("meg2").normalize_events(arrays["npho"], arrays["relative_time"])
    dead = arrays["npho"] > 9e9
    x[dead] = 0.5  # what the constant inpainter writes into npho and time of dead sensors
    ref = _reference_preds(x)
    np.testing.assert_allclose(df["pred_energy_energy"], ref["energy"][:, 0], rtol=1e-5, atol=1e-6)
    plain = get_normalizer("meg2").normalize_events(arrays["npho"], arrays["relative_time"])
    changed = ~np.isclose(df["pred_energy_energy"], _reference_preds(plain)["energy"][:, 0], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(changed, dead.any(1))  # exactly the events with dead sensors change
    # the timing comes from the second pass: filled npho, but the filled sensors without a time
    live = x.copy()
    live[..., 1][dead] = get_normalizer("meg2").sentinel
    np.testing.assert_allclose(df["pred_timing_time"], _reference_preds(live)["timing"][:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(df["pred_timing_time"][dead.any(1)], ref["timing"][dead.any(1), 0], rtol=1e-3)


def test_timing_from_the_filled_input_when_asked(models, root_file, tmp_path):
    """inference.time_from_live_sensors false: one pass, every output from the filled input."""
    path, arrays = root_file
    out = tmp_path / "i.root"
    inp = str(models["inpainter"])
    run_inference(str(models["regressor"]), [str(path)], str(out), inpainter=inp, time_from_live=False)
    df = pd.read_parquet(tmp_path / "i.parquet")
    x = get_normalizer("meg2").normalize_events(arrays["npho"], arrays["relative_time"])
    x[arrays["npho"] > 9e9] = 0.5
    np.testing.assert_allclose(df["pred_timing_time"], _reference_preds(x)["timing"][:, 0], rtol=1e-5, atol=1e-6)


def test_cli_writes_outputs_and_custom_parquet(models, root_file, tmp_path, capsys):
    path, _ = root_file
    out, pq = tmp_path / "cli.root", tmp_path / "sub" / "table.parquet"
    rc = cli_main(
        [
            "infer",
            "--model",
            str(models["regressor"]),
            "--input",
            str(path),
            "--out",
            str(out),
            "--parquet",
            str(pq),
            "--batch-size",
            "32",
            "--preset",
            "meg2",
            "--log",
            str(tmp_path / "l.log"),
        ]
    )
    assert rc == 0 and out.exists() and pq.exists()
    assert "events/s" in capsys.readouterr().out
    assert "events/s" in (tmp_path / "l.log").read_text()
    assert len(pd.read_parquet(pq)) == N_EVENTS


def _assert_nothing_written(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir() if p.suffix in (".root", ".parquet") or p.name.startswith(".")) == []


def test_model_without_metadata_is_an_error_naming_the_file(models, root_file, tmp_path):
    with pytest.raises(XecError, match=r"bare\.onnx.*no xec metadata"):
        run_inference(str(models["bare"]), [str(root_file[0])], str(tmp_path / "o.root"))
    _assert_nothing_written(tmp_path)
    with pytest.raises(XecError, match="no xec metadata"):
        read_metadata(models["bare"])


def test_a_model_onnx_runtime_cannot_load_fails_before_any_output(models, root_file, tmp_path):
    # the sessions are built in a thread beside the first chunk's reading: its error still
    # names the file and surfaces before anything is written
    import onnx

    broken = onnx.load(str(models["regressor"]))
    broken.graph.node[0].op_type = "NoSuchOp"
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    for inpainter in (None, str(models["inpainter"])):
        out = tmp_path / "o" / "o.root"
        out.parent.mkdir(exist_ok=True)
        with pytest.raises(XecError, match=r"broken\.onnx: ONNX Runtime cannot load the model"):
            run_inference(str(tmp_path / "broken.onnx"), [str(root_file[0])], str(out), inpainter=inpainter)
        _assert_nothing_written(out.parent)


def test_preset_conflicts_are_errors(models, root_file, tmp_path, capsys):
    with pytest.raises(XecError, match=r"reg\.onnx.*'meg2'.*--preset 'legacy'"):
        run_inference(str(models["regressor"]), [str(root_file[0])], str(tmp_path / "o.root"), preset="legacy")
    with pytest.raises(XecError, match="normalization mismatch.*legacy_inp.onnx"):
        run_inference(
            str(models["regressor"]), [str(root_file[0])], str(tmp_path / "o.root"), inpainter=str(models["legacy_inp"])
        )
    with pytest.raises(XecError, match=r"inp\.onnx: is an exported inpainter, expected a regressor"):
        run_inference(str(models["inpainter"]), [str(root_file[0])], str(tmp_path / "o.root"))
    rc = cli_main(
        [
            "infer",
            "--model",
            str(models["legacy"]),
            "--input",
            str(root_file[0]),
            "--out",
            str(tmp_path / "o.root"),
            "--preset",
            "meg2",
        ]
    )
    assert rc == 2 and "legacy.onnx" in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("case", ["missing_branch", "short_sensors", "empty", "missing_file", "not_root"])
def test_bad_input_files_name_the_file_and_leave_nothing(models, root_file, tmp_path, case):
    good_path = root_file[0]
    bad = tmp_path / "in" / f"{case}.root"
    bad.parent.mkdir()
    arrays = _events(10, seed=3)
    if case == "missing_branch":
        del arrays["relative_time"]
        _write_root(bad, arrays)
        match = r"missing_branch\.root: missing branch.*relative_time"
    elif case == "short_sensors":
        arrays = _events(10, seed=3, n_sensors=4700)
        _write_root(bad, arrays)
        match = r"short_sensors\.root: branch npho has shape \(4700,\)"
    elif case == "empty":
        _write_root(bad, {k: v[:0] for k, v in arrays.items()})
        match = r"empty\.root: tree 'tree' has no events"
    elif case == "missing_file":
        match = r"missing_file\.root: no such file"
    else:
        bad.write_bytes(b"this is not a ROOT file" * 10)
        match = r"not_root\.root: not a readable ROOT file"
    out = tmp_path / "out" / "realdata.root"
    out.parent.mkdir()
    out.write_bytes(b"previous result")  # an earlier output must survive a failed run
    # the bad file comes second, so the good file's events would already be streaming
    with pytest.raises(XecError, match=match):
        run_inference(str(models["regressor"]), [str(good_path), str(bad)], str(out), chunk_size=32)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in out.parent.iterdir()) == ["realdata.root"]
    # the sessions' threads ended before the error came out (no log line after it)
    assert not [t for t in threading.enumerate() if t.name.startswith("xec-sessions")]


def test_bad_chunk_midway_leaves_nothing(models, root_file, tmp_path, monkeypatch):
    """An error raised while streaming (after outputs were opened) removes both outputs."""
    import xec.deploy.infer as infer

    original = infer.prediction_columns
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise XecError("boom in chunk 3")
        return original(*args, **kwargs)

    monkeypatch.setattr(infer, "prediction_columns", failing)
    with pytest.raises(XecError, match="boom"):
        run_inference(str(models["regressor"]), [str(root_file[0])], str(tmp_path / "o.root"), chunk_size=32)
    assert calls["n"] == 3
    assert list(tmp_path.iterdir()) == []


def test_a_writing_error_midway_leaves_nothing(models, root_file, tmp_path, monkeypatch):
    """Chunks are written by a thread beside the models: an error there still surfaces as the
    command's error and removes both outputs."""
    import pyarrow.parquet as pq

    original = pq.ParquetWriter.write_table
    calls = {"n": 0}

    def failing(self, table, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full in chunk 2")
        return original(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        run_inference(str(models["regressor"]), [str(root_file[0])], str(tmp_path / "o.root"), chunk_size=32)
    assert list(tmp_path.iterdir()) == []


def test_sessions_take_the_jobs_thread_count(models, monkeypatch):
    """intra_op_threads 0 follows OMP_NUM_THREADS (set by Snakemake and SLURM to the job's
    allocation); an explicit count wins. The threads are split over concurrent batches: one per
    thread up to MAX_BATCH_WORKERS, the rest as intra-op threads of each."""
    from xec.deploy.runtime import MAX_BATCH_WORKERS, make_session

    def plan(**kw):
        s = make_session(models["regressor"], **kw)
        return s.workers, s.get_session_options().intra_op_num_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert plan() == (1, 1)
    assert plan(intra_op_threads=2) == (2, 1)
    assert plan(intra_op_threads=4 * MAX_BATCH_WORKERS) == (MAX_BATCH_WORKERS, 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert plan() == (3, 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert plan() == (1, 0)  # ONNX Runtime's choice, one batch at a time


def test_concurrent_batches_give_the_sequential_outputs_in_order(models):
    from xec.deploy.runtime import Session, make_session, run_batched

    x = np.random.default_rng(3).normal(size=(300, N_SENSORS, 2)).astype(np.float32)
    two = make_session(models["regressor"], "cpu", 2)
    assert two.workers == 2
    one = Session(two.session, workers=1)
    got, want = run_batched(two, {"input": x}, 32), run_batched(one, {"input": x}, 32)
    assert [g.shape[0] for g in got] == [300] * len(two.get_outputs())
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # every row is its own event's prediction, not a neighbouring batch's
    (first,) = [g for g, o in zip(got, two.get_outputs()) if o.name == "output_energy"]
    alone = run_batched(one, {"input": x[250:251]}, 32)
    (ref,) = [a for a, o in zip(alone, two.get_outputs()) if o.name == "output_energy"]
    np.testing.assert_array_equal(first[250:251], ref)


def test_provider_choice(monkeypatch):
    import onnxruntime as ort

    from xec.deploy.runtime import providers_for

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers_for("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(XecError, match="onnxruntime-gpu"):
        providers_for("cuda")


def test_cuda_libraries_preloaded_once_when_the_cuda_provider_is_offered(monkeypatch):
    import onnxruntime as ort

    from xec.deploy import runtime

    calls = []
    monkeypatch.setattr(runtime, "_CUDA_PRELOADED", [])
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append(1), raising=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    runtime.providers_for("auto")
    assert calls == []  # a CPU build: nothing to load
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    runtime.providers_for("cpu")
    assert calls == []  # the CPU asked for
    runtime.providers_for("auto")
    runtime.providers_for("cuda")
    assert calls == [1]


def test_provider_report_names_a_silent_cpu_fallback():
    from xec.deploy.runtime import provider_report

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "runs on CUDAExecutionProvider" in provider_report("m.onnx", both, both)
    fallback = provider_report("m.onnx", both, ["CPUExecutionProvider"])
    assert "runs on CPUExecutionProvider" in fallback and "did not load" in fallback
    cpu = provider_report("m.onnx", ["CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert "did not load" not in cpu


# ---------------------------------------------------------------- dead-sensor treatments (--fill)
@pytest.mark.parametrize("fill", ["neighbour", "solid_angle"])
def test_classical_fills_change_only_dead_sensors_with_the_baseline_rules(models, root_file, fill):
    from xec.baseline.fill import fill_dead
    from xec.baseline.reco import BaselineConfig, fit_position
    from xec.baseline.recovery import estimate_dead, recover
    from xec.deploy.infer import Predictor
    from xec.geometry import uvw_to_xyz

    _, arrays = root_file
    npho, time = arrays["npho"][:60], arrays["relative_time"][:60]
    sentinel = Predictor(str(models["regressor"]), fill="sentinel")
    filled = Predictor(str(models["regressor"]), fill=fill)
    x0, dead0 = sentinel.inputs(npho, time)
    x1, dead1 = filled.inputs(npho, time)
    dead = npho > 9e9
    np.testing.assert_array_equal(dead0, dead)
    np.testing.assert_array_equal(dead1, dead)  # n_dead counts the raw event's dead sensors
    np.testing.assert_array_equal(x1[~dead], x0[~dead])  # live sensors: bit-identical input
    # sentinel vs a filled npho (>= 0: a sensor facing away from the fitted position gets 0 photons)
    assert (x0[dead][:, 0] == -1.0).all() and (x1[dead][:, 0] >= 0).all() and (x1[dead][:, 0] > 0).mean() > 0.5
    # the fill is xec.baseline's rule, seen from the baseline's position fit of the same event
    cfg = BaselineConfig()
    raw_npho, raw_time, _ = fill_dead(npho, time, fill, cfg)
    clean = np.where(dead, 0.0, npho.astype(np.float64))
    xyz = uvw_to_xyz(fit_position(clean, dead, cfg)["uvw"])
    if fill == "solid_angle":  # what the classical reconstruction fills its dead sensors with
        expected = estimate_dead(clean, dead, xyz, cfg.dead_radius_cm, cfg.dead_fallback_npho)
    else:
        ev, sid = np.nonzero(dead)
        expected = clean.copy()
        expected[ev, sid] = recover(clean, dead, ev, sid, radius=cfg.dead_radius_cm)["average"]
    np.testing.assert_allclose(raw_npho[dead], expected[dead], rtol=1e-5)
    assert np.isfinite(raw_time[dead]).all()


def test_fill_variants_change_only_events_with_dead_sensors(models, root_file, tmp_path):
    path, arrays = root_file
    dead_events = (arrays["npho"] > 9e9).any(axis=1)
    frames = {}
    for fill in ("sentinel", "neighbour", "solid_angle", "inpainter"):
        inp = str(models["inpainter"]) if fill == "inpainter" else None
        run_inference(str(models["regressor"]), [str(path)], str(tmp_path / f"{fill}.root"), inpainter=inp, fill=fill)
        frames[fill] = pd.read_parquet(tmp_path / f"{fill}.parquet")
    ref = frames["sentinel"]["pred_energy_energy"].to_numpy()
    for fill in ("neighbour", "solid_angle", "inpainter"):
        df = frames[fill]
        np.testing.assert_array_equal(df["n_dead"], frames["sentinel"]["n_dead"])
        changed = ~np.isclose(df["pred_energy_energy"], ref, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(changed, dead_events), fill
    assert not np.allclose(frames["neighbour"]["pred_energy_energy"], frames["solid_angle"]["pred_energy_energy"])


def test_fill_cli_reads_the_baseline_section_and_bad_combinations_are_errors(models, root_file, tmp_path, capsys):
    path, _ = root_file
    base = ["infer", "--model", str(models["regressor"]), "--input", str(path), "--threads", "1"]
    out = tmp_path / "sa.root"
    assert cli_main([*base, "--fill", "solid_angle", "--out", str(out)]) == 0  # xec infer classical-fill
    assert len(pd.read_parquet(tmp_path / "sa.parquet")) == N_EVENTS
    assert cli_main([*base, "--fill", "inpainter", "--out", str(tmp_path / "a.root")]) == 2
    assert "--fill inpainter needs --inpainter" in capsys.readouterr().err
    argv = [*base, "--fill", "neighbour", "--inpainter", str(models["inpainter"]), "--out", str(tmp_path / "b.root")]
    assert cli_main(argv) == 2
    assert "is used only with --fill inpainter" in capsys.readouterr().err
    assert not (tmp_path / "a.root").exists() and not (tmp_path / "b.root").exists()
    # --inpainter alone keeps filling with the inpainter, as before --fill existed
    from xec.deploy.infer import resolve_fill

    assert resolve_fill(None, "inp.onnx") == "inpainter" and resolve_fill(None, None) == "sentinel"


# ---------------------------------------------------------------- holes: the rule fills dead boards
def test_hole_mask_marks_whole_boards_and_few_isolated_sensors():
    from xec.baseline.fill import hole_mask
    from xec.geometry import get_geometry
    from xec.inpainting.boards import readout_boards

    boards = readout_boards(16)
    inner = [b for b in boards if (get_geometry().face[b] == 0).all()]
    dead = np.zeros((3, N_SENSORS), bool)
    dead[0, inner[40]] = True  # a whole inner-face board
    dead[0, 4000] = True  # and one isolated inner MPPC far from it
    dead[1, [44 * 30 + 10, 44 * 30 + 11]] = True  # two adjacent MPPCs: no hole
    for b in boards:  # one board of every face but the inner
        if get_geometry().face[b[0]] != 0 and not dead[2, get_geometry().face == get_geometry().face[b[0]]].any():
            dead[2, b] = True
    holes = hole_mask(dead)
    assert len(inner[40]) == 16 and holes[0, inner[40]].all() and not holes[0, 4000]
    assert not holes[1].any()
    assert holes[2, dead[2]].mean() > 0.9  # boards of 16 PMTs / MPPCs on the other faces too
    assert not (holes & ~dead).any()
    # random 10 % dead sensors: P(>= 3 of 8 neighbours dead) = 3.8 %
    rng = np.random.default_rng(3)
    rand = rng.random((200, N_SENSORS)) < 0.10
    share = hole_mask(rand).sum() / rand.sum()
    assert 0.025 < share < 0.055, share


def test_inpainter_fill_takes_the_rule_for_holes_and_the_inpainter_for_the_rest(models, root_file):
    from xec.baseline.fill import fill_dead, hole_mask
    from xec.baseline.reco import BaselineConfig
    from xec.deploy.infer import Predictor
    from xec.inpainting.boards import readout_boards

    _, arrays = root_file
    npho, time = arrays["npho"][40:70].copy(), arrays["relative_time"][40:70].copy()
    board = readout_boards(16)[40]
    npho[:10, board] = 1e10  # ten events with a dead board on top of their random dead sensors
    time[:10, board] = 1e10
    dead = npho > 9e9
    holes = hole_mask(dead)
    assert holes[:10, board].all() and holes[:10].sum() < 10 * len(board) + 5 and (dead & ~holes).sum() > 100

    hybrid = Predictor(str(models["regressor"]), str(models["inpainter"]), "inpainter")  # hole_fill default
    plain = Predictor(str(models["regressor"]), str(models["inpainter"]), "inpainter", hole_fill="inpainter")
    x, d = hybrid.inputs(npho, time)
    np.testing.assert_array_equal(d, dead)  # every dead sensor counts (n_dead, the live-time pass)
    ref_npho, ref_time, _ = fill_dead(npho, time, "solid_angle", BaselineConfig(), only=holes)
    expected = get_normalizer("meg2").normalize_events(ref_npho, ref_time)
    # holes: the rule's values; the rest still the sentinel (float32 normalization vs float64 here)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)
    assert (x[holes][:, 0] >= 0).all() and (x[dead & ~holes][:, 0] == -1.0).all()

    preds, n_dead = hybrid.run(x.copy(), d)
    filled = expected.copy()
    filled[dead & ~holes] = 0.5  # the constant inpainter: only where no rule value is
    np.testing.assert_allclose(preds["energy"][:, 0], _reference_preds(filled)["energy"][:, 0], rtol=1e-5, atol=1e-6)
    live = filled.copy()
    live[..., 1][dead] = -1.0  # the event time from live sensors: no filled time, rule or inpainter
    np.testing.assert_allclose(preds["timing"][:, 0], _reference_preds(live)["timing"][:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(n_dead, dead.sum(1))

    old, _ = plain.predict(npho, time)  # hole_fill inpainter: every dead sensor from the inpainter
    everything = get_normalizer("meg2").normalize_events(npho, time)
    everything[dead] = 0.5
    np.testing.assert_allclose(old["energy"][:, 0], _reference_preds(everything)["energy"][:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(XecError, match="inference.hole_fill"):
        Predictor(str(models["regressor"]), str(models["inpainter"]), "inpainter", hole_fill="neighbour")


def test_arrow_table_is_pa_table_without_pandas():
    """xec.utils.arrow_table (the parquet columns of xec infer and xec baseline) gives what
    pa.table gives, also for ROOT's big-endian arrays, strided views and bools, without the
    pandas import that pa.table's check costs (~0.25 s per command); pa.table refuses
    big-endian arrays, arrow_table converts them."""
    import subprocess
    import sys

    import pyarrow as pa

    from xec.utils import arrow_table

    rng = np.random.default_rng(0)
    cols = {
        "run": np.arange(7, dtype=np.int64),
        "n_dead": rng.integers(0, 50, 7).astype(np.int32),
        "pred": rng.normal(size=7).astype(np.float32),
        "big_endian": rng.normal(size=7).astype(">f8"),
        "strided": rng.normal(size=14).astype(np.float32)[::2],
        "flag": rng.random(7) > 0.5,
    }
    got = arrow_table(cols)
    expected = pa.table({k: v.astype(v.dtype.newbyteorder("=")) for k, v in cols.items()})
    assert got.equals(expected)
    assert got["big_endian"].type == pa.float64()
    code = (
        "import sys, numpy as np; from xec.utils import arrow_table; "
        "arrow_table({'x': np.arange(3.0)}); print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
