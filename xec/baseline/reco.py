"""Classical (non-ML) reconstruction of the LXe detector, as the experiment does it
(docs/architecture.md, "Physics the code relies on"), vectorized over the events of a chunk.

- Dead sensors (npho > 9e9 or NaN): npho estimated from the live sensors of the same face
  within ``dead_radius_cm``, scaled by solid angles seen from the reconstructed position:
  npho_dead = sum(npho_j) * Omega_dead / sum(Omega_j), the neighbour average when
  sum(npho_j) <= ``dead_fallback_npho`` (xec.baseline.recovery).
- Position: chi2 fit of the inner-face npho pattern in a window of MPPCs around the brightest
  one, chi2 = sum (npho_i - N0 Omega_i(u, v, w))^2 / sigma_i^2 with sigma_i^2 = npho_i / eff
  (+ a relative systematic term), Omega_i the exact solid angle of the 1.2 cm square MPPC seen
  from the point (which contains the cosine of the incidence angle). Start: npho centroid for
  (u, v) and a scan of w; then a batched Levenberg-Marquardt over (u, v, w, N0) with a
  finite-difference Jacobian. Dead MPPCs get zero weight.
- Energy: sum of npho per face with face weights (the different photo-coverage of the faces),
  times a position- and energy-dependent correction; weights and corrections are calibrated on
  the train sample (:func:`calibrate`) and stored as JSON.
- Time: per sensor t_i - |x_i - x_FI| / v_group - tau/npe_i (expected delay of the earliest of
  npe photons of a scintillation with decay time tau), weighted mean with
  w_i = 1/((tau/npe_i)^2 + jitter^2), iterated outlier rejection, minus the gamma's time of
  flight from the target centre to the first interaction, minus a calibrated offset.
- Angle: direction from the target centre (origin) to the reconstructed first interaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from xec.baseline.recovery import estimate_dead, first_photon_delay
from xec.baseline.solid_angles import frame_solid_angles, gather_frames, inner_frames
from xec.config import schema_defaults
from xec.geometry import direction_to_angles, get_geometry, uvw_to_xyz, xyz_to_uvw

log = logging.getLogger("xec.baseline")

C_LIGHT = 29.9792458  # cm/ns
DEAD_NPHO = 9e9  # npho above this (or NaN) marks a dead/missing sensor

# fit status codes (parquet column fit_status)
FIT_OK, FIT_MAXITER, FIT_NO_LIGHT = 0, 1, 2


# The field defaults are the schema's (section baseline; validation fills in every default), so
# BaselineConfig() reconstructs like the default config: the schema is the one source of defaults.
_DEFAULT = schema_defaults()["baseline"]


@dataclass
class BaselineConfig:
    """Parameters of the classical reconstruction (config section ``baseline``, documented in the
    schema; defaults: the schema's)."""

    window: int = _DEFAULT["window"]  # MPPCs per side of the fit window around the brightest
    mppc_efficiency: float = _DEFAULT["mppc_efficiency"]  # photon detection efficiency in sigma^2 = npho/eff
    pmt_efficiency: float = _DEFAULT["pmt_efficiency"]
    sys_fraction: float = _DEFAULT["sys_fraction"]  # relative systematic added in quadrature to sigma_i
    max_iterations: int = _DEFAULT["max_iterations"]
    w_max: float = _DEFAULT["w_max"]  # cm, upper bound of the depth in the fit
    dead_radius_cm: float = _DEFAULT["dead_radius_cm"]
    dead_fallback_npho: float = _DEFAULT["dead_fallback_npho"]  # below: neighbour average (recovery)
    light_velocity_cm_ns: float = _DEFAULT["light_velocity_cm_ns"]  # group velocity of the scintillation light
    decay_time_ns: float = _DEFAULT["decay_time_ns"]
    time_jitter_ns: float = _DEFAULT["time_jitter_ns"]  # per-sensor time resolution floor of the time weights
    # sensors with fewer photoelectrons are not used for the time (mostly late diffuse light)
    time_min_npe: float = _DEFAULT["time_min_npe"]
    # PMTs see the shower from far away and from every side: their first photons come from
    # the part of the shower nearest to them, ~1 ns earlier than the light centroid predicts,
    # by an amount that depends on the shower; by default only the MPPCs time the event
    time_use_pmts: bool = _DEFAULT["time_use_pmts"]
    time_outlier_nsigma: float = _DEFAULT["time_outlier_nsigma"]
    time_iterations: int = _DEFAULT["time_iterations"]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BaselineConfig:
        """From a validated ``baseline`` section (every key filled in by the schema; its I/O keys
        npho_branch, time_branch, chunk_size and calibration_events are not reconstruction parameters)."""
        return cls(**{f.name: d[f.name] for f in fields(cls)})


# ---------------------------------------------------------------- position fit
def _window_ids(npho_inner: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Brightest live MPPC per event -> (N, window*window) sensor ids of the window around it
    (shifted to stay inside the 93 x 44 grid) and the brightest id."""
    g = get_geometry()
    rows, cols = g.inner_index.shape
    peak = np.argmax(npho_inner, axis=1)  # inner ids == row*44 + col, dead already zeroed
    pr, pc = np.divmod(peak, cols)
    half = window // 2
    r0 = np.clip(pr - half, 0, rows - window)
    c0 = np.clip(pc - half, 0, cols - window)
    dr, dc = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    ids = g.inner_index[(r0[:, None] + dr.ravel()), (c0[:, None] + dc.ravel())]
    return ids, peak


def _model(params: np.ndarray, frames: tuple[np.ndarray, ...]) -> np.ndarray:
    """Shape of the expected pattern (solid angles) for params (N, 3) = (u, v, w) on the window
    sensors' frames (gather_frames, once per fit: the scan and every iteration's four
    evaluations reuse them)."""
    return frame_solid_angles(uvw_to_xyz(params), frames)


def _best_n0(n: np.ndarray, omega: np.ndarray, wt: np.ndarray) -> np.ndarray:
    num = np.sum(wt * n * omega, axis=1)
    den = np.sum(wt * omega * omega, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


def fit_position(npho: np.ndarray, dead: np.ndarray, cfg: BaselineConfig) -> dict[str, np.ndarray]:
    """Fit (u, v, w) per event from the inner-face npho (N, 4760) with ``dead`` (N, 4760) masked.
    Returns uvw (N, 3), n0, chi2, ndf, status, peak (brightest MPPC id)."""
    N = len(npho)
    inner = np.where(dead[:, :4092], 0.0, npho[:, :4092]).astype(np.float64)
    ids, peak = _window_ids(inner, cfg.window)
    frames = gather_frames(ids)
    n = np.take_along_axis(inner, ids, axis=1)
    live = ~np.take_along_axis(dead[:, :4092], ids, axis=1)
    eff = cfg.mppc_efficiency
    # sigma^2 = npho/eff (Poisson on photoelectrons) + systematic; floor of one photoelectron
    var = np.maximum(n, 1.0 / eff) / eff + (cfg.sys_fraction * n) ** 2
    wt = np.where(live, 1.0 / var, 0.0)

    fr = inner_frames()
    suv = fr.uv[ids]  # (N, K, 2)
    # start (u, v): npho-weighted centroid of the 3x3 around the brightest MPPC (inside the window)
    pk_uv = fr.uv[peak]
    near = (np.abs(suv[..., 0] - pk_uv[:, None, 0]) < 2.0) & (np.abs(suv[..., 1] - pk_uv[:, None, 1]) < 2.0)
    cw = np.where(near & live, n, 0.0)
    csum = np.maximum(cw.sum(axis=1), 1e-9)
    uv0 = np.einsum("nk,nkc->nc", cw, suv) / csum[:, None]
    # start w: best chi2 of a scan (N0 profiled analytically at each depth)
    best_chi2 = np.full(N, np.inf)
    w0 = np.full(N, 2.0)
    for wtry in (0.3, 0.8, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0, 25.0, 34.0):
        p = np.column_stack([uv0, np.full(N, wtry)])
        om = _model(p, frames)
        n0 = _best_n0(n, om, wt)
        chi2 = np.sum(wt * (n - n0[:, None] * om) ** 2, axis=1)
        better = chi2 < best_chi2
        best_chi2 = np.where(better, chi2, best_chi2)
        w0 = np.where(better, wtry, w0)

    p = np.column_stack([uv0, w0])
    lo = np.column_stack([suv[..., 0].min(1) - 3.0, suv[..., 1].min(1) - 3.0, np.full(N, 0.02)])
    hi = np.column_stack([suv[..., 0].max(1) + 3.0, suv[..., 1].max(1) + 3.0, np.full(N, cfg.w_max)])
    om = _model(p, frames)
    n0 = _best_n0(n, om, wt)
    sw = np.sqrt(wt)
    chi2 = np.sum(wt * (n - n0[:, None] * om) ** 2, axis=1)
    lam = np.full(N, 1e-2)
    active = np.ones(N, bool)
    status = np.full(N, FIT_MAXITER, np.int8)
    steps = (0.01, 0.01, 0.01)  # cm, finite-difference steps
    for _ in range(cfg.max_iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        pa, oma, n0a = p[idx], om[idx], n0[idx]
        fra = tuple(f[idx] for f in frames)
        # Jacobian of the model n0*omega(u, v, w) wrt (u, v, w, n0), weighted
        J = np.empty((idx.size, oma.shape[1], 4))
        for j, h in enumerate(steps):
            dp = pa.copy()
            dp[:, j] += h
            J[..., j] = n0a[:, None] * (_model(dp, fra) - oma) / h
        J[..., 3] = oma
        swa = sw[idx]
        Jw = J * swa[..., None]
        r = swa * (n[idx] - n0a[:, None] * oma)
        A = np.einsum("nki,nkj->nij", Jw, Jw)
        g = np.einsum("nki,nk->ni", Jw, r)
        diag = np.einsum("nii->ni", A)
        Ad = A + (lam[idx][:, None] * np.maximum(diag, 1e-12))[:, :, None] * np.eye(4)
        try:
            delta = np.linalg.solve(Ad, g[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a singular system (no light in the window): pseudo-inverse
            delta = (np.linalg.pinv(Ad) @ g[..., None])[..., 0]
        delta = np.nan_to_num(delta)
        pn = np.clip(pa + delta[:, :3], lo[idx], hi[idx])
        n0n = np.maximum(n0a + delta[:, 3], 0.0)
        omn = _model(pn, fra)
        chi2n = np.sum(wt[idx] * (n[idx] - n0n[:, None] * omn) ** 2, axis=1)
        acc = chi2n < chi2[idx]
        ai = idx[acc]
        step_size = np.abs(pn - pa).max(axis=1)
        rel = (chi2[idx] - chi2n) / np.maximum(chi2[idx], 1e-12)
        p[ai], n0[ai], om[ai], chi2[ai] = pn[acc], n0n[acc], omn[acc], chi2n[acc]
        lam[idx] = np.where(acc, np.maximum(lam[idx] / 3.0, 1e-7), np.minimum(lam[idx] * 4.0, 1e7))
        # converged: accepted tiny step with a tiny chi2 change, or no progress at huge damping
        done = (acc & (step_size < 1e-3) & (rel < 1e-5)) | (~acc & (lam[idx] >= 1e7))
        status[idx[done]] = FIT_OK
        active[idx[done]] = False

    ndf = live.sum(axis=1) - 4
    no_light = (n.sum(axis=1) <= 0) | (ndf <= 0)
    status[no_light] = FIT_NO_LIGHT
    return {"uvw": p, "n0": n0, "chi2": chi2, "ndf": ndf, "status": status, "peak": peak}


# ---------------------------------------------------------------- time
def reconstruct_time(
    time_ns: np.ndarray, npho: np.ndarray, valid: np.ndarray, xyz: np.ndarray, cfg: BaselineConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma time at the target (ns, before the calibrated offset) and the number of sensors
    used, from per-sensor times (N, 4760) in ns."""
    g = get_geometry()
    eff = np.where(g.is_mppc, cfg.mppc_efficiency, cfg.pmt_efficiency)
    npe = np.where(valid, npho, 0.0) * eff
    use = valid & (npe >= cfg.time_min_npe) & np.isfinite(time_ns)
    if not cfg.time_use_pmts:
        use &= g.is_mppc[None, :]
    path = np.linalg.norm(g.positions[None, :, :] - xyz[:, None, :], axis=-1)
    # earliest of npe photons from an exponential decay arrives tau/npe after the deposit
    first = first_photon_delay(npe, cfg.decay_time_ns)
    t = np.where(use, time_ns - path / cfg.light_velocity_cm_ns - first, 0.0)
    sig2 = first**2 + cfg.time_jitter_ns**2
    w = np.where(use, 1.0 / sig2, 0.0)
    for _ in range(max(1, cfg.time_iterations)):
        tm = np.sum(w * t, axis=1) / np.maximum(w.sum(axis=1), 1e-300)
        pull = np.abs(t - tm[:, None]) / np.sqrt(sig2)
        keep = use & (pull < cfg.time_outlier_nsigma)
        # keep at least the old set when rejection would empty an event
        enough = keep.sum(axis=1) >= 3
        use = np.where(enough[:, None], keep, use)
        w = np.where(use, 1.0 / sig2, 0.0)
    tm = np.sum(w * t, axis=1) / np.maximum(w.sum(axis=1), 1e-300)
    tm = np.where(w.sum(axis=1) > 0, tm, np.nan)
    tof = np.linalg.norm(xyz, axis=-1) / C_LIGHT
    return tm - tof, use.sum(axis=1)


# ---------------------------------------------------------------- energy
FACE_KEYS = ("inner", "outer", "us", "ds", "top", "bottom")


def face_sums(npho_filled: np.ndarray) -> np.ndarray:
    """(N, 6) sum of npho per face."""
    g = get_geometry()
    return np.stack([npho_filled[:, g.face == f].sum(axis=1) for f in range(6)], axis=1)


@dataclass
class Calibration:
    """Energy and time calibration of the baseline, fitted on the train sample."""

    face_weights: list[float] = field(default_factory=lambda: [1.0] * 6)
    scale: float = 1.0e-9  # GeV per weighted photon
    w_centres: list[float] = field(default_factory=list)  # depth correction: E *= 1/interp
    w_factors: list[float] = field(default_factory=list)
    e_centres: list[float] = field(default_factory=list)  # raw energy correction (GeV)
    e_factors: list[float] = field(default_factory=list)
    uv_centres: dict[str, list[float]] = field(default_factory=dict)  # |u| and |v| corrections
    uv_factors: dict[str, list[float]] = field(default_factory=dict)
    shift_centres: list[float] = field(default_factory=list)  # shower-depth shift (cm) vs fitted w
    shift_values: list[float] = field(default_factory=list)
    time_offset_ns: float = 0.0
    # time offset vs reconstructed energy (GeV): the earliest-photon bias grows with the light
    time_e_centres: list[float] = field(default_factory=list)
    time_e_offsets: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown calibration keys {sorted(unknown)}")
        return cls(**dict(d))

    def raw_energy(self, sums: np.ndarray) -> np.ndarray:
        return sums @ np.asarray(self.face_weights, dtype=np.float64) * self.scale

    def first_interaction(self, xyz_fit: np.ndarray, w_fit: np.ndarray) -> np.ndarray:
        """The fit finds the light centroid of the shower, which lies deeper than the first
        interaction along the gamma's flight line (from the target centre): move it back by
        the calibrated shift."""
        if not self.shift_centres:
            return xyz_fit
        r = np.linalg.norm(xyz_fit, axis=-1, keepdims=True)
        shift = np.interp(w_fit, self.shift_centres, self.shift_values)[:, None]
        return xyz_fit * (1.0 - shift / np.maximum(r, 1e-9))

    def time_offset(self, energy: np.ndarray) -> np.ndarray:
        e = np.asarray(energy, dtype=np.float64)
        if self.time_e_centres:
            return np.where(
                np.isfinite(e),
                np.interp(np.nan_to_num(e), self.time_e_centres, self.time_e_offsets),
                self.time_offset_ns,
            )
        return np.full(e.shape, self.time_offset_ns)

    def correct_energy(self, e_raw: np.ndarray, uvw: np.ndarray) -> np.ndarray:
        e = np.asarray(e_raw, dtype=np.float64).copy()
        if self.w_centres:
            e /= np.interp(uvw[:, 2], self.w_centres, self.w_factors)
        for k, axis in (("u", 0), ("v", 1)):
            if self.uv_centres.get(k):
                e /= np.interp(np.abs(uvw[:, axis]), self.uv_centres[k], self.uv_factors[k])
        if self.e_centres:
            e /= np.interp(e, self.e_centres, self.e_factors)
        return e


def reconstruct_chunk(
    npho: np.ndarray, time_s: np.ndarray, cfg: BaselineConfig, calib: Calibration | None = None
) -> dict[str, np.ndarray]:
    """Full reconstruction of one chunk. npho (N, 4760) photons, time_s (N, 4760) seconds
    (the file's relative_time; > 9e9 or NaN = no time). Returns per-event arrays: uvw, xyz,
    theta, phi, energy (GeV; NaN without calibration), energy_raw, face_sums, time (ns),
    chi2, ndf, status, n_dead, n_time."""
    calibrated = calib is not None
    calib = calib or Calibration()
    npho = np.asarray(npho, dtype=np.float64)
    dead = ~np.isfinite(npho) | (npho > DEAD_NPHO)
    npho = np.where(dead, 0.0, np.maximum(npho, 0.0))
    fit = fit_position(npho, dead, cfg)
    uvw_fit = fit["uvw"]  # light centroid of the shower
    xyz_fit = uvw_to_xyz(uvw_fit)
    # dead sensors, light paths and the energy corrections use the light centroid; the
    # reported position is the first interaction (calibrated shift back along the flight line)
    filled = estimate_dead(npho, dead, xyz_fit, cfg.dead_radius_cm, cfg.dead_fallback_npho)
    sums = face_sums(filled)
    e_raw = calib.raw_energy(sums)
    energy = calib.correct_energy(e_raw, uvw_fit) if calibrated else np.full(len(e_raw), np.nan)
    xyz = calib.first_interaction(xyz_fit, uvw_fit[:, 2])
    uvw = xyz_to_uvw(xyz)
    t = np.asarray(time_s, dtype=np.float64)
    tvalid = ~dead & np.isfinite(t) & (np.abs(t) < 9e9)
    t_ns = np.where(tvalid, t, 0.0) * 1e9
    time_ns, n_time = reconstruct_time(t_ns, filled, tvalid, xyz_fit, cfg)
    theta, phi = direction_to_angles(xyz)
    return {
        "uvw": uvw,
        "xyz": xyz,
        "uvw_fit": uvw_fit,
        "xyz_fit": xyz_fit,
        "theta": theta,
        "phi": phi,
        "energy": energy,
        "energy_raw": e_raw,
        "face_sums": sums,
        "time": time_ns - calib.time_offset(energy) if calibrated else time_ns,
        "time_raw": time_ns,
        "chi2": fit["chi2"],
        "ndf": fit["ndf"],
        "status": fit["status"],
        "n_dead": dead.sum(axis=1),
        "n_time": n_time,
        "peak": fit["peak"],
    }


# ---------------------------------------------------------------- calibration
def _binned_core_ratio(
    x: np.ndarray, ratio: np.ndarray, edges: np.ndarray, min_events: int = 30, positive: bool = True
) -> tuple[list[float], list[float]]:
    """Median ``x`` and Gaussian-core mean of ``ratio`` in each bin of ``x`` (bins with fewer
    than ``min_events`` events are dropped; ``positive``: keep only positive means)."""
    from xec.metrics import gaussian_core_fit

    centres, factors = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (x >= lo) & (x < hi) & np.isfinite(ratio)
        if sel.sum() < min_events:
            continue
        mu, _ = gaussian_core_fit(ratio[sel])
        if np.isfinite(mu) and (mu > 0 or not positive):
            centres.append(float(np.median(x[sel])))
            factors.append(float(mu))
    return centres, factors


def calibrate(
    reco: Mapping[str, np.ndarray],
    energy_true: np.ndarray,
    time_true: np.ndarray | None,
    xyz_true: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> Calibration:
    """Fit the energy (face weights, scale, depth/|u|/|v|/energy corrections), the time offset
    and the shower-depth shift of the position (needs ``xyz_true``) from the uncalibrated
    reconstruction ``reco`` of train events and their truth."""
    from xec.metrics import gaussian_core_fit

    sums = np.asarray(reco["face_sums"], dtype=np.float64)
    e_true = np.asarray(energy_true, dtype=np.float64).ravel()
    ok = (reco["status"] != FIT_NO_LIGHT) & np.isfinite(e_true) & (e_true > 0) & np.all(np.isfinite(sums), axis=1)
    if ok.sum() < 100:
        raise ValueError(f"only {int(ok.sum())} usable events for the calibration (need >= 100)")
    s, e = sums[ok], e_true[ok]
    # face weights: least squares of sum_f a_f S_f / E = 1 (relative residuals), robustified
    # by refitting on the core (the low tail of leaking showers would pull the weights)
    keep = np.ones(len(e), bool)
    for _ in range(3):
        A = s[keep] / e[keep, None]
        a, *_ = np.linalg.lstsq(A, np.ones(keep.sum()), rcond=None)
        resid = (s @ a) / e - 1.0
        mu, sig = gaussian_core_fit(resid)
        if not np.isfinite(sig):
            break
        keep = np.abs(resid - mu) < 3 * sig
    a = np.where(a > 0, a, 0.0)
    scale = float(1.0 / a[0]) if a[0] > 0 else 1.0
    calib = Calibration(face_weights=[float(v * scale) for v in a], scale=float(1.0 / scale), meta=dict(meta or {}))
    uvw = np.asarray(reco["uvw_fit"])[ok]
    e_raw = calib.raw_energy(s)
    # multiplicative corrections, iterated: depth, |u|, |v|, then the raw-energy non-linearity
    w_edges = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30, 46])
    for _ in range(2):
        cur = calib.correct_energy(e_raw, uvw)
        c, f = _binned_core_ratio(uvw[:, 2], cur / e, w_edges)
        if calib.w_centres:
            f = list(np.asarray(f) * np.interp(c, calib.w_centres, calib.w_factors))
        calib.w_centres, calib.w_factors = c, f
        for k, axis, top in (("u", 0, 25.0), ("v", 1, 70.0)):
            cur = calib.correct_energy(e_raw, uvw)
            edges = np.linspace(0, top, 11)
            c, f = _binned_core_ratio(np.abs(uvw[:, axis]), cur / e, edges)
            if calib.uv_centres.get(k):
                f = list(np.asarray(f) * np.interp(c, calib.uv_centres[k], calib.uv_factors[k]))
            calib.uv_centres[k], calib.uv_factors[k] = c, f
    # energy correction as a function of the corrected energy, applied last (on corrected E)
    cur = calib.correct_energy(e_raw, uvw)
    lo_e, hi_e = np.percentile(cur, [1, 99])
    c, f = _binned_core_ratio(cur, cur / e, np.linspace(lo_e, hi_e, 9))
    calib.e_centres, calib.e_factors = c, f
    if time_true is not None:
        dt = np.asarray(reco["time_raw"])[ok] - np.asarray(time_true, dtype=np.float64).ravel()[ok]
        mu, _ = gaussian_core_fit(dt)
        calib.time_offset_ns = float(mu if np.isfinite(mu) else np.nanmedian(dt))
        e_cal = calib.correct_energy(e_raw, uvw)
        lo_e, hi_e = np.percentile(e_cal, [2, 98])
        c, f = _binned_core_ratio(e_cal, dt, np.linspace(lo_e, hi_e, 7), positive=False)
        calib.time_e_centres, calib.time_e_offsets = c, f
    if xyz_true is not None:
        xyz_fit = np.asarray(reco["xyz_fit"], dtype=np.float64)[ok]
        d = xyz_fit / np.linalg.norm(xyz_fit, axis=1, keepdims=True)
        shift = np.sum((xyz_fit - np.asarray(xyz_true, dtype=np.float64)[ok]) * d, axis=1)
        edges = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 46])
        calib.shift_centres, calib.shift_values = _binned_core_ratio(uvw[:, 2], shift, edges, positive=False)
    calib.meta.update(n_events=int(ok.sum()))
    return calib
