# Training stages: MAE pretraining, then the inpainter and the regressor (both start from the MAE).
# With train.gpus > 1 the rules launch torchrun (DDP, one process per GPU of one node).

TRAIN_GPUS = int(config["train"]["gpus"])
TRAIN_LAUNCH = (
    f"torchrun --standalone --nproc_per_node {TRAIN_GPUS} -m xec.cli" if TRAIN_GPUS > 1 else "xec"
)
# Every training rule depends on the shared defaults, the normalization, the seed and the model
# keys its weights depend on (encoder + its own heads: a regressor-head change leaves the MAE alone).
TRAIN_COMMON_PARAMS = dict(
    train=config["train"],
    normalization=config["normalization"],
    seed=config["seed"],
)


rule mae:
    input:
        train=f"{RESULTS}/shards/train/manifest.json",
        val=f"{RESULTS}/shards/val/manifest.json",
    output:
        checkpoint=f"{RESULTS}/mae/checkpoint.pt",
        metrics=report(f"{RESULTS}/mae/metrics.json", caption="../report/train_mae.rst", category="Training"),
    params:
        cfg=RESOLVED_CONFIG,
        launch=TRAIN_LAUNCH,
        shard_dir=lambda w, input: str(Path(input.train).parent.parent),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        **TRAIN_COMMON_PARAMS,
        model=stage_model_params("mae"),
        mae=config["mae"],
    log:
        f"{RESULTS}/logs/train/mae.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/mae.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    conda:
        SOFTWARE_ENV
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
        metrics=report(f"{RESULTS}/inpainter/metrics.json", caption="../report/train_inpainter.rst",
                       category="Training"),
    params:
        cfg=RESOLVED_CONFIG,
        launch=TRAIN_LAUNCH,
        shard_dir=lambda w, input: str(Path(input.train).parent.parent),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        **TRAIN_COMMON_PARAMS,
        model=stage_model_params("inpainter"),
        inpainter=config["inpainter"],
    log:
        f"{RESULTS}/logs/train/inpainter.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/inpainter.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    conda:
        SOFTWARE_ENV
    shell:
        "{params.launch} train inpainter --config {params.cfg} --mae {input.mae} --shards {params.shard_dir}"
        " --out {params.out_dir} --resume auto --log {log}"


rule regressor:
    input:
        mae=f"{RESULTS}/mae/checkpoint.pt",
        weights=f"{RESULTS}/reweighting/weights.npz",
        train=f"{RESULTS}/shards/train/manifest.json",
        val=f"{RESULTS}/shards/val/manifest.json",
    output:
        checkpoint=f"{RESULTS}/regressor/checkpoint.pt",
        metrics=report(f"{RESULTS}/regressor/metrics.json", caption="../report/train_regressor.rst",
                       category="Training"),
        predictions=f"{RESULTS}/regressor/predictions.parquet",
    params:
        cfg=RESOLVED_CONFIG,
        launch=TRAIN_LAUNCH,
        shard_dir=lambda w, input: str(Path(input.train).parent.parent),
        out_dir=lambda w, output: str(Path(output.checkpoint).parent),
        **TRAIN_COMMON_PARAMS,
        model=stage_model_params("regressor"),
        regressor=config["regressor"],
    log:
        f"{RESULTS}/logs/train/regressor.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/regressor.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=90,
        gpu=TRAIN_GPUS,
    conda:
        SOFTWARE_ENV
    shell:
        "{params.launch} train regressor --config {params.cfg} --init {input.mae} --weights {input.weights}"
        " --shards {params.shard_dir} --out {params.out_dir} --resume auto --log {log}"
