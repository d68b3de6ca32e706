"""Configuration: load a YAML config, validate it against the one JSON schema
(workflow/schemas/config.schema.yaml) and fill in the schema's defaults.

The Snakefile and every `xec` subcommand go through ``load_config``/``validate_config``, so a
wrong type or an unknown key gets the same clear message (naming the key) everywhere.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from xec.errors import XecError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _extend_with_defaults(validator_class: type) -> type:
    """A validator that also fills in each property's ``default`` (jsonschema FAQ idiom)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if "default" in subschema and prop not in instance:
                    instance[prop] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_defaults(jsonschema.Draft7Validator)


def validate_config(cfg: dict[str, Any] | None, source: str = "config") -> dict[str, Any]:
    """Validate ``cfg`` in place (defaults filled in) and return it; XecError on problems."""
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise XecError(f"{source}: the config must be a mapping, got {type(cfg).__name__}")
    errors = sorted(_Validator(load_schema()).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"{source}: {key}: {err.message}")
        raise XecError("invalid configuration:\n  " + "\n  ".join(lines))
    return cfg


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config (default: the repository's config.yaml), apply dotted-key
    ``overrides`` ({"regressor.lr": 1e-3}) and validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise XecError(f"{path}: config file not found")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise XecError(f"{path}: not valid YAML: {exc}") from exc
    for key, value in (overrides or {}).items():
        set_dotted(cfg, key, value)
    return validate_config(cfg, source=str(path))


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def add_config_argument(parser) -> None:
    """The ``--config`` flag shared by every subcommand that reads the config."""
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="pipeline config (default: the repository's config.yaml)")
