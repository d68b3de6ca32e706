"""Solid angles of the sensors seen from points in the xenon: the one home of this logic for the
classical reconstruction (position fit, xec.baseline.reco) and the dead-sensor recoveries
(xec.baseline.recovery). Sensor positions and normals come from xec.geometry.

- MPPC (inner face): the exact solid angle of its 1.2 cm square active area (which contains the
  cosine of the incidence angle), from the four corner rectangles;
- PMT (other faces): the far-field A cos(theta) / d^2 of its 4.5 cm photocathode disc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xec.geometry import MPPC_SIDE, PMT_DIAMETER, get_geometry, xyz_to_uvw
from xec.utils import array_namespace

PMT_RADIUS = PMT_DIAMETER / 2  # cm, photocathode radius


@dataclass(frozen=True)
class _InnerFrames:
    pos: np.ndarray  # (4092, 3)
    n: np.ndarray  # normal (into the xenon)
    ez: np.ndarray  # tangent along z (u)
    et: np.ndarray  # tangent along phi' (v)
    uv: np.ndarray  # (4092, 2) sensor (u, v)


_FRAMES: _InnerFrames | None = None


def inner_frames() -> _InnerFrames:
    global _FRAMES
    if _FRAMES is None:
        g = get_geometry()
        ids = np.arange(4092)
        pos = np.asarray(g.positions[ids])
        n = np.asarray(g.normals[ids])
        ez = np.broadcast_to(np.array([0.0, 0.0, 1.0]), pos.shape).copy()
        et = np.cross(n, ez)
        _FRAMES = _InnerFrames(pos, n, ez, et, xyz_to_uvw(pos)[:, :2])
    return _FRAMES


def _corners(h: Any, x0: Any, y0: Any, side: float) -> tuple[Any, Any, Any, Any, Any, Any]:
    """The four corner rectangles of a ``side`` square seen from (h, x0, y0), stacked on a new
    first axis (one pass of each operation, and contiguous slices: in an exported graph, a quarter
    of the kernels and block copies): numpy or torch, the point behind the plane, the corners' x,
    y, the clipped height and the distances."""
    xp = array_namespace(h)
    behind = h <= 0
    hh = xp.clip(h, 1e-6, None)  # broadcasts against the corners' leading axis
    a = 0.5 * side
    x1, x2 = -a - x0, a - x0
    y1, y2 = -a - y0, a - y0
    x = xp.stack([x2, x1, x2, x1])
    y = xp.stack([y2, y2, y1, y1])
    return xp, behind, x, y, hh, xp.sqrt(x * x + y * y + hh * hh)


def _signed_sum(f: Any) -> Any:
    """The corner rectangles' (+, -, -, +) combination."""
    return f[0] - f[1] - f[2] + f[3]


def rect_solid_angle(h: Any, x0: Any, y0: Any, side: float = MPPC_SIDE, atan2: Any = None) -> Any:
    """Exact solid angle of a ``side`` x ``side`` square seen from a point at height ``h`` above
    its plane and offset (x0, y0) from its centre: atan t0 - atan t1 - atan t2 + atan t3 over the
    corner rectangles, t = x y / (h r). Zero for a point behind the plane (h <= 0). numpy arrays
    or torch tensors (the regressor's in-graph position fit, xec.models.solidfit, which passes its
    own float64 ``atan2``).

    The four arctangents are one: their sum is the argument of (1 + i t0)(1 - i t1)(1 - i t2)
    (1 + i t3), a single atan2 per sensor (the arctangents were most of the in-graph fit's time),
    folded to [0, 2 pi) (above pi only within ~0.4 cm of the square)."""
    xp, behind, x, y, hh, r = _corners(h, x0, y0, side)
    t = x * y / (hh * r)
    re_a, im_a = 1.0 + t[0] * t[1], t[0] - t[1]
    re_b, im_b = 1.0 + t[2] * t[3], t[3] - t[2]
    arg = (xp.arctan2 if atan2 is None else atan2)(re_a * im_b + im_a * re_b, re_a * re_b - im_a * im_b)
    omega = xp.where(arg < 0, arg + 2.0 * np.pi, arg)
    return xp.where(behind, 0.0, omega)


def rect_solid_angle_grad(h: Any, x0: Any, y0: Any, side: float = MPPC_SIDE) -> tuple[Any, Any, Any]:
    """Analytic derivatives (d/dh, d/dx0, d/dy0) of :func:`rect_solid_angle` (zero behind the
    plane), for the position fit's Jacobian: d atan(xy / (hr)) / dx = y h / ((x^2 + h^2) r),
    likewise in y, and / dh = -x y (r^2 + h^2) / ((x^2 + h^2)(y^2 + h^2) r); x = +-side/2 - x0."""
    xp, behind, x, y, hh, r = _corners(h, x0, y0, side)
    xh, yh = x * x + hh * hh, y * y + hh * hh
    d_h = _signed_sum(-x * y * (r * r + hh * hh) / (xh * yh * r))
    d_x0 = -_signed_sum(y * hh / (xh * r))
    d_y0 = -_signed_sum(x * hh / (yh * r))
    return tuple(xp.where(behind, 0.0, d) for d in (d_h, d_x0, d_y0))


def _dot(d: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N, K) dot products of offsets d (N, K, 3) with per-sensor vectors v (N, K, 3) or (K, 3)."""
    return np.einsum("nkc,nkc->nk", d, v) if v.ndim == 3 else np.einsum("nkc,kc->nk", d, v)


def gather_frames(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position, normal, phi tangent) of the MPPCs ``ids``, each ``ids.shape + (3,)``."""
    fr = inner_frames()
    return fr.pos[ids], fr.n[ids], fr.et[ids]


def inner_solid_angles(xyz: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N, K) solid angles of the MPPCs ``ids`` seen from points ``xyz`` (N, 3); ``ids`` (N, K),
    or (K,) for the same sensors from every point (no per-point copies of the sensor frames)."""
    return frame_solid_angles(xyz, gather_frames(ids))


def frame_solid_angles(xyz: np.ndarray, frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """:func:`inner_solid_angles` from the sensors' :func:`gather_frames`, for a caller that
    gathers them once and evaluates many points (the position fit)."""
    pos, n, et = frames
    d = xyz[:, None, :] - pos
    h = _dot(d, n)
    x0 = d[..., 2]  # ez = (0, 0, 1)
    y0 = _dot(d, et)
    return rect_solid_angle(h, x0, y0)


def _pmt_solid_angles(xyz: np.ndarray, ids: np.ndarray) -> np.ndarray:
    g = get_geometry()
    d = g.positions[ids] - xyz[:, None, :]
    dist2 = np.maximum(np.sum(d * d, axis=-1), 1e-4)
    cos = np.maximum(-_dot(d, g.normals[ids]) / np.sqrt(dist2), 0.0)
    return np.pi * PMT_RADIUS**2 * cos / dist2


def sensor_solid_angles(xyz: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N, K) solid angles of any sensors (MPPC: exact square; PMT: A cos(theta) / d^2); ``ids``
    (N, K), or (K,) for the same sensors from every point."""
    ids = np.asarray(ids)
    mppc = ids < 4092
    if ids.ndim == 1:  # each formula on its own sensors only
        out = np.zeros((len(xyz), len(ids)))
        if mppc.any():
            out[:, mppc] = inner_solid_angles(xyz, ids[mppc])
        if (~mppc).any():
            out[:, ~mppc] = _pmt_solid_angles(xyz, ids[~mppc])
        return out
    out = np.empty(ids.shape, np.float64)
    if mppc.any():
        # evaluate MPPCs with the exact formula (PMT ids replaced by 0 and overwritten below)
        out = np.where(mppc, inner_solid_angles(xyz, np.where(mppc, ids, 0)), 0.0)
    if (~mppc).any():
        out = np.where(~mppc, _pmt_solid_angles(xyz, ids), out)
    return out
