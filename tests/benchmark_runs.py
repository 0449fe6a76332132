"""Running a benchmark script as a person would, and reading the markdown tables it prints: for the smoke tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def run_benchmark(repo_root: Path, script: str, *args: str, timeout: float = 300) -> list[str]:
    """Run `python benchmarks/<script> <args>` from the repo root in a subprocess, check it exits 0, and return the
    lines it printed."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=repo_root, capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def table_cells(lines: list[str], first_cell: str, *, whole: bool = True) -> list[str]:
    """The cells of the one markdown table row whose first cell matches the regular expression `first_cell` (with
    `whole=False`, whose first cell starts with a match)."""
    end = r"\s*\|" if whole else ""
    (row,) = [line for line in lines if re.match(rf"\|\s*{first_cell}{end}", line)]
    return [cell.strip() for cell in row.strip("|").split("|")]
