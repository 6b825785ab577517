"""The scan pass and the first EM pass as one read of the data, where the start needs no data.

A fit reads its data first for the *scan* pass (:func:`.starts.scan`: every value
checked, the sample for initialization and re-seeding, what the model learns, such as
default priors), then once per EM pass.  Where every initialization is given (every
``*_init``, a warm start, an HMM's hand-set parameters), nothing the first EM pass
computes depends on the scan: the starts are known before it, and what a model
learns from it changes its M-step and prior, not its E-step.  Then one pass does
both (:func:`scan_with_first_pass`): each block is checked and sampled as the scan
does, and, unless it holds a value the model refuses, its E-step statistics at every
start are computed from the same read.  The fit makes one pass over the data fewer
(``n_passes_``, ``bytes_read_``); its arithmetic is unchanged, so its result equals
the two passes' bit for bit.

A fit resumed from a checkpoint does the same: its runs' next points are in the
checkpoint, so the scan it redoes (to draw the same sample) costs no pass of its own.

Bad data is still refused before any statistics are used: the merged scan raises
first, and a block with a bad value or weight skips its E-step (a kernel never sees
values the model's check refuses).  A model whose E-step depends on the scan declares
``_estep_needs_scan`` (the categorical models: their symbol count) and keeps its scan
pass alone, as does a family that needs a preliminary pass (:mod:`dask_em.preparation`).
The EM loop takes the pass's statistics only where its runs ask for exactly the points
they were computed at (:func:`dask_em.em.lockstep`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em import em
from dask_em.checkpoint import FitState
from dask_em.data import merge_scans, scan_block
from dask_em.engine import EMEngine
from dask_em.engine.speculation import speculates
from dask_em.estimators.starts import finish_scan, initial_points, scan_arguments
from dask_em.estimators.warmup import WARM_UP_ROWS, warm_kernels
from dask_em.families.base import Params
from dask_em.shared_passes import block_stats_each, merge_each


class _ScanNeeded(Exception):
    """Raised when an initialization looks at the scan (it needs the data)."""


class _NotScanned(dict):
    """The scan as the starts see it before the pass: any look at it is refused."""

    def __getitem__(self, key: str) -> Any:
        raise _ScanNeeded(key)

    def get(self, key: str, default: Any = None) -> Any:
        raise _ScanNeeded(key)


@dataclass
class Plan:
    """A fit whose first pass is also its scan: each block's scan arguments, and per
    run its start (a new fit) or its saved state (a resumed one)."""

    arguments: list[tuple[int, int, int]]
    starts: list[Params | None]
    resumes: list[em.FitResult | None]


def plan(
    estimator: Any, engine: EMEngine, rng: np.random.Generator, state: FitState | None
) -> Plan | None:
    """The :class:`Plan` when the runs' first points need no data (given starts, or a
    checkpoint's state) and the model's E-step needs no scan; else None, with ``rng``
    as it was.  The draws are those of the scan pass alone: the scan's arguments
    first, then the initializations (a resumed fit then restores its generator)."""
    if estimator._estep_needs_scan:
        return None
    if getattr(estimator._family(), "needs_preparation", False):
        return None
    before = rng.bit_generator.state
    arguments = scan_arguments(estimator, engine, rng)
    if state is not None:
        return Plan(arguments, [None] * len(state.runs), list(state.runs))
    try:
        (starts,) = initial_points([(estimator, estimator.n_init)], engine, _NotScanned(), rng)
    except _ScanNeeded:
        rng.bit_generator.state = before
        return None
    return Plan(arguments, list(starts), [None] * len(starts))


def scan_with_first_pass(
    estimator: Any, engine: EMEngine, check: Any, plan: Plan
) -> tuple[dict, em.Evaluated | None]:
    """The scan (as :func:`.starts.scan` returns it, after its checks) and, per run,
    the points it evaluates in its first pass (for a new run its start, and for Newton
    the differences of its first Jacobian too; none for a run resumed converged) with
    their merged E-step statistics, from one pass.  The statistics are computed under
    the estimator's family before it learns from the scan; None where a block skipped
    its E-step and the scan raised nothing (the EM loop then makes its first pass).
    The pass is the runs' first iteration: its dashboard span is ``iteration-<n>``, and
    their first records count its seconds."""
    family = estimator._family()
    runs = [
        _probe(estimator, engine, family, start, resume)
        for start, resume in zip(plan.starts, plan.resumes, strict=True)
    ]
    points = [run.points() if run.live else [] for run in runs]
    pairs = tuple((run.family, p) for run, ps in zip(runs, points, strict=True) for p in ps)
    if pairs:
        warm_kernels(engine, *pairs[0], np.zeros((WARM_UP_ROWS, engine.X.shape[1])))
    started = time.perf_counter()
    with engine.iteration_scope(1 + max((run.passes for run in runs if run.live), default=0)):
        scanned, stats = engine.map_reduce(
            _scan_and_estep,
            functools.partial(_merge, tuple(held for held, _ in pairs)),
            (check, pairs, engine.sequences, estimator._scan_check()),
            stage="scan",
            per_block=plan.arguments,
        )
    scanned = finish_scan(estimator, scanned, check)
    if stats is None:
        return scanned, None
    stats = iter(stats)
    return scanned, em.Evaluated([(ps, [next(stats) for _ in ps]) for ps in points], started)


def _probe(
    estimator: Any,
    engine: EMEngine,
    family: Any,
    start: Params | None,
    resume: em.FitResult | None,
) -> em.EMRun:
    """A run as the driver makes it (:func:`.driver.em_run`, without re-seeding, which
    needs the scan's sample), to ask for its first pass's points (:meth:`EMRun.points`)."""
    params = start if resume is None else resume.params
    return em.EMRun(
        estimator._held_family(family, params),
        params,
        max_iter=estimator.max_iter,
        tol=estimator.tol,
        accelerate=estimator.accelerate,
        resume=resume,
        speculate=speculates(engine),
    )


def _scan_and_estep(shared: tuple, X: Any, w: Any, *arguments: int) -> tuple:
    """One block's scan and, where it holds nothing the model refuses (a bad value or
    weight, or what ``scan_check`` raises for: values too large, say), its statistics at
    each point (``w``: the rows' weights, or the sequences' lengths, which the scan
    ignores)."""
    check, pairs, sequences, scan_check = shared
    scanned = scan_block(check, X, None if sequences else w, *arguments)
    if scanned["problem"] is not None or scanned["n_bad_weight"]:
        return scanned, None
    if scan_check is not None:
        try:
            scan_check(scanned)
        except ValueError:  # raised again by the merged scan, after the pass
            return scanned, None
    return scanned, block_stats_each(pairs, X, w)


def _merge(families: tuple, *parts: tuple) -> tuple:
    """Merge the scans, and the statistics run by run (None if a block has none)."""
    scanned = merge_scans(*(part[0] for part in parts))
    if any(part[1] is None for part in parts):
        return scanned, None
    return scanned, merge_each(families, *(part[1] for part in parts))
