"""Where a sweep runs: set once by the CLI (``--ray``, ``--workers``) or a caller
(``with parallel.use(ray="auto", workers=2): spec.run(...)``), read by the analyses whose
``run`` is marked with ``supports_ray``."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class Parallel:
    """``ray``: None (one process), "auto" (a local cluster for the run) or a cluster address."""

    ray: str | None = None
    workers: int = 1


_CURRENT: ContextVar[Parallel] = ContextVar("workbench_parallel", default=Parallel())  # noqa: B039 (frozen)


def current() -> Parallel:
    return _CURRENT.get()


@contextmanager
def use(ray: str | None = None, workers: int = 1) -> Iterator[Parallel]:
    token = _CURRENT.set(Parallel(ray=ray or None, workers=workers))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def supports_ray(run: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an analysis's ``run`` as one that spreads its sweep over Ray when ``--ray`` is given."""
    run.supports_ray = True  # type: ignore[attr-defined]
    return run


def runs_on_ray(run: Callable[..., Any]) -> bool:
    return bool(getattr(run, "supports_ray", False))
