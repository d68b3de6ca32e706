# Data stages: simulation (only for samples without configured input files), shards, reweighting.


rule simulate:
    output:
        f"{{rundir}}/data/{{sample}}.root",
    log:
        f"{{rundir}}/logs/simulate/{{sample}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/simulate/{{sample}}.tsv"
    wildcard_constraints:
        sample="|".join(SAMPLES),
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("simulate", w.rundir, sample=w.sample),
    shell:
        "xec simulate --config {params.cfg} --sample {wildcards.sample} --out {output} --log {log}"


rule shards:
    input:
        lambda w: input_files(w.split, w.rundir),
    output:
        f"{{rundir}}/shards/{{split}}/manifest.json",
    log:
        f"{{rundir}}/logs/shards/{{split}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/shards/{{split}}.tsv"
    wildcard_constraints:
        split="train|val|bench",
    conda:
        SOFTWARE_ENV
    threads: config["shards"]["workers"]
    resources:
        mem_mb=1000 + 600 * config["shards"]["workers"],
        runtime=30,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        out_dir=lambda w, output: str(Path(output[0]).parent),
        values=lambda w: command_values("shards", w.rundir),
    shell:
        "xec shards --config {params.cfg} --input {input} --split {wildcards.split}"
        " --out {params.out_dir} --workers {threads} --log {log}"


rule reweighting:
    input:
        lambda w: at(w.rundir, "shards:train", "shards/train/manifest.json"),
    output:
        weights=f"{{rundir}}/reweighting/weights.npz",
        plot=report(f"{{rundir}}/reweighting/weights.png", caption="../report/reweighting.rst", category="Data"),
    log:
        f"{{rundir}}/logs/reweighting.log",
    benchmark:
        f"{{rundir}}/benchmarks/reweighting.tsv"
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("reweight", w.rundir),
    shell:
        "xec reweight --config {params.cfg} --manifest {input} --out {output.weights}"
        " --plot {output.plot} --log {log}"
