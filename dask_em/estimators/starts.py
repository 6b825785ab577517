"""The passes before EM: the scan pass, and the initializations with their init pass.

The *scan* pass checks every block and draws the sample that initialization and
re-seeding work on; the *init* pass computes each initialization's first M-step from
responsibilities around its centres.  :func:`initial_points` draws every
initialization of a fit (all restarts, all candidates of a sweep) in order and serves
their init passes with one pass over the data.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em import em
from dask_em.data import merge_scans, raise_for_scan_problems, scan_block
from dask_em.engine import EMEngine
from dask_em.exceptions import EmptyComponentWarning
from dask_em.families.base import Params, Stats
from dask_em.initialization import init_block_stats, initial_centers
from dask_em.seeds import blockwise_seeds
from dask_em.shared_passes import merge_each


def _without_lengths(block_func, shared, X, lengths, *args):
    """Run a block function of rows on a block of sequences, ignoring the lengths."""
    return block_func(shared, X, None, *args)


def _rows_pass(engine: EMEngine, block_func):
    """``block_func(shared, X, w, ...)`` as the engine runs it over this data: sequence
    data has lengths where rows have weights, and the scan and init passes ignore them."""
    return functools.partial(_without_lengths, block_func) if engine.sequences else block_func


def scan(estimator: Any, engine: EMEngine, rng: np.random.Generator, check) -> dict:
    """The scan pass: every block checked, the initialization sample drawn."""
    scan = engine.map_reduce(
        _rows_pass(engine, scan_block),
        merge_scans,
        check,
        stage="scan",
        per_block=scan_arguments(estimator, engine, rng),
    )
    return finish_scan(estimator, scan, check)


def scan_arguments(
    estimator: Any, engine: EMEngine, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Each block's ``(rows to draw, seed, first row)`` for :func:`scan_block`, drawn
    from ``rng`` (the first draws of a fit)."""
    sizes = np.asarray(engine.block_rows)
    total = min(int(sizes.sum()), estimator.init_sample_size)
    picks = rng.multivariate_hypergeometric(sizes, total)
    seeds = blockwise_seeds(int(rng.integers(2**63 - 1)), engine.n_blocks)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    return list(zip(picks.tolist(), seeds, offsets, strict=True))


def finish_scan(estimator: Any, scan: dict, check) -> dict:
    """The merged scan: bad values or weights raised, rows with every feature missing
    warned about, and the sample's NaN filled (``fill``: the column means used, or None)."""
    raise_for_scan_problems(scan, check)
    scan["sample"] = np.asarray(scan["sample"], dtype=np.float64)  # float32 rows: exact
    if scan["n_all_missing"]:
        warnings.warn(
            estimator._all_missing_message(scan["n_all_missing"]), UserWarning, stacklevel=6
        )
    if scan["n_nan"] and estimator._row_order() is not None:
        _sample_in_value_order(scan)
    sample = scan["sample"]
    scan["fill"] = None
    # initialization and re-seeding need complete rows, and the init pass a fill for NaN
    # anywhere in the data, also where the sample drew none of them
    if scan["n_nan"] or np.isnan(sample).any():
        fill = np.nan_to_num(_nanmean_columns(sample))
        scan["sample"] = np.where(np.isnan(sample), fill, sample)
        scan["fill"] = fill
    return scan


def _sample_in_value_order(scan: dict) -> None:
    """The sample's rows (and weights) sorted by their values, first feature first, NaN
    last, then by weight.  Where blocks are read in a model's row order
    (:mod:`dask_em.engine.row_order`), the order a block's rows come in depends on how
    the rows are cut into blocks; sorted, a sample of every row (data smaller than
    ``init_sample_size``) is the same however the data is chunked, and so is the start
    that k-means draws from it."""
    sample, weights = scan["sample"], np.asarray(scan["sample_weight"], dtype=np.float64)
    order = np.lexsort((weights, *sample.T[::-1]))
    scan["sample"], scan["sample_weight"] = sample[order], weights[order]


@dataclass
class InitRequest:
    """What one initialization's init pass needs, drawn from the fit's generator: the
    family, the shared block argument (centres) and one responsibility seed per block."""

    family: Any
    shared: dict
    seeds: list[int]


@dataclass
class _Draw:
    """One :func:`draw_init` of the drawing round and the generator's state around it:
    the replay round takes the state after it instead of running k-means again."""

    state_before: dict
    request: InitRequest
    state_after: dict


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
            functools.partial(merge_each, families),
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
    result (skipping over the centres' draws: the generator is set to the state after
    them, without running k-means again).  A warm start takes the fitted parameters.
    """
    plans: list[list[Any]] = []  # [estimator, generator state, _Draw, parameters]
    for estimator, n in candidates:
        if estimator.warm_start and estimator._is_fitted():
            plans.append([estimator, None, None, estimator._fitted_params()])
            continue
        for _ in range(n):
            before = rng.bit_generator.state
            drawn: list[_Draw] = []

            def collect(family, estimator=estimator, drawn=drawn):
                state = rng.bit_generator.state
                request = draw_init(estimator, engine, scan, rng, family)
                drawn.append(_Draw(state, request, rng.bit_generator.state))
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
        computed = init_passes(engine, [plan[2].request for plan in pending], scan["sample"])
        for plan, params in zip(pending, computed, strict=True):
            estimator, before = plan[0], plan[1]
            rng.bit_generator.state = before

            def replay(family, estimator=estimator, params=params, draw=plan[2]):
                if rng.bit_generator.state == draw.state_before:
                    rng.bit_generator.state = draw.state_after  # as if drawn again
                else:  # an estimator whose draws differ between the rounds
                    draw_init(estimator, engine, scan, rng, family)
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


def _nanmean_columns(sample: np.ndarray) -> np.ndarray:
    """Column means over the observed entries (0 for a column with none)."""
    observed = ~np.isnan(sample)
    totals = np.where(observed, sample, 0.0).sum(axis=0)
    return totals / np.maximum(observed.sum(axis=0), 1)
