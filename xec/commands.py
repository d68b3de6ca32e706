"""Every `xec` command: where it lives, its one-line help, and the config keys it reads.

The declarations are the one source for two things:

* ``xec.config.load_config(path, command=NAME)`` hands the command a view of the config that
  refuses any key it did not declare, so a command cannot read a key behind its rule's back;
* ``workflow/rules/common.smk`` builds each rule's ``params:`` from ``reads`` (via
  ``xec.config.command_params``), so a rule reruns exactly when a key its command's outputs
  depend on changes.

Keys are dotted paths into the validated config; a key grants its whole subtree. ``reads``: keys
the outputs depend on. ``runtime``: keys also read that never change the outputs (threads,
chunking, compression, experiment tracking), so changing them reruns nothing. A ``{field}``
placeholder is filled per job (``simulation.samples.{sample}``).

This module imports neither torch nor any command module (the CLI and the Snakefile read it).
"""

from __future__ import annotations

from dataclasses import dataclass

from xec.errors import XecError
from xec.models.presets import ENCODER_FIELDS, STAGE_FIELDS

DATA_BRANCHES = ("data.tree", "data.npho_branch", "data.time_branch")


@dataclass(frozen=True)
class Command:
    module: str  # module with add_arguments(parser) and main(args) -> int
    help: str
    reads: tuple[str, ...] = ()
    runtime: tuple[str, ...] = ()


def _train(stage: str, help_text: str, extra: tuple[str, ...] = ()) -> Command:
    model_keys = tuple(f"model.{k}" for k in (*ENCODER_FIELDS, *STAGE_FIELDS[stage]))
    return Command(
        "xec.train.cli",
        help_text,
        reads=("seed", "train", "normalization", stage, *model_keys, *extra),
        runtime=("mlflow",),
    )


# the dead-sensor augmentation of the inpainter and regressor kills whole readout boards: the
# boards of the dead-fraction sweep (xec.inpainting.boards), one key for both
BOARDS = ("deadsweep.board_size",)


# Top-level names are the CLI's subcommands; "train <stage>" are the training subcommands.
COMMANDS: dict[str, Command] = {
    "simulate": Command(
        "xec.simulation.cli",
        "simulate events with the fast detector simulation into a MEG II ROOT file",
        reads=("data.tree", "simulation.samples.{sample}", "simulation.physics"),
        runtime=("simulation.samples", "simulation.chunk_size", "simulation.workers", "simulation.compression"),
    ),
    "shards": Command(
        "xec.data.shards",
        "convert ROOT files into normalized WebDataset shards",
        reads=(
            *DATA_BRANCHES,
            "normalization",
            "shards.events_per_shard",
            "shards.block_size",
            "shards.tasks",
            "shards.truth_branches",
            "shards.fiducial",
        ),
        runtime=("shards.workers",),
    ),
    # reads no config: the settings come from the parts, which must all agree on them
    "shards-merge": Command(
        "xec.data.shard_parts", "merge the parts of a scattered shard conversion (xec shards --part) into one split"
    ),
    "reweight": Command(
        "xec.data.reweight", "fit per-task reweighting histograms on a shard split", reads=("reweighting",)
    ),
    "train": Command("xec.train.cli", "train a stage: mae, inpainter or regressor"),
    "train mae": _train("mae", "masked-autoencoder pretraining of the encoder"),
    "train inpainter": _train(
        "inpainter",
        "dead-channel inpainter (from the nearest live sensors; with model.inpaint_context the MAE encoder, frozen)",
        BOARDS,
    ),
    "train regressor": _train(
        "regressor", "multi-task regressor (angle, energy, timing, uvwFI) fine-tuned from the MAE", BOARDS
    ),
    "finetune": Command(
        "xec.train.finetune_cli",
        "fine-tune the inpainter on the realdata sample itself (self-supervised, on its live sensors)",
        reads=(
            "seed",
            "train",
            "normalization",
            "finetune",
            *(
                f"inpainter.{k}"
                for k in ("mask_ratio", "loss", "relative_loss_weight", "log_loss_weight", "face_balance")
            ),
            *DATA_BRANCHES,
        ),
        runtime=("mlflow",),
    ),
    "export": Command("xec.deploy.export", "export a regressor or inpainter checkpoint to ONNX", reads=("export",)),
    "infer": Command("xec.deploy.infer", "run ONNX models on a ROOT file", reads=("inference", *DATA_BRANCHES)),
    # `xec infer --fill neighbour|solid_angle|inpainter`: the classical recoveries (for the
    # inpainter: of the holes, inference.hole_fill) also read the baseline's position-fit and
    # recovery parameters (so only those inference runs rerun when they change)
    "infer classical-fill": Command(
        "xec.deploy.infer",
        "xec infer with dead sensors filled by a classical recovery (all of them, or the inpainter's holes)",
        reads=("inference", *DATA_BRANCHES, "baseline"),
    ),
    "baseline": Command(
        "xec.baseline.cli", "classical (non-ML) reconstruction of a ROOT file", reads=("baseline", "data.tree")
    ),
    "merge": Command(
        "xec.scatter", "merge per-file parquet outputs into one dataset directory (run periods)", reads=()
    ),
    "inpainting": Command(
        "xec.inpainting.cli",
        "score the inpainter against the classical dead-sensor recoveries on hidden live sensors",
        reads=(
            *(f"inpainting.{k}" for k in ("hide", "min_npho", "npho_bins", "goal_ratio", "max_events")),
            "finetune.holdout_fraction",
            "baseline",
            "seed",
            *DATA_BRANCHES,
        ),
        runtime=("inpainting.chunk_size", "inpainting.batch_size", "inference.device", "inference.intra_op_threads"),
    ),
    "deadsweep": Command(
        "xec.inpainting.deadsweep_cli",
        "resolution of the ML (with inpainter) and the classical reconstruction vs the fraction of dead sensors",
        reads=(
            *(f"deadsweep.{k}" for k in ("fractions", "patterns", "board_size", "ml_fills", "max_events", "n_boot")),
            "inference.time_from_live_sensors",
            "inference.hole_fill",
            "baseline",
            "seed",
            *DATA_BRANCHES,
        ),
        runtime=("deadsweep.chunk_size", "deadsweep.batch_size", "inference.device", "inference.intra_op_threads"),
    ),
    "plots": Command(
        "xec.plots.cli",
        "make the plots of a pipeline run",
        reads=("plots", "data.tree", "data.bench", "summary.fiducial", "summary.max_events"),
    ),
    "summary": Command("xec.summary", "physics summary: ML vs classical reconstruction", reads=("summary", "seed")),
    "model-info": Command(
        "xec.models.info", "print the parameter counts of a model preset", reads=("model", "normalization")
    ),
    "scan-summary": Command(
        "xec.scan_cli", "rank the points of a hyperparameter/architecture scan (config scans:)", reads=("scans.{scan}",)
    ),
}


# `xec infer --fill F` reads its config through this declaration (the classical fills of
# xec.baseline.fill also read the `baseline` section, the inpainter's for its holes); the
# workflow's inference rule uses it too
INFER_FILL_COMMANDS = {
    "sentinel": "infer",
    "inpainter": "infer classical-fill",
    "neighbour": "infer classical-fill",
    "solid_angle": "infer classical-fill",
}


def infer_command(fill: str) -> str:
    """The declaration `xec infer --fill <fill>` reads its config through."""
    if fill not in INFER_FILL_COMMANDS:
        raise XecError(f"unknown dead-sensor fill {fill!r}; choose one of {sorted(INFER_FILL_COMMANDS)}")
    return INFER_FILL_COMMANDS[fill]


def get_command(name: str) -> Command:
    if name not in COMMANDS:
        raise XecError(f"unknown xec command {name!r}; known: {sorted(COMMANDS)}")
    return COMMANDS[name]


def config_keys(name: str, runtime: bool = True, **fields: str) -> tuple[str, ...]:
    """The declared keys of command ``name`` (``runtime=False``: only those its outputs depend on),
    placeholders filled from ``fields``."""
    cmd = get_command(name)
    keys = cmd.reads + (cmd.runtime if runtime else ())
    try:
        return tuple(k.format(**fields) for k in keys)
    except KeyError as exc:
        raise XecError(f"xec {name}: config key placeholder {exc} needs a value") from None
