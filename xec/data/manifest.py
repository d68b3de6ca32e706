"""The shard manifest (results/shards/{split}/manifest.json): what a shard directory holds.

Keys (contract: docs/architecture.md, "Artifact contracts"): "split", "events", "shards"
[{"file", "events", "bytes", "sha256", "units"}], "normalization" (Normalizer.to_dict()),
"branches", "sources", "target_stats" {task: {"mean", "std", "p01", ...}}, "xec_version",
"layout", plus "tasks" and "selection".
``units`` lists the events of each tar sample in the shard (a sample is one block of events).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xec.errors import XecError
from xec.normalization import Normalizer
from xec.targets import TargetStandardizer

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "split",
    "events",
    "shards",
    "normalization",
    "branches",
    "sources",
    "target_stats",
    "xec_version",
    "layout",
    "tasks",
)


def manifest_path(path: str | Path) -> Path:
    """Accept a manifest file or its shard directory."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a manifest; every problem is one XecError naming the file."""
    path = manifest_path(path)
    if not path.exists():
        raise XecError(f"{path}: no such shard manifest (run `xec shards` first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XecError(f"{path}: not a readable JSON manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise XecError(f"{path}: manifest is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise XecError(f"{path}: manifest lacks key(s) {missing}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise XecError(
            f"{path}: manifest format_version {manifest.get('format_version')!r}, "
            f"this xec reads {FORMAT_VERSION}; re-run `xec shards`"
        )
    try:
        shards = manifest["shards"]
        if sum(s["events"] for s in shards) != manifest["events"]:
            raise XecError(f"{path}: shard event counts do not add up to {manifest['events']}")
        for s in shards:
            if sum(s["units"]) != s["events"] or not isinstance(s["file"], str) or int(s["bytes"]) < 0:
                raise XecError(f"{path}: shard {s['file']}: unit event counts do not add up to {s['events']}")
        _ = manifest["layout"]["x"]["shape"]  # what the loader allocates from
    except (KeyError, TypeError, ValueError) as exc:
        raise XecError(f"{path}: malformed shard manifest ({type(exc).__name__}: {exc})") from exc
    manifest["_path"] = str(path)
    manifest["_dir"] = str(path.parent)
    return manifest


def manifest_normalizer(manifest: dict[str, Any]) -> Normalizer:
    return Normalizer.from_dict(dict(manifest["normalization"]))


def manifest_standardizer(manifest: dict[str, Any]) -> TargetStandardizer:
    return TargetStandardizer.from_dict(manifest["target_stats"])
