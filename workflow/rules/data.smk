# Data stages: simulation (only for samples without configured input files), shards, reweighting.


rule simulate:
    output:
        f"{RESULTS}/data/{{sample}}.root",
    params:
        sample=lambda w: config["simulation"]["samples"][w.sample],
        chunk_size=config["simulation"]["chunk_size"],
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
    shell:
        "xec simulate --config {RESOLVED_CONFIG} --sample {wildcards.sample} --out {output} --log {log}"
