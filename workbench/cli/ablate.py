"""``workbench ablate``: the head-ablation report."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import BACKEND_OPT, DEVICE_OPT, JSON_OPT, MODEL_OPT, OUT_OPT, SEED_OPT, finish, load, status


def register(app: typer.Typer) -> None:
    @app.command()
    def ablate(
        task: str = typer.Option("ioi", "--task", help="ioi"),
        model: str = MODEL_OPT,
        n: int = typer.Option(64, "--n", help="number of prompts"),
        ablation: str = typer.Option("mean", "--ablation", help="mean | zero"),
        seed: int = SEED_OPT,
        backend: str = BACKEND_OPT,
        device: str = DEVICE_OPT,
        include: Optional[List[Path]] = typer.Option(None, "--include", help="saved runs whose sections join the report (default: the latest run of every other analysis on this model)"),
        out: Optional[Path] = OUT_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Mean-ablate every attention head on a task; write an HTML report into the run folder."""
        from analyses.head_ablation import AblationConfig, run
        from ..report import render, sections_for
        from ..results import list_runs, load_result
        from ..errors import WorkbenchError

        if n < 1:
            raise typer.BadParameter("--n must be at least 1")
        m = load(model, backend, device)
        result = run(m, AblationConfig(task=task, n=n, seed=seed, ablation=ablation), progress=True)
        others = []
        paths = include if include is not None else _latest_other_runs(list_runs(), m.name)
        for p in paths:
            try:
                others.append(load_result(p))
            except WorkbenchError as exc:
                if include is not None:
                    raise
                status(f"skipping {p}: {exc}")
        html = render(f"Head-ablation report: {m.name} on {task}", sections_for([result, *others]),
                      meta={"model": m.name, "backend": backend, "seed": seed, "prompts": n,
                            "created": result.meta.get("created"), "commit": (result.meta.get("git_commit") or "")[:10]})
        path = result.save(out, extra_files={"report.html": html})
        status(f"report: {path / 'report.html'}")
        finish(result, None, as_json)


def _latest_other_runs(runs: list[dict], model: str) -> list[str]:
    seen, picked = set(), []
    for r in runs:  # newest first
        a = r.get("analysis")
        if a in (None, "ablation", "corrupt") or r.get("model") != model or a in seen:
            continue
        seen.add(a)
        picked.append(r["path"])
    return picked
