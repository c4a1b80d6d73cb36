"""The ``workbench`` command line (typer): the commands about the workbench itself
(``core``) plus one command per installed analysis, built from its spec. Errors a user
can fix print as one line and exit 2; usage errors print typer's usage line and exit 2;
Ctrl-C (or SIGTERM) prints "interrupted" and exits 130 (143)."""
from __future__ import annotations

import sys

import typer

from ..environment import ClosedOutput, check_tmpdir, guard_stdout
from ..errors import WorkbenchError
from . import core
from .analysis import register_analysis
from .common import interrupted_exit_code, keep_interrupts, stop_on_sigterm

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability of attention heads: analyses, reports and a dashboard.")
core.register(app)


def versions() -> list[str]:
    """What a bug report needs first: the package, torch and transformers versions, and the
    device ``--device auto`` would use (the CUDA device's name, else cpu)."""
    from importlib import metadata

    import torch

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    return [f"workbench {version('workbench')}", f"torch {torch.__version__}",
            f"transformers {version('transformers')}", f"device {device}"]


def _print_versions(value: bool) -> None:
    if value:
        print("\n".join(versions()))
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_versions,
                                       help="print the workbench, torch and transformers versions and the device, "
                                            "then exit")) -> None:
    """Mechanistic interpretability of attention heads: analyses, reports and a dashboard."""


_registered: set[str] = set()


def register_analyses() -> None:
    """Add one command per installed analysis (once per process)."""
    from ..spec import specs

    for key, spec in specs().items():
        if key not in _registered:
            register_analysis(app, spec)
            _registered.add(key)


def main() -> None:
    """Entry point: run the app; user-fixable errors (the environment's too: TMPDIR, a closed
    or full standard output) are one line on stderr."""
    stop_on_sigterm()
    keep_interrupts()
    try:
        guard_stdout()
        check_tmpdir()
        register_analyses()
        # not standalone, typer turns Ctrl-C into Exit(130) and returns the exit code
        code = app(standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        sys.stdout.flush()  # a full disk behind '>' shows here, while it can still be one line
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except ClosedOutput as exc:  # `workbench runs | head`: the reader has what it wanted
        sys.exit(exc.exit_code)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(interrupted_exit_code())
    except Exception as exc:  # click (or typer's vendored click) usage errors arrive here
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            if getattr(exc, "ctx", False) is None:  # e.g. a missing option value: click shows no usage line
                _usage_line()
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            print("interrupted", file=sys.stderr)
            sys.exit(interrupted_exit_code())
        raise


def _usage_line() -> None:
    """Typer's usage line for the command on the command line (or the app)."""
    prog = "workbench"
    names = {c.name or getattr(c.callback, "__name__", "").replace("_", "-") for c in app.registered_commands}
    command = next((a for a in sys.argv[1:] if a in names), None)
    usage = f"{prog} {command} [OPTIONS]" if command else f"{prog} [OPTIONS] COMMAND [ARGS]..."
    print(f"Usage: {usage}\nTry '{usage.split(' [')[0]} --help' for help.\n", file=sys.stderr)
