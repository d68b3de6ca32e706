import numpy as np
import pytest

from xec import rootio
from xec.errors import XecError
from xec.targets import TASKS, TargetStandardizer, targets_from_branches


def _event_arrays(n, rng):
    return {
        "npho": rng.exponential(200.0, (n, 4760)).astype(np.float32),
        "relative_time": rng.normal(0, 1e-9, (n, 4760)).astype(np.float32),
        "energyTruth": rng.uniform(0.015, 0.06, n).astype(np.float32),
        "uvwTruth": rng.normal(0, 10, (n, 3)).astype(np.float32),
        "emiAng": rng.uniform(60, 120, (n, 2)).astype(np.float32),
        "run": np.full(n, 7, np.int32),
        "event": np.arange(n, dtype=np.int32),
    }


def test_targets_from_branches_and_standardizer():
    rng = np.random.default_rng(0)
    arrays = _event_arrays(100, rng)
    t = targets_from_branches(arrays)
    assert set(t) == {"angle", "energy", "uvwFI"}  # timeTruth and emiVec absent
    assert t["uvwFI"].shape == (100, 3) and t["energy"].shape == (100, 1)
    st = TargetStandardizer.fit(t)
    z = st.standardize("uvwFI", t["uvwFI"])
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    # a position is standardized isotropically: one scale, the RMS of the component stds
    assert np.unique(st.std["uvwFI"]).size == 1
    np.testing.assert_allclose(np.sqrt(np.mean(z.std(0) ** 2)), 1, atol=1e-4)
    np.testing.assert_allclose(st.standardize("energy", t["energy"]).std(0), 1, atol=1e-4)
    st2 = TargetStandardizer.from_dict(st.to_dict())
    np.testing.assert_allclose(st2.destandardize("uvwFI", z), t["uvwFI"], rtol=1e-5, atol=1e-5)
    assert TASKS["timing"].unit == "ns" and TASKS["uvwFI"].dim == 3


def test_write_read_round_trip_in_chunks(tmp_path):
    rng = np.random.default_rng(1)
    a, b = _event_arrays(30, rng), _event_arrays(20, rng)
    path = tmp_path / "f.root"
    with rootio.tree_writer(path) as w:
        w.extend(a)
        w.extend(b)
    assert rootio.count_events([str(path)]) == 50
    chunks = list(
        rootio.iterate_events(
            [str(path)], event_branches=["energyTruth", "uvwTruth"], optional_branches=["timeReco", "run"], step_size=16
        )
    )
    assert [len(c["npho"]) for _, c in chunks] == [16, 16, 16, 2]
    npho = np.concatenate([c["npho"] for _, c in chunks])
    np.testing.assert_array_equal(npho, np.concatenate([a["npho"], b["npho"]]))
    assert chunks[0][1]["uvwTruth"].shape == (16, 3) and "timeReco" not in chunks[0][1]
    assert chunks[0][1]["run"].dtype.kind == "i"
    # first_step splits only the stream's first chunk; the later chunks keep their boundaries
    ramp = list(rootio.iterate_events([str(path)], optional_branches=["run"], step_size=16, first_step=5))
    assert [len(c["npho"]) for _, c in ramp] == [5, 11, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([c["npho"] for _, c in ramp]), npho)
    np.testing.assert_array_equal(np.concatenate([c["run"] for _, c in ramp]), np.concatenate([a["run"], b["run"]]))
    window = rootio.iterate_events([str(path)], step_size=16, first_step=5, entry_start=10, entry_stop=40)
    assert [len(c["npho"]) for _, c in window] == [5, 11, 14]
    whole = rootio.iterate_events([str(path)], step_size=16, first_step=16)  # not smaller: no split
    assert [len(c["npho"]) for _, c in whole] == [16, 16, 16, 2]


def test_bad_files(tmp_path):
    with pytest.raises(XecError, match="nope.root: no such file"):
        rootio.open_tree(tmp_path / "nope.root")
    junk = tmp_path / "junk.root"
    junk.write_bytes(b"this is not ROOT" * 100)
    with pytest.raises(XecError, match="junk.root: not a readable ROOT file"):
        rootio.open_tree(junk)
    good = tmp_path / "good.root"
    with rootio.tree_writer(good) as w:
        w.extend(_event_arrays(5, np.random.default_rng(2)))
    with pytest.raises(XecError, match="good.root: no TTree 'events'"):
        rootio.open_tree(good, "events")
    with pytest.raises(XecError, match=r"good.root: missing branch\(es\) \['time'\]"):
        list(rootio.iterate_events([str(good)], sensor_branches=["npho", "time"]))
    short = tmp_path / "short.root"
    with rootio.tree_writer(short) as w:
        w.extend({"npho": np.ones((3, 100), np.float32), "relative_time": np.ones((3, 100), np.float32)})
    with pytest.raises(XecError, match=r"short.root: branch npho has shape \(100,\) per event, expected \(4760,\)"):
        list(rootio.iterate_events([str(short)]))
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(XecError, match="truncated.root"):
        list(rootio.iterate_events([str(truncated)]))


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.root"
    with pytest.raises(RuntimeError):
        with rootio.tree_writer(path) as w:
            w.extend(_event_arrays(3, np.random.default_rng(3)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(XecError, match="no events"):
        with rootio.tree_writer(path):
            pass
    with pytest.raises(XecError, match=r"out.root: unknown compression 'lzma'; choose one of \['lz4'"):
        with rootio.tree_writer(path, compression="lzma"):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", sorted(rootio.COMPRESSIONS))
def test_every_compression_round_trips(tmp_path, compression):
    arrays = _event_arrays(5, np.random.default_rng(4))
    with rootio.tree_writer(tmp_path / "c.root", compression=compression) as w:
        w.extend(arrays)
    ((_, back),) = rootio.iterate_events([str(tmp_path / "c.root")], event_branches=("run",))
    for k in ("npho", "relative_time", "run"):
        np.testing.assert_array_equal(back[k], arrays[k], err_msg=f"{compression}: {k}")
