"""The reuse study's Config and Result: the two task circuits, their head overlap, the head
classes and the intervention, as typed fields and small records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Bool, Float
from torch import Tensor

from workbench.errors import InputError
from workbench.results import Result
from workbench.spec import option

from .config import ABLATIONS, SIZES, check_prompt_memory, parse_sizes
from .records import Convergence, FaithfulnessCurve, KindAccuracy

BATCH_SIZE = 8  # prompts per forward pass when --batch-size is not given: min(BATCH_SIZE, n_prompts)
TASK_KEYS = ("ioi", "colored_objects")


@dataclass
class ReuseConfig:
    n_prompts: int = option(8, flag="--n", help="discovery prompts per task (bounded by the memory they need, "
                            "checked before the run)", min=1)
    seed: int = 0
    method: str = option("eap-ig", help="discovery method: eap | eap-ig")
    n_edges: int | None = option(None, help="circuit size (top edges by |score|); default: per task, the smallest "
                                 "size on the curve whose validation faithfulness reaches --target", min=1)
    ig_steps: int = option(8, flag="--steps", help="EAP-IG integration steps", min=1, max=1000)
    ablation: str = option("mean", help="what edges outside a circuit carry", choices=ABLATIONS)
    batch_size: int | None = option(None, help=f"prompts per forward pass (default: min({BATCH_SIZE}, --n))", min=1)
    target: float = option(0.8, help="faithfulness each circuit must reach on its validation prompts", min=0.0, max=1.0)
    sizes: str = option(SIZES, help="circuit sizes (edges) of the faithfulness curves, comma-separated")
    n_val: int = option(16, flag="--val", help="validation prompts per task (curve and size choice)", min=2)
    n_test: int = option(16, flag="--test", help="test prompts per task (each circuit's faithfulness)", min=2)
    format: str = option("", help="Colored Objects prompt format (default: the one chosen on the development split)")
    n_intervene: int = option(4, help="mid-layer heads to adjust", min=1)
    n_random: int = option(5, help="random-head draws for the control", min=0)
    intervention_prompts: int = option(64, help="Colored Objects test-split prompts for the intervention", min=1)
    n_permutations: int = option(10000, help="random circuit pairs of the same head counts for the overlap baseline",
                                 min=1)

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = max(1, min(BATCH_SIZE, self.n_prompts))

    def rows(self) -> int:
        """Prompts per forward pass (``batch_size``, which ``__post_init__`` fills in)."""
        return self.batch_size if self.batch_size is not None else max(1, min(BATCH_SIZE, self.n_prompts))

    def validate(self) -> None:
        if self.method not in ("eap", "eap-ig"):
            raise InputError(f"unknown method '{self.method}' for reuse; choose eap or eap-ig "
                             "(ACDC and path patching are on the circuit command)")
        parse_sizes(self.sizes)
        if self.format:
            from workbench.datasets.colored_objects import format_of

            format_of(self.format)
        check_prompt_memory("reuse", "colored-objects", self.n_prompts)
        check_prompt_memory("reuse", "colored-objects", self.intervention_prompts, "--intervention-prompts")


@dataclass(kw_only=True)
class TaskCircuit:
    """One task's circuit in a reuse study (the circuit analysis's figures of it)."""

    n_heads: int
    n_edges: int
    faithfulness: float
    faithfulness_validation: float | None = None
    target: float | None = None
    target_met: bool | None = None
    chosen_k: int | None = None
    chosen_by: str | None = None
    circuit_metric: float
    full_metric: float | None = None
    ablated_metric: float | None = None
    logit_diff: float
    corrupt_logit_diff: float
    accuracy: float
    accuracy_kind: str | None = None
    accuracies: dict[str, KindAccuracy] | None = None
    heads: list[str]
    faithfulness_curve: FaithfulnessCurve | None = None
    convergence: Convergence | None = None
    n_prompts: int | None = None
    n_val: int | None = None
    n_test: int | None = None


@dataclass(kw_only=True)
class HeadOverlap:
    """Heads shared by the two circuits, against random circuits of the same head counts."""

    share_of_smaller: float
    jaccard: float
    shared: list[str]
    null_mean: float | None = None  # share of the smaller expected of two random head sets of the same sizes
    null_q95: float | None = None
    p_value: float | None = None  # one-sided permutation p-value of the observed share
    n_permutations: int | None = None
    caveat: str = ""


@dataclass(kw_only=True)
class Intervention:
    """Colored Objects accuracy before and after adjusting ``heads``, and with random heads adjusted."""

    heads: list[str]
    before: float
    after: float
    random_control: float | None
    random_draws: list[float] = field(default_factory=list)
    random_heads: list[list[str]] | None = None
    n_prompts: int
    layers: list[int]
    chance: float = 1 / 3
    accuracy: str = "argmax among the three colours in the prompt"
    split: str = "test"


@dataclass(kw_only=True)
class ReuseResult(Result):
    """The IOI and Colored Objects circuits, their head overlap, the head classes and the intervention."""

    analysis = "reuse"

    config: ReuseConfig
    format: str | None  # the Colored Objects prompt format the study ran on
    ioi: TaskCircuit
    colored_objects: TaskCircuit
    overlap: HeadOverlap
    class_table: list[dict[str, Any]]  # per head class, its heads in each circuit: {"class", "ioi", "colored_objects", "all"}
    intervention: Intervention
    seconds: float = float("nan")
    ioi_edge_scores: Float[Tensor, "sender receiver"]
    ioi_circuit: Bool[Tensor, "sender receiver"]
    ioi_head_scores: Float[Tensor, "layer head"]  # EAP-IG node score of each head
    colored_objects_edge_scores: Float[Tensor, "sender receiver"]
    colored_objects_circuit: Bool[Tensor, "sender receiver"]
    colored_objects_head_scores: Float[Tensor, "layer head"]
    class_scores: dict[str, Float[Tensor, "layer head"]] = field(default_factory=dict)  # per head class

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, Tensor]) -> tuple[dict, dict]:
        """Format 1 kept the circuits as uint8 and the class scores as ``class_{name}``."""
        out = {}
        for name, tensor in arrays.items():
            if name.endswith("_circuit"):
                tensor = tensor.bool()
            elif name.startswith("class_"):
                name = "class_scores/" + name[len("class_"):]
            out[name] = tensor
        return metrics, out

    def circuit(self, task: str) -> TaskCircuit:
        """The circuit of ``task`` ('ioi' or 'colored_objects')."""
        return self.ioi if _task_key(task) == "ioi" else self.colored_objects

    def head_scores(self, task: str) -> Tensor:
        """[layer head] EAP-IG node score of each head on ``task``."""
        return getattr(self, f"{_task_key(task)}_head_scores")

    def edge_scores(self, task: str) -> Tensor:
        """[sender receiver] score of every edge on ``task``."""
        return getattr(self, f"{_task_key(task)}_edge_scores")

    def circuit_edges(self, task: str) -> Tensor:
        """[sender receiver] bool: the edges of ``task``'s circuit."""
        return getattr(self, f"{_task_key(task)}_circuit")

    def summary(self) -> dict[str, Any]:
        from workbench.result_fields import encode_data, plain_json

        data, _ = encode_data(self)
        out = {k: data[k] for k in ("ioi", "colored_objects", "overlap", "intervention", "class_table")}
        if self.path is not None:
            out["run"] = str(self.path)
        return plain_json(out)


def _task_key(task: str) -> str:
    if task not in TASK_KEYS:
        raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASK_KEYS)}")
    return task
