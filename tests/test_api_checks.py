"""Every check before work, through every door (issue 29, deliverable 3): the command line,
the app and the Python API (``run(model, config)`` and ``spec.run``) all call
``workbench.checks.check_run_inputs``, so a Python caller gets the command line's one-line
``WorkbenchError`` instead of an ``AttributeError`` deep in the analysis, or, for a NaN
threshold, a saved run of NaNs."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from workbench.errors import InputError, WorkbenchError


def one_line(exc: BaseException, *words: str) -> str:
    msg = str(exc)
    assert isinstance(exc, WorkbenchError), f"{type(exc).__name__}: {msg}"
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# ----- the Python door ----------------------------------------------------------------
def _cases(model):
    from workbench.analyses.ablation.analysis import AblationConfig
    from workbench.analyses.induction.analysis import InductionConfig, run
    from workbench.analyses.lrp.analysis import LrpOptions
    from workbench.analyses.lrp.analysis import run as lrp_run
    from workbench.analyses.sinks.analysis import SinksConfig
    from workbench.analyses.sinks.analysis import run as sinks_run
    from workbench.spec import get_spec

    good = InductionConfig(n_prompts=2)
    return {
        "model-name": (lambda: run("tiny-llama", good), ["not the name 'tiny-llama'", "load_model('tiny-llama')"]),
        "model-none": (lambda: run(None, good), ["got None", "load_model"]),
        "model-other": (lambda: run(model.hf, good), ["got a LlamaForCausalLM"]),
        "config-other-class": (lambda: run(model, SinksConfig()), ["takes InductionConfig", "got a SinksConfig"]),
        "config-the-class": (lambda: run(model, InductionConfig), ["a class, not an instance"]),
        "config-dict": (lambda: run(model, {"n_prompts": 2}), ["got a dict"]),
        "int-as-text": (lambda: run(model, InductionConfig(n_prompts="5")), ["n_prompts (--n) must be an integer", "'5'"]),
        "int-as-bool": (lambda: run(model, InductionConfig(n_prompts=True)), ["must be an integer", "bool"]),
        "int-as-float": (lambda: run(model, InductionConfig(n_prompts=2.5)), ["must be an integer", "2.5"]),
        "float-as-text": (lambda: run(model, InductionConfig(threshold="0.4")), ["threshold (--threshold) must be a number"]),
        "int-as-none": (lambda: run(model, InductionConfig(n_prompts=None)), ["must be an integer, not None"]),
        "nan-spec-run": (lambda: get_spec("induction").run(model, InductionConfig(n_prompts=2, threshold=math.nan),
                                                            progress=False), ["--threshold", "finite"]),
        "range-spec-run": (lambda: get_spec("induction").run(model, InductionConfig(seq_len=1)), ["--seq-len"]),
        "tuple-holds-text": (lambda: sinks_run(model, SinksConfig(thresholds=(0.1, "x"))), ["must hold numbers", "'x'"]),
        "tuple-is-number": (lambda: sinks_run(model, SinksConfig(thresholds=0.1)), ["must be a tuple"]),
        "tuple-inf": (lambda: sinks_run(model, SinksConfig(betas=[0.2, math.inf])), ["--betas", "finite"]),
        "empty-target": (lambda: lrp_run(model, LrpOptions(target="")), ["--target is empty"]),
        "missing-include": (lambda: get_spec("ablation").run(model, AblationConfig(include=("no/such/run",))),
                            ["--include", "no/such/run", "does not exist"]),
        "unknown-keyword": (lambda: run(model, good, progres=False), ["unexpected keyword", "run(model, config"]),
    }


CASES = ["model-name", "model-none", "model-other", "config-other-class", "config-the-class", "config-dict",
         "int-as-text", "int-as-bool", "int-as-float", "float-as-text", "int-as-none", "nan-spec-run", "range-spec-run",
         "tuple-holds-text", "tuple-is-number", "tuple-inf", "empty-target", "missing-include", "unknown-keyword"]


@pytest.mark.parametrize("case", CASES)
def test_python_callers_get_one_line_errors(tiny_llama, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    call, words = _cases(tiny_llama)[case]
    with pytest.raises(Exception) as err:
        call()
    one_line(err.value, *words)
    assert not (tmp_path / "runs").exists()


def _model_specs() -> list[str]:
    from workbench.spec import specs

    return [k for k, s in specs().items() if s.load_target is None and s.wants_model(s.config())]


@pytest.mark.parametrize("key", _model_specs())
def test_every_analysis_refuses_a_model_name_and_a_foreign_config(tiny_llama, key):
    """Every installed analysis's ``spec.run`` is the checked door (the spec wraps it)."""
    from workbench.spec import get_spec

    spec = get_spec(key)
    with pytest.raises(InputError) as err:
        spec.run("tiny-llama", spec.config(), progress=False)
    one_line(err.value, "load_model('tiny-llama')")
    with pytest.raises(InputError) as err:
        spec.run(tiny_llama, object(), progress=False)
    one_line(err.value, f"takes {spec.config.__name__}")


def test_the_check_runs_before_the_analysis(tiny_llama):
    """The door calls the analysis only once the inputs passed; a good call still runs."""
    from workbench.analyses.induction.analysis import InductionConfig, run

    result = run(tiny_llama, InductionConfig(n_prompts=2), progress=False)
    assert result.config.n_prompts == 2
    assert run.checks_inputs and run.__wrapped__ is not run


def test_a_third_party_spec_gets_the_checks_too():
    """A spec built from a plain function is wrapped: its Config is checked before the run."""
    from dataclasses import dataclass

    from workbench.results import Result
    from workbench.spec import AnalysisSpec, option

    @dataclass
    class ToyConfig:
        alpha: float = option(0.5, min=0.0)

    @dataclass
    class ToyResult(Result):
        analysis = "toy-third-party"
        config_cls = ToyConfig

    ran = []
    spec = AnalysisSpec(key="toy-third-party", title="t", help="h", config=ToyConfig, result=ToyResult,
                        run=lambda target, config, progress=True: ran.append(config), needs_model=False)
    with pytest.raises(InputError) as err:
        spec.run(None, ToyConfig(alpha=-1.0))
    one_line(err.value, "--alpha must be at least 0.0")
    spec.run(None, ToyConfig(alpha=1.0))
    assert len(ran) == 1


# ----- one function, the same words through every door --------------------------------
@pytest.mark.parametrize("args,config", [
    (["induction", "--threshold", "nan"], {"threshold": math.nan}),
    (["ablation", "--include", "no/such/run"], {"include": ("no/such/run",)}),
    (["lrp", "--target", ""], {"target": ""}),
])
def test_the_cli_and_python_say_the_same_line_before_the_model_loads(tmp_path, tiny_llama, args, config):
    from workbench.spec import get_spec

    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "workbench", *args, "--model", "tiny-llama"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "loading" not in proc.stderr, proc.stderr[-2000:]
    cli_line = proc.stderr.strip().splitlines()[-1]
    spec = get_spec(args[0])
    with pytest.raises(InputError) as err:
        spec.run(tiny_llama, spec.config(**config), progress=False)
    assert cli_line == f"error: {err.value}"


def test_the_app_form_refuses_before_loading_a_model(monkeypatch, tmp_path):
    """The app's "run a small one" form calls the same function: a missing --include is an
    error on the page and no model is loaded."""
    import workbench.app.analysis_page as page
    from conftest import analysis_page_app

    loaded = []
    monkeypatch.setattr(page, "get_model", lambda name: loaded.append(name))
    at = analysis_page_app("ablation").run()
    at.text_area(key="ablation-include").input(str(tmp_path / "no-such-run")).run()
    at.button(key="ablation-run").click().run()
    assert not loaded
    errors = [e.value for e in at.error]
    assert any("--include" in e and "does not exist" in e for e in errors), errors
