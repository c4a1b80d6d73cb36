"""The one door to an analysis: an ``AnalysisSpec`` per analysis (auto-circuit's typed
``PruneAlgo`` registry is the model), found through the ``workbench.analyses`` entry-point
group, so the core never imports ``analyses/`` and another package can add its own.

A spec names the analysis once (registry key = command = run-folder prefix = page), holds
its ``Config`` and ``Result`` classes, its ``run`` and its figures. The CLI builds the
command's options from the Config's fields (``option()`` metadata: flag, help, range),
the app builds the page from one template, the report and the results store read the
spec. Nothing else needs to know an analysis exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

# re-exported: Configs and the CLI import these from the spec
from .config_fields import base_type, check_config, config_fields, flag_of, option  # noqa: F401
from .sections import interval_sections  # noqa: F401  (re-exported: pages import it from the spec)

# re-exported: the registry lives one floor down, so the results store can find a Result
# class without importing this module (which imports the checks, which read saved runs)
from .spec_registry import ENTRY_POINT_GROUP, get_spec, result_class, specs  # noqa: F401

if TYPE_CHECKING:
    from .results import Result


@dataclass(frozen=True)
class Headline:
    """One README row: the command that makes it (arguments after ``workbench``, the
    command's defaults unless ``why`` says otherwise) and ``figures(result) -> [dict]``,
    each made by ``figure()``.
    ``benchmarks/headlines.py`` runs the command, reads the figures and writes them to
    ``docs/headlines.json``; the README's table is generated from that file."""

    label: str
    args: tuple[str, ...]
    figures: Callable[[Any], list[dict[str, Any]]]
    why: str = ""


def figure(text: str, value: float | None = None, *, interval: Any = None, n: int | None = None,
           split: str = "", fmt: str = ".3g") -> dict[str, Any]:
    """One headline figure: ``text`` says what it is, the README prints the value (``fmt``),
    its interval, n and split after it. With an ``Interval`` those come from it."""
    if interval is not None:
        value = interval.value if value is None else value
        n = interval.n if n is None else n
        split = split or interval.split
    return {"text": text, "value": value, "fmt": fmt,
            "interval": interval.to_dict() if interval is not None else None, "n": n, "split": split}


@dataclass(frozen=True)
class HeadColumn:
    """One per-head quantity an analysis contributes to the head atlas (``workbench atlas``).

    ``values(result)`` gives a ``[layer head]`` tensor from a saved Result (read through its
    typed properties), a dict of them (one column per key, named ``{name}_{key}``, e.g. one
    per task), or None when this run does not carry the quantity. ``direction`` is +1 when
    larger values mean more of the head's role, -1 when smaller (more negative) ones do (an
    ablation effect). ``threshold``, when given, is the value past which a head has the
    role (used to say whether a role is present in a model)."""

    name: str
    values: Callable[[Any], Any]
    unit: str = ""
    direction: int = 1
    description: str = ""
    threshold: float | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    """Everything the CLI, the app, the report and the results store know of an analysis.

    ``run(target, config, progress) -> Result``; ``target`` is what ``load_target`` returns
    (by default the model named by ``--model``; ``None`` for analyses that build their own).
    ``figures(result) -> list[report.Section]``: one function serves the app, the notebooks
    and the reports. ``headline(result) -> [(label, value)]``: the few numbers a page shows
    as tiles. ``extra_results``: other Result classes the analysis saves (older formats)."""

    key: str
    title: str
    help: str
    config: type
    result: type[Result]
    run: Callable[..., Any]
    figures: Callable[[Any], list] | None = None
    headline: Callable[[Any], list[tuple[str, Any]]] | None = None
    aliases: tuple[str, ...] = ()
    extra_results: tuple[type[Result], ...] = ()
    needs_model: Callable[[Any], bool] | bool = True
    load_target: Callable[[Any, Any], Any] | None = None
    finish: Callable[[Any, Any, Any], dict[str, Any]] | None = None
    check_model: Callable[[Any, Any], None] | None = None
    estimate_bytes: Callable[[Any, Any], int] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    page_defaults: dict[str, Any] = field(default_factory=dict)
    page_extra: Callable[[Any], None] | None = None
    description: str = ""
    headlines: tuple[Headline, ...] = ()
    head_columns: tuple[HeadColumn, ...] = ()

    def __post_init__(self) -> None:
        """``spec.run`` is always the checked door (``workbench.checks.checked_run``): a Python
        caller gets the checks the command line makes."""
        from .checks import checked_run, register

        run = checked_run(self.run)
        object.__setattr__(self, "run", run)
        register(run, self)

    @property
    def result_names(self) -> tuple[str, ...]:
        """The ``analysis`` names this spec's results are saved under."""
        return tuple(cls.analysis for cls in (self.result, *self.extra_results))

    def sections(self, result: Any) -> list:
        """The result's report sections: the spec's figures, else the result's own."""
        sections = self.figures(result) if self.figures is not None else result.report_sections()
        return sections + interval_sections(result)

    def check_target(self, config: Any, target: Any) -> None:
        """The checks that need what the analysis runs on (``check_model``, then the memory
        estimate against the free memory), before any work; the CLI and the app both call it."""
        if self.check_model is not None:
            self.check_model(config, target)
        if self.estimate_bytes is not None:
            from .resources import check_memory

            check_memory(self.estimate_bytes(config, target), f"workbench {self.key}")

    def wants_model(self, config: Any) -> bool:
        return self.needs_model(config) if callable(self.needs_model) else bool(self.needs_model)
