"""Input expansion (xec.inputs): paths, globs and run lists, and every bad list named by line."""

from __future__ import annotations

import pytest

from xec.errors import XecError
from xec.inputs import expand_inputs, read_run_list


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    for n in (101, 102, 103, 250):
        (d / f"run{n}.root").write_bytes(b"")
    return d


def test_run_list_order_comments_relative_paths_and_globs(runs, tmp_path):
    lst = runs / "period.txt"
    lst.write_text("# run period A\nrun102.root   # re-processed\n\nrun101.root\nrun25*.root\n")
    files = expand_inputs([str(lst)])
    assert [f.split("/")[-1] for f in files] == ["run102.root", "run101.root", "run250.root"]
    # entries mix: a plain file, then the list (its own order kept), then a glob
    other = tmp_path / "extra.root"
    other.write_bytes(b"")
    mixed = expand_inputs([str(other), str(lst), str(runs / "run103*.root")])
    assert [f.split("/")[-1] for f in mixed] == [
        "extra.root",
        "run102.root",
        "run101.root",
        "run250.root",
        "run103.root",
    ]
    assert [w for _, w in read_run_list(lst)] == [f"{lst}:2", f"{lst}:4", f"{lst}:5"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("run101.root\nrun999.root\n", r"period\.list:2: 'run999\.root': no such file"),
        ("# nothing yet\n\n", r"period\.list: the run list names no files"),
        ("run101.root\nrun102.root\nrun101.root\n", r"period\.list:3: .*run101\.root is named twice \(also at .*:1\)"),
        ("other.txt\n", r"period\.list:1: 'other\.txt' is a run list"),
    ],
)
def test_bad_run_lists_name_the_list_and_line(runs, text, message):
    lst = runs / "period.list"
    lst.write_text(text)
    with pytest.raises(XecError, match=message):
        expand_inputs([str(lst)])


def test_a_file_named_by_two_entries_and_missing_entries(runs):
    lst = runs / "a.txt"
    lst.write_text("run101.root\n")
    with pytest.raises(XecError, match=r"named twice \(also at .*a\.txt:1\)"):
        expand_inputs([str(lst), str(runs / "run10*.root")])
    with pytest.raises(XecError, match=r"nope\.txt: no such run list"):
        expand_inputs([str(runs / "nope.txt")])
    with pytest.raises(XecError, match=r"nope\.root: no such file"):
        expand_inputs([str(runs / "nope.root")])
    with pytest.raises(XecError, match=r"run101\.root: named twice in the inputs"):
        expand_inputs([str(runs / "run101.root"), str(runs / "run101.root")])
    with pytest.raises(XecError, match="no input files given"):
        expand_inputs([])
