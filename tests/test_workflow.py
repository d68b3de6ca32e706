"""The Snakemake DAG end to end, locally, on the tiny config (tests/data/tiny_config.yaml).

One module-scoped run of the whole default DAG in a temporary working directory
(`snakemake -s workflow/Snakefile --directory <tmp>`, whose config.yaml is the tiny config), then:
partial reruns (`--dry-run` job lists), target selection, lint, DAG, bad configs, a SIGKILLed
job, two training stages logging to MLflow at once, and the HTML report.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from xec.config import set_dotted

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"

pytestmark = pytest.mark.slow

# The two training stages that run at the same time (after the MAE) and both log to MLflow.
CONCURRENT_STAGES = ("inpainter", "regressor")


def snakemake(
    workdir: Path, *args: str, timeout: float = 900, check: bool = True, profile: str | None = "local"
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir)]
    if profile:
        cmd += ["--profile", str(REPO / "profiles" / profile)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XEC_ENV", "SLURM_"))}
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> Counter:
    """Rule -> number of jobs from the 'Job stats' table (empty when there is nothing to do)."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return Counter()
    table = re.search(r"Job stats:\n(.*?)\n\s*total\s+\d+", text, re.S)
    assert table, text[-3000:]
    return Counter({m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table.group(1), re.M)})


def new_workdir(path: Path, **overrides) -> Path:
    """A working directory whose config.yaml is the tiny config with `overrides` merged in."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_CONFIG, path / "config.yaml")
    edit_config(path, **overrides)
    return path


def edit_config(work: Path, **overrides) -> None:
    """Set dotted keys ({"regressor.lr": 1e-3}) in a working directory's config.yaml."""
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(cfg, key, value)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole default DAG, once: 2 cores, the two concurrent training stages at 1 thread each
    so that they really run side by side (the `-j 2` MLflow case)."""
    work = new_workdir(tmp_path_factory.mktemp("workflow") / "run")
    t0 = time.monotonic()
    proc = snakemake(work, "--cores", "2", "--set-threads", *(f"{s}=1" for s in CONCURRENT_STAGES))
    elapsed = time.monotonic() - t0
    print(f"\n[test_workflow] tiny default DAG: {elapsed:.0f} s")
    yield {"dir": work, "proc": proc, "jobs": planned_jobs(proc), "elapsed": elapsed}
    shutil.rmtree(work.parent, ignore_errors=True)  # 170 MB, not needed past this module


def copy_run(tiny_run, dest: Path) -> Path:
    """A private copy of the finished run (mtimes and Snakemake metadata preserved)."""
    shutil.copytree(tiny_run["dir"], dest, symlinks=True)
    return dest


# ---- the complete run and reruns ----------------------------------------------------------------


def test_default_dag_builds_every_stage_output(tiny_run):
    work = tiny_run["dir"]
    jobs = tiny_run["jobs"]
    assert jobs["simulate"] == 5 and jobs["shards_part"] == 3 and jobs["shards"] == 3, jobs
    # the stage table of docs/architecture.md
    expected = [f"data/{s}.root" for s in ("train", "val", "bench", "realdata", "pileup")]
    expected += [f"shards/{s}/manifest.json" for s in ("train", "val", "bench")]
    expected += ["reweighting/weights.npz", "summary.json", "plots", "training_plots"]
    expected += [f"{st}/{f}" for st in ("mae", "inpainter", "regressor") for f in ("checkpoint.pt", "metrics.json")]
    expected += ["regressor/model.onnx", "inpainter/model.onnx", "regressor/predictions.parquet"]
    expected += [f"baseline/{s}.parquet" for s in ("bench", "realdata", "pileup")]
    expected += [
        "inference/realdata/realdata.root",
        "inference/realdata/realdata.parquet",
        "inference/realdata.parquet",
    ]
    expected += ["inpainting/summary.json", "inpainting/summary.md", "inpainting/summary.html", "inpainting/plots"]
    for rel in expected:
        path = work / "results" / rel
        assert any(path.iterdir()) if path.is_dir() else path.stat().st_size > 0, rel
    # every job left its log and its benchmark (time + memory) file
    benchmarks = list((work / "results" / "benchmarks").rglob("*.tsv"))
    assert len(benchmarks) == sum(n for rule, n in jobs.items() if rule != "all")
    header = benchmarks[0].read_text().splitlines()[0].split("\t")
    assert header[:3] == ["s", "h:m:s", "max_rss"], header
    assert len(list((work / "results" / "logs").rglob("*.log"))) >= len(benchmarks)


def test_unchanged_rerun_has_nothing_to_do(tiny_run):
    t0 = time.monotonic()
    proc = snakemake(tiny_run["dir"], "--dry-run")
    print(f"\n[test_workflow] unchanged dry-run: {time.monotonic() - t0:.1f} s")
    assert planned_jobs(proc) == Counter(), (proc.stdout + proc.stderr)[-3000:]


# what a regressor-only change reruns: the regressor and everything that reads its model
REGRESSOR_DOWNSTREAM = {
    "regressor_epochs",
    "regressor",
    "export",
    "inference",
    "scatter_chunk",
    "inference_merge",
    "deadsweep",
    "plots",
    "training_plots",
    "summary",
}


def test_regressor_lr_change_reruns_only_its_dependents(tiny_run, tmp_path):
    if "regressor" not in tiny_run["jobs"]:
        pytest.skip("the regressor is not part of the default DAG yet")
    work = copy_run(tiny_run, tmp_path / "run")
    edit_config(work, **{"regressor.lr": 1.234e-3})
    jobs = planned_jobs(snakemake(work, "--dry-run"))
    assert set(jobs) - {"all"} == REGRESSOR_DOWNSTREAM & set(tiny_run["jobs"]), jobs
    assert jobs["regressor"] == 1


def test_regressor_head_change_leaves_the_mae_alone(tiny_run, tmp_path):
    """A regressor-only model key (the peak-window MLP width) reruns the regressor and its
    dependents; the MAE and the inpainter depend only on the encoder keys and their own heads."""
    if "regressor" not in tiny_run["jobs"]:
        pytest.skip("the regressor is not part of the default DAG yet")
    work = copy_run(tiny_run, tmp_path / "run")
    edit_config(work, **{"model.peak_hidden": 64})
    jobs = planned_jobs(snakemake(work, "--dry-run"))
    assert set(jobs) - {"all"} == REGRESSOR_DOWNSTREAM & set(tiny_run["jobs"]), jobs


@pytest.mark.parametrize(
    "key, value, must_rerun",
    [
        # every key a command reads reaches its rule's params (xec/commands.py): the simulation writes
        # the TTree name, so renaming it reruns the simulation and everything downstream
        ("data.tree", "events", {"simulate", "shards_part", "shards", "baseline", "baseline_calibration", "inference"}),
        # runtime-only keys (threads, chunking, compression) change no output and rerun nothing
        ("simulation.chunk_size", 512, set()),
        ("shards.workers", 2, set()),
        ("inpainting.chunk_size", 100, set()),
    ],
)
def test_rules_rerun_exactly_on_the_keys_their_command_reads(tiny_run, tmp_path, key, value, must_rerun):
    work = copy_run(tiny_run, tmp_path / "run")
    edit_config(work, **{key: value})
    jobs = planned_jobs(snakemake(work, "--dry-run"))
    assert must_rerun <= set(jobs), jobs
    if not must_rerun:
        assert jobs == Counter(), jobs


def test_inpainting_key_reruns_only_the_inpainting_evaluation_and_the_summary(tiny_run, tmp_path):
    work = copy_run(tiny_run, tmp_path / "run")
    edit_config(work, **{"inpainting.hide.inner": 5})
    jobs = planned_jobs(snakemake(work, "--dry-run"))
    assert set(jobs) == {"inpainting", "summary", "all"}, jobs


def test_inpainting_scores_every_method_on_the_same_hidden_sensors(tiny_run):
    results = tiny_run["dir"] / "results"
    s = json.loads((results / "inpainting" / "summary.json").read_text())
    assert s["meta"]["hide"] == {"inner": 10, "outer": 1, "us": 1, "ds": 1, "top": 1, "bottom": 1}
    for name in ("val", "realdata"):
        res = s["samples"][name]
        assert res["events"] == 256
        # 10 inner sensors per event with >= 100 photons, but for the odd event with fewer
        assert 9 * 256 <= res["hidden"]["inner"] <= 10 * 256, res["hidden"]
        for face, e in res["faces"].items():
            n = e["inpainter"]["n"]
            assert n == res["hidden"][face] == e["neighbour_average"]["n"] == e["solid_angle"]["n"], face
        # the experiment's rule on the inner face: ~0.23 on the tiny samples (Poisson-limited)
        inner = res["faces"]["inner"]
        assert 0.1 < inner["solid_angle"]["rel_mae"] < 0.35, inner
        # the Poisson floor of >= 100-photon MPPCs (>= 12 photoelectrons): ~0.15, below every method
        assert 0.1 < inner["poisson_floor"] < min(inner[m]["rel_mae"] for m in ("inpainter", "solid_angle")), inner
    assert sorted(p.name for p in (results / "inpainting" / "plots").glob("*.png")) == sorted(
        f"{f}.png" for f in ("inner", "outer", "us", "ds", "top", "bottom")
    )
    # the table joins the physics summary
    summary = json.loads((results / "summary.json").read_text())
    assert summary["inpainting"]["samples"]["val"]["hidden"] == s["samples"]["val"]["hidden"]
    assert "Inpainter vs classical recovery of hidden sensors" in (results / "summary.md").read_text()


def test_dead_sensor_rules_fill_realdata_four_ways_and_sweep_the_dead_fraction(tiny_run, tmp_path):
    """Issue 14, part 3: realdata through the four dead-sensor treatments next to the classical
    reconstruction in the summary; the dead-fraction sweep on bench (its 0 % point is the plain
    bench inference), with its log, benchmark and table; and what reruns when its keys change."""
    import pandas as pd

    from xec.metrics import width68
    from xec.summary import OBSERVABLES, residual

    results = tiny_run["dir"] / "results"
    jobs = tiny_run["jobs"]
    assert jobs["inference"] == 6 and jobs["deadsweep"] == 1, jobs
    summary = json.loads((results / "summary.json").read_text())
    real = summary["realdata"]
    # the simulated realdata has truth: every method against it (real files: against the baseline)
    methods = real["methods"]
    fills = {"ml_inpainted", "ml_no_inpainting", "ml_neighbour_fill", "ml_solid_angle_fill"}
    assert set(methods) == fills | ({"baseline"} if real["reference"] == "truth" else set()), methods
    for m in methods.values():
        assert m["u_mm"]["all"]["n"] == 256 and math.isfinite(m["u_mm"]["all"]["width68"])
    # the fills change the predictions of realdata (1 % dead sensors in every event) ...
    frames = {
        n: pd.read_parquet(results / "inference" / f"realdata{n}.parquet")
        for n in ("", "_noinpaint", "_neighbour", "_solid_angle")
    }
    assert all((f["n_dead"] > 0).all() for f in frames.values())
    energies = [f["pred_energy_energy"].to_numpy() for f in frames.values()]
    assert all(not np.allclose(a, b) for i, a in enumerate(energies) for b in energies[i + 1 :])

    sweep = json.loads((results / "deadsweep" / "summary.json").read_text())
    assert sweep["events"] == 64 and sweep["methods"] == ["ml_inpainter", "classical"]  # tiny_config max_events
    assert [(p["pattern"], p["fraction"]) for p in sweep["points"]] == [("any", 0.0)] + [
        (pat, f) for pat in ("random", "clustered") for f in (0.01, 0.02, 0.05, 0.1)
    ]
    for p in sweep["points"]:
        for m in p["methods"].values():
            assert all(math.isfinite(m[o]["width68"]) for o in ("u_mm", "v_mm", "w_mm", "energy_pct", "time_ps")), p
    bench = pd.read_parquet(results / "inference" / "bench.parquet").iloc[:64]  # the sweep's events
    for obs in ("u_mm", "energy_pct", "time_ps"):
        col, scale, kind = OBSERVABLES[obs]
        plain = width68(residual(bench, col, kind) * scale)
        assert sweep["points"][0]["methods"]["ml_inpainter"][obs]["width68"] == pytest.approx(plain, rel=1e-4), obs
    assert (results / "deadsweep" / "resolution_vs_dead_fraction.png").stat().st_size > 10_000
    assert (results / "logs" / "deadsweep.log").exists() and (results / "benchmarks" / "deadsweep.tsv").exists()
    seconds = float((results / "benchmarks" / "deadsweep.tsv").read_text().splitlines()[1].split("\t")[0])
    print(f"\n[test_workflow] deadsweep job: {seconds:.1f} s for {sweep['events']} events")
    assert "Resolution vs dead fraction" in (results / "summary.md").read_text()
    assert summary["deadsweep"]["points"][0]["fraction"] == 0.0

    # what reruns: the sweep's own keys rerun the sweep and the summary; a recovery parameter of
    # the baseline reruns the realdata runs that use the rule (the classical fills and the
    # inpainter's, for its holes: inference.hole_fill), never the sentinel ones (bench, pile-up)
    work = copy_run(tiny_run, tmp_path / "run")
    edit_config(work, **{"deadsweep.max_events": 100})
    assert set(planned_jobs(snakemake(work, "--dry-run"))) == {"deadsweep", "summary", "all"}
    edit_config(work, **{"deadsweep.max_events": 500, "baseline.dead_radius_cm": 15.0})
    proc = snakemake(work, "--dry-run", "--printshellcmds")
    jobs = planned_jobs(proc)
    assert jobs["inference"] == 3 and jobs["inference_merge"] == 3 and jobs["deadsweep"] == 1, jobs
    text = proc.stdout + proc.stderr
    assert "--fill neighbour" in text and "--fill solid_angle" in text and "--fill inpainter" in text
    assert "--fill sentinel" not in text
    # a bad sweep value fails before any job, naming the key
    edit_config(work, **{"baseline.dead_radius_cm": 20.0, "deadsweep.fractions": [0.0, 1.0]})
    proc = snakemake(work, "--dry-run", check=False)
    assert proc.returncode != 0 and "deadsweep.fractions" in proc.stdout + proc.stderr


def test_realdata_finetuning_feeds_the_realdata_inference_and_the_inpainting_table(tiny_run, tmp_path):
    """Issue 14, part 4: the inpainter fine-tuned on realdata (its own rule, exported like the
    inpainter), used by the realdata inference, and scored next to the simulation-only one on the
    held-out realdata events; what its keys rerun; finetune.enabled false drops it."""
    import uproot

    from xec.inpainting.holdout import holdout_flags
    from xec.train.checkpoint import load_checkpoint

    results = tiny_run["dir"] / "results"
    jobs = tiny_run["jobs"]
    assert jobs["inpainter_finetune"] == 1 and jobs["export"] == 3, jobs
    ck = load_checkpoint(results / "inpainter_finetune" / "checkpoint.pt", expected_stage="inpainter")
    info = ck["finetune"]
    with uproot.open(results / "data" / "realdata.root") as f:
        ids = f["tree"].arrays(["run", "event"], library="np")
    held = holdout_flags(ids["run"], ids["event"], 0.25)
    assert info["events_read"] == 256 and info["holdout_events"] == int(held.sum()) > 0
    assert info["finetune_events"] == 256 - info["holdout_events"]
    metrics = json.loads((results / "inpainter_finetune" / "metrics.json").read_text())
    assert math.isfinite(metrics["val"]["val_loss"]) and math.isfinite(metrics["val"]["initial_loss"])
    assert (results / "inpainter_finetune" / "model.onnx").stat().st_size > 0
    for name in ("train/inpainter_finetune", "export/inpainter_finetune"):
        assert (results / "benchmarks" / f"{name}.tsv").exists() and (results / "logs" / f"{name}.log").exists()
        seconds = float((results / "benchmarks" / f"{name}.tsv").read_text().splitlines()[1].split("\t")[0])
        print(f"\n[test_workflow] {name} job: {seconds:.1f} s")
    # the held-out realdata events, both inpainters on the same hidden sensors as the rules
    s = json.loads((results / "inpainting" / "summary.json").read_text())
    ft = s["finetune"]
    assert ft["sample"] == "realdata" and ft["holdout_fraction"] == 0.25
    assert ft["events"] == info["holdout_events"]
    for face, e in ft["faces"].items():
        n = e["inpainter"]["n"]
        assert n == ft["hidden"][face] == e["inpainter_finetuned"]["n"] == e["solid_angle"]["n"] > 0, face
        assert e["gain"] == pytest.approx(e["inpainter_finetuned"]["rel_mae"] / e["inpainter"]["rel_mae"])
    assert ft["hidden"]["inner"] < s["samples"]["realdata"]["hidden"]["inner"]
    text = (results / "summary.md").read_text()
    assert "fine-tuning on real data: held-out events" in text and "rel MAE: fine-tuned" in text

    work = copy_run(tiny_run, tmp_path / "run")
    proc = snakemake(work, "--dry-run", "--printshellcmds", "--forcerun", "inference")
    assert "--inpainter results/inpainter_finetune/model.onnx --fill inpainter" in proc.stdout + proc.stderr
    # a fine-tuning key reruns the fine-tuning, its export, the realdata inference with the
    # inpainter, the inpainting table and what reads them; never the simulation-only inpainter
    edit_config(work, **{"finetune.lr": 5.0e-4})
    jobs = planned_jobs(snakemake(work, "--dry-run"))
    assert {"inpainter_finetune", "export", "inference", "inpainting", "summary"} <= set(jobs), jobs
    assert jobs["export"] == 1 and jobs["inference"] == 1 and "inpainter" not in jobs and "deadsweep" not in jobs
    # off: the realdata inference fills with the simulation-only inpainter, no fine-tuning job
    edit_config(work, **{"finetune.lr": 1.0e-3, "finetune.enabled": False})
    proc = snakemake(work, "--dry-run", "--printshellcmds")
    text = proc.stdout + proc.stderr
    assert "inpainter_finetune" not in planned_jobs(proc) and "--finetuned" not in text
    assert "--inpainter results/inpainter/model.onnx --fill inpainter" in text
    # a held-out fraction outside (0, 1) fails before any job, naming the key
    edit_config(work, **{"finetune.enabled": True, "finetune.holdout_fraction": 1.0})
    proc = snakemake(work, "--dry-run", check=False)
    assert proc.returncode != 0 and "finetune.holdout_fraction" in proc.stdout + proc.stderr


def _bench_seconds(path: Path) -> float:
    return float(path.read_text().splitlines()[1].split("\t")[0])


def test_validation_plots_and_pileup_sample(tiny_run):
    """Issue 13, part 4: the resolution profiles (68 % and core, ML and classical), the regressor
    saliency per face and task, and the pile-up sample (simulated with its second-gamma truth,
    through the per-file inference and baseline like bench, a 'pileup' summary section with the
    bench structure); prints what the pile-up jobs and the plots cost."""
    import uproot

    results = tiny_run["dir"] / "results"
    plots, training_plots = results / "plots", results / "training_plots"
    index = json.loads((plots / "index.json").read_text())
    for name in ("profile_vs_energy_val", "profile_vs_u_bench", "residuals_pileup"):
        assert name in index["made"], (name, index["skipped"].get(name))
    training = json.loads((training_plots / "index.json").read_text())
    for name in ("training_curves", "mae_reconstruction_0", "inpainter_truth_vs_prediction", "saliency_regressor"):
        assert name in training["made"], (name, training["skipped"].get(name))
    assert not set(index["made"]) & set(training["made"]), "a plot made by both plot jobs"
    prof = json.loads((plots / "profile_vs_energy_val.json").read_text())
    assert prof["edges"][0] == 15.0 and prof["edges"][-1] == 60.0
    assert set(prof["observables"]["energy_pct"]) == {"ML", "baseline"}
    sal = json.loads((training_plots / "saliency_regressor.json").read_text())
    assert sal["events"] == 64 and set(sal["tasks"]) == {"angle", "energy", "timing", "uvwFI"}
    for task, entry in sal["tasks"].items():
        npho = [entry["mean"]["npho"][f] for f in sal["faces"]]
        assert all(v is not None and math.isfinite(v) and v > 0 for v in npho), (task, npho)
        total = sum(entry["share"][i][f] or 0.0 for i in ("npho", "time") for f in sal["faces"])
        assert total == pytest.approx(1.0), task

    cfg = yaml.safe_load((results / "config.yaml").read_text())
    p = cfg["simulation"]["samples"]["pileup"]["pileup_probability"]
    with uproot.open(results / "data" / "pileup.root") as f:
        e_pu = f["tree"]["pileupEnergyTruth"].array(library="np")
    assert len(e_pu) == 256 and abs((e_pu > 0).mean() - p) < 4 * math.sqrt(p * (1 - p) / 256)
    summary = json.loads((results / "summary.json").read_text())
    pileup, bench = summary["pileup"], summary["bench"]
    assert pileup["events"] == 256 and set(pileup["methods"]) == set(bench["methods"]) == {"ml", "baseline"}
    for m in pileup["methods"].values():
        assert m["u_mm"]["all"]["n"] == 256 and math.isfinite(m["energy_pct"]["all"]["width68"])
        assert set(m) == set(bench["methods"]["ml"])
    assert "## pileup" in (results / "summary.md").read_text()
    # the per-file inference copies the pile-up truth; the summary splits the sample with it
    split = pileup["pileup_split"]
    n_pu = int((e_pu > 0).sum())
    assert (split["with_pileup"]["events"], split["without_pileup"]["events"]) == (n_pu, 256 - n_pu)
    bench_dir = results / "benchmarks"
    costs = {
        "simulate pileup": bench_dir / "simulate" / "pileup.tsv",
        "inference pileup": bench_dir / "inference" / "pileup" / "pileup.tsv",
        "baseline pileup": bench_dir / "baseline" / "pileup" / "pileup.tsv",
        "plots": bench_dir / "plots.tsv",
        "training plots": bench_dir / "training_plots.tsv",
        "summary": bench_dir / "summary.tsv",
    }
    print("\n[test_workflow] " + ", ".join(f"{k} {_bench_seconds(v):.1f} s" for k, v in costs.items()))


def test_inpainting_bad_mask_count_names_the_key_and_writes_nothing(tiny_run, tmp_path):
    results = tiny_run["dir"] / "results"
    cfg = yaml.safe_load((results / "config.yaml").read_text())
    set_dotted(cfg, "inpainting.hide.top", 100)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "inpainting" / "summary.json"
    cmd = [sys.executable, "-m", "xec.cli", "inpainting", "--config", str(tmp_path / "config.yaml")]
    cmd += [
        "--inpainter",
        str(results / "inpainter" / "model.onnx"),
        "--sample",
        "val",
        str(results / "data" / "val.root"),
    ]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "inpainting.hide.top = 100: the top face has only 73 sensors" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() and not out.parent.exists()
    # a regressor given as the inpainter: named, nothing written
    cmd[cmd.index("--inpainter") + 1] = str(results / "regressor" / "model.onnx")
    cmd[cmd.index("--config") + 1] = str(results / "config.yaml")
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "is an exported regressor, expected a inpainter" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_model_onnx_target_pulls_exactly_its_stages(tmp_path):
    work = new_workdir(tmp_path / "fresh")
    jobs = planned_jobs(snakemake(work, "--dry-run", "results/regressor/model.onnx"))
    assert jobs == Counter(
        simulate=2, shards_part=2, shards=2, reweighting=1, mae=1, regressor_epochs=1, regressor=1, export=1
    ), jobs


def test_regressor_dead_fill_inpainter_trains_on_the_inpainter(tmp_path):
    """regressor.dead_fill: inpainter: the regressor waits for the inpainter checkpoint and is
    handed it (--inpainter); with the default (sentinel) it is neither."""
    work = new_workdir(tmp_path / "fresh", **{"regressor.dead_fill": "inpainter"})
    proc = snakemake(work, "--dry-run", "results/regressor/model.onnx")
    jobs = planned_jobs(proc)
    assert jobs == Counter(
        simulate=2,
        shards_part=2,
        shards=2,
        reweighting=1,
        mae=1,
        inpainter=1,
        regressor_epochs=1,
        regressor=1,
        export=1,
    ), jobs
    commands = [line for line in (proc.stdout + proc.stderr).splitlines() if "xec train regressor" in line]
    assert commands and all("--inpainter results/inpainter/checkpoint.pt" in c for c in commands), commands


@pytest.mark.parametrize("after_mae", [True, False])
def test_inpainter_without_the_encoder_needs_no_mae(tmp_path, after_mae):
    """model.inpaint_context false (the default): the inpainter trains without the MAE (--init
    none); the rule still waits for it unless workflow.inpainter_after_mae is false."""
    work = new_workdir(
        tmp_path / "fresh", **{"model.inpaint_context": False, "workflow.inpainter_after_mae": after_mae}
    )
    proc = snakemake(work, "--dry-run", "results/inpainter/model.onnx")
    jobs = planned_jobs(proc)
    expected = Counter(simulate=2, shards_part=2, shards=2, inpainter=1, export=1) + Counter(mae=int(after_mae))
    assert jobs == expected, jobs
    commands = [line for line in (proc.stdout + proc.stderr).splitlines() if "xec train inpainter" in line]
    assert commands and all("--init none" in c for c in commands), commands


def test_inpainter_with_the_encoder_starts_from_the_mae(tmp_path):
    work = new_workdir(tmp_path / "fresh", **{"model.inpaint_context": True, "workflow.inpainter_after_mae": False})
    proc = snakemake(work, "--dry-run", "results/inpainter/model.onnx")
    assert planned_jobs(proc)["mae"] == 1
    commands = [line for line in (proc.stdout + proc.stderr).splitlines() if "xec train inpainter" in line]
    assert commands and all("--init results/mae/checkpoint.pt" in c for c in commands), commands


def _input_files(tmp_path: Path) -> dict[str, list[str]]:
    files = {}
    for sample in ("train", "val", "bench", "realdata", "pileup"):
        path = tmp_path / "data" / f"{sample}.root"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")  # existence is all the DAG needs
        files[f"data.{sample}"] = [str(path)]
    return files


def test_configured_input_files_drop_the_simulation(tmp_path):
    work = new_workdir(tmp_path / "real", **_input_files(tmp_path))
    jobs = planned_jobs(snakemake(work, "--dry-run"))
    assert "simulate" not in jobs and jobs["shards"] == 3, jobs


def test_shard_conversion_scatters_over_groups_of_files(tmp_path):
    """One shards_part job per `scatter.files_per_job` consecutive train files, told its first
    file's index in the split, and one merge of the parts in file order."""
    files = _input_files(tmp_path)
    train = []
    for i in range(3):
        path = tmp_path / "data" / f"train{i}.root"
        path.write_bytes(b"")
        train.append(str(path))
    target = "results/shards/train/manifest.json"
    for per_job, groups in ((1, [[0], [1], [2]]), (2, [[0, 1], [2]])):
        work = new_workdir(
            tmp_path / f"scatter{per_job}", **{**files, "data.train": train, "scatter.files_per_job": per_job}
        )
        proc = snakemake(work, "--dry-run", "--printshellcmds", target)
        assert planned_jobs(proc) == Counter(shards_part=len(groups), shards=1), proc.stdout[-3000:]
        text = " ".join((proc.stdout + proc.stderr).split())
        for k, group in enumerate(groups):
            inputs = " ".join(train[i] for i in group)
            out = f"results/shards/train.parts/{k:04d}"
            assert f"--part --first-file {group[0]} --input {inputs} --split train --out {out} " in text, text[-3000:]
        parts = " ".join(f"results/shards/train.parts/{k:04d}/part.json" for k in range(len(groups)))
        assert f"xec shards-merge --parts {parts} --input {' '.join(train)} --split train" in text, text[-3000:]


def test_scan_over_configured_input_files(tmp_path):
    """Scan points read the same configured files as the main run and reuse its shards and MAE."""
    scan = {"rank_by": "uvw_68_mm", "grid": {"regressor.lr": [1.0e-3, 1.0e-2]}}
    work = new_workdir(tmp_path / "real", scans={"lr": scan}, **_input_files(tmp_path))
    jobs = planned_jobs(snakemake(work, "--dry-run", "results/scans/lr/summary.json"))
    assert "simulate" not in jobs, jobs
    assert jobs["shards"] == 2 and jobs["mae"] == 1 and jobs["regressor"] == 2, jobs  # train, val shards


# ---- static checks -------------------------------------------------------------------------------


def test_lint_is_clean(tmp_path):
    work = new_workdir(tmp_path / "lint")
    proc = snakemake(work, "--lint", profile=None, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-6000:]


def test_dag_renders(tmp_path):
    work = new_workdir(tmp_path / "dag")
    proc = snakemake(work, "--dag")
    assert proc.stdout.lstrip().startswith("digraph"), proc.stdout[:500]
    for rule in ("simulate", "shards", "mae"):
        assert f'label = "{rule}' in proc.stdout or f'label="{rule}' in proc.stdout or rule in proc.stdout


# ---- bad input ------------------------------------------------------------------------------------


def test_missing_input_files_fail_at_dag_construction_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "train_*.root"
    work = new_workdir(tmp_path / "missing", **{"data.train": [str(missing)]})
    proc = snakemake(work, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(missing) in out and "data.train" in out, out[-3000:]
    assert not (work / "results" / "data").exists()


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"seed": "forty-two"}, "seed"),
        ({"regressor.lr": "fast"}, "regressor.lr"),
        ({"regresor": {"lr": 1e-3}}, "regresor"),
        ({"simulation.chunk_sise": 10}, "chunk_sise"),
    ],
)
def test_bad_config_names_the_key(tmp_path, overrides, key):
    work = new_workdir(tmp_path / "bad", **overrides)
    proc = snakemake(work, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid configuration" in out and key in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_bad_scan_fails_before_any_job_naming_scan_and_key(tmp_path):
    work = new_workdir(tmp_path / "bad", scans={"lr": {"rank_by": "uvw_68_mm", "grid": {"regressor.lrr": [1e-3]}}})
    proc = snakemake(work, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "lr" in out and "regressor.lrr" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


# ---- scans -----------------------------------------------------------------------------------------
# Two regressor learning rates, neither the main run's: both points retrain the regressor and
# everything after it, and reuse the main run's simulation, shards, reweighting, MAE, inpainter
# and baseline. Per point: inference of realdata (4 dead-sensor treatments), bench and pileup.
SCAN = {"rank_by": "uvw_68_mm", "grid": {"regressor.lr": [1.0e-3, 1.0e-2]}}
SCAN_TARGET = "results/scans/lr/summary.json"
PER_POINT = Counter(
    regressor_epochs=1, regressor=1, export=1, inference=6, scatter_chunk=6, inference_merge=6, deadsweep=1, summary=1
)


def _with_scan(work: Path, scan: dict) -> None:
    edit_config(work, scans={"lr": scan})


@pytest.fixture(scope="module")
def scan_run(tiny_run, tmp_path_factory):
    work = copy_run(tiny_run, tmp_path_factory.mktemp("scan") / "run")
    _with_scan(work, SCAN)
    planned = planned_jobs(snakemake(work, "--dry-run", SCAN_TARGET))
    proc = snakemake(work, "--cores", "2", SCAN_TARGET)
    yield {"dir": work, "planned": planned, "proc": proc}
    shutil.rmtree(work.parent, ignore_errors=True)


def test_scan_trains_each_point_and_reuses_the_main_run(scan_run):
    expected = Counter({rule: 2 * n for rule, n in PER_POINT.items()}) + Counter(scan_summary=1)
    assert scan_run["planned"] == expected, scan_run["planned"]
    scans = scan_run["dir"] / "results" / "scans" / "lr"
    points = sorted(p for p in scans.iterdir() if p.is_dir())
    assert len(points) == 2, points
    for point in points:
        for rel in (
            "regressor/checkpoint.pt",
            "regressor/metrics.json",
            "regressor/model.onnx",
            "inference/bench.parquet",
            "inference/realdata.parquet",
            "summary.json",
            "config.yaml",
        ):
            assert (point / rel).stat().st_size > 0, (point, rel)
        assert not (point / "mae").exists() and not (point / "shards").exists(), point  # reused
        lr = yaml.safe_load((point / "config.yaml").read_text())["regressor"]["lr"]
        assert lr in (1.0e-3, 1.0e-2) and str(lr) in point.name, (point.name, lr)


def test_scan_table_is_ranked_by_its_metric(scan_run):
    import json

    scans = scan_run["dir"] / "results" / "scans" / "lr"
    table = json.loads((scans / "summary.json").read_text())
    rows = table["rows"]
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["best"] and not rows[1]["best"]
    assert rows[0]["uvw_68_mm"] <= rows[1]["uvw_68_mm"]
    assert {r["overrides"]["regressor.lr"] for r in rows} == {1.0e-3, 1.0e-2}
    for name in ("summary.md", "summary.html", "metric.png"):
        assert (scans / name).stat().st_size > 0, name


def test_scan_runs_are_tagged_in_mlflow(scan_run):
    db = scan_run["dir"] / "results" / "mlflow.db"
    with sqlite3.connect(db) as con:
        tags = con.execute("SELECT key, value FROM tags WHERE key IN ('scan', 'point')").fetchall()
    assert ("scan", "lr") in tags and sum(k == "point" for k, _ in tags) == 2, tags


def test_scan_table_is_in_the_report(scan_run, tmp_path):
    work = copy_run(scan_run, tmp_path / "run")
    snakemake(work, "--report", "results/report.html")
    html = (work / "results" / "report.html").read_text(errors="replace")
    assert "Scans" in html and "metric.png" in html, html[-2000:]


def test_adding_a_scan_point_schedules_only_that_point(scan_run, tmp_path):
    work = copy_run(scan_run, tmp_path / "run")
    _with_scan(work, {**SCAN, "grid": {"regressor.lr": [1.0e-3, 1.0e-2, 5.0e-3]}})
    jobs = planned_jobs(snakemake(work, "--dry-run", SCAN_TARGET))
    assert jobs == PER_POINT + Counter(scan_summary=1), jobs
    # another ranking metric reruns the ranking only
    _with_scan(work, {**SCAN, "rank_by": "energy_68_pct"})
    jobs = planned_jobs(snakemake(work, "--dry-run", SCAN_TARGET))
    assert jobs == Counter(scan_summary=1), jobs


# ---- faults ----------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


@pytest.mark.parametrize("victim", ["job", "snakemake"])
def test_sigkilled_job_is_incomplete_and_rerun_alone(tiny_run, tmp_path, victim):
    """SIGKILL in the middle of a training job, of the job's process alone (OOM killer) or of
    Snakemake and its job together (a crashed node): the job's outputs are removed or marked
    incomplete, nothing else is touched, and the rerun redoes that job only."""
    work = copy_run(tiny_run, tmp_path / "run")
    target = "results/mae/checkpoint.pt"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(work),
        "--cores",
        "2",
        "--forcerun",
        "mae",
        target,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = work / "results" / "logs" / "train" / "mae.log"
    log_size0 = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + 240
    try:
        # mid-way: the training process is up and has written to its log (after its imports)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("the mae job finished before it could be killed")
            trainers = [p for p in _descendants(proc.pid) if " train mae " in _cmdline(p) and "python" in _cmdline(p)]
            if trainers and log.exists() and log.stat().st_size != log_size0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the mae job never started")
        if victim == "job":
            for pid in trainers:
                os.kill(pid, signal.SIGKILL)
            assert proc.wait(timeout=120) != 0  # Snakemake saw the job fail
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    ckpt = work / target
    if victim == "snakemake":
        # a crashed Snakemake leaves its lock; the output, if there, is marked incomplete
        snakemake(work, "--unlock", profile=None)
        check = snakemake(work, "--dry-run", target, profile=None, check=False)
        if ckpt.exists():
            text = check.stdout + check.stderr
            assert check.returncode != 0 and "incomplete" in text.lower(), text[-3000:]
    else:
        assert not ckpt.exists()  # Snakemake removed the failed job's outputs
    # The rerun (the profile sets rerun-incomplete) redoes exactly the killed job ...
    jobs = planned_jobs(snakemake(work, "--dry-run", target))
    assert jobs == Counter(mae=1), jobs
    snakemake(work, "--cores", "2", target)
    assert ckpt.stat().st_size > 0
    assert planned_jobs(snakemake(work, "--dry-run", target)) == Counter()
    # ... and in the whole DAG only the MAE's dependents are out of date, no upstream stage.
    stale = planned_jobs(snakemake(work, "--dry-run"))
    assert not {"simulate", "shards", "reweighting", "mae"} & set(stale), stale


def _cmdline(pid: int) -> str:
    try:
        return " " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() + " "
    except OSError:
        return ""


def test_two_stages_log_to_mlflow_at_once(tiny_run):
    if not all(s in tiny_run["jobs"] for s in CONCURRENT_STAGES):
        pytest.skip("inpainter and regressor are not both in the default DAG yet")
    work = tiny_run["dir"]
    log = tiny_run["proc"].stdout + tiny_run["proc"].stderr
    # both jobs were running at the same time: each started before the other finished
    start = {
        s: log.index(f"rule {s}:") if f"rule {s}:" in log else log.index(f"localrule {s}:") for s in CONCURRENT_STAGES
    }
    done = {s: log.index(f"(Rule: {s})") for s in CONCURRENT_STAGES}
    a, b = CONCURRENT_STAGES
    assert start[a] < done[b] and start[b] < done[a], "the two stages did not overlap"
    db = work / "results" / "mlflow.db"
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT e.name, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id"
        ).fetchall()
    finished = {name for name, status in rows if status == "FINISHED"}
    for stage in CONCURRENT_STAGES:
        assert any(stage in name for name in finished), rows


# ---- report ----------------------------------------------------------------------------------------


def test_html_report(tiny_run, tmp_path):
    work = copy_run(tiny_run, tmp_path / "run")
    snakemake(work, "--report", "results/report.html")
    html = (work / "results" / "report.html").read_text(errors="replace")
    assert len(html) > 10_000
    # the plots (every PNG of results/plots and results/training_plots), the physics summary
    # table, the training metrics
    pngs = sorted((work / "results" / "plots").glob("*.png")) + sorted(
        (work / "results" / "training_plots").glob("*.png")
    )
    assert len(pngs) > 10
    missing = [p.name for p in pngs if p.name not in html]
    assert not missing, missing
    assert "summary.html" in html and "Physics summary" in html
    assert "resolution_vs_dead_fraction.png" in html and "Dead sensors" in html
    assert "weights.png" in html and "metrics.json" in html
    # runtime statistics of every rule
    assert "Statistics" in html and "runtime" in html.lower()


# ---- SLURM profiles (parsing and per-rule resources; the real cluster run is tests/test_slurm.py) --


@pytest.mark.parametrize(
    "profile, env_name, gpu_partition, gpu_model",
    [
        ("slurm-a100", "x86_64-cuda", "a100", "a100"),
        ("slurm-gh", "aarch64-cuda", "gh", "gh200"),
    ],
)
def test_slurm_profile_resources_and_environment(tmp_path, profile, env_name, gpu_partition, gpu_model):
    work = new_workdir(tmp_path / "prof")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(work),
        "--profile",
        str(REPO / "profiles" / profile),
        "--dry-run",
        "results/regressor/model.onnx",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XEC_", "SLURM_"))}
    # the profile's environment does not exist yet: stopped before any job, with the fix named
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"conda env create -p envs/{env_name} -f workflow/envs/{env_name}.yaml" in out, out[-3000:]
    # created once (here: this test's own environment) -> the jobs get the profile's resources
    (work / "envs").mkdir()
    (work / "envs" / env_name).symlink_to(Path(sys.prefix))
    env["XEC_SLURM_ACCOUNT"] = "proj42"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    blocks = re.split(r"\n(?=\[.*\]\n(?:local)?rule )", out)
    resources = {}
    for block in blocks:
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        r = re.search(r"resources: (.*)", block)
        if m and r:
            resources[m.group(1)] = r.group(1)
    assert f"slurm_partition={gpu_partition}" in resources["regressor"], resources["regressor"]
    assert f"gpu_model={gpu_model}" in resources["regressor"] and "gpu=1" in resources["regressor"]
    # the regressor's epochs too (its finish, above, is one process on one GPU whatever train.gpus)
    epochs = resources["regressor_epochs"]
    assert f"slurm_partition={gpu_partition}" in epochs and f"gpu_model={gpu_model}" in epochs, epochs
    assert "slurm_partition=cpu" in resources["simulate"] and "gpu" not in resources["simulate"]
    assert "slurm_account=proj42" in resources["shards"]


def test_run_list_inputs_and_a_missing_run_fail_at_dag_construction(tmp_path):
    files = _input_files(tmp_path)
    real = files["data.realdata"][0]
    listed = tmp_path / "data" / "period.txt"
    listed.write_text(f"# two runs\n{real}\n")
    work = new_workdir(tmp_path / "list", **{**files, "data.realdata": [str(listed)]})
    jobs = planned_jobs(snakemake(work, "--dry-run"))
    assert "simulate" not in jobs and jobs["inference"] >= 1, jobs
    listed.write_text(f"{real}\n{tmp_path / 'data' / 'run2.root'}\n")
    proc = snakemake(work, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{listed}:2" in out and "data.realdata" in out, out[-3000:]
    # a readable file with another tree name: one error naming the list line, before any job
    from helpers_rootfiles import write_root_file

    other = write_root_file(tmp_path / "data" / "run3.root", n_events=4, tree="events")
    listed.write_text(f"{real}\n{other}\n")
    proc = snakemake(work, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{listed}:2" in out and "no TTree 'tree'" in out, out[-3000:]


# ---- run periods: per-file jobs, merged view, bad files, incremental (issue 17) ------------------


def _simulate_runs(work: Path, seeds) -> list[Path]:
    out = []
    for seed in seeds:
        path = work / "runs" / f"run{seed}.root"
        path.parent.mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "xec.cli", "simulate", "--config", str(work / "results" / "config.yaml")]
            + ["--sample", "realdata", "--events", "64", "--seed", str(seed), "--out", str(path)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        out.append(path)
    return out


def test_run_period_per_file_jobs_bad_file_and_incremental(tiny_run, tmp_path):
    """realdata as a run list of 4 files, one truncated: one job per file, the bad file's jobs
    fail naming it while the others finish; the rerun merges the good files (every (run, event)
    exactly once) and lists the bad one in the summary with a per-run table; a new file in the
    list schedules only its own jobs; a file taken out of the list leaves the merged view."""
    import pandas as pd

    work = copy_run(tiny_run, tmp_path / "run")
    runs = _simulate_runs(work, (7001, 7002, 7003, 7004))
    bad = runs[2]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    period = work / "runs" / "period.txt"
    period.write_text("# a test run period\n" + "".join(f"{p.name}\n" for p in runs))
    # the inpainting evaluation and the fine-tuning read only the first files holding their
    # max_events (run7001, and run7001-7002 here): a growing run period reruns neither
    edit_config(work, **{"data.realdata": [str(period)], "inpainting.max_events": 64, "finetune.max_events": 128})
    targets = ["results/summary.json", "results/plots"]

    first = snakemake(work, "--keep-going", *targets, check=False)
    out = first.stdout + first.stderr
    assert first.returncode != 0 and "run7003" in out and "[xec]" in out, out[-4000:]
    records = sorted((work / "results").glob("**/run7003.failed.json"))
    assert len(records) == 5, records  # inference with the four dead-sensor treatments, baseline
    assert str(bad) in json.loads(records[0].read_text())["error"]
    for p in runs[:2] + runs[3:]:
        assert (work / "results" / "inference" / "realdata" / f"{p.stem}.parquet").exists(), p

    snakemake(work, *targets)
    merged = work / "results" / "inference" / "realdata.parquet"
    df = pd.read_parquet(merged)
    parts = [
        pd.read_parquet(work / "results" / "inference" / "realdata" / f"{p.stem}.parquet") for p in runs if p != bad
    ]
    assert len(df) == sum(len(p) for p in parts) == 3 * 64
    assert not df.duplicated(["run", "event"]).any() and sorted(df["run"].unique()) == [7001, 7002, 7004]
    pd.testing.assert_frame_equal(df, pd.concat(parts, ignore_index=True))
    summary = json.loads((work / "results" / "summary.json").read_text())
    files = summary["realdata"]["files"]
    assert files["processed"] == 3 and files["events"] == 192, files
    assert [f["input"] for f in files["failed"]] == [str(bad)], files
    assert [r["run"] for r in summary["realdata"]["runs"]] == [7001, 7002, 7004]
    assert all(r["events"] == 64 and r["reference"] == "xec baseline" for r in summary["realdata"]["runs"])
    assert "run by run" in (work / "results" / "summary.md").read_text()
    assert (work / "results" / "plots" / "run_stability_realdata.png").exists()
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(work, "--dry-run", *targets))

    (new,) = _simulate_runs(work, (7005,))
    period.write_text(period.read_text() + f"{new.name}\n")
    jobs = planned_jobs(snakemake(work, "--dry-run", "--printshellcmds", *targets))
    assert jobs["inference"] == 4 and jobs["baseline"] == 1, jobs  # the new file only, its four dead-sensor fills
    assert jobs["inference_merge"] == 4 and jobs["baseline_merge"] == 1 and jobs["summary"] == 1, jobs
    assert "inpainting" not in jobs and "inpainter_finetune" not in jobs, jobs  # nor the evaluation, fine-tuning

    period.write_text("".join(f"{p.name}\n" for p in runs if p not in (bad, runs[0])))
    snakemake(work, "results/inference/realdata.parquet")
    assert sorted(pd.read_parquet(merged)["run"].unique()) == [7002, 7004]
