"""The install: the project's import names shadow no other distribution's, no two tracked
paths differ only in case, and the package list in pyproject.toml covers every folder.

Why: transformers 5.25 imports PyPI's ``kernels``; a top-level ``kernels`` package of the
workbench shadowed it and broke every model load (issue 23)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def installed_packages() -> list[str]:
    """The import packages setuptools installs from this checkout (as named after install)."""
    config = PYPROJECT["tool"]["setuptools"]
    if "packages" in config and isinstance(config["packages"], list):
        return list(config["packages"])
    find = config.get("packages", {}).get("find", {})
    return find_packages(where=str(ROOT / find.get("where", ["."])[0]), include=find.get("include", ["*"]))


def top_level_names() -> set[str]:
    return {name.split(".")[0] for name in installed_packages()}


def test_one_import_root():
    assert top_level_names() == {"workbench"}


def test_no_import_name_shadows_another_distribution():
    others = {name: dists for name, dists in metadata.packages_distributions().items()
              if any(d.lower() != "workbench" for d in dists)}
    clashes = {name: others[name] for name in top_level_names() if name in others}
    assert not clashes, f"import names the project installs that other distributions provide: {clashes}"


def test_checkout_root_holds_no_shadowing_package():
    """Run from the checkout's root, '' comes first on sys.path: no folder there may be a
    regular package under a name another installed distribution provides."""
    provided = {name for name, dists in metadata.packages_distributions().items()
                if any(d.lower() != "workbench" for d in dists)}
    folders = [p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()]
    clashes = [name for name in folders if name in provided]
    assert not clashes, f"checkout folders that shadow installed packages: {clashes}"


def test_import_kernels_from_checkout_root_is_hugging_faces():
    if "kernels" not in metadata.packages_distributions():
        pytest.skip("PyPI's kernels is not installed (transformers < 5.25)")
    out = subprocess.run([sys.executable, "-c", "import kernels, transformers.integrations.hub_kernels;"
                          "print(kernels.__file__)"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "site-packages" in Path(out.stdout.strip()).parts, f"import kernels got {out.stdout.strip()}"


def test_package_list_covers_every_folder():
    """An explicit package list must name every subpackage, or a wheel silently drops one."""
    mapping = PYPROJECT["tool"]["setuptools"].get("package-dir", {})
    listed = set(installed_packages())
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((package, *rel)) in listed, f"{init.parent} is not in pyproject's package list"
    for init in (ROOT / "kernels").glob("*/__init__.py"):
        assert f"workbench.kernels.{init.parent.name}" in mapping, f"{init.parent} is not mapped in package-dir"
    for init in (ROOT / "workbench").rglob("__init__.py"):
        assert ".".join(init.parent.relative_to(ROOT).parts) in listed, f"{init.parent} is not listed"


def test_no_tracked_paths_differ_only_in_case():
    paths = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    seen: dict[str, str] = {}
    clashes = []
    for path in paths:
        parts = Path(path).parts
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            other = seen.setdefault(prefix.lower(), prefix)
            if other != prefix:
                clashes.append((other, prefix))
    assert not clashes, f"paths that differ only in case (lost on macOS/Windows): {sorted(set(clashes))}"


def test_help_texts_are_shown_as_written():
    """rich markup must not eat the extra's name in `pip install "workbench[ray]"`."""
    from typer.testing import CliRunner

    from workbench.cli import app, register_analyses

    register_analyses()
    out = CliRunner().invoke(app, ["circuit", "--help"], env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    assert 'workbench[ray]' in out.output


def test_the_wheel_installs_one_import_root(tmp_path):
    """What a library user gets: the built wheel holds `workbench/` and nothing else at the top,
    with the analyses, the app and the kernels inside it."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # a copy: setuptools leaves build/ behind, and stale files there reach later wheels
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "workbench", "analyses", "app", "kernels"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("workbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"workbench"}
    for module in ("workbench/analyses/ablation/analysis.py", "workbench/app/Home.py",
                   "workbench/kernels/patching/dispatch.py"):
        assert module in names
