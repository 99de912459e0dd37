"""bench/wan.py stays runnable: its options and its dry run (the real benchmark needs root and minutes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "wan.py"


def wan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_the_options() -> None:
    done = wan("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--size", "--repeat", "--profiles", "--dry-run", "--keep"):
        assert option in done.stdout


def test_dry_run_prints_the_link_and_its_cleanup_without_touching_the_machine() -> None:
    done = wan("--dry-run", "--size", "64M")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    netns = next(line.split()[-1] for line in lines if line.strip().startswith("ip netns add"))
    assert netns.startswith("bkwan-")
    # Half the RTT on each end, the rate and a queue that does not drop, for both profiles.
    for delay, rate in (("10ms", "1000mbit"), ("25ms", "100mbit")):
        shaped = [line for line in lines if f"netem delay {delay} rate {rate} limit" in line]
        assert len(shaped) == 2, done.stdout
        assert sum(f"ip netns exec {netns} " in line for line in shaped) == 1
    assert f"ip netns del {netns}" in done.stdout
    if shutil.which("ip") is not None:
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        )
        assert netns not in listed.stdout


def test_bad_options_are_refused_with_the_accepted_values() -> None:
    for args, expected in (
        (("--profiles", "10g"), "--profiles takes 1g,100m"),
        (("--size", "big"), "--size takes a size like 512M"),
        (("--repeat", "0"), "--repeat must be at least 1"),
    ):
        done = wan("--dry-run", *args)
        assert done.returncode == 2
        assert expected in done.stderr


def test_the_delay_line_script_compiles() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(SCRIPT.parents[1])!r}); "
            "from bench.wan import DELAY_LINE; compile(DELAY_LINE, 'delay-line', 'exec')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
