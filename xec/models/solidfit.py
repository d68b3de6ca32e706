"""SolidAngleFit: the classical position fit, run inside the regressor's graph.

The classical reconstruction (xec.baseline.reco.fit_position) fits N0 * Omega_i(u, v, w) to the
photons of the MPPC window around the brightest one, Omega_i the exact solid angle of MPPC i.
For showers that convert deep in the xenon (w > 4 cm) that fit is as good as the learned peak-window
fit of this model (docs/performance.md, "Peak window"): the light pattern of a wide spot is a
physics model's strength and a small MLP's weakness. This module runs the same fit on the same
window and hands its result to the heads as features (xec.models.peakfit), so they can use the
fit where it is good and the learned view where that is.

The fit, as the classical one but with a fixed number of steps (no data-dependent loop, so it
exports to ONNX): (u, v) start at the light centroid of the MPPCs within 2 cm of the brightest
one and w at the best of a depth scan; then Gauss-Newton steps over (u, v, w) with N0 profiled
out (variable projection), the analytic Jacobian of the solid angles (the classical fit takes
finite differences; the two agree to microns) and Levenberg-Marquardt damping, each step kept only
where it lowers chi2. Errors as the classical fit's: sigma_i^2 = n_i / eff +
(sys n_i)^2, dead (sentinel) MPPCs weightless; solid angles from
xec.baseline.solid_angles.rect_solid_angle (the one formula, numpy or torch).

No parameters and no gradient: its outputs are inputs of the heads (or of the position blend,
xec.models.blend).

In float64: in float32 a relative 1e-6 change of the inputs moved the fitted position by more
than 10 um in ~10 % of val events and by more than 0.1 mm in ~1.5 % (the accept-or-reject
decisions of the steps compare chi2 sums at float32 rounding), so an exported model differed from
PyTorch by more than the export's parity tolerance; in float64 no event moved by 10 um.
ONNX Runtime has no float64 arctangent on the CPU and ONNX no atan2: ``atan64`` and ``atan2_64``
build them from +, *, /, sqrt.

Cost: the solid angles of the 121 MPPCs at the 11 depths of the scan, then per step at the new
point, with their Jacobian. One atan2 per MPPC instead of four arctangents, the analytic Jacobian
instead of three more patterns per step (finite differences), and the frames' dot products as
matrix products made the fit 1.7x cheaper in ONNX Runtime and 2.2-2.6x in PyTorch
(docs/performance.md, "The in-graph fit, 1.7x cheaper"). The scan's 11 depths as one batched pass
were slower (the arrays leave the cache).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from xec.baseline.solid_angles import inner_frames, rect_solid_angle, rect_solid_angle_grad
from xec.models.aggregates import uvw_to_xyz_jacobian_torch, uvw_to_xyz_torch
from xec.normalization import Normalizer

# the classical fit's depth scan (cm), xec.baseline.reco.fit_position
W_SCAN = (0.3, 0.8, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0, 25.0, 34.0)
N_FEATURES = 5  # (u, v, w) fitted, log N0, log(1 + chi2 / ndf)


# Cephes' rational approximation of atan, accurate to the last bit of a double for |t| <= 0.66
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1)  # fmt: skip
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2)  # fmt: skip


def atan64(z: torch.Tensor) -> torch.Tensor:
    """float64 arctan from +, *, /, sqrt (ONNX Runtime has no float64 Atan on the CPU, and its
    float64 Sin / Cos are slow): two half-angle steps atan z = 2 atan(z / (1 + sqrt(1 + z^2)))
    bring any z within |t| <= tan(pi / 8) ~ 0.41, then Cephes' rational approximation; no
    branches (Where kernels were a sixth of the fit's time). Within 1e-15 of torch.atan for |z| <
    1e150 (the solid angles' arguments stay below ~1e8)."""
    t = z
    for _ in range(2):
        t = t / (1.0 + torch.sqrt(1.0 + t * t))
    t2 = t * t
    p = t2 * _ATAN_P[0] + _ATAN_P[1]
    for c in _ATAN_P[2:]:
        p = p * t2 + c
    q = t2 + _ATAN_Q[0]
    for c in _ATAN_Q[1:]:
        q = q * t2 + c
    return 4.0 * (t + t * t2 * p / q)


def atan2_64(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """float64 atan2 in [-pi, pi] from ``atan64`` (ONNX has no Atan2): twice the arctangent of
    the half angle's tangent, y / (r + x), or (r - x) / y where x < 0 (no cancellation near the
    negative x axis; on it the clamped quotient gives +-pi)."""
    r = torch.sqrt(x * x + y * y)
    half = torch.where(x >= 0, y / (r + x), (r - x) / y)
    return 2.0 * atan64(half.clamp(-1e150, 1e150))


class SolidAngleFit(nn.Module):
    def __init__(
        self,
        normalizer: Normalizer,
        efficiency: float = 0.12,
        sys_fraction: float = 0.03,
        w_max: float = 45.0,
        iterations: int = 6,
        coord_scale_cm: float = 10.0,
    ):
        super().__init__()
        fr = inner_frames()
        for name, a in (("normal", fr.n), ("tangent", fr.et), ("uv", fr.uv)):
            self.register_buffer(name, torch.as_tensor(np.asarray(a), dtype=torch.float64), persistent=False)
        # each MPPC's position along its normal, z and tangent: a constant of the geometry, so the
        # graph gathers it instead of recomputing it per batch (see _local)
        pos = torch.as_tensor(np.asarray(fr.pos), dtype=torch.float64)
        along = torch.stack([(pos * self.normal).sum(-1), pos[:, 2], (pos * self.tangent).sum(-1)], -1)
        self.register_buffer("along", along, persistent=False)
        self.normalizer = normalizer
        self.sentinel = float(normalizer.sentinel)
        self.eff, self.sys, self.w_max = float(efficiency), float(sys_fraction), float(w_max)
        self.iterations = int(iterations)
        self.scale = float(coord_scale_cm)

    def _frames(self, sensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The window MPPCs' frames, each (B, K, 3): normal, tangent, and their positions'
        components along normal, z and tangent, for :meth:`_local`."""
        return self.normal[sensors], self.tangent[sensors], self.along[sensors]

    @staticmethod
    def _local(uvw: torch.Tensor, normal: torch.Tensor, tangent: torch.Tensor, along: torch.Tensor):
        """(h, x0, y0), each (B, K): the point uvw (B, 3) in each MPPC's frame, height above it and
        offsets along z and the tangent, as matrix products (per-element dot products over the
        last axis of (B, K, 3) arrays are slow reductions in ONNX Runtime)."""
        xyz = uvw_to_xyz_torch(uvw)[:, :, None]  # (B, 3, 1)
        h = torch.matmul(normal, xyz)[..., 0] - along[..., 0]
        y0 = torch.matmul(tangent, xyz)[..., 0] - along[..., 2]
        return h, xyz[:, 2] - along[..., 1], y0

    def _omega(self, uvw: torch.Tensor, *frames: torch.Tensor) -> torch.Tensor:
        """(B, K) solid angles of the window's MPPCs (:meth:`_frames`) seen from uvw (B, 3)."""
        return rect_solid_angle(*self._local(uvw, *frames), atan2=atan2_64)

    def _jacobian(self, uvw: torch.Tensor, normal: torch.Tensor, tangent: torch.Tensor, along: torch.Tensor):
        """(B, K, 3) d omega / d(u, v, w), analytic: the solid angle's derivatives in the sensor's
        frame (h, x0, y0) chained with d(x, y, z) / d(u, v, w)."""
        d_h, d_x0, d_y0 = rect_solid_angle_grad(*self._local(uvw, normal, tangent, along))
        jx = uvw_to_xyz_jacobian_torch(uvw)  # (B, 3 xyz, 3 uvw)
        return (
            d_h[..., None] * torch.matmul(normal, jx)
            + d_x0[..., None] * jx[:, None, 2]
            + d_y0[..., None] * torch.matmul(tangent, jx)
        )

    @staticmethod
    def _profile(n: torch.Tensor, wt: torch.Tensor, om: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best N0 for the pattern om (weighted least squares) and the chi2 with it."""
        n0 = (wt * n * om).sum(1) / (wt * om * om).sum(1).clamp_min(1e-30)
        return n0, (wt * (n - n0[:, None] * om) ** 2).sum(1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, sensors: torch.Tensor) -> torch.Tensor:
        """x (B, 4760, 2) normalized, ``sensors`` (B, K) the inner-face ids of the fit window ->
        (B, N_FEATURES): fitted u, v, w (cm / coord_scale_cm), log N0 (log photons per unit solid
        angle, minus 10: O(1)) and log(1 + chi2 / ndf)."""
        npho_n = torch.gather(x[..., 0], 1, sensors)
        live = (npho_n != self.sentinel).to(torch.float64)
        n = self.normalizer.npho_inverse(npho_n.clamp_min(0.0).to(torch.float64)) * live
        var = n.clamp_min(1.0 / self.eff) / self.eff + (self.sys * n) ** 2
        wt = live / var
        frames = self._frames(sensors)
        suv = self.uv[sensors]  # (B, K, 2)

        # start: (u, v) the light centroid within 2 cm of the brightest MPPC, w the best of a scan
        peak_uv = torch.gather(suv, 1, torch.argmax(n, dim=1)[:, None, None].expand(-1, 1, 2))
        near = ((suv - peak_uv).abs() < 2.0).all(-1).to(n.dtype) * n
        uv0 = (near[..., None] * suv).sum(1) / near.sum(1, keepdim=True).clamp_min(1e-9)
        b = x.shape[0]
        best_chi2 = torch.full((b,), math.inf, dtype=n.dtype, device=n.device)
        w0 = torch.full((b,), W_SCAN[0], dtype=n.dtype, device=n.device)
        for w_try in W_SCAN:
            p = torch.cat([uv0, torch.full_like(uv0[:, :1], w_try)], dim=1)
            _, chi2 = self._profile(n, wt, self._omega(p, *frames))
            w0 = torch.where(chi2 < best_chi2, torch.full_like(w0, w_try), w0)
            best_chi2 = torch.minimum(chi2, best_chi2)

        lo = torch.stack([suv[..., 0].amin(1) - 3.0, suv[..., 1].amin(1) - 3.0, torch.full_like(w0, 0.02)], 1)
        hi = torch.stack([suv[..., 0].amax(1) + 3.0, suv[..., 1].amax(1) + 3.0, torch.full_like(w0, self.w_max)], 1)
        p = torch.cat([uv0, w0[:, None]], dim=1)
        om = self._omega(p, *frames)
        n0, chi2 = self._profile(n, wt, om)
        lam = torch.full_like(chi2, 1e-2)
        eye = torch.eye(3, dtype=n.dtype, device=n.device)
        for _ in range(self.iterations):
            # Jacobian of N0 * omega with N0 profiled out: d omega / dp minus its weighted
            # projection on omega (a change of scale is absorbed by N0)
            jac = self._jacobian(p, *frames)
            proj = (wt[..., None] * om[..., None] * jac).sum(1) / (wt * om * om).sum(1).clamp_min(1e-30)[:, None]
            jac = n0[:, None, None] * (jac - om[..., None] * proj[:, None, :])
            r = n - n0[:, None] * om
            a = torch.einsum("bki,bkj->bij", wt[..., None] * jac, jac)
            g = torch.einsum("bki,bk->bi", wt[..., None] * jac, r)
            a = a * (1.0 + lam[:, None, None] * eye)  # damping: the diagonal x (1 + lam), elementwise
            p_new = torch.minimum(torch.maximum(p + _solve3(a, g), lo), hi)
            om_new = self._omega(p_new, *frames)
            n0_new, chi2_new = self._profile(n, wt, om_new)
            better = chi2_new < chi2
            p = torch.where(better[:, None], p_new, p)
            om = torch.where(better[:, None], om_new, om)
            n0, chi2 = torch.where(better, n0_new, n0), torch.where(better, chi2_new, chi2)
            lam = torch.where(better, (lam / 3.0).clamp_min(1e-7), (lam * 4.0).clamp_max(1e7))
        ndf = (live.sum(1) - 4.0).clamp_min(1.0)
        return torch.cat(
            [
                p / self.scale,
                (torch.log(n0.clamp_min(1.0)) - 10.0)[:, None],
                torch.log1p(chi2 / ndf)[:, None],
            ],
            dim=1,
        ).to(x.dtype)


def _solve3(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """a (B, 3, 3) symmetric positive definite, g (B, 3) -> a^-1 g by the adjugate (ONNX has no
    linear solver; the damping keeps det > 0)."""
    a00, a01, a02 = a[:, 0, 0], a[:, 0, 1], a[:, 0, 2]
    a11, a12, a22 = a[:, 1, 1], a[:, 1, 2], a[:, 2, 2]
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = (a00 * c00 + a01 * c01 + a02 * c02).clamp_min(1e-30)
    g0, g1, g2 = g[:, 0], g[:, 1], g[:, 2]
    return (
        torch.stack(
            [c00 * g0 + c01 * g1 + c02 * g2, c01 * g0 + c11 * g1 + c12 * g2, c02 * g0 + c12 * g1 + c22 * g2], dim=1
        )
        / det[:, None]
    )
