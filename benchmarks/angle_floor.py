"""How much of the theta/phi resolution the unknown vertex spread explains.

    .venv/bin/python benchmarks/angle_floor.py results/data/bench.root [--summary results/summary.json]
        [--ml results/inference/bench.parquet --classical results/baseline/bench.parquet]

Both the ML and the classical reconstruction measure the gamma direction as the direction from
the target centre to the first interaction: even a perfect position leaves the error of the
unknown vertex (simulation.physics.vertex_sigma_cm). This prints that floor (true position,
vertex assumed at the centre) for all events and inside the fiducial volume, and, with a
summary, the share of each method's squared width that it explains.

With ``--ml`` and ``--classical`` (the two methods' parquets of the same sample) a second table,
per class: each method's *position part*, the 68 % width of its angle against the direction to
the TRUE first interaction (the error its position adds, without the vertex), their ratio, and
the scale k of the ML's position part that would give an ML / classical ratio of ``--goal`` on the
angle itself: the largest k with width68(k p + f) <= goal x width68(classical), p the ML's
position part and f the floor of each event (the 68 % widths of these heavy-tailed residuals do
not add in quadrature, so k is found on the events themselves, by bisection).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", help="a simulated ROOT file with truth (xyzTruth, uvwTruth, emiAng)")
    ap.add_argument("--summary", default=None, help="summary.json of the same sample (xec summary)")
    ap.add_argument("--tree", default="tree")
    ap.add_argument("--ml", default=None, help="xec infer parquet of the same sample")
    ap.add_argument("--classical", default=None, help="xec baseline parquet of the same sample")
    ap.add_argument("--goal", type=float, default=0.95, help="ML / classical goal of the angles")
    a = ap.parse_args()
    import pandas as pd

    from xec.baseline.reco import direction_to_angles
    from xec.config import load_config
    from xec.metrics import width68
    from xec.rootio import open_tree
    from xec.summary import fiducial_mask

    arrays = open_tree(a.bench, a.tree).arrays(["xyzTruth", "uvwTruth", "emiAng"], library="np")
    xyz, uvw, ang = (np.stack(arrays[k]).astype(np.float64) for k in ("xyzTruth", "uvwTruth", "emiAng"))
    theta, phi = direction_to_angles(xyz)
    d_theta = theta - ang[:, 0]
    d_phi = (phi - ang[:, 1] + 180.0) % 360.0 - 180.0
    summary_cfg = load_config()["summary"]
    lim = summary_cfg["fiducial"]
    fid = fiducial_mask(pd.DataFrame({f"uvwFI_{c}": uvw[:, i] for i, c in enumerate("uvw")}), lim, "")
    summary = json.loads(open(a.summary).read())["bench"]["methods"] if a.summary else None
    print("| events | n | floor theta (deg) | floor phi (deg) | share of ML / classical theta^2 | of phi^2 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m, cls in (("all", np.ones(len(xyz), bool), "all"), ("fiducial", fid, "fiducial")):
        ft, fp = width68(d_theta[m]), width68(d_phi[m])
        shares = ["", ""]
        if summary:
            for j, (obs, floor) in enumerate((("theta_deg", ft), ("phi_deg", fp))):
                w = [summary[meth][obs].get(cls, {}).get("width68") for meth in ("ml", "baseline")]
                shares[j] = " / ".join(f"{100 * (floor / x) ** 2:.0f} %" if x else "-" for x in w)
        print(f"| {name} | {int(m.sum())} | {ft:.3f} | {fp:.3f} | {shares[0]} | {shares[1]} |")
    if a.ml and a.classical:
        position_parts(a.ml, a.classical, lim, float(summary_cfg["w_split_cm"]), a.goal)


def position_parts(ml_path: str, classical_path: str, lim: dict, w_split: float, goal: float) -> None:
    """The second table (module docstring): per class and angle, floor, widths and position parts."""
    import pandas as pd

    from xec.geometry import direction_to_angles, uvw_to_xyz
    from xec.metrics import width68
    from xec.summary import fiducial_mask
    from xec.targets import standard_columns

    # the regressor's val predictions.parquet names its columns pred_<col>: standard names
    ml, cl = (standard_columns(pd.read_parquet(p)) for p in (ml_path, classical_path))
    df = ml.merge(cl, on=["run", "event"], suffixes=("", "_cl"))
    uvw = df[[f"true_uvwFI_{c}" for c in "uvw"]].to_numpy(np.float64)
    point = np.stack(direction_to_angles(uvw_to_xyz(uvw)), axis=1)  # direction to the true first interaction
    true = df[["true_angle_theta", "true_angle_phi"]].to_numpy(np.float64)
    fid, deep = fiducial_mask(df, lim, "true_"), uvw[:, 2] >= w_split  # the summary's own cut
    classes = {
        "all": np.ones(len(df), bool),
        "fiducial": fid,
        f"w<{w_split:g}": ~deep,
        f"w>{w_split:g}": deep,
        f"fiducial w>{w_split:g}": fid & deep,
    }

    def width(pred: np.ndarray, ref: np.ndarray, j: int, m: np.ndarray) -> float:
        d = pred[m, j] - ref[m, j]
        return width68(d if j == 0 else (d + 180.0) % 360.0 - 180.0)

    preds = {
        k: df[[f"pred_angle_theta{s}", f"pred_angle_phi{s}"]].to_numpy(np.float64)
        for k, s in (("ml", ""), ("cl", "_cl"))
    }
    print(f"\n| class | angle | floor | ML / classical | ML / classical position part | ratio | k for {goal:g} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, m in classes.items():
        for j, angle in enumerate(("theta", "phi")):
            floor = width(point, true, j, m)
            full = [width(preds[k], true, j, m) for k in ("ml", "cl")]
            part = [width(preds[k], point, j, m) for k in ("ml", "cl")]
            p = preds["ml"][m, j] - point[m, j]
            f = point[m, j] - true[m, j]
            if j == 1:
                p, f = (p + 180.0) % 360.0 - 180.0, (f + 180.0) % 360.0 - 180.0
            k = scale_for(p, f, goal * full[1])
            print(
                f"| {name} | {angle} | {floor:.3f} | {full[0]:.3f} / {full[1]:.3f} ({full[0] / full[1]:.3f}) | "
                f"{part[0]:.3f} / {part[1]:.3f} | {part[0] / part[1]:.3f} | {k:.2f} |"
            )


def scale_for(p: np.ndarray, f: np.ndarray, target: float) -> float:
    """The largest k in [0, 2] with width68(k p + f) <= target (0 when even k = 0 misses it)."""
    from xec.metrics import width68

    if width68(f) > target:
        return 0.0
    lo, hi = 0.0, 2.0
    if width68(hi * p + f) <= target:
        return hi
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if width68(mid * p + f) <= target else (lo, mid)
    return lo


if __name__ == "__main__":
    main()
