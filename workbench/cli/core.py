"""Commands about the workbench itself: models, runs, the dashboard."""
from __future__ import annotations

import importlib.util

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import JSON_OPT


def register(app: typer.Typer) -> None:
    @app.command()
    def models(as_json: bool = JSON_OPT) -> None:
        """Known models and whether each can be loaded offline here."""
        from ..models import available_models

        rows = available_models()
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        for r in rows:
            mark = "yes" if r["available"] else "no "
            print(f"{r['name']:<20} {r['kind']:<9} available: {mark}  {r['description']}")

    @app.command()
    def runs(
        as_json: bool = JSON_OPT,
        root: Optional[Path] = typer.Option(None, "--root", help="runs folder (default: $WORKBENCH_RUNS or ./runs)"),
    ) -> None:
        """Saved runs, newest first; a broken run folder is listed with the reason."""
        from ..results import list_runs

        rows = list_runs(root)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        if not rows:
            print("no saved runs yet; try `workbench ablation`")
        for r in rows:
            line = f"{r['created'] or '?':<27} {r['analysis'] or '?':<10} {r['model'] or '?':<16} {r['path']}"
            if r.get("reason"):
                line += f"  ({r['reason']})"
            print(line)
        broken = sum(1 for r in rows if r["analysis"] == "broken")
        if broken:
            print(f"{broken} broken run folder(s): delete them and re-run the analysis", file=sys.stderr)

    @app.command(name="app")
    def app_cmd(
        port: int = typer.Option(8501, "--port"),
        address: str = typer.Option("127.0.0.1", "--address"),
    ) -> None:
        """Start the Streamlit dashboard on 127.0.0.1."""
        app_spec = importlib.util.find_spec("workbench.app")  # located, not imported: the core never imports the app
        home = Path(app_spec.origin).resolve().parent / "Home.py"
        print(f"dashboard: http://{address}:{port}", flush=True)
        cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.port", str(port),
               "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false"]
        # exec, not a child process: stopping `workbench app` stops the server itself
        os.execv(sys.executable, cmd)
