"""Every setting with its type, default and description, walked from the schema itself.

``fromscratch config --explain`` prints this table, so the reference a user reads can never
drift from the fields the loader accepts.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from components.common.config.root import Config


@dataclass(frozen=True)
class Setting:
    """One leaf of the configuration: its dotted key, type, default and description."""

    key: str
    type: str
    default: Any
    description: str


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds, if it holds one (also inside ``X | None``)."""
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def settings(model: type[BaseModel] = Config, prefix: str = "") -> list[Setting]:
    """The leaves under ``model``, depth first in the schema's order (lists of sections, such as
    ``data.sources`` or ``promotion.gate``, are leaves: their items are documented by their class)."""
    rows: list[Setting] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _section(field.annotation)
        if section is not None and typing.get_origin(field.annotation) not in (list, dict):
            rows.extend(settings(section, prefix=f"{key}."))
            continue
        if field.default is not PydanticUndefined:
            default = field.default
        elif field.default_factory is not None:
            default = field.default_factory()
        else:
            default = None
        if isinstance(default, BaseModel):
            default = default.model_dump()
        elif isinstance(default, list):
            default = [item.model_dump() if isinstance(item, BaseModel) else item for item in default]
        rows.append(Setting(key, _type_name(field.annotation), default, field.description or ""))
    return rows


def explain_table(rows: list[Setting] | None = None) -> str:
    """A Markdown table of the settings (the README's reference and ``config --explain``)."""
    rows = settings() if rows is None else rows
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for row in rows:
        text = row.description.replace("|", "\\|")
        lines.append(f"| `{row.key}` | {row.type.replace('|', 'or')} | `{row.default!r}` | {text} |")
    return "\n".join(lines)
