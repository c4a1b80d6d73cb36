"""Run every headline at its stated size and write ``docs/headlines.json``, the README's table,
``docs/headlines.md`` and a picture of each analysis in ``docs/figures/``.

    python benchmarks/headlines.py                   # everything (make headlines)
    python benchmarks/headlines.py --only retrieval  # one analysis's rows and picture (make headlines ONLY=retrieval)
    python benchmarks/headlines.py --list            # what would run
    python benchmarks/headlines.py --row '4,096'     # only the rows whose label contains this text
    python benchmarks/headlines.py --readme          # regenerate the README table and docs/headlines.md only
    python benchmarks/headlines.py --check --only vhd  # re-measure, compare with the published intervals, write nothing

Analysis rows come from the specs' ``headlines`` (each a ``workbench`` command, run exactly as a
user would type it, in a fresh process, saved to a temporary run folder, read back through
the spec's figure function, which also draws the row's picture). Benchmark rows come from
``BENCHMARKS`` below (each a script with ``--json``). Every row records its command, seconds,
commit and date. Rows not re-run keep their earlier measurement, so one analysis can be
refreshed alone. ``SUMMARIES`` says, per row, which figure is the README's headline and which
is its control; it is stamped into the JSON, so the README reads the JSON alone. A row that
measured a trained artifact (the VLM projector) carries its sha256 (``artifacts``), and saving
the row publishes that checksum in ``docs/artifacts.json``.

``--check`` re-runs the rows (each at its stated size, on this machine), writes nothing under
docs/, and reports per figure whether the fresh value lies inside the published interval
(``workbench.headlines.check_row``); exit 1 when a figure does not hold, ``--report FILE``
saves the verdicts as JSON.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
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
    """bench_patching.py's report: per sweep, the float32 engine against both naive loops, each
    low-precision variant against the float32 engine (speed, top 10, deviation), and GFLOP/s."""
    out, n = [], d["n_prompts"]
    f32 = d["dtypes"].get("float32", {})
    for name, label in (("head", "head sweep"), ("head_pos", "head x position sweep")):
        row = f32.get(name)
        if not row:
            continue
        p = row["n_patches"]
        out.append(figure(f"{label} ({p} patches), float32: batched engine over the naive Hugging Face hook loop (x)",
                          row["speedup_vs_naive_hf"], n=n, fmt=".1f"))
        out.append(figure(f"{label}, float32: batched engine over the naive TransformerLens bridge loop (x)",
                          row["speedup_vs_naive_tl"], n=n, fmt=".1f"))
        out.append(figure(f"{label}, float32: max |difference| from the naive loop", row["max_abs_diff_vs_naive_hf"],
                          fmt=".1e"))
        peak = d["peak_gflop_per_s"]["float32"]
        out.append(figure(f"{label}, float32 engine: achieved GFLOP/s (matmul peak measured {peak:.0f})",
                          row["gflop_per_s"]["batched"], n=n, fmt=".1f"))
        for key, cmp_ in d.get("vs_float32", {}).items():
            sweep, dtype = key.split("/")
            if sweep != name:
                continue
            same = "identical" if cmp_["top10_identical"] else ("the same set, reordered" if cmp_["top10_same_set"]
                                                                  else "NOT the same")
            out.append(figure(f"{label}, {dtype} engine over the float32 engine (x); top 10 {same}, largest effect "
                              f"deviation {cmp_['max_abs_effect_deviation']:.3f} of {cmp_['largest_effect_float32']:.2f}",
                              cmp_["engine_speedup_vs_float32_engine"], n=n, fmt=".2f"))
    return out


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("bench-backends", "backends (float32)", ("benchmarks/bench_backends.py", "--json"), _backend_figures),
    Benchmark("bench-cache", "caching (name-filtered)", ("benchmarks/bench_cache.py", "--json"), _cache_figures),
    Benchmark("bench-patching", "batched patching", ("benchmarks/bench_patching.py", "--n-prompts", "16", "--layer-step", "3",
                                                     "--pos-layer-step", "3", "--dtype", "float32,bfloat16", "--compile",
                                                     "--naive-max", "24", "--rounds", "3", "--json"),
              _patching_figures, why="16 prompts, every third layer, the naive loops timed on 24 evenly spaced patches "
                                     "and scaled: the full sweep takes hours on 2 cores"),
)


@dataclass(frozen=True)
class Summary:
    """How a row reads in the README's one line. ``main``, ``control`` and ``diff`` are the start
    of a figure's text in the row (the headline, the control, and a paired difference headline
    minus control that decides the verdict when present); ``reference`` is a fixed control value
    with its name (which states the value); ``better`` is +1 when more than the control is the
    effect, -1 when less is. ``picture`` is part of the title of the figure drawn into
    docs/figures (default: the first). ``also``: starts of figure texts shown after the
    headline in its cell (a circuit's size and MIB's scores beside its faithfulness)."""

    name: str
    shows: str
    main: str = ""
    control: str = ""
    control_name: str = ""
    diff: str = ""
    reference: tuple[float, str] | None = None
    better: int = 1
    picture: str = ""
    also: tuple[str, ...] = ()


SUMMARIES: dict[str, Summary] = {  # by row label
    "head ablation (IOI)": Summary(
        "head ablation", "the heads the IOI answer needs: ranked on half the prompts, measured on the other half",
        main="logit difference change when ablated, head ranked #1", better=-1, picture="Change in logit difference"),
    "circuits: IOI faithfulness against edges kept (EAP, EAP-IG)": Summary(
        "circuit discovery", "how much of the model's IOI behaviour an EAP-IG circuit keeps on test prompts",
        main="ioi eap-ig circuit: faithfulness", reference=(0.0, "all edges ablated, 0 by definition (the full model is 1)"),
        picture="faithfulness against circuit size",
        also=("ioi eap-ig circuit: edges", "ioi MIB CMD (eap-ig)", "ioi MIB CPR (eap-ig)", "ioi MIB node CMD (exact)")),
    "circuit reuse (Merullo et al.): Colored Objects vs chance, overlap, intervention": Summary(
        "circuit reuse", "whether adjusting IOI-circuit heads helps Colored Objects",
        main="Colored Objects accuracy after adjusting L", control="Colored Objects accuracy after adjusting random",
        control_name="random mid-layer heads", diff="Colored Objects accuracy after - random heads"),
    "in-context regression (He et al.): seed table and predictors": Summary(
        "in-context regression", "multi-head attention trained on in-context linear regression",
        main="H=4 seed 0: test MSE", diff="same model: test MSE minus single-head attention",
        control_name="single-head attention", better=-1),
    "LRP (AttnLRP, lxt rules): deletion test and conservation": Summary(
        "LRP (transformer)", "AttnLRP token relevance, by deleting the most relevant tokens first",
        main="ioi: AOPC AttnLRP", diff="ioi: AOPC AttnLRP minus random order", control_name="random deletion order"),
    "LRP on the CNN (zennit, EfficientNet-Lite0)": Summary(
        "LRP (CNN)", "LRP maps of EfficientNet-Lite0 on photographs, by the same deletion test",
        main="AOPC LRP", diff="AOPC LRP minus random order", control_name="random deletion order"),
    "vision heads (VHD/VHR)": Summary(
        "vision heads", "reinforcing vision-aware heads (VHR) against hallucinated objects in captions",
        main="CHAIR_i, VHR", control="CHAIR_i, 5 random head draws", control_name="5 random head draws",
        diff="CHAIR_i, VHR minus random heads", better=-1),
    "induction heads": Summary(
        "induction heads", "heads that attend to the token after a repeated token's first occurrence",
        main="induction score, head ranked #1", control="uniform-attention baseline", control_name="uniform attention"),
    "retrieval heads (Wu et al.): held-out masking and KV compression (RazorAttention-style)": Summary(
        "retrieval heads", "masking the heads that copy the needle breaks needle-in-a-haystack recall",
        main="top-5 retrieval heads masked", control="5 random heads masked", control_name="5 random heads masked",
        better=-1, picture="Needle accuracy with heads masked"),
    "retrieval heads at 4,096 tokens: held-out masking and KV compression": Summary(
        "retrieval heads, 4,096 tokens", "the same masking test at 4,096 tokens of haystack (n=16 held-out tests)",
        main="top-5 retrieval heads masked", control="5 random heads masked", control_name="5 random heads masked",
        better=-1, picture="Needle accuracy with heads masked"),
    "attention sinks (ACT)": Summary(
        "attention sinks", "scaling down attention sinks beyond the first token (ACT) on multiple choice",
        main="category: held-out accuracy with ACT", control="category (chance 0.25): held-out accuracy, base",
        control_name="the base model (no ACT)", diff="category: ACT - base"),
    "QK attribution: the K-composition mechanism of induction": Summary(
        "QK attribution", "why an induction head attends where it does: its keys are written by a previous-token head",
        main="share of held-out prompts where a top induction head's top key-side source",
        control="the same share for random heads", control_name="random heads", diff="induction minus random",
        picture="Key-side sources"),
    "head atlas": Summary(
        "head atlas", "every head seen by every head-level analysis at once: rank correlations, role clusters",
        main="Spearman"),
}


def _match(row: dict[str, Any], start: str) -> str | None:
    """The text of the row's figure that is ``start`` or begins with it (None for "")."""
    if not start:
        return None
    texts = [f["text"] for f in row["figures"]]
    found = next((t for t in texts if t == start), None) or next((t for t in texts if t.startswith(start)), None)
    if found is None:
        raise SystemExit(f"headlines: {row['label']}: no figure starts with {start!r}; fix SUMMARIES")
    return found


def summarise(row: dict[str, Any]) -> dict[str, Any] | None:
    """The row's README reading, as figure texts: its Summary, or the first figure with an interval."""
    s = SUMMARIES.get(row["label"])
    if s is None:
        if not row["command"].startswith("workbench "):
            return None
        first = next((f for f in row["figures"] if f.get("interval")), row["figures"][0])
        return {"name": row["label"], "shows": "", "main": first["text"], "better": 1}
    out = {"name": s.name, "shows": s.shows, "main": _match(row, s.main) or row["figures"][0]["text"],
           "control": _match(row, s.control), "diff": _match(row, s.diff), "better": s.better}
    if s.control_name:
        out["control_name"] = s.control_name
    if s.also:
        texts = [f["text"] for f in row["figures"]]
        found = (next((t for t in texts if t.startswith(a)), None) for a in s.also)
        out["also"] = [t for t in found if t is not None]  # a figure an older run lacks is left out
    if s.reference is not None:
        out["reference"] = {"value": s.reference[0], "text": s.reference[1]}
    return {k: v for k, v in out.items() if v is not None}


def picture_file(key: str, index: int) -> Path:
    """docs/figures/<key>.png for a spec's first headline, <key>-<n>.png for the others."""
    return hl.FIGURES / (f"{key}.png" if index == 0 else f"{key}-{index + 1}.png")


def main_figure(result: Any, spec: Any, title_part: str) -> Any:
    """The figure of the spec's sections whose title holds ``title_part`` (else the first); None if none."""
    figures = [f for sec in spec.sections(result) for f in sec.figures]
    wanted = [f for f in figures if title_part.lower() in _title(f).lower()]
    if title_part and not wanted:  # the row is measured by now: draw the first figure, say so
        print(f"headlines: {spec.key}: no figure titled '{title_part}'; drawing the first; fix SUMMARIES",
              file=sys.stderr)
    return (wanted or figures or [None])[0]


def _title(fig: Any) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fig.layout.title.text or "")).strip()


def draw_picture(spec: Any, headline: Any, index: int, result: Any, stamp: dict[str, Any]) -> dict[str, Any] | None:
    """Draw the row's main figure into docs/figures and return its provenance (None: no figure)."""
    from workbench.pictures import export_png, footer

    summary = SUMMARIES.get(headline.label)
    fig = main_figure(result, spec, summary.picture if summary else "")
    if fig is None:
        return None
    path = picture_file(spec.key, index)
    prov = {"file": str(path.relative_to(ROOT)), "figure": _title(fig) or headline.label,
            "command": "workbench " + shlex.join(headline.args), "model": result.meta.get("model"),
            "run": result.meta.get("created"), **stamp}
    prov["caption"] = footer(prov)
    export_png(fig, path, prov)
    return prov


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


KEEP_RUNS: Path | None = None  # --keep-runs: where each measured analysis's run folder is copied


def measure_spec(spec: Any, headline: Any, index: int, stamp: dict[str, Any], draw: bool = True) -> dict[str, Any]:
    """Run the headline's command into a temporary run folder; its figures, the trained
    artifacts it used and (``draw``) its picture."""
    from workbench.results import load_result

    with tempfile.TemporaryDirectory(prefix="headlines-") as tmp:
        out = Path(tmp) / "run"
        seconds, _ = _run([sys.executable, "-m", "workbench", *headline.args, "--out", str(out)])
        if KEEP_RUNS is not None:  # the run itself, for a closer look than its figures
            shutil.copytree(out, KEEP_RUNS / picture_file(spec.key, index).stem, dirs_exist_ok=True)
        result = load_result(out)
        figures = headline.figures(result)
        picture = draw_picture(spec, headline, index, result, stamp) if draw else None
    row = {"key": spec.key, "label": headline.label, "command": "workbench " + shlex.join(headline.args),
           "why": headline.why, "figures": figures, "seconds": round(seconds, 1), **stamp}
    arts = [{"key": a["key"], "sha256": a["sha256"]} for a in result.meta.get("artifacts") or []]
    if arts:
        row["artifacts"] = arts
    return {**row, "picture": picture} if picture else row


def measure_benchmark(b: Benchmark, stamp: dict[str, Any], draw: bool = True) -> dict[str, Any]:
    seconds, stdout = _run([sys.executable, *b.argv])
    doc = json.loads(stdout[stdout.index("{"):])
    return {"key": b.key, "label": b.label, "command": "python " + shlex.join(b.argv), "why": b.why,
            "figures": b.figures(doc), "seconds": round(seconds, 1), "report": doc, **stamp}


def jobs() -> list[tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]]]:
    """(key, label, measure(stamp)) for every headline, in README order: analyses, then benchmarks."""
    from workbench.spec import specs

    out = []
    for spec in specs().values():
        for i, h in enumerate(spec.headlines):
            out.append((spec.key, h.label, lambda st, draw=True, s=spec, h=h, i=i: measure_spec(s, h, i, st, draw)))
    for b in BENCHMARKS:
        out.append((b.key, b.label, lambda st, draw=True, b=b: measure_benchmark(b, st)))
    return out


def merge(doc: dict[str, Any], new_rows: list[dict[str, Any]], order: list[tuple[str, str]]) -> dict[str, Any]:
    """Replace the re-measured rows, keep the others, order as the registry lists them."""
    rows = {(r["key"], r["label"]): r for r in doc.get("rows", [])}
    rows.update({(r["key"], r["label"]): r for r in new_rows})
    known = [rows[k] for k in order if k in rows]
    return {"rows": known}


def stamp_summaries(doc: dict[str, Any]) -> dict[str, Any]:
    """Every row with its current ``summary`` (which figures the README line shows)."""
    rows = []
    for row in doc["rows"]:
        row = {k: v for k, v in row.items() if k != "summary"}
        summary = summarise(row)
        rows.append({**row, "summary": summary} if summary else row)
    return {**doc, "rows": rows}


def save(new_rows: list[dict[str, Any]], order: list[tuple[str, str]]) -> None:
    """Merge rows into docs/headlines.json, regenerate the README table and docs/headlines.md,
    one writer at a time."""
    with _locked():
        doc = stamp_summaries(merge(hl.load(), new_rows, order))
        tmp = hl.HEADLINES_JSON.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(hl.HEADLINES_JSON)
        hl.write_readme(doc)
        hl.write_details(doc)
        publish_artifacts(new_rows)


def publish_artifacts(rows: list[dict[str, Any]], path: Path | None = None) -> None:
    """The checksums of the trained artifacts the saved rows measured, into docs/artifacts.json
    (what ``workbench.artifacts`` compares a local build with)."""
    from workbench import artifacts

    path = path or artifacts.PUBLISHED
    doc = json.loads(path.read_text()) if path.is_file() else {"artifacts": {}}
    changed = False
    for row in rows:
        for a in row.get("artifacts") or []:
            doc["artifacts"][a["key"]] = {"sha256": a["sha256"], "machine": row.get("machine"), "commit": row.get("commit"),
                                          "date": row.get("date"), "row": row["label"]}
            changed = True
    if changed:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def check(todo: list, only: list[str], report: Path | None) -> int:
    """Re-measure the rows (``only``: those keys) and compare each figure with the published
    interval; nothing under docs/ is written. 0 when every row holds, else 1."""
    published = {(r["key"], r["label"]): r for r in hl.load(hl.HEADLINES_JSON).get("rows", [])}
    stamp = {"commit": _commit(), "machine": _machine(), "date": _dt.date.today().isoformat()}
    checks = []
    for k, label, measure in todo:
        if only and k not in only:
            continue
        fresh = measure(stamp, draw=False)
        c = hl.check_row(published.get((k, label)), fresh)
        c.update(machine=stamp["machine"], commit=stamp["commit"], date=stamp["date"])
        checks.append(c)
        print(hl.check_text(c), flush=True)
        if report is not None:  # after every row: a long check stopped later keeps what it measured
            report.write_text(json.dumps({"checks": checks}, indent=2) + "\n")
    held = sum(c["holds"] for c in checks)
    print(f"headlines --check: {held} of {len(checks)} rows hold "
          f"({sum(c['seconds'] for c in checks) / 60:.1f} min)", file=sys.stderr)
    return 0 if held == len(checks) else 1


def _bad(message: str) -> None:
    """Bad input: one line, exit 2."""
    print(f"headlines: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="a spec or benchmark key (repeatable)")
    ap.add_argument("--row", action="append", default=[],
                    help="only the rows whose label contains this text (repeatable), e.g. --row '4,096 tokens'")
    ap.add_argument("--list", action="store_true", help="list the headlines and exit")
    ap.add_argument("--readme", action="store_true",
                    help="only regenerate the README table and docs/headlines.md from docs/headlines.json")
    ap.add_argument("--check", action="store_true",
                    help="re-measure and report per figure whether it lies inside the published interval; writes nothing")
    ap.add_argument("--report", type=Path, help="with --check: also write the verdicts to this JSON file")
    ap.add_argument("--keep-runs", type=Path, help="copy each analysis's run folder here (DIR/<key>), to open it later")
    args = ap.parse_args()
    if args.report is not None and not args.check:
        _bad("--report goes with --check (python benchmarks/headlines.py --check --report FILE)")
    if args.check and args.readme:
        _bad("--check and --readme do different things; give one")
    global KEEP_RUNS
    KEEP_RUNS = args.keep_runs
    todo = jobs()
    order = [(k, label) for k, label, _ in todo]
    if args.list:
        for k, label, _ in todo:
            print(f"{k}\t{label}")
        return
    known_keys = {k for k, _, _ in todo}
    unknown = [k for k in args.only if k not in known_keys]
    if unknown:
        _bad(f"unknown key {', '.join(unknown)}; known: {', '.join(sorted(known_keys))}")
    if args.row:
        todo = [t for t in todo if any(r in t[1] for r in args.row)]
        if not todo:
            _bad(f"no row's label contains {' or '.join(map(repr, args.row))}; see --list")
    if args.check:
        raise SystemExit(check(todo, args.only, args.report))
    new_rows = []
    if not args.readme:
        stamp = {"commit": _commit(), "machine": _machine(), "date": _dt.date.today().isoformat()}
        for k, _label, measure in todo:
            if args.only and k not in args.only:
                continue
            row = measure(stamp)
            new_rows.append(row)
            print("\n".join(hl.figure_text(f) for f in row["figures"]), flush=True)
            save([row], order)  # each row as soon as it is measured: a long run stopped later keeps it
    save([], order)
    total = sum(r["seconds"] for r in new_rows)
    print(f"headlines: {len(new_rows)} rows measured in {total / 60:.1f} min; {hl.HEADLINES_JSON.relative_to(ROOT)}, "
          f"the README table and {hl.DETAILS.relative_to(ROOT)} written", file=sys.stderr)


if __name__ == "__main__":
    main()
