# Deployment: ONNX export of the regressor and inpainter, ONNX Runtime inference on ROOT samples.

# Inference runs: output name -> (sample, dead-sensor treatment: `xec infer --fill`).
# The realdata runs are the same files with the four treatments, for the summary's comparison:
# inpainter, left as the sentinel (realdata_noinpaint), and the classical neighbour average and
# solid-angle rule (xec.baseline; these also read the `baseline` config section). The realdata
# inpainter is the one fine-tuned on the realdata sample (finetune.enabled; common.smk
# inference_inpainter).
INFERENCE_RUNS = {
    "realdata": {"sample": "realdata", "fill": "inpainter"},
    "realdata_noinpaint": {"sample": "realdata", "fill": "sentinel"},
    "realdata_neighbour": {"sample": "realdata", "fill": "neighbour"},
    "realdata_solid_angle": {"sample": "realdata", "fill": "solid_angle"},
    "bench": {"sample": "bench", "fill": "sentinel"},
    # the pile-up sample, like bench (regressor only)
    **{s: {"sample": s, "fill": "sentinel"} for s in PILEUP},
}


rule export:
    input:
        checkpoint=lambda w: at(w.rundir, w.stage, f"{w.stage}/checkpoint.pt"),
        val=lambda w: at(w.rundir, "shards:val", "shards/val/manifest.json"),
    output:
        model=f"{{rundir}}/{{stage}}/model.onnx",
        parity=f"{{rundir}}/{{stage}}/model.parity.json",
    log:
        f"{{rundir}}/logs/export/{{stage}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/export/{{stage}}.tsv"
    wildcard_constraints:
        stage="regressor|inpainter|inpainter_finetune",
    conda:
        SOFTWARE_ENV
    # one thread (torch and the parity check's ONNX Runtime, through OMP_NUM_THREADS): a few
    # seconds either way, and it pairs with the other one-thread jobs instead of waiting for both cores
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("export", w.rundir),
    shell:
        "xec export --config {params.cfg} --checkpoint {input.checkpoint} --val-shards {input.val}"
        " --out {output.model} --log {log}"


# Per-file inference (issue 17): one job per input file of the run's sample, writing
# inference/<name>/<file stem>.{root,parquet}; on a cluster, `scatter.files_per_job` of them share
# one job (a Snakemake group per chunk of files: common.smk). A bad input file fails its own job
# and leaves a failure record; the merge below then lists the file instead of waiting for it
# (xec.scatter).
rule inference:
    input:
        model=lambda w: at(w.rundir, "export:regressor", "regressor/model.onnx"),
        inpainter=lambda w: (
            [at(w.rundir, f"export:{inp}", f"{inp}/model.onnx")]
            if (inp := inference_inpainter(w.name, w.rundir))
            else []
        ),
        data=lambda w: scatter_input(INFERENCE_RUNS[w.name]["sample"], w.stem, w.rundir),
    output:
        root=f"{{rundir}}/inference/{{name}}/{{stem}}.root",
        parquet=f"{{rundir}}/inference/{{name}}/{{stem}}.parquet",
    log:
        f"{{rundir}}/logs/inference/{{name}}/{{stem}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/inference/{{name}}/{{stem}}.tsv"
    wildcard_constraints:
        name="|".join(INFERENCE_RUNS),
        stem=STEM_PATTERN,
    group:
        lambda w: scatter_group(f"inference/{w.name}", chunk_of(INFERENCE_RUNS[w.name]["sample"], w.stem, w.rundir))
    conda:
        SOFTWARE_ENV
    # one thread per file: two files at a time beat one file on two threads (startup is serial)
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values(infer_command(w.name), w.rundir),
        inpainter_arg=lambda w, input: f"--inpainter {input.inpainter}" if input.inpainter else "",
        fill=lambda w: INFERENCE_RUNS[w.name]["fill"],
        record=lambda w: failure_record(w.rundir, f"inference/{w.name}", w.stem),
    shell:
        "xec infer --config {params.cfg} --model {input.model} {params.inpainter_arg} --fill {params.fill}"
        " --input {input.data} --out {output.root} --parquet {output.parquet} --threads {threads}"
        " --failure-record {params.record} --log {log}"


# The merged view of a run's per-file outputs: a parquet dataset directory (what the summary and
# the plots read), rebuilt from links whenever the file list changes.
rule inference_merge:
    input:
        parts=lambda w: list(scatter_parts(INFERENCE_RUNS[w.name]["sample"], f"inference/{w.name}", w.rundir)[0]),
        chunks=lambda w: chunk_markers(f"inference/{w.name}", w.rundir),
    output:
        directory(f"{{rundir}}/inference/{{name}}.parquet"),
    log:
        f"{{rundir}}/logs/inference/{{name}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/inference/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(INFERENCE_RUNS),
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    params:
        parts=lambda w: merge_args(INFERENCE_RUNS[w.name]["sample"], f"inference/{w.name}", w.rundir),
    shell:
        "xec merge {params.parts} --out {output} --log {log}"


# One chunk of `scatter.files_per_job` per-file jobs: this job lists them and joins them into one
# connected Snakemake group, i.e. one cluster job.
rule scatter_chunk:
    input:
        lambda w: chunk_parts(w.folder, w.chunk, w.rundir),
    output:
        f"{{rundir}}/{{folder}}/chunks/{{chunk}}.txt",
    log:
        f"{{rundir}}/logs/{{folder}}/chunks/{{chunk}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/{{folder}}/chunks/{{chunk}}.tsv"
    wildcard_constraints:
        folder=rf"(inference/({'|'.join(INFERENCE_RUNS)})|baseline/({'|'.join(BASELINE_SAMPLES)}))",
        chunk=r"\d{4}",
    group:
        lambda w: scatter_group(w.folder, w.chunk)
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=100,
        runtime=5,
    shell:
        "printf '%s\\n' {input} > {output} 2> {log}"
