"""The linter and the type checker, clean, as part of the fast tests (so CI runs them).

ruff's rules and mypy's settings live in pyproject.toml; mypy's remainder (modules still excused,
with their error counts) is listed there too, so a module that gets clean can leave the list and
one that is clean cannot silently fall back."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ["workbench", "analyses", "app", "kernels"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_is_clean():
    out = _run("ruff", "check", "--no-cache", *TREES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean():
    out = _run("mypy", "--no-incremental")
    assert out.returncode == 0, out.stdout + out.stderr

