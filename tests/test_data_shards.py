"""`xec shards`: content, determinism, fiducial cut, invalid values and every bad-input case."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import uproot
from helpers_rootfiles import make_events, shared_sample, write_root_file

from xec.cli import main as cli_main
from xec.data import shards as shards_mod
from xec.data.loader import ShardLoader
from xec.data.manifest import read_manifest
from xec.data.shards import ShardSettings, write_shards
from xec.errors import XecError
from xec.normalization import get_normalizer
from xec.targets import TASKS

ALL_TASKS = ("angle", "energy", "timing", "uvwFI", "angleVec")


def _load_all(manifest, tasks=ALL_TASKS, **kw):
    loader = ShardLoader(manifest, batch_size=64, tasks=tasks, shuffle=False, with_ids=True, **kw)
    xs, tg, ids = [], {t: [] for t in tasks}, {"run": [], "event": []}
    for x, targets, _, i in loader:
        xs.append(x.numpy())
        for t in tasks:
            tg[t].append(targets[t].numpy())
        for k in ids:
            ids[k].append(i[k].numpy())
    return (
        np.concatenate(xs),
        {t: np.concatenate(v) for t, v in tg.items()},
        {k: np.concatenate(v) for k, v in ids.items()},
    )


def _read_root(files, branches):
    out = {b: [] for b in branches}
    for f in files:
        with uproot.open(f) as r:
            arrays = r["tree"].arrays(branches, library="np")
        for b in branches:
            out[b].append(np.stack(arrays[b]) if arrays[b].dtype == object else arrays[b])
    return {b: np.concatenate(v) for b, v in out.items()}


def _dir_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_shards_hold_the_normalized_events_and_truth():
    sample = shared_sample()
    m = read_manifest(sample["shards"])
    assert m["events"] == 298 and [s["events"] for s in m["shards"]] == [100, 50, 100, 1, 47]
    assert [s["units"] for s in m["shards"]][:2] == [[32, 32, 32, 4], [32, 18]]
    x, targets, ids = _load_all(sample["shards"])
    raw = _read_root(
        sample["files"], ["npho", "relative_time", "run", "event", *(TASKS[t].truth_branch for t in ALL_TASKS)]
    )
    expected = get_normalizer("meg2").normalize_events(raw["npho"], raw["relative_time"])
    np.testing.assert_array_equal(x, expected)  # manifest order = file order, bit-exact float32
    for t in ALL_TASKS:
        np.testing.assert_array_equal(targets[t], raw[TASKS[t].truth_branch].reshape(298, -1).astype(np.float32))
    np.testing.assert_array_equal(ids["run"], raw["run"])
    np.testing.assert_array_equal(ids["event"], raw["event"])
    # manifest: statistics, sources, normalization, layout
    stats = m["target_stats"]["energy"]
    assert stats["mean"][0] == pytest.approx(float(raw["energyTruth"].astype(np.float64).mean()), rel=1e-6)
    assert stats["p50"][0] == pytest.approx(float(np.median(raw["energyTruth"].astype(np.float64))), rel=1e-6)
    for src, f in zip(m["sources"], sample["files"]):
        assert src["sha256"] == hashlib.sha256(Path(f).read_bytes()).hexdigest()
        assert src["size"] == os.path.getsize(f)
    assert m["normalization"] == get_normalizer("meg2").to_dict()
    assert m["layout"]["kind"] == "blocks" and m["layout"]["block_size"] == 32
    assert m["invalid_values"]["dead_npho"] == int((raw["npho"] > 9e9).sum()) > 0
    for s in m["shards"]:
        assert s["sha256"] == hashlib.sha256((Path(m["_dir"]) / s["file"]).read_bytes()).hexdigest()


def test_output_is_identical_for_any_number_of_workers_and_block_layouts_agree(tmp_path):
    sample = shared_sample()
    files = [str(f) for f in sample["files"]]
    write_shards(files, tmp_path / "w2", "train", sample["settings"], workers=2)
    assert _dir_bytes(tmp_path / "w2") == _dir_bytes(Path(sample["shards"]).parent)
    # one event per sample (the slower layout) holds the same events
    one = ShardSettings(normalizer=get_normalizer("meg2"), events_per_shard=100, block_size=1, tasks=("energy",))
    write_shards(files[2:], tmp_path / "b1", "train", one, workers=1)
    x1, t1, _ = _load_all(tmp_path / "b1", tasks=("energy",))
    x32, t32, _ = _load_all(sample["shards"], tasks=("energy",))
    np.testing.assert_array_equal(x1, x32[-47:])
    np.testing.assert_array_equal(t1["energy"], t32["energy"][-47:])


def test_fiducial_cut_keeps_only_events_inside(tmp_path):
    sample = shared_sample()
    cut = {"u": [-23.9, 23.9], "v": [-67.9, 67.9], "w": [0.0, 42.0]}
    settings = ShardSettings(normalizer=get_normalizer("meg2"), events_per_shard=64, block_size=16, fiducial=cut)
    m = write_shards([str(sample["files"][0])], tmp_path / "fid", "train", settings, workers=1)
    uvw = _read_root([sample["files"][0]], ["uvwTruth"])["uvwTruth"]
    inside = (np.abs(uvw[:, 0]) <= 23.9) & (np.abs(uvw[:, 1]) <= 67.9) & (uvw[:, 2] >= 0) & (uvw[:, 2] <= 42)
    assert 0 < inside.sum() < len(uvw)
    assert m["events"] == int(inside.sum()) and m["selection"]["events_read"] == len(uvw)
    _, targets, _ = _load_all(tmp_path / "fid", tasks=("uvwFI",))
    np.testing.assert_array_equal(targets["uvwFI"], uvw[inside])


def test_nan_and_inf_sensor_values_follow_the_normalization_rules(tmp_path):
    ev = make_events(40, seed=3)
    ev["npho"][0, :5] = [np.nan, np.inf, -np.inf, 500.0, 500.0]
    ev["relative_time"][0, :5] = [1e-8, 1e-8, 1e-8, np.nan, np.inf]
    path = write_root_file(
        tmp_path / "nan.root", 40, overrides={"npho": ev["npho"], "relative_time": ev["relative_time"]}
    )
    norm = get_normalizer("meg2")
    write_shards([str(path)], tmp_path / "out", "val", ShardSettings(normalizer=norm, block_size=16), workers=1)
    x, _, _ = _load_all(tmp_path / "out", tasks=("energy",))
    assert np.isfinite(x).all()
    s = norm.sentinel
    assert x[0, 0].tolist() == [s, s]  # NaN npho: dead sensor
    assert x[0, 1].tolist() == [s, s]  # +Inf npho (> 9e9): dead sensor
    assert x[0, 2, 0] == 0.0 and x[0, 2, 1] == s  # -Inf npho: below the domain, no light, no time
    assert x[0, 3, 1] == s and x[0, 4, 1] == s  # NaN / Inf time: time sentinel
    np.testing.assert_array_equal(x, norm.normalize_events(ev["npho"], ev["relative_time"]))


def test_cli_writes_shards_and_returns_2_on_bad_input(tmp_path, capsys, restore_logging):
    sample = shared_sample()
    out = tmp_path / "cli"
    rc = cli_main(
        [
            "shards",
            "--input",
            str(sample["files"][2]),
            "--split",
            "bench",
            "--out",
            str(out),
            "--events-per-shard",
            "20",
            "--workers",
            "1",
            "--log",
            str(tmp_path / "s.log"),
        ]
    )
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["split"] == "bench" and [s["events"] for s in m["shards"]] == [20, 20, 7]
    assert m["layout"]["block_size"] == 256 and (tmp_path / "s.log").read_text()
    rc = cli_main(["shards", "--input", str(tmp_path / "nope.root"), "--split", "bench", "--out", str(out)])
    assert rc == 2 and "nope.root: no such file" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text()) == m  # the good output survived


# ---------------------------------------------------------------------------- bad input
def _bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    good = write_root_file(d / "good.root", 20, seed=5)
    not_root = d / "text.root"
    not_root.write_text("this is not a ROOT file\n" * 100)
    truncated = d / "truncated.root"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other_tree = write_root_file(d / "othertree.root", 20, seed=5, tree="T")
    no_branch = write_root_file(d / "nobranch.root", 20, seed=5, drop=["energyTruth"])
    short = write_root_file(d / "short.root", 20, seed=5, overrides={"npho": np.ones((20, 4000), np.float32)})
    nan_truth = make_events(20, seed=5)["energyTruth"]
    nan_truth[7] = np.nan
    bad_truth = write_root_file(d / "nantruth.root", 20, seed=5, overrides={"energyTruth": nan_truth})
    empty = d / "empty.root"
    with uproot.recreate(empty) as f:
        f.mktree("tree", {k: np.dtype((v.dtype, v.shape[1:])) for k, v in make_events(1).items()})
    return {
        "missing": (d / "missing.root", "no such file"),
        "not ROOT": (not_root, "not a readable ROOT file"),
        "truncated": (truncated, "cannot read tree"),
        "missing tree": (other_tree, "no TTree 'tree'"),
        "missing branch": (no_branch, "energyTruth"),
        "wrong length": (short, "expected (4760,)"),
        "NaN truth": (bad_truth, "non-finite"),
        "empty": (empty, "empty input"),
    }


def test_every_bad_input_gets_one_clear_error_and_keeps_the_previous_output(tmp_path):
    sample = shared_sample()
    settings = ShardSettings(normalizer=get_normalizer("meg2"), events_per_shard=50, block_size=16)
    out = tmp_path / "out"
    write_shards([str(sample["files"][2])], out, "train", settings, workers=1)
    before = _dir_bytes(out)
    for case, (path, message) in _bad_files(tmp_path).items():
        for workers in (1, 2):
            # the bad file comes second (a partly converted run must leave nothing behind either),
            # except for the empty case: an empty file among good ones is only a warning
            inputs = [str(path)] if case == "empty" else [str(sample["files"][2]), str(path)]
            with pytest.raises(XecError) as err:
                write_shards(inputs, out, "train", settings, workers=workers)
            assert str(path) in str(err.value) and message in str(err.value), (case, str(err.value))
            assert _dir_bytes(out) == before, case
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [], case


def test_interrupted_conversion_leaves_no_manifest_and_no_temporary_files(tmp_path, monkeypatch):
    sample = shared_sample()
    calls = []
    real = shards_mod.convert_task

    def dying(task, settings, out_dir):
        calls.append(task.index)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill between two shards looks like to the process
        return real(task, settings, out_dir)

    monkeypatch.setattr(shards_mod, "convert_task", dying)
    with pytest.raises(KeyboardInterrupt):
        write_shards([str(f) for f in sample["files"]], tmp_path / "out", "train", sample["settings"], workers=1)
    assert list(tmp_path.iterdir()) == []
    # what a SIGKILL leaves (a temporary directory) is removed by the next run, never trusted
    stale = tmp_path / ".out.tmp-killed"
    stale.mkdir()
    (stale / "shard-000000.tar").write_bytes(b"half")
    monkeypatch.setattr(shards_mod, "convert_task", real)
    write_shards([str(sample["files"][2])], tmp_path / "out", "train", sample["settings"], workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_loader_refuses_a_directory_without_manifest(tmp_path):
    with pytest.raises(XecError, match="no such shard manifest"):
        ShardLoader(tmp_path, batch_size=4)


def test_configurable_branch_names_and_preset(tmp_path, restore_logging):
    ev = make_events(30, seed=8)
    path = write_root_file(
        tmp_path / "renamed.root",
        30,
        seed=8,
        drop=["energyTruth", "npho"],
        overrides={"energyMC": ev["energyTruth"], "nphoCorr": ev["npho"]},
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "data: {npho_branch: nphoCorr}\n"
        "shards: {tasks: [energy, uvwFI], truth_branches: {energy: energyMC}, block_size: 8}\n"
    )
    rc = cli_main(
        [
            "shards",
            "--config",
            str(cfg),
            "--input",
            str(path),
            "--split",
            "val",
            "--out",
            str(tmp_path / "out"),
            "--preset",
            "legacy",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    m = read_manifest(tmp_path / "out")
    assert m["branches"]["npho"] == "nphoCorr" and m["branches"]["truth"]["energy"] == "energyMC"
    assert m["normalization"]["preset"] == "legacy" and m["tasks"] == ["energy", "uvwFI"]
    x, targets, _ = _load_all(tmp_path / "out", tasks=("energy", "uvwFI"))
    np.testing.assert_array_equal(targets["energy"][:, 0], ev["energyTruth"])
    np.testing.assert_array_equal(x, get_normalizer("legacy").normalize_events(ev["npho"], ev["relative_time"]))


def test_shard_tar_writer_writes_webdatasets_bytes_and_webdataset_reads_them(tmp_path):
    """xec.data.shards.ShardTarWriter (tarfile, no webdataset import: it imports torch) writes
    what webdataset.TarWriter wrote with the shards' settings, byte for byte, and webdataset's
    own reader gives back every sample."""
    import io
    import subprocess
    import sys

    wds = pytest.importorskip("webdataset")
    rng = np.random.default_rng(0)
    samples = [
        (f"f0000e{i:010d}b{i:05d}", {"x.npy": rng.bytes(5000 + i), "energy.npy": rng.bytes(12), "run.npy": b""})
        for i in range(3)
    ]
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = shards_mod.ShardTarWriter(ours)
    for key, members in samples:
        writer.write(key, members)
    writer.close()
    reference = wds.TarWriter(theirs, user="xec", group="xec", mode=0o444, encoder=False, mtime=0.0)
    for key, members in samples:
        reference.write({"__key__": key, **members})
    reference.close()
    assert ours.getvalue() == theirs.getvalue()
    path = tmp_path / "shard.tar"
    path.write_bytes(ours.getvalue())
    back = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in back] == [k for k, _ in samples]
    assert all(s[name] == members[name] for s, (_, members) in zip(back, samples) for name in members)
    code = "import sys, xec.data.shards; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
