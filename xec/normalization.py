"""Input normalization: the one place that turns raw (npho, time) into network inputs and back.

npho_norm = T(npho / npho_scale) / npho_scale2 with T = log1p (default), sqrt, anscombe or
linear; time_norm = time / time_scale - time_shift.

Invalid-sensor rules (docs/architecture.md, "Artifact contracts"):
- npho > 9e9 or NaN: dead sensor, npho and time both set to the sentinel;
- npho below the transform's domain (negative photon counts, baseline noise): npho 0;
- npho below npho_threshold, |time| > 9e9 or NaN time: time set to the sentinel.

Every formula is written once, for numpy arrays and torch tensors alike (``npho_forward``,
``npho_inverse``, ``time_forward``, ``time_inverse``, ``apply``), so that a loss in photons or a
graph taking raw inputs uses the same expressions as the shards.

The preset travels with every artifact (``to_dict``/``from_dict``) and ``check_compatible``
turns a mismatch into an error instead of a silently wrong answer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xec.errors import XecError
from xec.utils import array_namespace

NPHO_TRANSFORMS = ("log1p", "sqrt", "anscombe", "linear")
INVALID_ABOVE = 9e9  # MEG II files mark dead/missing values with 1e10
# events per block of normalize_events: its float64 working copies of 32 events (1.2 MB each) stay
# in a core's cache, where whole 2,000-event chunks went through memory for every step
NORMALIZE_BLOCK = 32

PRESETS: dict[str, dict[str, Any]] = {
    "meg2": dict(
        npho_scale=1000.0,
        npho_scale2=4.08,
        time_scale=1.14e-7,
        time_shift=-0.46,
        sentinel=-1.0,
        npho_threshold=100.0,
        npho_transform="log1p",
    ),
    "legacy": dict(
        npho_scale=0.58,
        npho_scale2=1.0,
        time_scale=6.5e-8,
        time_shift=0.5,
        sentinel=-5.0,
        npho_threshold=100.0,
        npho_transform="log1p",
    ),
}


@dataclass(frozen=True)
class Normalizer:
    """Forward and inverse normalization with the invalid-sensor rules of one preset."""

    preset: str
    npho_scale: float
    npho_scale2: float
    time_scale: float
    time_shift: float
    sentinel: float
    npho_threshold: float
    npho_transform: str = "log1p"

    def __post_init__(self) -> None:
        if self.npho_transform not in NPHO_TRANSFORMS:
            raise XecError(f"unknown npho transform {self.npho_transform!r}; choose one of {NPHO_TRANSFORMS}")
        for name in ("npho_scale", "npho_scale2", "time_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise XecError(f"normalization parameter {name} must be a positive finite number, got {value!r}")
        for name in ("time_shift", "sentinel", "npho_threshold"):
            if not math.isfinite(getattr(self, name)):
                raise XecError(f"normalization parameter {name} must be finite, got {getattr(self, name)!r}")
        if self.npho_threshold < 0:
            raise XecError(f"normalization parameter npho_threshold must be >= 0, got {self.npho_threshold}")
        if self.sentinel >= 0:
            # Normalized npho is >= 0, so a non-negative sentinel would be ambiguous.
            raise XecError(f"normalization sentinel must be negative, got {self.sentinel}")

    # ------------------------------------------------------------------ the formulas (numpy or torch)
    def npho_forward(self, npho: Any, out: np.ndarray | None = None) -> Any:
        """Photons (>= 0) -> normalized npho, no invalid-value rules (numpy array or torch tensor).
        ``out`` (numpy): the result is written there; with log1p the steps then run in place,
        ``npho`` overwritten on the way (no temporaries, the same numbers: normalize_events)."""
        xp = array_namespace(npho)
        if out is not None and self.npho_transform == "log1p":
            np.divide(npho, self.npho_scale, out=npho)
            np.log1p(npho, out=npho)
            return np.divide(npho, self.npho_scale2, out=out, casting="unsafe")
        r = npho / self.npho_scale
        if self.npho_transform == "log1p":
            y = xp.log1p(r)
        elif self.npho_transform == "sqrt":
            y = xp.sqrt(r)
        elif self.npho_transform == "anscombe":
            y = 2.0 * xp.sqrt(r + 0.375) - 2.0 * math.sqrt(0.375)  # shifted so that npho 0 -> 0
        else:
            y = r
        if out is not None:
            out[...] = y / self.npho_scale2
            return out
        return y / self.npho_scale2

    def npho_inverse(self, npho_n: Any) -> Any:
        """Normalized npho -> photons, no sentinel handling (numpy array or torch tensor)."""
        xp = array_namespace(npho_n)
        z = npho_n * self.npho_scale2
        if self.npho_transform == "log1p":
            # torch: exp - 1, as ONNX (opset 17) has no Expm1; the absolute difference is ~1e-7
            # of npho_scale, far below a photon
            r = np.expm1(z) if xp is np else xp.exp(z) - 1.0
        elif self.npho_transform == "sqrt":
            r = xp.square(z.clip(min=0.0))
        elif self.npho_transform == "anscombe":
            r = xp.square((z + 2.0 * math.sqrt(0.375)).clip(min=0.0) / 2.0) - 0.375
        else:
            r = z
        return r * self.npho_scale

    def time_forward(self, time: Any) -> Any:
        """Seconds -> normalized time, no invalid-value rules."""
        return time / self.time_scale - self.time_shift

    def time_inverse(self, time_n: Any) -> Any:
        """Normalized time -> seconds, no sentinel handling."""
        return (time_n + self.time_shift) * self.time_scale

    def apply(self, npho: Any, time: Any) -> tuple[Any, Any]:
        """Raw npho (photons) and time (s) -> normalized (npho, time) with the invalid-sensor
        rules, in the arrays' own type and precision (numpy array or torch tensor)."""
        xp = array_namespace(npho)
        zero, sentinel = xp.zeros_like(npho), xp.full_like(npho, self.sentinel)
        dead = xp.isnan(npho) | (npho > INVALID_ABOVE)
        clean = xp.where(dead | (npho < 0.0), zero, npho)  # below the domain (also -inf): no light
        # NaN-safe: a NaN time fails the comparison
        no_time = dead | (clean < self.npho_threshold) | ~(xp.abs(time) <= INVALID_ABOVE)
        npho_n = xp.where(dead, sentinel, self.npho_forward(clean))
        time_n = xp.where(no_time, sentinel, self.time_forward(xp.where(no_time, zero, time)))
        return npho_n, time_n

    # ------------------------------------------------------------------ forward
    def normalize(self, npho: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw npho (photons) and time (s) -> normalized float32 arrays of the same shape
        (computed in float64)."""
        npho = np.asarray(npho, dtype=np.float64)
        time = np.asarray(time, dtype=np.float64)
        if npho.shape != time.shape:
            raise XecError(f"npho and time shapes differ: {npho.shape} vs {time.shape}")
        with np.errstate(invalid="ignore", over="ignore"):
            npho_n, time_n = self.apply(npho, time)
        return npho_n.astype(np.float32), time_n.astype(np.float32)

    def normalize_events(
        self,
        npho: np.ndarray,
        time: np.ndarray,
        out: np.ndarray | None = None,
        precision: str = "float64",
        block: int = NORMALIZE_BLOCK,
    ) -> np.ndarray:
        """(N, S) npho and time -> (N, S, 2) float32 network input (into ``out`` when given).

        The numbers of :meth:`apply` in float64, bit for bit (tests/test_normalization.py holds
        them equal on every invalid-value case), with the rules applied as masks after the
        formulas run in place on one working copy, the last step of each written straight into
        the interleaved output: ~4x less CPU time than ``apply`` for the shards and for ``xec
        infer``'s normalization (docs/performance.md, "Inference"). The events go in blocks of
        ``block`` (NORMALIZE_BLOCK), so that the working copies stay in the core's cache (float64 on 2,000-event
        chunks: 44-48 -> 28-30 us/event, benchmarks/normalization.py).

        ``precision="float32"`` (``xec infer``) runs the same steps in float32, another ~1.5x
        less CPU time: the same masks for float32 inputs (ROOT's branches), values within 2 float32
        ulp of max(|value|, 1) of the float64 numbers (far inside the export parity tolerances)."""
        dtype = {"float64": np.float64, "float32": np.float32}.get(precision)
        if dtype is None:
            raise XecError(f"normalization precision must be float64 or float32, got {precision!r}")
        npho, time = np.asarray(npho), np.asarray(time)
        if npho.shape != time.shape:
            raise XecError(f"npho and time shapes differ: {npho.shape} vs {time.shape}")
        if out is None:
            out = np.empty(npho.shape + (2,), np.float32)
        if npho.ndim < 2:
            self._normalize_block(npho, time, out, dtype)
            return out
        for s in range(0, len(npho), block):
            rows = slice(s, s + block)
            self._normalize_block(npho[rows], time[rows], out[rows], dtype)
        return out

    def _normalize_block(self, npho: np.ndarray, time: np.ndarray, out: np.ndarray, dtype: type) -> None:
        npho_out, time_out = out[..., 0], out[..., 1]
        with np.errstate(invalid="ignore", over="ignore"):
            live = npho <= INVALID_ABOVE  # NaN fails the comparison: dead
            n = np.maximum(npho, 0.0, dtype=dtype)  # below the domain (also -inf): no light
            no_time = n < self.npho_threshold
            no_time |= ~live
            t = np.abs(time, dtype=dtype)
            no_time |= ~(t <= INVALID_ABOVE)  # NaN-safe: a NaN time fails the comparison
            # straight into the interleaved output (n is a scratch copy); dead and timeless
            # sensors are computed like the others, then overwritten
            self.npho_forward(n, out=npho_out)
            np.copyto(npho_out, self.sentinel, where=~live)
            np.divide(time, self.time_scale, out=t, dtype=dtype)
            np.subtract(t, self.time_shift, out=time_out, casting="unsafe")
            np.copyto(time_out, self.sentinel, where=no_time)

    # ------------------------------------------------------------------ inverse
    def denormalize_npho(self, npho_n: np.ndarray) -> np.ndarray:
        """Normalized npho -> photons; the sentinel maps to NaN."""
        y = np.asarray(npho_n, dtype=np.float64)
        with np.errstate(over="ignore"):
            return np.where(y == np.float32(self.sentinel), np.nan, self.npho_inverse(y))

    def denormalize_time(self, time_n: np.ndarray) -> np.ndarray:
        """Normalized time -> seconds; the sentinel maps to NaN."""
        y = np.asarray(time_n, dtype=np.float64)
        return np.where(y == np.float32(self.sentinel), np.nan, self.time_inverse(y))

    def time_scale_ns(self) -> float:
        """Nanoseconds per unit of normalized time (for errors in physical units)."""
        return self.time_scale * 1e9

    # ------------------------------------------------------------------ artifacts
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise XecError(f"unknown normalization parameters: {sorted(unknown)}")
        return cls(**d)

    def check_compatible(self, other: Normalizer | dict[str, Any], where: str) -> None:
        """Raise XecError if ``other`` (e.g. read from a manifest or checkpoint) differs."""
        other_n = other if isinstance(other, Normalizer) else Normalizer.from_dict(dict(other))
        if other_n != self:
            diffs = [
                f"{k}: {getattr(self, k)!r} != {getattr(other_n, k)!r}"
                for k in self.to_dict()
                if getattr(self, k) != getattr(other_n, k)
            ]
            raise XecError(f"normalization mismatch with {where}: " + "; ".join(diffs))


def get_normalizer(preset: str = "meg2", **overrides: Any) -> Normalizer:
    """The normalizer of a named preset, with optional parameter overrides."""
    if preset not in PRESETS:
        raise XecError(f"unknown normalization preset {preset!r}; known presets: {sorted(PRESETS)}")
    params = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(params) - {f.name for f in dataclasses.fields(Normalizer)}
    if unknown:
        raise XecError(f"unknown normalization parameters: {sorted(unknown)}")
    return Normalizer(preset=preset, **params)


def normalizer_from_config(cfg: Mapping[str, Any]) -> Normalizer:
    """The normalizer described by a validated config's ``normalization`` section: ``preset``
    (schema default) plus the parameters set explicitly (the others have no default: absent)."""
    section = dict(cfg["normalization"])  # a flat section: a shallow copy to pop from
    preset = section.pop("preset")
    return get_normalizer(preset, **section)
