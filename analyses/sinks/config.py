"""The settings of the attention-sinks analysis and their one-line checks."""
from __future__ import annotations

from dataclasses import dataclass

from workbench.datasets.multiple_choice import TASKS, check_sizes
from workbench.errors import InputError
from workbench.spec import option


@dataclass
class SinksConfig:
    tasks: tuple[str, ...] = option(("category", "sentiment"), flag="--task", choices=TASKS,
                                    help="multiple-choice tasks, each with its own calibration and held-out split "
                                         "(repeat --task for several)")
    # threshold and beta are range-checked in validate() (its "outside 0..1" message is the documented one)
    threshold: float = option(0.1, help="a position is a sink when its column-mean attention is over this (0..1); "
                                        "also the threshold of the head search")
    beta: float = option(0.4, help="calibration keeps this share of attention on non-first sinks (0..1) in the "
                                   "head search")
    betas: tuple[float, ...] = option((0.2, 0.4, 0.6), help="beta grid searched for the chosen heads on the "
                                                            "calibration split")
    thresholds: tuple[float, ...] = option((0.1, 0.2), help="threshold grid searched for the chosen heads on the "
                                                            "calibration split")
    n_calib: int = option(64, help="calibration questions per task (head, beta and threshold search)", min=1)
    n_heldout: int = option(200, help="held-out questions per task (accuracy before/after)", min=1)
    max_search: int = option(8, help="candidate heads tried per task (strongest non-first sinks first)", min=0)
    max_heads: int = option(4, help="heads kept after the search", min=1)
    min_layer: int = option(2, help="first layer searched (ACT searches from layer 2 on)", min=0)
    # ACT uses 1; 1 makes the last few positions of a short prompt trivially sinks
    min_queries: int = option(5, help="a sink must be seen by at least this many queries", min=1)
    massive_ratio: float = option(20.0, help="a hidden dimension is massive when |h| exceeds this x the median |h|",
                                  min=0)
    batch_size: int = option(32, help="prompts per forward pass", min=1)
    seed: int = 0

    def validate(self) -> None:
        """One-line errors for settings a user can fix, before the model loads."""
        for name in ("threshold", "beta"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name}={v} is outside 0..1; pass a value between 0 and 1")
        for name in ("betas", "thresholds"):
            values = tuple(getattr(self, name))
            if not values:
                raise InputError(f"--{name} is empty; pass at least one value, e.g. --{name} 0.4")
            for v in values:
                if not 0.0 <= float(v) <= 1.0:
                    raise InputError(f"{name} holds {v}, which is outside 0..1; pass values between 0 and 1")
        if not self.tasks:
            raise InputError(f"no task given; pass --task with one of {', '.join(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise InputError("a task is given twice in --task; name each task once")
        for task in self.tasks:
            if task not in TASKS:
                raise InputError(f"unknown task '{task}' for --task; choose one of {', '.join(TASKS)}")
            check_sizes(task, self.n_calib, self.n_heldout)
        if self.max_search < 0 or self.max_heads < 1 or self.min_queries < 1:
            raise InputError("max_search must be >= 0, max_heads and min_queries >= 1")


def validate(config: SinksConfig) -> None:
    """``config.validate()``: the checks as a function."""
    config.validate()
