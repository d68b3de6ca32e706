"""Self-supervised fine-tuning of the inpainter on the realdata sample itself (issue 14 part 4).

Real data has no truth for its dead sensors but has one for every live sensor. Starting from the
simulation-trained inpainter checkpoint (its EMA weights), the inpainter stage's own masking and
loss (xec.train.inpainter: ``inpainter.mask_ratio`` of the live sensors hidden per event, loss on
the hidden ones, ``inpainter.loss`` and ``inpainter.relative_loss_weight``) are run by the one
Trainer (xec.train.loop) on the realdata events; what differs from the simulation stage:

* the data: the first ``finetune.max_events`` events of the realdata ROOT files, read and
  normalized in memory (``read_realdata``: the normalizer of the config, which must be the
  checkpoint's), no shards and no targets;
* the sample's own dead sensors (npho 1e10 / NaN in the file) are never hidden and never
  scored: they have no truth. The model is told to fill them (mask = hidden | dead, as
  `xec infer` and `xec inpainting` run it), so their input values are replaced before the
  encoder sees them and cannot reach the loss or the gradients (tests/test_finetune.py);
* the split: events held out by a hash of (run, event) (xec.inpainting.holdout,
  ``finetune.holdout_fraction``) are the validation set (per-face errors on hidden live sensors
  before and after: metrics.json ``val`` and ``val.initial_*``) and are never trained on;
  `xec inpainting` scores both inpainters on them against the classical rules;
* hyperparameters from the ``finetune`` section (epochs, batch_size, lr, optimizer overrides)
  over the ``train`` defaults; the encoder frozen by default (``finetune.freeze_encoder``); the
  weight of the loss's relative-error term of bright sensors is ``finetune.relative_loss_weight``
  (default 0.3; null: the inpainter's), since the normalized-unit loss alone, fine-tuned, trades
  the bright sensors' relative error (what `xec inpainting` scores) for the dark ones'.

The output is an inpainter checkpoint (stage ``inpainter``, same model) that `xec export`,
`xec infer --inpainter` and `xec inpainting` take as is; its ``finetune`` entry records the
source checkpoint, the files, the split and the event counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xec.errors import InputFileError, XecError
from xec.geometry import FACE_NAMES, get_geometry
from xec.inpainting.holdout import ID_BRANCHES, check_fraction, event_ids, holdout_flags
from xec.models.local_fill import npho_cap
from xec.models.mae import npho_threshold_normalized
from xec.normalization import INVALID_ABOVE, Normalizer
from xec.train.checkpoint import load_checkpoint
from xec.train.inpainter import InpainterStage, face_balance_weights

log = logging.getLogger("xec.train")

OUT_NAME = "inpainter_finetune"  # results/<OUT_NAME>/ and the MLflow experiment suffix


# ----------------------------------------------------------------------------- data
@dataclass
class RealdataEvents:
    """Normalized realdata events in memory: x (N, 4760, 2) float32, dead (N, 4760) bool, ids."""

    x: np.ndarray
    dead: np.ndarray
    run: np.ndarray
    event: np.ndarray
    files: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file -> its error

    def __len__(self) -> int:
        return len(self.x)

    def select(self, keep: np.ndarray) -> RealdataEvents:
        return RealdataEvents(self.x[keep], self.dead[keep], self.run[keep], self.event[keep], self.files, self.skipped)


def read_realdata(
    files: Sequence[str],
    normalizer: Normalizer,
    tree: str = "tree",
    npho_branch: str = "npho",
    time_branch: str = "relative_time",
    max_events: int | None = None,
    chunk_size: int = 1000,
) -> RealdataEvents:
    """The first ``max_events`` events (all for None) of ``files``, normalized, with their dead
    sensors (npho > 9e9 or NaN) and (run, event) ids. A file that cannot be read (InputFileError:
    missing, truncated, wrong tree or branches) is left out and listed in ``skipped``; an event
    without any live sensor on a face is an XecError naming the file and the event (nothing to
    learn from or fill with there)."""
    from xec.rootio import iterate_events

    g = get_geometry()
    faces = np.asarray(g.face)
    xs, deads, runs, events = [], [], [], []
    skipped: dict[str, str] = {}
    total = 0
    for path in files:
        if max_events is not None and total >= max_events:
            break
        # a file that cannot be read fails its own inference job, not the fine-tuning: it is
        # left out here (and listed in the metrics), whatever part of it was read
        parts: tuple[list, list, list, list] = ([], [], [], [])
        n_file = 0
        try:
            for _, arrays in iterate_events(
                [path], tree, (npho_branch, time_branch), optional_branches=ID_BRANCHES, step_size=chunk_size
            ):
                npho, t = arrays[npho_branch], arrays[time_branch]
                if max_events is not None:
                    npho, t = npho[: max_events - total - n_file], t[: max_events - total - n_file]
                n = len(npho)
                if n == 0:
                    break
                first = n_file
                dead = np.isnan(npho) | (npho > INVALID_ABOVE)
                for f, face in enumerate(FACE_NAMES):
                    empty = dead[:, faces == f].all(axis=1)
                    if empty.any():
                        i = int(np.flatnonzero(empty)[0])
                        raise XecError(
                            f"{path}: entry {first + i} has no live sensor on the {face} face ({int(empty.sum())} "
                            f"such events in entries {first}..{first + n - 1}); a realdata sample for `xec "
                            "finetune` needs live sensors on every face"
                        )
                run, event = event_ids({k: v[:n] for k, v in arrays.items() if k in ID_BRANCHES}, first, n)
                parts[0].append(normalizer.normalize_events(npho, t).astype(np.float32, copy=False))
                parts[1].append(dead)
                parts[2].append(run)
                parts[3].append(event)
                n_file += n
        except InputFileError as exc:
            log.warning("finetune: %s left out: %s", path, exc)
            skipped[str(path)] = str(exc)
            continue
        for store, part in zip((xs, deads, runs, events), parts):
            store.extend(part)
        total += n_file
    if total == 0:
        raise XecError(f"{', '.join(files)}: no realdata events to fine-tune on (tree {tree!r})")
    return RealdataEvents(
        np.concatenate(xs),
        np.concatenate(deads),
        np.concatenate(runs),
        np.concatenate(events),
        [f for f in files if str(f) not in skipped],
        skipped,
    )


class EventArrayLoader:
    """Batches of in-memory events with the ShardLoader contract the Trainer uses:
    ``for x, targets, weights in loader`` (targets = {"dead": (B, 4760) bool}, weights = {}),
    ``len(loader)``, ``set_epoch(epoch)`` (reshuffles from (seed, epoch) alone), ``events``."""

    def __init__(self, events: RealdataEvents, batch_size: int, shuffle: bool = False, seed: int = 0):
        if batch_size < 1:
            raise XecError(f"batch_size must be >= 1, got {batch_size}")
        self.data = events
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.events = len(events)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.events / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        order = np.arange(self.events)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.events)
        for i in range(0, self.events, self.batch_size):
            idx = np.sort(order[i : i + self.batch_size])
            x = torch.from_numpy(self.data.x[idx])
            yield x, {"dead": torch.from_numpy(self.data.dead[idx])}, {}


# ----------------------------------------------------------------------------- stage
class RealdataFinetuneStage(InpainterStage):
    """The inpainter stage on real data: same model, masking and loss; the sample's dead sensors
    filled but never hidden or scored; the model and its weights from the inpainter checkpoint.

    ``name`` stays ``inpainter`` (the checkpoints it writes are inpainter checkpoints); the
    hyperparameters come from the ``finetune`` section (``hparams``)."""

    section = "finetune"
    hparams_section = section  # epochs, lr, batch size: Stage.hparams reads them here
    seed_offset = 4
    help = "fine-tune the inpainter on the realdata sample (self-supervised, on its live sensors)"

    def __init__(self, cfg: Mapping[str, Any], normalizer: Normalizer, inpainter_checkpoint: str):
        # not Stage.__init__: the model (preset, sizes, head options) is the checkpoint's, not the config's
        self.cfg = cfg
        self.sec = cfg["inpainter"]  # masking and loss: the inpainter stage's own keys
        self.fsec = cfg[self.section]
        self.normalizer = normalizer
        self.tasks = ()
        self.source = str(inpainter_checkpoint)
        self.ckpt = load_checkpoint(inpainter_checkpoint, expected_stage="inpainter", expected_normalizer=normalizer)
        self.meta = dict(self.ckpt["model"])
        self.init_checkpoint = None
        self.init_ckpt = None
        self.mask_ratio = float(self.sec["mask_ratio"])
        self.dead_aug = None  # the random mask alone (inpainter.dead_sensors is the simulation stage's)
        self.loss_kind = self.sec["loss"]
        freeze = self.fsec["freeze_encoder"]
        self.freeze = bool(self.ckpt["model_args"]["freeze_encoder"] if freeze is None else freeze)
        self.time_thr = npho_threshold_normalized(normalizer)
        rel = self.fsec["relative_loss_weight"]
        self.rel_weight = float(self.sec["relative_loss_weight"] if rel is None else rel)
        log_w = self.fsec["log_loss_weight"]
        self.log_weight = float(self.sec["log_loss_weight"] if log_w is None else log_w)
        self.npho_cap = npho_cap(normalizer)
        balance = self.fsec["face_balance"]
        self.sensor_weight = face_balance_weights(float(self.sec["face_balance"] if balance is None else balance))
        self.val_manifest = None
        self.info: dict[str, Any] = {"source_checkpoint": self.source}
        self.initial: dict[str, float] = {}

    def model_args(self) -> dict[str, Any]:
        return {**dict(self.ckpt.get("model_args") or {}), "freeze_encoder": self.freeze}

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "init_checkpoint": self.source, "finetune": dict(self.info)}

    def attach_data(self, train_loader, val_loader) -> None:
        self.info.update(finetune_events=int(train_loader.events), holdout_events=int(val_loader.events))

    def prepare_model(self, model: nn.Module) -> int:
        """All weights (the EMA ones when present: what the inpainter validated and exported)."""
        state = self.ckpt.get("ema_state") or self.ckpt["model_state"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise XecError(
                f"{self.source}: weights do not fit the inpainter model it describes: missing "
                f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
            )
        log.info("finetune: inpainter initialized from %s (%d tensors)", self.source, len(state))
        return len(state)

    def masks(self, x: torch.Tensor, targets, generator) -> tuple[torch.Tensor, torch.Tensor]:
        dead = targets["dead"].bool()
        hidden = self.make_mask(x, generator) & ~dead  # dead sensors have no truth: never hidden or scored
        return hidden, hidden | dead

    def finalize(self, model, val_loader, out_dir: Path, ctx) -> dict[str, float]:
        """The held-out metrics of the simulation-only inpainter (same masks), next to the final ones."""
        return {f"initial_{k}": v for k, v in self.initial.items()}


# ----------------------------------------------------------------------------- driver
def run_finetune(
    cfg: Mapping[str, Any],
    inpainter_checkpoint: str | Path,
    inputs: Sequence[str],
    out: str | Path,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``inpainter_checkpoint`` on the realdata files ``inputs``; writes OUT/checkpoint.pt
    (an inpainter checkpoint) and OUT/metrics.json; returns the metrics summary. ``cfg``: the
    validated config (the keys `xec finetune` declares are read)."""
    import time

    from xec.config import command_config, plain
    from xec.inputs import expand_inputs
    from xec.normalization import normalizer_from_config
    from xec.train.distributed import init_distributed, shutdown
    from xec.train.loop import Trainer
    from xec.train.tracking import make_tracker
    from xec.utils import seed_everything

    cfg = command_config(cfg, "finetune")
    sec, data = cfg["finetune"], cfg["data"]
    fraction = check_fraction(sec["holdout_fraction"])
    normalizer = normalizer_from_config(cfg)
    files = expand_inputs(list(inputs))
    out = Path(out)
    t0 = time.perf_counter()
    stage = RealdataFinetuneStage(cfg, normalizer, str(inpainter_checkpoint))
    events = read_realdata(
        files,
        normalizer,
        data["tree"],
        data["npho_branch"],
        data["time_branch"],
        max_events=sec["max_events"],
    )
    held = holdout_flags(events.run, events.event, fraction)
    if held.all() or not held.any():
        raise XecError(
            f"{', '.join(files)}: config finetune.holdout_fraction = {fraction} leaves "
            f"{int((~held).sum())} events to fine-tune on and {int(held.sum())} to hold out of {len(events)}; "
            "both must be > 0 (read more events: finetune.max_events)"
        )
    stage.info.update(
        files=events.files, skipped_files=events.skipped, holdout_fraction=fraction, events_read=len(events)
    )
    hp = stage.hparams(cfg)
    train_loader = EventArrayLoader(events.select(~held), int(sec["batch_size"]), shuffle=True, seed=hp["seed"])
    val_loader = EventArrayLoader(events.select(held), int(sec["batch_size"]), shuffle=False)
    t_read = time.perf_counter() - t0
    ctx = init_distributed(cfg["train"]["device"])
    try:
        if ctx.world_size > 1:
            raise XecError("xec finetune runs in one process (a short fine-tuning); not under torchrun")
        stage.attach_data(train_loader, val_loader)
        seed_everything(hp["seed"])
        model = stage.build_model()
        stage.prepare_model(model)
        tracker = make_tracker(cfg["mlflow"], OUT_NAME, run_name=f"{OUT_NAME}-{out.name}")
        if tags:
            tracker.set_tags(dict(tags))
        log.info(
            "finetune: %d realdata events read from %d file(s) in %.1f s: %d to fine-tune on, %d held out "
            "(fraction %.2f); encoder %s; %d batches/epoch, %d epoch(s)",
            len(events),
            len(files),
            t_read,
            train_loader.events,
            val_loader.events,
            fraction,
            "frozen" if stage.freeze else "trained",
            len(train_loader),
            hp["epochs"],
        )
        trainer = Trainer(stage, model, train_loader, val_loader, hp, out, config=plain(cfg), ctx=ctx, tracker=tracker)
        stage.initial = {k[4:] if k.startswith("val_") else k: v for k, v in trainer.validate().items()}
        log.info(
            "finetune: held-out events before fine-tuning: loss %.5g, relative npho MAE (bright) %.4g",
            stage.initial.get("loss", math.nan),
            stage.initial.get("rel_mae_npho_bright", math.nan),
        )
        try:
            summary = trainer.fit()
        except BaseException:
            tracker.end("FAILED")
            raise
        val = summary["val"]
        log.info(
            "finetune: held-out events after: loss %.5g (before %.5g), relative npho MAE (bright) %.4g "
            "(before %.4g); %.1f s in all",
            val.get("val_loss", math.nan),
            val.get("initial_loss", math.nan),
            val.get("val_rel_mae_npho_bright", math.nan),
            val.get("initial_rel_mae_npho_bright", math.nan),
            time.perf_counter() - t0,
        )
        return summary
    finally:
        shutdown(ctx)
