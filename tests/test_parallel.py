"""The Ray layer without a cluster: the one-process path of map_units, units aligned with the
engine's chunks, and the one-line errors of --ray / --workers (Ray absent, an analysis that does
not run on Ray)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
import torch

from workbench.errors import InputError
from workbench.parallel import map_units, plan_units, run_head_patches_parallel
from workbench.patching import head_masks_all_positions, head_masks_per_position
from workbench.patching.suffix import plan_chunks


@dataclass
class Square:
    offset: int

    def __call__(self):
        calls = []

        def fn(u):
            calls.append(u)
            return u * u + self.offset

        return fn


def test_map_units_local_order_progress():
    seen = []
    out = map_units(Square(1), [3, 1, 2], on_unit=lambda d, t: seen.append((d, t)))
    assert out.values == [10, 2, 5]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert out.stats.attempts == [1, 1, 1] and out.stats.completions == [1, 1, 1] and out.stats.reruns == 0


def test_map_units_rejects_zero_workers():
    with pytest.raises(InputError, match="--workers must be at least 1"):
        map_units(Square(0), [1], workers=0)


@pytest.mark.parametrize("per_position", [False, True])
def test_units_are_whole_engine_chunks(per_position):
    """Each unit is a run of whole chunks of the one-process plan, so the subset the engine
    plans inside a unit is exactly those chunks (same configurations, same order)."""
    masks = (head_masks_per_position if per_position else head_masks_all_positions)(3, 4, 5)
    per_chunk = 3
    chunks = [c for c, _, _ in plan_chunks(masks, per_chunk)]
    units = plan_units(masks, n_prompts=2, max_batch=2 * per_chunk, method="suffix", n_units=4)
    assert sorted(sum(units, [])) == sorted(sum(chunks, []))
    for unit in units:
        sub = [c for c, _, _ in plan_chunks(masks[unit], per_chunk)]
        assert [[unit[i] for i in c] for c in sub] == [c for c in chunks if c[0] in unit]


def test_one_process_path_is_the_engine(tiny_llama):
    from workbench.cache import as_tokens
    from workbench.patching import run_head_patches

    tokens = as_tokens(tiny_llama, ["When Mary and John went to the store, John gave a drink to"])
    s = tiny_llama.shape
    source = {l: torch.zeros(s.n_heads, s.d_head) for l in range(s.n_layers)}
    masks = head_masks_all_positions(s.n_layers, s.n_heads, tokens.input_ids.shape[1])
    metric = lambda logits, idx: logits[..., 5] - logits[..., 7]  # noqa: E731
    a = run_head_patches(tiny_llama, tokens, source, masks, metric)
    b = run_head_patches_parallel(tiny_llama, tokens, source, masks, metric)
    assert torch.equal(a.metric, b.metric)


def test_ray_missing_is_one_line(monkeypatch):
    from workbench.parallel import ray_module

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r'pip install "workbench\[ray\]"'):
        ray_module()


@dataclass
class _Ran:
    exit_code: int
    output: str


@pytest.fixture
def _cli(monkeypatch, capsys):
    """``workbench ARGS`` in this process: exit code and stderr+stdout."""
    from workbench.cli import main

    def run(args):
        monkeypatch.setattr(sys, "argv", ["workbench", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        out = capsys.readouterr()
        return _Ran(exc.value.code, out.err + out.out)

    return run


def test_cli_ray_without_ray_installed(monkeypatch, _cli):
    monkeypatch.setitem(sys.modules, "ray", None)
    r = _cli(["ablation", "--model", "tiny-llama", "--n", "2", "--ray", "auto"])
    assert r.exit_code == 2, r.output
    assert 'pip install "workbench[ray]"' in r.output and "Traceback" not in r.output


def test_cli_ray_on_an_analysis_without_it(_cli):
    r = _cli(["induction", "--model", "tiny-llama", "--ray", "auto"])
    assert r.exit_code == 2, r.output
    assert "does not run on Ray" in r.output


def test_cli_workers_and_remote_checks(_cli):
    r = _cli(["ablation", "--model", "tiny-llama", "--ray", "auto", "--workers", "0"])
    assert r.exit_code == 2 and "--workers must be at least 1" in r.output
    r = _cli(["ablation", "--model", "tiny-llama", "--remote"])
    assert r.exit_code == 2 and "add --backend nnsight" in r.output
