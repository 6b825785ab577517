"""Running a driver with one callable per pass, and building that callable.

``evaluate(params) -> (objective, image, stats)`` is one pass over the data: the
E-step's statistics at ``params`` give the penalized mean objective there, and the
M-step gives the plain EM image F(params).  :func:`family_evaluate` builds it from a
family and any function that computes a pass's merged statistics: a NumPy array in this
process, or :meth:`dask_em.engine.EMEngine.map_reduce` on a cluster.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from dask_em.acceleration.daarem import Daarem
from dask_em.acceleration.driver import (
    TRIAL_POINT_ERRORS,
    AcceptedPoint,
    EMState,
    PlainEM,
    Repair,
    monotone_tolerance_of,
)
from dask_em.acceleration.newton import EMNewton
from dask_em.acceleration.parameter_maps import parameter_map
from dask_em.acceleration.squarem import Squarem
from dask_em.families.base import Params, Stats

#: What an estimator's ``accelerate`` may be: None (plain EM) or a method's name.
ACCELERATE_METHODS = (None, "squarem", "daarem", "newton")

Evaluate = Callable[[Params], tuple[float, Params, Stats]]


def make_driver(
    accelerate: str | None,
    family: Any,
    params: Params,
    *,
    tol: float,
    repair: Repair | None = None,
    resume: EMState | None = None,
) -> PlainEM:
    """The driver for ``accelerate`` (one of :data:`ACCELERATE_METHODS`) on ``family``.

    Raises ValueError for an unknown method, a family SQUAREM cannot extrapolate (the
    HMM's sampling E-step; :func:`check_accelerate` says so before any pass), or, for
    ``"newton"``, a model with more coordinates than it measures in a pass.
    """
    # a float32 fit's objective moves by its rounding: the family's own tolerance
    monotone = monotone_tolerance_of(family)
    if accelerate is None:
        return PlainEM(params, tol=tol, repair=repair, resume=resume, monotone_tolerance=monotone)
    drivers = {"squarem": Squarem, "daarem": Daarem, "newton": EMNewton}
    if accelerate in drivers:
        return drivers[accelerate](
            params, functools.partial(parameter_map, family), tol=tol, repair=repair,
            resume=resume, monotone_tolerance=monotone,
        )  # fmt: skip
    raise ValueError(f"accelerate must be one of {ACCELERATE_METHODS}, got {accelerate!r}")


def check_accelerate(accelerate: str | None, estep: str = "exact") -> None:
    """Refuse, before any work, what :func:`make_driver` would refuse after the scan."""
    if accelerate not in ACCELERATE_METHODS:
        raise ValueError(f"accelerate must be one of {ACCELERATE_METHODS}, got {accelerate!r}")
    if accelerate is not None and estep != "exact":
        raise ValueError(
            f"accelerate={accelerate!r} needs the exact E-step, not estep={estep!r}: the "
            "sampled objective is noisy, so a worse extrapolation cannot be told from "
            "noise; use estep='exact', or accelerate=None"
        )


def family_evaluate(family: Any, pass_stats: Callable[[Params], Stats]) -> Evaluate:
    """``evaluate`` from a family (``objective``, ``m_step``) and ``pass_stats(params)``,
    the merged statistics of one pass at ``params``."""

    def evaluate(params: Params) -> tuple[float, Params, Stats]:
        stats = pass_stats(params)
        return family.objective(stats, params), family.m_step(stats), stats

    return evaluate


def run_em(
    driver: PlainEM,
    evaluate: Evaluate,
    *,
    max_passes: int,
    callbacks: Sequence[Callable[[AcceptedPoint, EMState], None]] = (),
) -> PlainEM:
    """Drive ``driver`` until it converges or has made ``max_passes`` passes in all.

    ``callbacks(point, state)`` run after every accepted point (log lines, checkpoints
    of ``state``, from which a new driver resumes with ``resume=state``).
    """
    while not driver.converged and driver.passes < max_passes:
        objective, image, stats = evaluate(driver.ask())
        companions = [_companion(evaluate, p) for p in driver.companions()]  # one call each
        point = driver.tell(objective, image, stats, companions=companions)
        if point is not None:
            for callback in callbacks:
                callback(point, driver.state)
    return driver


def _companion(evaluate: Evaluate, params: Params) -> tuple[float, Params | None, Stats | None]:
    """``evaluate`` at a companion point; ``(-inf, None, None)`` where it fails there (a
    trial point far out, whose M-step finds a component without weight): the driver
    passes over it (as :meth:`dask_em.em.EMRun.tell_points` does)."""
    try:
        return evaluate(params)
    except TRIAL_POINT_ERRORS:
        return -math.inf, None, None
