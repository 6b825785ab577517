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

from dask_em.acceleration import EMState, make_driver
from dask_em.acceleration.driver import TRIAL_POINT_ERRORS
from dask_em.evaluated import Evaluated
from dask_em.families.base import Family, Params, Stats
from dask_em.records import MONOTONE_TOLERANCE, IterationRecord, check_monotone
from dask_em.shared_passes import pass_each
from dask_em.thread_pools import one_blas_thread

__all__ = [
    "MONOTONE_TOLERANCE",
    "EMRun",
    "Evaluated",
    "FitResult",
    "IterationRecord",
    "check_monotone",
    "lockstep",
    "run",
]

logger = logging.getLogger(__name__)

#: ``map_reduce(block_func, merge, shared, *, stage=...) -> merged statistics``
MapReduce = Callable[..., Stats]


@dataclass
class FitResult:
    """What :func:`run` returns (and what a checkpoint stores of a running fit).

    ``chain`` and ``arrays``: the driver's earlier points and own arrays (see
    :class:`dask_em.acceleration.EMState`); ``passes``: passes over the data this run
    made.
    """

    params: Params
    history: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0
    lower_bound: float = -math.inf
    chain: tuple[Params, ...] = ()
    passes: int = 0
    arrays: dict[str, Any] = field(default_factory=dict)  # the driver's (EMState.arrays)

    def copy(self) -> FitResult:
        """A copy that later iterations of the run do not change (its own history
        list; the parameters are never changed in place)."""
        return FitResult(
            self.params,
            list(self.history),
            self.converged,
            self.n_iter,
            self.lower_bound,
            self.chain,
            self.passes,
            dict(self.arrays),
        )

    def em_state(self) -> EMState:
        """The driver's state (to resume a driver from it)."""
        history = tuple(r.accepted_point() for r in self.history)
        return EMState(self.params, history, tuple(self.chain), dict(self.arrays))


Repair = Callable[[Params, Stats], tuple[Params, tuple[int, ...]]]


def _no_scope(iteration: int) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class EMRun:
    """One EM run, advanced one pass at a time by a loop (:func:`run`, :func:`lockstep`).

    ``ask()`` gives the parameters to evaluate in the next pass; ``tell(stats)`` takes
    that pass's merged statistics, accepts or rejects the point (the driver's choice),
    and on an accepted point records it and calls ``observe(record)``.  ``result`` is
    the run so far.  The arguments are :func:`run`'s; ``callbacks`` are called by the
    loop (:meth:`notify`), after it has saved its checkpoint.
    """

    def __init__(
        self,
        family: Family,
        params: Params,
        *,
        max_iter: int,
        tol: float,
        accelerate: str | None = None,
        repair: Repair | None = None,
        callbacks: Sequence[Callable[[IterationRecord, Params], None]] = (),
        resume: FitResult | None = None,
        observe: Callable[[IterationRecord], None] | None = None,
        bytes_per_pass: int = 0,
        speculate: bool = True,
        log: logging.Logger = logger,
    ) -> None:
        self.family = family
        self.speculate = speculate
        self.max_iter = max_iter
        self.callbacks = tuple(callbacks)
        self.observe = observe
        self.bytes_per_pass = bytes_per_pass
        self.log = log
        result = FitResult(params=params)
        if resume is not None:
            result.params, result.history = resume.params, list(resume.history)
            result.chain, result.passes = tuple(resume.chain), resume.passes
            result.arrays = dict(resume.arrays)
            if result.history:
                last = result.history[-1]
                result.n_iter, result.lower_bound = last.iteration, last.objective
        self.driver = make_driver(
            accelerate,
            family,
            result.params,
            tol=tol,
            repair=repair,
            resume=result.em_state() if resume is not None else None,
        )
        result.converged = self.driver.converged
        self.result = result
        self.last_record: IterationRecord | None = None  # accepted in the last pass
        self._started = time.perf_counter()
        self._passes_before = self.driver.passes

    @property
    def live(self) -> bool:
        """Whether the run needs another pass: not converged, and fewer than ``max_iter``
        points of its path evaluated (a cap speculation does not move)."""
        return not self.driver.converged and self.driver.evaluations < self.max_iter

    @property
    def passes(self) -> int:
        return self.driver.passes

    def ask(self) -> Params:
        """The parameters to evaluate in the next pass."""
        return self.driver.ask()

    def speculative(self) -> Params | None:
        """A second point to evaluate in the next pass, or None (the driver's
        :meth:`~dask_em.acceleration.PlainEM.speculative`: the fallback of an
        extrapolation proposed after a rejected one); never when ``speculate`` is false,
        nor when ``max_iter`` leaves room for one evaluation only."""
        if not self.speculate or self.driver.evaluations + 2 > self.max_iter:
            return None
        return self.driver.speculative()

    def points(self) -> list[Params]:
        """Every point the next pass evaluates for this run: :meth:`ask`'s, then
        :meth:`speculative`'s if any, then the driver's companions."""
        second = self.speculative()
        return [self.ask(), *([] if second is None else [second]), *self.driver.companions()]

    def tell_points(self, stats: Sequence[Stats]) -> IterationRecord | None:
        """:meth:`tell` with the statistics at :meth:`points`, in that order."""
        speculated = self.speculative() is not None
        companions = [
            self._companion(s, p)
            for s, p in zip(stats[1 + speculated :], self.driver.companions(), strict=True)
        ]
        return self.tell(stats[0], stats[1] if speculated else None, companions)

    def _companion(self, stats: Stats, params: Params) -> tuple[float, Params | None, Stats]:
        """``(objective, image, stats)`` at a companion point; an M-step that fails there
        (a trial point far out, where a component has no weight) gives ``(-inf, None)``:
        the driver passes over it, as over a point whose objective is not finite."""
        try:
            return self.family.objective(stats, params), self.family.m_step(stats), stats
        except TRIAL_POINT_ERRORS:
            return -math.inf, None, stats

    def tell(
        self,
        stats: Stats,
        fallback_stats: Stats | None = None,
        companions: Sequence[tuple[float, Params | None, Stats]] = (),
    ) -> IterationRecord | None:
        """The merged statistics of the pass at :meth:`ask`'s point (and, when the loop
        evaluated it in the same pass, at :meth:`speculative`'s; ``companions``: the
        ``(objective, image, stats)`` at the driver's companions); returns the record of
        the accepted point, or None (a rejected extrapolation)."""
        driver, family, result = self.driver, self.family, self.result
        point_params = driver.ask()
        fallback = None
        if fallback_stats is not None:
            fallback_params = driver.speculative()

            def fallback() -> tuple[float, Params, Stats]:
                value = family.objective(fallback_stats, fallback_params)
                if not math.isfinite(value):  # an EM point: as a pass of its own would say
                    raise self._non_finite(value)
                return value, family.m_step(fallback_stats), fallback_stats

        extrapolated = driver.pending_kind != "em"
        objective = family.objective(stats, point_params)
        self.last_record = None
        if not math.isfinite(objective) and not extrapolated:
            raise self._non_finite(objective)
        image = family.m_step(stats) if math.isfinite(objective) else point_params
        point = driver.tell(objective, image, stats, fallback, companions)
        if point is None:  # a rejected extrapolation
            return None
        record = IterationRecord(
            result.n_iter + 1,
            point.objective,
            point.change,
            time.perf_counter() - self._started,
            point.reseeded,
            self.bytes_per_pass * (driver.passes - self._passes_before),
            point.passes,
            point.kind,
            point.step,
            point.step_max,
            point.after_rejection,
            point.evaluations,
        )
        self._passes_before = driver.passes
        check_monotone(record, result.history, self.log, self.driver.monotone_tolerance)
        result.history.append(record)
        result.params, result.n_iter = driver.params, record.iteration
        result.lower_bound = record.objective
        state = driver.state
        result.chain, result.arrays, result.passes = state.chain, state.arrays, driver.passes
        result.converged = driver.converged
        if self.observe is not None:
            self.observe(record)
        self.last_record = record
        self.start_clock()
        return record

    def _non_finite(self, objective: float) -> FloatingPointError:
        """The error for a non-finite objective at an EM point of the next iteration."""
        return FloatingPointError(
            f"the objective became {objective} at iteration {self.result.n_iter + 1}; "
            "check the data for extreme values or increase regularization"
        )

    def start_clock(self, at: float | None = None) -> None:
        """Count the next record's seconds from now (or from ``at``, a
        ``time.perf_counter()`` value): its passes, not the set-up before the loop (the
        driver's first compilation of the kernels, for one)."""
        self._started = time.perf_counter() if at is None else at

    def notify(self) -> None:
        """Call the callbacks with the point accepted in the last pass, if any."""
        if self.last_record is None:
            return
        for callback in self.callbacks:
            callback(self.last_record, self.driver.params)


def lockstep(
    map_reduce: MapReduce,
    runs: Sequence[EMRun],
    *,
    iteration_scope: Callable[[int], contextlib.AbstractContextManager[None]] = _no_scope,
    save: Callable[[list[FitResult]], None] | None = None,
    first: Evaluated | None = None,
) -> list[FitResult]:
    """Advance ``runs`` together until none is live: each pass over the data evaluates
    the E-step of every live run, block by block, so the data is read once per pass
    however many runs there are (restarts, model sizes).  A run that converges or
    reaches its ``max_iter`` drops out.  Each run's arithmetic is the same as alone,
    so its result equals :func:`run`'s bit for bit.  A run whose driver offers more
    points (:meth:`EMRun.points`: a speculative fallback, a driver's companions) has them
    evaluated in the same pass.

    After each pass in which some run accepted a point: ``save(results)`` (all runs'
    results so far: a checkpoint), then each such run's callbacks.

    ``first``: per run, points and their merged statistics from a pass already made (the
    scan pass that also ran the first E-steps, :mod:`dask_em.estimators.first_pass`).
    The first pass is then not made if each live run's first pass would evaluate
    exactly those points (equal values); the runs go on as if it had been, their first
    records counting their seconds from that pass's start.

    The runs' own arithmetic (their points, M-steps, proposals) runs with one BLAS
    thread (:func:`dask_em.thread_pools.one_blas_thread`); ``map_reduce``, ``save`` and
    the callbacks with the caller's.
    """
    for run in runs:
        run.start_clock()
    while live := [run for run in runs if run.live]:
        with one_blas_thread():  # the runs' own D x D algebra (dask_em.thread_pools)
            points = [run.points() for run in live]
        if first is not None and first.serves(live, points, runs):
            stats = iter(first.stats_of(live, runs))
            for run in live:
                run.start_clock(first.started)
        else:
            with iteration_scope(1 + max(run.passes for run in live)):
                pairs = [(run.family, p) for run, ps in zip(live, points, strict=True) for p in ps]
                stats = iter(pass_each(map_reduce, pairs))
        first = None
        with one_blas_thread():  # the M-steps and the drivers' steps
            for run, run_points in zip(live, points, strict=True):
                run.tell_points([next(stats) for _ in run_points])
        if save is not None and any(run.last_record is not None for run in live):
            save([run.result for run in runs])
        for run in live:
            run.notify()
    return [run.result for run in runs]


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
    speculate: bool = True,
    log: logging.Logger = logger,
) -> FitResult:
    """EM from ``params`` until a plain EM step changes the mean objective by less than
    ``tol``, or ``max_iter`` evaluated points (passes over the data, plus the fallbacks
    evaluated in a proposal's pass and taken: iterations, for plain EM).

    ``accelerate``: None (plain EM), ``"squarem"``, ``"daarem"`` or ``"newton"``.
    ``lower_bound`` is the objective of the last accepted point, ``params`` its EM image.
    ``repair(params, stats)`` may fix up an image (re-seeding) and returns the indices it
    changed.  After every accepted point: ``observe(record)`` first (the engine's log
    line and event), then ``save(result)`` (a checkpoint of the whole loop state), then
    ``callbacks(record, new_params)``.  ``iteration_scope(n)`` wraps pass n (the
    engine's dashboard span); ``log`` takes the warning of a decreasing objective (the
    engine passes its logger, so that all of a fit's lines come from ``dask_em.engine``).

    ``resume``: continue a run from the state it saved (``params`` is then ignored);
    the result equals the uninterrupted run's.  ``speculate``: evaluate an accelerated
    run's fallback in the pass of a proposal made after a rejection
    (:meth:`EMRun.speculative`; the same accepted points in fewer passes).  True here and
    in :class:`EMRun` by default; the estimators ask the engine
    (:func:`dask_em.engine.speculation.speculates`, Dask config ``dask_em.speculate``).
    """
    one = EMRun(
        family,
        params,
        max_iter=max_iter,
        tol=tol,
        accelerate=accelerate,
        repair=repair,
        callbacks=callbacks,
        resume=resume,
        observe=observe,
        bytes_per_pass=bytes_per_pass,
        speculate=speculate,
        log=log,
    )
    save_one = None if save is None else (lambda results: save(results[0]))
    return lockstep(map_reduce, [one], iteration_scope=iteration_scope, save=save_one)[0]
