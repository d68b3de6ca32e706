# Helpers shared by the stage files (run directories, input files, resolved configs, job
# environment). Functions live here and nowhere else, as `snakemake --lint` wants them apart from
# the rules.
import functools as _functools
import json as _json
import os as _os
import platform as _platform
import sys as _sys
from pathlib import Path as _Path

from snakemake.settings.types import DeploymentMethod as _DeploymentMethod

from xec.commands import infer_command as _infer_command
from xec.config import command_params as _command_params
from xec.errors import XecError as _XecError
from xec.inputs import expand_input_entries as _expand_input_entries
from xec.inputs import stems_of as _stems_of
from xec.scans import expand_scans as _expand_scans
from xec.scatter import FAILURE_SUFFIX as _FAILURE_SUFFIX
from xec.scatter import read_failure_record as _read_failure_record

# the pile-up evaluation sample (issue 13): evaluated like bench when configured (files in
# data.pileup or simulation.samples.pileup)
PILEUP = ["pileup"] if config["data"]["pileup"] or "pileup" in config["simulation"]["samples"] else []
SAMPLES = ["train", "val", "bench", "realdata", *PILEUP]
# the classical baseline's samples; val: over 15-60 MeV, for the resolution-vs-energy plot next to
# the ML val predictions
BASELINE_SAMPLES = ["bench", "realdata", "val", *PILEUP]

# ---- run directories: the main run and the points of the configured scans ------------------------
# The stage rules write under a run directory `{rundir}`, which is `results` (the main run) or
# `results/scans/<scan>/<point>` (one point of a scan: the main config plus the point's overrides).
# A point reuses any output whose command, and every command upstream of it, reads the same config
# values as in an earlier run directory (the main run first): NODES below is the DAG at the level
# of those values, and `at()` resolves where a node's outputs live. So a scan over `regressor.*`
# keys reuses the main run's shards, reweighting and MAE, and a scan over an encoder width retrains
# the MAE per point, from the same per-command declarations (xec/commands.py) as the rules' params.
RUNDIR_PATTERN = rf"{RESULTS}(?:/scans/[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+)?"


def run_configs():
    """(scan -> [ScanPoint], run directory -> validated config), the main run first."""
    try:
        scans = _expand_scans(config)
    except XecError as exc:
        raise WorkflowError(str(exc))
    runs = {RESULTS: config}
    for scan, points in scans.items():
        for point in points:
            cfg = dict(point.config)
            canonicalize_config(cfg)
            runs[scan_rundir(scan, point.name)] = cfg
    return scans, runs


def scan_rundir(scan, point):
    return f"{RESULTS}/scans/{scan}/{point}"


def resolved_config(rundir):
    """The config file every command of a run directory reads (written when the DAG is built)."""
    return f"{rundir}/config.yaml"


# node -> (xec command whose declared config values the node's outputs depend on, its placeholder
# values, upstream nodes); "data:<sample>" is a sample's ROOT files (configured, or simulated).
def _node(rundir, node):
    kind, _, arg = node.partition(":")
    if kind == "data":
        files = RUN_CONFIGS[rundir]["data"][arg]
        return (None, {"files": files}, []) if files else ("simulate", {"sample": arg}, [])
    if kind == "shards":
        return "shards", {}, [f"data:{arg}"]
    if kind == "export":
        return "export", {}, [arg, "shards:val"]
    if kind == "baseline":
        return "baseline", {}, [f"data:{arg}", "baseline_calibration"]
    if kind == "inference":
        run = INFERENCE_RUNS[arg]
        inpainter = inference_inpainter(arg, rundir)
        models = ["export:regressor"] + ([f"export:{inpainter}"] if inpainter else [])
        return infer_command(arg), {}, [*models, f"data:{run['sample']}"]
    if node == "regressor" and RUN_CONFIGS[rundir]["regressor"]["dead_fill"] == "inpainter":
        command, fields, upstream = NODES[node]
        return command, fields, [*upstream, "inpainter"]
    if node == "inpainter" and not inpainter_uses_mae(rundir):
        command, fields, upstream = NODES[node]
        return command, fields, [u for u in upstream if u != "mae"]
    if node == "inpainting" and RUN_CONFIGS[rundir]["finetune"]["enabled"]:
        command, fields, upstream = NODES[node]
        return command, fields, [*upstream, "export:inpainter_finetune"]
    return NODES[node]


NODES = {
    "reweighting": ("reweight", {}, ["shards:train"]),
    "mae": ("train mae", {}, ["shards:train", "shards:val"]),
    "inpainter": ("train inpainter", {}, ["mae", "shards:train", "shards:val"]),
    "inpainter_finetune": ("finetune", {}, ["inpainter", "data:realdata"]),
    "regressor": ("train regressor", {}, ["mae", "reweighting", "shards:train", "shards:val"]),
    "baseline_calibration": ("baseline", {}, ["data:train"]),
    "inpainting": ("inpainting", {}, ["export:inpainter", "data:val", "data:realdata"]),
    "deadsweep": ("deadsweep", {}, ["export:regressor", "export:inpainter", "data:bench", "baseline_calibration"]),
    "summary": (
        "summary",
        {},
        [
            "inference:bench",
            "inference:realdata",
            "inference:realdata_noinpaint",
            "inference:realdata_neighbour",
            "inference:realdata_solid_angle",
            "regressor",
            "baseline:bench",
            "baseline:val",
            "baseline:realdata",
            "inpainting",
            "deadsweep",
            *(f"{kind}:pileup" for kind in ("inference", "baseline") if PILEUP),
        ],
    ),
}


def inpainter_uses_mae(rundir=RESULTS):
    """Whether the inpainter starts from the MAE's encoder (model.inpaint_context; without it
    its outputs do not depend on the MAE)."""
    return bool(RUN_CONFIGS[rundir]["model"].get("inpaint_context", True))


def regressor_fill_inpainter(rundir=RESULTS):
    """The inpainter checkpoint the regressor's augmentation fills dead sensors with
    (regressor.dead_fill: inpainter), as a list of input files: none with dead_fill sentinel."""
    if RUN_CONFIGS[rundir]["regressor"]["dead_fill"] != "inpainter":
        return []
    return [at(rundir, "inpainter", "inpainter/checkpoint.pt")]


def inference_inpainter(name, rundir=RESULTS):
    """The inpainter an inference run fills dead sensors with (its training node): the one
    fine-tuned on the realdata sample for the realdata runs (finetune.enabled), else the
    simulation-only one; None for a run without the inpainter."""
    run = INFERENCE_RUNS[name]
    if run["fill"] != "inpainter":
        return None
    if run["sample"] == "realdata" and RUN_CONFIGS[rundir]["finetune"]["enabled"]:
        return "inpainter_finetune"
    return "inpainter"


def infer_command(name):
    """The xec/commands.py declaration an inference run's `xec infer --fill` reads its config
    through (the classical fills also read `baseline`)."""
    return _infer_command(INFERENCE_RUNS[name]["fill"])


@_functools.lru_cache(maxsize=None)
def node_key(rundir, node):
    """What a node's outputs depend on in `rundir`: its command's config values and its inputs'."""
    command, fields, upstream = _node(rundir, node)
    values = _command_params(RUN_CONFIGS[rundir], command, **fields) if command else fields
    return _json.dumps([node, values, [node_key(rundir, u) for u in upstream]], sort_keys=True)


@_functools.lru_cache(maxsize=None)
def owner(rundir, node):
    """The first run directory (main run first) whose outputs of `node` serve `rundir`."""
    key = node_key(rundir, node)
    return next(r for r in RUN_CONFIGS if node_key(r, node) == key)


def at(rundir, node, path):
    """`path` (relative to a run directory) of `node`'s output, where `rundir` finds it."""
    return f"{owner(rundir, node)}/{path}"


@_functools.lru_cache(maxsize=None)
def _configured_inputs(sample, rundir):
    """({file stem: ROOT file}, {ROOT file: events or None}) of a configured sample."""
    data = RUN_CONFIGS[rundir]["data"]
    try:
        expanded = _expand_input_entries(data[sample])
        stems = _stems_of(expanded)
        from xec.rootio import check_input_layout

        counts = check_input_layout(
            expanded, data["tree"], (data["npho_branch"], data["time_branch"]), cache=".snakemake/xec_input_layout.json"
        )
    except _XecError as exc:
        raise WorkflowError(f"config data.{sample}: {exc}") from None
    return {stem: f for stem, (f, _) in stems.items()}, counts


def sample_inputs(sample, rundir=RESULTS):
    """{file stem: ROOT file} of a sample, in order: the configured paths, globs and run lists
    (xec.inputs), or the simulated file (stem = the sample's name). Per-file outputs are named
    by stem. A missing file, an empty run list, a file named twice, two files with one name, or
    a file without the configured tree/branches stops the DAG construction, naming the list and
    line; a file that does not open at all is left to its own job (which fails and is listed)."""
    if not RUN_CONFIGS[rundir]["data"][sample]:
        return {sample: at(rundir, f"data:{sample}", f"data/{sample}.root")}
    return _configured_inputs(sample, rundir)[0]


def first_files(sample, n_events, rundir=RESULTS, skip=()):
    """The sample's first files that hold `n_events` events (all files for None; files in
    `skip` and files that do not open are passed over): an evaluation reading only its first
    events then does not rerun when a run period grows."""
    files = [f for f in input_files(sample, rundir) if f not in skip]
    if n_events is None or not RUN_CONFIGS[rundir]["data"][sample]:
        return files
    counts = _configured_inputs(sample, rundir)[1]
    out, total = [], 0
    for f in files:
        if counts.get(f) is None:
            continue
        out.append(f)
        total += counts[f]
        if total >= n_events:
            break
    return out


def input_files(sample, rundir=RESULTS):
    """ROOT files of a sample, in order (sample_inputs)."""
    return list(sample_inputs(sample, rundir).values())


def file_groups(sample, rundir=RESULTS):
    """The sample's file stems in consecutive groups of `scatter.files_per_job` (the shard
    conversion jobs): group k is stems [k n, (k+1) n)."""
    stems = list(sample_inputs(sample, rundir))
    n = RUN_CONFIGS[rundir]["scatter"]["files_per_job"]
    return [stems[i : i + n] for i in range(0, len(stems), n)]


# ---- per-file scatter (issue 17, xec.scatter) ---------------------------------------------------
STEM_PATTERN = r"[^/]+"


# On a cluster, `scatter.files_per_job` consecutive files of a sample share one job: their
# per-file jobs and one tiny `scatter_chunk` job that lists them form a connected Snakemake group
# (one group per chunk of files), which the executor submits as one job. Locally groups do not
# apply: every file is its own job.
def folder_sample(folder):
    """The sample whose files the per-file jobs of `folder` (inference/<name>, baseline/<sample>) read."""
    kind, _, name = folder.partition("/")
    return INFERENCE_RUNS[name]["sample"] if kind == "inference" else name


@_functools.lru_cache(maxsize=None)
def _stem_positions(sample, rundir):
    return {stem: i for i, stem in enumerate(sample_inputs(sample, rundir))}


def chunk_of(sample, stem, rundir=RESULTS):
    """The chunk index of a file: its position in the sample's list // files_per_job (appending
    files never moves a file to another chunk). One lookup per job, not a list scan: planning
    stays linear in the number of files."""
    return _stem_positions(sample, rundir)[stem] // RUN_CONFIGS[rundir]["scatter"]["files_per_job"]


def scatter_group(folder, chunk):
    return "-".join(["scatter", *_Path(folder).parts, f"{int(chunk):04d}"])


def chunk_marker(rundir, folder, chunk):
    return f"{rundir}/{folder}/chunks/{int(chunk):04d}.txt"


def chunk_parts(folder, chunk, rundir=RESULTS):
    """The per-file parquet outputs of one chunk (files with a current failure record left out)."""
    sample = folder_sample(folder)
    n = RUN_CONFIGS[rundir]["scatter"]["files_per_job"]
    stems = list(sample_inputs(sample, rundir))[int(chunk) * n : (int(chunk) + 1) * n]
    bad = {record for _, record in scatter_parts(sample, folder, rundir)[1]}
    return [f"{rundir}/{folder}/{stem}.parquet" for stem in stems if failure_record(rundir, folder, stem) not in bad]


def chunk_markers(folder, rundir=RESULTS):
    """The markers of every chunk that holds a file still to merge."""
    sample = folder_sample(folder)
    n = RUN_CONFIGS[rundir]["scatter"]["files_per_job"]
    chunks = range(-(-len(sample_inputs(sample, rundir)) // n))
    return [chunk_marker(rundir, folder, k) for k in chunks if chunk_parts(folder, k, rundir)]


def scatter_input(sample, stem, rundir=RESULTS):
    """The input ROOT file of a per-file job."""
    files = sample_inputs(sample, rundir)
    if stem not in files:
        raise WorkflowError(f"no input file named {stem!r} in data.{sample}")
    return files[stem]


def failure_record(rundir, folder, stem):
    """Where a per-file job of `folder` (e.g. inference/realdata) records a bad input file."""
    return f"{rundir}/{folder}/{stem}{_FAILURE_SUFFIX}"


@_functools.lru_cache(maxsize=None)
def scatter_parts(sample, folder, rundir=RESULTS):
    """((per-file parquet, ...), ((input, failure record), ...)) of a merge: files whose current
    failure record says they are bad (xec.scatter) are left out and listed, all others are
    inputs of the merge (so a new file in the list schedules exactly its own job). Read once per
    DAG construction: records written by this run's jobs count from the next invocation on."""
    parts, failed = [], []
    for stem, path in sample_inputs(sample, rundir).items():
        record = failure_record(rundir, folder, stem)
        if _read_failure_record(record, path) is not None:
            failed.append((path, record))
        else:
            parts.append(f"{rundir}/{folder}/{stem}.parquet")
    return tuple(parts), tuple(failed)


def failed_inputs(sample, folder, rundir=RESULTS):
    """The sample's files with a current failure record of the per-file jobs in `folder`."""
    return {path for path, _ in scatter_parts(sample, folder, rundir)[1]}


def merge_args(sample, folder, rundir=RESULTS):
    """`--part STEM INPUT PARQUET ...` and `--failed INPUT RECORD ...` of `xec merge`."""
    parts, failed = scatter_parts(sample, folder, rundir)
    stems = {f"{rundir}/{folder}/{stem}.parquet": (stem, path) for stem, path in sample_inputs(sample, rundir).items()}
    args = [f"--part {stems[p][0]} {stems[p][1]} {p}" for p in parts]
    args += [f"--failed {path} {record}" for path, record in failed]
    return " ".join(args)


SIMULATED_SAMPLES = [s for s in SAMPLES if not config["data"][s]]


def canonicalize_config(cfg):
    """Sort every mapping of the config by key, in place. Snakemake compares `params:` by their
    text, so without this merely reordering keys in config.yaml (or dumping it with another tool)
    would rerun every rule."""

    def _sorted(node):
        if isinstance(node, dict):
            return {k: _sorted(node[k]) for k in sorted(node)}
        if isinstance(node, list):
            return [_sorted(v) for v in node]
        return node

    items = _sorted(dict(cfg))
    cfg.clear()
    cfg.update(items)


def write_resolved_config(path, cfg):
    """Write the validated config (defaults filled in) that every `xec` command of a run directory
    reads; rewritten only when its content changes. It is deliberately no input of any job: what a
    job depends on reaches it through `params:`, so editing one section reruns only the rules that
    use it."""
    import yaml
    from xec.utils import atomic_path

    text = yaml.safe_dump(cfg, sort_keys=True)
    path = _Path(path)
    if not path.exists() or path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)


# ---- job environment (README "Environments") ---------------------------------------------------
# XEC_ENV names the environment the jobs run in:
#   unset, "" or "current" -> the environment Snakemake itself runs in (profiles/local, CI);
#   "x86_64-cuda" / "aarch64-cuda" -> the prefix envs/<name> (relative to the working directory),
#       created once from workflow/envs/<name>.yaml; profiles/slurm-a100 and profiles/slurm-gh
#       set these defaults unless XEC_ENV is already exported;
#   any other value -> a path to an existing conda environment or venv prefix.
# All rules declare `conda: SOFTWARE_ENV` (that prefix, else the spec file of the architecture), so
# `--sdm conda` activates it; otherwise the shell prefix below puts the environment's bin/ first
# on PATH in every job (so `xec` resolves even when snakemake was started as .venv/bin/snakemake
# without activating the venv) and, for a named environment, prints it into the job's log.
ENV_SPECS = {"x86_64": "x86_64-cuda", "aarch64": "aarch64-cuda", "arm64": "aarch64-cuda"}


def _job_env_prefix():
    name = _os.environ.get("XEC_ENV", "").strip()
    if not name or name == "current":
        return None
    spec = _Path(workflow.basedir) / "envs" / f"{name}.yaml"
    prefix = (_Path("envs") / name if spec.exists() else _Path(name)).expanduser().absolute()
    if not (prefix / "bin").is_dir():
        hint = (
            f"create it once with `conda env create -p envs/{name} -f workflow/envs/{name}.yaml`"
            if spec.exists()
            else "XEC_ENV must name workflow/envs/<name>.yaml or an environment prefix"
        )
        raise WorkflowError(
            f"job environment {prefix} (XEC_ENV={name!r}) not found: {hint}; "
            "or `export XEC_ENV=current` to run the jobs in the current environment (README, Environments)"
        )
    return prefix


JOB_ENV_PREFIX = _job_env_prefix()
_USE_CONDA = _DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_ENV_NAME = _os.environ.get("XEC_ENV", "").strip()
if JOB_ENV_PREFIX is not None and _USE_CONDA:
    SOFTWARE_ENV = str(JOB_ENV_PREFIX)  # `--sdm conda`: Snakemake activates the existing prefix
else:
    # documentation (and `--sdm conda` without XEC_ENV: Snakemake builds it): the spec file of
    # the named environment, else of this machine's architecture. (Not the prefix itself: for
    # an existing prefix Snakemake would call `conda env export` even without `--sdm conda`.)
    _spec = _Path(workflow.basedir) / "envs" / f"{_ENV_NAME}.yaml"
    if not _spec.exists():
        _spec = _Path(workflow.basedir) / "envs" / f"{ENV_SPECS.get(_platform.machine(), 'x86_64-cuda')}.yaml"
    SOFTWARE_ENV = str(_spec)
if not _USE_CONDA:
    if JOB_ENV_PREFIX is not None:
        shell.prefix(
            f'set -euo pipefail; export PATH="{JOB_ENV_PREFIX}/bin:$PATH"; '
            f'echo "[xec] job environment {JOB_ENV_PREFIX} on $(uname -m) node $(hostname -s)" >&2; '
        )
    else:
        shell.prefix(f'set -euo pipefail; export PATH="{_Path(_sys.executable).parent}:$PATH"; ')


def command_values(command, rundir=RESULTS, **fields):
    """The config values a rule's `xec` command depends on in a run directory, from the command's
    declaration in xec/commands.py: the rule's `params:` entry, so that the rule reruns exactly
    when one changes (and the command itself cannot read a key that is not declared there)."""
    return _command_params(RUN_CONFIGS[rundir], command, **fields)


def scan_inputs(scan):
    """Per point of a scan (in its order): its physics summary and its regressor's metrics, from
    the run directory that holds them."""
    inputs = {}
    for i, point in enumerate(SCANS[scan]):
        rundir = scan_rundir(scan, point.name)
        inputs[f"summary_{i}"] = at(rundir, "summary", "summary.json")
        inputs[f"metrics_{i}"] = at(rundir, "regressor", "regressor/metrics.json")
    return inputs


def scan_point_args(scan, input):
    """`--point NAME SUMMARY METRICS` for each point of a scan."""
    return " ".join(
        f"--point {p.name} {input[f'summary_{i}']} {input[f'metrics_{i}']}" for i, p in enumerate(SCANS[scan])
    )


def mlflow_tags(rundir):
    """`--tag` options naming the scan and point of a scan run directory (none for the main run)."""
    parts = rundir.split("/")
    return f"--tag scan={parts[2]} --tag point={parts[3]}" if len(parts) == 4 else ""
