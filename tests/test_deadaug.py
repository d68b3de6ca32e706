"""Dead sensors as a training augmentation (xec.inpainting.deadaug): whole readout boards or
random sensors per event, its expected dead fraction, seeding, the config keys, and how the
regressor and inpainter stages use it; the light sum's fill of a whole dead board
(xec.models.aggregates)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from xec.config import load_config, validate_config
from xec.errors import XecError
from xec.geometry import N_SENSORS
from xec.inpainting.boards import readout_boards
from xec.inpainting.deadaug import DeadSensorAugment, board_of_sensor


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _board_dead_counts(mask: np.ndarray, board_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_boards) dead sensors per board, and the boards' sizes."""
    idx = board_of_sensor(board_size)
    n_boards = idx.max() + 1
    counts = np.stack([np.bincount(idx[row], minlength=n_boards) for row in mask])
    return counts, np.bincount(idx, minlength=n_boards)


def test_board_of_sensor_inverts_the_boards():
    idx = board_of_sensor(16)
    boards = readout_boards(16)
    assert idx.shape == (N_SENSORS,) and idx.min() == 0 and idx.max() == len(boards) - 1
    for i, b in enumerate(boards):
        assert (idx[b] == i).all()


@pytest.mark.parametrize("board_size", [16, 4])
def test_clustered_kills_whole_boards_only(board_size):
    aug = DeadSensorAugment(events=1.0, max_fraction=0.3, clustered=1.0, board_size=board_size)
    mask = aug.mask(300, _gen(1)).numpy()
    assert mask.dtype == bool and mask.shape == (300, N_SENSORS)
    counts, sizes = _board_dead_counts(mask, board_size)
    # every killed sensor's board is fully dead: each board is either untouched or all dead
    assert np.all((counts == 0) | (counts == sizes[None, :]))
    assert mask.sum() > 300 * 0.1 * N_SENSORS  # mean fraction 0.15: plenty of boards died
    assert (mask.sum(1) > 0).mean() > 0.9


def test_random_kills_sensors_not_boards():
    aug = DeadSensorAugment(events=1.0, max_fraction=0.3, clustered=0.0)
    mask = aug.mask(300, _gen(2)).numpy()
    counts, sizes = _board_dead_counts(mask)
    partial = (counts > 0) & (counts < sizes[None, :])
    assert partial.mean() > 0.3  # most touched boards are only partly dead
    np.testing.assert_allclose(mask.mean(), 0.15, atol=0.01)


@pytest.mark.parametrize(("events", "max_fraction", "clustered"), [(0.5, 0.2, 0.5), (1.0, 0.1, 1.0), (0.25, 0.4, 0.0)])
def test_expected_dead_fraction_matches_the_config(events, max_fraction, clustered):
    aug = DeadSensorAugment(events=events, max_fraction=max_fraction, clustered=clustered)
    n = 6000
    mask = aug.mask(n, _gen(3)).numpy()
    frac = mask.mean(1)
    assert aug.expected_fraction == pytest.approx(events * max_fraction / 2)
    # per-event fraction: mean events x max / 2; its spread over 6000 events gives < 0.002
    np.testing.assert_allclose(frac.mean(), aug.expected_fraction, atol=0.003)
    # share of events with dead sensors: `events`, less those whose small fraction f killed
    # nothing: E[(1 - f)^n] = 1 / ((n + 1) max_fraction) over n boards or sensors
    none = [1.0 / ((k + 1) * max_fraction) for k in (aug.n_boards, N_SENSORS)]
    expect = events * (1.0 - clustered * none[0] - (1.0 - clustered) * none[1])
    assert (frac > 0).mean() == pytest.approx(expect, abs=0.02)
    # the affected events' fractions are uniform in [0, max_fraction]: mean and quartiles
    # (up to the binomial spread of the sensors / 320 boards that die at a given fraction)
    hit = frac[frac > 0]
    np.testing.assert_allclose(hit.mean(), max_fraction / 2, atol=0.006)
    np.testing.assert_allclose(np.quantile(hit, [0.25, 0.75]), [0.25 * max_fraction, 0.75 * max_fraction], atol=0.015)
    if clustered == 1.0:
        counts, sizes = _board_dead_counts(mask[:500])
        assert np.all((counts == 0) | (counts == sizes[None, :]))


def test_seeded_masks_are_reproducible():
    aug = DeadSensorAugment(events=0.5, max_fraction=0.2, clustered=0.5)
    a, b = aug.mask(64, _gen(7)), aug.mask(64, _gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, aug.mask(64, _gen(8)))
    # a generator's successive batches differ (one stream per epoch in the training loop)
    g = _gen(7)
    first, second = aug.mask(64, g), aug.mask(64, g)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_off_and_bad_values():
    sec = {"events": 0.0, "max_fraction": 0.2, "clustered": 0.5}
    assert DeadSensorAugment.from_config(sec, 16, "regressor.dead_sensors") is None
    assert DeadSensorAugment.from_config({**sec, "events": 0.5, "max_fraction": 0.0}, 16, "x") is None
    assert DeadSensorAugment.from_config({**sec, "events": 0.5}, 16, "x") is not None
    with pytest.raises(XecError, match=r"regressor.dead_sensors.events = 1.5: must be in \[0, 1\]"):
        DeadSensorAugment.from_config({**sec, "events": 1.5}, 16, "regressor.dead_sensors")
    with pytest.raises(XecError, match="board_size = 0"):
        DeadSensorAugment(0.5, 0.2, 0.5, board_size=0)


def test_schema_defaults_and_rejects_bad_values():
    cfg = validate_config({})
    for stage in ("regressor", "inpainter"):
        sec = cfg[stage]["dead_sensors"]
        assert set(sec) == {"events", "max_fraction", "clustered"}
        assert 0.0 <= sec["events"] <= 1.0
    for key, value, msg in (
        ("events", 1.5, "1.5 is greater than the maximum of 1"),
        ("max_fraction", -0.1, "-0.1 is less than the minimum of 0"),
        ("clustered", "all", "'all' is not of type 'number'"),
    ):
        with pytest.raises(XecError, match=rf"regressor.dead_sensors.{key}: {msg}"):
            validate_config({"regressor": {"dead_sensors": {key: value}}})
    with pytest.raises(XecError, match=r"inpainter.dead_sensors: Additional properties .*'pattern'"):
        validate_config({"inpainter": {"dead_sensors": {"pattern": "clustered"}}})


def test_training_commands_declare_the_board_size():
    from xec.config import command_params

    cfg = load_config()
    for cmd in ("train regressor", "train inpainter"):
        params = command_params(cfg, cmd)
        assert params["deadsweep"] == {"board_size": 16}
        assert "dead_sensors" in params[cmd.split()[1]]


# ---------------------------------------------------------------- the stages
def _cfg(stage: str, **dead) -> dict:
    cfg = copy.deepcopy(load_config())
    cfg[stage]["dead_sensors"].update(dead)
    return cfg


def _batch(n: int = 8) -> torch.Tensor:
    x = torch.rand(n, N_SENSORS, 2) + 0.5
    x[:, :50] = -1.0  # already dead in the file (meg2 sentinel)
    return x


def _input_seen_by_the_model(stage, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch a regressor stage's training step hands to its model (loss stubbed out)."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return {}

    stage.light_sum_checked = True
    stage._loss = lambda model, out, targets, weights: (torch.zeros(()), {})
    stage.training_step(Probe(), x, {}, {}, generator)
    return seen[0]


def test_regressor_training_step_sets_dead_boards_to_the_sentinel():
    from xec.normalization import normalizer_from_config
    from xec.train.regressor import RegressorStage

    cfg = _cfg("regressor", events=1.0, max_fraction=0.3, clustered=1.0)
    cfg["regressor"]["dead_fill"] = "sentinel"  # the default is time (test below)
    norm = normalizer_from_config(cfg)
    stage = RegressorStage(cfg, norm)
    assert stage.dead_aug is not None and stage.dead_aug.board_size == 16
    x = _batch()
    got = _input_seen_by_the_model(stage, x, _gen(5))
    dead = (got == norm.sentinel).all(-1)
    expect = stage.dead_aug.mask(len(x), _gen(5)) | (x == norm.sentinel).all(-1)
    assert torch.equal(dead, expect)  # npho and time both at the sentinel, exactly the mask's sensors
    assert torch.equal(got[~dead], x[~dead])  # the others untouched
    counts, sizes = _board_dead_counts(stage.dead_aug.mask(len(x), _gen(5)).numpy())
    assert np.all((counts == 0) | (counts == sizes[None, :]))


def test_inpainter_training_hides_live_board_sensors_and_validation_does_not():
    from xec.normalization import normalizer_from_config
    from xec.train.inpainter import InpainterStage

    cfg = _cfg("inpainter", events=1.0, max_fraction=0.3, clustered=1.0)
    norm = normalizer_from_config(cfg)
    stage = InpainterStage(cfg, norm)
    got = {}

    def model(x, fill):
        got["fill"] = fill
        return torch.zeros_like(x)

    def loss(pred, x, hidden):
        got["hidden"] = hidden
        return torch.zeros(()), {}

    stage._loss = loss
    x = _batch()
    stage.training_step(model, x, {}, {}, _gen(6))
    gen = _gen(6)
    random_part = stage.make_mask(x, gen)
    boards = stage.dead_aug.mask(len(x), gen)
    live = x[..., 0] != norm.sentinel
    assert torch.equal(got["hidden"], random_part | (boards & live))
    assert torch.equal(got["fill"], got["hidden"])
    assert not (got["hidden"] & ~live).any()  # a sensor dead in the file is never scored
    assert got["hidden"].float().mean() > 0.1  # boards on top of the 5 % random mask
    # validation: the random mask alone
    hidden, _ = stage.masks(x, {}, _gen(6))
    assert torch.equal(hidden, stage.make_mask(x, _gen(6)))


# ---------------------------------------------------------------- the light sum's fill
def test_light_sum_fills_a_whole_dead_board():
    from xec.geometry import get_geometry
    from xec.models.aggregates import PhysicsAggregates
    from xec.normalization import get_normalizer

    norm = get_normalizer("meg2")
    agg = PhysicsAggregates(get_geometry(), norm)
    flat = np.full((1, N_SENSORS), 500.0)
    dead = flat.copy()
    boards = readout_boards(16)
    killed = np.concatenate([boards[0], boards[100], boards[-1]])  # inner-face and PMT boards
    dead[0, killed] = 1e10
    t = np.full_like(flat, 3e-8)
    n_dead, s_dead = agg.photons(torch.from_numpy(norm.normalize_events(dead, t)))
    _, s_flat = agg.photons(torch.from_numpy(norm.normalize_events(flat, t)))
    # every sensor of the dead boards, the inner ones too, gets the field's value: sums unchanged
    np.testing.assert_allclose(n_dead[0, killed].numpy(), 500.0, rtol=1e-4)
    np.testing.assert_allclose(s_dead.numpy(), s_flat.numpy(), rtol=1e-5)


def test_regressor_dead_fill_inpainter_hands_the_regressor_the_inpainted_event(tmp_path):
    from test_finetune import random_inpainter

    from xec.normalization import normalizer_from_config
    from xec.train.regressor import RegressorStage

    over = {"regressor.dead_sensors": {"events": 0.5, "max_fraction": 0.3, "clustered": 1.0}}
    cfg = load_config(None, overrides={**over, "regressor.dead_fill": "inpainter"})
    norm = normalizer_from_config(cfg)
    stage = RegressorStage(cfg, norm)
    with pytest.raises(XecError, match=r"regressor.dead_fill is 'inpainter': give --inpainter"):
        stage.attach_inpainter(None, "cpu")
    ckpt = random_inpainter(tmp_path / "inp.pt", cfg)
    stage.attach_inpainter(str(ckpt), "cpu")
    x = _batch(12)
    got = _input_seen_by_the_model(stage, x, _gen(9))
    dead = stage.dead_aug.mask(len(x), _gen(9))
    rows = dead.any(1)
    assert 0 < int(rows.sum()) < len(x)
    x_dead = torch.where(dead.unsqueeze(-1), torch.full_like(x, norm.sentinel), x)
    with torch.no_grad():
        expect = stage.fill_model(x_dead[rows], dead[rows])
    torch.testing.assert_close(got[rows], expect)
    assert (got[rows][dead[rows]][:, 0] != norm.sentinel).all()  # the dead sensors are filled
    assert torch.equal(got[~rows], x[~rows])  # events without augmentation: as they were
    # the stage's inpainter is frozen: no gradient reaches it
    assert not any(p.requires_grad for p in stage.fill_model.parameters())
    # an inpainter with the default dead_fill (sentinel) is an error, not silently ignored
    plain_stage = RegressorStage(load_config(None, overrides=over), norm)
    with pytest.raises(XecError, match=r"--inpainter .* is used only with config regressor.dead_fill: inpainter"):
        plain_stage.attach_inpainter(str(ckpt), "cpu")


def test_light_sum_fill_sparse_equals_the_dense_graph():
    """Eager and exported graphs fill only the dead sensors (_fill_sparse); compiled graphs run
    the dense form (_fill): the same passes, the same photons."""
    from xec.geometry import get_geometry
    from xec.models.aggregates import PhysicsAggregates
    from xec.normalization import get_normalizer

    agg = PhysicsAggregates(get_geometry(), get_normalizer("meg2"))
    gen = _gen(11)
    n = torch.rand(16, N_SENSORS, generator=gen) * 2000.0
    dead = DeadSensorAugment(events=1.0, max_fraction=0.3, clustered=0.5).mask(16, gen)
    n = torch.where(dead, torch.zeros(()), n)
    dense, sparse = agg._fill(n, ~dead), agg._fill_sparse(n, ~dead)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-3)
    assert torch.equal(sparse[~dead], n[~dead])
    assert (sparse[dead] > 0).float().mean() > 0.99  # nearly every dead sensor reached in 3 passes


def test_exported_light_sum_fill_matches_eager_on_dead_boards(tmp_path):
    """The exported graph carries the sparse fill (NonZero, ScatterND) in all its passes: ONNX
    Runtime fills whole dead boards (rim inwards) and random dead sensors as eager PyTorch does
    (to float rounding of the exp in the inverse normalization); an event without dead sensors
    rides along."""
    import onnxruntime as ort

    from xec.geometry import get_geometry
    from xec.models.aggregates import PhysicsAggregates
    from xec.normalization import get_normalizer

    norm = get_normalizer("meg2")
    agg = PhysicsAggregates(get_geometry(), norm).eval()

    class Photons(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.agg = agg

        def forward(self, x):
            return self.agg.photons(x)[0]

    gen = _gen(5)
    npho = torch.rand(8, N_SENSORS, generator=gen, dtype=torch.float64) * 3000.0
    dead = DeadSensorAugment(events=1.0, max_fraction=0.2, clustered=1.0).mask(8, gen)
    dead[1] |= torch.rand(N_SENSORS, generator=gen) < 0.05
    dead[7] = False
    x = torch.from_numpy(norm.normalize_events(torch.where(dead, 1e10, npho).numpy(), np.zeros((8, N_SENSORS))))
    path = tmp_path / "photons.onnx"
    torch.onnx.export(
        Photons(), (x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "b"}}, opset_version=17, dynamo=False
    )
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = Photons()(x).numpy()
    assert dead[:7].any(dim=1).all() and dead.sum() > 500
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)
    assert (got[dead.numpy()] > 0).mean() > 0.99  # filled, whole boards included


def test_regressor_dead_fill_time_hides_only_the_time():
    """dead_fill: time: the augmentation's sensors keep their light and lose their time, as in
    the live-time pass of xec infer; nothing else of the event changes."""
    from xec.normalization import normalizer_from_config
    from xec.train.regressor import RegressorStage

    over = {"regressor.dead_sensors": {"events": 0.5, "max_fraction": 0.3, "clustered": 0.5}}
    cfg = load_config(None, overrides={**over, "regressor.dead_fill": "time"})
    norm = normalizer_from_config(cfg)
    stage = RegressorStage(cfg, norm)
    stage.attach_inpainter(None, "cpu")  # no inpainter needed
    x = _batch(12)
    got = _input_seen_by_the_model(stage, x, _gen(9))
    dead = stage.dead_aug.mask(len(x), _gen(9))
    assert 0 < int(dead.any(1).sum()) < len(x)
    assert torch.equal(got[..., 0], x[..., 0])  # every npho as it was
    assert (got[..., 1][dead] == norm.sentinel).all()
    assert torch.equal(got[..., 1][~dead], x[..., 1][~dead])
