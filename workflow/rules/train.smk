# Training stages: MAE pretraining, then the inpainter and the regressor (both start from the MAE).
# With train.gpus > 1, `xec train` relaunches itself as torchrun workers (DDP, one process per
# GPU of one node; xec.train.distributed.launch_torchrun).

TRAIN_GPUS = int(config["train"]["gpus"])


rule mae:
    input:
        train=lambda w: at(w.rundir, "shards:train", "shards/train/manifest.json"),
        val=lambda w: at(w.rundir, "shards:val", "shards/val/manifest.json"),
    output:
        checkpoint=f"{{rundir}}/mae/checkpoint.pt",
        metrics=report(f"{{rundir}}/mae/metrics.json", caption="../report/train_mae.rst", category="Training"),
    log:
        f"{{rundir}}/logs/train/mae.log",
    benchmark:
        f"{{rundir}}/benchmarks/train/mae.tsv"
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        values=lambda w: command_values("train mae", w.rundir),
        tags=lambda w: mlflow_tags(w.rundir),
    shell:
        "xec train mae --config {params.cfg} --train {input.train} --val {input.val}"
        " --out {params.out_dir} --resume auto {params.tags} --log {log}"


rule inpainter:
    input:
        # the encoder's weights (model.inpaint_context true); without the encoder the MAE is only
        # waited for (workflow.inpainter_after_mae), so that the MAE starts on time on a few-core machine
        mae=lambda w: (
            at(w.rundir, "mae", "mae/checkpoint.pt")
            if inpainter_uses_mae(w.rundir) or RUN_CONFIGS[w.rundir]["workflow"]["inpainter_after_mae"]
            else []
        ),
        train=lambda w: at(w.rundir, "shards:train", "shards/train/manifest.json"),
        val=lambda w: at(w.rundir, "shards:val", "shards/val/manifest.json"),
    output:
        checkpoint=f"{{rundir}}/inpainter/checkpoint.pt",
        metrics=report(
            f"{{rundir}}/inpainter/metrics.json", caption="../report/train_inpainter.rst", category="Training"
        ),
    log:
        f"{{rundir}}/logs/train/inpainter.log",
    benchmark:
        f"{{rundir}}/benchmarks/train/inpainter.tsv"
    conda:
        SOFTWARE_ENV
    # one thread: it trains beside the regressor's one-thread finish (4 epochs of the correction
    # alone: 141 s there, ~90 s on both cores alone; its small per-sensor products gain little from two)
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        values=lambda w: command_values("train inpainter", w.rundir),
        tags=lambda w: mlflow_tags(w.rundir),
        init=lambda w, input: input.mae if inpainter_uses_mae(w.rundir) else "none",
    shell:
        "xec train inpainter --config {params.cfg} --init {params.init} --train {input.train} --val {input.val}"
        " --out {params.out_dir} --resume auto {params.tags} --log {log}"


# The regressor in two jobs: its epochs (two threads), then its finish (head refit, sigma
# calibration, val predictions: xec.train.loop, --phase) on one thread beside the inpainter,
# which waits for the epochs (priority) and trains on the other core. On the two-core machine the
# finish and the inpainter chain take ~3.5 min side by side instead of ~4.5 min one after the
# other (docs/performance.md, "Default pipeline").
REGRESSOR_INPUTS = dict(
    mae=lambda w: at(w.rundir, "mae", "mae/checkpoint.pt"),
    weights=lambda w: at(w.rundir, "reweighting", "reweighting/weights.npz"),
    train=lambda w: at(w.rundir, "shards:train", "shards/train/manifest.json"),
    val=lambda w: at(w.rundir, "shards:val", "shards/val/manifest.json"),
    # regressor.dead_fill: inpainter: the augmentation's dead sensors are filled by the inpainter
    inpainter=lambda w: regressor_fill_inpainter(w.rundir),
)
REGRESSOR_PARAMS = dict(
    cfg=lambda w: resolved_config(w.rundir),
    out_dir=lambda w: f"{w.rundir}/regressor",
    values=lambda w: command_values("train regressor", w.rundir),
    tags=lambda w: mlflow_tags(w.rundir),
    inpainter=lambda w, input: f"--inpainter {input.inpainter}" if input.inpainter else "",
)


rule regressor_epochs:
    input:
        **REGRESSOR_INPUTS,
    output:
        trained=f"{{rundir}}/regressor/checkpoint_trained.pt",
    log:
        f"{{rundir}}/logs/train/regressor_epochs.log",
    benchmark:
        f"{{rundir}}/benchmarks/train/regressor_epochs.tsv"
    # before the inpainter, which then shares the cores with the finish
    priority: 10
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=90,
        gpu=TRAIN_GPUS,
    params:
        **REGRESSOR_PARAMS,
    shell:
        "xec train regressor --phase epochs --config {params.cfg} --init {input.mae} --weights {input.weights}"
        " --train {input.train} --val {input.val} --out {params.out_dir} --resume auto {params.tags}"
        " {params.inpainter} --log {log}"


rule regressor:
    input:
        **REGRESSOR_INPUTS,
        trained=f"{{rundir}}/regressor/checkpoint_trained.pt",
    output:
        checkpoint=f"{{rundir}}/regressor/checkpoint.pt",
        metrics=report(
            f"{{rundir}}/regressor/metrics.json", caption="../report/train_regressor.rst", category="Training"
        ),
        predictions=f"{{rundir}}/regressor/predictions.parquet",
    log:
        f"{{rundir}}/logs/train/regressor.log",
    benchmark:
        f"{{rundir}}/benchmarks/train/regressor.tsv"
    conda:
        SOFTWARE_ENV
    # the refit's small products gain little from a second thread (4 epochs: 9.4 s on one, 7.1-8.6
    # s on two), which the inpainter puts to better use
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=min(TRAIN_GPUS, 1),
    params:
        **REGRESSOR_PARAMS,
    shell:
        "xec train regressor --phase finish --config {params.cfg} --init {input.mae} --weights {input.weights}"
        " --train {input.train} --val {input.val} --out {params.out_dir} {params.tags} {params.inpainter}"
        " --log {log}"


# Self-supervised fine-tuning of the inpainter on the realdata sample itself (issue 14 part 4;
# finetune.enabled): its live sensors masked as in the inpainter stage, its dead ones never
# scored, a held-out part (hash of run, event) left for `xec inpainting`. Seconds on a CPU.
rule inpainter_finetune:
    input:
        inpainter=lambda w: at(w.rundir, "inpainter", "inpainter/checkpoint.pt"),
        # an unreadable file is left out by xec finetune itself (listed in its metrics): skipping
        # it here would change the input list, and so rerun the fine-tuning, once it has failed
        realdata=lambda w: first_files("realdata", RUN_CONFIGS[w.rundir]["finetune"]["max_events"], w.rundir),
    output:
        checkpoint=f"{{rundir}}/inpainter_finetune/checkpoint.pt",
        metrics=report(
            f"{{rundir}}/inpainter_finetune/metrics.json",
            caption="../report/train_inpainter_finetune.rst",
            category="Training",
        ),
    log:
        f"{{rundir}}/logs/train/inpainter_finetune.log",
    benchmark:
        f"{{rundir}}/benchmarks/train/inpainter_finetune.tsv"
    conda:
        SOFTWARE_ENV
    # one thread: seconds of work, it runs beside the one-thread inference/baseline jobs
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        values=lambda w: command_values("finetune", w.rundir),
        tags=lambda w: mlflow_tags(w.rundir),
    shell:
        "xec finetune --config {params.cfg} --inpainter {input.inpainter} --input {input.realdata}"
        " --out {params.out_dir} {params.tags} --log {log}"
