"""What every analysis gets from its spec alone, checked for every installed spec: a
command whose options are the Config's fields with the Config's defaults, a page that
renders, a place in the results store; and the direction of the imports (the core never
reaches up into the analyses, no architecture branch outside the adapters)."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import typer.main

from conftest import analysis_page_app
from workbench.cli import app, register_analyses
from workbench.cli.analysis import COMMON_OPTIONS
from workbench.config_fields import field_shape
from workbench.spec import base_type, check_config, config_fields, flag_of, get_spec, result_class, specs

ROOT = Path(__file__).resolve().parents[1]
SPECS = list(specs())


def _command(key: str):
    register_analyses()
    return typer.main.get_command(app).commands[key]


def test_builtin_analyses_are_registered():
    assert {"ablation", "induction"} <= set(SPECS)
    assert get_spec("ablate").key == "ablation"  # the old command name is an alias


@pytest.mark.parametrize("key", SPECS)
def test_command_options_are_the_config_fields(key):
    spec = specs()[key]
    cmd = _command(key)
    by_flag = {opt: p for p in cmd.params for opt in p.opts}
    for f, annotation in config_fields(spec.config):
        if f.name == "seed" or not f.metadata.get("cli", True) or not f.init:
            continue
        flag = flag_of(f)
        assert flag in by_flag, f"{key}: {f.name} has no {flag} option"
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = by_flag[flag].default
        if field_shape(f, annotation).kind is tuple:
            if by_flag[flag].multiple:
                # a repeatable option may leave its default to the Config (shown as None)
                assert shown is None or (not shown and not value) or tuple(shown) == value, f"{key} {flag}"
            else:
                assert shown == (",".join(map(str, value)) if value else None), f"{key} {flag}"
        else:
            assert shown == value, f"{key} {flag}: option default {shown!r} != Config default {value!r}"
    taken = {flag_of(f) for f, _ in config_fields(spec.config)}  # a field may take over a common option (atlas's --model)
    for name, _, opt in COMMON_OPTIONS:
        if opt.param_decls[0] in taken:
            assert opt.param_decls[0] in by_flag, f"{key}: {opt.param_decls[0]} was taken over and lost"
            continue
        assert any(p.name == name for p in cmd.params), f"{key} lacks the common option {name}"


@pytest.mark.parametrize("key", SPECS)
def test_config_defaults_pass_their_own_checks(key):
    check_config(specs()[key].config())


@pytest.mark.parametrize("key", SPECS)
def test_results_are_dataclasses_known_by_name(key):
    spec = specs()[key]
    for cls in (spec.result, *spec.extra_results):
        assert dataclasses.is_dataclass(cls) and "analysis" in cls.__dict__
        assert result_class(cls.analysis) is cls
    assert dataclasses.is_dataclass(spec.config)


@pytest.mark.parametrize("key", SPECS)
def test_page_without_runs_says_how_to_make_one(key):
    at = analysis_page_app(key).run()
    assert not at.exception
    assert at.title[0].value == specs()[key].title
    assert any(f"No saved '{key}' runs" in i.value for i in at.info)
    assert any(b.label == "run" for b in at.button)


def test_bad_option_value_is_refused_before_work():
    from workbench.errors import InputError

    spec = get_spec("ablation")
    with pytest.raises(InputError, match="--n must be at least 1"):
        check_config(spec.config(n_prompts=0))
    with pytest.raises(InputError, match="unknown ablation 'half' for --ablation; choose one of mean, zero"):
        check_config(spec.config(ablation="half"))


def _python_files(folder: str):
    return [p for p in (ROOT / folder).rglob("*.py")]


def test_core_never_imports_the_analyses():
    offenders = []
    for path in _python_files("workbench"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "workbench.analyses" or n.startswith(("workbench.analyses.", "workbench.app"))]
    assert offenders == []


def test_no_architecture_branch_outside_the_adapters():
    pattern = re.compile(r"\.arch\s*(==|!=|in\b|not in\b)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for folder in ("workbench", "analyses", "app", "benchmarks")
            for p in _python_files(folder) if "adapters" not in p.parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_no_private_names_imported_across_modules():
    hits = []
    for folder in ("workbench", "analyses", "app"):
        for path in _python_files(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    hits += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert hits == []


def test_runs_saved_under_old_field_names_still_load(tmp_path):
    """A run folder written before the one-vocabulary rename (``n``, ``max_batch``) loads
    into today's Config, through the spec, under the old command's analysis name."""
    import json

    import torch

    from workbench.analyses.ablation.analysis import AblationConfig, AblationResult
    from workbench.results import load_result

    result = AblationResult(config=AblationConfig(n_prompts=5, batch_size=64), effect=torch.zeros(2, 4),
                            clean_logit_diff_per_prompt=torch.zeros(5), ablated_logit_diff=torch.zeros(2, 4, 5),
                            clean_logit_diff=1.5, clean_logit_diff_std=0.0, accuracy=1.0, n_prompts=5, n_forwards=1,
                            top_heads=[], example_prompt="", meta={"model": "tiny-llama"})
    folder = result.save(tmp_path / "old-run")
    doc = json.loads((folder / "result.json").read_text())
    doc["config"] = {"task": "ioi", "n": 5, "seed": 0, "ablation": "mean", "max_batch": 64, "top_k": 10}
    (folder / "result.json").write_text(json.dumps(doc))
    loaded = load_result(folder)
    assert type(loaded) is AblationResult
    assert (loaded.config.n_prompts, loaded.config.batch_size) == (5, 64)
    assert loaded.clean_logit_diff == 1.5 and loaded.effect.shape == (2, 4)
