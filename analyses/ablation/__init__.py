"""Head ablation: mean-ablate each attention head and rank heads by the change in the
task's logit difference; its run folder carries the HTML report of every analysis."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import AblationConfig, AblationResult, estimate_bytes, run
from .figures import ablation_sections, headline, headline_figures


def write_report(result: AblationResult, config: AblationConfig, common) -> dict[str, str]:
    """The run folder's report.html: this run, then the latest run of every other analysis."""
    from workbench.report import run_report

    meta = {"model": result.meta.get("model"), "backend": result.meta.get("backend"), "seed": config.seed,
            "prompts": config.n_prompts, "created": result.meta.get("created"),
            "commit": (result.meta.get("git_commit") or "")[:10]}
    title = f"Head-ablation report: {result.meta.get('model')} on {config.task}"
    return {"report.html": run_report(result, title, include=config.include, meta=meta)}


from .columns import HEAD_COLUMNS  # noqa: E402  (the head atlas's columns)

SPEC = AnalysisSpec(
    head_columns=HEAD_COLUMNS,
    key="ablation",
    title="Head ablation",
    help="Mean-ablate every attention head on a task; write an HTML report into the run folder.",
    config=AblationConfig,
    result=AblationResult,
    run=run,
    figures=ablation_sections,
    headline=headline,
    aliases=("ablate",),
    finish=write_report,
    estimate_bytes=estimate_bytes,
    page_defaults={"n_prompts": 16},
    headlines=(Headline("head ablation (IOI)", ("ablation",), headline_figures),),
    description="Each head's output z is replaced by its mean over corrupted (ABC) prompts; the effect is the "
                "change in the IO - S logit difference.",
)
