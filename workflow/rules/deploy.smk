# Deployment: ONNX export of the regressor and inpainter, ONNX Runtime inference on ROOT samples.

# Inference runs: output name -> (sample, fill dead sensors with the inpainter first?).
# realdata_noinpaint is the same file without inpainting, for the summary's with/without comparison.
INFERENCE_RUNS = {
    "realdata": {"sample": "realdata", "inpainter": True},
    "realdata_noinpaint": {"sample": "realdata", "inpainter": False},
    "bench": {"sample": "bench", "inpainter": False},
}


rule export:
    input:
        checkpoint=f"{RESULTS}/{{stage}}/checkpoint.pt",
        val=f"{RESULTS}/shards/val/manifest.json",
    output:
        model=f"{RESULTS}/{{stage}}/model.onnx",
        parity=f"{RESULTS}/{{stage}}/model.parity.json",
    log:
        f"{RESULTS}/logs/export/{{stage}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export/{{stage}}.tsv"
    wildcard_constraints:
        stage="regressor|inpainter",
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        cfg=RESOLVED_CONFIG,
        values=command_values("export"),
    shell:
        "xec export --config {params.cfg} --checkpoint {input.checkpoint} --val-shards {input.val}"
        " --out {output.model} --log {log}"


rule inference:
    input:
        model=f"{RESULTS}/regressor/model.onnx",
        inpainter=lambda w: [f"{RESULTS}/inpainter/model.onnx"] if INFERENCE_RUNS[w.name]["inpainter"] else [],
        data=lambda w: input_files(INFERENCE_RUNS[w.name]["sample"]),
    output:
        root=f"{RESULTS}/inference/{{name}}.root",
        parquet=f"{RESULTS}/inference/{{name}}.parquet",
    log:
        f"{RESULTS}/logs/inference/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/inference/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(INFERENCE_RUNS),
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=RESOLVED_CONFIG,
        values=command_values("infer"),
        inpainter_arg=lambda w, input: f"--inpainter {input.inpainter}" if input.inpainter else "",
    shell:
        "xec infer --config {params.cfg} --model {input.model} {params.inpainter_arg}"
        " --input {input.data} --out {output.root} --parquet {output.parquet} --log {log}"
