"""Hyperparameter / architecture scans: the ``scans:`` section of the config, its points and their ranking.

A scan is a set of *points*; each point is the main config with a few dotted-key overrides
(``{"regressor.lr": 1e-3}``, applied as :func:`xec.config.set_dotted`). The config gives them
either as a ``grid`` (cartesian product of value lists) or as an explicit ``points`` list::

    scans:
      reg_lr:
        rank_by: uvw_68_mm          # a name of METRICS; lower is better unless higher_is_better
        grid:
          regressor.lr: [1.0e-3, 3.0e-3]
          model.peak_hidden: [256, 512]

The workflow trains and evaluates every point in ``results/scans/<scan>/<point>/`` (the point's
directory name is :func:`point_name`), and ``xec scan-summary`` (:mod:`xec.scan_cli`) ranks them
by :func:`point_metrics` of each point's physics summary and regressor ``metrics.json``.

:func:`expand_scans` checks a whole config before anything runs: every problem is one
:class:`~xec.errors.XecError` naming the scan (and the key where there is one).

This module imports neither torch nor matplotlib (the Snakefile imports it).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xec.config import load_schema, set_dotted, validate_config
from xec.errors import XecError

# ----------------------------------------------------------------------------- metrics
# Observables of the physics summary (keys of xec.summary.OBSERVABLES) -> metric prefix and unit.
_SUMMARY_OBSERVABLES = {
    "u": ("u_mm", "u_68_mm"),
    "v": ("v_mm", "v_68_mm"),
    "w": ("w_mm", "w_68_mm"),
    "energy": ("energy_pct", "energy_68_pct"),
    "time": ("time_ps", "time_68_ps"),
    "theta": ("theta_deg", "theta_68_deg"),
    "phi": ("phi_deg", "phi_68_deg"),
}
# Which part of the summary a point is judged on: the val sample (choices are made on val, never
# on bench), the ML method against the classical one, all depths together: all events, and
# (metrics ending in ``_fid``) inside the fiducial volume (summary.fiducial), where physicists
# quote resolutions. The bench sample only confirms: the table shows the ranking metric on it too.
SUMMARY_SAMPLE, ML_METHOD, CLASSICAL_METHOD, DEPTH_CLASS = "val", "ml", "baseline", "all"
CONFIRM_SAMPLE = "bench"
FIDUCIAL_CLASS, FIDUCIAL_SUFFIX = "fiducial", "_fid"

METRICS: dict[str, str] = {
    "u_68_mm": "val u resolution of the ML (68 % half-width, mm)",
    "v_68_mm": "val v resolution of the ML (68 % half-width, mm)",
    "w_68_mm": "val w (depth) resolution of the ML (68 % half-width, mm)",
    "uvw_68_mm": "mean of u_68_mm, v_68_mm and w_68_mm (mm)",
    "energy_68_pct": "val energy resolution of the ML, E_reco/E_true - 1 (68 % half-width, %)",
    "energy_core_pct": "val energy resolution of the ML (sigma of the Gaussian core fit, %)",
    "time_68_ps": "val time resolution of the ML (68 % half-width, ps)",
    "theta_68_deg": "val theta resolution of the ML (68 % half-width, deg)",
    "phi_68_deg": "val phi resolution of the ML (68 % half-width, deg)",
    "opening68_deg": "val 68 % quantile of the ML's angle to the true direction (deg)",
    "u_ratio": "u_68_mm of the ML / the classical reconstruction's (< 1: ML better)",
    "v_ratio": "v_68_mm of the ML / the classical reconstruction's",
    "w_ratio": "w_68_mm of the ML / the classical reconstruction's",
    "uvw_ratio": "uvw_68_mm of the ML / the classical reconstruction's (ratio of the means)",
    "energy_ratio": "energy_68_pct of the ML / the classical reconstruction's",
    "time_ratio": "time_68_ps of the ML / the classical reconstruction's",
    "theta_ratio": "theta_68_deg of the ML / the classical reconstruction's",
    "phi_ratio": "phi_68_deg of the ML / the classical reconstruction's",
    "opening68_ratio": "opening68_deg of the ML / the classical reconstruction's",
}
# the same physics metrics inside the fiducial volume
PHYSICS_METRICS = tuple(METRICS)
METRICS.update({f"{k}{FIDUCIAL_SUFFIX}": f"{v}; inside the fiducial volume" for k, v in list(METRICS.items())})
# the metrics a summary sample gives (all events and fiducial); the rest come from the training
SAMPLE_METRICS = tuple(METRICS)
METRICS |= {
    "val_loss": "best validation loss of the regressor (metrics.json best.value)",
    "train_time_s": "regressor training time: sum of epoch_time_s over its epochs (s)",
    "events_per_s": "regressor training throughput of the last epoch (events/s; higher is better)",
}

NAN = float("nan")


def _number(x: Any) -> float:
    """A finite float, else NaN (JSON null, a missing entry, inf, a string: not a usable number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return NAN
    x = float(x)
    return x if math.isfinite(x) else NAN


def _get(tree: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else NAN


def point_metrics(summary: Mapping[str, Any], regressor_metrics: Mapping[str, Any]) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one point: from its physics summary (the JSON of
    ``xec summary``: val sample, ML vs the classical method, all events; the ``_fid`` metrics
    inside the fiducial volume) and the
    regressor's ``metrics.json``. A number that is missing (or null/inf) is NaN, never an error,
    so that one point with a partial summary still gets a row (ranked last)."""
    out = sample_metrics(summary, SUMMARY_SAMPLE)

    out["val_loss"] = _number(_get(regressor_metrics, "best", "value"))
    history = _get(regressor_metrics, "history")
    history = history if isinstance(history, list) and history else None
    if history is None:
        out["train_time_s"] = out["events_per_s"] = NAN
    else:
        # math.fsum of the per-epoch times; a missing epoch time makes the total unknown (NaN)
        out["train_time_s"] = math.fsum(_number(_get(row, "epoch_time_s")) for row in history)
        out["events_per_s"] = _number(_get(history[-1], "events_per_s"))
    return {name: out[name] for name in METRICS}


def sample_metrics(summary: Mapping[str, Any], sample: str) -> dict[str, float]:
    """The :data:`SAMPLE_METRICS` of one sample of a summary (``val`` ranks, ``bench``
    confirms); NaN where a number is missing."""
    methods = _get(summary, sample, "methods")
    out: dict[str, float] = {}
    for cls, suffix in ((DEPTH_CLASS, ""), (FIDUCIAL_CLASS, FIDUCIAL_SUFFIX)):
        out.update({f"{k}{suffix}": v for k, v in _physics_metrics(methods, cls).items()})
    return out


def _physics_metrics(methods: Any, cls: str) -> dict[str, float]:
    """The :data:`PHYSICS_METRICS` of one class of events (``all`` or ``fiducial``)."""
    out: dict[str, float] = {}
    classical: dict[str, float] = {}
    for prefix, (obs, name) in _SUMMARY_OBSERVABLES.items():
        out[name] = _number(_get(methods, ML_METHOD, obs, cls, "width68"))
        classical[prefix] = _number(_get(methods, CLASSICAL_METHOD, obs, cls, "width68"))
    out["energy_core_pct"] = _number(_get(methods, ML_METHOD, "energy_pct", cls, "sigma_core"))
    out["opening68_deg"] = _number(_get(methods, ML_METHOD, "opening68_deg", cls, "value"))
    classical["opening68"] = _number(_get(methods, CLASSICAL_METHOD, "opening68_deg", cls, "value"))
    # NaN propagates: a mean over a missing coordinate is no mean
    out["uvw_68_mm"] = (out["u_68_mm"] + out["v_68_mm"] + out["w_68_mm"]) / 3.0
    classical["uvw"] = (classical["u"] + classical["v"] + classical["w"]) / 3.0
    for prefix, (_obs, name) in _SUMMARY_OBSERVABLES.items():
        out[f"{prefix}_ratio"] = _ratio(out[name], classical[prefix])
    out["uvw_ratio"] = _ratio(out["uvw_68_mm"], classical["uvw"])
    out["opening68_ratio"] = _ratio(out["opening68_deg"], classical["opening68"])
    return {k: out[k] for k in PHYSICS_METRICS}


def rank_points(rows: list[dict[str, Any]], rank_by: str, higher_is_better: bool = False) -> list[dict[str, Any]]:
    """``rows`` (dicts holding ``rank_by``) sorted best first, as new dicts with ``rank``
    (1-based, consecutive; ties keep their input order) and ``best`` (True for the first row only,
    and only when its value is finite). Rows whose value is missing or NaN come last."""

    def key(item: tuple[int, dict[str, Any]]) -> tuple[bool, float, int]:
        i, row = item
        v = _number(row.get(rank_by))
        if math.isnan(v):
            return (True, 0.0, i)
        return (False, -v if higher_is_better else v, i)

    ranked = []
    for rank, (_i, row) in enumerate(sorted(enumerate(rows), key=key), start=1):
        finite = not math.isnan(_number(row.get(rank_by)))
        ranked.append({**row, "rank": rank, "best": rank == 1 and finite})
    return ranked


# ----------------------------------------------------------------------------- point names
MAX_NAME = 100  # longer names are cut and get a hash suffix
_HASH_CHARS = 12
_HASH_SEP = "__"  # only hashed names contain it (see _decode_name)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.]+")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9.-]+")
_INT = re.compile(r"-?[0-9]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
DEFAULT_POINT = "default"  # the name of a point without overrides (the main config itself)


def _encode_value(value: Any) -> str:
    """The readable form of one override value (floats in their shortest repr form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value).replace("+", "")  # 1e+20 -> 1e20 (still the same float)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "x".join(_encode_value(v) for v in value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _decode_scalar(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _decode_value(text: str) -> Any:
    if not text or not _PLAIN_VALUE.fullmatch(text):
        raise ValueError(text)
    if "x" in text:
        parts = [_decode_scalar(p) if p else "" for p in text.split("x")]
        if all(not isinstance(p, str) for p in parts):
            return parts
    return _decode_scalar(text)


def _decode_name(name: str) -> dict[str, Any] | None:
    """The overrides that a readable (unhashed) name stands for, or None when the name is not one.
    Deterministic, so two different override sets can never both get the same readable name:
    :func:`point_name` uses the readable form only where this gives the overrides back."""
    if name == DEFAULT_POINT:
        return {}
    if _HASH_SEP in name:
        return None
    out: dict[str, Any] = {}
    rest = name
    while rest:
        key, sep, rest = rest.partition("-")  # keys have no "-": the value starts at the first
        if not sep or not _PLAIN_KEY.fullmatch(key) or key in out:
            return None
        value, sep, rest = rest.partition("_")  # values have no "_": the next key starts after it
        if sep and not rest:
            return None
        try:
            out[key] = _decode_value(value)
        except ValueError:
            return None
    return out


def _canonical(overrides: Mapping[str, Any]) -> str:
    # json tells 1, 1.0 and true apart, as the readable names do
    return json.dumps(dict(overrides), sort_keys=True, separators=(",", ":"), default=str)


def point_name(overrides: Mapping[str, Any]) -> str:
    """A stable, readable, filesystem-safe directory name for a point's overrides, independent of
    their order: ``key-value`` pairs sorted by key and joined with ``_``, e.g.
    ``model.peak_hidden-256_regressor.lr-0.001`` (floats in shortest repr form, lists joined with
    ``x``: ``model.rect_dims-32x64``); ``default`` for no overrides. Where that form would be
    ambiguous (a string with ``_``, a one-element list, a nested mapping, a key with ``-``, ...)
    or longer than :data:`MAX_NAME` characters, the name is a cleaned-up readable prefix, ``__``
    and a 12-character hash of the overrides. Different overrides never share a name (up to a
    48-bit hash collision, which :func:`expand_scans` would still report)."""
    keys = sorted(overrides)
    readable = "_".join(f"{k}-{_encode_value(overrides[k])}" for k in keys) if keys else DEFAULT_POINT
    decoded = _decode_name(readable)
    if len(readable) <= MAX_NAME and decoded is not None and _canonical(decoded) == _canonical(overrides):
        return readable
    digest = hashlib.sha256(_canonical(overrides).encode()).hexdigest()[:_HASH_CHARS]
    prefix = _UNSAFE.sub("_", readable).strip("_")[: MAX_NAME - len(_HASH_SEP) - _HASH_CHARS]
    return f"{prefix}{_HASH_SEP}{digest}" if prefix else digest


# ----------------------------------------------------------------------------- expansion
@dataclass(frozen=True)
class ScanPoint:
    """One point of a scan: ``overrides`` (dotted key -> value, keys sorted) and ``config`` (the
    validated main config with those overrides applied, without the ``scans`` section)."""

    scan: str
    name: str
    overrides: dict[str, Any]
    config: dict[str, Any]


def _resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def schema_knows(key: str) -> bool:
    """True when the dotted ``key`` names a config key of the schema (following ``properties``,
    mapping-valued ``additionalProperties`` such as ``simulation.samples.<name>``, and ``$ref``)."""
    schema = load_schema()
    node: Mapping[str, Any] = schema
    for part in key.split("."):
        node = _resolve(node, schema)
        props = node.get("properties") or {}
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), Mapping) and part:
            node = node["additionalProperties"]
        else:
            return False
    return True


def _check_keys(scan: str, keys: list[Any], where: str) -> list[str]:
    """The keys sorted, after checking (in that order) that each is a known config key and that no
    key contains another."""
    for key in keys:
        if not isinstance(key, str) or not key:
            raise XecError(f"scans.{scan}: {where}: override key {key!r} is not a dotted config key")
    ordered = sorted(keys)
    for key in ordered:
        if key == "scans" or key.startswith("scans."):
            raise XecError(f"scans.{scan}: {where}: key {key!r}: a scan cannot override the scans section")
        if not schema_knows(key):
            raise XecError(f"scans.{scan}: {where}: key {key!r} is not a config key (xec/config.schema.yaml)")
    # "model" and "model.preset" in one point: the result would depend on the order they are applied
    present = set(ordered)
    for key in ordered:
        parts = key.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in present:
                raise XecError(f"scans.{scan}: {where}: keys {parent!r} and {key!r} overlap (one contains the other)")
    return ordered


def scan_point_overrides(scan: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The overrides of every point of one scan section, in the scan's order (grid: cartesian
    product over the sorted keys, the last key varying fastest, values in their given order),
    each with its keys sorted. Checks what needs no main config: ``rank_by`` is a name of
    :data:`METRICS`, exactly one non-empty ``grid`` or ``points``, keys known to the schema and
    not overlapping. XecError naming the scan (and key) otherwise."""
    if not isinstance(spec, Mapping):
        raise XecError(f"scans.{scan}: expected a mapping with rank_by and grid or points, got {spec!r}")
    rank_by = spec.get("rank_by")
    if rank_by not in METRICS:
        raise XecError(f"scans.{scan}: rank_by {rank_by!r} is not a scan metric; known: {', '.join(METRICS)}")
    if not isinstance(spec.get("higher_is_better", False), bool):
        raise XecError(f"scans.{scan}: higher_is_better must be true or false")
    has_grid, has_points = "grid" in spec, "points" in spec
    if has_grid == has_points:
        raise XecError(f"scans.{scan}: give exactly one of grid and points")
    if has_grid:
        grid = spec["grid"]
        if not isinstance(grid, Mapping) or not grid:
            raise XecError(f"scans.{scan}: grid: empty (give at least one key: [values])")
        keys = _check_keys(scan, list(grid), "grid")
        for key in keys:
            if not isinstance(grid[key], (list, tuple)) or not grid[key]:
                raise XecError(f"scans.{scan}: grid: key {key!r}: expected a non-empty list of values")
        return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    points = spec["points"]
    if not isinstance(points, (list, tuple)) or not points:
        raise XecError(f"scans.{scan}: points: empty (give at least one mapping of key: value)")
    out = []
    for i, point in enumerate(points, start=1):
        if not isinstance(point, Mapping):
            raise XecError(f"scans.{scan}: points: point {i} is not a mapping of key: value")
        keys = _check_keys(scan, list(point), f"point {i}")
        out.append({k: point[k] for k in keys})
    return out


def _freeze(obj: Any) -> Any:
    """A hashable form that compares like ``==`` does on configs (1 == 1.0), for duplicate checks."""
    if isinstance(obj, Mapping):
        return ("map", tuple(sorted((str(k), _freeze(v)) for k, v in obj.items())))
    if isinstance(obj, (list, tuple)):
        return ("seq", tuple(_freeze(v) for v in obj))
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return (type(obj).__name__, obj)
    if isinstance(obj, (int, float)):
        return ("num", float(obj) if not math.isnan(obj) else "nan")
    return ("other", repr(obj))


def expand_scans(cfg: Mapping[str, Any]) -> dict[str, list[ScanPoint]]:
    """All scans of a validated config (scans in config order) -> their points in a stable order
    (see :func:`scan_point_overrides`). Each point's config is validated on its own. One XecError,
    before anything runs, for: an unknown or overlapping override key, a ``scans`` key override,
    an empty grid or points list, a point whose config the schema refuses, two points of a scan
    with the same config, a ``rank_by`` that is not in :data:`METRICS`."""
    scans = cfg.get("scans") or {}
    if not isinstance(scans, Mapping):
        raise XecError(f"scans: expected a mapping of scan name -> scan, got {type(scans).__name__}")
    base = {k: v for k, v in cfg.items() if k != "scans"}
    out: dict[str, list[ScanPoint]] = {}
    for scan, spec in scans.items():
        points: list[ScanPoint] = []
        seen_configs: dict[Any, ScanPoint] = {}
        seen_names: dict[str, ScanPoint] = {}
        for overrides in scan_point_overrides(scan, spec):
            name = point_name(overrides)
            point_cfg = copy.deepcopy(base)
            for key, value in overrides.items():
                try:
                    set_dotted(point_cfg, key, copy.deepcopy(value))
                except (AttributeError, TypeError):
                    raise XecError(f"scans.{scan}: point {name}: key {key!r} cannot be set in this config") from None
            try:
                validate_config(point_cfg, source=f"scans.{scan} point {name}")
            except XecError as exc:
                detail = str(exc).removeprefix("invalid configuration:").strip()
                raise XecError(f"scans.{scan}: point {name} gives an invalid config:\n  {detail}") from None
            point_cfg.pop("scans", None)  # filled back in by the schema default
            point = ScanPoint(scan=scan, name=name, overrides=dict(overrides), config=point_cfg)
            frozen = _freeze(point_cfg)
            if frozen in seen_configs:
                other = seen_configs[frozen]
                same = "appears twice" if other.name == name else f"and point {other.name} resolve to the same config"
                keys = ", ".join(sorted(set(overrides) | set(other.overrides))) or "no overrides"
                raise XecError(f"scans.{scan}: point {name} {same} (keys: {keys}); drop one of them")
            if name in seen_names:  # distinct overrides with one name: only a hash collision gets here
                other = seen_names[name].overrides
                raise XecError(f"scans.{scan}: points {overrides} and {other} share the name {name}")
            seen_configs[frozen] = seen_names[name] = point
            points.append(point)
        out[scan] = points
    return out
