# Training stages: MAE pretraining, then the inpainter and the regressor (both start from the MAE).
# With train.gpus > 1 the rules launch torchrun (DDP, one process per GPU of one node).

TRAIN_GPUS = int(config["train"]["gpus"])
TRAIN_LAUNCH = f"torchrun --standalone --nproc_per_node {TRAIN_GPUS} -m xec.cli" if TRAIN_GPUS > 1 else "xec"


rule mae:
    input:
        train=f"{RESULTS}/shards/train/manifest.json",
        val=f"{RESULTS}/shards/val/manifest.json",
    output:
        checkpoint=f"{RESULTS}/mae/checkpoint.pt",
        metrics=report(f"{RESULTS}/mae/metrics.json", caption="../report/train_mae.rst", category="Training"),
    log:
        f"{RESULTS}/logs/train/mae.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/mae.tsv"
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    params:
        cfg=RESOLVED_CONFIG,
        launch=TRAIN_LAUNCH,
        shard_dir=lambda w, input: str(Path(input.train).parent.parent),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        values=command_values("train mae"),
    shell:
        "{params.launch} train mae --config {params.cfg} --shards {params.shard_dir}"
        " --out {params.out_dir} --resume auto --log {log}"


rule inpainter:
    input:
        mae=f"{RESULTS}/mae/checkpoint.pt",
        train=f"{RESULTS}/shards/train/manifest.json",
        val=f"{RESULTS}/shards/val/manifest.json",
    output:
        checkpoint=f"{RESULTS}/inpainter/checkpoint.pt",
        metrics=report(
            f"{RESULTS}/inpainter/metrics.json", caption="../report/train_inpainter.rst", category="Training"
        ),
    log:
        f"{RESULTS}/logs/train/inpainter.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/inpainter.tsv"
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    params:
        cfg=RESOLVED_CONFIG,
        launch=TRAIN_LAUNCH,
        shard_dir=lambda w, input: str(Path(input.train).parent.parent),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        values=command_values("train inpainter"),
    shell:
        "{params.launch} train inpainter --config {params.cfg} --init {input.mae} --shards {params.shard_dir}"
        " --out {params.out_dir} --resume auto --log {log}"


rule regressor:
    input:
        mae=f"{RESULTS}/mae/checkpoint.pt",
        weights=f"{RESULTS}/reweighting/weights.npz",
        train=f"{RESULTS}/shards/train/manifest.json",
        val=f"{RESULTS}/shards/val/manifest.json",
    output:
        checkpoint=f"{RESULTS}/regressor/checkpoint.pt",
        metrics=report(
            f"{RESULTS}/regressor/metrics.json", caption="../report/train_regressor.rst", category="Training"
        ),
        predictions=f"{RESULTS}/regressor/predictions.parquet",
    log:
        f"{RESULTS}/logs/train/regressor.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/regressor.tsv"
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=90,
        gpu=TRAIN_GPUS,
    params:
        cfg=RESOLVED_CONFIG,
        launch=TRAIN_LAUNCH,
        shard_dir=lambda w, input: str(Path(input.train).parent.parent),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        values=command_values("train regressor"),
    shell:
        "{params.launch} train regressor --config {params.cfg} --init {input.mae} --weights {input.weights}"
        " --shards {params.shard_dir} --out {params.out_dir} --resume auto --log {log}"
