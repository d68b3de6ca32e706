"""Generic trainer: schedules, optimizer groups, EMA, checkpoints, resume, NaN skipping, DDP, MLflow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_train import ToyLoader, ToyStage, run, toy_hp, toy_model
from torch import nn

from xec.errors import XecError
from xec.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from xec.train.ema import EMA
from xec.train.optim import LRSchedule, build_optimizer, lr_factor, param_groups
from xec.train.tracking import flatten, resolve_tracking_uri, with_retry

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "helpers_train.py"


def test_cosine_warmup_schedule_shape():
    f = [lr_factor(s, 100, 10, "cosine", 0.0) for s in range(100)]
    assert f[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in zip(f[:10], f[1:11]))  # linear warm-up
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5, abs=1e-12)  # half-way through the cosine
    assert f[99] < 1e-3 and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(50, 100, 10, "constant") == 1.0
    oc = [lr_factor(s, 100, 30, "onecycle", 0.01) for s in range(100)]
    assert oc[0] == pytest.approx(0.04) and max(oc) == pytest.approx(1.0) and oc.index(max(oc)) == 30
    assert oc[-1] == pytest.approx(0.01, abs=2e-3)
    with pytest.raises(XecError, match="schedule"):
        lr_factor(0, 10, 1, "linear")


def test_schedule_state_roundtrip_sets_group_lrs():
    m = nn.Linear(3, 1)
    opt = build_optimizer(m, 1e-2, 0.1)
    sch = LRSchedule(opt, 1e-2, 20, 4, "cosine")
    for _ in range(7):
        sch.step()
    opt2 = build_optimizer(m, 1e-2, 0.1)
    sch2 = LRSchedule(opt2, 1e-2, 20, 4, "cosine")
    sch2.load_state_dict(sch.state_dict())
    assert sch2.get_last_lr() == sch.get_last_lr() == [1e-2 * lr_factor(7, 20, 4, "cosine")] * 2


def test_param_groups_no_decay_on_norms_biases_embeddings():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(4, 5)
            self.pos_embed = nn.Parameter(torch.zeros(1, 6, 5))
            self.lin = nn.Linear(5, 5)
            self.norm = nn.LayerNorm(5)
            self.head = nn.Linear(5, 2)

    groups = param_groups(M(), 0.05, 1e-3, lr_scales=[("head", 10.0)])
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert decay == {"lin.weight", "head.weight"}
    assert no_decay == {"emb.weight", "pos_embed", "lin.bias", "norm.weight", "norm.bias", "head.bias"}
    head = [g for g in groups if "head.weight" in g["names"]][0]
    assert head["lr"] == pytest.approx(1e-2)


def test_ema_follows_weights_with_warmup():
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # warm-up decay min(0.9, 1/10) = 0.1 -> shadow = 0.9
    assert float(ema.module.weight[0, 0]) == pytest.approx(0.9)
    for _ in range(200):
        ema.update(m)
    assert float(ema.module.weight[0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert ema.current_decay() == 0.9
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    st = rng_state()
    save_checkpoint(tmp_path / "c.pt", {"stage": "mae", "model_state": {}, "rng": st})
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_checkpoints_are_weights_only_loadable_and_complete(tmp_path):
    summary, trainer = run(tmp_path, epochs=2)
    for name in ("checkpoint.pt", "checkpoint_last.pt", "checkpoint_best.pt"):
        ck = torch.load(tmp_path / name, weights_only=True)
        for key in (
            "stage",
            "model_state",
            "ema_state",
            "optimizer",
            "scheduler",
            "epoch",
            "step",
            "config",
            "model",
            "normalization",
            "tasks",
            "target_standardization",
            "rng",
            "metrics",
            "xec_version",
        ):
            assert key in ck, (name, key)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["step"] == trainer.step == 2 * 8
    # The EMA weights are what validation used: re-evaluating them reproduces the final val loss.
    m = toy_model()
    m.load_state_dict(ck["ema_state"])
    m.eval()
    val = ToyStage().evaluate(m, ToyLoader(n=64, seed=1, shuffle=False), trainer.ctx, None)
    assert val["loss"] == pytest.approx(summary["val"]["val_loss"], rel=1e-6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][-1]["val_loss"] < metrics["history"][0]["train_loss"]  # it learns


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(XecError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(XecError, match="junk.pt: not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "m.pt", {"stage": "mae", "model_state": {}})
    with pytest.raises(XecError, match="stage 'mae', expected 'regressor'"):
        load_checkpoint(tmp_path / "m.pt", expected_stage="regressor")


def test_resume_in_process_is_bit_identical(tmp_path):
    from xec.train.loop import Trainer

    full, t_full = run(tmp_path / "full", epochs=4)
    part_dir = tmp_path / "part"
    # A run "killed" after epoch 2: do what fit() does for two epochs, without finishing; then resume.
    torch.manual_seed(123)  # the resumed process must not depend on the RNG state it starts with

    trainer = Trainer(
        ToyStage(),
        toy_model(),
        ToyLoader(),
        ToyLoader(n=64, seed=1, shuffle=False),
        toy_hp(epochs=4, lr=2e-2, warmup_epochs=0.5, ema_decay=0.9, seed=5),
        part_dir,
        config={"toy": {"epochs": 4}},
    )
    for _ in range(2):
        trainer.train_epoch()
        trainer.validate()
        trainer.epoch += 1
        trainer.history.append({"epoch": trainer.epoch})
        trainer._save("checkpoint_last.pt", {})
    torch.manual_seed(999)
    resumed, t_res = run(part_dir, epochs=4, resume=True)
    assert t_res.step == t_full.step
    for k, v in t_full.model.state_dict().items():
        assert torch.equal(v, t_res.model.state_dict()[k]), k
    assert resumed["val"]["val_loss"] == full["val"]["val_loss"]


def test_nan_steps_skipped_and_counted(tmp_path):
    summary, trainer = run(tmp_path, epochs=1, nan_batches=(1, 3))
    assert summary["nonfinite_steps"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert math.isfinite(summary["val"]["val_loss"])


def test_too_many_nan_steps_is_a_clear_error(tmp_path):
    with pytest.raises(XecError, match="consecutive training steps with a non-finite loss"):
        run(tmp_path, epochs=1, nan_batches=range(8), hp={"max_nonfinite_steps": 3})


def test_grad_accumulation_matches_big_batch(tmp_path):
    """accum=2 x batch 16 takes the same optimizer steps as batch 32 (up to float rounding)."""
    from xec.train.loop import Trainer

    def make(bs, accum, out):
        tr = Trainer(
            ToyStage(),
            toy_model(),
            ToyLoader(batch_size=bs, shuffle=False),
            ToyLoader(n=64, seed=1, shuffle=False),
            toy_hp(epochs=1, lr=1e-2, ema_decay=0.0, grad_clip=0.0, grad_accum=accum, seed=5),
            out,
        )
        tr.model.eval()  # no dropout, so both see identical forward passes
        tr.train_model.eval()
        tr.train_model.train = lambda mode=True: tr.train_model  # keep eval mode
        tr.stage.training_step = lambda m, x, t, w, g: ((m(x) - t["y"]).pow(2).mean(), {})
        tr.train_epoch()
        return tr

    a, b = make(32, 1, tmp_path / "a"), make(16, 2, tmp_path / "b")
    assert a.step == b.step == 8
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=1e-5, atol=1e-6)


def test_tracking_uri_resolution(tmp_path):
    assert resolve_tracking_uri("sqlite:///results/mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/results/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://host:5000", tmp_path) == "http://host:5000"
    assert resolve_tracking_uri("mlruns", tmp_path) == f"file://{tmp_path}/mlruns"
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}


def test_with_retry_retries_only_lock_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retry(flaky, base_delay=0.001) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        with_retry(lambda: (_ for _ in ()).throw(ValueError("other")), base_delay=0.001)


# ---------------------------------------------------------------- multi-process tests
def _env():
    env = dict(os.environ, XEC_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests'}"
    return env


# The SIGKILL + --resume test runs on the real MAE stage: tests/test_train_stages.py.


@pytest.mark.slow
def test_ddp_two_ranks_gloo_disjoint_data_identical_weights(tmp_path):
    rec = tmp_path / "rec"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(HELPER),
            "--out",
            str(tmp_path / "out"),
            "--epochs",
            "2",
            "--record",
            str(rec),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(f"{rec}.rank0", weights_only=True)
    b = torch.load(f"{rec}.rank1", weights_only=True)
    assert len(a["seen"]) == len(b["seen"]) == 2 * 128
    for ep in range(2):  # disjoint within each epoch, and together they cover the data
        sa, sb = set(a["seen"][ep * 128 : (ep + 1) * 128]), set(b["seen"][ep * 128 : (ep + 1) * 128])
        assert not sa & sb and len(sa | sb) == 256
    for k, v in a["state"].items():
        assert torch.equal(v, b["state"][k]), k
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["history"][-1]["step"] == 2 * 4


MLFLOW_WRITER = r"""
import sys, time
from xec.config import load_config
from xec.train.tracking import make_tracker
mlflow_cfg = load_config(None, overrides={"mlflow.enabled": True, "mlflow.tracking_uri": sys.argv[1]})["mlflow"]
t = make_tracker(mlflow_cfg, sys.argv[2], run_name=sys.argv[2])
assert t.active, "tracker not active"
t.log_params({f"p{i}": i for i in range(150)})
for step in range(20):
    t.log_metrics({"loss": 1.0 / (step + 1), "events_per_s": 100.0 + step}, step=step)
t.end()
print(t.run_id)
"""


@pytest.mark.slow
def test_mlflow_two_processes_log_to_one_sqlite_at_once(tmp_path):
    uri = "sqlite:///results/mlflow.db"  # relative: resolves against the working directory
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MLFLOW_WRITER, uri, stage],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for stage in ("inpainter", "regressor")
    ]
    outs = [p.communicate(timeout=170) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/results/mlflow.db")
    for stage, (o, _) in zip(("inpainter", "regressor"), outs):
        run_id = o.strip().splitlines()[-1]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(run.data.params) == 150
        assert len(client.get_metric_history(run_id, "loss")) == 20
        assert client.get_experiment(run.info.experiment_id).name == f"xec-{stage}"


# ---------------------------------------------------------------------------- GPU code paths on CPU
def test_bf16_autocast_runs_on_cpu_when_asked(tmp_path):
    """precision bf16 takes the autocast path a GPU takes (auto stays fp32 on CPU) and learns."""
    summary, trainer = run(tmp_path / "bf16", epochs=2, hp={"precision": "bf16"})
    assert trainer.amp_dtype is torch.bfloat16
    fp32, reference = run(tmp_path / "fp32", epochs=2)
    assert reference.amp_dtype is None
    assert summary["val"]["val_loss"] == pytest.approx(fp32["val"]["val_loss"], rel=0.1)
    assert summary["val"]["val_loss"] < 0.7 * float((ToyLoader(n=64, seed=1).y ** 2).mean())  # it learns


def test_one_rank_under_torchrun_takes_the_ddp_path(tmp_path, monkeypatch):
    """torchrun with one process (a one-GPU node) still starts a process group and wraps the
    model in DDP, so the multi-GPU code path runs wherever torchrun does."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from xec.train.distributed import init_distributed, shutdown

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(TORCHELASTIC_RUN_ID="test", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ctx = init_distributed("cpu")
    try:
        assert ctx.enabled and dist.is_initialized() and dist.get_backend() == "gloo"
        summary, trainer = run(tmp_path, epochs=1, ctx=ctx)
        assert isinstance(trainer.train_model, DistributedDataParallel)
        assert math.isfinite(summary["val"]["val_loss"])
    finally:
        shutdown(ctx)
    assert not dist.is_initialized()


@pytest.mark.slow
def test_torchrun_launcher_passes_xec_options_through(tmp_path):
    """`torchrun ... -m xec.cli train ... --log F` stops with "ambiguous option: --log"
    (torchrun's own parser reads it as --log-dir/--logs-specs); the launcher `xec train` uses
    when train.gpus > 1 hands the arguments over untouched."""
    code = (
        "import sys; from xec.train.distributed import launch_torchrun; "
        "sys.exit(launch_torchrun(1, 'xec.cli', sys.argv[1:]))"
    )
    log = tmp_path / "info.log"
    r = subprocess.run(
        [sys.executable, "-c", code, "model-info", "--preset", "tiny", "--log", str(log)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "regressor" in r.stdout and log.exists()


def test_optimizer_foreach_steps_equal_the_per_parameter_loop_bit_for_bit():
    """build_optimizer runs AdamW's multi-tensor implementation (faster on the CPU); the
    published numbers were trained with PyTorch's per-parameter loop: the weights after a few
    steps with decay and no-decay groups, an lr scale and a changing lr must be identical."""

    def train(foreach: bool | None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
        opt = build_optimizer(m, 3e-3, 0.05, lr_scales=[("0.", 0.5)])
        for g in opt.param_groups:
            g["foreach"] = foreach
        x, y = torch.randn(64, 6, generator=torch.Generator().manual_seed(1)), torch.randn(64, 3)
        for _ in range(12):
            for g in opt.param_groups:
                g["lr"] = g["lr"] * 0.9
            opt.zero_grad()
            (m(x) - y).abs().mean().backward()
            opt.step()
        return [p.detach().clone() for p in m.parameters()]

    assert build_optimizer(nn.Linear(2, 2), 1e-3, 0.0).param_groups[0]["foreach"] is True
    for a, b in zip(train(None), train(True)):
        assert torch.equal(a, b)
