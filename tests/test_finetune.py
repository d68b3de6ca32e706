"""Self-supervised fine-tuning of the inpainter on real data (xec.train.finetune, `xec finetune`;
issue 14 part 4): the held-out split, the dead sensors kept out of the loss, the gain on a
miscalibrated toy, and the bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_rootfiles import write_root_file

from xec.config import load_config
from xec.errors import XecError
from xec.geometry import FACE_NAMES, N_SENSORS, get_geometry
from xec.inpainting.holdout import check_fraction, event_uniform, holdout_flags
from xec.normalization import get_normalizer, normalizer_from_config
from xec.train.base import model_meta
from xec.train.checkpoint import load_checkpoint, save_checkpoint
from xec.train.finetune import EventArrayLoader, RealdataFinetuneStage, read_realdata, run_finetune
from xec.train.inpainter import InpainterStage

BASE = {"mlflow.enabled": False, "finetune.max_events": None, "finetune.batch_size": 32, "train.ema_decay": 0.0}


def _cfg(**overrides):
    return load_config(None, overrides={**BASE, **overrides})


def random_inpainter(path, cfg, preset=None, seed=0):
    """An inpainter checkpoint with random weights (tiny preset), as `xec train inpainter` writes one."""
    norm = get_normalizer(preset) if preset else normalizer_from_config(cfg)
    spec = {
        "stage": "inpainter",
        "model": model_meta(cfg),
        "normalization": norm.to_dict(),
        "tasks": [],
        "target_standardization": None,
        "model_args": {"mask_ratio": 0.05, "freeze_encoder": True},
    }
    torch.manual_seed(seed)
    model = InpainterStage.build(spec)
    save_checkpoint(path, {**spec, "model_state": model.state_dict(), "ema_state": None})
    return path


def toy_file(path, n, seed, gain=1.0, dead_fraction=0.01):
    """Events of one flat light level per event (200-600 photons x ``gain``, 5 % noise per sensor)."""
    rng = np.random.default_rng(seed)
    amp = rng.uniform(200.0, 600.0, (n, 1))
    npho = (amp * gain * (1 + 0.05 * rng.normal(size=(n, N_SENSORS)))).astype(np.float32)
    t = (20e-9 + 0.2e-9 * rng.normal(size=(n, N_SENSORS))).astype(np.float32)
    dead = rng.random((n, N_SENSORS)) < dead_fraction
    npho[dead] = 1e10
    t[dead] = 1e10
    return write_root_file(path, n, seed=seed, overrides={"npho": npho, "relative_time": t}, chunk=128)


# ----------------------------------------------------------------------------- the split
def test_holdout_split_is_deterministic_disjoint_and_nested():
    run = np.repeat(np.arange(1, 5), 25_000)
    event = np.tile(np.arange(25_000), 4)
    held = holdout_flags(run, event, 0.25)
    # a property of (run, event) alone: any order or chunking gives the same flags
    perm = np.random.default_rng(0).permutation(run.size)
    assert np.array_equal(holdout_flags(run[perm], event[perm], 0.25), held[perm])
    chunks = np.concatenate(
        [holdout_flags(run[i : i + 777], event[i : i + 777], 0.25) for i in range(0, run.size, 777)]
    )
    assert np.array_equal(chunks, held)
    # the fraction within 3 sigma (sigma = sqrt(p (1 - p) / n) = 0.0014), and per run
    assert abs(held.mean() - 0.25) < 3 * np.sqrt(0.25 * 0.75 / run.size)
    for r in range(1, 5):
        assert abs(held[run == r].mean() - 0.25) < 0.01
    # fine-tuning part and held-out part are complements; a smaller fraction holds out a subset
    assert not (held & ~held).any() and (held | ~held).all()
    small = holdout_flags(run, event, 0.1)
    assert (small <= held).all() and 0.09 < small.mean() < 0.11
    # another run with the same event numbers is split differently (the run enters the hash)
    assert 0.3 < np.mean(holdout_flags(run * 0 + 1, event, 0.5) == holdout_flags(run * 0 + 2, event, 0.5)) < 0.7
    u = event_uniform(run, event)
    assert u.min() >= 0.0 and u.max() < 1.0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5])
def test_holdout_fraction_outside_0_1_names_the_key(bad):
    with pytest.raises(XecError, match=r"finetune\.holdout_fraction"):
        check_fraction(bad)
    with pytest.raises(XecError, match=r"finetune\.holdout_fraction"):
        load_config(None, overrides={"finetune.holdout_fraction": bad})


def test_realdata_reader_and_loader(tmp_path):
    f = toy_file(tmp_path / "a.root", 150, seed=3, dead_fraction=0.02)
    norm = get_normalizer("meg2")
    ev = read_realdata([str(f)], norm, max_events=100, chunk_size=64)
    assert ev.x.shape == (100, N_SENSORS, 2) and ev.x.dtype == np.float32
    assert np.array_equal(ev.event, np.arange(100)) and (ev.run == 1).all()
    assert 0.015 < ev.dead.mean() < 0.025
    assert (ev.x[ev.dead] == np.float32(norm.sentinel)).all()
    loader = EventArrayLoader(ev, 32, shuffle=True, seed=5)
    seen = [b[1]["dead"].shape[0] for b in loader]
    assert len(loader) == 4 and seen == [32, 32, 32, 4]
    first = [b[0] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, [b[0] for b in loader]))  # same epoch, same batches
    loader.set_epoch(1)
    assert not torch.equal(first[0], next(iter(loader))[0])


def test_an_unreadable_realdata_file_is_left_out_and_listed(tmp_path):
    """A truncated file fails its own inference job, not the fine-tuning: the reader skips it,
    keeps the events of the others, and names it with its error."""
    good = toy_file(tmp_path / "good.root", 40, seed=5)
    bad = toy_file(tmp_path / "bad.root", 40, seed=6)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    later = toy_file(tmp_path / "later.root", 30, seed=7)
    ev = read_realdata([str(good), str(bad), str(later)], get_normalizer("meg2"), chunk_size=16)
    assert len(ev) == 70 and ev.files == [str(good), str(later)]
    assert list(ev.skipped) == [str(bad)] and "bad.root" in ev.skipped[str(bad)]


# ----------------------------------------------------------------------------- dead sensors
@pytest.mark.parametrize("context", [False, True])
def test_finetune_loss_and_gradients_never_see_the_dead_sensors(tmp_path, context):
    """The realdata's own dead sensors: never hidden, never scored, and the model is told to fill
    them, so garbage written into their input values changes neither the loss nor a gradient
    (with the encoder, and with the default's shower-peak context, which must not pick a dead
    sensor as the peak)."""
    cfg = _cfg(
        **{
            "finetune.relative_loss_weight": 1.0,
            "finetune.freeze_encoder": False,
            "model.inpaint_context": context,
        }
    )
    norm = normalizer_from_config(cfg)
    ck = random_inpainter(tmp_path / "inp.pt", cfg)
    stage = RealdataFinetuneStage(cfg, norm, str(ck))
    model = stage.build_model()
    stage.prepare_model(model)
    model.train()
    ev = read_realdata([str(toy_file(tmp_path / "d.root", 8, seed=4, dead_fraction=0.05))], norm)
    x = torch.from_numpy(ev.x)
    dead = torch.from_numpy(ev.dead)
    assert int(dead.sum()) > 1000

    def loss_and_grads(inp):
        model.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(11)
        loss, logs = stage.training_step(stage.train_module(model), inp, {"dead": dead}, {}, gen)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    hidden, fill = stage.masks(x, {"dead": dead}, torch.Generator().manual_seed(11))
    assert not (hidden & dead).any() and torch.equal(fill, hidden | dead)
    assert 0.04 < hidden.float().mean() < 0.06  # inpainter.mask_ratio of the live sensors
    loss, grads = loss_and_grads(x)
    garbage = x.clone()
    garbage[dead] = torch.tensor([7.5, 3.0])  # neither the sentinel nor anything physical
    loss2, grads2 = loss_and_grads(garbage)
    assert float(loss) > 0 and torch.equal(loss, loss2)
    assert set(grads) == set(grads2) and any(n.startswith("encoder." if context else "local.") for n in grads)
    for n in grads:
        torch.testing.assert_close(grads2[n], grads[n], rtol=0, atol=0, msg=n)
    # the check is sensitive: the same garbage in a few live sensors does change the loss
    live = garbage.clone()
    live[~dead & ~hidden] = torch.tensor([7.5, 3.0])
    assert not torch.equal(loss_and_grads(live)[0], loss)


# ----------------------------------------------------------------------------- the gain
@pytest.mark.slow
def test_finetune_face_balance_is_its_own_or_the_inpainters(tmp_path):
    """finetune.face_balance (default 0: every sensor alike) or, when null, inpainter.face_balance."""
    from xec.train.inpainter import face_balance_weights

    ck = random_inpainter(tmp_path / "inp.pt", _cfg())
    for overrides, balance in (
        ({"inpainter.face_balance": 1.0}, 0.0),
        ({"inpainter.face_balance": 1.0, "finetune.face_balance": None}, 1.0),
        ({"finetune.face_balance": 0.5}, 0.5),
    ):
        cfg = _cfg(**overrides)
        stage = RealdataFinetuneStage(cfg, normalizer_from_config(cfg), str(ck))
        assert torch.equal(stage.sensor_weight, face_balance_weights(balance)), overrides


def test_finetuning_on_a_gain_miscalibrated_toy_reduces_the_held_out_error(tmp_path):
    """An inpainter trained (here from random weights, with the same machinery) on calibrated toy
    events, then fine-tuned on events whose gain is 3x off: the held-out relative MAE of the bright
    hidden sensors is worse on the miscalibrated events before, and much lower after. Without the
    sensor-level correction: that one reads its neighbours relative to each other, so a gain off
    by the same factor everywhere does not hurt it (the next test)."""
    cfg = _cfg(
        **{
            "finetune.epochs": 6,
            "finetune.lr": 5e-3,
            "model.inpaint_local_neighbours": 0,
            "model.inpaint_context": True,
        }
    )
    calib = toy_file(tmp_path / "calib.root", 512, seed=1)
    miscal = toy_file(tmp_path / "miscal.root", 512, seed=2, gain=3.0)
    sim = run_finetune(cfg, random_inpainter(tmp_path / "random.pt", cfg), [str(calib)], tmp_path / "sim")
    calibrated = sim["val"]["val_rel_mae_npho_bright"]
    assert calibrated < 0.6
    ft = run_finetune(cfg, tmp_path / "sim" / "checkpoint.pt", [str(miscal)], tmp_path / "ft")
    before, after = ft["val"]["initial_rel_mae_npho_bright"], ft["val"]["val_rel_mae_npho_bright"]
    assert before > 1.3 * calibrated  # the miscalibration hurts the calibrated-data inpainter
    assert after < 0.6 * before  # and the fine-tuning on the miscalibrated events' live sensors recovers
    assert ft["val"]["val_loss"] < 0.6 * ft["val"]["initial_loss"]
    # what it wrote: an inpainter checkpoint of the same model, with the split recorded
    ck = load_checkpoint(tmp_path / "ft" / "checkpoint.pt", expected_stage="inpainter")
    assert ck["model"] == load_checkpoint(tmp_path / "sim" / "checkpoint.pt")["model"]
    info = ck["finetune"]
    assert info["holdout_fraction"] == 0.25 and info["events_read"] == 512
    assert info["finetune_events"] + info["holdout_events"] == 512 and 90 < info["holdout_events"] < 170
    assert ck["init_checkpoint"] == str(tmp_path / "sim" / "checkpoint.pt")
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["val"]["initial_rel_mae_npho_bright"] == pytest.approx(before)


@pytest.mark.slow
def test_local_correction_is_blind_to_a_common_gain(tmp_path):
    """With the sensor-level correction (config.yaml's default) the same toy inpainter is as good
    on the events whose gain is 3x off as on calibrated ones, before any fine-tuning."""
    cfg = _cfg(**{"finetune.epochs": 6, "finetune.lr": 5e-3})
    assert cfg["model"]["inpaint_local_neighbours"] > 0
    calib = toy_file(tmp_path / "calib.root", 512, seed=1)
    miscal = toy_file(tmp_path / "miscal.root", 512, seed=2, gain=3.0)
    sim = run_finetune(cfg, random_inpainter(tmp_path / "random.pt", cfg), [str(calib)], tmp_path / "sim")
    calibrated = sim["val"]["val_rel_mae_npho_bright"]
    assert calibrated < 0.1  # flat light: the neighbours tell it
    ft = run_finetune(cfg, tmp_path / "sim" / "checkpoint.pt", [str(miscal)], tmp_path / "ft")
    assert ft["val"]["initial_rel_mae_npho_bright"] < 1.2 * calibrated


# ----------------------------------------------------------------------------- bad input
def test_checkpoint_with_another_normalization_preset_is_an_error_naming_the_file(tmp_path):
    cfg = _cfg()
    ck = random_inpainter(tmp_path / "legacy.pt", cfg, preset="legacy")
    f = toy_file(tmp_path / "r.root", 40, seed=5)
    with pytest.raises(XecError, match=r"legacy\.pt.*normalization mismatch|normalization mismatch.*legacy\.pt"):
        run_finetune(cfg, ck, [str(f)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_realdata_without_live_sensors_on_a_face_is_an_error_naming_file_and_face(tmp_path):
    g = get_geometry()
    rng = np.random.default_rng(0)
    npho = rng.uniform(100, 500, (30, N_SENSORS)).astype(np.float32)
    npho[17, np.asarray(g.face) == FACE_NAMES.index("us")] = 1e10  # the whole upstream face dead in one event
    f = write_root_file(tmp_path / "deadface.root", 30, overrides={"npho": npho})
    cfg = _cfg()
    ck = random_inpainter(tmp_path / "inp.pt", cfg)
    with pytest.raises(XecError, match=r"deadface\.root: entry 17 has no live sensor on the us face"):
        run_finetune(cfg, ck, [str(f)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_split_leaving_nothing_to_hold_out_is_an_error(tmp_path):
    cfg = _cfg(**{"finetune.holdout_fraction": 0.01, "finetune.max_events": 5})
    ck = random_inpainter(tmp_path / "inp.pt", cfg)
    f = toy_file(tmp_path / "r.root", 20, seed=6)
    with pytest.raises(XecError, match=r"finetune\.holdout_fraction = 0\.01 leaves"):
        run_finetune(cfg, ck, [str(f)], tmp_path / "out")


# ----------------------------------------------------------------------------- the evaluation
def test_inpainting_scores_the_finetuned_inpainter_on_the_held_out_events_only():
    """`xec inpainting --finetuned`: the held-out events are scored apart, on the same hidden
    sensors, with both inpainters (here fakes filling a constant), the fine-tuned one run on
    those events only; the all-events scores are unchanged by it."""
    from xec.baseline.reco import BaselineConfig
    from xec.config import plain
    from xec.inpainting.cli import finetune_result
    from xec.inpainting.evaluate import FINETUNED, evaluate_sample
    from xec.inpainting.masking import hide_sensors
    from xec.summary_tables import finetune_rows

    cfg = load_config(None)
    norm = normalizer_from_config(cfg)

    class Fill:  # an ONNX-session stand-in: masked sensors -> `photons`, time 0
        def __init__(self, photons):
            self.value = np.float32(norm.npho_forward(np.float64(photons)))
            self.events = 0

        def run(self, _names, feeds):
            x = feeds["input"].copy()
            m = feeds["mask"] > 0
            x[..., 0][m] = self.value
            x[..., 1][m] = 0.0
            self.events += len(x)
            return [x]

    rng = np.random.default_rng(3)
    n = 120
    npho = (rng.uniform(200, 600, (n, 1)) * (1 + 0.05 * rng.normal(size=(n, N_SENSORS)))).astype(np.float32)
    t = np.full((n, N_SENSORS), 20e-9, np.float32)
    held = holdout_flags(np.ones(n, np.int64), np.arange(n), 0.25)
    kw = dict(
        normalizer=norm,
        bcfg=BaselineConfig.from_dict(plain(cfg["baseline"])),
        counts={"inner": 3, "top": 1},
        min_npho=100.0,
        seed=5,
        batch_size=16,
        where="toy",
    )
    chunks = [(npho[i : i + 50], t[i : i + 50], held[i : i + 50]) for i in range(0, n, 50)]
    sim, fine = Fill(400.0), Fill(300.0)
    scores, hs = evaluate_sample(iter(chunks), [100.0], session=sim, finetuned=fine, **kw)
    alone = evaluate_sample(iter([c[:2] for c in chunks]), [100.0], session=Fill(400.0), **kw)
    assert fine.events == int(held.sum()) and hs.events == int(held.sum()) and scores.events == n
    assert scores.result(0.7) == alone.result(0.7)  # the held-out pass changes nothing else
    hidden = hide_sensors(npho, np.zeros(npho.shape, bool), kw["counts"], 100.0, 5, 0)
    faces = np.asarray(get_geometry().face)
    for f, name in ((0, "inner"), (FACE_NAMES.index("top"), "top")):
        want = hidden[held][:, faces == f]
        assert hs.hidden[f] == want.sum() > 0
        true = npho[held][:, faces == f][want].astype(np.float64)
        res = hs.result(0.7)["faces"][name]
        assert res[FINETUNED]["rel_mae"] == pytest.approx(np.mean(np.abs(300.0 / true - 1)), rel=1e-4)
        assert res["inpainter"]["rel_mae"] == pytest.approx(np.mean(np.abs(400.0 / true - 1)), rel=1e-4)
    res = finetune_result(hs.result(0.7), FINETUNED, 0.7)
    e = res["faces"]["inner"]
    assert e["gain"] == pytest.approx(e[FINETUNED]["rel_mae"] / e["inpainter"]["rel_mae"])
    header, rows = finetune_rows({"finetune": {**res, "sample": "realdata", "holdout_fraction": 0.25}})
    assert [r[0] for r in rows] == ["inner", "top"] and header[5] == "gain"
