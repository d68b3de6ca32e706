"""Event loop of the fast simulation: blocks of events with their own random streams, chunks
of blocks written to a MEG II-format ROOT TTree.

Reproducibility: event i belongs to block i // BLOCK_SIZE, whose random numbers come from
``np.random.SeedSequence([seed, 0, block])`` (fixed draw order inside the block), and the
per-sample detector state (dead sensors, gains) from ``SeedSequence([seed, 1])``. Chunks are
whole numbers of blocks and the last block is simulated in full and truncated, so the file
content depends only on (seed, N, sample settings), never on the chunk size or the number of
worker threads; and a run with N events is the first N events of a longer run.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from xec import geometry as geo
from xec.config import definition_defaults
from xec.errors import XecError
from xec.rootio import INT_BRANCHES, SENSOR_BRANCHES, TRUTH_BRANCHES, tree_writer
from xec.simulation import physics as ph
from xec.utils import progress_enabled

log = logging.getLogger("xec.simulation")

BLOCK_SIZE = 256  # events per independent random stream (fixed: changing it changes the events)
RESPONSE_SUB = 32  # events per sensor-response sub-block (fixed, for the same reason)


# The schema's defaults of a sample: the field defaults below come from there, so the schema stays
# the one source of config defaults.
_SAMPLE_DEFAULT = definition_defaults("sample")


@dataclass(frozen=True)
class SampleSpec:
    """One sample's settings (config ``simulation.samples[NAME]``)."""

    name: str
    events: int
    seed: int
    energy_mev: tuple[float, float]  # (lo, hi); lo == hi for a monochromatic sample
    dead_fraction: float = _SAMPLE_DEFAULT["dead_fraction"]
    gain_spread: float = _SAMPLE_DEFAULT["gain_spread"]
    pileup_probability: float = _SAMPLE_DEFAULT["pileup_probability"]

    @classmethod
    def from_config(
        cls, name: str, cfg: Mapping[str, Any], events: int | None = None, seed: int | None = None
    ) -> SampleSpec:
        """From a validated ``simulation.samples[NAME]`` (every key filled in by the schema)."""
        e = cfg["energy_mev"]
        lo, hi = (float(e), float(e)) if np.isscalar(e) else (float(e[0]), float(e[1]))
        spec = cls(
            name=name,
            events=int(cfg["events"] if events is None else events),
            seed=int(cfg["seed"] if seed is None else seed),
            energy_mev=(lo, hi),
            dead_fraction=float(cfg["dead_fraction"]),
            gain_spread=float(cfg["gain_spread"]),
            pileup_probability=float(cfg["pileup_probability"]),
        )
        spec.check()
        return spec

    def check(self) -> None:
        where = f"sample {self.name!r}"
        if self.events <= 0:
            raise XecError(f"{where}: number of events must be > 0, got {self.events}")
        if self.seed < 0:
            raise XecError(f"{where}: seed must be >= 0, got {self.seed}")
        lo, hi = self.energy_mev
        if not (0 < lo <= hi) or not math.isfinite(hi):
            raise XecError(f"{where}: energy_mev must be > 0 and [min, max] with min <= max, got {self.energy_mev}")
        if not 0 <= self.dead_fraction < 1:
            raise XecError(f"{where}: dead_fraction must be in [0, 1), got {self.dead_fraction}")
        if not 0 <= self.gain_spread < 0.5:
            raise XecError(f"{where}: gain_spread must be in [0, 0.5), got {self.gain_spread}")
        if not 0 <= self.pileup_probability <= 1:
            raise XecError(f"{where}: pileup_probability must be in [0, 1], got {self.pileup_probability}")


@dataclass(frozen=True)
class DetectorState:
    """Per-sample fixed detector conditions: dead sensors and gain miscalibration."""

    dead: np.ndarray  # (S,) bool
    gain: np.ndarray  # (S,) float64, multiplies npho (1 = perfectly calibrated)

    @property
    def gain32(self) -> np.ndarray:
        return self.gain.astype(np.float32)


def detector_state(spec: SampleSpec) -> DetectorState:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1]))
    n_dead = int(round(spec.dead_fraction * geo.N_SENSORS))
    dead = np.zeros(geo.N_SENSORS, bool)
    dead[rng.choice(geo.N_SENSORS, size=n_dead, replace=False)] = True
    gain = np.ones(geo.N_SENSORS)
    if spec.gain_spread > 0:
        gain = np.clip(1.0 + spec.gain_spread * rng.standard_normal(geo.N_SENSORS), 0.5, 1.5)
    return DetectorState(dead=dead, gain=gain)


@dataclass
class _Group:
    """One light group of a block: expected pe (n, S) and light-weighted arrival time (n, S)."""

    mean_pe: np.ndarray
    time_ns: np.ndarray

    def slice(self, lo: int, hi: int) -> _Group:
        return _Group(self.mean_pe[lo:hi], self.time_ns[lo:hi])


def _shower_light(
    rng: np.random.Generator,
    vertex: np.ndarray,
    energy: np.ndarray,
    t0_ns: np.ndarray,
    params: ph.PhysicsParams,
    sensors: ph.SensorArrays,
) -> tuple[dict[str, np.ndarray], list[_Group]]:
    """One gamma per event: kinematics, shower, light. Returns its truth and light groups."""
    direction, entry, conv = ph.sample_gammas(rng, vertex, params, sensors)
    offsets, share = ph.sample_shower(rng, energy, direction, params)
    yield_scale = np.ones(len(energy))
    if params.yield_spread > 0:
        yield_scale = np.maximum(1.0 + params.yield_spread * rng.standard_normal(len(energy)), 0.0)
    spots = conv[:, None, :] + offsets
    alive = ph.inside_active(spots)  # leakage: energy deposited outside the active xenon is lost
    photons = (energy * params.photons_per_mev * yield_scale)[:, None] * share * alive
    # gamma flies at c from the vertex to the conversion point, the shower front at c after it
    t_conv = t0_ns + np.linalg.norm(conv - vertex, axis=1) / ph.C_CM_PER_NS
    spot_t = t_conv[:, None] + np.linalg.norm(offsets, axis=2) / ph.C_CM_PER_NS
    direct, time_sum, scattered = ph.light_tensor(conv, offsets, photons, spot_t, params)
    eff = sensors.efficiency32
    with np.errstate(invalid="ignore", divide="ignore"):
        t_direct = time_sum / direct  # inf/nan where no direct light: never the earliest
    # diffuse light: the scattered photons, shared by active area, arriving diffuse_delay_ns
    # after the light-weighted shower time (one time per event: it only matters for sensors
    # that see almost no direct light)
    total = photons.sum(axis=1)
    t_shower = (photons * spot_t).sum(axis=1) / np.maximum(total, 1e-30)
    diffuse_share = (sensors.area_share * sensors.efficiency).astype(np.float32)
    groups = [
        _Group(direct * eff, np.where(direct > 0, t_direct, np.float32(np.inf))),
        _Group(
            scattered.astype(np.float32)[:, None] * diffuse_share[None, :],
            np.broadcast_to((t_shower + params.diffuse_delay_ns).astype(np.float32)[:, None], direct.shape),
        ),
    ]
    truth = {"direction": direction, "entry": entry, "conv": conv, "visible": total}
    return truth, groups


def simulate_block(
    block: int, spec: SampleSpec, params: ph.PhysicsParams, state: DetectorState, n_events: int = BLOCK_SIZE
) -> dict[str, np.ndarray]:
    """Simulate block ``block`` of ``spec`` (all BLOCK_SIZE events; the caller truncates) and
    return the ROOT branches. The draw order below is part of the file format: keep it."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0, block]))
    sensors = ph.sensor_arrays(params)
    n = n_events
    vertex = rng.standard_normal((n, 3)) * np.asarray(params.vertex_sigma_cm)
    lo, hi = spec.energy_mev
    energy = rng.uniform(lo, hi, n) if hi > lo else np.full(n, lo)
    t0 = rng.uniform(0.0, params.trigger_window_ns, n)
    truth, groups = _shower_light(rng, vertex, energy, t0, params, sensors)
    pileup_truth = {}
    if spec.pileup_probability > 0:
        has_pu = rng.random(n) < spec.pileup_probability
        pu_energy = rng.uniform(*params.pileup_energy_mev, n)
        pu_t0 = t0 + rng.uniform(*params.pileup_window_ns, n)
        pu_vertex = rng.standard_normal((n, 3)) * np.asarray(params.vertex_sigma_cm)
        idx = np.flatnonzero(has_pu)
        if idx.size:
            _, pu_groups = _shower_light(rng, pu_vertex[idx], pu_energy[idx], pu_t0[idx], params, sensors)
            for g in pu_groups:
                mean = np.zeros((n, geo.N_SENSORS), np.float32)
                t = np.full((n, geo.N_SENSORS), np.inf, np.float32)
                mean[idx], t[idx] = g.mean_pe, g.time_ns
                groups.append(_Group(mean, t))
        # what was piled up (only in files of samples with pile-up): the second gamma's energy
        # (GeV, 0 = none) and emission time relative to the main gamma's (ns)
        pileup_truth = {
            "pileupEnergyTruth": np.where(has_pu, pu_energy * 1e-3, 0.0).astype(np.float32),
            "pileupTimeTruth": np.where(has_pu, pu_t0 - t0, 0.0).astype(np.float32),
        }
    # detector response, in sub-blocks of RESPONSE_SUB events so that the ~30 passes over the
    # (events x sensors) arrays stay in cache; the draws happen sub-block by sub-block (a fixed
    # order: RESPONSE_SUB is part of the format, like BLOCK_SIZE)
    out = {b: np.empty((n, geo.N_SENSORS), np.float32) for b in SENSOR_BRANCHES}
    t_ref = np.empty(n)
    for lo in range(0, n, RESPONSE_SUB):
        hi = min(lo + RESPONSE_SUB, n)
        t_ref[lo:hi] = _response(
            rng,
            [g.slice(lo, hi) for g in groups],
            t0[lo:hi],
            state,
            params,
            sensors,
            {b: v[lo:hi] for b, v in out.items()},
        )

    theta, phi = geo.direction_to_angles(truth["direction"])
    out.update(
        {
            "energyTruth": (energy * 1e-3).astype(np.float32),
            "timeTruth": (t0 - t_ref).astype(np.float32),
            "uvwTruth": geo.xyz_to_uvw(truth["conv"]).astype(np.float32),
            "xyzTruth": truth["conv"].astype(np.float32),
            "emiAng": np.stack([theta, phi], axis=1).astype(np.float32),
            "emiVec": truth["direction"].astype(np.float32),
            "xyzVTX": vertex.astype(np.float32),
            "run": np.full(n, spec.seed, np.int32),
            "event": (block * BLOCK_SIZE + np.arange(n)).astype(np.int32),
            **pileup_truth,
        }
    )
    return out


def _response(
    rng: np.random.Generator,
    groups: list[_Group],
    t0: np.ndarray,
    state: DetectorState,
    params: ph.PhysicsParams,
    sensors: ph.SensorArrays,
    out: dict[str, np.ndarray],
) -> np.ndarray:
    """Photoelectrons, times and the sensor branches of a few events (written into ``out``);
    returns the relative_time reference (ns) of each event."""
    n = len(t0)
    # one Poisson draw for the sum of the groups; first-photon time: each group's arrival time
    # + Exp(tau / its photoelectrons), the earliest group wins
    mean_pe = groups[0].mean_pe.copy()
    for g in groups[1:]:
        mean_pe += g.mean_pe
    pe = ph.fast_poisson(rng, mean_pe)
    tau = np.float32(params.decay_time_ns)
    first = np.full((n, geo.N_SENSORS), np.inf, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        pe_per_mean = pe / mean_pe
        for g in groups:
            delay = rng.standard_exponential((n, geo.N_SENSORS), dtype=np.float32)
            delay *= tau / (g.mean_pe * pe_per_mean)  # inf where the group gave no photoelectron
            delay += g.time_ns
            np.fmin(first, delay, out=first)
    first += rng.standard_normal((n, geo.N_SENSORS), dtype=np.float32) * sensors.jitter32
    has_time = (pe >= params.time_threshold_pe) & np.isfinite(first) & ~state.dead
    # relative_time reference: earliest sensor with > reference_threshold_pe photoelectrons
    # (fallback: earliest sensor with a time; none at all: the emission time)
    time_ns = np.where(has_time, first, np.float32(np.inf))
    t_ref = np.where(pe > params.reference_threshold_pe, time_ns, np.float32(np.inf)).min(axis=1).astype(np.float64)
    fallback = time_ns.min(axis=1).astype(np.float64)
    t_ref = np.where(np.isfinite(t_ref), t_ref, np.where(np.isfinite(fallback), fallback, t0))
    npho = np.multiply(pe, state.gain32 / sensors.efficiency32, out=pe)
    npho[:, state.dead] = 0.0
    live_max = npho.max(axis=1)
    np.divide(npho, np.maximum(live_max, np.float32(1e-30))[:, None], out=out["relative_npho"])
    out["npho"][...] = npho
    out["npho"][:, state.dead] = ph.NO_TIME
    out["relative_npho"][:, state.dead] = ph.NO_TIME
    # time_ns is inf exactly where a sensor has no time, so a minimum writes the 1e10 marker
    # (no boolean-mask assignment; real times are ~1e-7 s)
    no_time = np.float32(ph.NO_TIME)
    np.multiply(time_ns, np.float32(1e-9), out=out["time"])
    np.minimum(out["time"], no_time, out=out["time"])
    np.subtract(time_ns, t_ref.astype(np.float32)[:, None], out=time_ns)
    np.multiply(time_ns, np.float32(1e-9), out=out["relative_time"])
    np.minimum(out["relative_time"], no_time, out=out["relative_time"])
    return t_ref


def _check_schema(arrays: Mapping[str, np.ndarray]) -> None:
    for b in SENSOR_BRANCHES:
        assert arrays[b].shape[1:] == (geo.N_SENSORS,) and arrays[b].dtype == np.float32, b
    for b, shape in TRUTH_BRANCHES.items():
        assert arrays[b].shape[1:] == shape, b
        assert arrays[b].dtype == (np.int32 if b in INT_BRANCHES else np.float32), b


def iter_blocks(
    spec: SampleSpec, params: ph.PhysicsParams, chunk_size: int = 2048, workers: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the branches of each block of events in order (the last block truncated to
    ``spec.events``). Blocks are simulated on ``workers`` threads (numpy releases the GIL in the
    heavy kernels) with at most a chunk (``chunk_size`` events, rounded up to whole blocks, at
    least workers + 1 blocks) in flight, so memory is bounded by the chunk, whatever N."""
    state = detector_state(spec)
    window = max(-(-chunk_size // BLOCK_SIZE), workers + 1)
    n_blocks = -(-spec.events // BLOCK_SIZE)

    def block(b: int) -> dict[str, np.ndarray]:
        arrays = simulate_block(b, spec, params, state)
        stop = spec.events - b * BLOCK_SIZE
        return {k: v[:stop] for k, v in arrays.items()} if stop < BLOCK_SIZE else arrays

    with _single_threaded_blas():
        if workers <= 1:
            for b in range(n_blocks):
                yield block(b)
            return
        # a sliding window: a block is submitted as soon as one is handed out, so the workers
        # never wait for the writer to drain a whole chunk
        pool = ThreadPoolExecutor(max_workers=workers)
        in_flight: collections.deque = collections.deque()
        try:
            for b in range(n_blocks):
                in_flight.append(pool.submit(block, b))
                if len(in_flight) == window:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """The matmuls here are many small ones: OpenBLAS threads only add overhead and
    oversubscribe the cores next to our own worker threads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its default threads
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def write_sample(
    path: str | os.PathLike,
    spec: SampleSpec,
    params: ph.PhysicsParams,
    chunk_size: int = 2048,
    workers: int = 1,
    tree: str = "tree",
    compression: str = "lz4",
) -> int:
    """Simulate ``spec`` into the ROOT file ``path`` (atomically: no partial file on failure).

    Every block is one ``extend`` (one basket per branch), so the file layout, not only the
    arrays, is the same for any chunk size or number of workers. Blocks are compressed and
    written on a background thread while the next ones are simulated. ``compression``: a name
    of ``xec.rootio.COMPRESSIONS`` (lz4 by default: these files are an intermediate, read once
    into shards)."""
    path = Path(path)
    check_writable(path)
    written = 0
    with (
        tree_writer(path, tree, title=f"xec fast simulation: sample {spec.name}", compression=compression) as writer,
        ThreadPoolExecutor(max_workers=1) as io_pool,
        tqdm(total=spec.events, unit="ev", desc=f"simulate {spec.name}", disable=not progress_enabled()) as bar,
    ):
        pending = None
        for arrays in iter_blocks(spec, params, chunk_size, workers):
            _check_schema(arrays)
            if pending is not None:
                pending.result()  # one block in flight; re-raises a write error
            pending = io_pool.submit(writer.extend, arrays)
            written += len(arrays["event"])
            bar.update(len(arrays["event"]))
        if pending is not None:
            pending.result()
    return written


def check_writable(path: Path) -> None:
    """Fail before simulating anything if ``path`` cannot be written (probe file, removed)."""
    if path.is_dir():
        raise XecError(f"{path}: output path is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError) as exc:
        raise XecError(f"{path}: cannot write the output file (a parent of it is not a directory)") from exc
    except OSError as exc:
        raise XecError(f"{path}: cannot write the output file ({exc.strerror or exc})") from exc
