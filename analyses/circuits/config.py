"""The circuit analysis's Config and its checks before any model loads: the tasks and
methods it knows, the curve's sizes and thresholds, and the prompt sets' memory floor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.errors import InputError
from workbench.patching.ablation import CHOICES as ABLATIONS, parse_ablation
from workbench.patching.graph import Graph
from workbench.patching.methods import METHODS as METHOD_TABLE
from workbench.spec import option

TASKS = ("ioi", "colored-objects")
METHODS = tuple(METHOD_TABLE)  # the core method table's keys (workbench.patching.methods)
BATCH_SIZE = 8  # prompts per forward pass when --batch-size is not given: min(BATCH_SIZE, n_prompts)


def check_task_and_method(task: str, method: str) -> None:
    """One-line errors for a task or method the analysis does not know ('colored_objects' is
    accepted as another spelling of 'colored-objects')."""
    if task not in TASKS and task != "colored_objects":
        raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")


def check_circuit_size(model: Any, n_edges: int | None, threshold: float | None = None) -> None:
    """Refuse, before any work, a circuit larger than the model's graph."""
    total = Graph.for_model(model).n_edges
    if n_edges is not None and threshold is None and n_edges > total:
        raise InputError(f"asked for a circuit of {n_edges} edges but this model's graph has only "
                         f"{total}; choose --n-edges <= {total}")


# ----------------------------------------------------------------------------- memory
# Python strings of one prompt (clean and corrupt prompt, answers), measured with tracemalloc
# over 20,000 prompts: IOI 394 bytes, Colored Objects 1,019 bytes. Any model, any tokenizer.
PROMPT_SET_BYTES = {"ioi": 400, "colored-objects": 1000, "colored_objects": 1000}


SLACK = 1.1  # the allocator's overhead over the tensors counted (see run_bytes)


def prompt_set_bytes(task: str, n: int) -> int:
    """What ``n`` prompts of ``task`` hold before any model is involved: a floor under every
    run's memory, checked before the model loads."""
    return n * PROMPT_SET_BYTES.get(task, 1000)


def check_prompt_memory(command: str, task: str, n: int, option: str = "--n") -> None:
    """Refuse, before the model loads, a prompt count whose prompt set alone is over the free memory."""
    from workbench.resources import check_memory

    check_memory(prompt_set_bytes(task, n), f"workbench {command} {option} {n} ({task} prompts alone, before any model)",
                 f"lower {option}")


ACDC_CANDIDATES = 64  # edges ACDC tries, one forward each: ~3.5 s a trial on one thread (smollm2-135m, 8 IOI prompts)
SIZES = "50,100,200,500,1000,2000,5000,10000,20000"  # circuit sizes of the faithfulness curve (edges kept; log scale)
VAL_OFFSET = 500  # validation split (the curve, the size choice): prompts drawn with seed + VAL_OFFSET
TEST_OFFSET = 700  # test split (the chosen circuit's faithfulness): seed + TEST_OFFSET


def parse_sizes(text: str, option: str = "--sizes") -> list[int]:
    """'50,100,200' -> [50, 100, 200]; a one-line error for anything else."""
    try:
        sizes = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise InputError(f"{option} {text!r} is not a comma-separated list of edge counts; e.g. {option} {SIZES}") from None
    if not sizes or sizes[0] < 1:
        raise InputError(f"{option} {text!r}: give edge counts of at least 1; e.g. {option} {SIZES}")
    return sizes


CURVE_METHODS = ("eap", "eap-ig", "acdc")
ACDC_TAUS = "0.001,0.01,0.1"  # ACDC thresholds of the curve (log-spaced x10, logit-difference units)


def parse_methods(text: str) -> list[str]:
    """'eap,eap-ig,acdc' -> ['eap', 'eap-ig', 'acdc']: EAP and EAP-IG give a curve over --sizes
    (their top-k edges), ACDC one over --acdc-taus (one run per threshold)."""
    out = [m.strip() for m in str(text).split(",") if m.strip()]
    for m in out:
        if m not in CURVE_METHODS:
            raise InputError(f"--curve-methods: unknown method '{m}'; curves come from {', '.join(CURVE_METHODS)} "
                             "(path patching gives one circuit)")
    return out


def parse_taus(text: str, option: str = "--acdc-taus") -> list[float]:
    """'0.01,0.1,1' -> [0.01, 0.1, 1.0] (sorted, distinct); a one-line error for anything else."""
    try:
        taus = sorted({float(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise InputError(f"{option} {text!r} is not a comma-separated list of thresholds; e.g. {option} {ACDC_TAUS}") from None
    if not taus or taus[0] < 0 or any(t != t or t == float("inf") for t in taus):
        raise InputError(f"{option} {text!r}: give finite thresholds of at least 0; e.g. {option} {ACDC_TAUS}")
    return taus


@dataclass
class CircuitConfig:
    task: str = option("ioi", help=f"the task: {' | '.join(TASKS)}")
    method: str = option("eap-ig", help=f"discovery method: {' | '.join(METHODS)}")
    n_prompts: int = option(8, flag="--n", help="discovery prompts (bounded by the memory they need, checked before "
                            "the run)", min=1)
    seed: int = 0
    n_edges: int | None = option(None, help="circuit size (top edges by |score|); default: the smallest size on the "
                                 "curve whose validation faithfulness reaches --target", min=1)
    threshold: float | None = option(None, cli=False, help="keep edges with |score| above this instead of the top n_edges")
    ig_steps: int = option(8, flag="--steps", help="EAP-IG integration steps (the convergence is shown for every "
                           "power of two up to this; 8 agree with 16 at Spearman 0.996 on IOI)", min=1, max=1000)
    ablation: str = option("counterfactual", help="what edges outside the circuit carry: counterfactual (the paired "
                           "corrupt run; 'corrupt' is its old name), mean (over the corrupt prompts), zero, or "
                           "resample (another prompt's corrupt run)", choices=ABLATIONS)
    batch_size: int | None = option(None, help=f"prompts per forward pass (default: min({BATCH_SIZE}, --n))", min=1)
    target: float = option(0.8, help="faithfulness the default circuit must reach on the validation prompts "
                           "((circuit - all ablated) / (full - all ablated))", min=0.0, max=1.0)
    sizes: str = option(SIZES, help="circuit sizes (edges) of the faithfulness curve, comma-separated")
    curve_methods: str = option("eap,eap-ig", help="methods whose faithfulness curves are measured: eap, eap-ig (top-k "
                                "edges at --sizes), acdc (one ACDC run per --acdc-taus; slow, not in the default: see "
                                "docs/circuits.md)")
    n_val: int = option(64, flag="--val", help="validation prompts: the faithfulness curve and the size choice", min=2)
    n_test: int = option(64, flag="--test", help="test prompts: the chosen circuit's faithfulness and the accuracy",
                         min=2)
    format: str = option("", help="Colored Objects prompt format (default: the one chosen on the development split)")
    acdc_tau: float = option(0.05, help="ACDC: drop an edge when the metric moves less than this", min=0)
    acdc_candidates: int = option(ACDC_CANDIDATES, help="edges ACDC tries (top EAP-IG edges; one forward each)", min=1)
    acdc_taus: str = option(ACDC_TAUS, help="ACDC thresholds of the curve (with --curve-methods ...,acdc), "
                            "comma-separated: one exact ACDC run each")
    path_top: int = option(6, help="path patching: heads kept in each of the two rounds", min=1)
    compare_patching: bool = option(True, help="also patch every head exactly (the node reference): rank agreement "
                                    "with each method's head scores, faithfulness of the top --node-heads heads by each, "
                                    "and MIB's node-level CPR and CMD of each ranking (--no-compare-patching: skip)")
    node_heads: str = option("3,6,12,24", help="head counts at which node circuits (top heads, every MLP kept) are "
                             "compared with --compare-patching")
    mib_methods: str = option("eap,eap-ig", help="methods whose MIB CPR and CMD are measured on the test prompts "
                              "(comma-separated among eap, eap-ig; '' for none)")
    beside_ablation: str = option("mean", help="a second ablation whose validation curve is drawn beside ('' for "
                                  "none)", choices=("",) + ABLATIONS)
    stability_boots: int = option(5, help="bootstrap resamples of the discovery prompts to rediscover on (mean "
                                  "pairwise Jaccard of the top edges and heads); 0: not measured", min=0, max=100)

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = max(1, min(BATCH_SIZE, self.n_prompts))
        if self.ablation in ABLATIONS:  # the old name 'corrupt' is stored as 'counterfactual'
            self.ablation = parse_ablation(self.ablation).value
        if self.beside_ablation in ABLATIONS:
            self.beside_ablation = parse_ablation(self.beside_ablation).value

    def rows(self) -> int:
        """Prompts per forward pass (``batch_size``, which ``__post_init__`` fills in)."""
        return self.batch_size if self.batch_size is not None else max(1, min(BATCH_SIZE, self.n_prompts))

    def validate(self) -> None:
        check_task_and_method(self.task, self.method)
        parse_ablation(self.ablation)
        if self.beside_ablation:
            parse_ablation(self.beside_ablation)
        from .measures import parse_counts, parse_names

        parse_names(self.mib_methods, ("eap", "eap-ig"), "--mib-methods")
        parse_counts(self.node_heads, "--node-heads")
        parse_sizes(self.sizes)
        parse_taus(self.acdc_taus)
        if self.method == "acdc" or "acdc" in parse_methods(self.curve_methods):
            from workbench.patching.acdc import check_candidates

            check_candidates(self.acdc_candidates)
        if self.format:
            from workbench.datasets.colored_objects import format_of

            format_of(self.format)
        for opt, n in (("--n", self.n_prompts), ("--val", self.n_val), ("--test", self.n_test)):
            check_prompt_memory("circuit", self.task, n, opt)


