"""Run-period scale-out: N simulated files through the per-file shards, baseline and inference
jobs and the merges, on the local profile, against one big job per stage over the same files.

    .venv/bin/python benchmarks/scatter.py --models results [--files 200] [--events 1000] [--cores 2]

``--models`` is a finished pipeline run (its config.yaml, baseline/calibration.json and the two
model.onnx files are reused; nothing is retrained). In a scratch directory the benchmark
simulates ``--files`` realdata files of ``--events`` events (seeds 9001, 9002, ...: distinct run
numbers), writes a run list and runs Snakemake for the merged ``inference/realdata.parquet``,
``inference/realdata_noinpaint.parquet``, ``baseline/realdata.parquet`` and the train shards
(the same files as the train split: ``scatter.files_per_job`` files per conversion job; the
models are linked in place so that only the per-file jobs and merges run). Then the same work
as one job each (``xec infer``/``xec baseline``/``xec shards`` with every file as ``--input``).
Prints a table (wall time, CPU-ms per event, CPU-s overhead per per-file job against the one
big job), the time to plan the DAG of N files, and the peak RSS of the merges (Snakemake
benchmark files) and of ``xec summary`` over the merged view. ``--profile slurm-gh`` runs the
per-file part on the one-node test cluster instead (``--skip-one-job``). Recorded in
docs/performance.md ("Run periods").
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"


_last_rss_mb = float("nan")


def _run(cmd: list[str], cwd: Path) -> float:
    global _last_rss_mb
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:6])} ...\n{(proc.stdout + proc.stderr)[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1:] or ["nan"]
    _last_rss_mb = float(last[0]) / 1024 if last[0].isdigit() else float("nan")
    return time.perf_counter() - t0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _max_rss_mb(tsv: Path) -> float:
    header, values = tsv.read_text().splitlines()[:2]
    row = dict(zip(header.split("\t"), values.split("\t")))
    return float(row["max_rss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="a finished pipeline run directory (results/)")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", default=None, help="work here and keep it (default: a temporary directory)")
    ap.add_argument(
        "--profile",
        default="local",
        help="Snakemake profile of the per-file run (slurm-gh: start scripts/slurm/start_cluster.sh first)",
    )
    ap.add_argument("--files-per-job", type=int, default=20, help="scatter.files_per_job (cluster groups, shard parts)")
    ap.add_argument("--skip-one-job", action="store_true", help="only the per-file run (e.g. a second profile)")
    args = ap.parse_args()
    models = Path(args.models).resolve()
    xec = [sys.executable, "-m", "xec.cli"]
    work = Path(args.keep or tempfile.mkdtemp(prefix="xec-scatter-"))
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results"
    if not results.exists():  # hard links (mtimes kept): the finished run's models are up to date here
        shutil.copytree(models, results, copy_function=os.link, ignore=shutil.ignore_patterns("inference", "plots"))
    for p in results.glob("baseline/realdata*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    cfg = results / "config.yaml"

    t0 = time.perf_counter()
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    files = [runs / f"run{9001 + i}.root" for i in range(args.files)]

    def simulate(i: int) -> None:
        if not files[i].exists():
            _run(xec + ["simulate", "--config", str(cfg), "--sample", "realdata", "--events", str(args.events)]
                 + ["--seed", str(9001 + i), "--out", str(files[i])], work)  # fmt: skip

    with ThreadPoolExecutor(args.cores) as pool:
        list(pool.map(simulate, range(args.files)))
    t_sim = time.perf_counter() - t0
    (runs / "period.txt").write_text("".join(f"{p.name}\n" for p in files))
    shutil.copy2(models / "config.yaml", work / "config.yaml")  # the models' resolved config: same params
    period = runs / "period.txt"
    (work / "period.yaml").write_text(
        f"data: {{realdata: [{period}], train: [{period}]}}\nscatter: {{files_per_job: {args.files_per_job}}}\n"
    )
    targets = ["results/shards/train/manifest.json", "results/inference/realdata.parquet",
               "results/inference/realdata_noinpaint.parquet", "results/baseline/realdata.parquet"]  # fmt: skip
    smk = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(work)]
    smk += ["--profile", str(REPO / "profiles" / args.profile), "--configfile", "period.yaml"]
    smk += ["--cores", str(args.cores)] if args.profile == "local" else []
    # only the per-file stages run: the models, the calibration and their inputs are the finished run's
    smk += ["--allowed-rules", "shards_part", "shards", "inference", "inference_merge", "baseline", "baseline_merge"]
    smk += ["scatter_chunk"]
    smk += ["--"]  # the targets follow (--allowed-rules takes every word up to the next option)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    _run(smk + targets, work)
    t_scatter, cpu_scatter = time.perf_counter() - t0, _children_cpu() - cpu0
    n_parts = -(-args.files // args.files_per_job)
    n_jobs = 3 * args.files + n_parts
    t0 = time.perf_counter()
    _run(smk[:-1] + ["--dry-run", "--", *targets], work)
    t_plan = time.perf_counter() - t0
    if args.skip_one_job:
        print(f"per-file run ({args.profile}): {n_jobs} jobs + 4 merges, {t_scatter:.0f} s; planning {t_plan:.1f} s")
        return

    one = work / "one"
    one.mkdir(exist_ok=True)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    models_args = ["--model", str(results / "regressor" / "model.onnx")]
    all_files = [str(p) for p in files]
    _run(xec + ["infer", "--config", str(cfg), *models_args, "--inpainter", str(results / "inpainter" / "model.onnx"),
         "--input", *all_files, "--out", str(one / "r.root")], work)  # fmt: skip
    _run(xec + ["infer", "--config", str(cfg), *models_args, "--input", *all_files, "--out", str(one / "n.root")], work)
    _run(xec + ["baseline", "--config", str(cfg), "--calibration", str(results / "baseline" / "calibration.json"),
         "--input", *all_files, "--out", str(one / "b.parquet")], work)  # fmt: skip
    _run(xec + ["shards", "--config", str(cfg), "--input", *all_files, "--split", "train", "--out", str(one / "shards"),
         "--workers", str(args.cores)], work)  # fmt: skip
    t_one, cpu_one = time.perf_counter() - t0, _children_cpu() - cpu0

    t0 = time.perf_counter()
    summary_log = work / "summary.log"
    rss = [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r)"]  # fmt: skip
    _run(rss + xec + ["summary", "--config", str(cfg),
         "--realdata-predictions", str(results / "inference" / "realdata.parquet"),
         "--realdata-noinpaint-predictions", str(results / "inference" / "realdata_noinpaint.parquet"),
         "--realdata-baseline", str(results / "baseline" / "realdata.parquet"), "--out", str(work / "summary.json"),
         "--log", str(summary_log)], work)  # fmt: skip
    t_summary = time.perf_counter() - t0
    summary_rss = _last_rss_mb

    events = args.files * args.events
    merges = sorted((results / "benchmarks").glob("*/realdata*.tsv"))
    merge_rss = max((_max_rss_mb(p) for p in merges), default=float("nan"))
    load = os.getloadavg()[0]
    print(f"\n{args.files} files x {args.events} events on {platform.node()} ({os.cpu_count()} CPUs), "
          f"load {load:.1f}; simulation {t_sim:.0f} s\n")  # fmt: skip
    print("| mode | jobs | wall (s) | CPU-ms/event | CPU-s overhead per job |")
    print("|---|---|---|---|---|")
    overhead = (cpu_scatter - cpu_one) / n_jobs
    print(f"| per file ({args.profile} profile, {args.cores} cores) | {n_jobs} + 4 merges | {t_scatter:.0f} | "
          f"{1e3 * cpu_scatter / events:.2f} | {overhead:.2f} |")  # fmt: skip
    print(f"| one job per stage, in turn | 4 | {t_one:.0f} | {1e3 * cpu_one / events:.2f} | - |")
    print(f"\nplanning the DAG of {args.files} files (dry run, nothing to do): {t_plan:.1f} s")
    print(f"\nmerge peak RSS {merge_rss:.0f} MB; xec summary over the merged view: {t_summary:.0f} s, "
          f"peak RSS {summary_rss:.0f} MB")  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
