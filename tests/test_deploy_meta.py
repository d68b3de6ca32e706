"""ONNX metadata contract (xec.deploy.onnx_meta): round trip and clear errors on bad metadata."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from xec.deploy.onnx_meta import (
    ModelMetadata,
    inpainter_metadata,
    read_metadata,
    regressor_metadata,
    set_metadata,
    software_versions,
)
from xec.errors import XecError
from xec.normalization import get_normalizer


def _tiny_onnx(path, props: dict[str, str] | None = None):
    node = helper.make_node("Identity", ["input"], ["output_energy"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("output_energy", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (props or {}).items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(path))
    return path


def test_regressor_metadata_round_trip(tmp_path):
    norm = get_normalizer("legacy", npho_transform="sqrt")
    ts = {"energy": {"mean": [0.05], "std": [0.01]}}
    meta = regressor_metadata(norm, ["energy", "uvwFI", "angle"], ts, software_versions(17))
    path = _tiny_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    e = model.metadata_props.add()
    e.key, e.value = "author", "someone"  # foreign keys survive set_metadata
    set_metadata(model, meta)
    set_metadata(model, meta)  # idempotent: no duplicate keys
    onnx.save(model, str(path))
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["author"] == "someone"
    assert len(onnx.load(str(path)).metadata_props) == len(props)
    assert props["normalization_preset"] == "legacy"
    assert json.loads(props["units"]) == {"energy": "GeV", "uvwFI": "cm", "angle": "deg"}
    assert json.loads(props["columns"])["angle"] == ["theta", "phi"]
    assert json.loads(props["outputs"]) == ["output_energy", "output_uvwFI", "output_angle"]
    back = read_metadata(path, expected_stage="regressor")
    assert back == meta
    assert back.normalizer.npho_transform == "sqrt" and back.normalizer.sentinel == -5.0
    assert back.versions["opset"] == "17" and back.versions["torch_version"]


def test_inpainter_metadata_round_trip(tmp_path):
    meta = inpainter_metadata(get_normalizer("meg2"), software_versions(18))
    back = ModelMetadata.from_props(meta.to_props(), where="x.onnx")
    assert back == meta and back.inputs == ("input", "mask") and back.outputs == ("output",)
    with pytest.raises(XecError, match="x.onnx: is an exported inpainter, expected a regressor"):
        path = _tiny_onnx(tmp_path / "x.onnx", meta.to_props())
        read_metadata(path, expected_stage="regressor")


def test_bad_metadata_errors_name_the_file(tmp_path):
    good = regressor_metadata(get_normalizer("meg2"), ["energy"], None, software_versions(17)).to_props()
    cases = {
        "none.onnx": ({}, "no xec metadata"),
        "stage.onnx": ({**good, "stage": "mae"}, "unknown stage 'mae'"),
        "json.onnx": ({**good, "normalization": "{not json"}, "bad xec metadata"),
        "param.onnx": (
            {**good, "normalization": json.dumps({**get_normalizer().to_dict(), "npho_scale": -1})},
            "npho_scale must be a positive",
        ),
        "preset.onnx": ({**good, "normalization_preset": "legacy"}, "disagrees"),
        "task.onnx": ({**good, "tasks": '["mass"]'}, "unknown task 'mass'"),
        "outputs.onnx": ({**good, "outputs": '["output_angle"]'}, "expected \\['output_energy'\\]"),
    }
    for name, (props, match) in cases.items():
        path = _tiny_onnx(tmp_path / name, props)
        with pytest.raises(XecError, match=match) as info:
            read_metadata(path)
        assert str(info.value).startswith(str(path))
    with pytest.raises(XecError, match="missing.onnx: no such file"):
        read_metadata(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xff garbage")
    with pytest.raises(XecError, match="garbage.onnx: not a readable ONNX model"):
        read_metadata(tmp_path / "garbage.onnx")


def test_read_props_reads_the_wire_format_as_onnx_does(tmp_path):
    """read_props parses the protobuf itself (``import onnx`` costs ~0.7 s of every `xec infer`):
    the same key/value pairs as onnx.load, with a graph and weights before and after them,
    non-ASCII text, an empty value and a long (multi-byte length) value; a truncated file is an
    error naming the file."""
    from xec.deploy.onnx_meta import read_props

    props = {"stage": "regressor", "note": "µ-Strahl ±1σ", "empty": "", "long": "x" * 300}
    path = _tiny_onnx(tmp_path / "m.onnx", props)
    model = onnx.load(str(path))
    weights = helper.make_tensor("w", TensorProto.FLOAT, [1000], [0.5] * 1000)
    model.graph.initializer.append(weights)
    model.doc_string = "after the graph"
    onnx.save(model, str(path))
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert read_props(path) == expected == props
    data = path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(XecError, match="cut.onnx: not a readable ONNX model"):
        read_props(tmp_path / "cut.onnx")


def test_reading_metadata_does_not_import_onnx(tmp_path):
    import subprocess
    import sys

    path = _tiny_onnx(tmp_path / "m.onnx", {"stage": "regressor"})
    code = (
        "import sys; from xec.deploy.onnx_meta import read_props; "
        f"assert read_props({str(path)!r}) == {{'stage': 'regressor'}}; print('onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
