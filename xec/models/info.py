"""``xec model-info``: parameter counts of a model preset, per component and per model.

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
from xec.utils import setup_logging

log = logging.getLogger("xec.models")


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def model_info(section: Mapping[str, Any], tasks: list[str] | None = None) -> dict[str, Any]:
    """Parameter counts of every model built from a config ``model`` section (shapes only:
    built on the meta device, so even `large` costs no memory)."""
    from xec.models import XECMAE, XECInpainter, XECRegressor, model_config
    from xec.targets import DEFAULT_TASKS

    cfg = model_config(section)
    tasks = list(tasks or DEFAULT_TASKS)
    with torch.device("meta"):
        mae = XECMAE(cfg)
        inp = XECInpainter(cfg)
        reg = XECRegressor(cfg, tasks)
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
        "inpainter": {"total": _count(inp), "heads": _count(inp.heads)},
        "regressor": {"total": _count(reg), "tasks": tasks, "heads": {t: _count(reg.heads[t]) for t in tasks}},
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
        f"{'inpainter (encoder + heads)':<28}{n(info['inpainter']['total']):>14}",
        f"{'  heads':<28}{n(info['inpainter']['heads']):>14}",
        f"{'regressor (encoder + heads)':<28}{n(info['regressor']['total']):>14}",
    ]
    for t, v in info["regressor"]["heads"].items():
        lines.append(f"{'  head ' + t:<28}{n(v):>14}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=("tiny", "base", "large"),
        default=None,
        help="preset to describe (default: the config's model section)",
    )
    parser.add_argument("--tasks", nargs="+", default=None, help="regressor tasks (default: angle energy timing uvwFI)")
    parser.add_argument("--json", default=None, help="also write the counts to this JSON file")
    parser.add_argument("--log", default=None, help="log file")
    add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    if args.preset is not None:
        section: dict[str, Any] = {"preset": args.preset}  # the bare preset, without the config's overrides
    else:
        section = plain(load_config(args.config, command="model-info")["model"])
    info = model_info(section, args.tasks)
    print(format_info(info))
    if args.json:
        from xec.utils import write_json

        write_json(args.json, info)
    return 0
