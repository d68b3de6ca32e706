"""Per-rule time and memory of a finished pipeline run, from Snakemake's benchmark files.

    snakemake --profile profiles/local --cores 2          # the default pipeline
    python benchmarks/pipeline.py [results_dir]            # this table (markdown)

Every rule writes results/benchmarks/<rule>/<wildcards>.tsv (columns s, h:m:s, max_rss, ...);
the table lists each job's wall time and peak resident memory and the summed CPU-side time.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_benchmarks(results: Path) -> list[tuple[str, float, float]]:
    """(job name, wall seconds, max RSS MiB) per benchmark file, longest first."""
    rows = []
    root = results / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        with open(path) as f:
            records = list(csv.DictReader(f, delimiter="\t"))
        if not records:
            continue
        last = records[-1]
        name = str(path.relative_to(root).with_suffix(""))
        rss = float(last["max_rss"]) if last.get("max_rss", "NA") not in ("NA", "-", "") else float("nan")
        rows.append((name, float(last["s"]), rss))
    return sorted(rows, key=lambda r: -r[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", type=Path)
    args = parser.parse_args()
    rows = read_benchmarks(args.results)
    if not rows:
        raise SystemExit(f"{args.results}/benchmarks: no benchmark files (run the pipeline first)")
    print("| job | wall (s) | max RSS (MiB) |\n|---|---:|---:|")
    for name, s, rss in rows:
        print(f"| {name} | {s:.1f} | {rss:.0f} |")
    print(f"| **sum of jobs** | {sum(r[1] for r in rows):.1f} | |")


if __name__ == "__main__":
    main()
