"""ShardLoader: exactly-once epochs, (seed, epoch) reproducibility, rank/worker splitting with
equal batch counts on uneven shards, weights, normalizer check and corrupt shards."""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_rootfiles import shared_sample

from xec.data.loader import ShardLoader, batch_sizes, epoch_plan
from xec.data.weights import HistogramWeights
from xec.errors import XecError
from xec.normalization import get_normalizer

N_EVENTS = 298  # shared_sample(): shards of 100, 50, 100, 1, 47 events


def _ids(loader, epoch=0):
    """Per batch: the (run, event) keys of its events, plus the batch shapes."""
    loader.set_epoch(epoch)
    batches = []
    for x, targets, weights, ids in loader:
        n = len(x)
        assert x.shape == (n, 4760, 2) and x.dtype == torch.float32
        assert all(v.shape[0] == n and v.dtype == torch.float32 for v in targets.values())
        assert all(v.shape == (n,) and v.dtype == torch.float32 for v in weights.values())
        batches.append((ids["run"] * 100000 + ids["event"]).tolist())
    return batches


def _all_keys():
    return sorted(r * 100000 + e for r, n in ((1, 150), (2, 101), (3, 47)) for e in range(n))


@pytest.mark.parametrize("n_units", [1, 2, 5, 17])
def test_epoch_plan_gives_every_rank_the_same_batch_count_and_every_event_once(n_units):
    rng = np.random.default_rng(n_units)
    units = [(i, 0, int(n)) for i, n in enumerate(rng.integers(1, 40, n_units))]
    total = sum(u[2] for u in units)
    for world, bs, shuffle, drop in itertools.product((1, 2, 3, 4), (2, 5, 16), (False, True), (False, True)):
        plans = []
        try:
            plans = [epoch_plan(units, shuffle, 3, 1, r, world, bs, drop) for r in range(world)]
        except XecError:
            assert not drop and total // world < math.ceil(math.ceil(total / world) / bs)  # explained error
            continue
        counts = {len(sizes) for _, sizes in plans}
        assert len(counts) == 1  # same number of batches on every rank: no DDP hang
        events = [(s, u, e) for segs, _ in plans for s, u, a, b in segs for e in range(a, b)]
        assert len(events) == len(set(events))  # disjoint
        for segs, sizes in plans:
            assert sum(b - a for _, _, a, b in segs) == sum(sizes)
            assert all(1 <= s <= bs for s in sizes)
            if drop:
                assert all(s == bs for s in sizes)
        if not drop:
            assert len(events) == total  # union = all events


def test_batch_sizes_are_full_except_at_the_tail():
    assert batch_sizes(10, 3, 4) == [4, 4, 2]
    assert batch_sizes(9, 3, 4) == [4, 4, 1]
    assert batch_sizes(8, 3, 4) == [4, 3, 1]


def test_every_event_once_per_epoch_reproducible_and_reshuffled():
    m = shared_sample()["shards"]
    loader = ShardLoader(m, batch_size=64, seed=5, with_ids=True)
    e0 = _ids(loader, 0)
    assert len(e0) == len(loader) == 5 and [len(b) for b in e0] == [64, 64, 64, 64, 42]
    assert sorted(itertools.chain(*e0)) == _all_keys()
    assert _ids(loader, 0) == e0  # same (seed, epoch): same batches
    e1 = _ids(loader, 1)
    assert sorted(itertools.chain(*e1)) == _all_keys() and e1 != e0
    assert _ids(ShardLoader(m, batch_size=64, seed=6, with_ids=True), 0) != e0
    # the shuffle mixes blocks of different shards/files within a batch
    assert len({k // 100000 for k in e0[0]}) > 1
    unshuffled = list(itertools.chain(*_ids(ShardLoader(m, batch_size=64, shuffle=False, with_ids=True))))
    assert unshuffled == [r * 100000 + e for r, n in ((1, 150), (2, 101), (3, 47)) for e in range(n)]


def test_two_ranks_on_uneven_shards_split_disjointly_with_equal_batch_counts():
    m = shared_sample()["shards"]
    for bs in (7, 64, 149):
        per_rank = [ShardLoader(m, batch_size=bs, seed=1, rank=r, world_size=2, with_ids=True) for r in range(2)]
        ids = [list(itertools.chain(*_ids(ld, 3))) for ld in per_rank]
        counts = [len(_ids(ld, 3)) for ld in per_rank]
        assert counts[0] == counts[1] == len(per_rank[0]) == len(per_rank[1])
        assert not set(ids[0]) & set(ids[1])
        assert sorted(ids[0] + ids[1]) == _all_keys()
        assert abs(len(ids[0]) - len(ids[1])) <= 1


def test_whole_split_of_a_rank_reads_what_one_process_reads():
    """whole_split (the regressor's head refit after DDP training, on rank 0): every event, in
    the order of a one-process loader with the same seed, max_events applied to the whole split."""
    m = shared_sample()["shards"]
    for kw in ({}, {"max_events": 100}):
        single = ShardLoader(m, batch_size=32, seed=4, with_ids=True, **kw)
        rank0 = ShardLoader(m, batch_size=32, seed=4, rank=0, world_size=2, with_ids=True, **kw)
        whole = rank0.whole_split()
        assert whole is not rank0 and single.whole_split() is single
        assert _ids(whole, 0) == _ids(single, 0)
        assert len(list(itertools.chain(*_ids(whole, 0)))) == kw.get("max_events", len(_all_keys()))
        assert len(list(itertools.chain(*_ids(rank0, 0)))) < len(list(itertools.chain(*_ids(whole, 0))))


def test_drop_last_and_max_events():
    m = shared_sample()["shards"]
    dl = ShardLoader(m, batch_size=64, drop_last=True, with_ids=True)
    b = _ids(dl)
    assert len(b) == len(dl) == 4 and all(len(x) == 64 for x in b)
    small = ShardLoader(m, batch_size=16, max_events=40, shuffle=False, with_ids=True)
    keys = list(itertools.chain(*_ids(small)))
    assert len(small) == 3 and keys == [100000 + e for e in range(40)]


@pytest.mark.slow
def test_two_workers_deliver_the_same_events_and_are_reproducible():
    m = shared_sample()["shards"]
    ld = ShardLoader(m, batch_size=32, seed=2, num_workers=2, with_ids=True, shuffle_buffer=64)
    a = _ids(ld, 4)
    assert len(a) == len(ld) == 10 and [len(x) for x in a] == [32] * 9 + [10]
    assert sorted(itertools.chain(*a)) == _all_keys()
    assert _ids(ld, 4) == a
    # without shuffling, workers still deliver the manifest order
    ordered = ShardLoader(m, batch_size=20, shuffle=False, num_workers=2, with_ids=True, shuffle_buffer=32)
    assert list(itertools.chain(*_ids(ordered))) == [
        r * 100000 + e for r, n in ((1, 150), (2, 101), (3, 47)) for e in range(n)
    ]
    # ranks x workers together still cover every event once
    keys = []
    for r in range(2):
        ld = ShardLoader(m, batch_size=16, seed=2, num_workers=2, rank=r, world_size=2, with_ids=True)
        got = _ids(ld, 0)
        assert len(got) == len(ld) == 10
        keys += list(itertools.chain(*got))
    assert sorted(keys) == _all_keys()


def test_targets_and_x_are_the_same_events():
    """Shuffling moves whole events: x, targets and ids stay together."""
    m = shared_sample()["shards"]
    ref = {}
    for x, t, _, ids in ShardLoader(m, batch_size=50, shuffle=False, with_ids=True):
        for i, k in enumerate((ids["run"] * 100000 + ids["event"]).tolist()):
            ref[k] = (x[i].sum().item(), t["energy"][i, 0].item())
    for x, t, _, ids in ShardLoader(m, batch_size=50, seed=9, with_ids=True):
        for i, k in enumerate((ids["run"] * 100000 + ids["event"]).tolist()):
            assert ref[k] == (x[i].sum().item(), t["energy"][i, 0].item())


def test_loader_weights_follow_the_histograms(tmp_path):
    m = shared_sample()["shards"]
    loader = ShardLoader(m, batch_size=100, shuffle=False)
    targets = {t: torch.cat([tg[t] for _, tg, _ in loader]).numpy() for t in ("energy", "uvwFI")}
    hw = HistogramWeights.fit(targets, {"energy": [5], "uvwFI": [3, 3, 1]}, max_weight=4.0)
    hw.save(tmp_path / "w.npz")
    weighted = ShardLoader(m, batch_size=100, shuffle=False, weights=tmp_path / "w.npz")
    got = {t: torch.cat([w[t] for _, _, w in weighted]).numpy() for t in weighted.tasks}
    np.testing.assert_allclose(got["energy"], hw.event_weights("energy", targets["energy"]))
    np.testing.assert_allclose(got["uvwFI"], hw.event_weights("uvwFI", targets["uvwFI"]))
    assert got["energy"].mean() == pytest.approx(1.0, rel=1e-5) and not np.allclose(got["energy"], 1)
    np.testing.assert_array_equal(got["angle"], 1.0)  # task without a histogram


def test_contract_attributes_and_normalizer_check():
    m = shared_sample()["shards"]
    loader = ShardLoader(m, batch_size=8, expected_normalizer=get_normalizer("meg2"))
    assert loader.normalizer == get_normalizer("meg2") and loader.manifest["events"] == N_EVENTS
    assert set(loader.standardizer.mean) >= {"angle", "energy", "timing", "uvwFI"}
    x, targets, weights = next(iter(ShardLoader(m, batch_size=8, tasks=())))  # input-only use (MAE, export)
    assert x.shape == (8, 4760, 2) and targets == {} and weights == {}
    with pytest.raises(XecError, match="normalization mismatch.*manifest"):
        ShardLoader(m, batch_size=8, expected_normalizer=get_normalizer("legacy"))
    with pytest.raises(XecError, match="no targets for task"):
        ShardLoader(m, batch_size=8, tasks=("energy", "nonsense"))


def _copy_shards(tmp_path: Path) -> Path:
    src = Path(shared_sample()["shards"]).parent
    dst = tmp_path / "shards"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_corrupt_shard_is_named_in_one_clear_error(tmp_path, workers):
    d = _copy_shards(tmp_path)
    shard = d / "shard-000002.tar"
    data = bytearray(shard.read_bytes())
    data[:1024] = b"\x17" * 1024  # garbage over the first tar header, same size
    shard.write_bytes(bytes(data))
    loader = ShardLoader(d / "manifest.json", batch_size=64, num_workers=workers)
    with pytest.raises(XecError) as err:
        for _ in loader:
            pass
    assert str(shard) in str(err.value) and "corrupt shard" in str(err.value)
    assert "Traceback" not in str(err.value)
    # a truncated shard is refused before any work starts
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(XecError, match=r"shard-000002.tar: corrupt shard: \d+ bytes"):
        ShardLoader(d / "manifest.json", batch_size=64)
    shard.unlink()
    with pytest.raises(XecError, match="shard-000002.tar: shard listed in .* is missing"):
        ShardLoader(d / "manifest.json", batch_size=64)


def test_corrupt_npy_member_is_detected(tmp_path):
    d = _copy_shards(tmp_path)
    shard = d / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    pos = data.find(b"\x93NUMPY")
    data[pos : pos + 6] = b"garbag"
    shard.write_bytes(bytes(data))
    with pytest.raises(XecError, match="shard-000000.tar: corrupt shard: .*not a .npy array"):
        for _ in ShardLoader(d / "manifest.json", batch_size=64, shuffle=False):
            pass


def test_manifest_with_wrong_counts_is_refused(tmp_path):
    d = _copy_shards(tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["events"] += 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(XecError, match="do not add up"):
        ShardLoader(d / "manifest.json", batch_size=4)
    m["events"] -= 1
    del m["shards"][1]["units"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(XecError, match="malformed shard manifest.*units"):
        ShardLoader(d / "manifest.json", batch_size=4)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(XecError, match="manifest.json: not a readable JSON manifest"):
        ShardLoader(d / "manifest.json", batch_size=4)


def _ddp_rank(rank: int, manifest: str, store: str, out: str) -> None:
    import datetime

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    loader = ShardLoader(manifest, batch_size=24, seed=11, rank=rank, world_size=2, with_ids=True)
    loader.set_epoch(2)
    keys, n_batches = [], 0
    for x, _, _, ids in loader:
        total = torch.tensor([len(x)])
        dist.all_reduce(total)  # a collective per batch, as in DDP: unequal batch counts would hang
        keys += (ids["run"] * 100000 + ids["event"]).tolist()
        n_batches += 1
    dist.barrier()
    dist.destroy_process_group()
    Path(out).write_text(json.dumps({"keys": keys, "batches": n_batches, "len": len(loader)}))


@pytest.mark.slow
def test_ddp_two_processes_gloo_on_uneven_shards(tmp_path):
    m = str(shared_sample()["shards"])
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_ddp_rank, args=(r, m, str(tmp_path / "store"), str(tmp_path / f"r{r}.json")))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    res = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert res[0]["batches"] == res[1]["batches"] == res[0]["len"] == res[1]["len"] == math.ceil(149 / 24)
    assert not set(res[0]["keys"]) & set(res[1]["keys"])
    assert sorted(res[0]["keys"] + res[1]["keys"]) == _all_keys()
