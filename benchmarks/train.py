"""Training throughput benchmark: events/s of a full training step (forward, backward,
clipping, AdamW, EMA) through the real Trainer and ShardLoader, and the fraction of step time
spent waiting for data, per stage and model preset.

    .venv/bin/python benchmarks/train.py [--shards results/shards] [--events 1024] [--presets tiny]
                                         [--stages mae regressor] [--workers 0 1]

Without --shards it writes random MEG II-format events (tests/helpers_rootfiles.py) and shards
them in a temp dir. On a machine with CUDA it also runs the `base` preset with bf16 autocast
(say which card: printed in the table header). The first epoch is a warm-up; the second is timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("XEC_NO_PROGRESS", "1")

from xec.cli import retain_freed_memory  # noqa: E402
from xec.config import load_config  # noqa: E402
from xec.data.loader import ShardLoader  # noqa: E402
from xec.normalization import normalizer_from_config  # noqa: E402
from xec.train.distributed import DistContext  # noqa: E402
from xec.train.loop import Trainer  # noqa: E402
from xec.train.stages import get_stage  # noqa: E402


def make_shards(d: Path, events: int) -> Path:
    from helpers_rootfiles import write_root_file

    from xec.data.shards import settings_from_config, write_shards

    settings = settings_from_config(load_config())
    for split, n in (("train", events), ("val", 64)):
        f = write_root_file(d / f"{split}.root", n_events=n, seed=len(split))
        write_shards([str(f)], d / "shards" / split, split, settings)
    return d / "shards"


def bench(
    stage_name: str,
    preset: str,
    shards: Path,
    events: int,
    workers: int,
    device: torch.device,
    batch_size: int | None,
    precision: str,
) -> dict:
    cfg = load_config(None, overrides={"model.preset": preset} if preset != "tiny" else None)
    stage_cls = get_stage(stage_name)
    st = stage_cls(cfg, normalizer_from_config(cfg))
    bs = batch_size or int(cfg[stage_name]["batch_size"])
    train = ShardLoader(shards / "train", bs, tasks=st.tasks, num_workers=workers, max_events=events)
    val = ShardLoader(shards / "val", bs, tasks=st.tasks, shuffle=False, max_events=bs)
    st.attach_data(train, val)
    model = st.build_model()
    hp = {**stage_cls.hparams(cfg), "epochs": 2, "precision": precision}
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(st, model, train, val, hp, out, ctx=DistContext(device=device))
        tr.train_epoch()  # warm-up: allocator, first-touch, worker start
        tr.epoch = 1
        res = tr.train_epoch()
    return {
        "stage": stage_name,
        "preset": preset,
        "device": str(device),
        "precision": precision,
        "batch": bs,
        "workers": workers,
        "events": int(train.events),
        "events_per_s": res["events_per_s"],
        "data_wait": res["data_wait_fraction"],
    }


def main() -> None:
    retain_freed_memory()  # as `xec train` does
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default=None)
    ap.add_argument("--events", type=int, default=1024)
    ap.add_argument("--presets", nargs="+", default=["tiny"])
    ap.add_argument("--stages", nargs="+", default=["mae", "regressor"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--batch-size", type=int, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(a.shards) if a.shards else make_shards(Path(tmp), a.events)
        print(
            f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"
        )
        rows = []
        for preset in a.presets:
            for stage in a.stages:
                for w in a.workers:
                    rows.append(bench(stage, preset, shards, a.events, w, torch.device("cpu"), a.batch_size, "fp32"))
        if torch.cuda.is_available():
            print(f"# GPU: {torch.cuda.get_device_name(0)}")
            for stage in a.stages:
                rows.append(bench(stage, "base", shards, a.events, 4, torch.device("cuda"), 256, "bf16"))
        else:
            print("# no CUDA device: GPU (base, bf16) rows skipped")
        print(
            f"{'stage':<10}{'preset':<7}{'device':<8}{'prec':<6}{'batch':>6}{'workers':>8}{'events':>8}"
            f"{'events/s':>10}{'data wait':>10}"
        )
        for r in rows:
            print(
                f"{r['stage']:<10}{r['preset']:<7}{r['device']:<8}{r['precision']:<6}{r['batch']:>6}{r['workers']:>8}"
                f"{r['events']:>8}{r['events_per_s']:>10.0f}{100 * r['data_wait']:>9.1f}%"
            )
        print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
