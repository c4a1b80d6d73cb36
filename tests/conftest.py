"""Shared fixtures: tiny random models for fast tests, the embedded model for the
real-model tests (marked ``real_model``), and a private runs folder per test."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama():
    from workbench.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from workbench.models import load_model

    return load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_neox():
    from workbench.models import load_model

    return load_model("tiny-neox")


@pytest.fixture(scope="session")
def smollm2():
    from workbench.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(autouse=True)
def _private_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))


def analysis_page_app(key: str, timeout: int = 120):
    """An AppTest of the dashboard page the spec ``key`` gets from the one page template."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_string(f"from workbench.app.analysis_page import analysis_page\nanalysis_page({key!r})\n",
                               default_timeout=timeout)
