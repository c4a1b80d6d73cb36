"""Errors a user can act on. Each message names the problem and the fix in one line;
the CLI prints it without a traceback."""
from __future__ import annotations


class WorkbenchError(Exception):
    """Base of all errors that carry a one-line, actionable message."""


class ModelNotAvailable(WorkbenchError):
    """A model name is unknown, or its weights cannot be reached from this machine."""


class HookNameError(WorkbenchError, KeyError):
    """A hook name is not one of the canonical names of this model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(WorkbenchError, ValueError):
    """Bad user input: prompts, configs, files."""


class ResultError(WorkbenchError):
    """A run folder is missing, corrupt or cannot be written."""


class EnvironmentProblem(WorkbenchError):
    """The machine stops the workbench, not the input: HOME, the cache folder, TMPDIR, a
    full disk or a closed standard output. The message names the variable or folder to fix."""


def one_line(exc: BaseException) -> str:
    """An exception from deep inside a library as one short line: its type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
