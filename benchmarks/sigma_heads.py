"""Cost of the per-event uncertainty heads: CPU time per event of one regressor training step
(forward, the stage's loss, backward, AdamW) with and without ``regressor.sigma``, default
config, alternating A/B runs in fresh subprocesses.

    .venv/bin/python benchmarks/sigma_heads.py [--repeats 3] [--steps 6] [--batch 128]

Process CPU time (all threads) per event is reported next to wall time: on a shared machine
the wall time depends on the load, the CPU time much less.
"""

from __future__ import annotations

import argparse
import time

from ab_runs import alternate

SIGMA_TASKS = ["energy", "timing", "uvwFI"]


def _run(sigma: bool, steps: int, batch: int, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from xec.config import load_config
    from xec.models.presets import model_config
    from xec.models.regressor import XECRegressor
    from xec.train.optim import build_optimizer
    from xec.train.regressor import elementwise

    cfg = load_config("config.yaml")
    tasks = list(cfg["regressor"]["tasks"])
    torch.manual_seed(0)
    model = XECRegressor(model_config(dict(cfg["model"])), tasks, sigma_tasks=SIGMA_TASKS if sigma else ())
    opt = build_optimizer(model, 1e-3, 0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 4760, 2, generator=g) * 1.5
    x[..., 1][torch.rand(batch, 4760, generator=g) < 0.4] = -1.0
    y = {t: torch.randn(batch, model.heads[t].fc2.out_features, generator=g) for t in tasks}

    def step() -> None:
        out = model(x)
        loss = sum(elementwise("l1", out[t], y[t], 1.0).mean() for t in tasks)
        for t in model.sigma_tasks:
            loss = loss + elementwise("gaussian_nll", out[t].detach(), y[t], 0.5, out[f"{t}_logvar"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    n = steps * batch
    queue.put(
        {
            "cpu_ms_per_event": 1e3 * (time.process_time() - c0) / n,
            "wall_ms_per_event": 1e3 * (time.perf_counter() - w0) / n,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = alternate(_run, (False, True), args.repeats, args.steps, args.batch, args.threads)
    for res in rows:
        res["sigma"] = res["variant"]
    for sigma in (False, True):
        cpu = sorted(x["cpu_ms_per_event"] for x in rows if x["sigma"] == sigma)
        print(f"sigma heads {'on ' if sigma else 'off'}: median CPU {cpu[len(cpu) // 2]:.3f} ms/event")


if __name__ == "__main__":
    main()
