"""nnsight's remote execution (NDIF) for the trace-based core operations.

``--remote`` sends each forward as one ``lm.trace(..., remote=True)``; NDIF runs the stock
Hugging Face module, so remote traces read and write stock modules (decoder-layer input and
output, the output projection's input for z, attention and MLP outputs), not the workbench's
hook points. These tests run the very same traces with ``remote="local"``: nnsight
serialises the trace as for NDIF, hides the local modules, deserialises and runs it here —
and compare caching, patching and the ablation sweep with the plain-PyTorch backend. Without
an API key or a network, ``--remote`` fails with one line naming what is missing."""
from __future__ import annotations

import sys

import pytest
import torch

from workbench.cache import run_with_cache, run_with_patches
from workbench.errors import HookNameError, InputError
from workbench.models import load_model

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "Then, Anna and Bob had a long argument. Afterwards Bob said to"]
NAMES = ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out",
         "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def simulated():
    return load_model("tiny-llama", backend="nnsight", remote="local")


@pytest.fixture
def spy(monkeypatch):
    """Counts the traces that went through nnsight's remote-path simulation."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    calls = []
    original = LocalSimulationBackend.__call__

    def call(self, tracer):
        calls.append(1)
        return original(self, tracer)

    monkeypatch.setattr(LocalSimulationBackend, "__call__", call)
    return calls


def test_remote_path_caches_like_hf(simulated, tiny_llama, spy):
    l0, c0 = run_with_cache(tiny_llama, PROMPTS, NAMES)
    l1, c1 = run_with_cache(simulated, PROMPTS, NAMES)
    assert spy == [1]  # one serialised trace
    assert torch.equal(l0, l1)
    for n in NAMES:
        assert torch.equal(c0[n], c1[n]), n


def test_remote_path_patches_like_hf(simulated, tiny_llama, spy):
    def kill_head_1(z):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    patches = {"blocks.1.attn.hook_z": kill_head_1, "blocks.0.hook_resid_pre": lambda x: x * 0.5,
               "blocks.0.hook_mlp_out": lambda x: -x}
    p0 = run_with_patches(tiny_llama, PROMPTS, patches)
    p1, cache = run_with_patches(simulated, PROMPTS, patches, names=["blocks.1.attn.hook_z"])
    assert spy == [1]
    assert torch.equal(p0, p1)
    assert torch.all(cache["blocks.1.attn.hook_z"][:, :, 1] == 0)  # the cache sees the patched value


def test_ablation_through_the_remote_path(simulated, tiny_llama, spy):
    """The ablation analysis on the remote code path (every forward an nnsight trace):
    the same head effects as the plain engine on the hf backend."""
    from workbench.analyses.ablation.analysis import AblationConfig, run

    config = AblationConfig(n_prompts=4, batch_size=16)
    remote = run(simulated, config, progress=False)
    local = run(tiny_llama, config, progress=False)
    assert remote.meta["parallel"]["sweep"] == "nnsight traces"
    assert len(spy) == remote.n_forwards + 1  # mean over corrupt prompts + clean + chunks
    torch.testing.assert_close(remote.effect, local.effect, atol=1e-5, rtol=1e-4)
    assert (remote.top_heads[0].layer, remote.top_heads[0].head) == (local.top_heads[0].layer, local.top_heads[0].head)


def test_remote_refuses_names_ndif_cannot_reach(simulated):
    with pytest.raises(HookNameError, match="not reachable in a remote nnsight trace"):
        run_with_cache(simulated, PROMPTS, ["blocks.0.attn.hook_pattern"])


def test_remote_without_key_is_one_line(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None, raising=False)
    with pytest.raises(InputError, match="needs an NDIF API key: set NDIF_API_KEY"):
        load_model("gpt2", backend="nnsight", remote=True)


def test_remote_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")  # nothing listens there: as good as offline
    with pytest.raises(InputError, match=r"cannot reach NDIF at http://127.0.0.1:9 .*check the network"):
        load_model("gpt2", backend="nnsight", remote=True)


def test_remote_needs_nnsight_and_a_hub_model():
    with pytest.raises(InputError, match="add --backend nnsight"):
        load_model("gpt2", backend="hf", remote=True)
    with pytest.raises(InputError, match="'tiny-llama' is not one"):
        load_model("tiny-llama", backend="nnsight", remote=True)


def test_cli_remote_offline(monkeypatch, capsys):
    from workbench.cli import main

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None, raising=False)
    monkeypatch.setattr(sys, "argv", ["workbench", "ablation", "--model", "gpt2", "--backend", "nnsight", "--remote"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and "loading" not in err  # refused before loading
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        "error: --remote needs an NDIF API key: set NDIF_API_KEY (get one at https://login.ndif.us) or run without --remote"]
