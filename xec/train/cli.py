"""`xec train {mae,inpainter,regressor}`: one command per stage, one Trainer for all.

    xec train mae --config CFG [--shards results/shards] [--out results/mae] [--resume] [--log LOG]
    xec train inpainter --config CFG --mae results/mae/checkpoint.pt|none [...]
    xec train regressor --config CFG [--init results/mae/checkpoint.pt|none] [--weights results/reweighting/weights.npz] [...]

Launch under torchrun (``train.gpus > 1`` in the Snakemake rules) for DDP: rank 0 writes.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from xec.config import add_config_argument, load_config
from xec.errors import XecError
from xec.utils import seed_everything, setup_logging

log = logging.getLogger("xec.train")

STAGES = ("mae", "inpainter", "regressor")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    helps = {"mae": "masked-autoencoder pretraining of the encoder",
             "inpainter": "dead-channel inpainter (encoder from the MAE, frozen by default)",
             "regressor": "multi-task regressor (angle, energy, timing, uvwFI) fine-tuned from the MAE"}
    for stage in STAGES:
        p = sub.add_parser(stage, help=helps[stage], description=helps[stage])
        add_config_argument(p)
        p.add_argument("--shards", default="results/shards",
                       help="shard root with train/ and val/ manifests (default: results/shards)")
        p.add_argument("--out", default=f"results/{stage}", help=f"output directory (default: results/{stage})")
        p.add_argument("--resume", nargs="?", const="strict", default=False, choices=("strict", "auto"),
                       help="continue from OUT/checkpoint_last.pt if it exists (strict, the default: a checkpoint "
                            "of another model preset / config / data is an error; auto: it is ignored)")
        p.add_argument("--log", default=None, help="log file")
        if stage == "inpainter":
            p.add_argument("--mae", required=True, metavar="CKPT|none",
                           help="MAE checkpoint whose encoder is used, or 'none' to train from scratch")
        if stage == "regressor":
            p.add_argument("--init", default="none", metavar="CKPT|none",
                           help="MAE checkpoint to initialize the encoder from (default: none)")
            p.add_argument("--weights", default=None, help="reweighting weights .npz (results/reweighting/weights.npz)")


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config)
    run_stage(args.stage, cfg, shards=args.shards, out=args.out, resume=args.resume,
              mae=getattr(args, "mae", None), init=getattr(args, "init", None),
              weights=getattr(args, "weights", None))
    return 0


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(cfg: Mapping[str, Any], stage: str, train_manifest: str, inputs) -> dict[str, str]:
    """What a resumable checkpoint must share with the current run: the config sections the
    stage depends on, the train manifest's content, and the input files (MAE checkpoint,
    weights) by size and modification time."""
    files = []
    for f in inputs:
        f = _ckpt_arg(f)
        if f and Path(f).exists():
            st = Path(f).stat()
            files.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    return {
        "config": _digest({k: cfg.get(k) for k in ("seed", "train", "normalization", stage)}),
        "train_manifest": _digest(Path(train_manifest).read_text()),
        "inputs": _digest(files),
    }


def _ckpt_arg(value: str | None) -> str | None:
    return None if value is None or str(value).lower() == "none" else str(value)


def run_stage(stage: str, cfg: Mapping[str, Any], shards: str | Path = "results/shards",
              out: str | Path | None = None, resume: bool | str = False, mae: str | None = None,
              init: str | None = None, weights: str | None = None) -> dict[str, Any]:
    """Train one stage end to end; returns the metrics summary (also written to OUT/metrics.json)."""
    from xec.data.loader import ShardLoader
    from xec.normalization import normalizer_from_config
    from xec.train.distributed import init_distributed, shutdown
    from xec.train.loop import Trainer
    from xec.train.stages import stage_hparams
    from xec.train.tracking import make_tracker

    if stage not in STAGES:
        raise XecError(f"unknown stage {stage!r}; choose one of {STAGES}")
    cfg = dict(cfg)
    out = Path(out or f"results/{stage}")
    shards = Path(shards)
    tcfg = cfg.get("train", {})
    normalizer = normalizer_from_config(cfg)
    ctx = init_distributed(tcfg.get("device", "auto"))
    try:
        hp = stage_hparams(cfg, stage)
        sec = cfg[stage]
        if stage == "mae":
            from xec.train.mae import MAEStage

            st = MAEStage(cfg, normalizer)
        elif stage == "inpainter":
            from xec.train.inpainter import InpainterStage

            st = InpainterStage(cfg, normalizer, mae_checkpoint=_ckpt_arg(mae))
        else:
            from xec.train.regressor import RegressorStage

            st = RegressorStage(cfg, normalizer, init_checkpoint=_ckpt_arg(init))
        tasks = tuple(getattr(st, "tasks", ()))
        use_weights = weights if (stage == "regressor" and sec.get("weights", True)) else None
        if use_weights and not Path(use_weights).exists():
            raise XecError(f"{use_weights}: reweighting weights not found")
        common = dict(tasks=tasks, num_workers=int(tcfg.get("num_workers", 0)), rank=ctx.rank,
                      world_size=ctx.world_size, expected_normalizer=normalizer)
        train_loader = ShardLoader(shards / "train" / "manifest.json", int(sec["batch_size"]), shuffle=True,
                                   seed=hp["seed"], weights=use_weights, max_events=tcfg.get("max_train_events"),
                                   **common)
        val_loader = ShardLoader(shards / "val" / "manifest.json", int(sec["batch_size"]), shuffle=False,
                                 seed=hp["seed"], max_events=tcfg.get("max_val_events"), **common)
        st.attach_data(train_loader, val_loader) if hasattr(st, "attach_data") else None
        seed_everything(hp["seed"])
        model = st.build_model()
        if hasattr(st, "prepare_model"):
            st.prepare_model(model)
        run_id = None
        if resume and (out / "checkpoint_last.pt").exists() and ctx.is_main:
            from xec.train.checkpoint import load_checkpoint

            run_id = (load_checkpoint(out / "checkpoint_last.pt").get("tracking") or {}).get("run_id")
        tracker = make_tracker(cfg.get("mlflow", {}), stage, run_name=f"{stage}-{out.name}", is_main=ctx.is_main,
                               run_id=run_id)
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s: model preset %s, %d parameters (%d trainable); %d train / %d val events; %d batches/epoch; "
                 "device %s, world size %d", stage, st.payload()["model"].get("preset"), n_params, n_train,
                 train_loader.events, val_loader.events, len(train_loader), ctx.device, ctx.world_size)
        fp = fingerprint(cfg, stage, train_loader.manifest["_path"], [mae, init, use_weights])
        trainer = Trainer(st, model, train_loader, val_loader, hp, out, config=cfg, ctx=ctx, tracker=tracker,
                          resume=resume, fingerprint=fp)
        try:
            summary = trainer.fit()
        except BaseException:
            tracker.end("FAILED")
            raise
        return summary
    finally:
        shutdown(ctx)
