"""The head atlas: every head of a model seen by every head-level analysis at once. It reads
the analyses only through the registry (each spec's ``head_columns``), so a new per-head
analysis adds its columns with no change here."""
from workbench.spec import AnalysisSpec, Headline

from .analysis import AtlasConfig, AtlasResult, load_target, run
from .figures import atlas_sections, headline, headline_figures
from .page import atlas_explorer


def write_tables(result: AtlasResult, config: AtlasConfig, common) -> dict[str, str | bytes]:
    """atlas.csv, atlas_columns.csv and atlas.parquet beside result.json, for pandas users."""
    return result.files()


SPEC = AnalysisSpec(
    key="atlas",
    title="Head atlas",
    help="Every head seen by every head-level analysis: one table from the saved runs, rank correlations, top heads, "
         "role clusters; --model twice lines up two models.",
    config=AtlasConfig,
    result=AtlasResult,
    run=run,
    figures=atlas_sections,
    headline=headline,
    load_target=load_target,
    finish=write_tables,
    page_defaults={"n_prompts": 4, "n_permutations": 200},
    page_extra=atlas_explorer,
    description="One row per (layer, head), one column per quantity each head-level analysis declares in its spec "
                "(head_columns), read from the newest saved run on the model; plus attention entropy and mean "
                "attention distance. Click a head in the grid for its card.",
    headlines=(Headline("head atlas", ("atlas", "--fill"), headline_figures,
                        why="--fill runs each missing head-level analysis at its page size so the atlas has columns "
                            "in a fresh runs folder"),),
)
