# Data stages: simulation (only for samples without configured input files), shards, reweighting.


rule simulate:
    output:
        f"{RESULTS}/data/{{sample}}.root",
    params:
        cfg=RESOLVED_CONFIG,
        values=lambda w: command_values("simulate", sample=w.sample),
    log:
        f"{RESULTS}/logs/simulate/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate/{{sample}}.tsv"
    wildcard_constraints:
        sample="|".join(SIMULATED_SAMPLES) or "NO_SIMULATED_SAMPLE",
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        SOFTWARE_ENV
    shell:
        "xec simulate --config {params.cfg} --sample {wildcards.sample} --out {output} --log {log}"


rule shards:
    input:
        lambda w: input_files(w.split),
    output:
        f"{RESULTS}/shards/{{split}}/manifest.json",
    params:
        cfg=RESOLVED_CONFIG,
        out_dir=lambda w, output: str(Path(output[0]).parent),
        values=command_values("shards"),
    log:
        f"{RESULTS}/logs/shards/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/shards/{{split}}.tsv"
    wildcard_constraints:
        split="train|val|bench",
    threads: config["shards"]["workers"]
    resources:
        mem_mb=1000 + 600 * config["shards"]["workers"],
        runtime=30,
    conda:
        SOFTWARE_ENV
    shell:
        "xec shards --config {params.cfg} --input {input} --split {wildcards.split}"
        " --out {params.out_dir} --workers {threads} --log {log}"


rule reweighting:
    input:
        f"{RESULTS}/shards/train/manifest.json",
    output:
        weights=f"{RESULTS}/reweighting/weights.npz",
        plot=report(f"{RESULTS}/reweighting/weights.png", caption="../report/reweighting.rst",
                    category="Data"),
    params:
        cfg=RESOLVED_CONFIG,
        values=command_values("reweight"),
    log:
        f"{RESULTS}/logs/reweighting.log",
    benchmark:
        f"{RESULTS}/benchmarks/reweighting.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        SOFTWARE_ENV
    shell:
        "xec reweight --config {params.cfg} --manifest {input} --out {output.weights}"
        " --plot {output.plot} --log {log}"
