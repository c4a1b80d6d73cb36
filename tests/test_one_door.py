"""The CLI and the app run an analysis through one function (``cli.analysis.run_analysis``):
the spec's own target loader, its target checks and its extra files apply to both."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from workbench.cli.analysis import Common, run_analysis
from workbench.errors import InputError
from workbench.results import Result
from workbench.spec import AnalysisSpec


@dataclass
class DoorConfig:
    size: int = 3


@dataclass(kw_only=True)
class DoorResult(Result):
    analysis = "door"
    config: DoorConfig
    target: str  # what the run was handed


def _spec(**kw) -> AnalysisSpec:
    def run(target, config, progress=True):
        return DoorResult(config=config, target=str(target))

    return AnalysisSpec(key="door", title="Door", help="", config=DoorConfig, result=DoorResult, run=run, **kw)


def test_the_spec_target_loader_and_extra_files_apply(tmp_path):
    seen = {}

    def load_target(config, common):
        seen["model"] = common.model
        return f"built for {common.model}"

    def finish(result, config, common):
        return {"table.csv": f"size,{config.size}\n"}

    spec = _spec(load_target=load_target, finish=finish)
    out = tmp_path / "run"
    result = run_analysis(spec, DoorConfig(), Common(model="tiny-llama", out=out), progress=False, model="ignored")
    assert seen == {"model": "tiny-llama"}  # a spec with its own loader gets it, not the app's cached model
    assert result.path == out and (out / "table.csv").read_text() == "size,3\n"
    assert json.loads((out / "result.json").read_text())["data"]["target"] == "built for tiny-llama"


def test_a_given_model_is_used_and_the_target_checked(tmp_path, tiny_llama):
    def check_model(config, target):
        if config.size > 5:
            raise InputError(f"--size {config.size} is more than {target.name} allows")

    spec = _spec(check_model=check_model)
    result = run_analysis(spec, DoorConfig(), Common(out=tmp_path / "a"), progress=False, model=tiny_llama)
    assert result.target == str(tiny_llama) and (tmp_path / "a" / "result.json").exists()
    with pytest.raises(InputError, match="--size 9 is more than tiny-llama allows"):
        run_analysis(spec, DoorConfig(size=9), Common(out=tmp_path / "b"), progress=False, model=tiny_llama)
    assert not (tmp_path / "b").exists()  # nothing written when a check refuses
