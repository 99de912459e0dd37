"""The README's settings tables, generated from the settings classes (`python -m gateway.docs` rewrites them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ByteSize
from pydantic_settings import BaseSettings

from gateway.aggregator.settings import AggregatorSettings
from gateway.settings import Settings, WeightsSettings

README = Path(__file__).resolve().parents[1] / "README.md"
TABLES: dict[str, tuple[type[BaseSettings], str]] = {
    "gateway": (Settings, ""),
    "validation": (WeightsSettings, "GATEWAY_"),
    "aggregator": (AggregatorSettings, "BK_AGGREGATOR_"),
}
_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, ByteSize):
        for unit, size in _UNITS:
            if int(value) % size == 0:
                return f"{int(value) // size}{unit}"
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(cls: type[BaseSettings], prefix: str) -> str:
    """A markdown table of one settings class: variable, default, meaning."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in cls.model_fields.items():
        if isinstance(field.default_factory, type) and issubclass(
            field.default_factory, BaseSettings
        ):
            continue  # nested settings have their own table
        rows.append(
            f"| `{(prefix + name).upper()}` | `{_default(field.default)}` | {field.description or ''} |"
        )
    return "\n".join(rows)


def _pattern(key: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- settings:{key} -->\n)(.*?)(\n<!-- /settings:{key} -->)", re.DOTALL)


def render(text: str) -> str:
    """`text` with every marked settings table regenerated."""
    for key, (cls, prefix) in TABLES.items():
        generated = table(cls, prefix)

        def replace(match: re.Match[str], generated: str = generated) -> str:
            return match.group(1) + generated + match.group(3)

        text = _pattern(key).sub(replace, text)
    return text


def main() -> None:
    """Rewrite the README's settings tables."""
    README.write_text(render(README.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
