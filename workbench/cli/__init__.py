"""The ``workbench`` command line (typer). One module per command group in this
package, each with ``register(app)``; errors a user can fix print as one line."""
from __future__ import annotations

import importlib
import sys

import typer

from ..errors import WorkbenchError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability of attention heads: analyses, reports and a dashboard.")

COMMAND_MODULES = ["core", "ablate", "circuit", "retrieval", "icl", "vhd", "lrp", "patching"]

for _name in COMMAND_MODULES:
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    """Entry point: run the app, turning a ``WorkbenchError`` into one line on stderr (exit 2)."""
    try:
        app(standalone_mode=False)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
