"""xec summary: ML vs baseline tables from infer/baseline parquet files (synthetic inputs with
known resolutions)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from xec.cli import main
from xec.errors import XecError
from xec.summary import read_results

N = 3000


def _truth(seed: int = 0, with_truth: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({"run": np.full(N, 7, np.int64), "event": np.arange(N, dtype=np.int64)})
    t["true_uvwFI_u"] = rng.uniform(-20, 20, N)
    t["true_uvwFI_v"] = rng.uniform(-60, 60, N)
    t["true_uvwFI_w"] = rng.exponential(4.0, N)
    t["true_energy_energy"] = 0.0528
    t["true_timing_time"] = rng.normal(0, 1, N)
    t["true_angle_theta"] = rng.uniform(70, 110, N)
    t["true_angle_phi"] = rng.uniform(150, 210, N) - 360 * (rng.random(N) < 0.5)  # both sides of +-180
    return t


def _method(truth: pd.DataFrame, scale: float, seed: int, keep_truth: bool = True) -> pd.DataFrame:
    from xec.metrics import opening_angle_deg

    rng = np.random.default_rng(seed)
    df = truth[["run", "event"]].copy()
    for c, s in (
        ("uvwFI_u", 0.2),
        ("uvwFI_v", 0.2),
        ("uvwFI_w", 0.5),
        ("timing_time", 0.05),
        ("angle_theta", 0.5),
        ("angle_phi", 0.5),
    ):
        df[f"pred_{c}"] = truth[f"true_{c}"] + rng.normal(0, s * scale, N)
    # energy: Gaussian core of 1 % * scale and a 10 % low tail
    r = rng.normal(0, 0.01 * scale, N)
    tail = rng.random(N) < 0.10
    r[tail] -= rng.exponential(0.08, tail.sum())
    df["pred_energy_energy"] = truth["true_energy_energy"] * (1 + r)
    df["opening_angle_deg"] = opening_angle_deg(
        df.pred_angle_theta, df.pred_angle_phi, truth.true_angle_theta, truth.true_angle_phi
    )
    if keep_truth:
        for c in truth.columns:
            if c.startswith("true_"):
                df[c] = truth[c]
    return df.sample(frac=1.0, random_state=seed)  # another event order: the summary must match events


@pytest.fixture()
def files(tmp_path):
    truth = _truth()
    # few resamples keep the test fast; the numbers below are point estimates
    (tmp_path / "cfg.yaml").write_text("summary: {n_boot: 40, n_boot_core: 8}\n")
    paths = {"cfg": tmp_path / "cfg.yaml"}
    for name, scale, seed in (("ml", 1.0, 1), ("baseline", 2.0, 2)):
        paths[name] = tmp_path / f"bench_{name}.parquet"
        _method(truth, scale, seed).to_parquet(paths[name])
    real = _truth(5)
    for name, scale, seed in (("inp", 1.0, 3), ("noinp", 1.5, 4), ("rbase", 2.0, 5)):
        paths[name] = tmp_path / f"real_{name}.parquet"
        _method(real, scale, seed, keep_truth=False).to_parquet(paths[name])
    return tmp_path, paths


def test_summary_numbers(files):
    tmp, p = files
    out, md, html = tmp / "summary.json", tmp / "summary.md", tmp / "summary.html"
    rc = main(
        [
            "summary",
            "--bench-predictions",
            str(p["ml"]),
            "--bench-baseline",
            str(p["baseline"]),
            "--realdata-predictions",
            str(p["inp"]),
            "--realdata-noinpaint-predictions",
            str(p["noinp"]),
            "--realdata-baseline",
            str(p["rbase"]),
            "--out",
            str(out),
            "--markdown",
            str(md),
            "--html",
            str(html),
            "--config",
            str(p["cfg"]),
        ]
    )
    assert rc == 0
    s = json.loads(out.read_text())  # strict JSON (no NaN)
    b = s["bench"]
    assert b["events"] == N and b["reference"] == "truth"
    ml, base = b["methods"]["ml"], b["methods"]["baseline"]
    assert ml["u_mm"]["all"]["width68"] == pytest.approx(2.0, rel=0.06)  # 0.2 cm
    assert base["u_mm"]["all"]["width68"] == pytest.approx(4.0, rel=0.06)
    assert ml["w_mm"]["w<2"]["width68"] == pytest.approx(5.0, rel=0.1)
    assert ml["w_mm"]["w<2"]["n"] + ml["w_mm"]["w>2"]["n"] == N
    assert ml["time_ps"]["all"]["sigma_core"] == pytest.approx(50.0, rel=0.06)
    # energy: core 1 % vs 2 %; the 10 % low tail is seen by the tail fraction, not the core
    assert ml["energy_pct"]["all"]["sigma_core"] == pytest.approx(1.0, rel=0.08)
    assert base["energy_pct"]["all"]["sigma_core"] == pytest.approx(2.0, rel=0.08)
    assert 5.0 < ml["energy_low_tail"]["all"] < 11.0
    # phi residuals wrap at +-180: width stays 0.5 deg
    assert ml["phi_deg"]["all"]["width68"] == pytest.approx(0.5, rel=0.06)
    # opening angle of independent 0.5 deg errors in theta and sin(theta) phi (~1 at 90 deg)
    assert 0.5 < ml["opening68_deg"]["all"]["value"] < 0.9
    assert ml["u_mm"]["all"]["width68_err"] > 0
    # realdata without truth: ML compared with the baseline reconstruction
    r = s["realdata"]
    assert r["reference"] == "baseline" and set(r["methods"]) == {"ml_inpainted", "ml_no_inpainting"}
    # widths of ML - baseline: sqrt(1 + 4) and sqrt(2.25 + 4) times 0.2 cm
    assert r["methods"]["ml_inpainted"]["u_mm"]["all"]["width68"] == pytest.approx(2 * 5**0.5, rel=0.06)
    assert r["methods"]["ml_no_inpainting"]["u_mm"]["all"]["width68"] == pytest.approx(2 * 6.25**0.5, rel=0.06)
    text = md.read_text()
    assert "| u (mm) [all] | 3000 |" in text and "## realdata" in text
    assert "<table>" in html.read_text()
    # same inputs, same numbers (seeded bootstrap)
    out2 = tmp / "summary2.json"
    main(
        [
            "summary",
            "--bench-predictions",
            str(p["ml"]),
            "--bench-baseline",
            str(p["baseline"]),
            "--realdata-predictions",
            str(p["inp"]),
            "--realdata-noinpaint-predictions",
            str(p["noinp"]),
            "--realdata-baseline",
            str(p["rbase"]),
            "--out",
            str(out2),
            "--config",
            str(p["cfg"]),
        ]
    )
    assert json.loads(out2.read_text()) == s


def test_summary_bad_inputs(files, tmp_path):
    tmp, p = files
    assert main(["summary", "--bench-predictions", str(tmp / "missing.parquet"), "--out", str(tmp / "s.json")]) == 2
    assert not (tmp / "s.json").exists()
    bad = tmp / "bad.parquet"
    pd.DataFrame({"run": [1], "event": [1], "x": [0.0]}).to_parquet(bad)
    with pytest.raises(XecError, match="bad.parquet: no pred_"):
        read_results(str(bad))
    (tmp / "junk.parquet").write_text("not parquet")
    with pytest.raises(XecError, match="junk.parquet: not a readable parquet"):
        read_results(str(tmp / "junk.parquet"))
    assert main(["summary", "--out", str(tmp / "s.json")]) == 2


def test_fiducial_volume_is_the_headline(files):
    """Resolutions inside the fiducial volume (by the true position; on a sample without truth by
    the baseline's reconstructed one) come first, next to those of all events."""
    tmp, p = files
    cfg = tmp / "fid.yaml"
    cfg.write_text("summary: {n_boot: 0, n_boot_core: 0, fiducial: {u: [-10.0, 10.0]}}\n")
    out, md = tmp / "fid.json", tmp / "fid.md"
    args = ["summary", "--bench-predictions", str(p["ml"]), "--bench-baseline", str(p["baseline"])]
    args += ["--realdata-predictions", str(p["inp"]), "--realdata-baseline", str(p["rbase"])]
    assert main([*args, "--out", str(out), "--markdown", str(md), "--config", str(cfg)]) == 0
    s = json.loads(out.read_text())
    truth = read_results(str(p["ml"]))
    inside = int((truth["true_uvwFI_u"].abs() < 10.0).sum())
    b = s["bench"]
    assert b["fiducial"] == {
        "limits_cm": {"u": [-10.0, 10.0], "v": [-67.9, 67.9], "w": [0.0, 42.0]},
        "selected_by": "truth",
        "events": inside,
    }
    ml = b["methods"]["ml"]
    assert 0.4 * N < inside < 0.6 * N  # u uniform in +-20 cm
    assert ml["u_mm"]["fiducial"]["n"] == inside
    assert ml["u_mm"]["fiducial w<2"]["n"] + ml["u_mm"]["fiducial w>2"]["n"] == inside
    assert ml["u_mm"]["fiducial"]["width68"] == pytest.approx(2.0, rel=0.1)  # same 0.2 cm smearing
    r = s["realdata"]
    base = read_results(str(p["rbase"]))
    assert r["fiducial"]["selected_by"] == "baseline"
    u, v, w = (base[f"pred_uvwFI_{c}"] for c in "uvw")  # reconstructed w can be < 0: outside
    sel = (u >= -10) & (u < 10) & (v >= -67.9) & (v < 67.9) & (w >= 0) & (w < 42)
    assert r["fiducial"]["events"] == int(sel.sum()) < int(((u >= -10) & (u < 10)).sum())
    text = md.read_text()
    head, rest = text.split("### all events", 1)
    assert "### inside the fiducial volume" in head and "| u (mm) [fiducial] |" in head
    assert "| u (mm) [all] |" in rest


def test_realdata_dead_sensor_fills_sit_next_to_the_classical_reconstruction(tmp_path):
    """The four realdata ML runs (xec infer --fill) and the baseline on a sample without truth:
    every fill compared with the baseline in the same table; the classical-fill variants without
    the Gaussian-core bootstrap error (summary time)."""
    truth = _truth(3)
    paths = {}
    for i, name in enumerate(("inpainted", "noinpaint", "neighbour", "solid_angle", "baseline")):
        paths[name] = tmp_path / f"{name}.parquet"
        _method(truth, 1.0 + 0.2 * i, seed=10 + i, keep_truth=False).to_parquet(paths[name])
    argv = ["summary", "--realdata-predictions", str(paths["inpainted"])]
    argv += ["--realdata-noinpaint-predictions", str(paths["noinpaint"])]
    argv += ["--realdata-neighbour-predictions", str(paths["neighbour"])]
    argv += ["--realdata-solid-angle-predictions", str(paths["solid_angle"])]
    argv += ["--realdata-baseline", str(paths["baseline"]), "--out", str(tmp_path / "s.json")]
    argv += ["--markdown", str(tmp_path / "s.md")]
    assert main(argv) == 0
    real = json.loads((tmp_path / "s.json").read_text())["realdata"]
    assert real["reference"] == "baseline"
    assert set(real["methods"]) == {"ml_inpainted", "ml_no_inpainting", "ml_neighbour_fill", "ml_solid_angle_fill"}
    for name, m in real["methods"].items():
        u = m["u_mm"]["all"]
        assert u["n"] == N and u["width68"] > 0  # widths of ML - baseline
        assert (u["sigma_core_err"] is None) == (name in ("ml_neighbour_fill", "ml_solid_angle_fill")), name
    header = next(line for line in (tmp_path / "s.md").read_text().splitlines() if "ml_solid_angle_fill" in line)
    assert "ml_neighbour_fill" in header and "ml_inpainted" in header


def test_pileup_section_next_to_bench(files):
    """--pileup-*: the pile-up sample gets the bench tables (same structure) in its own section,
    with its own numbers: here the ML is 1.5x and the classical 3x the bench widths."""
    tmp, p = files
    truth = _truth(9)
    for name, scale, seed in (("pu_ml", 1.5, 11), ("pu_base", 3.0, 12)):
        p[name] = tmp / f"pileup_{name}.parquet"
        _method(truth, scale, seed).to_parquet(p[name])
    out, md = tmp / "summary.json", tmp / "summary.md"
    args = ["summary", "--bench-predictions", str(p["ml"]), "--bench-baseline", str(p["baseline"])]
    args += ["--pileup-predictions", str(p["pu_ml"]), "--pileup-baseline", str(p["pu_base"])]
    assert main([*args, "--out", str(out), "--markdown", str(md), "--config", str(p["cfg"])]) == 0
    s = json.loads(out.read_text())
    bench, pileup = s["bench"], s["pileup"]
    assert pileup["events"] == N and pileup["reference"] == "truth"

    def shape(d):
        return {k: shape(v) for k, v in d.items()} if isinstance(d, dict) else type(d).__name__

    assert shape(pileup["methods"]) == shape(bench["methods"])
    assert pileup["methods"]["ml"]["u_mm"]["all"]["width68"] == pytest.approx(3.0, rel=0.06)
    assert pileup["methods"]["baseline"]["u_mm"]["all"]["width68"] == pytest.approx(6.0, rel=0.06)
    text = md.read_text()
    assert text.index("## bench") < text.index("## pileup")
    # the pile-up sample alone is a summary too
    assert main(["summary", "--pileup-predictions", str(p["pu_ml"]), "--out", str(tmp / "pu.json")]) == 0
    assert set(json.loads((tmp / "pu.json").read_text())) == {"meta", "pileup"}


def test_pileup_split_by_the_second_gamma_truth(files):
    """pileup_energy_truth > 0 marks the events with a second gamma: the summary gives each part
    its own resolutions, which recover the widths the two parts were drawn with (ML u 2 mm clean,
    20 mm piled-up), and the markdown lists both parts."""
    tmp, p = files
    truth = _truth(13)
    piled = np.random.default_rng(14).random(N) < 0.2
    truth["pileup_energy_truth"] = np.where(piled, 0.03, 0.0).astype(np.float32)
    ml = _method(truth, 1.0, 15).sort_values("event")
    ml["pred_uvwFI_u"] = np.where(
        piled, truth["true_uvwFI_u"] + np.random.default_rng(16).normal(0, 2.0, N), ml["pred_uvwFI_u"]
    )
    ml["pileup_energy_truth"] = truth["pileup_energy_truth"]
    ml.to_parquet(tmp / "pu_ml.parquet")
    _method(truth, 2.0, 17).to_parquet(tmp / "pu_base.parquet")  # the baseline frame lacks the column
    out = tmp / "summary.json"
    args = [
        "summary",
        "--pileup-predictions",
        str(tmp / "pu_ml.parquet"),
        "--pileup-baseline",
        str(tmp / "pu_base.parquet"),
    ]
    assert main([*args, "--out", str(out), "--markdown", str(tmp / "s.md"), "--config", str(p["cfg"])]) == 0
    split = json.loads(out.read_text())["pileup"]["pileup_split"]
    assert split["with_pileup"]["events"] == piled.sum() and split["without_pileup"]["events"] == N - piled.sum()
    with_u = split["with_pileup"]["methods"]["ml"]["u_mm"]["all"]["width68"]
    without_u = split["without_pileup"]["methods"]["ml"]["u_mm"]["all"]["width68"]
    assert with_u == pytest.approx(20.0, rel=0.1) and without_u == pytest.approx(2.0, rel=0.06)
    assert split["without_pileup"]["methods"]["baseline"]["u_mm"]["all"]["width68"] == pytest.approx(4.0, rel=0.06)
    assert "fiducial" in split["with_pileup"]["methods"]["ml"]["u_mm"]
    text = (tmp / "s.md").read_text()
    assert "events with a piled-up gamma" in text and "events without" in text


def test_inpainting_goal_below_the_poisson_floor_is_said_so():
    """A face whose goal (0.7 x the solid-angle rule's relative MAE) lies under its Poisson floor
    is marked 'not met (below floor)'; a reachable miss stays 'not met'."""
    from xec.inpainting.evaluate import Scores
    from xec.summary_tables import inpainting_rows

    s = Scores([100.0, 1000.0])
    one = np.ones(4)
    for face, npe_true, sa_err, inp_err in ((0, 100.0, 0.30, 0.25), (1, 100.0, 0.14, 0.13)):
        faces = np.full(4, face)
        true = np.full(4, npe_true)
        s.add_floor(faces, true, one)  # floor sqrt(2 / (pi 100)) = 0.080
        t = np.zeros(4)
        s.add("solid_angle", faces, true, true * (1 + sa_err), t, t)
        s.add("neighbour_average", faces, true, true * (1 + sa_err), t, t)
        s.add("inpainter", faces, true, true * (1 + inp_err), t, t)
    res = s.result(0.5)
    inner, outer = res["faces"]["inner"], res["faces"]["outer"]
    assert inner["poisson_floor"] == pytest.approx(np.sqrt(2 / (np.pi * 100)))
    assert not inner["goal_met"] and not inner["goal_below_floor"]  # 0.5 x 0.30 = 0.15 > 0.080
    assert not outer["goal_met"] and outer["goal_below_floor"]  # 0.5 x 0.14 = 0.07 < 0.080
    header, rows = inpainting_rows({"samples": {"val": res}})
    goal = {r[1]: r[header.index("goal")] for r in rows}
    assert goal == {"inner": "not met", "outer": "not met (below floor)"}, goal


def test_ml_over_classical_ratios_with_goals(files):
    """The ML / classical table: ratios of the same events' widths with paired errors, checked
    against summary.ratio_goals; samples without truth have none."""
    tmp, p = files
    (tmp / "goals.yaml").write_text("summary: {n_boot: 40, n_boot_core: 8, ratio_goals: {u_mm: 0.45, w_mm: 0.48}}\n")
    out, md = tmp / "summary.json", tmp / "summary.md"
    args = ["--bench-predictions", str(p["ml"]), "--bench-baseline", str(p["baseline"])]
    args += ["--realdata-predictions", str(p["inp"]), "--realdata-baseline", str(p["rbase"])]
    assert main(["summary", *args, "--out", str(out), "--markdown", str(md), "--config", str(tmp / "goals.yaml")]) == 0
    s = json.loads(out.read_text())
    ratios = s["bench"]["ratios"]
    assert ratios["reference"] == "baseline" and set(ratios["methods"]) == {"ml"}
    assert ratios["goals"] == {
        "u_mm": 0.45,
        "v_mm": 0.9,
        "w_mm": 0.48,
        "energy_pct": 0.9,
        "time_ps": 0.9,
        "theta_deg": 0.95,
        "phi_deg": 0.95,
    }
    r, methods = ratios["methods"]["ml"], s["bench"]["methods"]
    for key in ("u_mm", "v_mm", "w_mm", "time_ps", "theta_deg", "phi_deg"):  # the ML errors are half the baseline's
        for cls in ("all", "fiducial", "fiducial w>2"):
            assert r[key][cls]["width68"] == pytest.approx(0.5, abs=0.05), (key, cls)
            assert 0 < r[key][cls]["width68_err"] < 0.05
        # the same events as the tables: the ratio of their widths
        ml, base = methods["ml"][key]["all"]["width68"], methods["baseline"][key]["all"]["width68"]
        assert r[key]["all"]["width68"] == pytest.approx(ml / base, rel=1e-9)
    assert r["energy_pct"]["all"]["sigma_core"] == pytest.approx(0.5, abs=0.06)
    assert r["u_mm"]["w<2"]["n"] + r["u_mm"]["w>2"]["n"] == N
    assert "ratios" not in s["realdata"]  # no truth: the widths there are ML - classical already
    text = md.read_text()
    assert "### ML / classical" in text
    assert text.index("## Goals at a glance") < text.index("## bench") and "| bench | ml |" in text
    assert "| v (mm) [fiducial] | <= 0.9 | 0." in text and "| yes |" in text
    assert (
        "| u (mm) [all] | <= 0.45 |" in text and "| no |" in text.split("| u (mm) [all] | <= 0.45 |")[1].split("\n")[0]
    )


def test_ratio_verdicts():
    from xec.summary_tables import ratio_verdict

    cell = {"width68": 0.91, "width68_err": 0.02, "sigma_core": 0.88, "sigma_core_err": 0.03}
    assert ratio_verdict(cell, 0.90) == "within error"
    assert ratio_verdict(cell, 0.95) == "yes"
    assert ratio_verdict(cell, 0.85) == "no"
    assert ratio_verdict({**cell, "sigma_core": float("nan")}, 0.92) == "yes"
    assert ratio_verdict({k: float("nan") for k in cell}, 0.9) == "-"


def test_goals_at_a_glance():
    """The summary opens with the count of ML / classical cells per verdict and the cells that
    miss, per sample and ML method; observables without a goal are not counted."""
    from xec.summary_tables import goal_rows, to_markdown

    def cell(w, e=0.01):
        return {"width68": w, "width68_err": e, "sigma_core": w, "sigma_core_err": e}

    ratios = {
        "goals": {"u_mm": 0.9, "v_mm": 0.9},
        "methods": {
            "ml": {
                "u_mm": {"all": cell(0.7), "fiducial": cell(0.905)},
                "v_mm": {"all": cell(0.95)},
                "w_mm": {"all": cell(2.0)},  # no goal: not counted
            }
        },
    }
    summary = {"bench": {"ratios": ratios}, "val": {"ratios": {**ratios, "goals": {"u_mm": 0.9}}}}
    header, rows = goal_rows(summary)
    assert header == ["sample", "method", "yes", "within error", "no", "missing"]
    assert rows[0] == ["bench", "ml", "1", "1", "1", "v (mm) [all] 0.950 (0.950)"]
    assert rows[1] == ["val", "ml", "1", "1", "0", "none"]
    md = to_markdown({})
    assert "Goals at a glance" not in md  # nothing to count


def test_val_section_from_the_regressor_predictions(files):
    """The regressor's val predictions (pred_<col> / true_<col> / sigma_<col> names, no opening
    angle column) get the bench tables in a ``val`` section: the same numbers as the same events
    in xec infer's names, the opening angle from the angles, no uncertainty table."""
    from xec.targets import TASKS

    tmp, p = files
    ml = pd.read_parquet(p["ml"])
    short = {f"{k}_{t.name}_{c}": f"{k}_{c}" for t in TASKS.values() for c in t.columns for k in ("pred", "true")}
    val_ml = ml.drop(columns=["opening_angle_deg"]).rename(columns=short)
    val_ml["sigma_u"] = 0.2
    assert "pred_u" in val_ml.columns and "pred_uvwFI_u" not in val_ml.columns
    val_ml.to_parquet(tmp / "val_predictions.parquet")
    ml.assign(sigma_uvwFI_u=0.2).to_parquet(tmp / "bench_ml_sigma.parquet")  # the same sigma on bench
    out, md = tmp / "summary.json", tmp / "summary.md"
    args = ["--bench-predictions", str(tmp / "bench_ml_sigma.parquet"), "--bench-baseline", str(p["baseline"])]
    args += ["--val-predictions", str(tmp / "val_predictions.parquet"), "--val-baseline", str(p["baseline"])]
    assert main(["summary", *args, "--out", str(out), "--markdown", str(md), "--config", str(p["cfg"])]) == 0
    s = json.loads(out.read_text())
    val, bench = s["val"], s["bench"]
    for key in ("u_mm", "energy_pct", "phi_deg"):
        for cls in ("all", "fiducial", "w>2"):
            assert val["methods"]["ml"][key][cls]["width68"] == pytest.approx(
                bench["methods"]["ml"][key][cls]["width68"], rel=1e-12
            )
    assert val["methods"]["ml"]["opening68_deg"]["all"]["value"] == pytest.approx(
        bench["methods"]["ml"]["opening68_deg"]["all"]["value"], rel=1e-9
    )
    assert val["ratios"]["methods"]["ml"]["u_mm"]["fiducial"]["width68"] == pytest.approx(0.5, abs=0.05)
    assert "uncertainty" not in val and "u_mm" in bench["uncertainty"]["methods"]["ml"]  # left out on val only
    text = md.read_text()
    assert text.index("## bench") < text.index("## val") and "scans are made here" in text
