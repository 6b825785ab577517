"""The EM loop: pure Python over a ``map_reduce`` callable, testable without Dask.

One pass evaluates the objective at a point (E-step: one pass of ``family.block_stats``
merged by ``family.merge``) and its M-step image.  Which point comes next is an
ask/tell driver's business (:mod:`dask_em.acceleration`): :class:`PlainEM` takes the
image, exactly as scikit-learn's ``BaseMixture.fit``; :class:`Squarem` extrapolates
from the images before.  Both run through this one loop.  Who runs the pass is not
this module's business either: ``map_reduce(block_func, merge, shared, stage=...)`` may
be the engine's (one Dask graph per pass) or a plain loop over NumPy blocks (the tests).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_em.acceleration import AcceptedPoint, EMState, make_driver
from dask_em.families.base import Family, Params, Stats

logger = logging.getLogger(__name__)

#: An objective that falls by more than this (relative) is reported as a decrease.
MONOTONE_TOLERANCE = 1e-10

#: ``map_reduce(block_func, merge, shared, *, stage=...) -> merged statistics``
MapReduce = Callable[..., Stats]


@dataclass
class IterationRecord:
    """One accepted point of an EM run: the objective at it (mean, penalized).

    ``iteration``: its index (1-based); ``change``: objective minus the previous
    record's; ``seconds`` and ``bytes_read``: of the passes since the previous record
    (rejected extrapolations included); ``passes``: passes of this EM run so far;
    ``move``: how the point was reached, ``"em"`` (an M-step, or the start) or
    ``"extrapolated"`` (SQUAREM); ``step``: its step length.
    """

    iteration: int
    objective: float
    change: float
    seconds: float
    reseeded: tuple[int, ...] = ()
    bytes_read: int = 0  # bytes of data (X and weights) the iteration's E-step tasks read
    passes: int = 0
    move: str = "em"
    step: float = 1.0
    step_max: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "objective": self.objective,
            "change": self.change,
            "seconds": self.seconds,
            "reseeded": list(self.reseeded),
            "bytes_read": self.bytes_read,
            "passes": self.passes,
            "move": self.move,
            "step": self.step,
        }

    def accepted_point(self) -> AcceptedPoint:
        """The driver's view of this record (to resume a driver)."""
        return AcceptedPoint(
            self.objective,
            self.change,
            self.passes,
            self.move,
            self.step,
            self.step_max,
            self.reseeded,
        )


@dataclass
class FitResult:
    """What :func:`run` returns (and what a checkpoint stores of a running fit).

    ``chain``: the driver's last points linked by plain EM steps (SQUAREM extrapolates
    from them; see :class:`dask_em.acceleration.EMState`); ``passes``: passes over the
    data this run made.
    """

    params: Params
    history: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0
    lower_bound: float = -math.inf
    chain: tuple[Params, ...] = ()
    passes: int = 0

    def em_state(self) -> EMState:
        """The driver's state (to resume a driver from it)."""
        return EMState(
            self.params, tuple(r.accepted_point() for r in self.history), tuple(self.chain)
        )


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
    accelerate: str | None = None,
    repair: Repair | None = None,
    callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
    resume: FitResult | None = None,
    iteration_scope: Callable[[int], contextlib.AbstractContextManager[None]] = _no_scope,
    observe: Callable[[IterationRecord], None] | None = None,
    save: Callable[[FitResult], None] | None = None,
    bytes_per_pass: int = 0,
    log: logging.Logger = logger,
) -> FitResult:
    """EM from ``params`` until a plain EM step changes the mean objective by less than
    ``tol``, or ``max_iter`` passes over the data (iterations, for plain EM).

    ``accelerate``: None (plain EM) or ``"squarem"``.  ``lower_bound`` is the objective
    of the last accepted point, ``params`` its EM image.  ``repair(params, stats)`` may
    fix up an image (re-seeding) and returns the indices it changed.  After every
    accepted point: ``observe(record)`` first (the engine's log line and event), then
    ``save(result)`` (a checkpoint of the whole loop state), then
    ``callbacks(record, new_params)``.  ``iteration_scope(n)`` wraps pass n (the
    engine's dashboard span); ``log`` takes the warning of a decreasing objective (the
    engine passes its logger, so that all of a fit's lines come from ``dask_em.engine``).

    ``resume``: continue a run from the state it saved (``params`` is then ignored);
    the result equals the uninterrupted run's.
    """
    result = FitResult(params=params)
    if resume is not None:
        result.params, result.history = resume.params, list(resume.history)
        result.chain, result.passes = tuple(resume.chain), resume.passes
        if result.history:
            last = result.history[-1]
            result.n_iter, result.lower_bound = last.iteration, last.objective
    driver = make_driver(
        accelerate,
        family,
        result.params,
        tol=tol,
        repair=repair,
        resume=result.em_state() if resume is not None else None,
    )
    result.converged = driver.converged
    started = time.perf_counter()
    passes_before = driver.passes
    while not driver.converged and driver.passes < max_iter:
        point_params = driver.ask()
        extrapolated = driver.pending_kind != "em"
        with iteration_scope(driver.passes + 1):
            stats = map_reduce(family.block_stats, family.merge, point_params, stage="estep")
        objective = family.objective(stats, point_params)
        if not math.isfinite(objective) and not extrapolated:
            raise FloatingPointError(
                f"the objective became {objective} at iteration {result.n_iter + 1}; "
                "check the data for extreme values or increase regularization"
            )
        image = family.m_step(stats) if math.isfinite(objective) else point_params
        point = driver.tell(objective, image, stats)
        if point is None:  # a rejected extrapolation
            continue
        record = IterationRecord(
            result.n_iter + 1,
            point.objective,
            point.change,
            time.perf_counter() - started,
            point.reseeded,
            bytes_per_pass * (driver.passes - passes_before),
            point.passes,
            point.kind,
            point.step,
            point.step_max,
        )
        passes_before = driver.passes
        # a family computing in float32 declares a looser tolerance (monotone_tolerance)
        tolerance = getattr(family, "monotone_tolerance", MONOTONE_TOLERANCE)
        check_monotone(record, result.history, log, tolerance)
        result.history.append(record)
        result.params, result.n_iter = driver.params, record.iteration
        result.lower_bound = record.objective
        result.chain, result.passes = driver.state.chain, driver.passes
        result.converged = driver.converged
        if observe is not None:
            observe(record)
        if save is not None:
            save(result)
        for callback in callbacks:
            callback(record, driver.params)
        started = time.perf_counter()
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
