"""Position resolution by depth: the ML and the classical reconstruction in bins of the true w.

    .venv/bin/python benchmarks/depth_bins.py ML.parquet CLASSICAL.parquet [ML2.parquet ...]

ML: `xec infer`'s parquet (or the regressor's val predictions.parquet); CLASSICAL: `xec
baseline`'s parquet of the same events. Prints the 68 % half-widths (mm) of u and v per bin of
the true depth w for each file, matched on (run, event): where the classical fit beats the
network is where the position blend (regressor.fit_blend) can take its result.
"""

from __future__ import annotations

import sys

import pandas as pd

from xec.metrics import width68
from xec.targets import standard_columns

W_EDGES_CM = (0.0, 1.0, 2.0, 4.0, 6.0, 9.0, 13.0, 45.0)


def load(path: str) -> pd.DataFrame:
    return standard_columns(pd.read_parquet(path)).set_index(["run", "event"])


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    frames = [load(p) for p in sys.argv[1:]]
    index = frames[0].index
    for f in frames[1:]:
        index = index.intersection(f.index)
    frames = [f.loc[index] for f in frames]
    names = ["/".join(p.rstrip("/").split("/")[-2:]) for p in sys.argv[1:]]
    w = frames[0]["true_uvwFI_w"].to_numpy(float)
    print(f"{len(index)} events matched; 68 % half-widths in mm (u / v)")
    print("| w (cm) | n | " + " | ".join(names) + " |")
    print("|---|---:|" + "---|" * len(names))
    for lo, hi in zip(W_EDGES_CM[:-1], W_EDGES_CM[1:]):
        m = (w >= lo) & (w < hi)
        cells = []
        for f in frames:
            u, v = (10 * width68((f[f"pred_uvwFI_{c}"] - f[f"true_uvwFI_{c}"]).to_numpy(float)[m]) for c in "uv")
            cells.append(f"{u:.2f} / {v:.2f}")
        print(f"| {lo:g}-{hi:g} | {int(m.sum())} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
