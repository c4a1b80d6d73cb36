"""``map_units``: run independent units of a sweep over Ray actors, each of which builds its
work function once (loads the model once), with results returned in unit order.

- Deterministic reduction: results come back indexed by unit and are returned in the
  units' order, whatever order the workers finished them in; the caller reduces in that order.
- Progress: one bar (or ``on_unit(done, total)`` callback) counts units done across workers.
- Fault tolerance: when an actor dies (its process exits, the node goes, ``ray.kill``), the
  units it held go back to the queue and a replacement actor is started; a unit's result is
  kept once (the first that arrives), so nothing is lost or counted twice.
  A unit that kills ``max_attempts`` actors is an error, as is an actor whose constructor
  raises (a model that does not load is not retried).
- Without Ray (``ray_address=None``) the same units run in this process, in order.

Ray is optional (``pip install "workbench[ray]"``); asking for it without it installed is one
line naming that command.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from ..errors import InputError, WorkbenchError

INSTALL_RAY = 'pip install "workbench[ray]"'
FAIL_ONCE_ENV = "WORKBENCH_RAY_FAIL_ONCE"
"""Test hook: ``<unit index>:<marker file>``. The worker that first runs that unit exits the
process (``os._exit``) before finishing it, once (the marker file records that it happened)."""


def ray_module() -> Any:
    """``ray``, or one line naming the install command."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed; run: {INSTALL_RAY}") from None
    return ray


@dataclass
class MapStats:
    """What happened in one ``map_units`` call."""

    units: int = 0
    workers: int = 1
    attempts: list[int] = field(default_factory=list)     # per unit: how many times it was started
    completions: list[int] = field(default_factory=list)  # per unit: results kept (always 1)
    worker_of: list[str] = field(default_factory=list)    # per unit: the worker whose result was kept
    dead_workers: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # cluster start and actor construction (model loads) before the first unit

    @property
    def reruns(self) -> int:
        return sum(self.attempts) - self.units


@dataclass
class Mapped:
    """Results in unit order, and the stats of the run."""

    values: list[Any]
    stats: MapStats


class _Cluster:
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
        self.fail_once: str | None = None

    def setup(self, fn_factory: Callable[[], Callable[[Any], Any]], fail_once: str | None) -> None:
        self.fn, self.error, self.fail_once = None, None, fail_once
        try:
            self.fn = fn_factory()
        except BaseException as exc:  # noqa: BLE001 - raised again by run(), in the driver
            self.error = exc

    def run(self, index: int, unit: Any) -> Any:
        if self.error is not None:
            raise SetupFailed(self.error)
        if self.fail_once:
            target, marker = self.fail_once.split(":", 1)
            if int(target) == index and not os.path.exists(marker):
                with open(marker, "w") as fh:
                    fh.write(str(os.getpid()))
                os._exit(1)  # the process dies mid-unit, as a crashed or preempted worker would
        return self.fn(unit)


class SetupFailed(Exception):
    """A worker's work function could not be built (carries the original error)."""


_POOL: dict[str, Any] = {"key": None, "actors": []}


def _pool_key(ray: Any, num_gpus: float, threads: int | None) -> tuple:
    ctx = ray.get_runtime_context()
    return (ctx.get_job_id(), ctx.get_node_id(), num_gpus, threads)  # the node id is new with every cluster


def map_units(
    fn_factory: Callable[[], Callable[[Any], Any]],
    units: Sequence[Any],
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = False,
    desc: str = "units",
    on_unit: Callable[[int, int], None] | None = None,
    max_attempts: int = 3,
    num_gpus: float = 0.0,
    threads: int | None = None,
) -> Mapped:
    """``[fn(u) for u in units]`` with ``fn = fn_factory()`` built once per worker.

    ``ray_address``: None runs in this process; ``"auto"`` starts a local Ray cluster with
    ``workers`` CPUs for the call (or uses the one this process already joined); any other
    string is the address of an existing cluster. ``fn_factory`` must be picklable
    (a module-level function or a dataclass instance). ``threads`` sets each worker's torch
    thread count (default: Ray's, one per CPU the actor holds)."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1 (got {workers})")
    total = len(units)
    stats = MapStats(units=total, workers=workers if ray_address else 1, attempts=[0] * total,
                     completions=[0] * total, worker_of=[""] * total)
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)

    def done(i: int, value: Any, who: str, results: list[Any]) -> None:
        if stats.completions[i]:
            return  # a result for this unit was already kept
        results[i] = value
        stats.completions[i] += 1
        stats.worker_of[i] = who
        bar.update(1)
        if on_unit is not None:
            on_unit(sum(1 for c in stats.completions if c), total)

    results: list[Any] = [None] * total
    try:
        if not ray_address:
            fn = fn_factory()
            stats.startup_seconds = time.perf_counter() - start
            for i, unit in enumerate(units):
                stats.attempts[i] += 1
                done(i, fn(unit), "local", results)
        else:
            _map_ray(fn_factory, units, workers, ray_address, stats, done, results, max_attempts, num_gpus, threads, start)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return Mapped(values=results, stats=stats)


def _map_ray(fn_factory, units, workers, address, stats, done, results, max_attempts, num_gpus, threads, start) -> None:
    cluster = _Cluster(address, workers)
    ray = cluster.ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        actor_cls = ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=0)(UnitWorker)
        fail_once = os.environ.get(FAIL_ONCE_ENV) or None
        factory_ref = ray.put(fn_factory)
        queue: deque[int] = deque(range(len(units)))
        inflight: dict[Any, tuple[Any, int]] = {}  # ref -> (actor, unit)
        names: dict[Any, str] = {}
        key = _pool_key(ray, num_gpus, threads)
        if _POOL["key"] != key:
            _POOL.update(key=key, actors=[])
        actors: list[Any] = _POOL["actors"]  # kept for the next sweep while this cluster lives
        budget = workers + max_attempts * max(1, len(units))  # replacements allowed in all

        def add(a: Any) -> Any:
            a.setup.remote(factory_ref, fail_once)  # runs before any unit sent after it (actor order)
            names[a] = f"worker{len(names)}"
            return a

        def new_actor() -> Any:
            nonlocal budget
            if budget <= 0:
                raise WorkbenchError("too many Ray workers died in this sweep; see the Ray logs (/tmp/ray/session_latest/logs)")
            budget -= 1
            a = actor_cls.remote(threads)
            actors.append(a)
            return add(a)

        while len(actors) > workers:
            ray.kill(actors.pop())
        for a in list(actors):
            add(a)
        while len(actors) < min(workers, len(units)):
            new_actor()

        def feed(actor: Any) -> None:
            if queue:
                i = queue.popleft()
                if stats.attempts[i] >= max_attempts:
                    raise WorkbenchError(f"unit {i} of the sweep was tried {max_attempts} times and its worker died "
                                         "each time; see the Ray logs (/tmp/ray/session_latest/logs)")
                stats.attempts[i] += 1
                inflight[actor.run.remote(i, units[i])] = (actor, i)

        for a in list(actors):
            feed(a)
        first = True
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            actor, i = inflight.pop(ref)
            try:
                value = ray.get(ref)
            except RayActorError:
                stats.dead_workers += 1
                # every unit this actor held goes back to the front of the queue
                lost = [i] + [u for r, (a, u) in list(inflight.items()) if a is actor]
                for r in [r for r, (a, _) in inflight.items() if a is actor]:
                    inflight.pop(r)
                queue.extendleft(sorted(lost, reverse=True))
                actors.remove(actor)
                idle = [a for a in actors if not any(a is b for b, _ in inflight.values())]
                for a in idle:  # survivors that were waiting take the returned units at once
                    feed(a)
                # a replacement loads the model again: worth it only while work is left beyond the survivors
                if not actors or len(queue) > len(actors):
                    feed(new_actor())
                continue
            except RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, SetupFailed) and cause.args and isinstance(cause.args[0], BaseException):
                    cause = cause.args[0]
                if isinstance(cause, WorkbenchError):
                    raise cause from None
                raise WorkbenchError(f"unit {i} failed on a Ray worker: {_first_line(exc)}") from None
            if first:
                stats.startup_seconds = time.perf_counter() - start
                first = False
            done(i, value, names[actor], results)
            feed(actor)
    finally:
        if cluster.started:  # a cluster started for this sweep goes, and its actors with it
            _POOL.update(key=None, actors=[])
        cluster.close()


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(exc).__name__
