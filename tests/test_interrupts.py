"""Ctrl-C is never lost: Python ignores a KeyboardInterrupt raised inside a finalizer
(``__del__``), which is where a real Ctrl-C landed once in the full suite (a tokenizer regex
object's ``__del__``), and the run then finished as if nothing had been pressed. The command
line's ``keep_interrupts`` delivers it again."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import gc, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal gives it
    if sys.argv[1] == "keep":
        from workbench.cli.common import keep_interrupts
        keep_interrupts()

    class Finalized:
        def __del__(self):
            raise KeyboardInterrupt  # what a Ctrl-C arriving during this finalizer becomes

    try:
        Finalized()  # dropped at once: its __del__ runs here
        gc.collect()
        time.sleep(3)
        print("finished")
    except KeyboardInterrupt:
        print("interrupted")
""")


def _run(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def test_an_interrupt_inside_a_finalizer_reaches_the_run():
    assert _run("keep") == "interrupted"


def test_without_it_python_loses_the_interrupt():
    """The failure the fix is for, shown: the same script without ``keep_interrupts`` finishes."""
    assert _run("plain") == "finished"
