"""How much of the theta/phi resolution the unknown vertex spread explains.

    .venv/bin/python benchmarks/angle_floor.py results/data/bench.root [--summary results/summary.json]

Both the ML and the classical reconstruction measure the gamma direction as the direction from
the target centre to the first interaction: even a perfect position leaves the error of the
unknown vertex (simulation.physics.vertex_sigma_cm). This prints that floor (true position,
vertex assumed at the centre) for all events and inside the fiducial volume, and, with a
summary, the share of each method's squared width that it explains.
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
    a = ap.parse_args()
    from xec.baseline.reco import direction_to_angles
    from xec.config import load_config
    from xec.metrics import width68
    from xec.rootio import open_tree

    arrays = open_tree(a.bench, a.tree).arrays(["xyzTruth", "uvwTruth", "emiAng"], library="np")
    xyz, uvw, ang = (np.stack(arrays[k]).astype(np.float64) for k in ("xyzTruth", "uvwTruth", "emiAng"))
    theta, phi = direction_to_angles(xyz)
    d_theta = theta - ang[:, 0]
    d_phi = (phi - ang[:, 1] + 180.0) % 360.0 - 180.0
    lim = load_config()["summary"]["fiducial"]
    fid = np.ones(len(xyz), bool)
    for i, c in enumerate("uvw"):
        fid &= (uvw[:, i] >= lim[c][0]) & (uvw[:, i] < lim[c][1])
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


if __name__ == "__main__":
    main()
