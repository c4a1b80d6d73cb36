"""How big the rooms are: project modules and lines, ``@property`` in analyses/, modules over
400 lines and functions over 60 (the counts in issue 24's before/after table).

    python benchmarks/rooms.py
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    files = [f for f in subprocess.check_output(["git", "ls-files", "workbench", "analyses", "app", "kernels"],
                                                cwd=ROOT, text=True).split() if f.endswith(".py")]
    lines, big, long, props = 0, [], [], 0
    for f in files:
        src = (ROOT / f).read_text()
        n = src.count("\n")
        lines += n
        if n > 400:
            big.append((n, f))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append((length, f"{f}:{node.name}"))
                if f.startswith("analyses") and any(isinstance(d, ast.Name) and d.id == "property"
                                                    for d in node.decorator_list):
                    props += 1
    print(f"modules {len(files)}, lines {lines:,}, @property in analyses/ {props}")
    print("modules over 400 lines:", sorted(big, reverse=True) or "none")
    print("functions over 60 lines:", sorted(long, reverse=True) or "none")


if __name__ == "__main__":
    main()
