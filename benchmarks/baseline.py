"""Speed of the classical reconstruction (xec.baseline) on simulated 52.8 MeV events.

    .venv/bin/python benchmarks/baseline.py [--events 2000] [--dead-fraction 0.01] [--chunk 500]

Prints events/s of the position fit, the dead-sensor estimate and the whole chunk
reconstruction (uncalibrated), with the load average (the machine is shared)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--dead-fraction", type=float, default=0.01)
    ap.add_argument("--chunk", type=int, default=500)
    a = ap.parse_args()
    from xec.baseline import reco, recovery
    from xec.geometry import uvw_to_xyz
    from xec.rootio import iterate_events
    from xec.simulation.generator import SampleSpec, write_sample
    from xec.simulation.physics import PhysicsParams

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.root")
        write_sample(
            path, SampleSpec("bench", a.events, 7, (52.8, 52.8), dead_fraction=a.dead_fraction), PhysicsParams()
        )
        cfg = reco.BaselineConfig()
        recovery.neighbour_matrix(cfg.dead_radius_cm)  # one-off table, excluded
        t_fit = t_dead = t_all = 0.0
        n = 0
        for _, arr in iterate_events([path], step_size=a.chunk):
            npho = arr["npho"].astype(np.float64)
            dead = npho > 9e9
            npho[dead] = 0
            t0 = time.perf_counter()
            fit = reco.fit_position(npho, dead, cfg)
            t1 = time.perf_counter()
            recovery.estimate_dead(npho, dead, uvw_to_xyz(fit["uvw"]), cfg.dead_radius_cm)
            t2 = time.perf_counter()
            reco.reconstruct_chunk(arr["npho"], arr["relative_time"], cfg)
            t3 = time.perf_counter()
            t_fit, t_dead, t_all = t_fit + t1 - t0, t_dead + t2 - t1, t_all + t3 - t2
            n += len(npho)
    print(
        f"load average {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} cores, {n} events, "
        f"dead fraction {a.dead_fraction}, chunk {a.chunk}"
    )
    print(f"{'step':<28}{'events/s':>10}")
    for name, t in (("position fit", t_fit), ("dead-sensor estimate", t_dead), ("full chunk reconstruction", t_all)):
        print(f"{name:<28}{n / t:>10.0f}")


if __name__ == "__main__":
    main()
