"""The first thing to run on a GPU: every analysis at a small size on CUDA and on the CPU,
with the same seed and the same weights, their numbers compared; then the patching
benchmark and the device-map check on the GPU.

    python benchmarks/gpu_check.py --model-dir DIR [--only ablation,icl] [--out OUT]

DIR is a model folder; when it holds only a configuration and a tokenizer (the embedded
GGUF does not travel to an offline GPU machine), random weights of that configuration are
made there with a fixed seed (``docs/gpu.md``). Each analysis runs the
Python API path the CLI runs (its spec's ``run`` on the model of ``--device``), at its
page's small-run settings. The table at the end: per analysis, CPU and CUDA seconds and the
largest relative difference over the result's arrays and numbers (float32: agreement
under 1e-3 counts as the same; argmax choices may still flip on near-ties, which shows
as a large difference in that one array, named).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

TOL = 1e-3


class Timeout(Exception):
    pass


def _alarm(_sig, _frame):
    raise Timeout()


def ensure_weights(folder: Path, seed: int = 0) -> None:
    """Random weights of the folder's configuration, made once, the same for every device."""
    if any(folder.glob("*.safetensors")):
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), torch_dtype=torch.float32)
    model.save_pretrained(folder)
    print(f"random weights (seed {seed}) written to {folder}", flush=True)


def scrub_paths(text: str) -> str:
    """A record names no machine's folders: site-packages and the checkout become placeholders."""
    text = re.sub(r"/[^\s\"']*?/site-packages/", "<site-packages>/", text)
    return text.replace(str(ROOT), "<checkout>")


def provenance() -> dict[str, str]:
    """The commit measured (with '+dirty' when the tree had changes) and the date."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return {"commit": commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
            "date": time.strftime("%Y-%m-%d")}


def write_report(report: dict[str, Any], out: Path) -> None:
    (out / "gpu_check.json").write_text(scrub_paths(json.dumps(report, indent=2, default=str)))


def where_it_broke(exc: BaseException) -> str:
    """The innermost frame inside the workbench, where a device bug is usually fixed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if any(part in f.filename for part in ("/workbench/", "/analyses/"))]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{Path(f.filename).name}:{f.lineno} {f.name}"


def numbers(result: Any) -> dict[str, torch.Tensor]:
    """Everything comparable in a result: its tensors and its float numbers (flattened), read from
    what ``save`` writes, so typed and untyped Results compare the same way."""
    doc, tensors = result.document()
    out = {f"arrays.{k}": torch.as_tensor(v).detach().float().cpu() for k, v in tensors.items()}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)) and math.isfinite(value):
            if not any(t in prefix.rsplit(".", 1)[-1] for t in ("seconds", "time", "_s")):  # timings differ by design
                out[prefix] = torch.tensor([float(value)])
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)

    walk("data", doc["data"])
    walk("metrics", doc["metrics"])
    return out


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str, int]:
    """(largest relative difference, its name, how many entries compared)."""
    worst, name, count = 0.0, "", 0
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.shape != y.shape:
            return math.inf, f"{k} shape {tuple(x.shape)} vs {tuple(y.shape)}", count
        finite = torch.isfinite(x) & torch.isfinite(y)
        if not torch.equal(torch.isfinite(x), torch.isfinite(y)):
            return math.inf, f"{k} non-finite in one run only", count
        if finite.sum() == 0:
            continue
        diff = (x[finite] - y[finite]).norm() / max(float(y[finite].norm()), 1e-12)
        count += 1
        if float(diff) > worst:
            worst, name = float(diff), k
    return worst, name, count


def run_one(spec: Any, device: str, model: str, models: dict[str, Any], timeout: int) -> dict[str, Any]:
    from workbench.cli.analysis import Common, load_common

    common = Common(model=model, device=device, seed=0)
    config = spec.config(**spec.page_defaults)
    signal.alarm(timeout)
    start = time.perf_counter()
    try:
        if spec.load_target is not None:
            target = spec.load_target(config, common)
        elif spec.wants_model(config):
            if device not in models:
                models[device] = load_common(common)
            target = models[device]
        else:
            target = None
        spec.check_target(config, target)
        torch.manual_seed(0)
        result = spec.run(target, config, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        return {"ok": True, "seconds": round(time.perf_counter() - start, 2), "numbers": numbers(result)}
    except Timeout:
        return {"ok": False, "seconds": timeout, "error": f"timed out after {timeout} s"}
    except Exception as exc:  # noqa: BLE001 - the check reports every failure and goes on
        return {"ok": False, "seconds": round(time.perf_counter() - start, 2),
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                "where": where_it_broke(exc)}
    finally:
        signal.alarm(0)


def run_script(argv: list[str], timeout: int) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": timeout, "error": f"timed out after {timeout} s"}
    out = {"ok": proc.returncode == 0, "seconds": round(time.perf_counter() - start, 1)}
    if proc.returncode == 0 and "{" in proc.stdout:
        try:
            out["json"] = json.loads(proc.stdout[proc.stdout.index("{"):])
        except json.JSONDecodeError:
            out["stdout_tail"] = proc.stdout[-2000:]
    else:
        out["error"] = (proc.stderr or proc.stdout)[-1500:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="a model folder (random weights made when it has none)")
    ap.add_argument("--model", default="", help="or a registry name (tiny-llama: a dry run of this script)")
    ap.add_argument("--devices", default="cpu,cuda", help="the two devices compared (cpu,cpu: a dry run without a GPU)")
    ap.add_argument("--only", default="", help="comma-separated analysis keys (default: all but atlas)")
    ap.add_argument("--timeout", type=int, default=90, help="seconds per analysis and device")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")))
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--scripts", default="bench_patching_fp32,device_map", help="which GPU scripts to run after the analyses")
    args = ap.parse_args()
    devices = args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run it on a GPU machine (or --devices cpu,cpu for a dry run)")
    if not args.model_dir and not args.model:
        raise SystemExit("gpu_check: give --model-dir DIR or --model NAME")
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir.resolve() if args.model_dir else None
    if model_dir is not None:
        ensure_weights(model_dir)
    model = str(model_dir) if model_dir is not None else args.model
    signal.signal(signal.SIGALRM, _alarm)
    from workbench.spec import specs

    keys = [k for k in (args.only.split(",") if args.only else specs()) if k and k != "atlas"]
    report: dict[str, Any] = {**provenance(), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                              "torch": torch.__version__, "model": Path(model).name if model_dir else model,
                              "devices": devices, "analyses": {}}
    models: dict[str, Any] = {}
    for key in keys:
        spec = specs()[key]
        row: dict[str, Any] = {}
        runs = [run_one(spec, dev, model, models, args.timeout) for dev in devices]
        for side, r in zip("ab", runs):
            row[f"{side}_s"] = r["seconds"]
            if not r["ok"]:
                row[f"{side}_error"] = r["error"] + (f" at {r['where']}" if r.get("where") else "")
        if runs[0]["ok"] and runs[1]["ok"]:
            worst, name, count = compare(runs[1]["numbers"], runs[0]["numbers"])
            row.update(max_rel_diff=worst, worst=name, compared=count, agrees=worst < TOL)
        report["analyses"][key] = row
        print(json.dumps({key: row}), flush=True)
        write_report(report, args.out)
    if not args.no_bench and "cuda" in devices:
        for name, argv, t in (
                ("bench_patching_fp32", ["benchmarks/bench_patching.py", "--model", model, "--device", "cuda", "--n-prompts", "64",
                                         "--pos-layer-step", "6", "--rounds", "2", "--json"], 150),
                ("device_map", ["benchmarks/device_map_check.py", model], 90)):
            if name not in args.scripts.split(","):
                continue
            if not (ROOT / argv[0]).exists():
                report[name] = {"ok": False, "error": f"{argv[0]} is not in this checkout"}
                continue
            report[name] = run_script(argv, t)
            print(json.dumps({name: report[name]})[:3000], flush=True)
            write_report(report, args.out)
    print(f"\n{'analysis':<12}{devices[0] + ' s':>8}{devices[1] + ' s':>8}  result")
    for key, row in report["analyses"].items():
        if "agrees" in row:
            verdict = (f"agree (max rel diff {row['max_rel_diff']:.1e} over {row['compared']})" if row["agrees"]
                       else f"DIFFER: {row['max_rel_diff']:.2e} in {row['worst']}")
        else:
            verdict = "FAIL " + "; ".join(f"{d}: {row[f'{s}_error']}" for s, d in zip("ab", devices) if f"{s}_error" in row)
        print(f"{key:<12}{row['a_s']:>8}{row['b_s']:>8}  {verdict}")


if __name__ == "__main__":
    main()
