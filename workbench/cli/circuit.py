"""`workbench circuit` (discover a circuit) and `workbench reuse` (the IOI -> Colored
Objects circuit-reuse study)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import JSON_OPT, MODEL_OPT, OUT_OPT, SEED_OPT, finish, load, status


def register(app: typer.Typer) -> None:
    @app.command()
    def circuit(
        task: str = typer.Option("ioi", "--task", help="ioi | colored-objects"),
        method: str = typer.Option("eap-ig", "--method", help="eap | eap-ig | acdc | path-patching"),
        model: str = MODEL_OPT,
        n: int = typer.Option(8, "--n", help="prompts"),
        n_edges: int = typer.Option(200, "--n-edges", help="circuit size: top edges by |score|"),
        steps: int = typer.Option(3, "--steps", help="EAP-IG integration steps"),
        ablation: str = typer.Option("mean", "--ablation", help="mean | corrupt: what edges outside the circuit carry"),
        compare_patching: bool = typer.Option(False, "--compare-patching", help="also patch every head exactly; report Spearman"),
        acdc_candidates: int = typer.Option(300, "--acdc-candidates", help="edges ACDC tries (top EAP-IG edges)"),
        acdc_tau: float = typer.Option(0.05, "--acdc-tau"),
        seed: int = SEED_OPT,
        as_json: bool = JSON_OPT,
        out: Optional[Path] = OUT_OPT,
    ) -> None:
        """Discover a circuit (edges between heads and MLPs) and measure its faithfulness."""
        from analyses.circuits import METHODS, TASKS, CircuitConfig, run
        from ..errors import InputError

        if task not in TASKS:
            raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
        if method not in METHODS:
            raise InputError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
        cfg = CircuitConfig(task=task, method=method, n_prompts=n, seed=seed, n_edges=n_edges, ig_steps=steps,
                            ablation=ablation, compare_patching=compare_patching, acdc_candidates=acdc_candidates,
                            acdc_tau=acdc_tau, batch_size=min(8, n))
        m = load(model)
        status(f"circuit: {task} by {method} on {n} prompts ...")
        finish(run(m, cfg), out, as_json)

    @app.command()
    def reuse(
        model: str = MODEL_OPT,
        n: int = typer.Option(6, "--n", help="prompts per task for discovery"),
        n_edges: int = typer.Option(150, "--n-edges"),
        steps: int = typer.Option(3, "--steps", help="EAP-IG integration steps"),
        n_intervene: int = typer.Option(4, "--n-intervene", help="mid-layer heads to adjust"),
        intervention_prompts: int = typer.Option(16, "--intervention-prompts"),
        seed: int = SEED_OPT,
        as_json: bool = JSON_OPT,
        out: Optional[Path] = OUT_OPT,
    ) -> None:
        """IOI vs Colored Objects: circuit overlap, head classes, and the intervention experiment."""
        from analyses.circuit_reuse import ReuseConfig, run

        cfg = ReuseConfig(n_prompts=n, seed=seed, n_edges=n_edges, ig_steps=steps, n_intervene=n_intervene,
                          intervention_prompts=intervention_prompts, batch_size=min(6, n))
        m = load(model)
        status("reuse: IOI and Colored Objects circuits, head classes, intervention ...")
        finish(run(m, cfg), out, as_json)
