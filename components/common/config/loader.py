"""Loading a configuration: a preset YAML, dotted overrides on top, strict validation.

A preset is loaded, dotted overrides (``pretrain.steps=200``) are applied on top, and the result
is validated by pydantic with ``extra="forbid"`` so a typo in a key is an error that names the
key. Every stage receives the same resolved config (as JSON through KFP), so the local run and
the cluster run read exactly the same values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from components.common.config.base import ConfigError
from components.common.config.root import Config, validate

PRESET_DIR = Path(__file__).resolve().parents[3] / "pipelines" / "presets"


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config mapping; an unknown key is caught by validation."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                joined = ".".join(path[: depth + 1])
                raise ConfigError(f"override '{item}': '{joined}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def preset_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {candidate}")
        return candidate
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name_or_path}' (known: {', '.join(known)})")
    return path


def load_config(preset: str = "tiny", overrides: list[str] | None = None) -> Config:
    """Load a preset (name or YAML path), apply dotted overrides, validate."""
    path = preset_path(preset)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data.setdefault("preset", path.stem)
    apply_overrides(data, list(overrides or []))
    source = f"{path} with overrides {list(overrides)}" if overrides else str(path)
    return validate(data, source=source)


def split_overrides(text: str) -> list[str]:
    """Overrides as typed in a KFP UI text box: one per line or separated by ';'."""
    parts = [p.strip() for chunk in text.splitlines() for p in chunk.split(";")]
    return [p for p in parts if p]


def resolve_stage_config(config_json: str, overrides: str = "") -> Config:
    """What a KFP component does first: the compiled config plus the UI's overrides."""
    data = json.loads(config_json)
    apply_overrides(data, split_overrides(overrides))
    return validate(data, source="pipeline parameter config_json")
