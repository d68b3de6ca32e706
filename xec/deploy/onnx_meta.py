"""ONNX model metadata: the one place that writes and reads the ``metadata_props`` of the
models that ``xec export`` produces and ``xec infer`` (or any MEG II inference script) consumes.

Every value is a string (ONNX ``metadata_props`` are string -> string); structured values are
JSON. Keys:

=====================  ==========================================================================
key                    value
=====================  ==========================================================================
xec_format             metadata format version ("2": sigma outputs; "1" models, without them, still read)
stage                  "regressor" or "inpainter"
normalization_preset   preset name, e.g. "meg2"
normalization          JSON of ``Normalizer.to_dict()`` (all parameters, the preset included)
inputs                 JSON list of input names, e.g. ["input"] or ["input", "mask"]
outputs                JSON list of output names: ``output_<task>`` per task, then
                       ``output_<task>_sigma`` per sigma task, e.g. ["output_angle", ...,
                       "output_energy_sigma", "output_timing_sigma", "output_uvwFI_sigma"]
tasks                  JSON list of task names (regressor; [] for the inpainter)
sigma_tasks            JSON list of the tasks with a per-event uncertainty output (may be [])
units                  JSON {task: unit} (angle deg, energy GeV, timing ns, uvwFI cm); an
                       ``output_<task>_sigma`` (B, dim) is the per-event 1-sigma uncertainty of
                       ``output_<task>``, component by component, in the same unit
columns                JSON {task: [column names]} (angle: theta, phi; uvwFI: u, v, w ...)
target_standardization JSON of ``TargetStandardizer.to_dict()`` (already applied inside the graph;
                       kept for reference only)
sigma_calibration      JSON {task: {"log_sigma": [[knots] per column], "log_factor": [[c] per
                       column]}}: the monotone map fitted on val (its signal-region events,
                       regressor.sigma.calibration_energy_mev; 68 % half-width of the val
                       pulls = 1 in each quantile bin of the raw sigma; log sigma_cal =
                       log sigma + c, c piecewise linear in log sigma, constant outside the
                       knots; xec.models.sigma_calibration), already applied inside the graph;
                       kept for reference only (older files: {task: [scale per column]})
io_units               "normalized" (inputs/outputs in the preset's normalized units; absent in
                       older files: the same) or "raw" (inpainter with the normalization inside
                       the graph: raw photons and seconds in and out, ``units`` per tensor)
description            free text on how to call the model (raw-unit inpainter: pass-through)
xec_version, torch_version, onnx_version, opset     versions of the exporting software
=====================  ==========================================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xec.errors import XecError
from xec.normalization import Normalizer
from xec.targets import get_task

FORMAT_VERSION = "2"
STAGES = ("regressor", "inpainter")
REQUIRED_KEYS = ("stage", "normalization", "inputs", "outputs", "tasks")
IO_UNITS = ("normalized", "raw")


@dataclass(frozen=True)
class ModelMetadata:
    """The parsed metadata of one exported model."""

    stage: str
    normalizer: Normalizer
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    units: dict[str, str] = field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    target_standardization: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    sigma_tasks: tuple[str, ...] = ()
    sigma_calibration: dict[str, Any] | None = None
    io_units: str = "normalized"
    description: str = ""

    def output_name(self, task: str) -> str:
        return f"output_{task}"

    def sigma_output_name(self, task: str) -> str:
        return f"output_{task}_sigma"

    def to_props(self) -> dict[str, str]:
        props = {
            "xec_format": FORMAT_VERSION,
            "stage": self.stage,
            "normalization_preset": self.normalizer.preset,
            "normalization": json.dumps(self.normalizer.to_dict(), sort_keys=True),
            "inputs": json.dumps(list(self.inputs)),
            "outputs": json.dumps(list(self.outputs)),
            "tasks": json.dumps(list(self.tasks)),
            "units": json.dumps(self.units, sort_keys=True),
            "columns": json.dumps({k: list(v) for k, v in self.columns.items()}, sort_keys=True),
            "target_standardization": json.dumps(self.target_standardization, sort_keys=True),
            "sigma_tasks": json.dumps(list(self.sigma_tasks)),
            "sigma_calibration": json.dumps(self.sigma_calibration, sort_keys=True),
        }
        props.update({k: str(v) for k, v in self.versions.items()})
        props["io_units"] = self.io_units
        if self.description:
            props["description"] = self.description
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> ModelMetadata:
        """Parse ``metadata_props``; ``where`` (the file) names the culprit in every error."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise XecError(f"{where}: ONNX model has no xec metadata (missing {missing}); export it with `xec export`")
        try:
            stage = props["stage"]
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r} (expected one of {STAGES})")
            normalizer = Normalizer.from_dict(json.loads(props["normalization"]))
            preset = props.get("normalization_preset")
            if preset is not None and preset != normalizer.preset:
                raise ValueError(f"normalization_preset {preset!r} disagrees with normalization {normalizer.preset!r}")
            tasks = tuple(json.loads(props["tasks"]))
            for t in tasks:
                get_task(t)
            units = dict(json.loads(props.get("units", "{}")))
            columns = {k: tuple(v) for k, v in json.loads(props.get("columns", "{}")).items()}
            ts = json.loads(props.get("target_standardization", "null"))
            sigma_tasks = tuple(json.loads(props.get("sigma_tasks", "[]")))  # format 1: none
            unknown = [t for t in sigma_tasks if t not in tasks]
            if unknown:
                raise ValueError(f"sigma_tasks {unknown} are not among the tasks {list(tasks)}")
            io_units = props.get("io_units", "normalized")
            if io_units not in IO_UNITS or (io_units == "raw" and stage != "inpainter"):
                raise ValueError(
                    f"io_units {io_units!r} for a {stage} (expected one of {IO_UNITS}; raw: inpainter only)"
                )
            meta = cls(
                stage=stage,
                normalizer=normalizer,
                inputs=tuple(json.loads(props["inputs"])),
                outputs=tuple(json.loads(props["outputs"])),
                tasks=tasks,
                units=units,
                columns=columns,
                target_standardization=ts,
                sigma_tasks=sigma_tasks,
                sigma_calibration=json.loads(props.get("sigma_calibration", "null")),
                versions={k: props[k] for k in ("xec_version", "torch_version", "onnx_version", "opset") if k in props},
                io_units=io_units,
                description=props.get("description", ""),
            )
        except XecError as exc:
            raise XecError(f"{where}: bad xec metadata: {exc}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise XecError(f"{where}: bad xec metadata: {exc}") from exc
        if stage == "regressor":
            expected = regressor_outputs(tasks, sigma_tasks)
            if not tasks or meta.outputs != expected:
                raise XecError(
                    f"{where}: regressor metadata lists outputs {list(meta.outputs)} for tasks "
                    f"{list(tasks)} (sigma tasks {list(sigma_tasks)}); expected {list(expected)}"
                )
        return meta


def regressor_outputs(tasks: Sequence[str], sigma_tasks: Sequence[str] = ()) -> tuple[str, ...]:
    """The regressor's output names, in graph order: the predictions, then the sigmas."""
    return (*(f"output_{t}" for t in tasks), *(f"output_{t}_sigma" for t in sigma_tasks))


def regressor_metadata(
    normalizer: Normalizer,
    tasks: Sequence[str],
    target_standardization: dict | None,
    versions: Mapping[str, str],
    sigma_tasks: Sequence[str] = (),
    sigma_calibration: Mapping[str, Any] | None = None,
) -> ModelMetadata:
    """Metadata of an exported regressor (units and columns come from xec.targets)."""
    task_objs = [get_task(t) for t in tasks]
    unknown = [t for t in sigma_tasks if t not in tasks]
    if unknown:
        raise XecError(f"sigma tasks {unknown} are not among the tasks {list(tasks)}")
    return ModelMetadata(
        stage="regressor",
        normalizer=normalizer,
        inputs=("input",),
        outputs=regressor_outputs(tasks, sigma_tasks),
        sigma_tasks=tuple(sigma_tasks),
        sigma_calibration=None if sigma_calibration is None else dict(sigma_calibration),
        tasks=tuple(t.name for t in task_objs),
        units={t.name: t.unit for t in task_objs},
        columns={t.name: t.columns for t in task_objs},
        target_standardization=target_standardization,
        versions=dict(versions),
    )


def inpainter_metadata(normalizer: Normalizer, versions: Mapping[str, str]) -> ModelMetadata:
    return ModelMetadata(
        stage="inpainter", normalizer=normalizer, inputs=("input", "mask"), outputs=("output",), versions=dict(versions)
    )


RAW_INPAINTER_DESCRIPTION = (
    "Raw-unit inpainter: inputs npho (photons; dead = 1e10 or NaN) and relative_time (s; no time = 1e10), "
    "float32 (B, 4760), and mask (B, 4760), 1 = fill; the preset's normalization is applied inside the graph. "
    "Outputs output_npho (photons) and output_relative_time (s; 1e10 where the filled npho is below the time "
    "threshold): masked and dead sensors filled, every other sensor passed through bit-exactly."
)


def raw_inpainter_metadata(normalizer: Normalizer, versions: Mapping[str, str]) -> ModelMetadata:
    """Metadata of the raw-unit inpainter (``xec export --raw-units``)."""
    return ModelMetadata(
        stage="inpainter",
        normalizer=normalizer,
        inputs=("npho", "relative_time", "mask"),
        outputs=("output_npho", "output_relative_time"),
        units={
            "npho": "photons",
            "relative_time": "s",
            "mask": "1 = fill",
            "output_npho": "photons",
            "output_relative_time": "s",
        },
        versions=dict(versions),
        io_units="raw",
        description=RAW_INPAINTER_DESCRIPTION,
    )


def software_versions(opset: int) -> dict[str, str]:
    import onnx
    import torch

    from xec import __version__

    return {
        "xec_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "opset": str(opset),
    }


def set_metadata(model, meta: ModelMetadata) -> None:
    """Replace the xec keys of an ``onnx.ModelProto``'s metadata_props (others are kept)."""
    props = meta.to_props()
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *sorted(props.items())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


MODEL_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props (StringStringEntryProto: key 1, value 2)


def read_props(path: str | os.PathLike) -> dict[str, str]:
    """The raw metadata_props of an ONNX file, read from the protobuf wire format directly:
    ``import onnx`` alone costs ~0.7 s (its ml_dtypes extension), a fifth of ``xec infer`` on a
    4,000-event file; the ModelProto's other fields (the graph, the weights) are skipped unread."""
    path = Path(path)
    if not path.exists():
        raise XecError(f"{path}: no such file")
    try:
        buf = memoryview(path.read_bytes())
        props = {}
        for number, value in _message_fields(buf, 0, len(buf)):
            if number == MODEL_METADATA_PROPS:
                entry = {f: v for f, v in _message_fields(buf, *value) if isinstance(v, tuple)}
                key, val = (bytes(buf[slice(*entry.get(i, (0, 0)))]).decode() for i in (1, 2))
                props[key] = val
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise XecError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return props


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError(f"bad varint at byte {pos}")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _message_fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int | tuple[int, int] | None]]:
    """(field number, value) of the protobuf message in buf[start:end]: varints as ints,
    length-delimited fields as their (start, end) byte range (not copied), fixed-width ones None."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | tuple[int, int] | None = None
        if number == 0:
            raise ValueError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire} at byte {pos}")
        if pos > end:
            raise ValueError(f"truncated field {number}")
        yield number, value


def read_metadata(path: str | os.PathLike, expected_stage: str | None = None) -> ModelMetadata:
    """Read and validate the xec metadata of an ONNX file; XecError naming the file on problems."""
    meta = ModelMetadata.from_props(read_props(path), where=str(path))
    if expected_stage is not None and meta.stage != expected_stage:
        raise XecError(f"{path}: is an exported {meta.stage}, expected a {expected_stage}")
    return meta
