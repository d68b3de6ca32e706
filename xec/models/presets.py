"""Named model sizes. A preset fixes the encoder/decoder widths and depths; config.yaml's
``model`` section picks one by name and may override single keys (see ``model_config``).

* ``tiny``: 89k encoder parameters (regressor with 4 heads and the peak-window fit 0.65M);
  sized to train at >= 1,000 events/s (fwd + bwd + AdamW) on 2 CPU cores (measurements:
  docs/performance.md). Coarse by design: 4x4 patchify stem on the inner face, the outer
  face at one cell per coarse PMT, no ConvNeXt blocks at the stem resolution.
* ``small``: 6.3M parameters at 0.85 GFLOP/event forward (regressor): the compute of the
  reference model (0.81 GFLOP/event at 35.6M parameters); base's depths and stems, half its
  widths and fewer stage-2 blocks.
* ``base``: 25.9M encoder parameters (the reference model's size; 5.4 GFLOP/event), for GPUs.
* ``large``: 84.6M encoder parameters.

``xec model-info --preset NAME`` prints the counts per component.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from xec.errors import XecError

# the keys that shape XECEncoder (an MAE checkpoint initializes any stage that agrees on these)
ENCODER_FIELDS = (
    "preset",
    "rect_dims",
    "rect_depths",
    "kernel_size",
    "stem_stride",
    "outer_pool",
    "outer_stem_stride",
    "small_stem_stride",
    "share_rect_backbone",
    "hex_dim",
    "hex_depth",
    "token_dim",
    "fusion_depth",
    "heads",
    "mlp_ratio",
    "drop_path",
)
# the keys each stage adds on top of the encoder (decoders, inpainting heads, regression heads)
STAGE_FIELDS = {
    "mae": ("decoder_dim", "decoder_depth"),
    "inpainter": (
        "inpaint_dim",
        "inpaint_depth",
        "inpaint_local_neighbours",
        "inpaint_local_hidden",
        "inpaint_local_time",
        "inpaint_context",
        "inpaint_peak_context",
    ),
    "regressor": (
        "head_hidden",
        "peak_window",
        "peak_hidden",
        "peak_coarse",
        "physics_aggregates",
        "angle_from_position",
    ),
}
PAIR_FIELDS = ("rect_dims", "rect_depths", "stem_stride", "outer_pool", "outer_stem_stride", "small_stem_stride")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise XecError(f"model config: expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass(frozen=True)
class ModelConfig:
    # rectangular faces (ConvNeXt V2)
    rect_dims: tuple[int, int] = (16, 32)  # stage widths
    rect_depths: tuple[int, int] = (0, 2)  # blocks per stage (tiny: none at the stem resolution)
    kernel_size: int = 5  # depthwise kernel
    stem_stride: tuple[int, int] = (4, 4)  # patchify stride on the inner face (93 x 44)
    outer_pool: tuple[int, int] = (3, 5)  # geometry.outer_grid(pool): (3, 5) = 24 x 9, one cell per coarse PMT
    outer_stem_stride: tuple[int, int] = (2, 1)  # patchify stride on that outer grid
    small_stem_stride: tuple[int, int] = (2, 2)  # on US / DS (24 x 6)
    share_rect_backbone: bool = False  # one set of stage weights for all rect faces
    # hexagonal faces (HexNeXt)
    hex_dim: int = 12
    hex_depth: int = 1
    # token fusion (Transformer)
    token_dim: int = 48
    fusion_depth: int = 1
    heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.0
    # MAE decoders
    decoder_dim: int = 16
    decoder_depth: int = 0
    # inpainter heads
    inpaint_dim: int = 16
    inpaint_depth: int = 1
    # sensor-level correction of the fill from the K nearest same-face sensors
    # (xec.models.local_fill); 0 = off, as in checkpoints written before the key existed
    inpaint_local_neighbours: int = 0
    inpaint_local_hidden: int = 64
    # what that correction's filled time corrects: "neighbours" (the known neighbours' mean time)
    # or "heads" (the heads' time, as in checkpoints written before the key existed)
    inpaint_local_time: str = "heads"
    # False: the inpainter is that correction alone, without the encoder and its heads (their guess
    # is the correction's global context): an inpainter graph 3-5x cheaper (docs/performance.md,
    # "The inpainter without the encoder"). True here: checkpoints written before the key existed
    inpaint_context: bool = True
    # the correction also reads where the shower is (xec.models.local_fill.LocalFill.shower_peak):
    # the brightest known MPPC, the light-weighted centroid of its ring and the target's offset from
    # it. False: checkpoints written before the key existed rebuild as they were trained
    inpaint_peak_context: bool = False
    # regressor heads
    head_hidden: int = 64
    peak_window: int = 11  # MPPC window around the brightest one read by the heads' local fit (0 = off)
    peak_hidden: int = 512  # width of that local-fit MLP (0.47M parameters at window 11)
    peak_coarse: int = 0  # side of its second view, 2 x 2-averaged MPPCs around the same peak (0 = off)
    # energy and time heads correct a light sum and a TOF-corrected sensor time (xec.models.aggregates)
    physics_aggregates: bool = True
    # the angle output is the direction from the target centre to the predicted first
    # interaction (the classical angle); the angle head then only trains the trunk.
    # False here: checkpoints written before the key existed rebuild as they were trained
    angle_from_position: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in PAIR_FIELDS:
            d[key] = list(d[key])
        return d


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "small": ModelConfig(
        rect_dims=(64, 128),
        rect_depths=(2, 5),
        stem_stride=(2, 2),
        outer_stem_stride=(1, 1),
        small_stem_stride=(1, 1),
        kernel_size=7,
        mlp_ratio=4.0,
        hex_dim=64,
        hex_depth=3,
        token_dim=192,
        fusion_depth=3,
        heads=6,
        drop_path=0.05,
        decoder_dim=64,
        decoder_depth=1,
        inpaint_dim=32,
        inpaint_depth=2,
        head_hidden=192,
    ),
    "base": ModelConfig(
        rect_dims=(128, 256),
        rect_depths=(3, 9),
        stem_stride=(2, 2),
        outer_stem_stride=(1, 1),
        small_stem_stride=(1, 1),
        kernel_size=7,
        mlp_ratio=4.0,
        hex_dim=128,
        hex_depth=4,
        token_dim=256,
        fusion_depth=4,
        heads=8,
        drop_path=0.1,
        decoder_dim=128,
        decoder_depth=1,
        inpaint_dim=64,
        inpaint_depth=2,
        head_hidden=256,
    ),
    "large": ModelConfig(
        rect_dims=(192, 384),
        rect_depths=(3, 12),
        stem_stride=(2, 2),
        outer_stem_stride=(1, 1),
        small_stem_stride=(1, 1),
        kernel_size=7,
        mlp_ratio=4.0,
        hex_dim=192,
        hex_depth=6,
        token_dim=512,
        fusion_depth=6,
        heads=8,
        drop_path=0.2,
        decoder_dim=192,
        decoder_depth=2,
        inpaint_dim=96,
        inpaint_depth=2,
        head_hidden=512,
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise XecError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def model_config(section: Mapping[str, Any] | None = None, **overrides: Any) -> ModelConfig:
    """ModelConfig from config.yaml's ``model`` section: ``preset`` plus optional overrides
    (any ModelConfig field given explicitly, e.g. ``share_rect_backbone`` or ``drop_path``)."""
    section = dict(section or {})
    section.update(overrides)
    base = get_preset(section.pop("preset", "tiny"))
    known = {f.name for f in fields(ModelConfig)}
    values = base.to_dict()
    for key, value in section.items():
        if value is None:
            continue
        if key not in known:
            raise XecError(f"model config: unknown key {key!r}; known keys: {sorted(known)}")
        values[key] = copy.deepcopy(value)
    for key in PAIR_FIELDS:
        values[key] = _pair(values[key])
    cfg = ModelConfig(**values)
    if cfg.token_dim % cfg.heads:
        raise XecError(f"model config: token_dim {cfg.token_dim} is not divisible by heads {cfg.heads}")
    if not cfg.inpaint_context and not cfg.inpaint_local_neighbours:
        raise XecError(
            "model config: inpaint_context false needs inpaint_local_neighbours > 0 "
            "(the sensor-level correction is then the whole inpainter)"
        )
    return cfg


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """Inverse of ``ModelConfig.to_dict`` (checkpoints)."""
    values = dict(d)
    # checkpoints written before a field existed were trained without what it switches on
    values.setdefault("physics_aggregates", False)
    for key in PAIR_FIELDS:
        values[key] = _pair(values[key])
    return ModelConfig(**values)
