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
                resumed_at=state.current.n_iter if state is not None else 0,
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


def init_pass(
    estimator: Any, engine: EMEngine, scan: dict, rng: np.random.Generator, family
) -> Params:
    """Centres on the scan sample, then one pass of responsibilities and an M-step of
    ``family`` (repaired: no component starts empty)."""
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
    stats = engine.map_reduce(
        _rows_pass(engine, init_block_stats),
        family.merge,
        shared,
        stage="init",
        per_block=[(s,) for s in seeds],
    )
    params = family.m_step(stats)
    params, _ = make_repair(family, scan["sample"])(params, stats)
    return params


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
    """Run the initializations; with ``state``, continue the one it was saved in."""
    family = estimator._family()
    repair = make_repair(family, scan["sample"]) if estimator._reseeds_empty_components else None
    warm = estimator.warm_start and estimator._is_fitted()
    best: em.FitResult | None = state.best if state is not None else None
    first = state.attempt if state is not None else 0
    for attempt in range(first, 1 if warm else estimator.n_init):
        resume = None
        if state is not None and attempt == state.attempt:
            rng.bit_generator.state = state.rng_state
            params, resume = None, state.current
            logger.info("resuming initialization %d after iteration %d", attempt + 1, resume.n_iter)
        elif warm:
            params = estimator._fitted_params()
        else:
            params = estimator._initial_params(
                functools.partial(init_pass, estimator, engine, scan, rng), scan, rng
            )
        # EM updates only the parameters in the estimator's ``params`` (estimators.held)
        held = estimator._held_family(family, params if resume is None else resume.params)
        save = None
        if saver is not None:
            save = _saver_hook(
                saver, attempt, rng, best, seed, functools.partial(_counts, engine, state)
            )
        result = em.run(
            engine.map_reduce,
            held,
            params,
            max_iter=estimator.max_iter,
            tol=estimator.tol,
            accelerate=estimator.accelerate,
            repair=None if repair is None else make_repair(held, scan["sample"]),
            callbacks=callbacks,
            save=save,
            resume=resume,
            iteration_scope=engine.iteration_scope,
            observe=engine.observe,
            bytes_per_pass=engine.pass_bytes,
            log=engine.log,
        )
        logger.info("initialization %d: objective %.10g", attempt + 1, result.lower_bound)
        if best is None or result.lower_bound > best.lower_bound:
            best = result
    return best


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

    def save(attempt, rng_state, current, best, seed, counts):
        state = FitState(seed, attempt, rng_state, current, best, expected, *counts)
        save_state(path, estimator, state)

    return state, save


def _saver_hook(saver, attempt, rng, best, seed, counts) -> Callable[[em.FitResult], None]:
    """The hook that checkpoints the loop state after each accepted point."""
    rng_state = rng.bit_generator.state  # right after this attempt's initialization

    def save(result: em.FitResult) -> None:
        current = em.FitResult(
            result.params,
            list(result.history),
            result.converged,
            result.n_iter,
            result.lower_bound,
            result.chain,
            result.passes,
        )
        saver(attempt, rng_state, current, best, seed, counts())

    return save


def _nanmean_columns(sample: np.ndarray) -> np.ndarray:
    """Column means over the observed entries (0 for a column with none)."""
    observed = ~np.isnan(sample)
    totals = np.where(observed, sample, 0.0).sum(axis=0)
    return totals / np.maximum(observed.sum(axis=0), 1)
