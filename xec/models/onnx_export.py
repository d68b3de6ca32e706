"""ONNX export of the XEC models (opset >= 17, dynamic batch) and an onnxruntime parity check.

``export_onnx`` is the one export entry point; the model wrappers turn the models' dict
outputs into the tuples ONNX needs:

* ``RegressorOnnx``: input ``input`` (B, 4760, 2) -> one output per task in PHYSICAL units
  (``output_<task>``), i.e. ``XECRegressor.forward_physical``;
* ``InpainterOnnx``: inputs ``input`` (B, 4760, 2) and ``mask`` (B, 4760) float (> 0.5 = fill)
  -> ``output`` (B, 4760, 2), x with the masked and dead sensors filled.

The legacy TorchScript-based exporter (``dynamo=False``) is used by default: it is fast and
robust for these models (plain gathers, convolutions, matmuls and reductions).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from xec.utils import atomic_path


class RegressorOnnx(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.tasks = tuple(model.tasks)

    @property
    def output_names(self) -> list[str]:
        return [f"output_{t}" for t in self.tasks]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_physical(x)
        return tuple(out[t] for t in self.tasks)


class InpainterOnnx(nn.Module):
    output_names = ["output"]

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask > 0.5)


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor | tuple[torch.Tensor, ...],
                input_names: Sequence[str], output_names: Sequence[str], dynamic_batch: bool = True,
                opset: int = 17, dynamo: bool = False) -> Path:
    """Export ``model`` (eval mode, CPU) to ``path`` atomically; axis 0 of every input and
    output is the dynamic ``batch`` when ``dynamic_batch``. Returns the path."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    axes = {n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            kwargs = dict(input_names=list(input_names), output_names=list(output_names),
                          opset_version=opset, do_constant_folding=True, dynamo=dynamo)
            if dynamo:
                kwargs["dynamic_shapes"] = None if not dynamic_batch else tuple(
                    {0: torch.export.Dim("batch", min=1)} for _ in args)
            else:
                kwargs["dynamic_axes"] = axes
            torch.onnx.export(model, args, str(tmp), **kwargs)
    finally:
        model.train(was_training)
    return path


def onnx_parity(model: nn.Module, path: str | Path, inputs: Sequence[np.ndarray | torch.Tensor],
                input_names: Sequence[str]) -> float:
    """Largest relative difference |onnx - torch| / (|torch| + 0.01 * max|torch|) over all outputs:
    relative, with values near zero compared on 1 % of their output's scale (float32 rounding
    of a value ~0 next to values ~1 is not a relative error of the model)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: np.asarray(v, dtype=np.float32) for n, v in zip(input_names, inputs)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        ref = model(*[torch.as_tensor(v, dtype=torch.float32) for v in feeds.values()])
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    worst = 0.0
    for g, r in zip(got, ref):
        r = r.numpy()
        floor = 0.01 * float(np.max(np.abs(r))) + 1e-12
        worst = max(worst, float(np.max(np.abs(g - r) / (np.abs(r) + floor))))
    return worst
