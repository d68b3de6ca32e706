# Helpers shared by the stage files (input files, resolved config, job environment). Functions
# live here and nowhere else, as `snakemake --lint` wants them apart from the rules.
import glob as _glob
import os as _os
import platform as _platform
import sys as _sys
from pathlib import Path as _Path

from snakemake.settings.types import DeploymentMethod as _DeploymentMethod

from xec.config import command_params as _command_params

SAMPLES = ["train", "val", "bench", "realdata"]


def input_files(sample):
    """ROOT files of a sample: the configured paths/globs, or the simulated file.

    A configured pattern that matches nothing stops the DAG construction with the pattern named."""
    patterns = config["data"][sample]
    if not patterns:
        return [f"{RESULTS}/data/{sample}.root"]
    files = []
    for pattern in patterns:
        matched = sorted(_glob.glob(pattern))
        if not matched:
            raise WorkflowError(f"config data.{sample}: no file matches {pattern!r}")
        files.extend(matched)
    return files


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


def write_resolved_config(path):
    """Write the validated config (defaults filled in) that every `xec` command reads; rewritten
    only when its content changes. It is deliberately no input of any job: what a job depends on
    reaches it through `params:`, so editing one section reruns only the rules that use it."""
    import yaml
    from xec.utils import atomic_path

    text = yaml.safe_dump(config, sort_keys=True)
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


def command_values(command, **fields):
    """The config values a rule's `xec` command depends on, from the command's declaration in
    xec/commands.py: the rule's `params:` entry, so that the rule reruns exactly when one changes
    (and the command itself cannot read a key that is not declared there)."""
    return _command_params(config, command, **fields)
