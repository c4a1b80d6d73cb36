"""The Ray side of ``map_units`` (``workbench.parallel.pool``): the cluster a sweep connects to
(or starts), the actor that builds a sweep's work function once and runs its units, and the
actors kept between sweeps on one cluster.

Ray is optional (``pip install "workbench[ray]"``); asking for it without it installed is one
line naming that command."""
from __future__ import annotations

import os
from typing import Any, Callable

from ..errors import InputError

INSTALL_RAY = 'pip install "workbench[ray]"'


def ray_module() -> Any:
    """``ray``, or one line naming the install command."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed; run: {INSTALL_RAY}") from None
    return ray


class Cluster:
    """Connect to (or start) a Ray cluster for one sweep; shut down only what was started here."""

    def __init__(self, address: str, workers: int) -> None:
        self.ray = ray_module()
        self.started = False
        if self.ray.is_initialized():
            return
        import logging

        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR, "configure_logging": True}
        if address in ("auto", "local"):
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            self.ray.init(num_cpus=workers, **kwargs)
        else:
            try:
                self.ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"--ray {address}: cannot connect to a Ray cluster there ({type(exc).__name__}); "
                                 "start one with `ray start --head` or use --ray auto") from None
        self.started = True

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


class UnitWorker:
    """The actor: ``setup`` builds a sweep's work function (once per sweep; a model it loads is
    kept by the process, ``workbench.parallel.patching.cached_model``), then ``run`` runs units.
    Actors outlive one sweep on a cluster this process joined, so a second sweep on the same
    model loads nothing."""

    def __init__(self, threads: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.fn: Callable[[Any], Any] | None = None
        self.error: BaseException | None = None

    def setup(self, fn_factory: Callable[[], Callable[[Any], Any]]) -> None:
        self.fn, self.error = None, None
        try:
            self.fn = fn_factory()
        except BaseException as exc:  # noqa: BLE001 - raised again by run(), in the driver
            self.error = exc

    def run(self, unit: Any) -> Any:
        if self.error is not None:
            raise SetupFailed(self.error)
        assert self.fn is not None, "run before setup"  # setup is sent to every actor before its first unit
        return self.fn(unit)


class SetupFailed(Exception):
    """A worker's work function could not be built (carries the original error)."""


_POOL: dict[str, Any] = {"key": None, "actors": []}


def pooled_actors(ray: Any, num_gpus: float, threads: int | None) -> list[Any]:
    """The actors kept from earlier sweeps with these resources on this cluster (the kept list
    itself: actors added to it or removed from it are kept so for the next sweep)."""
    key = _pool_key(ray, num_gpus, threads)
    if _POOL["key"] != key:
        _POOL.update(key=key, actors=[])
    return _POOL["actors"]


def forget_pooled_actors() -> None:
    """A cluster started for one sweep is going, and its actors with it."""
    _POOL.update(key=None, actors=[])


def _pool_key(ray: Any, num_gpus: float, threads: int | None) -> tuple[Any, ...]:
    ctx = ray.get_runtime_context()
    return (ctx.get_job_id(), ctx.get_node_id(), num_gpus, threads)  # the node id is new with every cluster
