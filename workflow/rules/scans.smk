# Scans (config `scans:`): each point runs the stage rules in results/scans/<scan>/<point>/ (see
# "run directories" in common.smk: outputs a point's overrides do not change come from the main
# run); this rule ranks the points by a physics metric.


rule scan_summary:
    input:
        unpack(lambda w: scan_inputs(w.scan)),
    output:
        json=f"{RESULTS}/scans/{{scan}}/summary.json",
        markdown=f"{RESULTS}/scans/{{scan}}/summary.md",
        html=report(
            f"{RESULTS}/scans/{{scan}}/summary.html",
            caption="../report/scans.rst",
            category="Scans",
            subcategory="{scan}",
        ),
        plot=report(
            f"{RESULTS}/scans/{{scan}}/metric.png",
            caption="../report/scans.rst",
            category="Scans",
            subcategory="{scan}",
        ),
    log:
        f"{RESULTS}/logs/scans/{{scan}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/scans/{{scan}}.tsv"
    wildcard_constraints:
        scan="|".join(SCANS) or "NO_SCAN",
    conda:
        SOFTWARE_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cfg=RESOLVED_CONFIG,
        values=lambda w: command_values("scan-summary", scan=w.scan),
        points=lambda w, input: scan_point_args(w.scan, input),
    shell:
        "xec scan-summary --config {params.cfg} --scan {wildcards.scan} {params.points}"
        " --out {output.json} --markdown {output.markdown} --html {output.html} --plot {output.plot} --log {log}"
