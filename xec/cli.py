"""The single `xec` command line. Each subcommand lives in its own module, imported only
when that subcommand runs, so that `xec --help` stays fast.

A subcommand module provides ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys
from pathlib import Path

from xec.commands import COMMANDS
from xec.errors import InputFileError, XecError

# The subcommands: top-level names of the registry ("train mae" is a subcommand of "train").
TOP_LEVEL = {name: cmd for name, cmd in COMMANDS.items() if " " not in name}


def build_parser() -> argparse.ArgumentParser:
    from xec import __version__

    parser = argparse.ArgumentParser(prog="xec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"xec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in TOP_LEVEL.items():
        sub.add_parser(name, help=cmd.help, add_help=False)
    return parser


def retain_freed_memory() -> bool:
    """Keep freed heap memory in this process for reuse instead of handing it back to the kernel
    (glibc's malloc; elsewhere, or with XEC_KEEP_FREED_MEMORY=0, a no-op). Returns whether the
    settings took effect.

    Why: a training step, a simulation block or an inference batch frees and re-allocates the same
    large buffers. By default glibc serves each buffer above its mmap threshold (at most 32 MB)
    with a fresh mmap and returns it on free, so every step faults in and zeroes new pages; on a
    VM whose freed pages go back to the host, each first touch is slow (docs/performance.md,
    "Default pipeline", session 26). The resident memory stays at the process's peak instead of
    breathing, which is what a batch scheduler's memory limit counts anyway. The numbers computed
    are unchanged.
    """
    if os.environ.get("XEC_KEEP_FREED_MEMORY", "1") == "0":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # <malloc.h>
    settings = (
        (m_mmap_max, 0),  # every allocation from the heaps, none mmap'ed per buffer
        (m_trim_threshold, 2**31 - 1),  # keep the heap's free top (up to 2 GB of it)
        (m_top_pad, 64 << 20),  # grow the heap in 64 MB steps
    )
    took = [mallopt(option, value) == 1 for option, value in settings]  # all applied, even after a failure
    return all(took)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    retain_freed_memory()
    parser = build_parser()
    if not argv or argv[0] not in TOP_LEVEL:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(TOP_LEVEL[name].module)
    sub = argparse.ArgumentParser(prog=f"xec {name}", description=TOP_LEVEL[name].help)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    args.argv = argv  # the whole command line, for a command that relaunches itself (xec train under torchrun)
    record = vars(args).get("failure_record")
    try:
        code = int(module.main(args) or 0)
    except XecError as exc:
        report_error(f"xec {name}: error: {exc}", vars(args).get("log"))
        if record and isinstance(exc, InputFileError):
            _record_failure(record, exc, args, name)
        return 2
    except KeyboardInterrupt:
        print(f"xec {name}: interrupted", file=sys.stderr)
        return 130
    if record and code == 0:
        from xec.scatter import clear_failure_record

        clear_failure_record(record)
    return code


def _record_failure(record: str, exc: InputFileError, args: argparse.Namespace, name: str) -> None:
    """A per-file job's input is bad: leave the record the workflow's merge reads (xec.scatter)."""
    from xec.scatter import write_failure_record

    inputs = [str(p) for p in vars(args).get("input") or []]
    if len(inputs) != 1 or os.path.abspath(inputs[0]) != os.path.abspath(exc.path):
        return  # only a one-file job's own input is recorded: anything else is not "this file is bad"
    write_failure_record(record, inputs[0], str(exc), f"xec {name}")


def report_error(message: str, log_file: str | None) -> None:
    """Print a user-facing error and append it to the command's ``--log`` file: under Snakemake
    that is the rule's log, where a user looks first when a job fails."""
    print(message, file=sys.stderr)
    if log_file:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a") as f:
                f.write(message + "\n")
        except OSError as exc:
            print(f"(could not write the error to {log_file}: {exc})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
