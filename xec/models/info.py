"""``xec model-info``: parameter counts and forward FLOPs per event of a model preset, per
component and per model.

xec model-info --preset tiny
xec model-info --config config.yaml          # the config's `model` section (with overrides)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xec.config import add_config_argument, load_config, plain
from xec.models.presets import PRESETS
from xec.normalization import Normalizer, get_normalizer, normalizer_from_config
from xec.utils import setup_logging

log = logging.getLogger("xec.models")


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


# the inpainter's FLOPs are counted with every 100th sensor to fill (1 %, the realdata sample's
# dead fraction): its sensor-level correction costs per filled sensor
INPAINT_FLOPS_EVERY = 100

# encoder components as named by FlopCounterMode's module paths (XECEncoder attributes)
_FLOP_COMPONENTS = {
    "rect_stems": ("stems",),
    "rect_stages": ("stages",),
    "rect_tokens": ("rect_token",),
    "hex": ("hex_stem", "hex_blocks", "hex_token"),
    "fusion": ("fusion", "norm"),
}


def _outermost(keys: list[str]) -> list[str]:
    """The keys no other key of the list contains as a module-path prefix (no double counting
    of a module and its children)."""
    return [k for k in keys if not any(k != o and k.startswith(o + ".") for o in keys)]


def forward_flops(model: nn.Module, call, batch: int = 2, mask_every: int = 0) -> dict[str, float]:
    """Forward FLOPs per event of ``call(model, x, mask)`` (torch.utils.flop_counter: matmuls,
    convolutions and attention; elementwise ops are not counted), split into the encoder
    components and the rest ("heads": decoders, inpainting or regression heads). Shapes only:
    ``model`` may live on the meta device. ``mask_every`` k > 0: ``mask`` hides every k-th sensor
    (what an inpainter fills), else none."""
    from torch.utils.flop_counter import FlopCounterMode

    from xec.geometry import N_SENSORS

    device = next(model.parameters()).device
    x = torch.zeros(batch, N_SENSORS, 2, device=device)
    mask = torch.zeros(batch, N_SENSORS, dtype=torch.bool, device=device)
    if mask_every:
        mask[:, ::mask_every] = True
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call(model, x, mask)
    counts = {k: sum(v.values()) / batch for k, v in counter.get_flop_counts().items() if k != "Global"}
    total = sum(counter.get_flop_counts()["Global"].values()) / batch
    # module paths look like "XECEncoder.stages.inner" (encoder called) or
    # "XECMAE.encoder.stages.inner" (its forward_features called from the parent)
    by_attr: dict[str, list[str]] = {}
    for key in counts:
        segs = key.split(".")
        at = next((i for i, s in enumerate(segs[:-1]) if s in ("XECEncoder", "encoder")), None)
        if at is not None:
            by_attr.setdefault(segs[at + 1], []).append(key)
    out: dict[str, float] = {"total": total}
    for name, attrs in _FLOP_COMPONENTS.items():
        keys = [k for a in attrs for k in by_attr.get(a, [])]
        out[name] = sum(counts[k] for k in _outermost(keys))
    encoder = sum(out[name] for name in _FLOP_COMPONENTS)
    out["encoder"] = encoder
    out["heads"] = total - encoder
    return out


def model_info(
    section: Mapping[str, Any], tasks: list[str] | None = None, normalizer: Normalizer | None = None
) -> dict[str, Any]:
    """Parameter counts of every model built from a config ``model`` section (shapes only:
    built on the meta device, so even `large` costs no memory). ``normalizer``: the one the
    inpainter's sensor-level correction works with (default: the default preset's)."""
    from xec.models import XECMAE, XECInpainter, XECRegressor, model_config
    from xec.targets import DEFAULT_TASKS

    cfg = model_config(section)
    tasks = list(tasks or DEFAULT_TASKS)
    normalizer = normalizer or get_normalizer()
    with torch.device("meta"):
        mae = XECMAE(cfg)
        reg = XECRegressor(cfg, tasks)
    # the sensor-level correction gathers the filled sensors' neighbours (data-dependent shapes,
    # which the meta device cannot run): that inpainter is built for real
    with torch.device("cpu" if cfg.inpaint_local_neighbours else "meta"):
        inp = XECInpainter(cfg, normalizer=normalizer)
    flops = {
        "mae": forward_flops(mae, lambda m, x, mask: m(x)),
        "inpainter": forward_flops(inp, lambda m, x, mask: m(x, mask), mask_every=INPAINT_FLOPS_EVERY),
        "regressor": forward_flops(reg, lambda m, x, mask: m(x)),
    }
    enc = mae.encoder
    stages = enc.stages
    comp = {
        "rect_stems": _count(enc.stems) + sum(p.numel() for p in enc.rect_pos.values()),
        "rect_stages": _count(stages),
        "rect_tokens": _count(enc.rect_token),
        "hex": _count(enc.hex_stem) + enc.hex_pos.numel() + _count(enc.hex_blocks) + _count(enc.hex_token),
        "fusion": _count(enc.fusion) + _count(enc.norm) + enc.pos_embed.numel() + _count(enc.type_embed),
    }
    return {
        "preset": section["preset"],
        "config": cfg.to_dict(),
        "faces": {
            f.name: {"grid": list(f.shape), "slots": f.slots, "stem_stride": list(f.stem_stride)}
            for f in enc.layout.rect
        }
        | {"hex": {"nodes": int(enc.layout.hex.ids.size)}},
        "encoder": {"total": _count(enc), **comp},
        "mae": {"total": _count(mae), "decoders": _count(mae.decoder)},
        "inpainter": {"total": _count(inp), "heads": _count(inp.heads), "local_fill": _count(inp.local)},
        "regressor": {
            "total": _count(reg),
            "tasks": tasks,
            "heads": {t: _count(reg.heads[t]) for t in tasks},
            "peak_fit": _count(reg.peak),
            # light sums and TOF-corrected time, with the head of the event's light centroid
            "physics_aggregates": _count(reg.aggregates) + _count(getattr(reg, "centroid_head", None)),
        },
        "flops_per_event": flops,
    }


def format_info(info: dict[str, Any]) -> str:
    def n(v: int) -> str:
        return f"{v:,}"

    e = info["encoder"]
    lines = [
        f"model preset {info['preset']!r}",
        "faces: "
        + ", ".join(
            f"{k} {v.get('grid', v.get('nodes'))}" + (f" x{v['slots']} slots" if v.get("slots", 1) > 1 else "")
            for k, v in info["faces"].items()
        ),
        f"{'component':<28}{'parameters':>14}",
        f"{'encoder':<28}{n(e['total']):>14}",
    ]
    for key in ("rect_stems", "rect_stages", "rect_tokens", "hex", "fusion"):
        lines.append(f"{'  ' + key:<28}{n(e[key]):>14}")
    lines += [
        f"{'mae (encoder + decoders)':<28}{n(info['mae']['total']):>14}",
        f"{'  decoders':<28}{n(info['mae']['decoders']):>14}",
        f"{'inpainter':<28}{n(info['inpainter']['total']):>14}",
        f"{'  heads':<28}{n(info['inpainter']['heads']):>14}",
        f"{'  local_fill':<28}{n(info['inpainter']['local_fill']):>14}",
        f"{'regressor (encoder + heads)':<28}{n(info['regressor']['total']):>14}",
    ]
    for t, v in info["regressor"]["heads"].items():
        lines.append(f"{'  head ' + t:<28}{n(v):>14}")
    for key in ("peak_fit", "physics_aggregates"):
        if info["regressor"].get(key):
            lines.append(f"{'  ' + key:<28}{n(info['regressor'][key]):>14}")
    fl = info["flops_per_event"]
    lines += ["", f"{'forward GFLOP / event':<28}" + "".join(f"{k:>12}" for k in fl)]
    for key in ("total", "encoder", *_FLOP_COMPONENTS, "heads"):
        label = key if key in ("total", "encoder", "heads") else "  " + key
        lines.append(f"{label:<28}" + "".join(f"{fl[m][key] / 1e9:>12.4g}" for m in fl))
    lines.append(
        "(matmuls, convolutions and attention; training costs ~3x the forward; the inpainter's "
        f"with 1 in {INPAINT_FLOPS_EVERY} sensors to fill)"
    )
    lines.append(
        "(the trained regressor also has the per-event sigma heads of regressor.sigma, after "
        "regressor.head_refit the refitted heads and with regressor.fit_blend the gate of the position "
        "blend and the classical fit in the graph, ~0.4 ms per event on a CPU core, not counted here: "
        "`xec train regressor` logs its own parameter count)"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="preset to describe (default: the config's model section)",
    )
    parser.add_argument("--tasks", nargs="+", default=None, help="regressor tasks (default: angle energy timing uvwFI)")
    parser.add_argument("--json", default=None, help="also write the counts to this JSON file")
    parser.add_argument("--log", default=None, help="log file")
    add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="model-info")
    if args.preset is not None:
        section: dict[str, Any] = {"preset": args.preset}  # the bare preset, without the config's overrides
    else:
        section = plain(cfg["model"])
    info = model_info(section, args.tasks, normalizer_from_config(cfg))
    print(format_info(info))
    if args.json:
        from xec.utils import write_json

        write_json(args.json, info)
    return 0
