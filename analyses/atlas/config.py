"""The settings of the head atlas, and the analyses it reads (those whose spec declares
per-head columns)."""
from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import InputError
from workbench.spec import AnalysisSpec, option

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"
ATLAS_KEY = "atlas"
MAX_MODELS = 2


@dataclass
class AtlasConfig:
    models: tuple[str, ...] = option(("smollm2-135m",), flag="--model", aliases=("-m",),
                                     help="model whose saved runs make the atlas (registry name, hub id or folder); "
                                          "give it twice to line up two models by relative depth")
    fill: bool = option(False, help="run each head-level analysis that has no saved run on the model, at the small "
                                    "size its spec states for its page (spec.page_defaults), and save it")
    analyses: tuple[str, ...] = option((), flag="--analysis",
                                       help="head-level analyses to gather (default: every one whose spec declares "
                                            "head columns)")
    n_prompts: int = option(16, flag="--n", help="IOI prompts for attention entropy and mean attention distance",
                            min=1, max=10_000)
    prompt: str = option(DEFAULT_PROMPT, help="prompt of the head cards: attention pattern and top tokens through "
                                              "W_O and the unembedding")
    top_k: int = option(5, help="top heads listed per column", min=1)
    n_permutations: int = option(1000, flag="--permutations", help="permutations per correlation's p-value", min=10,
                                 max=1_000_000)
    n_clusters: int = option(0, flag="--clusters", help="role clusters (0: chosen by silhouette among 2..8)", min=0,
                             max=64)
    seed: int = 0

    def validate(self) -> None:
        if not self.models:
            raise InputError("--model is missing; name the model whose atlas to build (e.g. --model smollm2-135m)")
        if len(self.models) > MAX_MODELS:
            raise InputError(f"--model was given {len(self.models)} times; the atlas lines up {MAX_MODELS} models at most")
        if not self.prompt.strip():
            raise InputError("--prompt is empty; give the text the head cards show")
        known = head_level_keys()
        for key in self.analyses:
            if key not in known:
                raise InputError(f"--analysis {key} is not a head-level analysis; choose from {', '.join(known)}")


def head_level_specs() -> list[AnalysisSpec]:
    """Every installed analysis that declares per-head columns (the atlas itself excluded)."""
    from workbench.spec import specs

    return [s for s in specs().values() if s.head_columns and s.key != ATLAS_KEY]


def head_level_keys() -> list[str]:
    return [s.key for s in head_level_specs()]
