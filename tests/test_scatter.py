"""Run periods (xec.scatter, xec.runs): merged parquet datasets, failure records of bad input
files, the run-by-run table and the bounded, method-independent subsample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_rootfiles import write_root_file

from xec.errors import XecError
from xec.rootio import check_input_layout
from xec.runs import read_sampled, run_table
from xec.scatter import (
    MERGE_MANIFEST,
    Part,
    merge_parts,
    read_failure_record,
    read_merge_manifest,
    write_failure_record,
)


def _part(path: Path, run: int, events, energy: float = 0.05, reco: bool = False) -> Path:
    n = len(events)
    df = pd.DataFrame(
        {
            "run": np.full(n, run, np.int64),
            "event": np.asarray(events, np.int64),
            "pred_energy_energy": np.full(n, energy, np.float32) + np.linspace(-0.001, 0.001, n).astype(np.float32),
            "pred_timing_time": np.zeros(n, np.float32),
        }
    )
    if reco:
        df["reco_energy_energy"] = np.full(n, energy / 1.01, np.float32)
    df.to_parquet(path)
    return path


def test_merged_dataset_reads_as_one_table_of_every_event_once(tmp_path):
    a = _part(tmp_path / "run1.parquet", 1, range(0, 50))
    b = _part(tmp_path / "run2.parquet", 2, range(0, 30))
    c = _part(tmp_path / "run1b.parquet", 1, range(50, 70))  # run 1 continues in a second file
    out = tmp_path / "merged.parquet"
    failed = [{"input": "bad.root", "error": "truncated", "command": "xec infer"}]
    manifest = merge_parts(
        [Part("run1", "run1.root", str(a)), Part("run2", "run2.root", str(b)), Part("run1b", "x", str(c))], out, failed
    )
    df = pd.read_parquet(out)  # pandas/pyarrow: one table; the manifest ("_" prefix) is skipped
    assert len(df) == manifest["events"] == 100
    assert not df.duplicated(["run", "event"]).any()
    assert [f["runs"] for f in manifest["files"]] == [[[1, 0, 49, 50]], [[2, 0, 29, 30]], [[1, 50, 69, 20]]]
    assert read_merge_manifest(out)["failed"] == [{"input": "bad.root", "command": "xec infer", "error": "truncated"}]
    assert os.stat(out / "run1.parquet").st_ino == os.stat(a).st_ino  # a link, not a copy
    # re-merging without a file drops it from the view
    merge_parts([Part("run2", "run2.root", str(b))], out)
    assert sorted(os.listdir(out)) == [MERGE_MANIFEST, "run2.parquet"]
    assert len(pd.read_parquet(out)) == 30


def test_merge_refuses_the_same_events_twice_and_foreign_columns(tmp_path):
    a = _part(tmp_path / "a.parquet", 5, range(0, 40))
    b = _part(tmp_path / "b.parquet", 5, range(30, 60))
    with pytest.raises(XecError, match=r"a\.root and b\.root|b\.root and a\.root"):
        merge_parts([Part("a", "a.root", str(a)), Part("b", "b.root", str(b))], tmp_path / "m")
    dup = tmp_path / "dup.parquet"
    pd.DataFrame({"run": [1, 1], "event": [3, 3], "pred_energy_energy": [0.05, 0.05]}).to_parquet(dup)
    with pytest.raises(XecError, match="run 1 event 3 appears more than once"):
        merge_parts([Part("dup", "dup.root", str(dup))], tmp_path / "m")
    other = tmp_path / "other.parquet"
    pd.DataFrame({"run": [9], "event": [0], "pred_x": [1.0]}).to_parquet(other)
    with pytest.raises(XecError, match="columns differ"):
        merge_parts([Part("a", "a.root", str(a)), Part("o", "o.root", str(other))], tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_failure_record_holds_while_the_file_is_unchanged(tmp_path):
    f = tmp_path / "run9.root"
    f.write_bytes(b"not root")
    record = tmp_path / "run9.failed.json"
    write_failure_record(record, str(f), "run9.root: not a readable ROOT file", "xec infer")
    assert read_failure_record(record, str(f))["error"].startswith("run9.root")
    os.utime(f, ns=(1, 1))  # the file was replaced: retry it
    assert read_failure_record(record, str(f)) is None


def test_bad_input_file_fails_its_job_and_leaves_a_record_a_good_one_clears_it(tmp_path):
    good = write_root_file(tmp_path / "run1.root", n_events=20, run=1)
    bad = tmp_path / "run2.root"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    record = tmp_path / "rec.failed.json"

    def baseline(path: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "xec.cli", "baseline", "--input", str(path), "--out", str(tmp_path / "o.parquet")]
        return subprocess.run(cmd + ["--failure-record", str(record)], capture_output=True, text=True, timeout=300)

    proc = baseline(bad)
    assert proc.returncode == 2 and str(bad) in proc.stderr, proc.stderr
    assert json.loads(record.read_text())["input"] == str(bad)
    write_failure_record(record, str(bad), "earlier", "xec baseline")
    proc = baseline(good)
    assert proc.returncode == 0, proc.stderr
    assert not record.exists()  # this job's file is fine now


def test_input_layout_names_the_run_list_line_and_leaves_unreadable_files_to_their_job(tmp_path):
    ok = write_root_file(tmp_path / "a.root", n_events=5)
    other_tree = write_root_file(tmp_path / "b.root", n_events=5, tree="events")
    junk = tmp_path / "c.root"
    junk.write_bytes(b"\0" * 100)
    cache = tmp_path / "layout.json"
    entries = [(str(ok), "list.txt:1"), (str(junk), "list.txt:2")]
    counts = {str(ok): 5, str(junk): None}  # events; None: does not open (its job will fail)
    assert check_input_layout(entries, "tree", ("npho", "relative_time"), cache) == counts
    assert check_input_layout(entries, "tree", ("npho", "relative_time"), cache) == counts  # cached
    with pytest.raises(XecError, match=r"list\.txt:3: .*b\.root: no TTree 'tree'"):
        check_input_layout([*entries, (str(other_tree), "list.txt:3")], "tree", ("npho",), cache)
    with pytest.raises(XecError, match=r"list\.txt:1: .*missing branch"):
        check_input_layout(entries[:1], "tree", ("npho", "nonexistent"), cache)


def test_run_table_spans_files_and_prefers_the_files_own_reconstruction(tmp_path):
    parts = [
        Part("f1", "f1.root", str(_part(tmp_path / "f1.parquet", 11, range(0, 40), 0.050, reco=True))),
        Part("f2", "f2.root", str(_part(tmp_path / "f2.parquet", 12, range(0, 30), 0.052, reco=True))),
        Part("f3", "f3.root", str(_part(tmp_path / "f3.parquet", 11, range(40, 60), 0.050, reco=True))),
    ]
    merge_parts(parts, tmp_path / "ml.parquet")
    rows = run_table(tmp_path / "ml.parquet")
    assert [(r["run"], r["events"]) for r in rows] == [(11, 60), (12, 30)]
    assert rows[0]["energy_mean_mev"] == pytest.approx(50.0, abs=1e-3)
    assert rows[1]["dE_pct"] == pytest.approx(100 * (1 - 1 / 1.01), abs=0.01)
    assert rows[0]["reference"] == "file reco" and np.isnan(rows[0]["dt_ps"])


def test_capped_reading_keeps_the_same_events_for_every_method(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d, e in ((a, 0.05), (b, 0.06)):
        merge_parts(
            [
                Part("r1", "r1.root", str(_part(d / "r1.parquet", 1, range(5000), e))),
                Part("r2", "r2.root", str(_part(d / "r2.parquet", 2, range(5000), e))),
            ],
            d / "merged",
        )
    x, y = read_sampled(a / "merged", 2000), read_sampled(b / "merged", 2000)
    assert 1800 < len(x) < 2200
    pd.testing.assert_frame_equal(x[["run", "event"]], y[["run", "event"]])
    assert len(read_sampled(a / "merged", None)) == 10000
