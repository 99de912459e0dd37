"""Schemathesis against a live server's OpenAPI document, as a subprocess bounded in examples and time."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Rejections that are not schema violations: a body too large for the server (413), headers too
# large (431), next to Schemathesis's own defaults.
NEGATIVE_REJECTIONS = (
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "413",
    "415",
    "422",
    "428",
    "429",
    "431",
)


@dataclass(frozen=True)
class FuzzRun:
    """What one Schemathesis run found: its exit code, its text report and its JSON report."""

    returncode: int
    output: str
    report: dict[str, Any]


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML basic strings, arrays and numbers are JSON-compatible


def write_config(
    path: Path,
    auth: dict[str, dict[str, str]],
    operations: list[dict[str, Any]] | None = None,
) -> Path:
    """A `schemathesis.toml`: credentials per security scheme of the document (`bearer`, or `username`
    and `password`), and per-operation check settings (`{"include-path-regex": ..., "checks": {...}}`)."""
    lines = []
    for scheme, values in auth.items():
        lines.append(f"[auth.openapi.{scheme}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    lines += [
        "[checks.negative_data_rejection]",
        f"expected-statuses = {_toml_value(list(NEGATIVE_REJECTIONS))}",
    ]
    for operation in operations or []:
        lines.append("[[operations]]")
        lines.append(f"include-path-regex = {_toml_value(operation['include-path-regex'])}")
        for check, settings in operation.get("checks", {}).items():
            for key, value in settings.items():
                lines.append(f"checks.{check}.{key} = {_toml_value(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_schemathesis(
    schema_url: str,
    config: Path,
    work_dir: Path,
    *,
    max_examples: int,
    max_time_s: int,
    seed: int = 1,
    phases: str = "examples,coverage,fuzzing,stateful",
) -> FuzzRun:
    """Run every check in every phase against `schema_url`; the process is killed after twice `max_time_s`."""
    report = work_dir / "schemathesis.json"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        schema_url,
        "--checks",
        "all",
        "--phases",
        phases,
        "--max-examples",
        str(max_examples),
        "--max-time",
        str(max_time_s),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=2 * max_time_s + 60,
        check=False,
        cwd=work_dir,
    )
    loaded = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {}
    return FuzzRun(done.returncode, done.stdout + done.stderr, loaded)
