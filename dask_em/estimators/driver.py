"""The fit driver: everything a fit does around the EM loop, for every model.

One fit is: a checkpoint to resume from (or none); the engine over the data; the *scan*
pass (every block checked, the initialization sample drawn from across all blocks);
what the model learns from the scan (symbol counts, default priors); then ``n_init``
initializations, each an *init* pass and EM (:func:`dask_em.em.run`), with repair
(re-seeding emptied components) and a checkpoint after every iteration; the best run
wins.  The driver talks to the estimator through a few hooks
(:class:`~dask_em.estimators.base.Estimator`), to the engine through its passes, and
never to Dask itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em import em
from dask_em.acceleration import check_accelerate
from dask_em.checkpoint import FitState, fingerprint, load_state, save_state
from dask_em.data import ValueCheck, merge_scans, raise_for_scan_problems, scan_block
from dask_em.engine import EMEngine
from dask_em.exceptions import EmptyComponentWarning
from dask_em.families.base import Params, Stats
from dask_em.initialization import init_block_stats, initial_centers
from dask_em.seeds import blockwise_seeds, seed_from

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
    with verbose_logging(estimator.verbose):
        engine = EMEngine(
            data.X,
            data.weights,
            lengths=data.lengths,
            model=estimator._model_name,
            cache=estimator.cache,
            local=data.local,
            client=estimator.client,
        )
        placement = "local" if data.local else "memory" if engine.persisted else "stream"
        try:
            with engine.fit_span(
                estimator=type(estimator).__name__,
                n_samples=n_samples,
                n_features=n_features,
                data_placement=placement,
                max_iter=estimator.max_iter,
                resumed_at=max(r.n_iter for r in state.runs) if state is not None else 0,
            ) as fit_end:
                scan = _scan(estimator, engine, rng, data.check)
                estimator._learn_from_scan(scan)
                best = _restarts(
                    estimator,
                    engine,
                    scan,
                    rng,
                    seed,
                    state=state,
                    saver=saver,
                    callbacks=callbacks,
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


# -- passes over the data ----------------------------------------------------------------
def _without_lengths(block_func, shared, X, lengths, *args):
    """Run a block function of rows on a block of sequences, ignoring the lengths."""
    return block_func(shared, X, None, *args)


def _rows_pass(engine: EMEngine, block_func):
    """``block_func(shared, X, w, ...)`` as the engine runs it over this data: sequence
    data has lengths where rows have weights, and the scan and init passes ignore them."""
    return functools.partial(_without_lengths, block_func) if engine.sequences else block_func


def _scan(estimator: Any, engine: EMEngine, rng: np.random.Generator, check) -> dict:
    """The scan pass: every block checked, the initialization sample drawn."""
    sizes = np.asarray(engine.block_rows)
    total = min(int(sizes.sum()), estimator.init_sample_size)
    picks = rng.multivariate_hypergeometric(sizes, total)
    seeds = blockwise_seeds(int(rng.integers(2**63 - 1)), engine.n_blocks)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    per_block = list(zip(picks.tolist(), seeds, offsets, strict=True))
    scan = engine.map_reduce(
        _rows_pass(engine, scan_block), merge_scans, check, stage="scan", per_block=per_block
    )
    raise_for_scan_problems(scan, check)
    if scan["n_all_missing"]:
        warnings.warn(
            estimator._all_missing_message(scan["n_all_missing"]), UserWarning, stacklevel=5
        )
    sample = scan["sample"]
    scan["fill"] = None
    if np.isnan(sample).any():  # initialization and re-seeding need complete rows
        fill = np.nan_to_num(_nanmean_columns(sample))
        scan["sample"] = np.where(np.isnan(sample), fill, sample)
        scan["fill"] = fill
    return scan


@dataclass
class InitRequest:
    """What one initialization's init pass needs, drawn from the fit's generator: the
    family, the shared block argument (centres) and one responsibility seed per block."""

    family: Any
    shared: dict
    seeds: list[int]


class _PassNeeded(Exception):
    """Raised from the init hook in the drawing round (see :func:`initial_points`)."""


def draw_init(
    estimator: Any, engine: EMEngine, scan: dict, rng: np.random.Generator, family
) -> InitRequest:
    """Centres on the scan sample and the blocks' seeds: every draw of an init pass."""
    features = family.init_features(scan["sample"])
    centers = initial_centers(
        estimator._init_method(), features, scan["sample_weight"], estimator.n_components, rng
    )
    shared = {
        "family": family,
        "centers": centers,
        "n_components": estimator.n_components,
        "fill": scan["fill"],
    }
    seeds = blockwise_seeds(int(rng.integers(2**63 - 1)), engine.n_blocks)
    return InitRequest(family, shared, seeds)


def init_passes(engine: EMEngine, requests: Sequence[InitRequest], sample) -> list[Params]:
    """One pass of responsibilities for every request (each block read once), then each
    request's M-step, repaired: no component starts empty."""
    if len(requests) == 1:
        (request,) = requests
        stats = [
            engine.map_reduce(
                _rows_pass(engine, init_block_stats),
                request.family.merge,
                request.shared,
                stage="init",
                per_block=[(s,) for s in request.seeds],
            )
        ]
    else:
        families = tuple(request.family for request in requests)
        stats = engine.map_reduce(
            _rows_pass(engine, _init_block_stats_each),
            functools.partial(em.merge_each, families),
            tuple(request.shared for request in requests),
            stage="init",
            per_block=list(zip(*(request.seeds for request in requests), strict=True)),
        )
    points = []
    for request, request_stats in zip(requests, stats, strict=True):
        params = request.family.m_step(request_stats)
        params, _ = make_repair(request.family, sample)(params, request_stats)
        points.append(params)
    return points


def _init_block_stats_each(shared: tuple, X, w, *seeds: int) -> tuple:
    """Init-pass statistics of one block for several initializations (one read)."""
    return tuple(init_block_stats(one, X, w, seed) for one, seed in zip(shared, seeds, strict=True))


def initial_points(
    candidates: Sequence[tuple[Any, int]],
    engine: EMEngine,
    scan: dict,
    rng: np.random.Generator,
) -> list[list[Params]]:
    """The starting parameters of ``n`` initializations of each ``(estimator, n)``, in
    order, with one init pass over the data for all of them.

    Each initialization draws from ``rng`` exactly as if they ran one after another
    (the estimator's ``_initial_params`` draws everything before its init pass): a
    first round draws and collects the passes needed, one pass serves them all, and a
    second round replays each initialization from its generator state with the pass's
    result.  A warm start takes the fitted parameters.
    """
    plans: list[list[Any]] = []  # [estimator, generator state, request, parameters]
    for estimator, n in candidates:
        if estimator.warm_start and estimator._is_fitted():
            plans.append([estimator, None, None, estimator._fitted_params()])
            continue
        for _ in range(n):
            before = rng.bit_generator.state
            drawn: list[InitRequest] = []

            def collect(family, estimator=estimator, drawn=drawn):
                drawn.append(draw_init(estimator, engine, scan, rng, family))
                raise _PassNeeded

            try:
                plans.append(
                    [estimator, before, None, estimator._initial_params(collect, scan, rng)]
                )
            except _PassNeeded:
                plans.append([estimator, before, drawn[0], None])
    after = rng.bit_generator.state
    pending = [plan for plan in plans if plan[3] is None]
    if pending:
        computed = init_passes(engine, [plan[2] for plan in pending], scan["sample"])
        for plan, params in zip(pending, computed, strict=True):
            estimator, before = plan[0], plan[1]
            rng.bit_generator.state = before

            def replay(family, estimator=estimator, params=params):
                draw_init(estimator, engine, scan, rng, family)  # the same draws again
                return params

            plan[3] = estimator._initial_params(replay, scan, rng)
        rng.bit_generator.state = after
    points: list[list[Params]] = [[] for _ in candidates]
    index = {id(estimator): i for i, (estimator, _) in enumerate(candidates)}
    for plan in plans:
        points[index[id(plan[0])]].append(plan[3])
    return points


def make_repair(family, sample: np.ndarray) -> em.Repair:
    """Re-seed emptied components on the sample rows the model explains worst."""

    def repair(params: Params, stats: Stats) -> tuple[Params, tuple[int, ...]]:
        empty = family.empty_components(stats)
        if empty.size == 0:
            return params, ()
        warnings.warn(
            f"component(s) {empty.tolist()} lost all their data and were re-seeded on "
            "the sample rows the model explained worst",
            EmptyComponentWarning,
            stacklevel=2,
        )
        return family.reseed(params, empty, sample), tuple(int(k) for k in empty)

    return repair


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
) -> em.FitResult:
    """Run the ``n_init`` initializations in lockstep (each pass reads the data once for
    all of them); with ``state``, continue them from where they were saved.  The best
    final objective wins (the first of equals, as one after another)."""
    if state is not None:
        rng.bit_generator.state = state.rng_state
        starts: list[Params | None] = [None] * len(state.runs)
        logger.info(
            "resuming initialization%s %s after iteration%s %s",
            "s" if len(state.runs) > 1 else "",
            ", ".join(str(r + 1) for r in range(len(state.runs))),
            "s" if len(state.runs) > 1 else "",
            ", ".join(str(result.n_iter) for result in state.runs),
        )
    else:
        (starts,) = initial_points([(estimator, estimator.n_init)], engine, scan, rng)
    rng_state = rng.bit_generator.state  # after every initialization
    runs = [
        em_run(
            estimator,
            engine,
            scan,
            start,
            resume=None if state is None else state.runs[r],
            observe=functools.partial(engine.observe, restart=(r + 1, len(starts))),
            callbacks=callbacks,
        )
        for r, start in enumerate(starts)
    ]
    save = None
    if saver is not None:
        counts = functools.partial(_counts, engine, state)
        save = functools.partial(_save_runs, saver, rng_state, seed, counts)
    results = em.lockstep(
        engine.map_reduce, runs, iteration_scope=engine.iteration_scope, save=save
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
        log=engine.log,
    )


def _save_runs(saver, rng_state: dict, seed: int, counts, results: list[em.FitResult]) -> None:
    """Checkpoint every run's state after a lockstep pass (copies: the runs go on)."""
    runs = [
        em.FitResult(
            result.params,
            list(result.history),
            result.converged,
            result.n_iter,
            result.lower_bound,
            result.chain,
            result.passes,
        )
        for result in results
    ]
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


def _nanmean_columns(sample: np.ndarray) -> np.ndarray:
    """Column means over the observed entries (0 for a column with none)."""
    observed = ~np.isnan(sample)
    totals = np.where(observed, sample, 0.0).sum(axis=0)
    return totals / np.maximum(observed.sum(axis=0), 1)
