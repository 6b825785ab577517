"""The EM loop: pure Python over a ``map_reduce`` callable, testable without Dask.

One iteration evaluates the objective at the current parameters (E-step: one pass of
``family.block_stats`` merged by ``family.merge``), then moves them (M-step), exactly as
scikit-learn's ``BaseMixture.fit``.  Who runs the pass is not this module's business:
``map_reduce(block_func, merge, shared, stage=...)`` may be the engine's (one Dask graph
per pass) or a plain loop over NumPy blocks (the tests).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_em.families.base import Family, Params, Stats

logger = logging.getLogger(__name__)

#: An objective that falls by more than this (relative) is reported as a decrease.
MONOTONE_TOLERANCE = 1e-10

#: ``map_reduce(block_func, merge, shared, *, stage=...) -> merged statistics``
MapReduce = Callable[..., Stats]


@dataclass
class IterationRecord:
    """One EM iteration: objective at the parameters the iteration started from."""

    iteration: int
    objective: float
    change: float
    seconds: float
    reseeded: tuple[int, ...] = ()
    bytes_read: int = 0  # bytes of data (X and weights) the iteration's E-step tasks read

    def as_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "objective": self.objective,
            "change": self.change,
            "seconds": self.seconds,
            "reseeded": list(self.reseeded),
            "bytes_read": self.bytes_read,
        }


@dataclass
class FitResult:
    """What :func:`run` returns (and what a checkpoint stores of a running fit)."""

    params: Params
    history: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0
    lower_bound: float = -math.inf


Repair = Callable[[Params, Stats], tuple[Params, tuple[int, ...]]]


def _no_scope(iteration: int) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def run(
    map_reduce: MapReduce,
    family: Family,
    params: Params,
    *,
    max_iter: int,
    tol: float,
    repair: Repair | None = None,
    callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
    resume: FitResult | None = None,
    iteration_scope: Callable[[int], contextlib.AbstractContextManager[None]] = _no_scope,
    observe: Callable[[IterationRecord], None] | None = None,
    bytes_per_pass: int = 0,
    log: logging.Logger = logger,
) -> FitResult:
    """EM from ``params`` until the mean objective changes by less than ``tol``.

    ``lower_bound`` is the objective of the last E-step.  ``repair(params, stats)`` may
    fix up the new parameters (re-seeding) and returns the indices it changed.
    ``callbacks(record, new_params)`` run after every iteration (checkpoints).
    ``iteration_scope(n)`` wraps the pass of iteration n (the engine's dashboard span);
    ``observe(record)`` sees every record first (the engine's log line and event);
    ``log`` takes the warning of a decreasing objective (the engine passes its logger,
    so that all of a fit's lines come from ``dask_em.engine``).

    ``resume``: continue a run from the parameters it reached and its history
    (``resume.params``, ``resume.history``; ``params`` is then ignored).  That is the
    whole loop state, so the result equals the uninterrupted run's.
    """
    result = FitResult(params=params)
    if resume is not None:
        result.params, result.history = resume.params, list(resume.history)
        params = result.params
        if result.history:
            last = result.history[-1]
            result.n_iter, result.lower_bound = last.iteration, last.objective
            if abs(last.change) < tol:
                result.converged = True
                return result
    previous = result.history[-1].objective if result.history else -math.inf
    for iteration in range(result.n_iter + 1, max_iter + 1):
        started = time.perf_counter()
        with iteration_scope(iteration):
            stats = map_reduce(family.block_stats, family.merge, params, stage="estep")
        objective = family.objective(stats, params)
        if not math.isfinite(objective):
            raise FloatingPointError(
                f"the objective became {objective} at iteration {iteration}; "
                "check the data for extreme values or increase regularization"
            )
        new_params = family.m_step(stats)
        changed: tuple[int, ...] = ()
        if repair is not None:
            new_params, changed = repair(new_params, stats)
        record = IterationRecord(
            iteration,
            objective,
            objective - previous,
            time.perf_counter() - started,
            changed,
            bytes_per_pass,
        )
        # a family computing in float32 declares a looser tolerance (monotone_tolerance)
        tolerance = getattr(family, "monotone_tolerance", MONOTONE_TOLERANCE)
        check_monotone(record, result.history, log, tolerance)
        result.history.append(record)
        if observe is not None:
            observe(record)
        for callback in callbacks:
            callback(record, new_params)
        params = new_params
        result.params, result.n_iter, result.lower_bound = params, iteration, objective
        if abs(record.change) < tol:
            result.converged = True
            break
        previous = objective
    return result


def check_monotone(
    record: IterationRecord,
    history: list[IterationRecord],
    log: logging.Logger = logger,
    tolerance: float = MONOTONE_TOLERANCE,
) -> None:
    """Warn (log) when the objective fell since the last iteration (no re-seeding then)."""
    if not history or history[-1].reseeded:
        return
    before = history[-1].objective
    if record.objective < before - tolerance * max(1.0, abs(before)):
        log.warning(
            "objective decreased at iteration %d: %.12g -> %.12g",
            record.iteration,
            before,
            record.objective,
        )
