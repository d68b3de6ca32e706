# Data stages: simulation (only for samples without configured input files), shards, reweighting.


rule simulate:
    output:
        f"{RESULTS}/data/{{sample}}.root",
    log:
        f"{RESULTS}/logs/simulate/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate/{{sample}}.tsv"
    wildcard_constraints:
        sample="|".join(SIMULATED_SAMPLES) or "NO_SIMULATED_SAMPLE",
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=RESOLVED_CONFIG,
        values=lambda w: command_values("simulate", sample=w.sample),
    shell:
        "xec simulate --config {params.cfg} --sample {wildcards.sample} --out {output} --log {log}"


rule shards:
    input:
        lambda w: input_files(w.split),
    output:
        f"{RESULTS}/shards/{{split}}/manifest.json",
    log:
        f"{RESULTS}/logs/shards/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/shards/{{split}}.tsv"
    wildcard_constraints:
        split="train|val|bench",
    conda:
        SOFTWARE_ENV
    threads: config["shards"]["workers"]
    resources:
        mem_mb=1000 + 600 * config["shards"]["workers"],
        runtime=30,
    params:
        cfg=RESOLVED_CONFIG,
        out_dir=lambda w, output: str(Path(output[0]).parent),
        values=command_values("shards"),
    shell:
        "xec shards --config {params.cfg} --input {input} --split {wildcards.split}"
        " --out {params.out_dir} --workers {threads} --log {log}"


rule reweighting:
    input:
        f"{RESULTS}/shards/train/manifest.json",
    output:
        weights=f"{RESULTS}/reweighting/weights.npz",
        plot=report(f"{RESULTS}/reweighting/weights.png", caption="../report/reweighting.rst", category="Data"),
    log:
        f"{RESULTS}/logs/reweighting.log",
    benchmark:
        f"{RESULTS}/benchmarks/reweighting.tsv"
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cfg=RESOLVED_CONFIG,
        values=command_values("reweight"),
    shell:
        "xec reweight --config {params.cfg} --manifest {input} --out {output.weights}"
        " --plot {output.plot} --log {log}"
