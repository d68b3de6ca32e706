"""`xec train {mae,inpainter,regressor}`: one command per stage (``xec.train.stages.STAGES``),
one Trainer for all.

    xec train mae --config CFG [--shards results/shards] [--out results/mae] [--resume] [--log LOG]
    xec train inpainter --config CFG [--init results/mae/checkpoint.pt|none] [...]
    xec train regressor --config CFG [--init results/mae/checkpoint.pt|none]
                        [--weights results/reweighting/weights.npz] [...]

``--init`` starts the stage from an MAE checkpoint's encoder. ``--phase epochs`` / ``--phase
finish`` split a run in two jobs (xec.train.loop). With ``train.gpus > 1`` the
command relaunches itself as that many torchrun workers on this node (DDP; rank 0 writes);
started by torchrun itself (any number of workers, one included) it runs DDP as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xec.config import add_config_argument, command_config, load_config, plain
from xec.data.loader import ShardLoader
from xec.errors import XecError
from xec.normalization import normalizer_from_config
from xec.train.checkpoint import load_checkpoint
from xec.train.distributed import init_distributed, launch_torchrun, shutdown, under_torchrun
from xec.train.loop import PHASES, TRAINED, Trainer
from xec.train.stages import STAGES, get_stage
from xec.train.tracking import make_tracker
from xec.utils import seed_everything, setup_logging

log = logging.getLogger("xec.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        add_config_argument(p)
        p.add_argument(
            "--shards",
            default="results/shards",
            help="shard root with train/ and val/ manifests (default: results/shards)",
        )
        p.add_argument("--train", default=None, metavar="MANIFEST", help="train manifest (default: SHARDS/train)")
        p.add_argument("--val", default=None, metavar="MANIFEST", help="val manifest (default: SHARDS/val)")
        p.add_argument(
            "--tag",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="MLflow tag of the run (repeatable; the scan rules tag scan and point)",
        )
        p.add_argument("--out", default=f"results/{name}", help=f"output directory (default: results/{name})")
        p.add_argument(
            "--resume",
            nargs="?",
            const="strict",
            default=False,
            choices=("strict", "auto"),
            help="continue from OUT/checkpoint_last.pt if it exists (strict, the default: a checkpoint "
            "of another model preset / config / data is an error; auto: it is ignored)",
        )
        p.add_argument(
            "--phase",
            default="all",
            choices=PHASES,
            help="all (default): train the epochs, then finish (the stage's final step, e.g. the "
            f"regressor's head refit; checkpoint.pt, metrics.json); epochs: stop after the epochs ({TRAINED}); "
            f"finish: only finish, from OUT/{TRAINED} (one process, also when train.gpus > 1)",
        )
        p.add_argument("--log", default=None, help="log file")
        if stage.takes_init:
            p.add_argument(
                "--init",
                default="none",
                metavar="CKPT|none",
                help="MAE checkpoint whose encoder the stage starts from (default: none, a random encoder)",
            )
        if stage.takes_weights:
            p.add_argument("--weights", default=None, help="reweighting weights .npz (results/reweighting/weights.npz)")
        if stage.takes_inpainter:
            p.add_argument(
                "--inpainter",
                default=None,
                metavar="CKPT",
                help="inpainter checkpoint that fills the augmentation's dead sensors "
                "(config regressor.dead_fill: inpainter)",
            )


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command=f"train {args.stage}")
    gpus = int(cfg["train"]["gpus"])
    if gpus > 1 and args.phase != "finish" and not under_torchrun():
        return launch_torchrun(gpus, "xec.cli", args.argv)
    run_stage(
        args.stage,
        cfg,
        shards=args.shards,
        train_manifest=args.train,
        val_manifest=args.val,
        tags=_parse_tags(args.tag),
        out=args.out,
        resume=args.resume,
        init=getattr(args, "init", None),
        weights=getattr(args, "weights", None),
        inpainter=getattr(args, "inpainter", None),
        phase=args.phase,
    )
    return 0


def _parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise XecError(f"--tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(cfg: Mapping[str, Any], stage: str, train_manifest: str, inputs) -> dict[str, str]:
    """What a resumable checkpoint must share with the current run: the config sections the
    stage's epochs depend on (not the keys only its finish reads, ``Stage.finish_keys``: a
    changed head refit finishes the trained epochs again), the train manifest's content, and the
    input files (MAE checkpoint, weights) by size and modification time."""
    sections = {k: v for k, v in plain(cfg).items() if k in ("seed", "train", "normalization", stage)}
    for key in get_stage(stage).finish_keys:
        *parents, leaf = key.split(".")
        node = sections.get(stage, {})
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    files = []
    for f in inputs:
        f = _ckpt_arg(f)
        if f and Path(f).exists():
            st = Path(f).stat()
            files.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    return {
        "config": _digest(sections),
        "train_manifest": _digest(Path(train_manifest).read_text()),
        "inputs": _digest(files),
    }


def _ckpt_arg(value: str | None) -> str | None:
    return None if value is None or str(value).lower() == "none" else str(value)


def run_stage(
    stage: str,
    cfg: Mapping[str, Any],
    shards: str | Path = "results/shards",
    out: str | Path | None = None,
    resume: bool | str = False,
    init: str | None = None,
    weights: str | None = None,
    train_manifest: str | Path | None = None,
    val_manifest: str | Path | None = None,
    tags: Mapping[str, str] | None = None,
    inpainter: str | None = None,
    phase: str = "all",
) -> dict[str, Any]:
    """Train one stage end to end; returns the metrics summary (also written to OUT/metrics.json).
    ``cfg``: the validated config (only the keys `train <stage>` declares are read); ``init``: MAE
    checkpoint whose encoder the stage starts from (None or 'none': random); the train/val
    manifests default to ``shards``/train and ``shards``/val; ``tags``: extra MLflow tags;
    ``inpainter``: inpainter checkpoint of a stage that takes one (the regressor's dead_fill);
    ``phase``: all, epochs or finish (xec.train.loop.PHASES)."""
    stage_cls = get_stage(stage)
    cfg = command_config(cfg, f"train {stage}")
    out = Path(out or f"results/{stage}")
    shards = Path(shards)
    tcfg, sec = cfg["train"], cfg[stage]
    normalizer = normalizer_from_config(cfg)
    init = _ckpt_arg(init)
    ctx = init_distributed(tcfg["device"])
    try:
        hp = stage_cls.hparams(cfg)
        st = stage_cls(cfg, normalizer, init_checkpoint=init)
        inpainter = _ckpt_arg(inpainter)
        if stage_cls.takes_inpainter:
            st.attach_inpainter(inpainter, ctx.device)
        elif inpainter is not None:
            raise XecError(f"stage {stage} takes no --inpainter")
        use_weights = weights if (stage_cls.takes_weights and sec["weights"]) else None
        if use_weights and not Path(use_weights).exists():
            raise XecError(f"{use_weights}: reweighting weights not found")
        common = dict(
            tasks=st.tasks,
            num_workers=int(tcfg["num_workers"]),
            rank=ctx.rank,
            world_size=ctx.world_size,
            expected_normalizer=normalizer,
        )
        train_loader = ShardLoader(
            train_manifest or shards / "train" / "manifest.json",
            int(sec["batch_size"]),
            shuffle=True,
            seed=hp["seed"],
            weights=use_weights,
            max_events=tcfg["max_train_events"],
            **common,
        )
        val_loader = ShardLoader(
            val_manifest or shards / "val" / "manifest.json",
            int(sec["batch_size"]),
            shuffle=False,
            seed=hp["seed"],
            max_events=tcfg["max_val_events"],
            **common,
        )
        st.attach_data(train_loader, val_loader)
        seed_everything(hp["seed"])
        model = st.build_model()
        st.prepare_model(model)
        run_id = None
        resumed = out / (TRAINED if phase == "finish" else "checkpoint_last.pt")
        if (resume or phase == "finish") and resumed.exists() and ctx.is_main:
            run_id = (load_checkpoint(resumed).get("tracking") or {}).get("run_id")
        tags = dict(tags or {})
        run_name = f"{stage}-{tags['point']}" if "point" in tags else f"{stage}-{out.name}"
        tracker = make_tracker(cfg["mlflow"], stage, run_name=run_name, is_main=ctx.is_main, run_id=run_id)
        if tags:
            tracker.set_tags(tags)
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            "%s: model preset %s, %d parameters (%d trainable); %d train / %d val events; %d batches/epoch; "
            "device %s, world size %d",
            stage,
            st.meta["preset"],
            n_params,
            n_train,
            train_loader.events,
            val_loader.events,
            len(train_loader),
            ctx.device,
            ctx.world_size,
        )
        fp = fingerprint(cfg, stage, train_loader.manifest["_path"], [init, use_weights, inpainter])
        trainer = Trainer(
            st,
            model,
            train_loader,
            val_loader,
            hp,
            out,
            config=plain(cfg),
            ctx=ctx,
            tracker=tracker,
            resume=resume,
            fingerprint=fp,
            phase=phase,
        )
        try:
            summary = trainer.fit()
        except BaseException:
            tracker.end("FAILED")
            raise
        return summary
    finally:
        shutdown(ctx)
