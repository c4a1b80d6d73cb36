"""Sweeps on a local two-worker Ray cluster (``ray.init(num_cpus=2)``), against the
one-process run: identical numbers, and a worker killed mid-unit (the unit function this
test hands to ``map_units`` makes the first attempt of one unit ``os._exit``) has its units
re-run elsewhere with nothing lost or counted twice. Ray start-up is slow on two cores, so
the cluster is started once for the module and the tests are few."""
from __future__ import annotations

import os
from typing import Any, Callable

import pytest
import torch

ray = pytest.importorskip("ray")

from workbench.parallel import map_units, plan_patch_sweep, use  # noqa: E402

pytestmark = pytest.mark.slow


def die_once(work: Callable[[], Callable[[Any], Any]], configs: list[int], marker: str) -> Callable[[], Callable[[Any], Any]]:
    """``work`` whose worker process exits (``os._exit``) mid-unit, as a crashed or preempted
    worker would, the first time it runs the unit of these configurations; ``marker`` (a file)
    records that it happened, so the rerun finishes. Nested functions: Ray sends them by value."""
    def factory() -> Callable[[Any], Any]:
        run = work()

        def run_or_die(unit: Any) -> Any:
            if list(unit[0]) == configs and not os.path.exists(marker):
                with open(marker, "w") as fh:
                    fh.write(str(os.getpid()))
                os._exit(1)
            return run(unit)

        return run_or_die

    return factory


@pytest.fixture(scope="module")
def cluster():
    import logging
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def test_head_by_position_sweep_with_a_killed_worker(cluster, tiny_llama, tmp_path):
    """The batched engine's head x position sweep (IOI, corrupt-run source) on two workers,
    the worker running unit 2 killed in its first attempt: the same metric for every
    configuration, bit for bit, each unit kept once."""
    from workbench.cache import run_with_cache
    from workbench.datasets import ioi_prompts
    from workbench.patching import head_masks_per_position, logit_diff, run_head_patches

    ps = ioi_prompts(3, tiny_llama.tokenizer, seed=1)
    tokens = ps.tokens(tiny_llama)
    correct, wrong = ps.answer_ids(tiny_llama)
    names = [f"blocks.{l}.attn.hook_z" for l in range(tiny_llama.shape.n_layers)]
    _, cache = run_with_cache(tiny_llama, ps.corrupt, names, return_logits=False)
    source = {l: cache[names[l]] for l in range(tiny_llama.shape.n_layers)}

    def metric(last_logits, idx):
        return logit_diff(last_logits, correct[idx], wrong[idx])

    masks = head_masks_per_position(tiny_llama.shape.n_layers, tiny_llama.shape.n_heads, tokens.input_ids.shape[1])
    one = run_head_patches(tiny_llama, tokens, source, masks, metric, max_batch=24)
    # run_head_patches_parallel's phases, its work wrapped so that the worker running unit 2 dies
    plan = plan_patch_sweep(tiny_llama, tokens, source, masks, metric, max_batch=24, method="suffix", kernel=None,
                            workers=2, ray_address="auto")
    mapped = map_units(die_once(plan.work, plan.groups[2], str(tmp_path / "killed")), plan.units, workers=2,
                       ray_address="auto", num_gpus=plan.num_gpus)
    stats = mapped.stats
    two = plan.gather(mapped.values)
    assert (tmp_path / "killed").exists()  # the worker running unit 2 did die
    assert stats.units >= 4 and stats.dead_workers == 1
    assert stats.attempts[2] == 2 and stats.reruns == 1
    assert stats.completions == [1] * stats.units  # nothing lost, nothing counted twice
    assert torch.equal(one.metric, two.metric) and torch.equal(one.clean_metric, two.clean_metric)
    assert one.n_forwards == two.n_forwards


def test_ablation_report_sweep_on_ray_is_identical(cluster, tiny_llama):
    """`workbench ablation --ray ... --workers 2`'s run: the same effects as one process."""
    from workbench.analyses.ablation.analysis import AblationConfig, run

    config = AblationConfig(n_prompts=4, batch_size=8)  # 2 heads a chunk: 4 units of the 8 heads
    one = run(tiny_llama, config, progress=False)
    with use(ray="auto", workers=2):
        two = run(tiny_llama, config, progress=False)
    assert torch.equal(one.effect, two.effect)
    assert torch.equal(one.ablated_logit_diff, two.ablated_logit_diff)
    assert one.n_forwards == two.n_forwards
    assert two.meta["parallel"]["workers"] == 2 and two.meta["parallel"]["units"] == 4
