"""`xec shards --part` + `xec shards-merge`: a split converted in groups of files is, byte for byte,
the one-job conversion; inconsistent parts are refused naming the part."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import uproot
from helpers_rootfiles import make_events, shared_sample

from xec.cli import main as cli_main
from xec.data.shard_parts import merge_parts
from xec.data.shards import write_part, write_shards
from xec.errors import XecError
from xec.normalization import get_normalizer


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _empty_file(path: Path) -> str:
    with uproot.recreate(path) as f:
        f.mktree("tree", {k: np.dtype((v.dtype, v.shape[1:])) for k, v in make_events(1).items()})
    return str(path)


def _write_parts(files, root: Path, per_part: int, settings, split="train") -> list[Path]:
    parts = []
    for first in range(0, len(files), per_part):
        part = root / f"{first // per_part:04d}"
        write_part(files[first : first + per_part], part, split, settings, first_file=first)
        parts.append(part)
    return parts


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    """The shared sample's three files (150, 101, 47 events) plus an empty one in the middle."""
    files = [str(f) for f in shared_sample()["files"]]
    return [files[0], _empty_file(tmp_path_factory.mktemp("empty") / "empty.root"), *files[1:]]


@pytest.mark.parametrize("fiducial", [None, {"u": [-23.9, 23.9], "v": [-67.9, 67.9], "w": [0.0, 42.0]}])
def test_parts_merge_into_the_one_job_output_byte_for_byte(tmp_path, sample_files, fiducial):
    settings = dataclasses.replace(shared_sample()["settings"], fiducial=fiducial)
    one = tmp_path / "one"
    write_shards(sample_files, one, "train", settings, workers=1)
    expected = _digests(one)
    assert len(expected) >= 4  # several shards and the manifest
    for per_part in (1, 2, len(sample_files)):
        parts = _write_parts(sample_files, tmp_path / f"parts{per_part}", per_part, settings)
        out = tmp_path / f"merged{per_part}"
        merge_parts(parts, out, "train", sample_files)
        # every tar and manifest.json, whatever the grouping; no field may differ
        assert _digests(out) == expected, per_part
        assert json.loads((out / "manifest.json").read_text()) == json.loads((one / "manifest.json").read_text())
        # the split's tars are the parts' tars (hard links), not copies
        shard = out / "shard-000000.tar"
        assert shard.stat().st_nlink == 2 and any(
            shard.stat().st_ino == p.stat().st_ino for p in parts[0].glob("*.tar")
        )


def test_cli_part_and_merge(tmp_path, sample_files, restore_logging):
    common = ["--split", "val", "--events-per-shard", "100", "--block-size", "32", "--workers", "1"]
    assert cli_main(["shards", "--input", *sample_files, "--out", str(tmp_path / "one"), *common]) == 0
    for first, group in ((0, sample_files[:3]), (3, sample_files[3:])):
        part = str(tmp_path / "parts" / f"{first:04d}")
        assert (
            cli_main(["shards", "--part", "--first-file", str(first), "--input", *group, "--out", part, *common]) == 0
        )
    parts = [str(tmp_path / "parts" / "0000" / "part.json"), str(tmp_path / "parts" / "0003")]
    log = tmp_path / "merge.log"
    rc = cli_main(
        ["shards-merge", "--parts", *parts, "--input", *sample_files, "--split", "val", "--out", str(tmp_path / "m")]
        + ["--log", str(log)]
    )
    assert rc == 0 and _digests(tmp_path / "m") == _digests(tmp_path / "one") and "merged 2 part(s)" in log.read_text()
    assert (
        cli_main(["shards", "--first-file", "3", "--input", *sample_files, "--out", str(tmp_path / "x"), *common]) == 2
    )


def test_merge_refuses_inconsistent_parts_naming_them(tmp_path, sample_files):
    settings = shared_sample()["settings"]
    parts = _write_parts(sample_files, tmp_path / "parts", 1, settings)
    out = tmp_path / "out"
    merge_parts(parts, out, "train", sample_files)
    before = _digests(out)
    other = tmp_path / "legacy" / "0001"
    write_part(sample_files[1:2], other, "train", dataclasses.replace(settings, normalizer=get_normalizer("legacy")), 1)
    wrong_split = tmp_path / "val" / "0001"
    write_part(sample_files[1:2], wrong_split, "val", settings, first_file=1)
    nowhere = tmp_path / "nowhere" / "0001"
    cases = {
        "missing part": ([parts[0], *parts[2:]], parts[2], "the part of files 1..1 is missing"),
        "missing last part": (parts[:3], sample_files[3], "is in no part"),
        "no such part": ([parts[0], nowhere, *parts[2:]], nowhere, "no such shard part"),
        "overlapping": ([parts[0], parts[1], parts[1], *parts[2:]], parts[1], "overlapping files"),
        "other normalization": ([parts[0], other, *parts[2:]], other, "other settings (normalization)"),
        "other split": ([parts[0], wrong_split, *parts[2:]], wrong_split, "a part of split 'val'"),
        "out of order": ([parts[1], parts[0], *parts[2:]], parts[1], "starts at file 1"),
    }
    for case, (given, named, message) in cases.items():
        inputs = sample_files if case != "missing part" else None  # without --input: the index gap
        with pytest.raises(XecError) as err:
            merge_parts(given, out, "train", inputs)
        assert str(named) in str(err.value) and message in str(err.value), (case, str(err.value))
        # the previous output is untouched and no temporary directory is left
        assert _digests(out) == before, case
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [], case
    # a tar changed after the part was written is refused too
    tar = next(parts[2].glob("*.tar"))
    os.chmod(tar, 0o644)
    with open(tar, "ab") as f:
        f.write(b"\0")
    with pytest.raises(XecError, match=f"{parts[2]}.*re-run this part"):
        merge_parts(parts, out, "train", sample_files)
