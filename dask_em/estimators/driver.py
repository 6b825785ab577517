"""The fit driver: everything a fit does around the EM loop, for every model.

One fit is: a checkpoint to resume from (or none); the engine over the data; the *scan*
pass (every block checked, the initialization sample drawn from across all blocks; run
within the first EM pass where the starts need no data, :mod:`.first_pass`);
what the model learns from the scan (symbol counts, default priors); then ``n_init``
initializations (one *init* pass for all, :mod:`.starts`) and EM for all of them in
lockstep (:func:`dask_em.em.lockstep`: one pass over the data per step, whatever the
number of restarts), with repair (re-seeding emptied components) and a checkpoint after
every pass; the best run wins.  :func:`fit_candidates` does the same for several
models at once (a model-size sweep, :mod:`dask_em.sweep`).  The driver talks to the
estimator through a few hooks (:class:`~dask_em.estimators.base.Estimator`), to the
engine through its passes, and never to Dask itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em import credentials, em
from dask_em.acceleration import check_accelerate
from dask_em.checkpoint import FitState, fingerprint, load_state, save_state
from dask_em.data import ValueCheck
from dask_em.engine import EMEngine
from dask_em.engine.speculation import speculates
from dask_em.estimators import first_pass
from dask_em.estimators.starts import initial_points, make_repair, scan
from dask_em.estimators.warmup import warm_kernels
from dask_em.families.base import Params
from dask_em.seeds import seed_from
from dask_em.shared_passes import pass_each
from dask_em.thread_pools import one_blas_thread

logger = logging.getLogger(__name__)

Callback = Callable[[em.IterationRecord, Params], None]


@dataclass
class FitData:
    """The data of one fit, as the engine takes it.

    ``X``: row-chunked dask array (n_samples, n_features); ``weights``: sample weights
    with X's row chunks, or None; ``lengths``: for sequence models, the lengths of the
    sequences in each block of X, or a table of lengths and per-sequence weights
    (:func:`dask_em.sequences.weighted_lengths`) (then no row weights); ``local``: fit
    in this process, block by block (small in-memory data); ``check``: the values the
    model accepts.
    """

    X: Any
    weights: Any = None
    lengths: Any = None
    local: bool = False
    check: ValueCheck | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.X.shape)


@dataclass
class FitOutcome:
    """What :func:`fit` returns: the best run and where the data was held."""

    best: em.FitResult
    data_placement: str
    passes: int = 0  # every pass over the data (scan, init and EM passes of every restart)
    bytes_read: int = 0  # bytes of data (X and weights) those passes read


def fit(
    estimator: Any,
    data: FitData,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> FitOutcome:
    """Fit ``estimator`` to ``data`` (see module docstring); its attributes are untouched
    except what it learns from the scan pass."""
    state, saver = _checkpointing(estimator, checkpoint, resume, data)
    seed = state.seed if state is not None else seed_from(estimator.random_state)
    rng = np.random.default_rng(seed)
    n_samples, n_features = data.shape
    check_accelerate(estimator.accelerate, getattr(estimator, "estep", "exact"))
    with verbose_logging(estimator.verbose), one_blas_thread():
        engine, placement = open_engine(estimator, data)
        try:
            with engine.fit_span(
                estimator=type(estimator).__name__,
                n_samples=n_samples,
                n_features=n_features,
                data_placement=placement,
                max_iter=estimator.max_iter,
                resumed_at=max(r.n_iter for r in state.runs) if state is not None else 0,
            ) as fit_end:
                merged = first_pass.plan(estimator, engine, rng, state)
                first = None
                if merged is None:
                    scanned = scan(estimator, engine, rng, data.check)
                else:  # the scan and the first EM pass in one read
                    scanned, first = first_pass.scan_with_first_pass(
                        estimator, engine, data.check, merged
                    )
                estimator._learn_from_scan(scanned)
                best = _restarts(
                    estimator,
                    engine,
                    scanned,
                    rng,
                    seed,
                    state=state,
                    saver=saver,
                    callbacks=callbacks,
                    starts=None if merged is None or state is not None else merged.starts,
                    first=first,
                )
                passes, bytes_read = _counts(engine, state)
                fit_end.update(
                    converged=best.converged,
                    n_iter=best.n_iter,
                    lower_bound=best.lower_bound,
                    n_passes=passes,
                    bytes_read=bytes_read,
                )
        finally:
            engine.release()
    return FitOutcome(best, placement, passes, bytes_read)


@dataclass
class CandidatesOutcome:
    """What :func:`fit_candidates` returns: per candidate, the best run and the
    statistics of one pass at its parameters (``loglik``, ``weight``: for BIC/AIC)."""

    best: list[em.FitResult]
    scores: list[dict]
    data_placement: str
    passes: int
    bytes_read: int


def fit_candidates(candidates: Sequence[Any], data: FitData) -> CandidatesOutcome:
    """Fit every estimator of ``candidates`` (same data, different parameters, e.g.
    ``n_components``) sharing each pass: one scan, one init pass for all their
    initializations, EM for all of them in lockstep, and a last pass that scores each
    candidate's fitted parameters.  The first candidate's ``random_state``, ``cache``,
    ``client`` and ``verbose`` serve the whole sweep."""
    first = candidates[0]
    rng = np.random.default_rng(seed_from(first.random_state))
    with verbose_logging(first.verbose), one_blas_thread():
        engine, placement = open_engine(first, data)
        try:
            with engine.fit_span(
                estimator=f"sweep of {len(candidates)} {type(first).__name__}",
                n_samples=data.shape[0],
                n_features=data.shape[1],
                data_placement=placement,
            ) as fit_end:
                scanned = scan(first, engine, rng, data.check)
                for candidate in candidates:
                    candidate._learn_from_scan(scanned)
                starts = initial_points([(c, c.n_init) for c in candidates], engine, scanned, rng)
                runs = [
                    [
                        em_run(
                            candidate,
                            engine,
                            scanned,
                            start,
                            observe=functools.partial(
                                engine.observe, label=_run_label(c, len(candidates), r, len(points))
                            ),
                        )
                        for r, start in enumerate(points)
                    ]
                    for c, (candidate, points) in enumerate(zip(candidates, starts, strict=True))
                ]
                for candidate_runs in runs:  # each candidate's kernels (its K, its type)
                    run = candidate_runs[0]
                    warm_kernels(engine, run.family, run.result.params, scanned["sample"])
                em.lockstep(
                    engine.map_reduce,
                    [run for candidate_runs in runs for run in candidate_runs],
                    iteration_scope=engine.iteration_scope,
                )
                best = [best_of([run.result for run in candidate_runs]) for candidate_runs in runs]
                families = [candidate._family() for candidate in candidates]
                scores = pass_each(
                    engine.map_reduce,
                    list(zip(families, [b.params for b in best], strict=True)),
                    stage="score",
                )
                fit_end.update(n_passes=engine.passes, bytes_read=engine.bytes_read)
        finally:
            engine.release()
    return CandidatesOutcome(best, scores, placement, engine.passes, engine.bytes_read)


def _run_label(candidate: int, n_candidates: int, restart: int, n_restarts: int) -> str:
    """How log lines and events name a run: ``candidate 2/8 restart 1/3`` (a part is left
    out when there is only one)."""
    parts = []
    if n_candidates > 1:
        parts.append(f"candidate {candidate + 1}/{n_candidates}")
    if n_restarts > 1:
        parts.append(f"restart {restart + 1}/{n_restarts}")
    return " ".join(parts)


def open_engine(estimator: Any, data: FitData) -> tuple[EMEngine, str]:
    """The engine over ``data`` with the estimator's ``cache`` and ``client``, and where
    it holds the data: ``"local"``, ``"memory"`` (persisted) or ``"stream"``."""
    engine = EMEngine(
        data.X,
        data.weights,
        lengths=data.lengths,
        model=estimator._model_name,
        cache=estimator.cache,
        local=data.local,
        client=estimator.client,
        row_order=estimator._row_order(),
    )
    if not data.local:  # storage secrets reach the workers out of band, never in a graph
        credentials.deliver_to(engine.client)
    return engine, "local" if data.local else "memory" if engine.persisted else "stream"


def _counts(engine: EMEngine, state: FitState | None) -> tuple[int, int]:
    """Passes over the data and bytes read so far: this engine's, and those a resumed
    fit's checkpoint recorded."""
    passes, bytes_read = engine.passes, engine.bytes_read
    if state is not None:
        passes, bytes_read = passes + state.passes, bytes_read + state.bytes_read
    return passes, bytes_read


@contextlib.contextmanager
def verbose_logging(verbose: int) -> Iterator[None]:
    """Show the per-iteration log lines on stderr while ``verbose`` is set."""
    if not verbose:
        yield
        return
    package_logger = logging.getLogger("dask_em")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)


# -- restarts and checkpoints --------------------------------------------------------------
def _restarts(
    estimator: Any,
    engine: EMEngine,
    scan: dict,
    rng: np.random.Generator,
    seed: int,
    *,
    state: FitState | None,
    saver,
    callbacks: Sequence[Callback],
    starts: Sequence[Params] | None = None,
    first: em.Evaluated | None = None,
) -> em.FitResult:
    """Run the ``n_init`` initializations in lockstep (each pass reads the data once for
    all of them); with ``state``, continue them from where they were saved; with
    ``starts`` (drawn before the scan), from those, and with ``first``, their first
    passes' points and statistics from the scan's pass (:mod:`.first_pass`).  The
    best final objective wins (the first of equals, as one after another)."""
    if state is not None:
        rng.bit_generator.state = state.rng_state
        starts = [None] * len(state.runs)
        logger.info(
            "resuming initialization%s %s after iteration%s %s",
            "s" if len(state.runs) > 1 else "",
            ", ".join(str(r + 1) for r in range(len(state.runs))),
            "s" if len(state.runs) > 1 else "",
            ", ".join(str(result.n_iter) for result in state.runs),
        )
    elif starts is None:
        (starts,) = initial_points([(estimator, estimator.n_init)], engine, scan, rng)
    rng_state = rng.bit_generator.state  # after every initialization
    runs = [
        em_run(
            estimator,
            engine,
            scan,
            start,
            resume=None if state is None else state.runs[r],
            observe=functools.partial(engine.observe, label=_run_label(0, 1, r, len(starts))),
            callbacks=callbacks,
        )
        for r, start in enumerate(starts)
    ]
    if first is None:  # else the kernels were warmed before the scan's pass
        warm_kernels(engine, runs[0].family, runs[0].result.params, scan["sample"])
    save = None
    if saver is not None:
        counts = functools.partial(_counts, engine, state)
        save = functools.partial(_save_runs, saver, rng_state, seed, counts)
    results = em.lockstep(
        engine.map_reduce,
        runs,
        iteration_scope=engine.iteration_scope,
        save=save,
        first=first,
    )
    for r, result in enumerate(results):
        logger.info("initialization %d: objective %.10g", r + 1, result.lower_bound)
    return best_of(results)


def best_of(results: Sequence[em.FitResult]) -> em.FitResult:
    """The result with the highest final objective (the first of equals)."""
    best = results[0]
    for result in results[1:]:
        if result.lower_bound > best.lower_bound:
            best = result
    return best


def em_run(
    estimator: Any,
    engine: EMEngine,
    scan: dict,
    start: Params | None,
    *,
    resume: em.FitResult | None = None,
    observe: Callable | None = None,
    callbacks: Sequence[Callback] = (),
) -> em.EMRun:
    """The EM run of ``estimator`` from ``start`` (or from ``resume``) on the engine's
    data, updating only the parameters in its ``params`` (:mod:`dask_em.estimators.held`)
    and re-seeding emptied components when the model does."""
    family = estimator._family()
    held = estimator._held_family(family, start if resume is None else resume.params)
    repair = None
    if estimator._reseeds_empty_components:
        repair = make_repair(held, scan["sample"])
    return em.EMRun(
        held,
        start if resume is None else resume.params,
        max_iter=estimator.max_iter,
        tol=estimator.tol,
        accelerate=estimator.accelerate,
        repair=repair,
        callbacks=callbacks,
        resume=resume,
        observe=observe if observe is not None else engine.observe,
        bytes_per_pass=engine.pass_bytes,
        speculate=speculates(engine),
        log=engine.log,
    )


def _save_runs(saver, rng_state: dict, seed: int, counts, results: list[em.FitResult]) -> None:
    """Checkpoint every run's state after a lockstep pass (copies: the runs go on)."""
    runs = [result.copy() for result in results]
    saver(rng_state, runs, seed, counts())


def _checkpointing(estimator: Any, path, resume: bool, data: FitData):
    """The saved state to resume from (or None) and the function that saves one."""
    if path is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint path")
        return None, None
    expected = fingerprint(estimator, data.X, data.weights)
    if resume:
        state = load_state(path, estimator, expected)
    elif os.path.exists(path):
        raise FileExistsError(
            f"the checkpoint {os.fspath(path)} exists; resume from it, or remove it"
        )
    else:
        state = None

    def save(rng_state, runs, seed, counts):
        save_state(path, estimator, FitState(seed, rng_state, runs, expected, *counts))

    return state, save
