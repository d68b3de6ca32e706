"""Sensor-level correction of the inpainter's fill from the nearest live sensors of the same face.

Why: the inpainter's heads work at the encoder's stem resolution (4 x 4 MPPCs per cell in
``tiny``), so a hidden sensor's prediction is a smooth guess over its cell: a hidden bright MPPC
at the shower's core came back at a few percent of its value, and on the inner face the heads
scored a relative MAE of 0.64 against 0.23 for the experiment's solid-angle rule
(docs/performance.md, "Dead channels"). The light a hidden sensor saw is best told by its
immediate neighbours, as the rule knows; this module reads them.

For every sensor to fill (and only those: the cost grows with the hidden sensors, not with
B x 4760; ``NonZero`` + gathers + ``ScatterND`` in the exported graph), an MLP reads

* the K nearest sensors of the same face where known (live and not hidden themselves): their
  log(1 + photons) relative to the reference below, their time, known-flags, and their fixed
  offsets from the target (cm / 10);
* the target's position and face (edges and corners behave differently);
* the heads' prediction for the target (the global context: where the shower is), relative to
  the reference too;
* with ``peak_context`` (``model.inpaint_peak_context``), where the shower is without the heads:
  the brightest known MPPC's log(1 + photons), its excess over its 8 nearest inner sensors (sharp:
  a shallow shower) and the target's offset and distance from their light-weighted centroid. With
  it the correction alone (no encoder) fills every face better than the encoder's context did
  (docs/performance.md, "The shower peak instead of the encoder");

and predicts log(1 + photons) as a correction to the reference, the mean log(1 + photons) of the
known neighbours (the heads' guess where none is known, e.g. inside a dead board), plus a
correction to a reference time: with ``time_ref="neighbours"`` the known neighbours' mean time
(the heads' where none has one), with ``"heads"`` the heads' time (checkpoints written before the
choice existed). The neighbours' mean is the better start: the filled times of hidden sensors
came out 8-20 % closer to the truth, face by face (docs/performance.md, "The filled time from the
neighbours"). No time (the sentinel) where fewer than 3/4 of the neighbours are known, as inside a
dead board, where the guessed times spoilt the regressor's event time. The last layer starts at
zero, so an untrained correction gives the neighbours' geometric mean and the reference time.
Everything relative to the reference keeps the MLP's inputs and outputs O(1) at any brightness
(relative to the heads' guess, a core MPPC the heads put at a few percent of its value was far
outside what it had learned: 0.55 relative MAE above 10,000 photons against 0.36 now), makes the
correction blind to a gain common to a region, and makes its error relative, the error
``xec inpainting`` scores.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from xec.geometry import nearest_same_face
from xec.models.aggregates import N_FACES
from xec.normalization import Normalizer

OFFSET_SCALE_CM = 10.0
POSITION_SCALE_CM = 50.0
LOG_SCALE = 10.0  # log(1 + photons) of a bright sensor: O(1) features
MAX_PHOTONS = 1.0e6  # predictions clamped here before the log (a wild early output)
TIME_MIN_KNOWN = 0.75  # share of the K neighbours that must be known for a filled time
TIME_REFS = ("neighbours", "heads")
PEAK_RING = 8  # the brightest known MPPC's nearest inner sensors that locate the shower
N_PEAK_FEATURES = 7


def npho_cap(normalizer: Normalizer) -> float:
    """MAX_PHOTONS in ``normalizer``'s units: the clamp of predicted npho before any photon-space
    term (the correction's logs, the inpainter losses' expm1)."""
    return float(normalizer.npho_forward(np.float64(MAX_PHOTONS)))


class LocalFill(nn.Module):
    def __init__(
        self,
        geometry,
        normalizer: Normalizer,
        neighbours: int,
        hidden: int,
        time_ref: str = "heads",
        peak_context: bool = False,
    ):
        super().__init__()
        if time_ref not in TIME_REFS:
            raise ValueError(f"LocalFill: time_ref {time_ref!r} is not one of {TIME_REFS}")
        self.time_from_neighbours = time_ref == "neighbours"
        self.normalizer = normalizer
        self.sentinel = float(normalizer.sentinel)
        self.k = int(neighbours)
        self.npho_cap = npho_cap(normalizer)
        positions = np.asarray(geometry.positions, np.float64)
        face = np.asarray(geometry.face)
        near = nearest_same_face(positions, face, self.k)  # (S, K)
        offsets = (positions[near] - positions[:, None, :]) / OFFSET_SCALE_CM
        onehot = np.eye(N_FACES)[face]
        static = np.concatenate([offsets.reshape(len(face), -1), positions / POSITION_SCALE_CM, onehot], axis=1)
        self.register_buffer("near", torch.from_numpy(near), persistent=False)
        self.register_buffer("static", torch.from_numpy(static.astype(np.float32)), persistent=False)
        n_in = static.shape[1] + 4 * self.k + 3
        self.peak_context = bool(peak_context)
        if self.peak_context:
            inner = np.flatnonzero(face == 0)
            ring = np.concatenate([inner[:, None], nearest_same_face(positions, face, PEAK_RING)[inner]], axis=1)
            self.register_buffer("inner", torch.from_numpy(inner), persistent=False)
            self.register_buffer("ring", torch.from_numpy(ring), persistent=False)  # (I, 1 + PEAK_RING)
            self.register_buffer("pos", torch.from_numpy(positions.astype(np.float32)), persistent=False)
            n_in += N_PEAK_FEATURES
        self.mlp = nn.Sequential(
            nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def log_photons(self, npho_n: torch.Tensor) -> torch.Tensor:
        """Normalized npho -> log(1 + photons)."""
        return torch.log1p(self.normalizer.npho_inverse(npho_n.clamp(0.0, self.npho_cap)))

    def shower_peak(self, x: torch.Tensor, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where the shower is, from the brightest known MPPC and its PEAK_RING nearest inner
        sensors: (B, 3) their light-weighted centroid (cm), (B,) the peak's log(1 + photons),
        (B,) its excess over the known ring's mean log (sharp: a shallow shower)."""
        b, s = x.shape[0], x.shape[1]
        xi = x[:, self.inner, 0]
        known = (~fill[:, self.inner]) & (xi != self.sentinel)
        score = torch.where(known, self.log_photons(xi), torch.full_like(xi, -1.0))
        peak = score.argmax(dim=1)  # (B,) index into self.inner
        ring = self.ring[peak]  # (B, R) sensor ids
        flat = ring + (torch.arange(b, device=x.device) * s)[:, None]
        ring_n = x[..., 0].reshape(-1)[flat]
        ring_known = ((~fill.reshape(-1)[flat]) & (ring_n != self.sentinel)).to(x.dtype)
        ring_photons = self.normalizer.npho_inverse(ring_n.clamp(0.0, self.npho_cap))
        ring_log = torch.log1p(ring_photons)
        photons = ring_photons * ring_known
        centroid = (photons[..., None] * self.pos[ring]).sum(1) / photons.sum(1).clamp_min(1e-6)[:, None]
        peak_log = ring_log[:, 0] * ring_known[:, 0]
        around = (ring_log[:, 1:] * ring_known[:, 1:]).sum(1) / ring_known[:, 1:].sum(1).clamp_min(1.0)
        return centroid, peak_log, peak_log - around

    def forward(self, x: torch.Tensor, pred: torch.Tensor | None, fill: torch.Tensor) -> torch.Tensor:
        """x (B, S, 2) normalized input, pred (B, S, 2) the heads' prediction, fill (B, S) bool
        -> pred with the ``fill`` sensors corrected (the others unchanged). ``pred`` None (an
        inpainter without the encoder): x with the ``fill`` sensors filled from their neighbours
        alone, the heads' features zero; no npho reference where no neighbour is known (log(1 +
        photons) 0 plus the correction) and no time where none has a time."""
        s = x.shape[1]
        fill_flat = fill.reshape(-1)
        idx = torch.nonzero(fill_flat).squeeze(1)  # flat (event, sensor) indices
        sensor = idx % s
        near = self.near[sensor] + (idx - sensor)[:, None]  # (M, K) flat indices
        xf = x.reshape(-1, 2)
        nb_n, nb_t = xf[:, 0][near], xf[:, 1][near]
        known = (~fill_flat[near]) & (nb_n != self.sentinel)
        time_known = known & (nb_t != self.sentinel)
        kf, tf = known.to(x.dtype), time_known.to(x.dtype)
        nb_log = self.log_photons(nb_n)
        # the reference: the known neighbours' mean log(1 + photons), or the heads' guess where none
        # is known (a whole dead board); every feature is relative to it, so the correction is
        # O(1) whatever the brightness (relative to the heads' guess, a core MPPC the heads
        # put at a few % of its value was far outside what the correction had learned)
        n_known, n_timed = kf.sum(1), tf.sum(1)
        mean_log = (nb_log * kf).sum(1) / n_known.clamp_min(1.0)
        time_ok = n_known >= TIME_MIN_KNOWN * self.k
        # the known neighbours' mean time, where it is the time reference (not in the heads mode's graph)
        mean_t = (nb_t * tf).sum(1) / n_timed.clamp_min(1.0) if pred is None or self.time_from_neighbours else None
        if pred is None:  # no heads: their features zero, the references the neighbours' alone
            base, t_ref = mean_log, mean_t
            p_log, p_time = base, torch.zeros_like(base)
            time_ok = time_ok & (n_timed > 0)
        else:
            p = pred.reshape(-1, 2)[idx]
            p_log = self.log_photons(p[:, 0])
            base = torch.where(n_known > 0, mean_log, p_log)
            p_time = t_ref = p[:, 1]
            if self.time_from_neighbours:
                t_ref = torch.where(n_timed > 0, mean_t, p_time)
                p_time = p_time - t_ref  # the heads' time as a feature, relative to the reference too
        parts = [
            (nb_log - base[:, None]) * kf,
            kf,
            nb_t * tf,
            tf,
            self.static[sensor],
            torch.stack([base / LOG_SCALE, p_log - base, p_time], dim=1),
        ]
        if self.peak_context:
            centroid, peak_log, sharp = self.shower_peak(x, fill)
            ev = torch.div(idx - sensor, s, rounding_mode="floor")
            off = (self.pos[sensor] - centroid[ev]) / OFFSET_SCALE_CM
            dist = torch.sqrt((off * off).sum(1) + 1e-6)
            pk = peak_log[ev]
            parts.append(torch.cat([off, torch.stack([dist, pk - base, sharp[ev], pk / LOG_SCALE], dim=1)], dim=1))
        feats = torch.cat(parts, dim=1)
        d = self.mlp(feats)
        # exp - 1: ONNX (opset 17) has no Expm1
        photons = torch.exp((base + d[:, 0]).clamp(0.0, math.log1p(MAX_PHOTONS))) - 1.0
        npho = self.normalizer.npho_forward(photons)
        # no time where most neighbours are unknown (inside a dead board, time_ok above): there
        # the guessed times, now carried by a bright npho, pulled the regressor's event time away
        # (sweep, 5 % dead boards: 51 -> 128 ps); a sensor without a time is what the regressor
        # knows to skip
        time = torch.where(time_ok, t_ref + d[:, 1], torch.full_like(base, self.sentinel))
        # under autocast (bf16 on a GPU) the heads' pred is bf16 and the correction float32
        into = x if pred is None else pred
        out = torch.stack([npho, time], dim=1).to(into.dtype)
        return into.reshape(-1, 2).index_put((idx,), out).view_as(into)
