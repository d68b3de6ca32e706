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
    # every sample first (seconds each): realdata's, left for later, needed both cores and so
    # waited behind the regressor's one-thread finish, holding back the inpainter's fine-tuning
    priority: 20
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


# A split is converted in groups of `scatter.files_per_job` consecutive files (common.smk
# file_groups), one `shards_part` job each, then merged by `shards` into the split directory,
# byte for byte what one job over all files writes. The parts live beside the split directory,
# not in it (the merge swaps that directory whole), and are kept: the split's tars are hard links
# to theirs (no second copy), and a changed file reconverts only its group (appended files: the
# last group(s); a file inserted earlier shifts the groups after it).
rule shards_part:
    input:
        lambda w: [sample_inputs(w.split, w.rundir)[stem] for stem in file_groups(w.split, w.rundir)[int(w.group)]],
    output:
        f"{{rundir}}/shards/{{split}}.parts/{{group}}/part.json",
    log:
        f"{{rundir}}/logs/shards/{{split}}/part-{{group}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/shards/{{split}}/part-{{group}}.tsv"
    wildcard_constraints:
        split="train|val|bench",
        group=r"\d+",
    conda:
        SOFTWARE_ENV
    threads: config["shards"]["workers"]
    resources:
        mem_mb=1000 + 600 * config["shards"]["workers"],
        runtime=30,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        out_dir=lambda w, output: str(Path(output[0]).parent),
        first_file=lambda w: sum(len(g) for g in file_groups(w.split, w.rundir)[: int(w.group)]),
        values=lambda w: command_values("shards", w.rundir),
    shell:
        "xec shards --config {params.cfg} --part --first-file {params.first_file} --input {input}"
        " --split {wildcards.split} --out {params.out_dir} --workers {threads} --log {log}"


rule shards:
    input:
        lambda w: [
            f"{w.rundir}/shards/{w.split}.parts/{k:04d}/part.json" for k in range(len(file_groups(w.split, w.rundir)))
        ],
    output:
        f"{{rundir}}/shards/{{split}}/manifest.json",
    log:
        f"{{rundir}}/logs/shards/{{split}}/merge.log",
    benchmark:
        f"{{rundir}}/benchmarks/shards/{{split}}/merge.tsv"
    wildcard_constraints:
        split="train|val|bench",
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=lambda w, output: str(Path(output[0]).parent),
        files=lambda w: input_files(w.split, w.rundir),
        values=lambda w: command_values("shards-merge", w.rundir),
    shell:
        "xec shards-merge --parts {input} --input {params.files} --split {wildcards.split}"
        " --out {params.out_dir} --log {log}"


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
    # before the MAE (seconds of work): left until the MAE ended, it was still pending when the
    # one-thread inpainter became ready, which then took a core and held back the two-thread
    # regressor epochs that wait for these weights (physics run, 2026-12-04: 3.5 min)
    priority: 20
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
