# Physics evaluation: the classical baseline (calibrated on train), the ML vs baseline summary
# and the plots. The summary table and the plots go into the Snakemake report.


rule baseline_calibration:
    input:
        data=lambda w: input_files("train", w.rundir),
    output:
        f"{{rundir}}/baseline/calibration.json",
    log:
        f"{{rundir}}/logs/baseline/calibration.log",
    benchmark:
        f"{{rundir}}/benchmarks/baseline/calibration.tsv"
    conda:
        SOFTWARE_ENV
    threads: 2
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("baseline", w.rundir),
    shell:
        "xec baseline --config {params.cfg} --calibrate-on {input.data} --calibration {output} --log {log}"


rule baseline:
    input:
        data=lambda w: scatter_input(w.sample, w.stem, w.rundir),
        calibration=lambda w: at(w.rundir, "baseline_calibration", "baseline/calibration.json"),
    output:
        parquet=f"{{rundir}}/baseline/{{sample}}/{{stem}}.parquet",
    log:
        f"{{rundir}}/logs/baseline/{{sample}}/{{stem}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/baseline/{{sample}}/{{stem}}.tsv"
    wildcard_constraints:
        sample="|".join(BASELINE_SAMPLES),
        stem=STEM_PATTERN,
    group:
        lambda w: scatter_group(f"baseline/{w.sample}", chunk_of(w.sample, w.stem, w.rundir))
    conda:
        SOFTWARE_ENV
    threads: 1  # numpy, one core: files run side by side
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("baseline", w.rundir),
        record=lambda w: failure_record(w.rundir, f"baseline/{w.sample}", w.stem),
    shell:
        "xec baseline --config {params.cfg} --input {input.data} --calibration {input.calibration}"
        " --out {output.parquet} --failure-record {params.record} --log {log}"


rule baseline_merge:
    input:
        parts=lambda w: list(scatter_parts(w.sample, f"baseline/{w.sample}", w.rundir)[0]),
        chunks=lambda w: chunk_markers(f"baseline/{w.sample}", w.rundir),
    output:
        directory(f"{{rundir}}/baseline/{{sample}}.parquet"),
    log:
        f"{{rundir}}/logs/baseline/{{sample}}.log",
    benchmark:
        f"{{rundir}}/benchmarks/baseline/{{sample}}.tsv"
    wildcard_constraints:
        sample="|".join(BASELINE_SAMPLES),
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    params:
        parts=lambda w: merge_args(w.sample, f"baseline/{w.sample}", w.rundir),
    shell:
        "xec merge {params.parts} --out {output} --log {log}"


# Inpainter vs the classical recoveries on hidden live sensors of val and realdata (issue 14).
INPAINTING_SAMPLES = ["val", "realdata"]


rule inpainting:
    input:
        model=lambda w: at(w.rundir, "export:inpainter", "inpainter/model.onnx"),
        finetuned=lambda w: (
            [at(w.rundir, "export:inpainter_finetune", "inpainter_finetune/model.onnx")]
            if RUN_CONFIGS[w.rundir]["finetune"]["enabled"]
            else []
        ),
        val=lambda w: first_files("val", RUN_CONFIGS[w.rundir]["inpainting"]["max_events"], w.rundir),
        realdata=lambda w: first_files(
            "realdata",
            RUN_CONFIGS[w.rundir]["inpainting"]["max_events"],
            w.rundir,
            skip=failed_inputs("realdata", "inference/realdata", w.rundir),
        ),
    output:
        json=f"{{rundir}}/inpainting/summary.json",
        markdown=f"{{rundir}}/inpainting/summary.md",
        html=report(f"{{rundir}}/inpainting/summary.html", caption="../report/inpainting.rst", category="Inpainting"),
        plots=report(
            directory(f"{{rundir}}/inpainting/plots"),
            patterns=["{name}.png"],
            caption="../report/inpainting_plots.rst",
            category="Inpainting",
        ),
    log:
        f"{{rundir}}/logs/inpainting.log",
    benchmark:
        f"{{rundir}}/benchmarks/inpainting.tsv"
    conda:
        SOFTWARE_ENV
    # one thread: it runs beside the plots job instead of after it (the summary waits for it)
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("inpainting", w.rundir),
        samples=lambda w, input: " ".join(f"--sample {s} {' '.join(input[s])}" for s in INPAINTING_SAMPLES),
        finetuned=lambda w, input: f"--finetuned {input.finetuned} --holdout-sample realdata" if input.finetuned else "",
    shell:
        "xec inpainting --config {params.cfg} --inpainter {input.model} {params.finetuned} {params.samples}"
        " --out {output.json} --markdown {output.markdown} --html {output.html} --plots {output.plots}"
        " --threads {threads} --log {log}"


# Robustness to dead sensors (issue 14): ML (exported models, `xec infer`'s code path, inpainter)
# vs the classical reconstruction on the first deadsweep.max_events bench events with 0-10 % of
# the sensors dead, random and whole readout boards.
rule deadsweep:
    input:
        model=lambda w: at(w.rundir, "export:regressor", "regressor/model.onnx"),
        inpainter=lambda w: at(w.rundir, "export:inpainter", "inpainter/model.onnx"),
        calibration=lambda w: at(w.rundir, "baseline_calibration", "baseline/calibration.json"),
        bench=lambda w: first_files("bench", RUN_CONFIGS[w.rundir]["deadsweep"]["max_events"], w.rundir),
    output:
        json=f"{{rundir}}/deadsweep/summary.json",
        markdown=f"{{rundir}}/deadsweep/summary.md",
        html=report(f"{{rundir}}/deadsweep/summary.html", caption="../report/deadsweep.rst", category="Dead sensors"),
        plot=report(
            f"{{rundir}}/deadsweep/resolution_vs_dead_fraction.png",
            caption="../report/deadsweep.rst",
            category="Dead sensors",
        ),
    log:
        f"{{rundir}}/logs/deadsweep.log",
    benchmark:
        f"{{rundir}}/benchmarks/deadsweep.tsv"
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("deadsweep", w.rundir),
    shell:
        "xec deadsweep --config {params.cfg} --model {input.model} --inpainter {input.inpainter}"
        " --calibration {input.calibration} --input {input.bench} --threads {threads}"
        " --out {output.json} --markdown {output.markdown} --html {output.html} --plot {output.plot} --log {log}"


rule summary:
    input:
        bench_ml=lambda w: at(w.rundir, "inference:bench", "inference/bench.parquet"),
        bench_baseline=lambda w: at(w.rundir, "baseline:bench", "baseline/bench.parquet"),
        # the regressor's own val predictions: choices are made on val (xec scan-summary ranks on it)
        val_ml=lambda w: at(w.rundir, "regressor", "regressor/predictions.parquet"),
        val_baseline=lambda w: at(w.rundir, "baseline:val", "baseline/val.parquet"),
        real_ml=lambda w: at(w.rundir, "inference:realdata", "inference/realdata.parquet"),
        real_noinpaint=lambda w: at(w.rundir, "inference:realdata_noinpaint", "inference/realdata_noinpaint.parquet"),
        real_neighbour=lambda w: at(w.rundir, "inference:realdata_neighbour", "inference/realdata_neighbour.parquet"),
        real_solid_angle=lambda w: at(
            w.rundir, "inference:realdata_solid_angle", "inference/realdata_solid_angle.parquet"
        ),
        real_baseline=lambda w: at(w.rundir, "baseline:realdata", "baseline/realdata.parquet"),
        inpainting=lambda w: at(w.rundir, "inpainting", "inpainting/summary.json"),
        deadsweep=lambda w: at(w.rundir, "deadsweep", "deadsweep/summary.json"),
        pileup=lambda w: [
            at(w.rundir, f"{kind}:pileup", f"{kind}/pileup.parquet") for kind in ("inference", "baseline") if PILEUP
        ],
    output:
        json=f"{{rundir}}/summary.json",
        markdown=f"{{rundir}}/summary.md",
        html=report(f"{{rundir}}/summary.html", caption="../report/summary.rst", category="Physics summary"),
    log:
        f"{{rundir}}/logs/summary.log",
    benchmark:
        f"{{rundir}}/benchmarks/summary.tsv"
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=lambda w: resolved_config(w.rundir),
        values=lambda w: command_values("summary", w.rundir),
        pileup=lambda w, input: (
            f"--pileup-predictions {input.pileup[0]} --pileup-baseline {input.pileup[1]}" if input.pileup else ""
        ),
    shell:
        "xec summary --config {params.cfg} --bench-predictions {input.bench_ml}"
        " --bench-baseline {input.bench_baseline} --val-predictions {input.val_ml} --val-baseline {input.val_baseline}"
        " --realdata-predictions {input.real_ml}"
        " --realdata-noinpaint-predictions {input.real_noinpaint} --realdata-baseline {input.real_baseline}"
        " --realdata-neighbour-predictions {input.real_neighbour}"
        " --realdata-solid-angle-predictions {input.real_solid_angle}"
        " --inpainting {input.inpainting} --deadsweep {input.deadsweep} {params.pileup}"
        " --out {output.json} --markdown {output.markdown} --html {output.html} --log {log}"


# Everything `xec plots --part physics` can use (unpacked as named inputs); the bench ROOT file
# feeds the event displays.
PLOT_INPUTS = {
    "bench_ml": f"{RESULTS}/inference/bench.parquet",
    "bench_baseline": f"{RESULTS}/baseline/bench.parquet",
    "real_ml": f"{RESULTS}/inference/realdata.parquet",
    "real_noinpaint": f"{RESULTS}/inference/realdata_noinpaint.parquet",
    "real_baseline": f"{RESULTS}/baseline/realdata.parquet",
    "val_baseline": f"{RESULTS}/baseline/val.parquet",
    "val_predictions": f"{RESULTS}/regressor/metrics.json",
    **{f"pileup_{kind}": f"{RESULTS}/{kind}/pileup.parquet" for kind in ("inference", "baseline") if PILEUP},
}


rule plots:
    input:
        unpack(lambda w: {**PLOT_INPUTS, "bench_root": input_files("bench")}),
    output:
        plots=report(
            directory(f"{RESULTS}/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        f"{RESULTS}/logs/plots.log",
    benchmark:
        f"{RESULTS}/benchmarks/plots.tsv"
    conda:
        SOFTWARE_ENV
    # matplotlib draws on one core: two threads would only keep the inpainting and summary jobs
    # waiting behind it
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        cfg=RESOLVED_CONFIG,
        results_dir=lambda w, output: str(Path(output.plots).parent),
        values=command_values("plots"),
    shell:
        "xec plots --part physics --config {params.cfg} --results {params.results_dir} --out {output.plots}"
        " --bench-root {input.bench_root} --log {log}"


# The plots of the trained models need no inference output: this job runs beside the exports and
# the inference jobs instead of after them (the two plot jobs took 47 s in one).
rule training_plots:
    input:
        mae=f"{RESULTS}/mae/metrics.json",
        inpainter=f"{RESULTS}/inpainter/metrics.json",
        regressor=f"{RESULTS}/regressor/metrics.json",
        val_manifest=f"{RESULTS}/shards/val/manifest.json",
    output:
        plots=report(
            directory(f"{RESULTS}/training_plots"),
            patterns=["{name}.png"],
            caption="../report/training_plots.rst",
            category="Training",
        ),
    log:
        f"{RESULTS}/logs/training_plots.log",
    benchmark:
        f"{RESULTS}/benchmarks/training_plots.tsv"
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        cfg=RESOLVED_CONFIG,
        results_dir=lambda w, output: str(Path(output.plots).parent),
        values=command_values("plots"),
    shell:
        "xec plots --part training --config {params.cfg} --results {params.results_dir} --out {output.plots}"
        " --log {log}"
