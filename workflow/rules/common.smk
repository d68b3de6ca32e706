# Helpers shared by the rule files.
import glob as _glob

SAMPLES = ["train", "val", "bench", "realdata"]


def input_files(sample):
    """ROOT files of a sample: the configured paths/globs, or the simulated file."""
    patterns = config["data"].get(sample) or []
    if not patterns:
        return [f"{RESULTS}/data/{sample}.root"]
    files = []
    for pattern in patterns:
        matched = sorted(_glob.glob(pattern))
        if not matched:
            raise WorkflowError(f"config data.{sample}: no file matches {pattern!r}")
        files.extend(matched)
    return files


SIMULATED_SAMPLES = [s for s in SAMPLES if not config["data"].get(s)]
