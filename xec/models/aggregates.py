"""Physics aggregates for the regressor heads: the light sum and a time-of-flight-corrected time.

The classical reconstruction measures energy and time with two extensive sums over all 4,760
sensors: the photon sum per face (with calibrated face weights and a position correction) and a
weighted mean of per-sensor times corrected for the light's path from the shower. A network
that only sees pooled face tokens has to rediscover these sums through LayerNorms and
poolings that are built to forget absolute scale, and on a small budget it does so poorly
(energy core 1.5 % vs 0.9 %, time 141 vs 86 ps). This module computes the same two sums, with
their physical constants as learnable parameters, and the heads predict only a correction:

- energy = L exp(b + c h), L = sum_f softplus(a_f) S_f the weighted face sums of the photons
  (a dead sensor counts as the mean of its K nearest live neighbours on the same face; a whole
  dead board fills from its rim inwards), a_f and b
  fitted on the first training batch (ActNorm-style data-dependent init), h the energy
  head's output, c = 0.1 (a correction, not the measurement);
- time = T - |x_FI| / c_light + head output, T the weighted mean over the sensors i that have a
  time of t_i - |x_i - x_light| / v - tau_type / n_i (the expected first-photon delay), with the
  classical weights 1 / ((tau_type / n_i)^2 + jitter^2) (PMTs x 0.02: they see the shower from
  afar and time its near edge). x_FI is the model's own uvwFI prediction, detached (time does not
  pull on position); x_light, the event's light centroid, is x_FI moved ``shift`` cm deeper along
  the flight line plus a per-event offset from a head trained through the time loss alone: the
  centroid of this event's shower, not of the average one, is what the light paths start from
  (with the true x_FI and a fixed shift the sum alone gives 112-158 ps on val, the classical
  fit of the centroid 80 ps). v, tau_type and shift are learned; the weights are not (each learned
  weight parameter costs a reduction over all sensors in the backward pass; measured 1.0 ->
  0.22 ms/event for the module at one thread without them). Soft outlier rejection (two passes
  down-weighting large pulls) made the time worse on the simulation and was dropped.

Both aggregates also enter the heads' features (log face sums, log L), so every head, the
uncertainty heads included, sees how much light there is and where it went. Everything is plain
tensor algebra of O(4,760) per event and exports to ONNX.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from xec.geometry import INNER_RADIUS, nearest_same_face
from xec.normalization import Normalizer

C_LIGHT_CM_NS = 29.9792458
N_FACES = 6
FILL_NEIGHBOURS = 6
FILL_PASSES = 3  # rim-inwards passes of the dead-sensor fill: a dead 4 x 4 board needs 2
LOG_LIGHT_OFFSET = 11.0  # log(photons) of a typical face sum: O(1) features
ENERGY_CORRECTION_SCALE = 0.1


def uvw_to_xyz_torch(uvw: torch.Tensor) -> torch.Tensor:
    """xec.geometry.uvw_to_xyz for tensors (B, 3) in cm."""
    phi = uvw[:, 1] / INNER_RADIUS
    r = uvw[:, 2] + INNER_RADIUS
    return torch.stack([-r * torch.cos(phi), r * torch.sin(phi), uvw[:, 0]], dim=1)


def uvw_to_xyz_jacobian_torch(uvw: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) d(x, y, z) / d(u, v, w) of :func:`uvw_to_xyz_torch` (x, y, z along dim 1)."""
    phi = uvw[:, 1] / INNER_RADIUS
    r = uvw[:, 2] + INNER_RADIUS
    cos, sin = torch.cos(phi), torch.sin(phi)
    zero = torch.zeros_like(phi)
    return torch.stack(
        [
            torch.stack([zero, r * sin / INNER_RADIUS, -cos], 1),
            torch.stack([zero, r * cos / INNER_RADIUS, sin], 1),
            torch.stack([zero + 1.0, zero, zero], 1),
        ],
        1,
    )


def direction_to_angles_torch(vec: torch.Tensor) -> torch.Tensor:
    """xec.geometry.direction_to_angles for tensors: (B, 3) -> (B, 2) (theta, phi) in degrees."""
    theta = torch.acos(torch.clamp(vec[:, 2] / torch.linalg.vector_norm(vec, dim=1), -1.0, 1.0))
    phi = torch.atan2(vec[:, 1], -vec[:, 0])
    return torch.stack([theta, phi], dim=1) * (180.0 / math.pi)  # no rad2deg: ONNX has none


class PhysicsAggregates(nn.Module):
    """Light sums and the TOF-corrected sensor time from normalized inputs (module docstring)."""

    out_dim = N_FACES + 1  # features for the heads: log face sums and log L

    def __init__(
        self,
        geometry,
        normalizer: Normalizer,
        light_velocity_cm_ns: float = 8.5,
        decay_time_ns: float = 45.0,
        efficiency: tuple[float, float] = (0.12, 0.16),  # MPPC, PMT: npho -> photoelectrons
        jitter_ns: float = 0.2,
        shift_cm: float = 2.0,
        pmt_weight: float = 0.02,
    ):
        super().__init__()
        self.normalizer = normalizer
        self.sentinel = float(normalizer.sentinel)
        face = np.asarray(geometry.face)
        onehot = np.zeros((len(face), N_FACES), np.float32)
        onehot[np.arange(len(face)), face] = 1.0
        self.register_buffer("face_onehot", torch.from_numpy(onehot), persistent=False)
        near = nearest_same_face(np.asarray(geometry.positions), face, FILL_NEIGHBOURS)
        self.register_buffer("fill_index", torch.from_numpy(near.reshape(-1)), persistent=False)
        positions = torch.tensor(np.array(geometry.positions), dtype=torch.float32)
        self.register_buffer("positions", positions, persistent=False)
        self.register_buffer("pos_norm2", self.positions.square().sum(1), persistent=False)
        pmt = torch.as_tensor(~np.asarray(geometry.is_mppc), dtype=torch.long)
        self.register_buffer("sensor_type", pmt, persistent=False)
        self.face_weight = nn.Parameter(torch.full((N_FACES,), math.log(math.e - 1.0)))  # softplus = 1
        self.energy_log_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("energy_scale_set", torch.zeros((), dtype=torch.bool))
        self.log_inv_velocity = nn.Parameter(torch.tensor(-math.log(light_velocity_cm_ns)))
        # first-photon delay tau / npe = (tau / eff) / npho, per sensor type
        self.log_delay = nn.Parameter(torch.log(torch.tensor([decay_time_ns / e for e in efficiency])))
        self.register_buffer("jitter2", torch.tensor(jitter_ns**2), persistent=False)
        # PMTs see the shower from afar and time its near edge (~1 ns early): they get a small
        # weight (the classical method leaves them out; 1/50 measured better on simulated events)
        self.register_buffer("type_weight", torch.tensor([1.0, pmt_weight])[pmt], persistent=False)
        self.shift_cm = nn.Parameter(torch.tensor(float(shift_cm)))

    def photons(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) photons with dead sensors filled by their neighbours' mean, and (B, 6) face sums."""
        x_n = x[..., 0]
        live = x_n != self.sentinel
        # a product with the mask, not torch.where: the same numbers (the values are finite) at a
        # third of the cost on CPU, where the three (B, S) wheres were ~10 % of the forward pass
        n = self.normalizer.npho_inverse(x_n.clamp_min(0.0)) * live.to(x_n.dtype)
        # eager skips the fill when nothing is dead (simulated training data). A traced or
        # exported graph has the sparse fill without that branch (NonZero and ScatterND: its
        # cost grows with the dead sensors; the dense one was ~a quarter of the exported
        # regressor); a compiled one the dense fill (static shapes)
        if torch.compiler.is_compiling() or live.is_meta:
            n = self._fill(n, live)
        elif torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or not bool(live.all()):
            n = self._fill_sparse(n, live)
        return n, n @ self.face_onehot

    def _fill(self, n: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Dead sensors <- the mean of their known K nearest same-face neighbours, in
        FILL_PASSES passes: a pass fills the dead sensors that have a known neighbour (live, or
        filled by an earlier pass), so a whole dead readout board fills from its rim inwards
        (one pass left the inner sensors of a 4 x 4 board, whose six nearest neighbours are all
        on the board, at 0 photons). Dense, for compiled graphs (static shapes): sensor-major
        (S, B), gathers of whole rows, 3x faster than columns of (B, S)."""
        s, b = n.shape[1], n.shape[0]
        nt = n.t().contiguous()
        known = live.t().contiguous()
        for _ in range(FILL_PASSES):
            # nt is 0 wherever the value is not known yet: the sum needs no mask
            num = nt.index_select(0, self.fill_index).view(s, FILL_NEIGHBOURS, b).sum(1)
            den = known.to(n.dtype).index_select(0, self.fill_index).view(s, FILL_NEIGHBOURS, b).sum(1)
            new = ~known & (den > 0)
            nt = torch.where(new, num / den.clamp_min(1.0), nt)
            known = known | new
        return nt.t()

    def _fill_sparse(self, n: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """:meth:`_fill` on the dead sensors alone (eager): the same passes and result, at a cost
        that grows with the number of dead sensors, not with B x S (the dense form took 40 ms per
        training batch of 128 with 5 % dead, a third of the whole step)."""
        s = n.shape[1]
        dead = torch.nonzero(~live.reshape(-1)).squeeze(1)  # flat (event, sensor) indices
        near = self.fill_index.view(s, FILL_NEIGHBOURS)[dead % s] + (dead // s * s)[:, None]
        flat = n.reshape(-1)
        known = live.reshape(-1)
        for _ in range(FILL_PASSES):
            # flat is 0 wherever the value is not known yet: the sum needs no mask
            num = flat[near].sum(1)
            den = known[near].sum(1).to(n.dtype)
            new = ~known[dead] & (den > 0)
            idx = dead[new]
            flat = flat.index_put((idx,), num[new] / den[new])
            known = known.index_put((idx,), torch.ones_like(idx, dtype=torch.bool))
        return flat.view_as(n)

    def light(self, sums: torch.Tensor) -> torch.Tensor:
        """(B,) log of the weighted light sum, log L."""
        return torch.log1p(sums @ nn.functional.softplus(self.face_weight))

    def features(self, sums: torch.Tensor, log_light: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log1p(sums), log_light[:, None]], dim=1) - LOG_LIGHT_OFFSET

    @torch.no_grad()
    def calibrate_light_sum(self, sums: torch.Tensor, energy: torch.Tensor) -> None:
        """Data-dependent init (once, on the first training batch): face weights from the least
        squares of sum_f w_f S_f / E = 1 (relative errors), then b = median log(E / L), so that
        the heads start from a calibrated light sum (the raw sum with equal weights spreads by
        12 % around the energy, with these weights by 6 %; measured on train batches)."""
        s64, e64 = sums.double(), energy.double().clamp_min(1e-9)
        w = torch.linalg.lstsq(s64 / e64[:, None], torch.ones_like(e64)[:, None]).solution[:, 0]
        if not bool(torch.isfinite(w).all()) or float(w.max()) <= 0:
            w = torch.ones_like(w)  # degenerate batch (no light on a face): keep equal weights
        rel = (w / w.max()).clamp_min(1e-3) * N_FACES / (w / w.max()).clamp_min(1e-3).sum()
        self._all_mean(rel)
        self.face_weight.copy_(torch.log(torch.expm1(rel)).to(self.face_weight.dtype))  # softplus^-1
        b = torch.median(torch.log(e64) - self.light(sums).double())
        self._all_mean(b)
        self.energy_log_scale.copy_(b.to(self.energy_log_scale.dtype))
        self.energy_scale_set.fill_(True)

    @staticmethod
    def _all_mean(t: torch.Tensor) -> None:
        # every DDP rank must start from the same weights
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(t)
            t /= torch.distributed.get_world_size()

    def energy(self, log_light: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """(B, 1) energy in the target's unit from log L and the head's (B, 1) correction."""
        return torch.exp(log_light[:, None] + self.energy_log_scale + ENERGY_CORRECTION_SCALE * head)

    def light_centroid(self, fi: torch.Tensor, offset_cm: torch.Tensor) -> torch.Tensor:
        """(B, 3) xyz of the event's light centroid: the first interaction ``fi`` (xyz cm) moved
        ``shift`` cm deeper along the flight line, plus a learned per-event ``offset_cm``."""
        r = fi.norm(dim=1, keepdim=True).clamp_min(1.0)
        return fi * (1.0 + self.shift_cm / r) + offset_cm

    def time(self, x: torch.Tensor, photons: torch.Tensor, fi: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
        """(B, 1) gamma time at the target (ns, the inputs' reference) from the sensor times,
        the (B, 3) first interaction ``fi`` and light ``centroid`` (xyz, cm)."""
        t_n = x[..., 1]
        has_time = (t_n != self.sentinel).to(t_n.dtype)  # a 0/1 factor: see photons()
        t_ns = self.normalizer.time_inverse(t_n) * 1e9
        # |x_i - c| through one (B, 3) x (3, S) product: no (B, S, 3) temporaries
        path2 = self.pos_norm2 + centroid.square().sum(1, keepdim=True) - 2.0 * centroid @ self.positions.t()
        path = path2.clamp_min(1e-6).sqrt()  # (B, S)
        delay = torch.exp(self.log_delay)[self.sensor_type] / photons.clamp_min(1.0)
        # the weights are fixed by the physics constants: learned ones cost a (B, S) reduction each
        with torch.no_grad():
            w = has_time * (self.type_weight / (delay * delay + self.jitter2))
            w = w / w.sum(1, keepdim=True).clamp_min(1e-30)
        t_c = has_time * (t_ns - path * torch.exp(self.log_inv_velocity) - delay)
        return (w * t_c).sum(1, keepdim=True) - fi.norm(dim=1, keepdim=True) / C_LIGHT_CM_NS
