"""Run folders hold what the workbench wrote and nothing else (issue 29, "Nothing lost,
round two"): ``--out`` never replaces a user's folder nor deletes a file the workbench did
not write; ``~`` is expanded in path options and environment variables; run folders
follow the umask; SIGTERM stops a run like Ctrl-C; a killed save's hidden temporary
folders are cleaned when stale.

The CLI cases run ``workbench`` as a subprocess: the real ``ablation`` on tiny-llama where
the refusal must come before the model loads, a toy analysis (no model, a second or two)
where a run must finish or be stopped.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_bad_inputs import assert_one_error, lines_of, save_toy_run, snapshot, workbench

from workbench.errors import ResultError

TOY_SAVE_CLI = textwrap.dedent('''
    import sys, time
    from dataclasses import dataclass
    import torch
    import workbench.cli as cli
    from workbench.cli.analysis import register_analysis
    from workbench.results import Result
    from workbench.spec import AnalysisSpec, option

    @dataclass
    class ToySaveConfig:
        value: float = option(1.0, help="what the run records")
        pause: str = option("", help="run | save: say so on stderr there, then wait to be stopped")

    @dataclass
    class ToySaveResult(Result):
        analysis = "toysave"
        config_cls = ToySaveConfig

        def _write_into(self, folder, extra_files):
            super()._write_into(folder, extra_files)
            if self.config.pause == "save":
                print("saving", file=sys.stderr, flush=True)
                time.sleep(120)

    def run(target, config, progress=True):
        if config.pause == "run":
            print("running", file=sys.stderr, flush=True)
            time.sleep(120)
        return ToySaveResult(config=config, metrics={"value": config.value}, arrays={"grid": torch.ones(2, 2)})

    def finish(result, config, common):
        return {"table.csv": "a,b\\n1,2\\n"}

    register_analysis(cli.app, AnalysisSpec(key="toysave", title="toy", help="toy", config=ToySaveConfig,
                                            result=ToySaveResult, run=run, finish=finish, needs_model=False))
    sys.argv = ["workbench", *sys.argv[1:]]
    cli.main()
''')


def toy_env(cwd: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "WORKBENCH_RUNS": str(cwd / "runs"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def toy(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The toy analysis through the real CLI (``workbench toysave ARGS``)."""
    return subprocess.run([sys.executable, "-c", TOY_SAVE_CLI, "toysave", *args], cwd=cwd, env=toy_env(cwd, **env),
                          capture_output=True, text=True, timeout=300)


def toy_until(args: list[str], cwd: Path, line: str) -> subprocess.Popen:
    """Start the toy analysis and return once it printed ``line`` on stderr (it then waits)."""
    proc = subprocess.Popen([sys.executable, "-c", TOY_SAVE_CLI, "toysave", *args], cwd=cwd, env=toy_env(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for got in proc.stderr:
        seen.append(got)
        if got.strip() == line:
            return proc
    proc.kill()
    raise AssertionError("".join(seen))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def users_folder(folder: Path, result_json: str = '{"my": "own results"}') -> Path:
    """A folder of a user's own work, with file names a run folder could hold."""
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(result_json)
    (folder / "data.csv").write_text("a,b\n1,2\n")
    (folder / "notes.json").write_text('{"notes": "months of work"}')
    (folder / "plot.png").write_bytes(b"\x89PNG fake image")
    return folder


def legacy(run: Path) -> Path:
    """The run as a workbench saved it before manifests: no mark, no file list."""
    doc = json.loads((run / "result.json").read_text())
    del doc["written_by"], doc["files"]
    (run / "result.json").write_text(json.dumps(doc))
    return run


# ----- the two data-loss cases -----------------------------------------------------------
@pytest.mark.parametrize("result_json", [
    '{"my": "own results"}',
    # a result.json that even parses as a workbench result: data.csv, notes.json, plot.png are not a run's
    json.dumps({"format_version": 1, "analysis": "mine", "config": {}, "metrics": {"auc": 0.9}, "meta": {},
                "arrays": []}),
])
def test_a_users_folder_with_run_like_files_is_refused_and_kept(tmp_path, result_json):
    """It was accepted as a run (file names counted by extension) and all four files deleted, exit 0."""
    mine = users_folder(tmp_path / "mine", result_json)
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", str(mine)], tmp_path)
    assert_one_error(proc, f"--out {mine}", "name a new folder", "nothing was changed")
    assert "loading" not in proc.stderr  # refused before the model loads
    assert snapshot(tmp_path) == before


def test_a_users_file_inside_an_earlier_run_is_never_deleted(tmp_path):
    """A csv the user saved inside an earlier run folder was deleted when the run was replaced."""
    run = toy(["--out", "run"], tmp_path)
    assert run.returncode == 0, run.stderr
    (tmp_path / "run" / "my-analysis.csv").write_text("a,b\n3,4\n")
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", "run"], tmp_path)
    assert_one_error(proc, "--out run", "my-analysis.csv", "did not write", "move what you keep out of it")
    assert "loading" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_a_run_file_the_user_changed_is_not_replaced(tmp_path):
    assert toy(["--out", "run"], tmp_path).returncode == 0
    (tmp_path / "run" / "table.csv").write_text("a,b\n1,2\n5,6  <- my fix\n")
    before = snapshot(tmp_path)
    proc = toy(["--out", "run"], tmp_path)
    assert_one_error(proc, "table.csv changed after the run wrote it")
    assert snapshot(tmp_path) == before


def test_a_run_the_workbench_wrote_is_replaced_whole(tmp_path):
    """The good answer stays: a folder holding exactly its manifest's files is replaced atomically."""
    assert toy(["--out", "run", "--value", "1"], tmp_path).returncode == 0
    doc = json.loads((tmp_path / "run" / "result.json").read_text())
    assert doc["written_by"] == "workbench" and sorted(doc["files"]) == ["arrays.safetensors", "table.csv"]
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in doc["files"].values())
    (tmp_path / "run" / "table.csv").unlink()  # a listed file the user removed: nothing to lose
    proc = toy(["--out", "run", "--value", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["metrics"]["value"] == 2.0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["arrays.safetensors", "result.json", "table.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary or moved-aside folder left


# ----- runs saved before manifests ----------------------------------------------------
def test_a_run_saved_before_manifests_is_replaced(tmp_path):
    from workbench.results import Result, load_result

    run = legacy(save_toy_run(tmp_path / "run"))
    (run / "report.html").write_text("<html>an older report</html>")
    assert load_result(run).metrics["score"] == 1.0  # older runs keep loading
    Result(metrics={"score": 2.0}).save(run)
    assert load_result(run).metrics["score"] == 2.0 and not (run / "report.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("how,words", [
    ("user-file", "notes.json, which the workbench did not write"),
    ("arrays-changed", "arrays.safetensors changed"),
    ("not-a-result", "is not a workbench result"),
])
def test_a_run_saved_before_manifests_with_anything_else_is_refused(tmp_path, how, words):
    from workbench.results import Result

    run = legacy(save_toy_run(tmp_path / "run"))
    if how == "user-file":
        (run / "notes.json").write_text("{}")
    elif how == "arrays-changed":
        (run / "arrays.safetensors").write_bytes((run / "arrays.safetensors").read_bytes()[:-1] + b"!")
    else:
        (run / "result.json").write_text('{"format_version": 1, "analysis": 7}')
    before = snapshot(tmp_path)
    with pytest.raises(ResultError) as err:
        Result(metrics={"score": 2.0}).save(run)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("doc_change,words", [
    ({"written_by": "someone else"}, "written_by"),
    ({"files": {"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}}, "not a file of the run folder"),
    ({"files": {"arrays.safetensors": {"sha256": "xyz", "bytes": 1}}}, "not a sha256"),
    ({"files": []}, "files is a list"),
])
def test_a_bad_manifest_is_a_broken_run(tmp_path, doc_change, words):
    from workbench.results import Result, load_result

    run = save_toy_run(tmp_path / "run")
    doc = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**doc, **doc_change}))
    with pytest.raises(ResultError, match=words):
        load_result(run)
    before = snapshot(tmp_path)
    with pytest.raises(ResultError, match="not a workbench result"):
        Result().save(run)
    assert snapshot(tmp_path) == before


def test_a_file_that_appears_during_the_run_stops_the_replace(tmp_path, monkeypatch):
    """The check before the run and again at the rename: a file saved in between is kept,
    and so is the earlier run."""
    from workbench import results
    from workbench.results import Result, load_result

    run = save_toy_run(tmp_path / "run")
    monkeypatch.setattr(results, "check_run_target", lambda path: None)  # as if it changed after the early check
    (run / "late.csv").write_text("saved while the analysis ran")
    before = snapshot(tmp_path)
    with pytest.raises(ResultError, match="late.csv"):
        Result(metrics={"score": 2.0}).save(run)
    assert snapshot(tmp_path) == before and load_result(run).metrics["score"] == 1.0


def test_what_is_left_after_removing_a_runs_files_is_kept_in_sight(tmp_path, capsys):
    from workbench.run_folder_saves import _remove_files

    old = tmp_path / ".run.old-1-ab"
    old.mkdir()
    (old / "result.json").write_text("{}")
    (old / "mine.txt").write_text("keep")
    _remove_files(old, {"result.json"}, keep_as=tmp_path / "run.kept")
    assert (tmp_path / "run.kept" / "mine.txt").read_text() == "keep" and not old.exists()
    assert "run.kept" in capsys.readouterr().err


# ----- --out named before any work: ".", "", "..", "~" -----------------------------------
@pytest.mark.parametrize("out", [".", "", "..", "./"])
def test_out_naming_the_current_folder_is_refused_up_front(tmp_path, out):
    """In an empty folder ``--out .`` passed the early check and failed after the analysis ran."""
    before = snapshot(tmp_path)
    proc = workbench(["ablation", "--model", "tiny-llama", "--n", "2", "--out", out], tmp_path)
    assert_one_error(proc, "--out", "current", "name a new folder")
    assert "loading" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_quoted_tilde_in_out_and_runs_folder_is_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = toy(["--out", "~/x"], tmp_path, HOME=str(home))
    assert proc.returncode == 0, proc.stderr
    assert (home / "x" / "result.json").is_file()
    proc = toy([], tmp_path, HOME=str(home), WORKBENCH_RUNS="~/runs")
    assert proc.returncode == 0, proc.stderr
    assert len(list((home / "runs").glob("toysave-*/result.json"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no folder named "~"
    listed = subprocess.run([sys.executable, "-m", "workbench", "runs", "--json", "--root", "~/runs"], cwd=tmp_path,
                            env=toy_env(tmp_path, HOME=str(home)), capture_output=True, text=True, timeout=300)
    assert [r["analysis"] for r in json.loads(listed.stdout)] == ["toysave"]


def test_tilde_in_the_cache_and_runs_variables(tmp_path, monkeypatch):
    from workbench.environment import cache_dir
    from workbench.paths import runs_dir, user_path
    from workbench.results import Result, list_runs, load_result

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WORKBENCH_CACHE", "~/cache")
    monkeypatch.setenv("WORKBENCH_RUNS", "~/runs")
    monkeypatch.chdir(tmp_path)
    assert cache_dir("models") == tmp_path / "home" / "cache" / "models" and cache_dir("models").is_dir()
    assert runs_dir() == tmp_path / "home" / "runs" and user_path("~/a/b") == tmp_path / "home" / "a" / "b"
    path = Result(metrics={"x": 1}).save()
    assert path.parent == tmp_path / "home" / "runs"
    assert load_result("~/runs/" + path.name).metrics == {"x": 1} and len(list_runs("~/runs")) == 1
    assert not (tmp_path / "~").exists()


def test_tilde_in_a_haystack_file(tmp_path, monkeypatch):
    """--model, --image, --llava and --vlm expanded ``~`` already; --haystack did not."""
    from workbench.datasets.needles import read_haystack

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "hay.txt").write_text("A few sentences of hay. And some more.")
    assert read_haystack("~/hay.txt").startswith("A few sentences")


# ----- modes ------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                          (0o002, 0o775, 0o664)])
def test_run_folders_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    """They were 0700 whatever the umask (``mkdtemp``, then a rename)."""
    from workbench.results import Result

    old = os.umask(umask)
    try:
        path = Result(metrics={"x": 1}, arrays={"g": torch.ones(2)}).save(tmp_path / "run", extra_files={"t.csv": "a\n"})
        replaced = Result(metrics={"x": 2}).save(path)
    finally:
        os.umask(old)
    for folder in (path, replaced):
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    assert stat.S_IMODE((path / "result.json").stat().st_mode) == file_mode


# ----- interruptions ---------------------------------------------------------------------
@pytest.mark.parametrize("where", ["run", "save"])
def test_sigterm_stops_like_ctrl_c_and_leaves_nothing(tmp_path, where):
    """SIGTERM (kill, timeout, a scheduler) used to kill the process mid-save, leaving a
    hidden temporary folder; now it is Ctrl-C's path: "interrupted", exit 143, nothing left."""
    proc = toy_until(["--pause", where], tmp_path, "running" if where == "run" else "saving")
    if where == "save":
        assert [n for n in hidden(tmp_path / "runs") if ".tmp-" in n]  # the signal lands mid-save
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and lines_of(err)[-1] == "interrupted"
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_killed_saves_leftover_is_cleaned_by_the_next_save(tmp_path):
    """SIGKILL cannot be caught: the temporary folder stays, hidden; the next save beside it
    sees that its owner is gone and removes it."""
    proc = toy_until(["--pause", "save", "--out", "runs/killed"], tmp_path, "saving")
    proc.kill()
    proc.communicate(timeout=60)
    runs = tmp_path / "runs"
    assert [n for n in hidden(runs) if n.startswith(".killed.tmp-")] and not (runs / "killed").exists()
    assert toy(["--out", "runs/next"], tmp_path).returncode == 0
    assert hidden(runs) == [] and sorted(p.name for p in runs.iterdir()) == ["next"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_stale_leftovers_are_cleaned_and_nothing_else(tmp_path):
    from workbench.results import Result, load_result

    runs = tmp_path / "runs"
    older = legacy(save_toy_run(runs / "x"))  # an older workbench's temp folder: no pid, only run files
    os.rename(older, runs / ".old-run.tmp-ab12cd34")
    _age(runs / ".old-run.tmp-ab12cd34", 2 * 3600)
    fresh = save_toy_run(runs / "y")  # same, but minutes old: its save may still be running
    os.rename(fresh, runs / ".fresh.tmp-zz99yy88")
    moved = save_toy_run(runs / "z")  # killed between moving an earlier run aside and renaming the new one in
    os.rename(moved, runs / f".kept-run.old-{_dead_pid()}-0a1b2c3d")
    mine = runs / ".diary.tmp-old"  # a user's hidden folder that happens to match the pattern
    mine.mkdir()
    (mine / "diary.txt").write_text("dear diary")
    _age(mine, 30 * 24 * 3600)
    lookalike = runs / f".notes.old-{_dead_pid()}-ab"  # looks like a run moved aside, holds a user's file
    lookalike.mkdir()
    (lookalike / "todo.txt").write_text("call back")
    live = runs / f".live.tmp-{os.getpid()}-abcd"
    live.mkdir()
    (live / ".workbench-partial").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    Result(metrics={"x": 1}).save(runs / "new")
    names = sorted(p.name for p in runs.iterdir())
    assert names == sorted([".diary.tmp-old", ".fresh.tmp-zz99yy88", live.name, lookalike.name, "kept-run", "new"]), names
    assert load_result(runs / "kept-run").metrics["score"] == 1.0  # put back, not deleted
    assert (mine / "diary.txt").read_text() == "dear diary" and (lookalike / "todo.txt").read_text() == "call back"
