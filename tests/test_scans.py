"""Scans (xec.scans, xec scan-summary): point names, expansion and its checks, metrics, ranking, and
the ranking command end to end on hand-written point files (no training)."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from xec.config import validate_config
from xec.errors import XecError
from xec.scans import (
    METRICS,
    ScanPoint,
    expand_scans,
    point_metrics,
    point_name,
    rank_points,
    scan_point_overrides,
    schema_knows,
)

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
GRID = {"regressor.lr": [1.0e-3, 3.0e-3, 1.0e-2], "model.peak_hidden": [256, 512]}


def _cfg(**scans) -> dict:
    return validate_config({"simulation": {"samples": {"train": {"events": 10, "seed": 1}}}, "scans": scans})


def _unvalidated(**scans) -> dict:
    """A validated main config with a scans section the schema never saw (expand_scans' own checks)."""
    cfg = validate_config({})
    cfg["scans"] = scans
    return cfg


# ---- point names ---------------------------------------------------------------------------------
def test_point_name_is_readable_and_independent_of_key_order():
    a = point_name({"regressor.lr": 1.0e-3, "model.peak_hidden": 256})
    b = point_name({"model.peak_hidden": 256, "regressor.lr": 1.0e-3})
    assert a == b == "model.peak_hidden-256_regressor.lr-0.001"
    assert point_name({}) == "default"
    assert point_name({"model.rect_dims": [32, 64]}) == "model.rect_dims-32x64"
    assert point_name({"train.schedule": "onecycle"}) == "train.schedule-onecycle"
    assert point_name({"a.b": 1e20}) == "a.b-1e20"


TRICKY = [
    {},
    {"x": 1},
    {"x": 1.0},
    {"x": True},
    {"x": "1"},
    {"x": "true"},
    {"x": None},
    {"x": "null"},
    {"x": [1]},
    {"x": [1, 2]},
    {"x": "1x2"},
    {"x": ["1", "2"]},
    {"x": -1},
    {"x": "-1"},
    {"x": "smooth_l1"},
    {"x": "smooth", "l1": 1},
    {"x": "a_b-c"},
    {"x": "a", "b": "c"},
    {"x": {"type": "mse"}},
    {"x": "{type: mse}"},
    {"x": "a" * 150},
    {"x": "a" * 151},
    {"x": "a/b"},
    {"x": "a b"},
    {"x": "a_b"},
    {"k-a": 1},
    {"k": "a-1"},
    {"x": float("nan")},
    {"x": "nan"},
    {"x": float("inf")},
    {"x": 1e-05},
    {"x": "1e-05"},
    {"default": 1},
    {"x": 0.1, "y": 0.2},
    {"x": "0.1_y-0.2"},
]


def test_point_names_are_distinct_safe_and_short():
    names = [point_name(ov) for ov in TRICKY]
    assert len(set(names)) == len(names), [n for n in names if names.count(n) > 1]
    for name in names:
        assert SAFE_NAME.fullmatch(name) and len(name) <= 100, name
        assert name not in (".", "..")
    # stable: the same overrides always get the same name (a hash of the content, not of the object)
    assert [point_name(copy.deepcopy(ov)) for ov in TRICKY] == names


_keys = st.sampled_from(["x", "y", "a.b", "a_b", "k-a", "l1", "model.peak_hidden"])
_scalars = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=False, width=32),
    st.booleans(),
    st.none(),
    st.text(alphabet="ax1_-. e", max_size=6),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=3), st.dictionaries(_keys, _values, max_size=3))
def test_point_names_never_collide(a, b):
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert (point_name(a) == point_name(b)) == same, (a, b, point_name(a))


# ---- expansion -----------------------------------------------------------------------------------
def test_grid_expands_in_sorted_key_order():
    cfg = _cfg(reg_lr={"rank_by": "uvw_68_mm", "grid": GRID})
    before = copy.deepcopy(cfg)
    points = expand_scans(cfg)["reg_lr"]
    assert cfg == before  # the main config is left alone
    assert len(points) == 6 and all(isinstance(p, ScanPoint) and p.scan == "reg_lr" for p in points)
    # sorted keys (model.peak_hidden, regressor.lr), the last varying fastest, values in given order
    assert [(p.overrides["model.peak_hidden"], p.overrides["regressor.lr"]) for p in points] == [
        (256, 1e-3),
        (256, 3e-3),
        (256, 1e-2),
        (512, 1e-3),
        (512, 3e-3),
        (512, 1e-2),
    ]
    for p in points:
        assert list(p.overrides) == sorted(p.overrides)
        assert p.name == point_name(p.overrides)
        assert p.config["regressor"]["lr"] == p.overrides["regressor.lr"]
        assert p.config["model"]["peak_hidden"] == p.overrides["model.peak_hidden"]
        assert "scans" not in p.config
        assert p.config["regressor"]["epochs"] == cfg["regressor"]["epochs"]  # everything else kept
    assert points[0].name == "model.peak_hidden-256_regressor.lr-0.001"


def test_points_list_keeps_its_order_and_the_main_config_point():
    cfg = _cfg(
        heads={
            "rank_by": "energy_68_pct",
            "higher_is_better": False,
            "points": [{"model.peak_window": 0}, {}, {"simulation.samples.train.events": 100, "seed": 7}],
        },
        other={"rank_by": "events_per_s", "higher_is_better": True, "grid": {"train.schedule": ["constant"]}},
    )
    scans = expand_scans(cfg)
    assert list(scans) == ["heads", "other"]
    names = [p.name for p in scans["heads"]]
    assert names == ["model.peak_window-0", "default", "seed-7_simulation.samples.train.events-100"]
    default = scans["heads"][1].config
    assert default == {k: v for k, v in cfg.items() if k != "scans"}
    assert scans["heads"][2].config["simulation"]["samples"]["train"]["events"] == 100
    assert scans["other"][0].config["train"]["schedule"] == "constant"
    assert expand_scans(validate_config({})) == {}


def test_schema_knows_nested_and_referenced_keys():
    known = ("seed", "regressor.lr", "simulation.samples.train.events", "regressor.losses.energy.weight", "data.train")
    for key in known:
        assert schema_knows(key), key
    for key in ("regressor.lrr", "train.betas.0", "bogus", "regressor..lr", "model.peak_hidden.x"):
        assert not schema_knows(key), key


BAD_SCANS = [
    # (scan section, words the one error must name)
    ({"rank_by": "uvw_68_mm", "grid": {"regressor.lrr": [1e-3]}}, ["regressor.lrr", "not a config key"]),
    ({"rank_by": "uvw_68_mm", "points": [{}, {"regressor.lrr": 1e-3}]}, ["regressor.lrr", "point 2"]),
    ({"rank_by": "uvw_68_mm", "grid": {"scans.x.rank_by": ["val_loss"]}}, ["scans.x.rank_by"]),
    ({"rank_by": "uvw_68_mm", "grid": {"regressor.lr": [-1]}}, ["regressor.lr", "point regressor.lr--1", "minimum"]),
    ({"rank_by": "uvw_68_mm", "grid": {"model.preset": ["huge"]}}, ["model.preset", "huge"]),
    ({"rank_by": "uvw_68_mm", "grid": {"regressor.lr": [1e-3, 1e-3]}}, ["regressor.lr", "appears twice"]),
    ({"rank_by": "uvw_68_mm", "points": [{"regressor.lr": 3e-3}, {}]}, ["regressor.lr", "same config", "default"]),
    ({"rank_by": "uvw_68_mm", "grid": {"regressor.lr": [1e-3], "model.peak_hidden": [2, 2.0]}}, ["same config"]),
    ({"rank_by": "uvw_68_mmm", "grid": {"regressor.lr": [1e-3]}}, ["rank_by", "uvw_68_mmm"]),
    ({"rank_by": "uvw_68_mm", "grid": {"model": [{}], "model.preset": ["tiny"]}}, ["'model'", "'model.preset'"]),
]


@pytest.mark.parametrize("spec, words", BAD_SCANS)
def test_bad_scan_is_one_error_naming_scan_and_key(spec, words):
    cfg = _cfg(bad=spec, good={"rank_by": "val_loss", "grid": {"regressor.lr": [1e-3]}})
    with pytest.raises(XecError) as exc:
        expand_scans(cfg)
    msg = str(exc.value)
    assert "scans.bad" in msg, msg
    for word in words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"rank_by": "uvw_68_mm", "grid": {}}, ["grid", "empty"]),
        ({"rank_by": "uvw_68_mm", "points": []}, ["points", "empty"]),
        ({"rank_by": "uvw_68_mm", "grid": {"regressor.lr": []}}, ["regressor.lr", "non-empty"]),
        ({"rank_by": "uvw_68_mm"}, ["exactly one of grid and points"]),
        ({"rank_by": "uvw_68_mm", "grid": {"regressor.lr": [1e-3]}, "points": [{}]}, ["exactly one"]),
        ({"grid": {"regressor.lr": [1e-3]}}, ["rank_by"]),
    ],
)
def test_expand_scans_checks_an_unvalidated_section_too(spec, words):
    with pytest.raises(XecError) as exc:
        expand_scans(_unvalidated(bad=spec))
    msg = str(exc.value)
    assert "scans.bad" in msg, msg
    for word in words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize(
    "scans, where",
    [
        ({"bad": {"rank_by": "uvw_68_mm", "grid": {}}}, "scans.bad.grid"),
        ({"bad": {"rank_by": "uvw_68_mm", "points": []}}, "scans.bad.points"),
        ({"bad": {"rank_by": "uvw_68_mm", "grid": {"regressor.lr": []}}}, "scans.bad.grid.regressor.lr"),
        ({"bad": {"rank_by": "uvw_68_mm"}}, "scans.bad"),
        ({"bad": {"rank_by": "uvw_68_mm", "grid": {"regressor.lr": [1]}, "points": [{}]}}, "scans.bad"),
        ({"bad": {"grid": {"regressor.lr": [1e-3]}}}, "scans.bad"),
        ({"bad": {"rank_by": "uvw_68_mm", "grid": {"regressor.lr": 1e-3}}}, "scans.bad.grid.regressor.lr"),
        ({"bad": {"rank_by": "uvw_68_mm", "grid": {"a..b": [1]}}}, "scans.bad.grid"),
        ({"bad": {"rank_by": "uvw_68_mm", "points": [{}], "typo": 1}}, "scans.bad"),
        ({"bad.name": {"rank_by": "uvw_68_mm", "points": [{}]}}, "scans"),
    ],
)
def test_schema_refuses_malformed_scans(scans, where):
    with pytest.raises(XecError, match=re.escape(f"config: {where}: ")):
        validate_config({"scans": scans})


def test_scan_defaults_are_filled():
    cfg = _cfg(s={"rank_by": "val_loss", "points": [{}]})
    assert cfg["scans"]["s"]["higher_is_better"] is False
    assert validate_config({})["scans"] == {}


def test_scan_point_overrides_needs_no_main_config():
    with pytest.raises(XecError, match="scans.s: grid: key 'a' is not a config key"):
        scan_point_overrides("s", {"rank_by": "val_loss", "grid": {"b": [1], "a": [2, 3]}})
    ovs = scan_point_overrides("s", {"rank_by": "val_loss", "grid": {"seed": [1], "regressor.lr": [2.0, 3.0]}})
    assert ovs == [{"regressor.lr": 2.0, "seed": 1}, {"regressor.lr": 3.0, "seed": 1}]


# ---- metrics -------------------------------------------------------------------------------------
def test_metric_names():
    expected = {
        *(f"{c}_68_mm" for c in "uvw"),
        "uvw_68_mm",
        "energy_68_pct",
        "energy_core_pct",
        "time_68_ps",
        "theta_68_deg",
        "phi_68_deg",
        "opening68_deg",
        *(f"{c}_ratio" for c in ("u", "v", "w", "uvw", "energy", "time", "theta", "phi", "opening68")),
    }
    expected |= {f"{k}_fid" for k in expected} | {
        "val_loss",
        "train_time_s",
        "events_per_s",
    }
    assert set(METRICS) == expected
    assert all(isinstance(d, str) and d for d in METRICS.values())


N = 400
_COLUMNS = {  # column -> (residual scale of the ML, kind)
    "uvwFI_u": 0.2,
    "uvwFI_v": 0.3,
    "uvwFI_w": 0.5,
    "timing_time": 0.05,
    "angle_theta": 0.5,
    "angle_phi": 0.4,
}


def _frames(rng):
    """ML and baseline frames with the same noise draws, the baseline's twice as wide: every
    68 % half-width of the baseline is exactly twice the ML's."""
    truth = {
        "true_uvwFI_u": rng.uniform(-20, 20, N),
        "true_uvwFI_v": rng.uniform(-60, 60, N),
        "true_uvwFI_w": rng.exponential(4.0, N),
        "true_timing_time": rng.normal(0, 1, N),
        "true_angle_theta": rng.uniform(70, 110, N),
        "true_angle_phi": rng.uniform(150, 170, N),
        "true_energy_energy": np.full(N, 0.0528),
    }
    noise = {c: rng.normal(0, s, N) for c, s in _COLUMNS.items()}
    noise["energy_energy"] = rng.normal(0, 0.01, N)
    opening = rng.exponential(0.5, N)
    frames = {}
    for method, scale in (("ml", 1.0), ("baseline", 2.0)):
        df = pd.DataFrame(truth)
        for c in _COLUMNS:
            df[f"pred_{c}"] = df[f"true_{c}"] + scale * noise[c]
        df["pred_energy_energy"] = df["true_energy_energy"] * (1 + scale * noise["energy_energy"])
        df["opening_angle_deg"] = scale * opening
        frames[method] = df
    return frames, noise, opening


def _w68(x):
    lo, hi = np.percentile(x, [50 - 34.1345, 50 + 34.1345])
    return 0.5 * (hi - lo)


def test_point_metrics_from_a_real_summary():
    """The summary dict comes from xec.summary's own functions on synthetic frames, through JSON
    as `xec summary` writes it; the regressor metrics are hand-written like Trainer.finish's."""
    from xec.summary import method_summary
    from xec.utils import finite_or_none

    frames, noise, opening = _frames(np.random.default_rng(3))
    w_true = frames["ml"]["true_uvwFI_w"].to_numpy()
    fid = np.abs(frames["ml"]["true_uvwFI_u"].to_numpy()) < 10.0  # half of the events
    methods = {m: method_summary(df, w_true, n_boot=0, n_boot_core=0, fiducial=fid) for m, df in frames.items()}
    summary = {"val": {"events": N, "reference": "truth", "methods": methods}}
    summary = json.loads(json.dumps(finite_or_none(summary)))
    reg = {
        "best": {"metric": "val_loss", "value": 0.25, "epoch": 2},
        "history": [
            {"epoch": 1, "epoch_time_s": 1.5, "events_per_s": 100.0},
            {"epoch": 2, "epoch_time_s": 2.5, "events_per_s": 120.0},
        ],
        "system": {"events_per_s": 120.0},
    }
    m = point_metrics(summary, reg)
    assert list(m) == list(METRICS)
    assert m["u_68_mm"] == pytest.approx(10 * _w68(noise["uvwFI_u"]), rel=1e-9)
    assert m["v_68_mm"] == pytest.approx(10 * _w68(noise["uvwFI_v"]), rel=1e-9)
    assert m["w_68_mm"] == pytest.approx(10 * _w68(noise["uvwFI_w"]), rel=1e-9)
    assert m["uvw_68_mm"] == pytest.approx((m["u_68_mm"] + m["v_68_mm"] + m["w_68_mm"]) / 3, rel=1e-12)
    assert m["energy_68_pct"] == pytest.approx(100 * _w68(noise["energy_energy"]), rel=1e-6)
    assert m["energy_core_pct"] == pytest.approx(methods["ml"]["energy_pct"]["all"]["sigma_core"], rel=1e-12)
    assert 0.5 < m["energy_core_pct"] < 1.5  # the 1 % Gaussian
    assert m["time_68_ps"] == pytest.approx(1000 * _w68(noise["timing_time"]), rel=1e-6)
    assert m["theta_68_deg"] == pytest.approx(_w68(noise["angle_theta"]), rel=1e-6)
    assert m["phi_68_deg"] == pytest.approx(_w68(noise["angle_phi"]), rel=1e-6)
    assert m["opening68_deg"] == pytest.approx(np.percentile(opening, 68.27), rel=1e-9)
    for name in ("u", "v", "w", "uvw", "energy", "time", "theta", "phi", "opening68"):
        assert m[f"{name}_ratio"] == pytest.approx(0.5, rel=1e-6), name
    assert m["val_loss"] == 0.25 and m["train_time_s"] == 4.0 and m["events_per_s"] == 120.0
    # inside the fiducial volume: the same estimators on the selected events
    assert m["u_68_mm_fid"] == pytest.approx(10 * _w68(noise["uvwFI_u"][fid]), rel=1e-9)
    assert m["u_68_mm_fid"] != m["u_68_mm"] and m["energy_ratio_fid"] == pytest.approx(0.5, rel=1e-6)


def test_point_metrics_missing_numbers_are_nan():
    m = point_metrics({}, {})
    assert list(m) == list(METRICS) and all(math.isnan(v) for v in m.values())
    partial = {"val": {"methods": {"ml": {"u_mm": {"all": {"width68": 2.0}}, "v_mm": {"all": {"width68": None}}}}}}
    m = point_metrics(partial, {"best": {"value": float("inf")}, "history": [{"epoch_time_s": 1.0}, {}]})
    assert m["u_68_mm"] == 2.0 and math.isnan(m["v_68_mm"]) and math.isnan(m["uvw_68_mm"])
    assert math.isnan(m["u_ratio"])  # no classical numbers
    assert math.isnan(m["val_loss"]) and math.isnan(m["train_time_s"]) and math.isnan(m["events_per_s"])
    # choices are made on val: a summary with bench numbers only ranks nowhere
    bench_only = {"bench": partial["val"]}
    assert math.isnan(point_metrics(bench_only, {})["u_68_mm"])


# ---- ranking -------------------------------------------------------------------------------------
def test_rank_points_sorts_nan_last():
    rows = [{"p": "a", "m": 3.0}, {"p": "b", "m": float("nan")}, {"p": "c", "m": 1.0}, {"p": "d"}, {"p": "e", "m": 2}]
    ranked = rank_points(rows, "m", higher_is_better=False)
    assert [r["p"] for r in ranked] == ["c", "e", "a", "b", "d"]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    assert [r["best"] for r in ranked] == [True, False, False, False, False]
    assert "rank" not in rows[0]  # new dicts
    ranked = rank_points(rows, "m", higher_is_better=True)
    assert [r["p"] for r in ranked] == ["a", "e", "c", "b", "d"]
    ties = rank_points([{"p": "x", "m": 1.0}, {"p": "y", "m": 1.0}], "m", False)
    assert [r["p"] for r in ties] == ["x", "y"]  # stable
    none = rank_points([{"m": float("nan")}, {"m": None}], "m", False)
    assert [r["best"] for r in none] == [False, False] and [r["rank"] for r in none] == [1, 2]


# ---- xec scan-summary ----------------------------------------------------------------------------
_OBS = ("u_mm", "v_mm", "w_mm", "energy_pct", "time_ps", "theta_deg", "phi_deg")


def _fake_summary(width: float, classical: float = 4.0, bench_width: float | None = None) -> dict:
    """val (where points are ranked) with the ML at ``width``; bench (confirmation only) at
    ``bench_width``."""

    def method(w):
        out = {o: {"all": {"width68": w, "sigma_core": 0.9 * w, "n": 100}} for o in _OBS}
        out["opening68_deg"] = {"all": {"value": w, "err": None, "n": 100}}
        return out

    def sample(w):
        return {"events": 100, "reference": "truth", "methods": {"ml": method(w), "baseline": method(classical)}}

    return {"val": sample(width), "bench": sample(width if bench_width is None else bench_width)}


def _fake_metrics(loss: float) -> dict:
    return {"best": {"value": loss}, "history": [{"epoch_time_s": 10.0, "events_per_s": 50.0}]}


@pytest.fixture
def scan_files(tmp_path):
    scan = {"rank_by": "uvw_68_mm", "description": "lr | scan", "grid": {"regressor.lr": [1e-3, 1e-2]}}
    cfg = {"scans": {"lr": scan}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = []
    # bench would rank the points the other way: the ranking must come from val
    for name, width, bench, loss in (("regressor.lr-0.001", 3.0, 1.0, 0.5), ("regressor.lr-0.01", 2.0, 3.5, 0.7)):
        d = tmp_path / "scans" / "lr" / name
        (d / "regressor").mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(_fake_summary(width, bench_width=bench)))
        (d / "regressor" / "metrics.json").write_text(json.dumps(_fake_metrics(loss)))
        args += ["--point", name, str(d / "summary.json"), str(d / "regressor" / "metrics.json")]
    out = tmp_path / "scans" / "lr"
    outputs = {
        "--out": out / "summary.json",
        "--markdown": out / "summary.md",
        "--html": out / "summary.html",
        "--plot": out / "metric.png",
        "--log": tmp_path / "scan.log",
    }
    argv = ["scan-summary", "--config", str(tmp_path / "config.yaml"), "--scan", "lr", *args]
    for flag, path in outputs.items():
        argv += [flag, str(path)]
    return argv, outputs


def _strict(text: str):
    def refuse(const):
        raise ValueError(f"non-strict JSON constant {const}")

    return json.loads(text, parse_constant=refuse)


def test_scan_summary_cli_end_to_end(scan_files, restore_logging):
    from xec.cli import main

    argv, outputs = scan_files
    assert main(argv) == 0
    table = _strict(outputs["--out"].read_text())
    assert table["scan"] == "lr" and table["rank_by"] == "uvw_68_mm" and table["higher_is_better"] is False
    assert table["sample"] == "val" and table["confirm"] == "bench_uvw_68_mm"
    assert table["keys"] == ["regressor.lr"] and set(table["metrics"]) == set(METRICS) | {"bench_uvw_68_mm"}
    rows = table["rows"]
    assert [r["point"] for r in rows] == ["regressor.lr-0.01", "regressor.lr-0.001"]  # smaller val uvw first
    assert [r["bench_uvw_68_mm"] for r in rows] == [3.5, 1.0]  # bench shown, not ranked on
    assert [r["rank"] for r in rows] == [1, 2] and [r["best"] for r in rows] == [True, False]
    assert rows[0]["overrides"] == {"regressor.lr": 0.01}
    assert rows[0]["uvw_68_mm"] == 2.0 and rows[0]["u_ratio"] == 0.5 and rows[1]["val_loss"] == 0.5
    assert rows[0]["train_time_s"] == 10.0 and rows[0]["events_per_s"] == 50.0
    assert rows[0]["opening68_ratio"] == 0.5 and rows[0]["energy_core_pct"] == pytest.approx(1.8)
    assert set(METRICS) <= set(rows[0])

    md = outputs["--markdown"].read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| rank | point | regressor.lr | uvw_68_mm | bench_uvw_68_mm |")
    assert "ranked by uvw_68_mm on val" in md
    assert "**1 (best)**" in lines[1] and "regressor.lr-0.01" in lines[1] and "regressor.lr-0.001" in lines[2]
    assert "lr \\| scan" not in md and "lr | scan" in md  # the description is prose, not a table cell

    page = outputs["--html"].read_text()
    assert page.count("<tr class='best'>") == 1 and "http" not in page  # self-contained
    best_row = page[page.index("<tr class='best'>") :].split("</tr>")[0]
    assert "regressor.lr-0.01<" in best_row
    assert outputs["--plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ranked by uvw_68_mm" in outputs["--log"].read_text()


def test_scan_summary_cli_higher_is_better_and_categorical_plot(tmp_path, restore_logging):
    from xec.cli import main

    points = [{"train.schedule": "cosine", "regressor.lr": 1e-3}, {"train.schedule": "constant", "regressor.lr": 1e-1}]
    cfg = {"scans": {"s": {"rank_by": "events_per_s", "higher_is_better": True, "points": points}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["scan-summary", "--config", str(tmp_path / "c.yaml"), "--scan", "s"]
    for i, ov in enumerate(points):
        (tmp_path / f"s{i}.json").write_text(json.dumps(_fake_summary(1.0)))
        (tmp_path / f"m{i}.json").write_text(json.dumps({"history": [{"epoch_time_s": 1, "events_per_s": 10 + i}]}))
        argv += ["--point", point_name(ov), str(tmp_path / f"s{i}.json"), str(tmp_path / f"m{i}.json")]
    argv += ["--out", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png")]
    assert main(argv) == 0
    table = _strict((tmp_path / "t.json").read_text())
    rows = table["rows"]
    assert [r["events_per_s"] for r in rows] == [11.0, 10.0] and rows[0]["best"]
    assert table["confirm"] is None and "bench_events_per_s" not in rows[0]  # no bench for training numbers
    assert table["sample"] is None
    assert math.isnan(point_metrics({}, {})["val_loss"]) and rows[0]["val_loss"] is None  # NaN -> null
    assert (tmp_path / "t.png").stat().st_size > 0


@pytest.mark.parametrize("problem", ["missing_file", "bad_json", "unknown_point", "missing_point", "unknown_scan"])
def test_scan_summary_cli_errors_name_the_problem(scan_files, problem, capsys, restore_logging):
    from xec.cli import main

    argv, outputs = scan_files
    points = [i for i, a in enumerate(argv) if a == "--point"]
    if problem == "missing_file":
        target = argv[points[1] + 3]
        argv[points[1] + 3] = target + ".gone"
        expected = "metrics.json.gone: no such file"
    elif problem == "bad_json":
        path = argv[points[0] + 2]
        open(path, "w").write("{not json")
        expected = f"{path}: not a readable JSON file"
    elif problem == "unknown_point":
        argv[points[1] + 1] = "regressor.lr-0.1"
        expected = "unknown ['regressor.lr-0.1'], missing ['regressor.lr-0.01']"
    elif problem == "missing_point":
        del argv[points[1] : points[1] + 4]
        expected = "missing ['regressor.lr-0.01']"
    else:
        argv[argv.index("--scan") + 1] = "nope"
        expected = "no scan 'nope'"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "xec scan-summary: error:" in err and expected in err, err
    assert not outputs["--out"].exists()
    assert expected in outputs["--log"].read_text()


def test_scan_summary_reads_only_its_scan():
    from xec.commands import config_keys
    from xec.config import command_config

    cfg = _cfg(a={"rank_by": "val_loss", "points": [{}]}, b={"rank_by": "val_loss", "points": [{}]})
    assert config_keys("scan-summary", scan="a") == ("scans.a",)
    view = command_config(cfg, "scan-summary", scan="a")
    assert view["scans"]["a"]["rank_by"] == "val_loss"
    with pytest.raises(XecError, match="reads config key 'scans.b'"):
        view["scans"]["b"]
    with pytest.raises(XecError, match="reads config key 'regressor'"):
        view["regressor"]
