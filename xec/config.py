"""Configuration: load a YAML config, validate it against the one JSON schema
(``xec/config.schema.yaml``, shipped inside the package) and fill in the schema's defaults.

The Snakefile and every `xec` subcommand go through ``load_config``/``validate_config``, so a
wrong type or an unknown key gets the same clear message (naming the key) everywhere. After
validation every key with a schema default is present: code reads ``cfg[...]``, never
``cfg.get(key, <second default>)``.

A command reads its config through a :class:`ConfigView` restricted to the keys it declares in
``xec.commands.COMMANDS``; reading any other key is an error. The Snakemake rules build their
``params:`` from the same declarations, so a rule reruns exactly when a key its command reads
changes.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from xec.commands import config_keys
from xec.errors import XecError

# The repository's default config.yaml (absent in a non-editable install: the schema defaults apply).
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


# libyaml's loader where PyYAML has it: the same documents, ~8x faster (the schema's parse was
# ~0.4 s of every xec command's start-up)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_load(text: str | Any) -> Any:
    """yaml.safe_load with the C loader when available."""
    return yaml.load(text, Loader=_YAML_LOADER)


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return yaml_load(resources.files("xec").joinpath("config.schema.yaml").read_text())


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


@functools.lru_cache(maxsize=1)
def _schema_defaults() -> dict[str, Any]:
    return validate_config({}, source="schema defaults")


def schema_defaults() -> dict[str, Any]:
    """The config of an empty file: every schema default, validated once per process (a fresh
    copy per call). For code that needs a default outside a loaded config (dataclass fields), so
    that the schema stays the one source of defaults."""
    return copy.deepcopy(_schema_defaults())


def definition_defaults(name: str) -> dict[str, Any]:
    """The defaults of a schema definition's properties (e.g. ``sample``: one simulated sample)."""
    props = load_schema()["definitions"][name]["properties"]
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, command: str | None = None, **fields: str
) -> Any:
    """Read a YAML config (default: the repository's config.yaml, else the schema defaults), apply
    dotted-key ``overrides`` ({"regressor.lr": 1e-3}) and validate. With ``command`` (a name of
    ``xec.commands.COMMANDS``) the result is that command's :class:`ConfigView`; ``fields``
    fill the placeholders of its declared keys (``sample="train"``)."""
    if path is None and not DEFAULT_CONFIG.exists():
        cfg: dict[str, Any] = {}
        source = "default config"
    else:
        path = Path(path) if path else DEFAULT_CONFIG
        if not path.exists():
            raise XecError(f"{path}: config file not found")
        try:
            with open(path) as f:
                cfg = yaml_load(f) or {}
        except yaml.YAMLError as exc:
            raise XecError(f"{path}: not valid YAML: {exc}") from exc
        source = str(path)
    for key, value in (overrides or {}).items():
        set_dotted(cfg, key, value)
    cfg = validate_config(cfg, source=source)
    return cfg if command is None else command_config(cfg, command, **fields)


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def add_config_argument(parser) -> None:
    """The ``--config`` flag shared by every subcommand that reads the config."""
    parser.add_argument(
        "--config", default=None, metavar="YAML", help="pipeline config (default: the repository's config.yaml)"
    )


# ----------------------------------------------------------------------------- per-command views
def key_tree(keys: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Dotted keys -> nested dict whose leaves are True (the whole subtree is readable)."""
    tree: dict[str, Any] = {}
    for key in keys:
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is True:  # a parent key already grants the whole subtree
                break
            node = nxt
        else:
            node[parts[-1]] = True
    return tree


class ConfigView(Mapping):
    """A read-only view of a validated config that lets a command read only the keys it declared.
    An undeclared key is an XecError naming the command and the key, never a silent default."""

    def __init__(self, data: Mapping[str, Any], allowed: Mapping[str, Any], command: str, prefix: str = ""):
        self._data = data
        self._allowed = allowed
        self._command = command
        self._prefix = prefix

    def _check(self, key: str) -> Any:
        if key not in self._allowed:
            raise XecError(
                f"xec {self._command} reads config key {self._prefix + key!r}, which it does not "
                f"declare (xec/commands.py)"
            )
        return self._allowed[key]

    def __getitem__(self, key: str) -> Any:
        allowed = self._check(key)
        value = self._data[key]
        if allowed is True or not isinstance(value, Mapping):
            return value
        return ConfigView(value, allowed, self._command, f"{self._prefix}{key}.")

    def __contains__(self, key: object) -> bool:
        self._check(str(key))
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._data if k in self._allowed)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"ConfigView({self._command!r}, {self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        """The declared part of the config as plain nested dicts (for checkpoints, params, logs)."""
        out: dict[str, Any] = {}
        for key in self:
            value = self[key]
            out[key] = value.to_dict() if isinstance(value, ConfigView) else copy.deepcopy(value)
        return out


def plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of a config or a ConfigView."""
    return cfg.to_dict() if isinstance(cfg, ConfigView) else copy.deepcopy(dict(cfg))


def command_config(cfg: Mapping[str, Any], command: str, **fields: str) -> ConfigView:
    """The :class:`ConfigView` of ``command`` over a validated config (or over another view)."""
    keys = config_keys(command, **fields)
    return ConfigView(plain(cfg), key_tree(keys), command)


def command_params(cfg: Mapping[str, Any], command: str, **fields: str) -> dict[str, Any]:
    """The config values a command's outputs depend on (its declared keys less the runtime-only
    ones), as plain nested dicts: the Snakemake rule's ``params``."""
    keys = config_keys(command, runtime=False, **fields)
    return ConfigView(plain(cfg), key_tree(keys), command).to_dict()
