"""Run every headline at its stated size and write ``docs/headlines.json`` and the README's table.

    python benchmarks/headlines.py                   # everything (make headlines)
    python benchmarks/headlines.py --only retrieval  # one analysis's rows (or a benchmark's key)
    python benchmarks/headlines.py --list            # what would run
    python benchmarks/headlines.py --readme          # regenerate the README table from the JSON only

Analysis rows come from the specs' ``headlines`` (each a ``workbench`` command, run exactly as a
user would type it, in a fresh process, saved to a temporary run folder, read back through
the spec's figure function). Benchmark rows come from ``BENCHMARKS`` below (each a script
with ``--json``). Every row records its command, seconds, commit and date. Rows not re-run
keep their earlier measurement, so one analysis can be refreshed alone.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import headlines as hl  # noqa: E402
from workbench.spec import figure  # noqa: E402


@dataclass(frozen=True)
class Benchmark:
    """A headline measured by a script of ``benchmarks/`` that prints one JSON document."""

    key: str
    label: str
    argv: tuple[str, ...]
    figures: Callable[[dict[str, Any]], list[dict[str, Any]]]
    why: str = ""


def _cache_figures(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [figure("cached bytes, all names over one layer's pattern (x)", d["memory_ratio"], n=d["n_prompts"], fmt=".0f"),
            figure("peak RSS above the model, all names over filtered (x)", d["peak_rss_ratio_over_model"],
                   n=d["n_prompts"], fmt=".2f")]


def _backend_figures(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [figure(f"{b}: max |logit difference| from pristine Hugging Face", v, n=d["n_tokens"], fmt=".1e")
            for b, v in d["max_abs_logit_diff"].items()]


def _patching_figures(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, label in (("head", "head sweep"), ("head_pos", "head x position sweep")):
        s = d["sweeps"].get(name)
        if s:
            out.append(figure(f"{label} ({s['n_patches']} patches), batched engine over the naive TransformerLens loop (x)",
                              s["speedup_vs_naive"], n=d["n_prompts"], fmt=".2f"))
            out.append(figure(f"{label}: max |difference| from the naive loop", s["max_abs_diff_vs_naive"], fmt=".1e"))
    return out


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("bench-backends", "backends (float32)", ("benchmarks/bench_backends.py", "--json"), _backend_figures),
    Benchmark("bench-cache", "caching (name-filtered)", ("benchmarks/bench_cache.py", "--json"), _cache_figures),
    Benchmark("bench-patching", "batched patching", ("benchmarks/bench_patching.py", "--n-prompts", "16", "--layer-step", "3",
                                                     "--pos-layer-step", "6", "--pos-heads", "3", "--json"),
              _patching_figures, why="16 prompts, every third layer: the full sweep takes hours on 2 cores"),
)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:
        pass
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


@contextmanager
def _locked():
    """One writer at a time: several analyses may be refreshed at once."""
    hl.HEADLINES_JSON.parent.mkdir(parents=True, exist_ok=True)
    with open(hl.HEADLINES_JSON.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: list[str]) -> tuple[float, str]:
    """Run a command with its progress on our stderr; (seconds, stdout). A failure stops here."""
    print("$ " + shlex.join(argv), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"headlines: `{shlex.join(argv)}` failed with exit {proc.returncode}; fix it and re-run")
    return seconds, proc.stdout


def measure_spec(spec: Any, headline: Any) -> dict[str, Any]:
    from workbench.results import load_result

    with tempfile.TemporaryDirectory(prefix="headlines-") as tmp:
        out = Path(tmp) / "run"
        seconds, _ = _run([sys.executable, "-m", "workbench", *headline.args, "--out", str(out)])
        result = load_result(out)
        figures = headline.figures(result)
    return {"key": spec.key, "label": headline.label, "command": "workbench " + shlex.join(headline.args),
            "why": headline.why, "figures": figures, "seconds": round(seconds, 1)}


def measure_benchmark(b: Benchmark) -> dict[str, Any]:
    seconds, stdout = _run([sys.executable, *b.argv])
    doc = json.loads(stdout[stdout.index("{"):])
    return {"key": b.key, "label": b.label, "command": "python " + shlex.join(b.argv), "why": b.why,
            "figures": b.figures(doc), "seconds": round(seconds, 1)}


def jobs() -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """(key, label, measure) for every headline, in README order: analyses, then benchmarks."""
    from workbench.spec import specs

    out = []
    for spec in specs().values():
        for h in spec.headlines:
            out.append((spec.key, h.label, lambda s=spec, h=h: measure_spec(s, h)))
    for b in BENCHMARKS:
        out.append((b.key, b.label, lambda b=b: measure_benchmark(b)))
    return out


def merge(doc: dict[str, Any], new_rows: list[dict[str, Any]], order: list[tuple[str, str]]) -> dict[str, Any]:
    """Replace the re-measured rows, keep the others, order as the registry lists them."""
    rows = {(r["key"], r["label"]): r for r in doc.get("rows", [])}
    rows.update({(r["key"], r["label"]): r for r in new_rows})
    known = [rows[k] for k in order if k in rows]
    return {"rows": known}


def save(new_rows: list[dict[str, Any]], order: list[tuple[str, str]]) -> None:
    """Merge rows into docs/headlines.json and regenerate the README table, one writer at a time."""
    with _locked():
        doc = merge(hl.load(), new_rows, order)
        tmp = hl.HEADLINES_JSON.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(hl.HEADLINES_JSON)
        hl.write_readme(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="a spec or benchmark key (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the headlines and exit")
    ap.add_argument("--readme", action="store_true", help="only regenerate the README table from docs/headlines.json")
    args = ap.parse_args()
    todo = jobs()
    order = [(k, label) for k, label, _ in todo]
    if args.list:
        for k, label, _ in todo:
            print(f"{k}\t{label}")
        return
    known_keys = {k for k, _, _ in todo}
    unknown = [k for k in args.only if k not in known_keys]
    if unknown:
        raise SystemExit(f"headlines: unknown key {', '.join(unknown)}; known: {', '.join(sorted(known_keys))}")
    new_rows = []
    if not args.readme:
        stamp = {"commit": _commit(), "machine": _machine()}
        for k, label, measure in todo:
            if args.only and k not in args.only:
                continue
            row = measure()
            row.update(stamp, date=_dt.date.today().isoformat())
            new_rows.append(row)
            print(hl.row_text(row), flush=True)
            save([row], order)  # each row as soon as it is measured: a long run stopped later keeps it
    save([], order)
    total = sum(r["seconds"] for r in new_rows)
    print(f"headlines: {len(new_rows)} rows measured in {total / 60:.1f} min; {hl.HEADLINES_JSON.relative_to(ROOT)} "
          f"and the README table written", file=sys.stderr)


if __name__ == "__main__":
    main()
