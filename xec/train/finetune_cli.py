"""`xec finetune`: fine-tune the inpainter on the realdata sample itself (xec.train.finetune).

    xec finetune --config CFG --inpainter results/inpainter/checkpoint.pt
                 --input results/data/realdata.root [more files or globs]
                 [--out results/inpainter_finetune] [--tag KEY=VALUE] [--log LOG]

Writes OUT/checkpoint.pt (an inpainter checkpoint: `xec export` it like the inpainter's) and
OUT/metrics.json (held-out realdata errors on hidden live sensors, before as ``val.initial_*``
and after as ``val.val_*``). Config: ``finetune`` (split, events, epochs, optimizer), the
inpainter's masking and loss keys, ``train`` defaults, ``normalization`` (must be the
checkpoint's), ``data`` branch names.
"""

from __future__ import annotations

import argparse

from xec.config import add_config_argument, load_config
from xec.utils import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--inpainter", required=True, help="simulation-trained inpainter checkpoint.pt")
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB", help="realdata ROOT files")
    parser.add_argument("--out", default="results/inpainter_finetune", help="output directory")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="MLflow tag (repeatable)")
    parser.add_argument("--log", default=None, help="log file")


def main(args: argparse.Namespace) -> int:
    from xec.train.cli import _parse_tags
    from xec.train.finetune import run_finetune

    setup_logging(args.log)
    cfg = load_config(args.config, command="finetune")
    run_finetune(cfg, args.inpainter, args.input, args.out, tags=_parse_tags(args.tag))
    return 0
