"""``workbench --version``: what a bug report needs first (the package, torch and transformers
versions, the device ``--device auto`` would use), exit 0, before any command or model loads."""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import torch


def test_version_prints_packages_and_device():
    proc = subprocess.run([sys.executable, "-m", "workbench", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    assert proc.stdout.splitlines() == [f"workbench {metadata.version('workbench')}", f"torch {torch.__version__}",
                                        f"transformers {metadata.version('transformers')}", f"device {device}"]
    assert proc.stderr == ""


def test_version_wins_over_a_command_and_is_in_the_help():
    from typer.testing import CliRunner

    from workbench.cli import app, register_analyses

    register_analyses()
    runner = CliRunner()
    out = runner.invoke(app, ["--version", "ablation", "--n", "0"])  # eager: the bad --n is never read
    assert out.exit_code == 0 and out.stdout.startswith("workbench ")
    assert "--version" in runner.invoke(app, ["--help"]).stdout
