"""The SLURM profile against a REAL one-node SLURM cluster (no mock).

The module fixture runs scripts/slurm/start_cluster.sh (which apt-get installs slurm-wlm and
munge on a fresh Debian machine, writes a one-node configuration with a fake GPU generic
resource and starts munged, slurmctld and slurmd), then the pipeline runs on the tiny config
through profiles/slurm-gh with the site names given the documented way (XEC_SLURM_* variables,
deliberately NOT the profile's defaults, so the overrides are exercised) plus one speed knob
(`--slurm-init-seconds-before-status-checks 3` and no growing wait between status checks:
tests/slurm_fixed_polling.py; polling only). The checks: every job went through
sbatch to the partition its rule belongs to (slurmctld's job-completion record and squeue), the
GPU rules got a GPU, each job ran in the profile's job environment, every output exists and a
second run has nothing to do. The daemons are stopped at the end.

Skipped only where the machine forbids it (not Linux, not root, no SLURM and no apt-get, or a
real cluster's /etc/slurm/slurm.conf present): the start script exits 3 and says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
SNAKEFILE = REPO / "workflow" / "Snakefile"
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# Site names of the test cluster: not the profile defaults (cpu / gh / gh200), so the run only
# works if the environment overrides reach the sbatch calls.
CPU_PARTITION = "xectest-cpu"
GPU_PARTITION = "xectest-gh"
GPU_MODEL = "gh200"
ACCOUNT = "xecproj"
# Rules that must land on the GPU partition with a GPU (those the profile's set-resources name).
GPU_RULES = {"mae", "inpainter", "regressor_epochs", "regressor"}
# The per-file rules (Snakemake group "scatter") and how many of them share one SLURM job.
SCATTER_RULES = {"inference", "baseline", "scatter_chunk"}
FILES_PER_JOB = 2
REAL_RUNS = (4041, 4042, 4043)  # realdata as a run list of 3 files: 2 chunks of <= 2 files


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if sys.platform != "linux":
        pytest.skip("a test SLURM cluster needs Linux")
    state_dir = tmp_path_factory.mktemp("slurm")
    env = dict(
        os.environ,
        XEC_SLURM_DIR=str(state_dir),
        XEC_SLURM_CPU_PARTITION=CPU_PARTITION,
        XEC_SLURM_GPU_PARTITION=GPU_PARTITION,
        XEC_SLURM_GPU_MODEL=GPU_MODEL,
    )
    env.pop("SLURM_CONF", None)
    start = subprocess.run([str(SCRIPTS / "start_cluster.sh")], env=env, capture_output=True, text=True, timeout=600)
    if start.returncode == 3:
        pytest.skip(start.stderr.strip().splitlines()[-1])
    if start.returncode != 0:
        subprocess.run([str(SCRIPTS / "stop_cluster.sh")], env=env, capture_output=True, timeout=120)
        pytest.fail(f"start_cluster.sh failed (rc {start.returncode}):\n{start.stdout}\n{start.stderr}")
    try:
        yield state_dir
    finally:
        subprocess.run([str(SCRIPTS / "stop_cluster.sh")], env=env, capture_output=True, timeout=120)


def _jobcomp(state_dir: Path) -> dict[str, dict[str, str]]:
    """slurmctld's job-completion records: job id -> {field: value}."""
    records = {}
    path = state_dir / "log" / "jobcomp.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            records[fields["JobId"]] = fields
    return records


def _squeue_gres() -> dict[str, str]:
    """Job id -> TRES per job (e.g. gres:gpu:gh200:1) of the jobs slurmctld still remembers."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "-O", "jobid:20,tres-per-job:60"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    return {parts[0]: (parts[1] if len(parts) > 1 else "") for parts in rows if parts}


def test_pipeline_through_slurm_gh_profile(slurm_cluster, tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    # realdata is a run list of 3 files and scatter.files_per_job 2: each per-file folder of
    # realdata (inference with and without inpainting, baseline) goes to SLURM as 2 group jobs
    # (files 1-2, file 3), bench and val (one file each) as 1
    runs = work / "runs"
    for run in REAL_RUNS:
        subprocess.run(
            [sys.executable, "-m", "xec.cli", "simulate", "--config", str(TINY_CONFIG), "--sample", "realdata"]
            + ["--events", "64", "--seed", str(run), "--out", str(runs / f"run{run}.root")],
            check=True,
            capture_output=True,
            timeout=120,
        )
    (runs / "period.txt").write_text("".join(f"run{run}.root\n" for run in REAL_RUNS))
    # Without the pile-up sample and the realdata fine-tuning (7 of 49 sbatch jobs; both run in
    # the local tiny DAG of test_workflow.py): every job costs ~2 s of Snakemake start-up on top
    # of its work, and the whole run shares the machine's 2 cores.
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    del cfg["simulation"]["samples"]["pileup"]
    cfg.update(
        scatter={"files_per_job": FILES_PER_JOB},
        data={"realdata": [str(runs / "period.txt")]},
        finetune={"enabled": False},
    )
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # The profile's job environment is envs/aarch64-cuda (XEC_ENV default of profiles/slurm-gh);
    # "created once" here as this test's own environment, whatever the machine's architecture.
    (work / "envs").mkdir()
    (work / "envs" / "aarch64-cuda").symlink_to(Path(sys.prefix))

    env = dict(
        os.environ,
        XEC_SLURM_ACCOUNT=ACCOUNT,
        XEC_SLURM_CPU_PARTITION=CPU_PARTITION,
        XEC_SLURM_GPU_PARTITION=GPU_PARTITION,
        XEC_SLURM_GPU_MODEL=GPU_MODEL,
    )
    for var in ("XEC_ENV", "SLURM_CONF"):
        env.pop(var, None)
    args = ["-s", str(SNAKEFILE), "--directory", str(work)]
    snakemake = [sys.executable, "-m", "snakemake", *args]
    run = subprocess.run(
        [sys.executable, str(REPO / "tests" / "slurm_fixed_polling.py"), *args]
        + ["--profile", str(REPO / "profiles" / "slurm-gh"), "--slurm-init-seconds-before-status-checks", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]

    # Every job of the run was submitted with sbatch (the executor reports the SLURM job id).
    submitted = dict(re.findall(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", out))
    stats = re.search(r"Job stats:\n(.*?)\n\s*total\s+(\d+)", out, re.S)
    assert stats, out[-3000:]
    rule_counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", stats.group(1), re.M)}
    n_local = rule_counts.get("all", 0)
    n_scatter = sum(rule_counts.get(r, 0) for r in SCATTER_RULES)
    n_groups = rule_counts["scatter_chunk"]  # one per group: it joins its chunk's per-file jobs
    # + bench (inference), bench and val (baseline): one file, one group each; groups: 5 realdata
    # folders (4 inference fills, baseline) x 2 chunks + those 3 (a local dry run of this config
    # counts 13 scatter_chunk jobs)
    assert rule_counts["inference"] == 4 * 3 + 1 and rule_counts["baseline"] == 3 + 2, rule_counts
    assert n_groups == 5 * 2 + 3, rule_counts
    assert "inpainter_finetune" not in rule_counts and rule_counts["simulate"] == 3, rule_counts  # train, val, bench
    assert len(submitted) == int(stats.group(2)) - n_local - n_scatter + n_groups, (rule_counts, submitted)
    assert len(submitted) >= 8  # simulate x3, shards x3, reweighting, mae at least

    # ... and SLURM ran each of them to completion, on the partition its rule belongs to, under
    # the overridden account; the GPU rules with a GPU of the configured model.
    records = _jobcomp(slurm_cluster)
    gres = _squeue_gres()
    rules_seen = set()
    for jobid, log in submitted.items():
        rule = Path(log).relative_to(work / "results" / "logs" / "slurm").parts[0]
        rule = "scatter" if rule.startswith("group_scatter-") else rule.removeprefix("rule_")
        rules_seen.add(rule)
        rec = records.get(jobid)
        assert rec is not None, f"SLURM job {jobid} ({rule}) not in slurmctld's completion log"
        assert rec["JobState"] == "COMPLETED", rec
        assert rec["Account"] == ACCOUNT, rec
        want = GPU_PARTITION if rule in GPU_RULES else CPU_PARTITION
        assert rec["Partition"] == want, (rule, rec)
        if rule in GPU_RULES:
            assert f"gpu:{GPU_MODEL}:" in gres.get(jobid, ""), (rule, jobid, gres.get(jobid))
        # the batch log (kept by the profile) shows the job ran in the profile's environment
        text = Path(log).read_text()
        assert f"[xec] job environment {work / 'envs' / 'aarch64-cuda'}" in text, text[-2000:]
    assert rules_seen == set(rule_counts) - {"all"} - SCATTER_RULES | {"scatter"}, rules_seen
    assert sum("group_scatter" in log for log in submitted.values()) == n_groups

    # Grouping changes no number: a per-file output made inside a group job equals the same file
    # run through `xec infer` alone.
    results = work / "results"
    alone = tmp_path / "alone.parquet"
    subprocess.run(
        [sys.executable, "-m", "xec.cli", "infer", "--config", str(results / "config.yaml")]
        + ["--model", str(results / "regressor" / "model.onnx"), "--input", str(results / "data" / "bench.root")]
        + ["--out", str(tmp_path / "alone.root"), "--parquet", str(alone)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    import pandas as pd

    pd.testing.assert_frame_equal(
        pd.read_parquet(results / "inference" / "bench" / "bench.parquet"), pd.read_parquet(alone)
    )

    # Every output of the DAG exists: a second (local, dry) run has nothing to do.
    dry = subprocess.run(
        snakemake + ["--profile", str(REPO / "profiles" / "local"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]
