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
