"""``xec simulate``: simulate one configured sample into a MEG II-format ROOT file.

Sample settings come from ``simulation.samples[NAME]`` of the config; ``--events``,
``--seed``, ``--chunk-size``, ``--workers`` and ``--compression`` override them.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from xec.config import add_config_argument, load_config
from xec.errors import XecError
from xec.rootio import COMPRESSIONS
from xec.utils import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--sample", required=True, help="sample name in simulation.samples (train, val, bench, realdata, ...)"
    )
    parser.add_argument("--events", type=int, default=None, help="number of events (default: from the config)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the config)")
    parser.add_argument("--out", required=True, help="output ROOT file")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="events per written chunk, rounded up to whole 256-event blocks (default: from the config); "
        "does not change the file content",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="threads simulating the blocks (default: simulation.workers)"
    )
    parser.add_argument(
        "--compression",
        choices=sorted(COMPRESSIONS),
        default=None,
        help="ROOT basket compression (default: simulation.compression); does not change the file content",
    )
    parser.add_argument("--log", default=None, help="log file")


def main(args: argparse.Namespace) -> int:
    from xec.simulation.generator import SampleSpec, check_writable, write_sample
    from xec.simulation.physics import PhysicsParams

    log = setup_logging(args.log)
    cfg = load_config(args.config, command="simulate", sample=args.sample)
    sim = cfg["simulation"]
    # all of simulation.samples (declared runtime: only the error message lists the others)
    samples = sim["samples"]
    if args.sample not in samples:
        where = args.config or "config.yaml"
        raise XecError(f"{where}: unknown sample {args.sample!r}; configured samples: {sorted(samples) or 'none'}")
    if args.events is not None and args.events <= 0:
        raise XecError(f"--events must be > 0, got {args.events}")
    chunk = sim["chunk_size"] if args.chunk_size is None else args.chunk_size
    if chunk <= 0:
        raise XecError(f"--chunk-size must be > 0, got {chunk}")
    workers = sim["workers"] if args.workers is None else args.workers
    if workers <= 0:
        raise XecError(f"--workers must be > 0, got {workers}")
    spec = SampleSpec.from_config(args.sample, samples[args.sample], events=args.events, seed=args.seed)
    params = PhysicsParams.from_config(sim["physics"])
    check_writable(Path(args.out))
    log.info(
        "simulating %s: %d events, seed %d, energy %s MeV, dead %.3f, gain spread %.3f, pile-up %.3f -> %s",
        spec.name,
        spec.events,
        spec.seed,
        spec.energy_mev,
        spec.dead_fraction,
        spec.gain_spread,
        spec.pileup_probability,
        args.out,
    )
    start = time.perf_counter()
    compression = sim["compression"] if args.compression is None else args.compression
    n = write_sample(
        args.out, spec, params, chunk_size=chunk, workers=workers, tree=cfg["data"]["tree"], compression=compression
    )
    dt = time.perf_counter() - start
    log.info("wrote %d events to %s in %.1f s (%.0f events/s)", n, args.out, dt, n / max(dt, 1e-9))
    logging.shutdown()
    return 0
