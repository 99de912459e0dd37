"""Just enough of the Dockerfile, .dockerignore and compose formats to check and replay them without Docker."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined and comments dropped."""

    keyword: str
    flags: tuple[str, ...]
    rest: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form arguments; fails on the shell form."""
        value = json.loads(self.rest)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.rest}"
        return [str(item) for item in value]

    def flag(self, name: str) -> list[str]:
        """Values of `--name=value` flags (every --mount, say)."""
        prefix = f"--{name}="
        return [flag.removeprefix(prefix) for flag in self.flags if flag.startswith(prefix)]


@dataclass
class Stage:
    """A build stage: its base image, name and instructions."""

    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction with this keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        """The instruction with this keyword that takes effect (the last one)."""
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, later ones winning."""
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            env |= parse_env(instruction.rest)
        return env

    def workdir(self) -> str:
        """The stage's final working directory."""
        return self.last("WORKDIR").rest


def parse_env(rest: str) -> dict[str, str]:
    """The variables of one `ENV key=value ...` instruction (the legacy `ENV key value` is refused)."""
    env: dict[str, str] = {}
    for item in shlex.split(rest):
        key, sep, value = item.partition("=")
        assert sep, f"ENV {rest!r}: use the key=value form"
        env[key] = value
    return env


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        lines.append(" ".join([*pending, stripped]))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return lines


def parse_dockerfile(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile (no heredocs, no parser directives beyond comments)."""
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: list[str] = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base=words[0], name=name))
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, tuple(flags), rest))
    return stages


def mount_options(spec: str) -> dict[str, str]:
    """`type=bind,from=builder,source=/x,target=/y` as a mapping."""
    return dict(item.split("=", 1) for item in spec.split(","))


class DockerIgnore:
    """A .dockerignore, matched as BuildKit matches it (moby/patternmatcher: last match wins,
    a pattern also matches every path under a directory it matches)."""

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            pattern = str(PurePosixPath(line.removeprefix("!").strip())).lstrip("/")
            self.patterns.append((exclusion, re.compile(_pattern_regex(pattern))))

    def excluded(self, path: str) -> bool:
        """Whether a context path (relative, '/'-separated) is left out of the build context."""
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for exclusion, regex in self.patterns:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not exclusion
        return excluded

    def files(self, root: Path, start: Path) -> list[Path]:
        """The files under `start` (a file or directory in the context at `root`) that are sent."""
        paths = [start] if start.is_file() else sorted(p for p in start.rglob("*") if p.is_file())
        return [p for p in paths if not self.excluded(p.relative_to(root).as_posix())]


def _pattern_regex(pattern: str) -> str:
    regex, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            regex += "[^/]*"
        elif ch == "?":
            regex += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            regex += pattern[i : end + 1]
            i = end
        else:
            regex += re.escape(ch)
        i += 1
    return regex


def copy_into(
    context: Path, ignore: DockerIgnore, sources: list[str], dest: Path, into_directory: bool
) -> None:
    """Replay `COPY <sources> <dest>` from the build context into a host directory standing in for `dest`."""
    into_directory = into_directory or len(sources) > 1 or dest.is_dir()
    for source in sources:
        start = context / source
        sent = ignore.files(context, start)
        assert sent, (
            f"COPY {source}: not in the build context (missing or excluded by .dockerignore)"
        )
        for file in sent:
            if start.is_dir():
                target = dest / file.relative_to(start)
            else:
                target = dest / file.name if into_directory else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)


def load_compose(path: Path = REPO / "docker-compose.yml") -> dict[str, Any]:
    """The compose file as data (YAML anchors and merge keys resolved)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either the mapping or the list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def env_file_values(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not KEY=VALUE"
        values[key.strip()] = value.strip()
    return values


def env_files(service: dict[str, Any]) -> list[str]:
    """The paths of a service's env files (short or long syntax)."""
    raw = service.get("env_file") or []
    items = [raw] if isinstance(raw, str | dict) else raw
    return [item["path"] if isinstance(item, dict) else str(item) for item in items]


def secret_targets(service: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> name of the top-level secret mounted there."""
    targets: dict[str, str] = {}
    for item in service.get("secrets") or []:
        source = str(item["source"]) if isinstance(item, dict) else str(item)
        target = str(item.get("target", source)) if isinstance(item, dict) else source
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        targets[path] = source
    return targets


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> source (a named volume or a host path) of each mount."""
    mounts: dict[str, str] = {}
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            mounts[item["target"]] = str(item.get("source", ""))
        else:
            source, target = str(item).split(":")[:2]
            mounts[target] = source
    return mounts
