import os
import platform
import subprocess
import sys

import pytest
import yaml

from xec.config import load_config, validate_config
from xec.errors import XecError


def test_default_config_is_valid_and_filled():
    cfg = load_config()
    assert cfg["normalization"]["preset"] == "meg2"
    assert cfg["data"]["tree"] == "tree"
    assert set(cfg["simulation"]["samples"]) >= {"train", "val", "bench", "realdata"}


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"normalization": {"preset": "meg2", "bogus_key": 1}}))
    with pytest.raises(XecError, match=r"normalization: Additional properties .*'bogus_key'"):
        load_config(p)


def test_wrong_type_is_named():
    with pytest.raises(XecError, match=r"simulation.chunk_size: 'many' is not of type 'integer'"):
        validate_config({"simulation": {"chunk_size": "many"}})


def test_missing_config_file(tmp_path):
    with pytest.raises(XecError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "xec.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("simulate", "shards", "reweight", "train", "export", "infer", "baseline", "model-info"):
        assert name in out.stdout


# ---- per-command views (xec/commands.py) ----------------------------------------------------------
def test_command_view_refuses_undeclared_keys():
    cfg = load_config(command="simulate", sample="bench")
    assert cfg["data"]["tree"] == "tree"
    assert cfg["simulation"]["samples"]["bench"]["energy_mev"] == 52.8
    with pytest.raises(XecError, match=r"xec simulate reads config key 'seed', which it does not declare"):
        cfg["seed"]
    with pytest.raises(XecError, match=r"config key 'data.npho_branch'"):
        cfg["data"]["npho_branch"]
    assert set(cfg["data"]) == {"tree"}  # iteration shows only the declared keys


def test_command_params_leave_out_runtime_keys():
    from xec.config import command_params

    cfg = load_config()
    params = command_params(cfg, "simulate", sample="train")
    # only the simulated sample's settings: another sample's change leaves this job alone
    assert set(params["simulation"]) == {"samples", "physics"}
    assert set(params["simulation"]["samples"]) == {"train"}
    assert params["data"] == {"tree": "tree"}
    shards = command_params(cfg, "shards")
    assert "workers" not in shards["shards"] and shards["shards"]["events_per_shard"] == 4096


def test_training_stages_read_only_their_own_model_keys():
    from xec.config import command_params
    from xec.models.presets import ENCODER_FIELDS

    cfg = load_config(overrides={"model.peak_hidden": 64})
    mae, reg = command_params(cfg, "train mae")["model"], command_params(cfg, "train regressor")["model"]
    assert "peak_hidden" not in mae and reg["peak_hidden"] == 64
    assert set(ENCODER_FIELDS) & set(cfg["model"]) <= set(mae)
    assert "mlflow" not in command_params(cfg, "train mae")  # tracking never changes the weights
    assert "mlflow" in load_config(command="train mae")  # ... but the command may read it


def test_every_command_declaration_names_schema_keys():
    """A declared key that the schema does not know is a typo that would silently drop a rerun."""
    from xec.commands import COMMANDS, config_keys
    from xec.config import load_schema

    schema = load_schema()
    for name in COMMANDS:
        for key in config_keys(name, sample="train", scan="lr"):
            node = schema
            for part in key.split("."):
                props = node.get("properties") or {}
                if part in props:
                    node = props[part]
                elif isinstance(node.get("additionalProperties"), dict):
                    node = node["additionalProperties"]
                else:
                    raise AssertionError(f"xec {name}: declared key {key!r} is not in the schema")


def test_error_goes_to_the_log_file(tmp_path):
    """An XecError of a command also lands in its --log file (the Snakemake rule's log)."""
    log = tmp_path / "logs" / "reweight.log"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xec.cli",
            "reweight",
            "--manifest",
            str(tmp_path / "none.json"),
            "--out",
            str(tmp_path / "w.npz"),
            "--log",
            str(log),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "xec reweight: error:" in proc.stderr
    assert "xec reweight: error:" in log.read_text() and "none.json" in log.read_text()


@pytest.mark.slow
def test_non_editable_install_finds_its_schema(tmp_path):
    """The schema ships inside the package: a wheel installed outside the repository validates a
    config (and falls back to the schema defaults when there is no config.yaml)."""
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    shutil.copytree(repo / "xec", src / "xec", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "wheel").glob("xec-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import xec.config as c; cfg = c.load_config(); "
        "assert 'site' in c.__file__, c.__file__; print(cfg['regressor']['epochs'], cfg['data']['tree'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["12", "tree"]  # the schema's defaults


_RSS_AFTER_FREE = r"""
import sys
import numpy as np
from xec.cli import retain_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

took = retain_freed_memory() if sys.argv[1] == "keep" else None
before = rss_mb()
a = np.ones(200 * 2**20 // 8)  # 200 MB: far above glibc's largest mmap threshold
del a
print(took, rss_mb() - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_cli_keeps_freed_memory_in_the_process():
    """The `xec` entry point tells malloc to keep what a step frees for the next one: a freed
    200 MB buffer stays in the process (and its pages stay faulted in), where by default it goes
    straight back to the kernel."""

    def run(mode: str, **env: str) -> tuple[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_AFTER_FREE, mode],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **env},
        )
        took, grown = out.stdout.split()
        return took, float(grown)

    took, kept = run("keep", XEC_KEEP_FREED_MEMORY="1")
    assert took == "True"
    assert kept > 190  # the whole buffer is still resident after the free
    _, default = run("default")
    assert default < 10
    took, opted_out = run("keep", XEC_KEEP_FREED_MEMORY="0")
    assert took == "False" and opted_out < 10
