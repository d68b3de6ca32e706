"""Dead sensors in the reconstruction (issue 14, part 3): readout boards and dead-sensor masks
(xec.inpainting.boards), the dead-fraction sweep (xec.inpainting.deadsweep, `xec deadsweep`)
and its tables, on small simulated showers with the hand-written ONNX models of
test_deploy_infer (exact, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from xec.cli import main as cli_main
from xec.errors import XecError
from xec.geometry import FACE_NAMES, N_SENSORS, get_geometry
from xec.inpainting.boards import check_sweep, dead_masks, readout_boards

FRACTIONS = [0.0, 0.01, 0.02, 0.05, 0.1]


# ---------------------------------------------------------------- boards and masks
def test_boards_partition_every_face_into_compact_adjacent_groups():
    g = get_geometry()
    boards = readout_boards(16)
    ids = np.concatenate(boards)
    assert len(ids) == N_SENSORS and len(np.unique(ids)) == N_SENSORS  # every sensor on one board
    sizes = {f: [len(b) for b in boards if g.face[b[0]] == i] for i, f in enumerate(FACE_NAMES)}
    assert len(sizes["inner"]) == 256 and set(sizes["inner"]) <= {15, 16}  # ~4 x 4 MPPC blocks
    for b in boards:
        assert len(b) <= 16 and len(set(g.face[b])) == 1  # one face
        # adjacent: connected through nearest neighbours (MPPC pitch 1.5 cm, PMT pitch 6-10.4 cm)
        reach = 2.2 if g.is_mppc[b[0]] else 11.0
        n, _ = connected_components(cdist(g.positions[b], g.positions[b]) < reach)
        assert n == 1, b
    # compact: an inner board spans a few MPPCs each way (<= 9 cm; a 4 x 4 block 6.4 cm), not a row of
    # 16 (23 cm)
    inner = [b for b in boards if g.is_mppc[b[0]]]
    span = max(np.ptp(cdist(g.positions[b], g.positions[b])) for b in inner)
    assert span < 9.5, span


@pytest.mark.parametrize("pattern", ["random", "clustered"])
def test_masks_meet_the_fraction_are_seeded_and_nested(pattern):
    events = np.arange(100, 160)
    m = dead_masks(FRACTIONS, pattern, events, seed=7)
    assert m.shape == (len(FRACTIONS), len(events), N_SENSORS)
    counts = m.sum(axis=2)
    largest = max(len(b) for b in readout_boards(16))
    for j, f in enumerate(FRACTIONS):
        target = round(f * N_SENSORS)
        if pattern == "random":
            assert (counts[j] == target).all()
        else:  # whole boards until the target is met: never below it, above by less than one board
            assert (counts[j] >= target).all() and (counts[j] < target + largest).all(), (f, counts[j])
    assert not m[0].any()
    assert (m[1:] >= m[:-1]).all()  # nested: dead at 1 % stays dead at 2 %, ...
    # seeded: the same mask again; another seed, another mask; an event's mask does not depend on
    # the other events read with it (chunking)
    np.testing.assert_array_equal(m, dead_masks(FRACTIONS, pattern, events, seed=7))
    assert (m[2] != dead_masks(FRACTIONS, pattern, events, seed=8)[2]).any()
    np.testing.assert_array_equal(m[:, 5:9], dead_masks(FRACTIONS, pattern, events[5:9], seed=7))
    assert (m[2, 0] != m[2, 1]).any()  # each event its own draw


def test_clustered_masks_kill_whole_boards():
    boards = readout_boards(16)
    board_of = np.empty(N_SENSORS, np.int64)
    for i, b in enumerate(boards):
        board_of[b] = i
    m = dead_masks([0.02, 0.1], "clustered", np.arange(20), seed=1)
    for mask in m.reshape(-1, N_SENSORS):
        dead_boards = np.unique(board_of[mask])
        # every board with a dead sensor is dead as a whole
        assert mask.sum() == sum(len(boards[b]) for b in dead_boards)


@pytest.mark.parametrize(
    "fractions, patterns, message",
    [
        ([0.0, 1.0], ["random"], r"deadsweep.fractions\[1\] = 1.0: a dead fraction must be in \[0, 1\)"),
        ([-0.01], ["random"], r"deadsweep.fractions\[0\]"),
        ([0.01, 0.01], ["random"], r"deadsweep.fractions .* given twice"),
        ([0.01], ["stripes"], r"deadsweep.patterns: unknown pattern 'stripes'"),
    ],
)
def test_bad_sweep_settings_name_the_key(fractions, patterns, message):
    with pytest.raises(XecError, match=message):
        check_sweep(fractions, patterns)


@pytest.mark.parametrize(
    "key, value, where",
    [
        ("fractions", [0.0, 1.5], "deadsweep.fractions.1"),
        ("patterns", ["random", "stripes"], "deadsweep.patterns.1"),
        ("board_size", 0, "deadsweep.board_size"),
        ("ml_fills", ["magic"], "deadsweep.ml_fills.0"),
    ],
)
def test_config_validation_names_the_key(tmp_path, key, value, where):
    import yaml

    from xec.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"deadsweep": {key: value}}))
    with pytest.raises(XecError, match=where):
        load_config(cfg)


# ---------------------------------------------------------------- the sweep on simulated showers
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """40 simulated 52.8 MeV events (no dead sensor), the toy ONNX models, a calibration."""
    import test_deploy_infer as tdi

    from xec.baseline.reco import Calibration
    from xec.deploy.onnx_meta import inpainter_metadata, regressor_metadata, software_versions
    from xec.normalization import get_normalizer
    from xec.simulation.generator import SampleSpec, write_sample
    from xec.simulation.physics import PhysicsParams
    from xec.utils import write_json

    d = tmp_path_factory.mktemp("deadsweep")
    bench = d / "bench.root"
    spec = SampleSpec(name="bench", events=40, seed=5, energy_mev=(52.8, 52.8), dead_fraction=0.0)
    write_sample(bench, spec, PhysicsParams())
    norm = get_normalizer("meg2")
    reg = tdi._export(
        tdi._MeanRegressor(), d / "reg.onnx", regressor_metadata(norm, tdi.TASKS, None, software_versions(17))
    )
    inp = tdi._export(tdi._ConstantInpainter(), d / "inp.onnx", inpainter_metadata(norm, software_versions(17)))
    calib = d / "calibration.json"
    write_json(calib, Calibration().to_dict())
    cfg = d / "config.yaml"
    cfg.write_text(
        "deadsweep: {fractions: [0.0, 0.05, 0.1], max_events: 40, n_boot: 5, chunk_size: 16}\n"
        "summary: {n_boot: 5, n_boot_core: 0}\n"
    )
    return {"dir": d, "bench": bench, "reg": reg, "inp": inp, "calib": calib, "cfg": cfg}


@pytest.fixture(scope="module")
def swept(sample):
    d = sample["dir"]
    out = d / "sweep"
    argv = ["deadsweep", "--config", str(sample["cfg"]), "--model", str(sample["reg"])]
    argv += ["--inpainter", str(sample["inp"]), "--calibration", str(sample["calib"]), "--input", str(sample["bench"])]
    argv += ["--out", str(out / "summary.json"), "--markdown", str(out / "summary.md")]
    argv += ["--html", str(out / "summary.html"), "--plot", str(out / "plot.png"), "--threads", "1"]
    assert cli_main(argv) == 0
    return json.loads((out / "summary.json").read_text()), out


def _width68(df: pd.DataFrame, obs: str) -> float:
    from xec.metrics import width68
    from xec.summary import OBSERVABLES, residual

    col, scale, kind = OBSERVABLES[obs]
    return width68(residual(df, col, kind) * scale)


def test_sweep_gives_finite_resolutions_and_zero_dead_equals_the_plain_runs(sample, swept, tmp_path):
    from xec.baseline import cli as bcli
    from xec.config import load_config
    from xec.deploy.infer import run_inference
    from xec.inpainting.deadsweep import SWEEP_OBSERVABLES

    result, out = swept
    assert result["events"] == 40 and result["methods"] == ["ml_inpainter", "classical"]
    keys = [(p["pattern"], p["fraction"]) for p in result["points"]]
    assert keys == [("any", 0.0), ("random", 0.05), ("random", 0.1), ("clustered", 0.05), ("clustered", 0.1)]
    for p in result["points"]:
        for m in result["methods"]:
            e = p["methods"][m]
            assert e["dead_per_event"] >= round(p["fraction"] * N_SENSORS)
            for obs in SWEEP_OBSERVABLES:
                assert e[obs]["n"] == 40 and np.isfinite(e[obs]["width68"]) and e[obs]["width68"] > 0, (p, m, obs)
    # 0 % dead: the ML is `xec infer` on the same events (the inpainter has nothing to fill), the
    # classical the plain `xec baseline`
    run_inference(str(sample["reg"]), [str(sample["bench"])], str(tmp_path / "inf.root"), inpainter=str(sample["inp"]))
    ml = pd.read_parquet(tmp_path / "inf.parquet")
    cfg = load_config(sample["cfg"], command="baseline")
    bcli.run_baseline(
        [str(sample["bench"])], str(tmp_path / "b.parquet"), cfg, bcli.load_calibration(str(sample["calib"]))
    )
    classical = pd.read_parquet(tmp_path / "b.parquet")
    zero = result["points"][0]["methods"]
    for obs in SWEEP_OBSERVABLES:
        assert zero["ml_inpainter"][obs]["width68"] == pytest.approx(_width68(ml, obs), rel=1e-6), obs
        assert zero["classical"][obs]["width68"] == pytest.approx(_width68(classical, obs), rel=1e-6), obs
    # dead sensors change the ML input (the toy inpainter writes 0.5 into them)
    p10 = result["points"][2]["methods"]["ml_inpainter"]
    assert p10["energy_pct"]["width68"] != zero["ml_inpainter"]["energy_pct"]["width68"]
    # outputs: the table and the plot
    md = (out / "summary.md").read_text()
    assert "| clustered | 10 |" in md and "ML inpainter" in md and "(x" in md
    assert result["meta"]["hole_fill"] == "solid_angle" and "filled by the solid-angle rule first" in md
    assert (out / "plot.png").stat().st_size > 10_000 and (out / "summary.html").exists()
    assert result["seconds"]["total"] > 0 and result["meta"]["boards"] == len(readout_boards(16))


def test_summary_carries_the_sweep_table(swept, tmp_path):
    result, out = swept
    argv = ["summary", "--deadsweep", str(out / "summary.json"), "--out", str(tmp_path / "s.json")]
    argv += ["--markdown", str(tmp_path / "s.md"), "--html", str(tmp_path / "s.html")]
    assert cli_main(argv) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["deadsweep"]["points"][0]["fraction"] == 0.0
    assert "Resolution vs dead fraction" in (tmp_path / "s.md").read_text()
    assert "Resolution vs dead fraction" in (tmp_path / "s.html").read_text()


def test_sweep_error_messages(sample, tmp_path, capsys):
    argv = ["deadsweep", "--config", str(sample["cfg"]), "--model", str(sample["reg"])]
    argv += ["--calibration", str(sample["calib"]), "--input", str(sample["bench"]), "--out", str(tmp_path / "s.json")]
    assert cli_main(argv) == 2
    assert "deadsweep.ml_fills has 'inpainter': give --inpainter" in capsys.readouterr().err
    argv += ["--inpainter", str(sample["inp"])]
    argv[argv.index("--calibration") + 1] = str(tmp_path / "nope.json")
    assert cli_main(argv) == 2
    assert "nope.json: calibration file not found" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_rules_declare_the_sweep(repo_root: Path):
    from xec.commands import config_keys

    keys = config_keys("deadsweep", runtime=False)
    assert "seed" in keys and "baseline" in keys and "deadsweep.fractions" in keys
    assert "deadsweep.chunk_size" not in keys  # runtime only: changes no result
