"""``benchmarks/headlines.py --check`` on fabricated rows with known answers: a fresh value
inside the published interval holds, one outside does not, a figure without an interval
must print the same, renamed run-dependent tails still pair, a changed build is named with
both checksums; and the runner's --check writes nothing under docs/."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from workbench import headlines as hl


def fig(text, value, low=None, high=None, fmt=".2f", n=64):
    iv = None if low is None else {"value": value, "low": low, "high": high, "n": n, "method": "bootstrap",
                                    "level": 0.95, "split": "test"}
    return {"text": text, "value": value, "fmt": fmt, "interval": iv, "n": n, "split": "test"}


def row(figures, artifacts=None, seconds=100.0):
    out = {"key": "vhd", "label": "vision heads (VHD/VHR)", "command": "workbench vhd", "figures": figures,
           "seconds": seconds}
    return {**out, "artifacts": artifacts} if artifacts else out


PUBLISHED = row([fig("recall, before VHR", 0.61, 0.54, 0.68), fig("CHAIR_i, VHR", 0.24, 0.15, 0.32),
                 fig("test scenes", 64, fmt="d"),
                 fig("CHAIR_i, VHR minus random heads (paired over test scenes): interval includes 0 (about 900)", -0.03,
                     -0.06, 0.0)],
                [{"key": "vlm/x", "sha256": "a" * 64}])


def verdicts(check):
    return {c["text"]: c["verdict"] for c in check["figures"]}


def test_inside_the_published_interval_holds():
    fresh = row([fig("recall, before VHR", 0.55, 0.48, 0.62), fig("CHAIR_i, VHR", 0.32, 0.2, 0.4),
                 fig("test scenes", 64, fmt="d"),
                 fig("CHAIR_i, VHR minus random heads (paired over test scenes): interval includes 0 (about 700)", -0.01,
                     -0.05, 0.03)],
                [{"key": "vlm/x", "sha256": "a" * 64}], seconds=120.0)
    check = hl.check_row(PUBLISHED, fresh)
    assert verdicts(check) == {"recall, before VHR": "inside", "CHAIR_i, VHR": "inside", "test scenes": "same",
                               fresh["figures"][3]["text"]: "inside"}  # paired by its stem, the tail changed
    assert check["holds"] and check["artifacts"][0]["verdict"] == "same"
    text = hl.check_text(check)
    assert text.splitlines()[0].startswith("vhd: vision heads (VHD/VHR): holds (4/4") and "2.0 min here" in text


def test_outside_the_interval_or_a_changed_value_does_not_hold():
    fresh = row([fig("recall, before VHR", 0.50, 0.43, 0.57), fig("CHAIR_i, VHR", 0.24, 0.15, 0.32),
                 fig("test scenes", 128, fmt="d"), fig("recall, VHR", 0.5, 0.4, 0.6)],
                [{"key": "vlm/x", "sha256": "b" * 64}])
    check = hl.check_row(PUBLISHED, fresh)
    v = verdicts(check)
    assert v["recall, before VHR"] == "outside" and v["CHAIR_i, VHR"] == "inside"
    assert v["test scenes"] == "differs" and v["recall, VHR"] == "new"
    assert v[PUBLISHED["figures"][3]["text"]] == "missing"
    assert not check["holds"]
    art = check["artifacts"][0]
    assert art == {"key": "vlm/x", "fresh": "b" * 64, "published": "a" * 64, "verdict": "differs"}
    text = hl.check_text(check)
    assert "DOES NOT HOLD" in text and "b" * 16 in text and "a" * 16 in text
    assert "[outside] recall, before VHR: here 0.5, published 0.61 in [0.54, 0.68]" in text


def test_interval_ends_count_as_inside_and_an_unpublished_row_does_not_hold():
    fresh = row([fig("recall, before VHR", 0.68, 0.6, 0.7), fig("CHAIR_i, VHR", 0.15, 0.1, 0.2)])
    assert set(verdicts(hl.check_row(PUBLISHED, fresh)).values()) == {"inside", "missing"}
    assert not hl.check_row(None, fresh)["holds"]


def test_build_is_named_in_the_table_row():
    r = {**PUBLISHED, "summary": {"main": "CHAIR_i, VHR"}}
    assert hl.headline_text(r) == "CHAIR_i, VHR: **0.24** [0.15, 0.32] (n=64, test) (vlm build sha256 aaaaaaaaaaaa)"


def _runner():
    spec = importlib.util.spec_from_file_location("headlines_runner_check", hl.ROOT / "benchmarks" / "headlines.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_runner_check_compares_and_writes_nothing(tmp_path, monkeypatch, capsys):
    runner = _runner()
    doc = tmp_path / "headlines.json"
    doc.write_text(json.dumps({"rows": [PUBLISHED]}))
    monkeypatch.setattr(runner.hl, "HEADLINES_JSON", doc)
    before = doc.read_text()
    good = row([dict(f) for f in PUBLISHED["figures"]], PUBLISHED["artifacts"])
    todo = [("vhd", PUBLISHED["label"], lambda st, draw=True: {**good, **st}),
            ("other", "not asked", lambda st, draw=True: pytest.fail("--only leaves it out"))]
    report = tmp_path / "check.json"
    assert runner.check(todo, ["vhd"], report) == 0
    assert doc.read_text() == before and json.loads(report.read_text())["checks"][0]["holds"]
    bad = row([fig("recall, before VHR", 0.2, 0.1, 0.3)])
    assert runner.check([("vhd", PUBLISHED["label"], lambda st, draw=True: {**bad, **st})], [], None) == 1
    assert "DOES NOT HOLD" in capsys.readouterr().out


def test_publish_artifacts(tmp_path):
    runner = _runner()
    path = tmp_path / "artifacts.json"
    runner.publish_artifacts([{**PUBLISHED, "machine": "2-core CPU", "commit": "abc", "date": "2026-12-05"}], path)
    rec = json.loads(path.read_text())["artifacts"]["vlm/x"]
    assert rec["sha256"] == "a" * 64 and rec["machine"] == "2-core CPU" and rec["row"] == PUBLISHED["label"]


def test_bad_check_options_are_one_line(tmp_path):
    import subprocess

    for argv in (["--check", "--only", "nope"], ["--report", str(tmp_path / "x.json")], ["--check", "--readme"]):
        p = subprocess.run([sys.executable, str(hl.ROOT / "benchmarks" / "headlines.py"), *argv], capture_output=True,
                           text=True)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("headlines: "), argv
