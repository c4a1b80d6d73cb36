"""Options and output shared by every command: model/backend loading with a status
line, ``--json`` printing, saving a result into ``--out``, SIGTERM handled as Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer

JSON_OPT = typer.Option(False, "--json", help="print the summary as JSON on stdout")


_stopped_by: list[int] = [signal.SIGINT]  # the signal that interrupted this process


def stop_on_sigterm() -> None:
    """SIGTERM (``kill``, ``timeout``, a scheduler's time limit, ``docker stop``) stops a
    command the way Ctrl-C does: a save in progress removes its temporary folder, no half
    run is left, "interrupted" is printed. A process started with SIGTERM ignored keeps it so."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (an embedding program): leave its signals alone
        pass


def keep_interrupts() -> None:
    """Python drops a KeyboardInterrupt that lands while a finalizer (``__del__``) runs: it prints
    "Exception ignored in ..." and the run goes on as if Ctrl-C had never been pressed (seen with
    the tokenizer's regex objects). Such an interrupt is delivered again, as the same signal, so it
    lands in the run itself; any other ignored exception is reported as before."""
    previous = sys.unraisablehook

    def redeliver(unraisable: Any) -> None:
        if unraisable.exc_type is KeyboardInterrupt:
            # from another thread, a moment later: a signal sent from inside this hook would be
            # handled inside it too, and dropped again
            import threading

            resend = threading.Timer(0.05, os.kill, (os.getpid(), _stopped_by[0]))
            resend.daemon = True
            resend.start()
            return
        previous(unraisable)

    sys.unraisablehook = redeliver


def _interrupt(signum: int, frame: Any) -> None:
    _stopped_by[0] = signum
    raise KeyboardInterrupt


def interrupted_exit_code() -> int:
    """128 + the signal's number, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(_stopped_by[0])


def status(msg: str) -> None:
    """Progress chatter goes to stderr so ``--json`` stdout stays clean."""
    print(msg, file=sys.stderr, flush=True)


def load(model: str, backend: str = "hf", device: str = "cpu", dtype: str = "float32", compile: bool = False) -> Any:
    """The model, with progress lines; ``compile`` False leaves ``WORKBENCH_COMPILE`` in charge."""
    from ..models import load_model

    status(f"loading {model} ({backend}, {device}, {dtype}{', compiled' if compile else ''}) ...")
    m = load_model(model, backend=backend, device=device, dtype=dtype, compile=compile or None)
    status(f"loaded {model} in {m.load_seconds:.1f}s: {m.shape.n_layers} layers x {m.shape.n_heads} heads")
    return m


def finish(result: Any, out: Optional[Path], as_json: bool, extra: dict[str, Any] | None = None) -> Path:
    """Save the result (unless already saved), then print its summary (JSON or a short table)."""
    path = result.path if result.path is not None else result.save(out)
    summary = result.summary()
    summary.update(extra or {})
    summary["run"] = str(path)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            if isinstance(v, (list, dict)):
                v = json.dumps(v)[:200]
            print(f"{k:>24}: {v}")
    return path


def number_list(text: str, option: str, kind: type = float) -> tuple:
    """Parse a comma-separated option value ("250,500,1000") into numbers, or a one-line
    error naming the option."""
    from ..errors import InputError

    noun = "integers" if kind is int else "numbers"
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{option} must be comma-separated {noun} like 1,2,3 (got '{text}')") from None
    if not values:
        raise InputError(f"{option} is empty; give comma-separated {noun} like 1,2,3")
    return values
