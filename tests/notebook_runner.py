"""Execute a notebook from notebooks/ on its small setting, with the venv's kernel."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ensure_kernel() -> None:
    """Make the "python3" kernel run this interpreter (the venv's)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        usable = Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()
    except NoSuchKernel:
        usable = False
    if not usable:
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)


def execute_notebook(name: str, monkeypatch, timeout: int = 600, cwd: Path = ROOT) -> list[dict]:
    """Run ``notebooks/<name>`` with WORKBENCH_SMALL=1; return every code cell output,
    after checking that none is an error."""
    import nbformat
    from nbclient import NotebookClient

    _ensure_kernel()
    monkeypatch.setenv("WORKBENCH_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name} raised: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    return outputs


def plotly_outputs(outputs: list[dict]) -> int:
    """How many outputs are plotly figures."""
    return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
