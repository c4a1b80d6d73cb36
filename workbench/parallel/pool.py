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

The cluster, the actor and the actors kept between sweeps are ``workbench.parallel.ray_workers``
(its names are importable from here too). Ray is optional (``pip install "workbench[ray]"``);
asking for it without it installed is one line naming that command.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence

from tqdm.auto import tqdm

from ..errors import InputError, WorkbenchError
from .ray_workers import (INSTALL_RAY, Cluster, SetupFailed, UnitWorker, forget_pooled_actors, pooled_actors,
                          ray_module)

__all__ = ["map_units", "Mapped", "MapStats", "UnitWorker", "SetupFailed", "ray_module", "INSTALL_RAY"]

Done = Callable[[int, Any, str], None]
"""``done(unit index, value, worker name)``: keep a unit's result (the first that arrives)."""


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
    results: list[Any] = [None] * total

    def done(i: int, value: Any, who: str) -> None:
        if stats.completions[i]:
            return  # a result for this unit was already kept
        results[i] = value
        stats.completions[i] += 1
        stats.worker_of[i] = who
        bar.update(1)
        if on_unit is not None:
            on_unit(sum(1 for c in stats.completions if c), total)

    try:
        if not ray_address:
            fn = fn_factory()
            stats.startup_seconds = time.perf_counter() - start
            for i, unit in enumerate(units):
                stats.attempts[i] += 1
                done(i, fn(unit), "local")
        else:
            _map_ray(fn_factory, units, workers, ray_address, stats, done, max_attempts, num_gpus, threads, start)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return Mapped(values=results, stats=stats)


def _map_ray(fn_factory: Callable[[], Callable[[Any], Any]], units: Sequence[Any], workers: int, address: str,
             stats: MapStats, done: Done, max_attempts: int, num_gpus: float, threads: int | None,
             start: float) -> None:
    cluster = Cluster(address, workers)
    try:
        _RaySchedule(cluster.ray, fn_factory, units, stats, done, max_attempts, num_gpus, threads, start).run(workers)
    finally:
        if cluster.started:  # a cluster started for this sweep goes, and its actors with it
            forget_pooled_actors()
        cluster.close()


class _RaySchedule:
    """The units of one ``map_units`` call on Ray actors: a queue of unit indices, one unit in
    flight per actor, the units of a dead actor back at the front of the queue."""

    def __init__(self, ray: Any, fn_factory: Callable[[], Callable[[Any], Any]], units: Sequence[Any],
                 stats: MapStats, done: Done, max_attempts: int, num_gpus: float, threads: int | None,
                 start: float) -> None:
        self.ray, self.units, self.stats, self.done = ray, units, stats, done
        self.max_attempts, self.threads, self.start = max_attempts, threads, start
        self.actor_cls = ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=0)(UnitWorker)
        self.factory_ref = ray.put(fn_factory)
        self.queue: deque[int] = deque(range(len(units)))
        self.inflight: dict[Any, tuple[Any, int]] = {}  # ref -> (actor, unit)
        self.names: dict[Any, str] = {}
        self.actors: list[Any] = pooled_actors(ray, num_gpus, threads)  # kept for the next sweep while this cluster lives
        self.budget = 0  # replacements allowed in all, set by run

    def run(self, workers: int) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        self.budget = workers + self.max_attempts * max(1, len(self.units))
        self.start_actors(workers)
        for a in list(self.actors):
            self.feed(a)
        first = True
        while self.inflight:
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
            ref = ready[0]
            actor, i = self.inflight.pop(ref)
            try:
                value = self.ray.get(ref)
            except RayActorError:
                self.actor_died(actor, i)
                continue
            except RayTaskError as exc:
                _raise_unit_error(exc, i)
            if first:
                self.stats.startup_seconds = time.perf_counter() - self.start
                first = False
            self.done(i, value, self.names[actor])
            self.feed(actor)

    # ----- actors
    def start_actors(self, workers: int) -> None:
        """The kept actors set up for this sweep (the extra ones killed), and new ones up to
        ``workers`` (no more than there are units)."""
        while len(self.actors) > workers:
            self.ray.kill(self.actors.pop())
        for a in list(self.actors):
            self.add(a)
        while len(self.actors) < min(workers, len(self.units)):
            self.new_actor()

    def add(self, a: Any) -> Any:
        a.setup.remote(self.factory_ref)  # runs before any unit sent after it (actor order)
        self.names[a] = f"worker{len(self.names)}"
        return a

    def new_actor(self) -> Any:
        if self.budget <= 0:
            raise WorkbenchError("too many Ray workers died in this sweep; see the Ray logs (/tmp/ray/session_latest/logs)")
        self.budget -= 1
        a = self.actor_cls.remote(self.threads)
        self.actors.append(a)
        return self.add(a)

    # ----- units
    def feed(self, actor: Any) -> None:
        if self.queue:
            i = self.queue.popleft()
            if self.stats.attempts[i] >= self.max_attempts:
                raise WorkbenchError(f"unit {i} of the sweep was tried {self.max_attempts} times and its worker died "
                                     "each time; see the Ray logs (/tmp/ray/session_latest/logs)")
            self.stats.attempts[i] += 1
            self.inflight[actor.run.remote(self.units[i])] = (actor, i)

    def actor_died(self, actor: Any, i: int) -> None:
        """Unit ``i``'s actor died: every unit it held goes back to the front of the queue, the
        survivors that were waiting take them, and a replacement starts if work is left for it."""
        self.stats.dead_workers += 1
        lost = [i] + [u for r, (a, u) in list(self.inflight.items()) if a is actor]
        for r in [r for r, (a, _) in self.inflight.items() if a is actor]:
            self.inflight.pop(r)
        self.queue.extendleft(sorted(lost, reverse=True))
        self.actors.remove(actor)
        idle = [a for a in self.actors if not any(a is b for b, _ in self.inflight.values())]
        for a in idle:  # survivors that were waiting take the returned units at once
            self.feed(a)
        # a replacement loads the model again: worth it only while work is left beyond the survivors
        if not self.actors or len(self.queue) > len(self.actors):
            self.feed(self.new_actor())


def _raise_unit_error(exc: BaseException, i: int) -> NoReturn:
    """A unit that raised on its worker (or whose work function could not be built): a
    ``WorkbenchError`` as it was raised there, anything else one line naming the unit."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SetupFailed) and cause.args and isinstance(cause.args[0], BaseException):
        cause = cause.args[0]
    if isinstance(cause, WorkbenchError):
        raise cause from None
    raise WorkbenchError(f"unit {i} failed on a Ray worker: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(exc).__name__
