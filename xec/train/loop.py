"""The one training loop shared by the MAE, inpainter and regressor stages.

A *stage* (``xec.train.base.Stage``; the registry is ``xec.train.stages.STAGES``) supplies
only what differs between stages: its model, training step, evaluation, checkpoint payload and
the optional hooks declared (with no-op defaults) on the base class.

Everything else lives here: AdamW groups, schedules, gradient accumulation and clipping, bf16
autocast on CUDA, EMA, optional torch.compile, non-finite step skipping, atomic checkpoints
every epoch (last / best / final), exact resume, DDP and MLflow.

Phases (``xec train --phase``): ``all`` trains the epochs and finishes (the stage's finalize,
e.g. the regressor's head refit and sigma calibration, then checkpoint.pt and metrics.json);
``epochs`` stops after the epochs and writes checkpoint_trained.pt; ``finish`` resumes from that
file and only finishes. The pipeline runs the regressor's two phases as two jobs, so that its
one-thread finish runs beside the inpainter on a two-core machine.

Resume granularity is the epoch: checkpoint_last.pt is written after each epoch's validation,
the loader is reseeded with ``set_epoch(epoch)``, the stage's random generator (masking,
channel dropout) is reseeded from (seed, epoch, rank), and the global RNG states are restored
from the checkpoint. On CPU with the same thread count a resumed run is bit-identical to an
uninterrupted one (tests compare with atol 1e-6).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from xec import __version__
from xec.errors import XecError
from xec.normalization import Normalizer
from xec.train import checkpoint as ckpt_mod
from xec.train.base import HPARAM_KEYS, Stage
from xec.train.distributed import DistContext, all_reduce_sum, any_flag, barrier
from xec.train.ema import EMA
from xec.train.optim import LRSchedule, build_optimizer
from xec.train.tracking import NullTracker, flatten, system_metrics
from xec.utils import atomic_path, progress_enabled, write_json

log = logging.getLogger("xec.train")


PHASES = ("all", "epochs", "finish")
TRAINED = "checkpoint_trained.pt"  # the state after the last epoch, before the finish (phase epochs)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the stage's generator for one epoch and rank (independent of resume)."""
    return (int(seed) * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63 - 1)


class Trainer:
    def __init__(
        self,
        stage: Stage,
        model: nn.Module,
        train_loader: Any,
        val_loader: Any,
        hp: Mapping[str, Any],
        out_dir: str | Path,
        config: Mapping[str, Any] | None = None,
        ctx: DistContext | None = None,
        tracker: NullTracker | None = None,
        resume: bool | str = False,
        fingerprint: Mapping[str, Any] | None = None,
        phase: str = "all",
    ):
        if phase not in PHASES:
            raise XecError(f"--phase {phase!r}: choose one of {list(PHASES)}")
        self.phase = phase
        self.stage = stage
        missing = [k for k in HPARAM_KEYS if k not in hp]
        if missing:
            raise XecError(f"{stage.name}: hyperparameters {missing} not given (Stage.hparams builds them all)")
        self.hp = dict(hp)
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.out_dir = Path(out_dir)
        self.config = dict(config or {})
        self.tracker = tracker or NullTracker()
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.model = model.to(self.device)
        hp = self.hp
        if int(hp["grad_accum"]) < 1:
            raise XecError(f"grad_accum must be >= 1, got {hp['grad_accum']}")
        self.amp_dtype = self._amp_dtype(hp["precision"])
        self.optimizer = build_optimizer(
            self.model, float(hp["lr"]), float(hp["weight_decay"]), hp["betas"], stage.lr_scales()
        )
        self.steps_per_epoch = max(1, math.ceil(len(train_loader) / int(hp["grad_accum"])))
        total = self.steps_per_epoch * int(hp["epochs"])
        self.scheduler = LRSchedule(
            self.optimizer,
            float(hp["lr"]),
            total,
            int(round(float(hp["warmup_epochs"]) * self.steps_per_epoch)),
            hp["schedule"],
            float(hp["min_lr_ratio"]),
        )
        self.ema = EMA(self.model, float(hp["ema_decay"])) if float(hp["ema_decay"]) > 0 else None
        # gradient-clipping groups: everything else, then the modules the stage clips on their own
        prefixes = tuple(stage.separate_clip_prefixes())
        separate = {id(p) for n, p in self.model.named_parameters() if prefixes and n.startswith(prefixes)}
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.clip_groups = [
            g for g in ([p for p in params if id(p) not in separate], [p for p in params if id(p) in separate]) if g
        ]
        # A stage may train through a view of the model (e.g. the inpainter's raw predict()):
        # DDP must wrap the module whose forward the loss calls, or gradients are not synced.
        self.train_model: nn.Module = stage.train_module(self.model)
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # 4-D weights channels_last, like the activations: the depthwise kernels' gradients
            # come back in that layout, and DDP's buckets follow the parameters' layout (else it
            # warns of a stride mismatch and copies every step). Same values, single runs untouched.
            self.model.to(memory_format=torch.channels_last)
            self.train_model = DDP(
                self.train_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(hp["find_unused_parameters"]),
                gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no copy
            )
        if hp["compile"]:
            self.train_model = torch.compile(self.train_model)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, Any]] = []
        self.best_value = math.inf
        self.best_epoch = -1
        self.nonfinite_total = 0
        self.run_id = getattr(self.tracker, "run_id", None)
        # What the run depends on besides the model (config sections, data, init checkpoint): a
        # checkpoint_last.pt of another fingerprint is not resumed (auto) or is an error (strict).
        self.fingerprint = dict(fingerprint or {})
        if phase == "finish":
            self._resume("strict", TRAINED)
        elif resume:
            self._resume("auto" if resume == "auto" else "strict")

    # ----------------------------------------------------------------- set-up helpers
    def _amp_dtype(self, precision: str) -> torch.dtype | None:
        """bf16 autocast: by default (auto) on CUDA only; asked for explicitly (bf16) on CPU too,
        where it is slower than fp32 on most cores but runs the same autocast code path as a GPU
        (how the CPU tests exercise it)."""
        if precision == "fp32":
            return None
        if precision == "bf16":
            return torch.bfloat16
        if precision == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        raise XecError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _generator(self, epoch: int, salt: int = 0) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(epoch_seed(int(self.hp["seed"]) + salt, epoch, self.ctx.rank))
        return g

    # ----------------------------------------------------------------- checkpoints
    def payload(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        extra = dict(self.stage.payload())
        return {
            "stage": self.stage.name,
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema_state": ({k: v.detach().cpu() for k, v in self.ema.state_dict().items()} if self.ema else None),
            "ema_updates": self.ema.num_updates if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "config": self.config,
            "model": extra.get("model", {}),
            "normalization": extra.get("normalization"),
            "tasks": list(extra.get("tasks", [])),
            "target_standardization": extra.get("target_standardization"),
            "rng": ckpt_mod.rng_state(),
            "metrics": {
                "history": self.history,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "best_metric": self.stage.best_metric,
                "nonfinite_steps": self.nonfinite_total,
                **(metrics or {}),
            },
            "hp": dict(self.hp),
            "tracking": {"run_id": self.run_id},
            "fingerprint": self.fingerprint,
            "xec_version": __version__,
            # stage extras (model_args: constructor options build_model_from_checkpoint needs; init_checkpoint)
            **{
                k: v
                for k, v in extra.items()
                if k not in ("stage", "model", "normalization", "tasks", "target_standardization")
            },
        }

    def _resume(self, mode: str = "strict", name: str = "checkpoint_last.pt") -> None:
        """strict (``--resume``): a checkpoint of another stage, model preset or fingerprint is an
        error. auto (the Snakemake rules): such a checkpoint is ignored and training starts over.
        ``name``: TRAINED for the finish phase, which has nothing to start over from."""
        path = self.out_dir / name
        if not path.exists():
            if name == TRAINED:
                raise XecError(f"{path} not found: --phase finish continues a run of --phase epochs in {self.out_dir}")
            log.info("--resume: %s not found, starting from scratch", path)
            return
        try:
            ck = ckpt_mod.load_checkpoint(path, expected_stage=self.stage.name)
            ckpt_mod.check_model_compatible(ck, self.stage.payload().get("model", {}), where=f"{path} (--resume)")
            old = dict(ck.get("fingerprint") or {})
            changed = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
            if changed:
                again = "delete it (or use --resume auto) to start over"
                if name == TRAINED:
                    again = "run --phase epochs again"
                raise XecError(f"{path} (--resume): made with a different {', '.join(changed)}; {again}")
        except XecError as exc:
            if mode != "auto":
                raise
            log.warning("not resuming: %s; starting from scratch", exc)
            return
        if self.stage.payload().get("normalization") and ck.get("normalization"):
            Normalizer.from_dict(ck["normalization"]).check_compatible(
                self.stage.payload()["normalization"], where=f"{path} (--resume)"
            )
        self.model.load_state_dict(ck["model_state"])
        if self.ema is not None and ck.get("ema_state") is not None:
            self.ema.load_state_dict(ck["ema_state"], ck.get("ema_updates", 0))
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as exc:
            raise XecError(
                f"{path}: optimizer state does not fit the model (--resume with another config?): {exc}"
            ) from exc
        self.scheduler.load_state_dict(ck["scheduler"])
        self.epoch = int(ck["epoch"])
        self.step = int(ck["step"])
        m = ck.get("metrics") or {}
        self.history = list(m.get("history", []))
        self.best_value = float(m.get("best_value", math.inf))
        self.best_epoch = int(m.get("best_epoch", -1))
        self.nonfinite_total = int(m.get("nonfinite_steps", 0))
        if ck.get("rng"):
            ckpt_mod.set_rng_state(ck["rng"])
        log.info("resumed %s from %s at epoch %d (step %d)", self.stage.name, path, self.epoch, self.step)

    def _save(self, name: str, metrics: Mapping[str, Any]) -> None:
        if self.ctx.is_main:
            ckpt_mod.save_checkpoint(self.out_dir / name, self.payload(metrics))

    # ----------------------------------------------------------------- training
    def train_epoch(self) -> dict[str, float]:
        hp = self.hp
        accum = int(hp["grad_accum"])
        self.train_model.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(self.epoch)
        gen = self._generator(self.epoch)
        sums: dict[str, float] = {}
        n_events = 0.0
        n_batches = len(self.train_loader)
        wait = 0.0
        consecutive_bad = 0
        skipped = 0
        t0 = time.perf_counter()
        bar = tqdm(
            total=n_batches,
            desc=f"{self.stage.name} epoch {self.epoch + 1}/{hp['epochs']}",
            disable=not (progress_enabled() and self.ctx.is_main),
            leave=False,
            unit="batch",
        )
        self.optimizer.zero_grad(set_to_none=True)
        it = iter(self.train_loader)
        micro = 0
        good_in_group = 0
        for i in range(n_batches):
            tw = time.perf_counter()
            try:
                x, targets, weights = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - tw
            x = x.to(self.device, non_blocking=True)
            targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
            weights = {k: v.to(self.device, non_blocking=True) for k, v in weights.items()}
            micro += 1
            last_micro = micro == accum or i == n_batches - 1
            sync = self.ctx.enabled and not last_micro
            with self.train_model.no_sync() if sync and hasattr(self.train_model, "no_sync") else nullcontext():
                with self._autocast():
                    loss, logs = self.stage.training_step(self.train_model, x, targets, weights, gen)
                bad = any_flag(not bool(torch.isfinite(loss.detach()).item()), self.ctx)
                if not bad:
                    (loss / accum).backward()
                    good_in_group += 1
            if bad:
                skipped += 1
                consecutive_bad += 1
                self.nonfinite_total += 1
                log.warning(
                    "non-finite loss at epoch %d batch %d: step skipped (%d in a row)",
                    self.epoch + 1,
                    i,
                    consecutive_bad,
                )
                if consecutive_bad > int(hp["max_nonfinite_steps"]):
                    raise XecError(
                        f"{self.stage.name}: {consecutive_bad} consecutive training steps with a "
                        f"non-finite loss (epoch {self.epoch + 1}, batch {i}); stopping. Lower the "
                        f"learning rate ({self.stage.name}.lr) or check the input shards for NaN/Inf."
                    )
            else:
                consecutive_bad = 0
                b = float(x.shape[0])
                n_events += b
                # summed where they live (float64, the same numbers as Python floats): a float()
                # per logged value would wait for the GPU at every step
                for k, v in (("loss", loss), *logs.items()):
                    v = v.detach().double() * b if torch.is_tensor(v) else float(v) * b
                    sums[k] = sums[k] + v if k in sums else v
            if last_micro:
                # In DDP a skipped final micro-batch leaves gradients unsynchronized: skip the step.
                if good_in_group > 0 and not (bad and self.ctx.enabled):
                    self._optimizer_step()
                self.optimizer.zero_grad(set_to_none=True)
                micro = 0
                good_in_group = 0
            every = int(hp["log_every"] or 0)
            if every and self.ctx.is_main and (i + 1) % every == 0:
                el = time.perf_counter() - t0
                log.info(
                    "%s epoch %d batch %d/%d: loss %.5g, %.0f events/s, data wait %.1f%%",
                    self.stage.name,
                    self.epoch + 1,
                    i + 1,
                    n_batches,
                    float(sums.get("loss", float("nan"))) / max(n_events, 1),
                    n_events * self.ctx.world_size / max(el, 1e-9),
                    100 * wait / max(el, 1e-9),
                )
            if self.ctx.is_main and not bar.disable:
                el = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{float(sums.get('loss', float('nan'))) / max(n_events, 1):.4g}",
                    ev_s=f"{n_events * self.ctx.world_size / max(el, 1e-9):.0f}",
                )
                bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - t0
        sums = {k: float(v) for k, v in sums.items()}  # one wait for the device per epoch
        red = all_reduce_sum(
            {**sums, "_n": n_events, "_wait": wait, "_elapsed": elapsed, "_skipped": skipped}, self.ctx
        )
        n = max(red["_n"], 1.0)
        out = {f"train_{k}": v / n for k, v in red.items() if not k.startswith("_")}
        world = self.ctx.world_size
        out["events_per_s"] = red["_n"] / max(red["_elapsed"] / world, 1e-9)
        out["data_wait_fraction"] = red["_wait"] / max(red["_elapsed"], 1e-9)
        out["nonfinite_steps"] = red["_skipped"]
        out["epoch_time_s"] = red["_elapsed"] / world
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def _optimizer_step(self) -> None:
        clip = float(self.hp["grad_clip"] or 0.0)
        if clip > 0:
            norms = [torch.nn.utils.clip_grad_norm_(group, clip) for group in self.clip_groups]
            if not all(torch.isfinite(n) for n in norms):  # identical on every rank after the DDP all-reduce
                self.nonfinite_total += 1
                log.warning("non-finite gradient norm: optimizer step skipped")
                return
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self.eval_model
        model.eval()
        if hasattr(self.val_loader, "set_epoch"):
            self.val_loader.set_epoch(0)  # same val order/masks every epoch
        with self._autocast():
            metrics = self.stage.evaluate(model, self.val_loader, self.ctx, self._generator(0, salt=1))
        return {f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in metrics.items()}

    def fit(self) -> dict[str, Any]:
        hp = self.hp
        epochs = int(hp["epochs"])
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not self.history:
                self.tracker.log_params(flatten(self.config))
                self.tracker.set_tags(
                    {"stage": self.stage.name, "xec_version": __version__, "world_size": str(self.ctx.world_size)}
                )
        best_key = f"val_{self.stage.best_metric}"
        if self.phase == "finish":
            if self.epoch < epochs:
                raise XecError(
                    f"{self.out_dir / TRAINED}: holds {self.epoch} of the {epochs} epochs the config asks for "
                    "(stage epochs changed?); run --phase epochs again"
                )
            log.info("%s: finishing the %d trained epochs of %s", self.stage.name, self.epoch, self.out_dir / TRAINED)
            return self.finish()
        while self.epoch < epochs:
            tr = self.train_epoch()
            va = self.validate()
            self.epoch += 1
            sysm = system_metrics(self.device) if self.ctx.is_main else {}
            row = {"epoch": self.epoch, "step": self.step, **tr, **va, **sysm}
            self.history.append(row)
            value = va.get(best_key, math.nan)
            improved = math.isfinite(value) and value < self.best_value
            if improved:
                self.best_value, self.best_epoch = value, self.epoch
            if self.ctx.is_main:
                self._save("checkpoint_last.pt", {"val": va})
                if improved:
                    self._save("checkpoint_best.pt", {"val": va})
                self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=self.epoch)
                log.info(
                    "%s epoch %d/%d: train_loss %.5g %s %.5g%s | %.0f events/s, data wait %.1f%%, lr %.3g, "
                    "%d non-finite, %.1fs",
                    self.stage.name,
                    self.epoch,
                    epochs,
                    tr.get("train_loss", math.nan),
                    best_key,
                    value,
                    " (best)" if improved else "",
                    tr["events_per_s"],
                    100 * tr["data_wait_fraction"],
                    tr["lr"],
                    tr["nonfinite_steps"],
                    tr["epoch_time_s"],
                )
                head = [k for k in self.stage.headline if k in va]
                if head:
                    log.info(
                        "%s epoch %d/%d: %s",
                        self.stage.name,
                        self.epoch,
                        epochs,
                        ", ".join(f"{k[4:]} {va[k]:.4g}" for k in head),
                    )
            barrier(self.ctx)
        if self.phase == "epochs":
            return self.keep_trained()
        return self.finish()

    def keep_trained(self) -> dict[str, Any]:
        """Phase epochs: TRAINED (what checkpoint_last.pt holds after the last epoch) for --phase finish."""
        va = {k: v for k, v in (self.history[-1] if self.history else {}).items() if k.startswith("val_")}
        if self.ctx.is_main:
            self._save(TRAINED, {"val": va})
            self.tracker.end("FINISHED")  # the finish phase reopens this run (its id is in TRAINED)
            log.info("%s: %d epochs trained; %s waits for --phase finish", self.stage.name, self.epoch, TRAINED)
        barrier(self.ctx)
        return {"stage": self.stage.name, "epochs": self.epoch, "steps": self.step, "val": va, "history": self.history}

    def finish(self) -> dict[str, Any]:
        final_val = (
            self.validate() if not self.history else {k: v for k, v in self.history[-1].items() if k.startswith("val_")}
        )
        self.eval_model.eval()
        with torch.no_grad(), self._autocast():
            extra = self.stage.finalize(self.eval_model, self.val_loader, self.out_dir, self.ctx)
        if self.ema is not None:
            self.stage.sync_replaced(self.model, self.ema.module)
        last = self.history[-1] if self.history else {}
        summary = {
            "stage": self.stage.name,
            "epochs": self.epoch,
            "steps": self.step,
            "val": {**final_val, **extra},
            "best": {"metric": f"val_{self.stage.best_metric}", "value": self.best_value, "epoch": self.best_epoch},
            "train": {k: v for k, v in last.items() if k.startswith("train_")},
            "system": {
                k: last[k]
                for k in (
                    "events_per_s",
                    "data_wait_fraction",
                    "rss_mb",
                    "gpu_mem_alloc_mb",
                    "gpu_mem_peak_mb",
                    "epoch_time_s",
                )
                if k in last
            },
            "nonfinite_steps": self.nonfinite_total,
            "world_size": self.ctx.world_size,
            "history": self.history,
        }
        if self.ctx.is_main:
            self._save("checkpoint.pt", summary)
            write_json(self.out_dir / "metrics.json", summary)
            self.tracker.log_metrics({f"final_{k}": v for k, v in summary["val"].items()}, step=self.epoch)
            self.tracker.log_artifact(self.out_dir / "metrics.json")
            cfg_path = self.out_dir / "config.yaml"
            if self.config:
                with atomic_path(cfg_path) as tmp:
                    tmp.write_text(yaml.safe_dump(self.config, sort_keys=True))
                self.tracker.log_artifact(cfg_path)
            for plot in sorted(self.out_dir.glob("*.png")):
                self.tracker.log_artifact(plot, "plots")
            self.tracker.end("FINISHED")
        barrier(self.ctx)
        return summary
