"""One resumable build, shared by the similarity cache and the pruning cache.

A cache is built as a list of independent **units of work** (:class:`Unit`: one layer's
candidates, one pruned group's consumers), each with the one file its result lands in. The
four steps of :class:`ResumableBuild` are separate on purpose, so that a unit can be
enumerated, checked, run and stored by whoever holds it:

1. :meth:`~ResumableBuild.units` enumerates every unit of the cache (cheap: no forward);
2. :meth:`~ResumableBuild.done` -- a unit is done exactly when its result file exists
   (results are written atomically, :func:`lrf_optuna.scoring._store.atomic_write`, so a
   build killed halfway keeps what it finished and a resumed one continues from there);
3. :meth:`~ResumableBuild.passes` splits the remaining units into passes whose shared
   set-up fits in memory; :meth:`~ResumableBuild.prepare` does a pass's set-up (one
   calibration pass capturing the activations its units read, released by the next), then
   :meth:`~ResumableBuild.run` computes one unit's result without writing anything;
4. :meth:`~ResumableBuild.write` stores it (its result file last).

:func:`run_build` drives them on one machine: the units not done, pass by pass, on
``workers`` threads (:func:`run_parallel`), with one progress bar over their candidates
(:func:`progress_bar`). :func:`lrf_optuna.search.scoring_queue.score_on_storage` drives
the same steps one unit at a time for any number of workers sharing a study's storage
(:attr:`~ResumableBuild.key` and :meth:`~ResumableBuild.settings` say which build a unit
belongs to and how a worker rebuilds it).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> class Squares(ResumableBuild[int]):
    ...     def __init__(self, directory):
    ...         self.directory = directory
    ...     def units(self):
    ...         return [Unit("n", str(i), self.directory / f"{i}.txt") for i in range(3)]
    ...     def run(self, unit, bar):
    ...         bar.update(1)
    ...         return int(unit.name) ** 2
    ...     def write(self, unit, result):
    ...         unit.file.write_text(str(result))
    >>> d = Path(tempfile.mkdtemp())
    >>> run_build(Squares(d), progress=False), run_build(Squares(d), progress=False)
    (3, 0)
    >>> (d / "2.txt").read_text()
    '4'
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from lrf_optuna.device import on_compute_device

__all__ = ["ProgressBar", "ResumableBuild", "Unit", "progress_bar", "run_build",
           "run_parallel"]

ResultT = TypeVar("ResultT")


class ProgressBar(Protocol):
    """What a unit reports its progress to (a ``tqdm`` bar, or :func:`progress_bar`'s
    stand-in)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str) -> Any: ...

    def close(self) -> Any: ...


@dataclass(frozen=True)
class Unit:
    """One unit of work of a resumable build.

    Attributes:
        kind: What it scores (``"layer"``, ``"group"``): a build may have several kinds.
        name: Which one (a layer path, a group name); ``(kind, name)`` is unique.
        file: Where its result is stored; the unit is done when this file exists.
        steps: The candidates it scores (its share of the progress bar).
    """

    kind: str
    name: str
    file: Path
    steps: int = 1


class ResumableBuild(abc.ABC, Generic[ResultT]):
    """A cache built unit by unit (see the module docstring); :func:`run_build` runs it."""

    #: The progress bar's label.
    desc: str = "scoring candidates"

    @property
    def key(self) -> str:
        """What identifies this build across workers (a cache's fingerprint)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be shared between workers")

    def settings(self) -> dict[str, Any]:
        """What another worker needs, besides the model and calibration data, to make
        the same build (JSON)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be shared between workers")

    @abc.abstractmethod
    def units(self) -> list[Unit]:
        """Every unit of the cache, in a fixed order."""

    def passes(self, todo: Sequence[Unit]) -> list[list[Unit]]:
        """``todo`` split into passes, each prepared once (default: one pass)."""
        return [list(todo)]

    def done(self, unit: Unit) -> bool:
        """Whether ``unit``'s result is stored."""
        return unit.file.exists()

    def prepare(self, todo: Sequence[Unit]) -> None:
        """Set up what the units ``todo`` (one pass) share, releasing the previous pass's
        set-up (called once per pass, before its units :meth:`run`)."""

    def prepared(self, unit: Unit) -> bool:
        """Whether the last :meth:`prepare` covered ``unit`` (default: never)."""
        return False

    def release(self) -> None:
        """Drop the last :meth:`prepare`'s set-up (called when a build stops)."""

    @abc.abstractmethod
    def run(self, unit: Unit, bar: ProgressBar) -> ResultT:
        """Compute ``unit``'s result (no writes), one ``bar`` step per candidate."""

    @abc.abstractmethod
    def write(self, unit: Unit, result: ResultT) -> None:
        """Store ``unit``'s result, :attr:`Unit.file` last and atomically."""


def run_build(build: ResumableBuild[Any], *, workers: int | None = None,
              progress: bool = True) -> int:
    """Run the units of ``build`` that are not done, on this machine; returns how many ran.

    Args:
        build: The build.
        workers: Threads running units in parallel (default: CPU count, at most 4).
        progress: Show a progress bar over the candidates of the units run.
    """
    todo = [u for u in build.units() if not build.done(u)]
    if not todo:
        return 0
    bar = progress_bar(sum(u.steps for u in todo), progress, desc=build.desc)

    def one(unit: Unit) -> None:
        with on_compute_device():  # thread-local: entered by each worker thread
            build.write(unit, build.run(unit, bar))

    try:
        for units in build.passes(todo):
            with on_compute_device():
                build.prepare(units)
            run_parallel(one, units, workers)
    finally:
        bar.close()
        build.release()
    return len(todo)


class _NoBar:
    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(total: int, enabled: bool, desc: str = "scoring candidates") -> ProgressBar:
    """A tqdm bar of ``total`` candidates (a do-nothing stand-in when not ``enabled``)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    bar: ProgressBar = tqdm(total=total, desc=desc, unit="cand")
    return bar


def run_parallel(fn: Callable[[Any], None], items: Sequence[Any], workers: int | None
                 ) -> None:
    """``fn(item)`` for every item, on ``workers`` threads (default: CPU count, at most 4)
    with one BLAS thread each (oversubscribed BLAS runs 10x slower here)."""
    n_workers = workers or min(4, os.cpu_count() or 1)
    if n_workers <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(n_workers) as pool:
        for fut in [pool.submit(fn, item) for item in items]:
            fut.result()
