"""The bad-input catalogue of issue 12, as tests: hostile or tired-user inputs to the
core and the generic CLI. Each case runs ``workbench`` as a subprocess (runs folder in
``tmp_path``) and asserts the exit code, one line on stderr without a traceback, and
that nothing on disk changed. The good answers stay tested too (unknown-model hints).

Per-analysis checks (``circuit --n 1000000000`` refused with a memory estimate,
``vhd --top-k 100000``, ``lrp --steps 0``, ``retrieval --kv-protect 100``) come from
each analysis's Config ranges and ``check_model``/``estimate_bytes`` spec hooks; their
cases are the last section.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import pytest
import torch

from workbench.errors import InputError, ModelNotAvailable, ResultError

TIMEOUT = 600


# ----- helpers ---------------------------------------------------------------------
def workbench(args: list[str], cwd: Path, *, script: str | None = None, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m workbench ARGS`` (or a script that adds a command first) in ``cwd``,
    with the runs folder at ``cwd/runs``."""
    env = dict(os.environ, WORKBENCH_RUNS=str(cwd / "runs"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "workbench", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind and content hash: what 'nothing changed' compares."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_error(proc: subprocess.CompletedProcess, *words: str, before_load: bool = True) -> str:
    """Exit 2, no traceback, one ``error:`` line (the last) naming ``words``; before the
    model loads, that line is all of stderr."""
    err = lines_of(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert err and err[-1].startswith("error: "), proc.stderr[-2000:]
    assert sum(line.startswith("error:") for line in err) == 1
    if before_load:
        assert len(err) == 1, err
    for w in words:
        assert w in err[-1], err[-1]
    return err[-1]


def assert_usage_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Typer's usage line and one ``Error:`` line, exit 2, no traceback."""
    err = lines_of(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert err[0].startswith("Usage:"), err
    errors = [line for line in err if line.startswith("Error:")]
    assert len(errors) == 1, err
    for w in words:
        assert w in errors[0], errors[0]


def save_toy_run(folder: Path, model: str = "tiny-llama") -> Path:
    from workbench.results import Result, provenance

    return Result(config={"n": 1}, metrics={"score": 1.0}, arrays={"grid": torch.arange(6.0).view(2, 3)},
                  meta=provenance(model=model)).save(folder)


def _break(folder: Path, how: str) -> None:
    doc_path = folder / "result.json"
    doc = json.loads(doc_path.read_text())
    if how == "metrics-list":
        doc["metrics"] = [1, 2, 3]
    elif how == "config-string":
        doc["config"] = "abc"
    elif how == "arrays-not-names":
        doc["arrays"] = {"grid": 1}
    elif how == "flipped-bytes":
        arr = folder / "arrays.safetensors"
        data = bytearray(arr.read_bytes())
        data[-2] ^= 0x55
        arr.write_bytes(bytes(data))
        return
    doc_path.write_text(json.dumps(doc))


# ----- usage errors: typer's usage line, exit 2 -----------------------------------
@pytest.mark.parametrize("args,words", [
    (["ablation", "--n", "abc"], ["--n"]),
    (["ablation", "--bogus-option"], ["--bogus-option"]),
    (["ablation", "--n"], ["--n"]),
    (["no-such-command"], ["no-such-command"]),
])
def test_usage_errors_print_the_usage_line(tmp_path, args, words):
    before = snapshot(tmp_path)
    assert_usage_error(workbench(args, tmp_path), *words)
    assert snapshot(tmp_path) == before


def test_bare_workbench_prints_help(tmp_path):
    proc = workbench([], tmp_path)
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr
    text = proc.stdout + proc.stderr
    assert "Usage:" in text and "ablation" in text and "runs" in text
    assert list(tmp_path.iterdir()) == []


# ----- options checked before any work: one line, exit 2 --------------------------
@pytest.mark.parametrize("args,words", [
    (["--n", "0"], ["--n", "at least 1"]),
    (["--n", "-5"], ["--n"]),
    (["--n", "1000000000"], ["--n", "at most"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--ablation", "resample"], ["--ablation", "mean", "zero"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--dtype", "int8"], ["--dtype", "int8"]),
])
def test_bad_options_are_refused_before_the_model_loads(tmp_path, args, words):
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", *args], tmp_path)
    assert_one_error(proc, *words)
    assert "loading" not in proc.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path):
    proc = workbench(["ablation", "--model", "tiny-llama", "--device", "cuda"], tmp_path)
    assert_one_error(proc, "cuda", "--device cpu")
    assert list(tmp_path.iterdir()) == []


TOY_FLOAT_CLI = textwrap.dedent('''
    import sys
    from dataclasses import dataclass
    import workbench.cli as cli
    from workbench.cli.analysis import register_analysis
    from workbench.results import Result
    from workbench.spec import AnalysisSpec, option

    @dataclass
    class ToyFloatConfig:
        alpha: float = option(0.5, help="a float", min=0.0)
        taus: tuple[float, ...] = option((0.1, 0.2), help="floats")

    @dataclass
    class ToyFloatResult(Result):
        analysis = "toyfloat"
        config_cls = ToyFloatConfig

    def run(target, config, progress=True):
        open("RAN", "w").write("the analysis ran")
        raise SystemExit(0)

    register_analysis(cli.app, AnalysisSpec(key="toyfloat", title="toy", help="toy", config=ToyFloatConfig,
                                            result=ToyFloatResult, run=run, needs_model=False))
    sys.argv = ["workbench", *sys.argv[1:]]
    cli.main()
''')


@pytest.mark.parametrize("args,flag", [
    (["--alpha", "nan"], "--alpha"),
    (["--alpha", "inf"], "--alpha"),
    (["--alpha", "-inf"], "--alpha"),
    (["--alpha", "1e400"], "--alpha"),
    (["--taus", "0.1,nan"], "--taus"),
])
def test_nan_and_inf_floats_are_refused(tmp_path, args, flag):
    """Through the generic CLI, on a float option of a Config (NaN/inf used to run and be saved as null)."""
    proc = workbench(["toyfloat", *args], tmp_path, script=TOY_FLOAT_CLI)
    assert_one_error(proc, flag, "finite")
    assert list(tmp_path.iterdir()) == []  # the analysis never ran, nothing was written


def _float_options() -> list[tuple[str, str]]:
    """(command, flag) of the first float option of every installed analysis."""
    try:
        from workbench.spec import base_type, config_fields, flag_of, specs

        found = []
        for key, spec in specs().items():
            for f, annotation in config_fields(spec.config):
                kind, _ = base_type(annotation)
                floaty = kind is float or (typing.get_origin(kind) is tuple and float in typing.get_args(kind))
                if floaty and f.init and f.metadata.get("cli", True) and not f.metadata.get("choices"):
                    found.append((key, flag_of(f)))
                    break
        return found
    except Exception:  # noqa: BLE001 - collection must not fail on an analysis in the making
        return []


@pytest.mark.parametrize("command,flag", _float_options())
def test_nan_refused_by_every_installed_analysis(tmp_path, command, flag):
    proc = workbench([command, flag, "nan", "--model", "tiny-llama"], tmp_path)
    assert_one_error(proc, flag, "finite")
    assert list(tmp_path.iterdir()) == []


# ----- --out: never delete what the user did not make -----------------------------
def test_out_at_an_existing_folder_that_is_not_a_run_is_refused(tmp_path):
    mine = tmp_path / "thesis"
    (mine / "chapters").mkdir(parents=True)
    (mine / "notes.txt").write_text("months of work")
    (mine / "chapters" / "one.tex").write_text("\\chapter{One}")
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", str(mine)], tmp_path)
    assert_one_error(proc, str(mine), "does not hold a workbench run")
    assert "loading" not in proc.stderr  # refused before any work
    assert snapshot(tmp_path) == before


def test_out_at_a_run_folder_with_a_user_file_is_refused(tmp_path):
    run = save_toy_run(tmp_path / "run")
    (run / "my-notes.txt").write_text("what I saw")
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", str(run)], tmp_path)
    assert_one_error(proc, str(run), "my-notes.txt", "did not write", "move what you keep out of it")
    assert "loading" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_out_at_an_existing_file_is_refused(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", str(target)], tmp_path)
    assert_one_error(proc, "existing file")
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.glob(".results.csv*"))  # not moved aside either


def test_out_at_a_symlink_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", str(tmp_path / "link")], tmp_path)
    assert_one_error(proc, "not a run folder")
    assert snapshot(tmp_path) == before


def test_out_under_a_file_is_refused_before_work(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", str(tmp_path / "file.txt" / "run")],
                     tmp_path)
    assert_one_error(proc, "is a file, not a folder")
    assert "loading" not in proc.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_out_at_an_earlier_run_replaces_it_and_broken_runs_stop_nothing(tmp_path):
    """--out naming an earlier run replaces it atomically; broken run folders beside it
    (the report gathers the latest run of every analysis) neither stop the run nor change."""
    from workbench.results import load_result

    runs = tmp_path / "runs"
    earlier = save_toy_run(runs / "earlier")
    for how in ("metrics-list", "config-string", "flipped-bytes"):
        _break(save_toy_run(runs / f"broken-{how}"), how)
    broken_before = {k: v for k, v in snapshot(runs).items() if k.startswith("broken-")}
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", str(earlier)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    back = load_result(earlier)
    assert back.analysis == "ablation" and back.config.n_prompts == 2
    assert (earlier / "report.html").is_file()
    assert {k: v for k, v in snapshot(runs).items() if k.startswith("broken-")} == broken_before
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        ["earlier", "broken-metrics-list", "broken-config-string", "broken-flipped-bytes"])  # no .tmp / .old left


# ----- models: clear lines for bad names and local paths --------------------------
def _pickle_model_folder(folder: Path, marker: Path) -> None:
    """A model folder whose weights are a pickle that would run a command when unpickled."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 32}))
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.embed_tokens.weight": Payload()}, fh)


@pytest.mark.parametrize("case,words", [
    ("file", ["is a file, not a model folder"]),
    ("empty", ["is empty", "config.json"]),
    ("no-config", ["has no config.json"]),
    ("broken-config", ["config.json is not valid JSON"]),
    ("missing", ["does not exist"]),
    ("pickle", ["pickle", "safetensors"]),
])
def test_local_model_paths_get_a_clear_line(tmp_path, case, words):
    target = tmp_path / "model"
    marker = tmp_path / "PAYLOAD-RAN"
    if case == "file":
        target.write_text("not a model")
    elif case == "empty":
        target.mkdir()
    elif case == "no-config":
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"\0" * 16)
    elif case == "broken-config":
        target.mkdir()
        (target / "config.json").write_text("{\"model_type\": \"llama\",")
    elif case == "pickle":
        _pickle_model_folder(target, marker)
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", str(target), "--n", "2"], tmp_path)
    line = assert_one_error(proc, *words, before_load=False)
    assert "huggingface-cli download" not in line and "not reachable" not in line
    assert not marker.exists()  # the pickle's payload did not run
    assert snapshot(tmp_path) == before


def test_unknown_model_names_the_nearest(tmp_path):
    proc = workbench(["ablation", "--model", "tiny-lama", "--n", "2"], tmp_path)
    assert_one_error(proc, "unknown model 'tiny-lama'", "did you mean tiny-llama", before_load=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,words", [
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": "cuda:7"}, "cuda:7"),
    ({"dtype": torch.int8}, "not a floating-point type"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ({"backend": "jax"}, "unknown backend 'jax'"),
])
def test_load_model_refuses_bad_devices_and_dtypes(kwargs, words):
    from workbench.models import load_model

    with pytest.raises(InputError) as err:
        load_model("tiny-llama", **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_load_model_local_paths_api(tmp_path):
    from workbench.models import load_model

    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        load_model(str(tmp_path / "f"))
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_prompt_longer_than_the_context_is_one_line(tiny_llama):
    limit = tiny_llama.shape.n_ctx
    long_prompt = " ".join(["word"] * (limit + 100))
    with pytest.raises(InputError) as err:
        tiny_llama.to_tokens(["a short prompt", long_prompt])
    msg = str(err.value)
    assert "prompt 1" in msg and str(limit) in msg and "\n" not in msg
    ids, _ = tiny_llama.to_tokens(["a short prompt"])  # prompts within the context still work
    assert ids.shape[0] == 1


# ----- saved runs: validated on load, listed as broken ----------------------------
@pytest.mark.parametrize("how,words", [
    ("metrics-list", "metrics is a list"),
    ("config-string", "config is a string"),
    ("arrays-not-names", "arrays is not a list"),
    ("flipped-bytes", "sha256"),
])
def test_broken_runs_are_listed_with_the_reason(tmp_path, how, words):
    runs = tmp_path / "runs"
    good = save_toy_run(runs / "good")
    bad = save_toy_run(runs / "bad")
    _break(bad, how)
    before = snapshot(tmp_path)
    proc = workbench(["runs"], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    out = {line.split()[3]: line for line in proc.stdout.splitlines()}  # created, analysis, model, path, (reason)
    assert out[str(good)].split()[1] == "result" and "(" not in out[str(good)]
    assert out[str(bad)].split()[1] == "broken" and words in out[str(bad)]
    rows = {r["path"]: r for r in json.loads(workbench(["runs", "--json"], tmp_path).stdout)}
    assert rows[str(bad)]["analysis"] == "broken" and words in rows[str(bad)]["reason"]
    assert rows[str(good)]["analysis"] == "result" and rows[str(good)]["reason"] is None
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("how,words", [
    ("metrics-list", "metrics is a list"),
    ("config-string", "config is a string"),
    ("flipped-bytes", "sha256"),
])
def test_broken_runs_are_one_line_on_load(tmp_path, how, words):
    from workbench.results import load_result

    bad = save_toy_run(tmp_path / "bad")
    _break(bad, how)
    with pytest.raises(ResultError) as err:
        load_result(bad)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_report_skips_broken_runs(tmp_path, monkeypatch):
    from workbench.report import latest_runs

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    good = save_toy_run(tmp_path / "runs" / "good")
    for how in ("metrics-list", "config-string", "flipped-bytes"):
        _break(save_toy_run(tmp_path / "runs" / f"bad-{how}"), how)
    assert latest_runs("tiny-llama") == [str(good)]


def test_safetensors_header_tampering_stays_an_error(tmp_path):
    """Good already: a tampered header (shapes) is refused by safetensors itself."""
    from workbench.results import load_result

    run = save_toy_run(tmp_path / "run")
    doc = json.loads((run / "result.json").read_text())
    del doc["arrays_sha256"], doc["arrays_bytes"]  # as an older run, so safetensors must catch it
    (run / "result.json").write_text(json.dumps(doc))
    arr = run / "arrays.safetensors"
    data = arr.read_bytes().replace(b"[2,3]", b"[9,9]")
    arr.write_bytes(data)
    with pytest.raises(ResultError, match="corrupt"):
        load_result(run)


# ----- Ctrl-C --------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_prints_interrupted_and_leaves_no_run(tmp_path):
    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # a run long enough (many seconds) that the signal lands inside it
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "ablation", "--model", "tiny-llama", "--n", "4096",
                             "--batch-size", "4096"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a test run from a background job inherits SIGINT ignored, and Python then installs
                            # no KeyboardInterrupt handler: give the child the default disposition, as a terminal does
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.time() + TIMEOUT
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("loaded "):
                time.sleep(0.2)
                proc.send_signal(signal.SIGINT)
                break
            assert time.time() < deadline
        _, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(line.startswith("loaded ") for line in seen), "".join(seen)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and lines_of(rest)[-1] == "interrupted"
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # no run folder, no hidden temp folder
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])


def test_save_interrupted_leaves_nothing(tmp_path, monkeypatch):
    """A Ctrl-C while the run folder is written leaves neither the run nor its temp folder."""
    from workbench import results

    def interrupted(self, folder, extra):
        (folder / "result.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(results.Result, "_write_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.Result(metrics={"x": 1}).save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """``kill``, ``timeout`` and schedulers send SIGTERM: "interrupted", exit 143 (128 + 15), no traceback."""
    proc = subprocess.Popen([sys.executable, "-c", TOY_FLOAT_CLI.replace(
        'open("RAN", "w").write("the analysis ran")', 'import time; print("running", file=sys.stderr, flush=True); '
        'time.sleep(120)'), "toyfloat"], cwd=tmp_path, env=dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert any(line.strip() == "running" for line in iter(proc.stderr.readline, ""))  # then it waits
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, rest
    assert "Traceback" not in rest and lines_of(rest) == ["interrupted"]
    assert list(tmp_path.iterdir()) == []


# ----- the dashboard's server options: checked before streamlit starts -------------
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args,words", [
    (["--port", "-1"], ["--port", "between 1 and 65535", "-1"]),
    (["--port", "70000"], ["--port", "70000"]),
    (["--port", "0"], ["--port"]),
    (["--address", "no such host..invalid"], ["--address", "no such host..invalid", "127.0.0.1"]),
    (["--address", "999.1.2.3"], ["--address"]),
])
def test_app_server_options_are_one_line(tmp_path, args, words):
    """They were tracebacks from inside streamlit."""
    before = snapshot(tmp_path)
    proc = workbench(["app", *args], tmp_path, timeout=120)
    assert_one_error(proc, *words)
    assert proc.stdout == ""  # streamlit never started
    assert snapshot(tmp_path) == before


def test_app_port_in_use_names_the_option(tmp_path):
    """It exited 1 with streamlit's own message, which does not name --port."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = workbench(["app", "--port", str(port)], tmp_path, timeout=120)
    assert_one_error(proc, f"--port {port}", "in use", "--port ")
    assert proc.stdout == ""


def test_app_on_a_network_address_warns_that_runs_become_readable(tmp_path):
    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs"))
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--address", "0.0.0.0", "--port", str(_free_port())],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
    finally:
        proc.kill()  # the exec'd streamlit server itself
        proc.communicate(timeout=60)
    assert first.startswith("warning: --address 0.0.0.0") and "every saved run" in first, first
    assert str(tmp_path / "runs") in first and "readable" in first


# ----- the dashboard's home page with broken runs ---------------------------------
def test_home_page_survives_broken_runs(tmp_path, monkeypatch):
    """Broken run folders (wrong types, flipped bytes, metrics that do not fit the result)
    neither crash the home page nor any run picked in it: each shows its reason."""
    from streamlit.testing.v1 import AppTest

    from workbench.analyses.ablation.analysis import AblationConfig, AblationResult
    from workbench.results import provenance

    runs = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(runs))
    for how in ("metrics-list", "config-string", "flipped-bytes"):
        _break(save_toy_run(runs / f"bad-{how}"), how)
    misfit = AblationResult(config=AblationConfig(n_prompts=2), effect=torch.zeros(2, 4),
                            clean_logit_diff_per_prompt=torch.zeros(2), ablated_logit_diff=torch.zeros(2, 4, 2),
                            clean_logit_diff=0.1, clean_logit_diff_std=0.0, accuracy=1.0, n_prompts=2, n_forwards=1,
                            top_heads=[], example_prompt="x", meta=provenance(model="tiny-llama")).save(runs / "misfit")
    doc = json.loads((misfit / "result.json").read_text())
    doc["data"]["top_heads"] = "x"  # a field whose value does not fit its annotation
    (misfit / "result.json").write_text(json.dumps(doc))
    before = snapshot(tmp_path)
    at = AppTest.from_string("from workbench.app.home_page import home_page\nhome_page()\n", default_timeout=120).run()
    assert not at.exception, at.exception
    picker = at.selectbox[0]
    assert len(picker.options) == 4
    for i in range(4):
        at = picker.set_value(i).run()
        assert not at.exception, at.exception
        assert at.error, f"run {i} should show why it is broken"
        picker = at.selectbox[0]
    assert snapshot(tmp_path) == before


# ----- per-analysis checks: ranges, the model's limits, memory estimates ----------
NO_MODEL = 60.0  # a hang guard, not a speed test: the proof that no model loaded is the absent "loading" line


def timed(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = workbench(args, cwd)
    return proc, time.perf_counter() - start


def test_circuit_n_1e9_is_refused_within_seconds_with_the_estimate(tmp_path):
    """It grew to 24 GB and was killed by the out-of-memory killer: now the prompt set alone
    (a floor under any model's run) is refused before the model loads, with its size."""
    from workbench.analyses.circuits.analysis import prompt_set_bytes
    from workbench.resources import free_memory_bytes, human_bytes

    estimate = prompt_set_bytes("ioi", 10**9)
    if free_memory_bytes() > estimate:
        pytest.skip("this machine has the memory for it")
    before = snapshot(tmp_path)
    proc, seconds = timed(["circuit", "--model", "tiny-llama", "--n", "1000000000"], tmp_path)
    line = assert_one_error(proc, "--n 1000000000", "would need about", human_bytes(estimate), "lower --n")
    # the proof is that no model was loaded; the wall time (about 4 s on a quiet machine, 3.5 s of it
    # importing torch) is bounded loosely so a busy CI machine does not fail a timed test
    assert "loading" not in proc.stderr
    assert seconds < NO_MODEL, f"refused after {seconds:.1f} s: {line}"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,words", [
    (["lrp", "--n", "1000000000"], ["--n", "at most"]),
    (["lrp", "--steps", "0"], ["--steps", "at least 1"]),
    (["lrp", "--max-delete", "0"], ["--max-delete", "at least 1"]),
    (["lrp", "--image", "chelsea", "--size", "1000"], ["--size 1000", "multiple of the 16-pixel"]),
    (["induction", "--n", "1000000000"], ["--n", "at most"]),
    (["vhd", "--n-scenes", "100000000"], ["--n-scenes", "at most"]),
    (["sinks", "--n-calib", "100000000"], ["--n-calib 100000000", "category task", "--n-calib 140 or less"]),
    (["sinks", "--n-heldout", "1000"], ["--n-heldout 1000", "--n-heldout 276 or less"]),
    (["circuit", "--acdc-taus", "0.01,abc"], ["--acdc-taus", "comma-separated list of thresholds"]),
    (["circuit", "--curve-methods", "eap,acdc", "--acdc-candidates", "6000"], ["ACDC would try 6000 edges", "--acdc-candidates"]),
    (["reuse", "--intervention-prompts", "1000000000"], ["--intervention-prompts 1000000000", "would need about"]),
    (["ablation", "--n", "1000", "--batch-size", "512"], ["--batch-size 512", "--n 1000"]),
])
def test_per_analysis_options_are_refused_before_the_model_loads(tmp_path, args, words):
    before = snapshot(tmp_path)
    proc, seconds = timed([*args, "--model", "tiny-llama"], tmp_path)
    line = assert_one_error(proc, *words)
    assert seconds < NO_MODEL, f"refused after {seconds:.1f} s: {line}"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,words", [
    (["icl", "--n", "1000000000"], ["workbench icl would need about", "TB"]),
    (["lrp", "--image", "chelsea", "--size", "20000"], ["workbench lrp would need about", "TB"]),
])
def test_memory_estimates_without_a_model_are_refused_within_seconds(tmp_path, args, words):
    """icl builds its own model and lrp's image mode its own CNN: the estimate needs neither."""
    before = snapshot(tmp_path)
    proc, seconds = timed(args, tmp_path)
    line = assert_one_error(proc, *words, "is free", before_load=False)
    assert seconds < NO_MODEL, f"refused after {seconds:.1f} s: {line}"
    assert "loading" not in proc.stderr
    assert snapshot(tmp_path) == before


def _estimate(key: str, model, **values) -> int:
    from workbench.spec import check_config, get_spec

    spec = get_spec(key)
    config = spec.config(**values)
    check_config(config)
    return spec.estimate_bytes(config, model)


@pytest.mark.parametrize("key,args,values", [
    ("circuit", ["--n", "1000000", "--n-edges", "20"], {"n_prompts": 1_000_000, "n_edges": 20}),
    ("ablation", ["--n", "100000", "--batch-size", "100000"], {"n_prompts": 100_000, "batch_size": 100_000}),
    ("vhd", ["--n-scenes", "16", "--image-size", "100000"], {"n_scenes": 16, "image_size": 100_000, "top_k": 8}),
])
def test_memory_estimates_with_the_model_are_refused_before_the_run(tmp_path, tiny_llama, key, args, values):
    """Within the options' ranges the size that drives memory is checked against the free
    memory once the model's shape is known, before the analysis starts; the estimate is in the line."""
    from workbench.resources import free_memory_bytes, human_bytes

    estimate = _estimate(key, tiny_llama, **values)
    if free_memory_bytes() > estimate:
        pytest.skip(f"this machine has the {human_bytes(estimate)} it needs")
    before = snapshot(tmp_path)
    proc, seconds = timed([key, "--model", "tiny-llama", *args], tmp_path)
    line = assert_one_error(proc, f"workbench {key} would need about {human_bytes(estimate)}", "is free",
                            before_load=False)
    assert seconds < 120, f"refused after {seconds:.1f} s: {line}"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key,args,words,not_words", [
    ("vhd", ["--top-k", "100000"], ["--top-k 100000", "2 layers x 4 = 8", "--top-k 8 or less"], []),
    ("retrieval", ["--kv-protect", "100", "--ks", "2", "--lengths", "200"],
     ["--kv-protect 100", "8 heads", "--kv-protect 4 or less"], ["--ks", "--lengths", "random heads from"]),
    ("retrieval", ["--lengths", "200"], ["--ks 5,10", "1..4", "8 heads"], []),
    ("retrieval", ["--lengths", "10000000", "--ks", "2", "--kv-protect", "2"],
     ["--lengths 10000000", "context of 512 tokens", "up to 512"], []),
])
def test_options_beyond_the_model_are_refused_before_the_run(tmp_path, key, args, words, not_words):
    """``vhd --top-k 100000`` ran on 270 heads; ``--kv-protect 100`` was refused only after the
    whole analysis, naming the wrong option; both are one line naming the option and the limit."""
    before = snapshot(tmp_path)
    proc, seconds = timed([key, "--model", "tiny-llama", *args], tmp_path)
    line = assert_one_error(proc, *words, before_load=False)
    for w in not_words:
        assert w not in line, line
    assert "scoring" not in proc.stderr and "prefill" not in proc.stderr  # the analysis never started
    assert seconds < 120, f"refused after {seconds:.1f} s: {line}"
    assert snapshot(tmp_path) == before


def test_a_10000_word_prompt_is_one_line_naming_the_length_and_the_limit(tmp_path, tiny_gpt2):
    limit = tiny_gpt2.shape.n_ctx
    prompt = " ".join(["word"] * 10_000)
    n_tokens = len(tiny_gpt2.tokenizer(prompt)["input_ids"])
    before = snapshot(tmp_path)
    proc = workbench(["lrp", "--model", "tiny-gpt2", "--prompt", prompt], tmp_path)
    line = assert_one_error(proc, f"--prompt is {n_tokens} tokens", f"context of {limit} tokens",
                            f"at most {limit}", before_load=False)
    assert "explaining" not in proc.stderr and len(line) < 300
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key,values,measured", [
    # peak RSS over the RSS after the model loaded, CPU, float32 (see each estimate's docstring)
    # re-measured 2026-11-26 (discovery and held-out split), at the settings of that run (the defaults then)
    ("circuit", {"n_prompts": 128, "n_edges": 20, "n_val": 16, "n_test": 16, "compare_patching": False}, 0.106e9),
    ("ablation", {"n_prompts": 512}, 2.06e9),
    ("retrieval", {"context_lengths": (512,), "depths": tuple(float(d) for d in range(0, 101, 10)), "n_needles": 3,
                   "mask_ks": (2,), "n_random": 1, "kv_protect": 2, "batch_size": 33, "max_new_tokens": 4}, 0.41e9),
    ("vhd", {"n_scenes": 128, "n_val": 32, "alphas": (2.0,), "image_size": 64, "batch_size": 2, "top_k": 3,
             "max_new_tokens": 3}, 0.69e9),  # measured with 32 validation scenes (the default was 32 then)
])
def test_memory_estimates_match_measured_runs(tiny_llama, key, values, measured):
    """The estimates against the peak memory of real small runs on tiny-llama: within a factor of 1.5."""
    estimate = _estimate(key, tiny_llama, **values)
    assert measured / 1.5 < estimate < measured * 1.5, (key, estimate, measured)


@pytest.mark.parametrize("key,values,measured", [
    ("icl", {"n": 160, "steps": 30}, 1.08e9),
    ("lrp", {"images": ("chelsea",), "image_size": 448}, 1.68e9),
])
def test_memory_estimates_without_a_model_match_measured_runs(key, values, measured):
    estimate = _estimate(key, None, **values)
    assert measured / 1.5 < estimate < measured * 1.5, (key, estimate, measured)


def test_every_float_option_is_typed_float():
    """check_config refuses NaN and infinity only in fields typed float: a float default under
    another type would let them through."""
    from workbench.spec import base_type, config_fields, specs

    for key, spec in specs().items():
        for f, annotation in config_fields(spec.config):
            kind, _ = base_type(annotation)
            default = f.default if f.default is not dataclasses.MISSING else None
            defaults = default if isinstance(default, tuple) else (default,)
            if any(isinstance(v, float) for v in defaults):
                floaty = kind is float or (typing.get_origin(kind) is tuple and float in typing.get_args(kind))
                assert floaty, f"{key}: {f.name} has a float default but is typed {annotation}"


# ----- issue 29: run references, empty lists, what a path is, the environment --------
def workbench_env(args: list[str], cwd: Path, stdout: typing.Any = subprocess.PIPE, **env: str | None) -> subprocess.CompletedProcess:
    """``workbench()`` with environment variables set (or removed, with None) and a chosen stdout."""
    full = dict(os.environ, WORKBENCH_RUNS=str(cwd / "runs"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=full, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)


def _root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize("make,words", [
    (lambda tmp: str(tmp / "no-such-run"), ["--include", "does not exist"]),
    (lambda tmp: str(_write(tmp / "notes.txt", "mine")), ["--include", "is a file, not a folder"]),
    (lambda tmp: str(_write(tmp / "half" / "result.json", "{").parent), ["--include", "result.json is corrupt"]),
    (lambda tmp: str(_write(tmp / "other" / "data.csv", "1,2").parent), ["--include", "has no result.json"]),
    (lambda tmp: "", ["--include is empty"]),
], ids=["missing", "file", "broken-run", "not-a-run", "empty"])
def test_include_is_checked_before_the_model_loads(tmp_path, make, words):
    """``ablation --include`` was read only after the whole analysis (about 25 minutes at the defaults)."""
    value = make(tmp_path)
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--include", value], tmp_path)
    assert_one_error(proc, *words)
    assert snapshot(tmp_path) == before


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("args,words", [
    (["sinks", "--thresholds", ""], ["--thresholds is empty"]),
    (["sinks", "--betas", ","], ["--betas is empty"]),
    (["retrieval", "--depths", ""], ["--depths is empty"]),
    (["vhd", "--alphas", " "], ["--alphas is empty"]),
    (["icl", "--seed-heads", ""], ["--seed-heads is empty"]),
    (["lrp", "--target", ""], ["--target is empty"]),
    (["lrp", "--prompt", "Hi", "--contrast", ""], ["--contrast is empty"]),
    (["retrieval", "--haystack", ""], ["--haystack is empty"]),
    (["vhd", "--image", ""], ["--image is empty"]),
])
def test_empty_list_options_are_refused_not_replaced_by_the_defaults(tmp_path, args, words):
    before = snapshot(tmp_path)
    proc = workbench([*args, "--model", "tiny-llama"], tmp_path)
    assert_one_error(proc, *words)
    assert snapshot(tmp_path) == before


def _fifo(tmp: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


@pytest.mark.parametrize("command,flag,make,what", [
    ("retrieval", "--haystack", lambda tmp: tmp, "is a folder, not a file"),
    ("retrieval", "--haystack", _fifo, "is a named pipe, not a file"),
    ("lrp", "--image", lambda tmp: tmp, "is a folder, not a file"),
    ("vhd", "--image", _fifo, "is a named pipe, not a file"),
    ("induction", "--model", _fifo, "is a named pipe, not a model folder"),
], ids=["haystack-folder", "haystack-pipe", "image-folder", "image-pipe", "model-pipe"])
def test_a_folder_or_a_pipe_is_called_what_it_is(tmp_path, command, flag, make, what):
    """They were all "does not exist"; a pipe is never opened (that would wait for a writer)."""
    path = make(tmp_path)
    args = [command, flag, str(path)] + ([] if flag == "--model" else ["--model", "tiny-llama"])
    proc = workbench(args, tmp_path)
    assert_one_error(proc, str(path), what)


def test_an_unreadable_file_is_called_unreadable(tmp_path):
    if _root():
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    haystack = _write(tmp_path / "haystack.txt", "Some prose. " * 50)
    haystack.chmod(0)
    proc = workbench(["retrieval", "--haystack", str(haystack), "--model", "tiny-llama"], tmp_path)
    assert_one_error(proc, str(haystack), "cannot be read (permission denied)")


@pytest.mark.parametrize("env,words", [
    ({"WORKBENCH_CACHE": "{file}"}, ["{file} is a file, not a folder", "WORKBENCH_CACHE={file}"]),
    ({"WORKBENCH_CACHE": "{file}/cache"}, ["{file} is a file, not a folder", "point WORKBENCH_CACHE"]),
    ({"WORKBENCH_CACHE": None, "HOME": "{file}"}, ["{file} is a file, not a folder", "HOME={file}"]),
    ({"WORKBENCH_CACHE": None, "HOME": ""}, ["HOME is set but empty"]),
    ({"WORKBENCH_CACHE": None, "HOME": "relative/home"}, ["HOME=relative/home is not an absolute path"]),
], ids=["cache-is-a-file", "cache-under-a-file", "home-is-a-file", "home-empty", "home-relative"])
def test_a_cache_folder_that_cannot_be_made_names_the_variable(tmp_path, env, words):
    """These were NotADirectoryError tracebacks on every command, tiny models included."""
    blocker = _write(tmp_path / "in-the-way", "a file")
    env = {k: (v.format(file=blocker) if v is not None else None) for k, v in env.items()}
    before = snapshot(tmp_path)
    proc = workbench_env(["induction", "--model", "tiny-llama", "--n", "2"], tmp_path, **env)
    assert_one_error(proc, *(w.format(file=blocker) for w in words), before_load=False)
    assert snapshot(tmp_path) == before


def test_a_read_only_cache_folder_names_the_variable(tmp_path):
    if _root():
        pytest.skip("running as root: a read-only folder does not stop root from writing")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    proc = workbench_env(["induction", "--model", "tiny-llama", "--n", "2"], tmp_path, WORKBENCH_CACHE=str(cache))
    assert_one_error(proc, "permission denied", "WORKBENCH_CACHE", before_load=False)


@pytest.mark.parametrize("make,what", [
    (lambda tmp: _write(tmp / "tmpfile", "x"), "is a file, not a folder"),
    (lambda tmp: tmp / "no-such-tmp", "does not exist"),
])
def test_an_unusable_tmpdir_is_named(tmp_path, make, what):
    """Python would fall back to /tmp without a word, filling a disk the user meant to spare."""
    tmpdir = make(tmp_path)
    proc = workbench_env(["induction", "--model", "tiny-llama", "--n", "2"], tmp_path, TMPDIR=str(tmpdir))
    assert_one_error(proc, f"TMPDIR={tmpdir} {what}")


def test_standard_output_on_a_full_disk_is_one_line(tmp_path):
    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full device here")
    save_toy_run(tmp_path / "runs" / "toy")
    with open("/dev/full", "w") as full:
        proc = workbench_env(["runs"], tmp_path, stdout=full)
    assert_one_error(proc, "cannot write to standard output", "the disk is full")


def test_standard_output_into_a_closed_pipe_stops_quietly(tmp_path):
    """``workbench runs | head``: the reader has gone, which is no error to report (git and
    coreutils stay quiet too); no traceback, no "Exception ignored", the shell's SIGPIPE status."""
    save_toy_run(tmp_path / "runs" / "toy")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone (`workbench runs | head -0`)
    try:
        proc = workbench_env(["runs"], tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def _spawned_children(pid: int) -> list[int]:
    """The multiprocessing workers (spawned with --multiprocessing-fork) whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"multiprocessing" in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_ctrl_c_stops_icl_workers_at_once_and_leaves_no_process(tmp_path):
    """It took about 34 s (the running trainings finished first) and left a zombie child."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the worker processes")
    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs"), WORKBENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "icl", "--steps", "3000", "--n-seeds", "2",
                             "--workers", "2", "--no-baselines", "--device", "cpu"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while len(children := _spawned_children(proc.pid)) < 3 and time.time() < deadline:  # 2 workers + tracker
            time.sleep(0.2)
        assert len(children) == 3, children
        time.sleep(2)  # the workers are training now
        start = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        seconds = time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and lines_of(err)[-1] == "interrupted", err[-2000:]
    assert "Traceback" not in err
    assert seconds < 15, f"took {seconds:.1f} s to stop"
    time.sleep(0.5)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "a worker outlived the command"


@pytest.mark.parametrize("make", [
    lambda tmp: "/tmp/" + "x" * 300,  # one name past the file system's 255 bytes
    lambda tmp: "./" + "/".join(["y" * 200] * 30),  # a path past PATH_MAX
], ids=["long-name", "long-path"])
def test_an_over_long_model_path_is_one_line_before_loading(tmp_path, make):
    """It was an OSError (File name too long) traceback."""
    proc = workbench(["induction", "--model", make(tmp_path), "--n", "2"], tmp_path)
    line = assert_one_error(proc, "File name too long", "characters)")
    assert len(line) < 400


def test_a_long_model_path_still_gives_a_run_folder_name_that_fits():
    """A model folder deep in a long path named a run folder past 255 bytes: the save failed
    after the whole analysis."""
    from workbench.results import Result

    model = "/data/" + "/".join(["ä" * 100] * 4)
    name = Result(meta={"model": model}).default_run_name()
    assert len(name.encode()) <= 200 and "ä" in name
