"""The single `xec` command line. Each subcommand lives in its own module, imported only
when that subcommand runs, so that `xec --help` stays fast.

A subcommand module provides ``add_arguments(parser)`` and ``main(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from xec.errors import XecError

# name -> (module, one-line help). Nested commands ("train mae") use a space.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("xec.simulation.cli", "simulate events with the fast detector simulation into a MEG II ROOT file"),
    "shards": ("xec.data.shards", "convert ROOT files into normalized WebDataset shards"),
    "reweight": ("xec.data.reweight", "fit per-task reweighting histograms on a shard split"),
    "train": ("xec.train.cli", "train a stage: mae, inpainter or regressor"),
    "export": ("xec.deploy.export", "export a regressor or inpainter checkpoint to ONNX"),
    "infer": ("xec.deploy.infer", "run ONNX models on a ROOT file"),
    "baseline": ("xec.baseline.cli", "classical (non-ML) reconstruction of a ROOT file"),
    "plots": ("xec.plots.cli", "make the plots of a pipeline run"),
    "summary": ("xec.summary", "physics summary: ML vs classical reconstruction"),
    "model-info": ("xec.models.info", "print the parameter counts of a model preset"),
}


def build_parser() -> argparse.ArgumentParser:
    from xec import __version__

    parser = argparse.ArgumentParser(prog="xec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"xec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"xec {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except XecError as exc:
        print(f"xec {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xec {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
