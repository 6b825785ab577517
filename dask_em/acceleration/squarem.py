"""SQUAREM: squared extrapolation of EM (Varadhan and Roland 2008, Scand. J. Stat. 35,
335-353), globally safeguarded and monotone, as an ask/tell driver.

A cycle starts from three consecutive EM iterates x, x1 = F(x), x2 = F(x1) (x and x1
evaluated, x2 the image of x1's pass), in the unconstrained coordinates u(.) of
:mod:`dask_em.acceleration.parameter_maps`:

    r = u(x1) - u(x),   v = u(x2) - 2 u(x1) + u(x)                      (paper, eq. 7)
    s = ||r|| / ||v||                                                   (S3, sec. 5)
    x' = u^-1( u(x) + 2 s r + s^2 v )                                   (eq. 9, alpha = -s)

s = 1 gives x2, the plain EM point.  Safeguards, following ``squarem1`` of the SQUAREM
R package (adaptive maximum step, ``mstep = 4``), made strictly monotone:

- ``1 <= s <= step_max``: never short of plain EM; ``step_max`` starts at
  ``step_max0`` and is multiplied by ``mstep`` whenever a step at ``step_max`` is taken
  (an accepted extrapolation, or the plain step while ``step_max`` is 1).
- x' is *rejected* when it is infeasible (it overflows the map; known before any pass)
  or, once evaluated, ``L(x') < L(x1)``, the objective of the last EM point.  A rejected
  step at ``step_max`` divides ``step_max`` by ``mstep`` (not below ``step_max0``); the
  step backs off toward plain EM, ``s <- (s + 1) / 2`` (the paper's alpha <- (alpha -
  1) / 2), at most ``max_backtracks`` times after evaluated rejections (each costs a
  pass) and as often as needed after infeasible ones (free), and then x2 is taken.
- ``s <= 1.01``: x2 itself is taken (as the package, which skips stabilization there).
- Stabilization: after an accepted x' the next point is F(x') and the next cycle starts
  from F(x') (x' is never a base); after x2 the window slides, x1, x2, F(x2).

So an accepted x' has ``L(x') >= L(x1)``, and every other accepted point is an EM image
of the one before: accepted objectives never decrease.  A cycle costs three passes
(F(x'), F(F(x')), x'), one more per evaluated rejection, except where the loop
speculates (:meth:`~dask_em.acceleration.driver.PlainEM.speculative`): after a
rejection, x2 is evaluated in the same pass as the next x', and taken at once if x' is
rejected again.

Convergence (``tol``) is tested on plain EM steps only (:mod:`dask_em.acceleration.driver`):
an extrapolation may land anywhere along its path, so its change says nothing about
how close the run is; an EM step's change means what it means for plain EM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dask_em.acceleration.coordinates import InfeasiblePoint
from dask_em.acceleration.driver import (
    MONOTONE_TOLERANCE,
    AcceptedPoint,
    EMState,
    PlainEM,
    Repair,
)
from dask_em.acceleration.parameter_maps import ParameterMap
from dask_em.families.base import Params, Stats

#: Step lengths within this of 1 take the plain EM point (SQUAREM's ``abs(alpha - 1) > 0.01``).
NEAR_PLAIN = 0.01

MapFactory = Callable[[Sequence[Params]], ParameterMap]


@dataclass(frozen=True)
class _Cycle:
    """One extrapolation: the map built from x, x1, x2 and the vectors of eq. 9."""

    mapping: ParameterMap
    base: np.ndarray  # u(x)
    r: np.ndarray
    v: np.ndarray
    plain: Params  # x2

    def point(self, step: float) -> Params:
        return self.mapping.to_params(self.base + 2.0 * step * self.r + step**2 * self.v)


class Squarem(PlainEM):
    """SQUAREM-accelerated EM (module docstring), driven by ask/tell like :class:`PlainEM`.

    Parameters
    ----------
    params : the first point to evaluate.
    parameter_map : ``points -> ParameterMap``, e.g.
        ``functools.partial(parameter_map, family)``.
    tol, repair, resume : as :class:`PlainEM`.
    step_max0 : initial maximum step length (SQUAREM's ``step.max0``).
    mstep : factor by which the maximum step length grows and shrinks.
    max_backtracks : back-offs after evaluated rejections before taking x2.
    """

    def __init__(
        self,
        params: Params,
        parameter_map: MapFactory,
        *,
        tol: float,
        repair: Repair | None = None,
        step_max0: float = 1.0,
        mstep: float = 4.0,
        max_backtracks: int = 0,
        resume: EMState | None = None,
        monotone_tolerance: float = MONOTONE_TOLERANCE,
    ) -> None:
        if step_max0 < 1.0 or mstep < 1.0:
            raise ValueError("step_max0 and mstep must be at least 1")
        self.parameter_map = parameter_map
        parameter_map([params if resume is None else resume.params])  # refuse early
        self.step_max0 = step_max0
        self.mstep = mstep
        self.max_backtracks = max_backtracks
        self._step_max = step_max0
        self._cycle: _Cycle | None = None
        self._step = 1.0
        self._backtracks_left = max_backtracks
        super().__init__(
            params, tol=tol, repair=repair, resume=resume, monotone_tolerance=monotone_tolerance
        )

    @property
    def step_max(self) -> float:
        return self._step_max

    def _restore_step(self, last: AcceptedPoint) -> None:
        self._step_max = last.step_max

    def _next_chain(
        self, accepted: Params, previous_image: Params, kind: str, changed: tuple[int, ...]
    ) -> list[Params]:
        """The last two accepted points linked by plain EM steps; emptied after a
        repaired image (no EM image) or an extrapolated point (not the base of the next
        extrapolation: the stabilizing EM step comes first)."""
        if changed or kind != "em":
            return []
        return [*self._chain, accepted][-2:]

    # -- choosing the next point ----------------------------------------------------
    def _plan_next(self) -> None:
        self._cycle = None
        if len(self._chain) < 2:
            super()._plan_next()
            return
        x, x1 = self._chain
        x2 = self._image
        mapping = self.parameter_map([x, x1, x2])
        u, u1, u2 = (mapping.to_vector(p) for p in (x, x1, x2))
        r = u1 - u
        v = u2 - 2.0 * u1 + u
        r_norm, v_norm = float(np.linalg.norm(r)), float(np.linalg.norm(v))
        if r_norm == 0.0:
            step = 1.0
        elif v_norm == 0.0:
            step = self._step_max
        else:
            step = r_norm / v_norm
        self._cycle = _Cycle(mapping, u, r, v, x2)
        self._backtracks_left = self.max_backtracks
        self._propose(min(self._step_max, max(1.0, step)))

    def _propose(self, step: float) -> None:
        """Make the point at ``step`` pending; back off while it is infeasible."""
        while step - 1.0 > NEAR_PLAIN:
            try:
                candidate = self._cycle.point(step)
            except InfeasiblePoint:
                step = self._back_off(step, evaluated=False)
                continue
            self._pending, self._pending_kind, self._step = candidate, "extrapolated", step
            return
        # the plain EM point x2: the cycle resolves with s = 1
        if self._step_max == 1.0:
            self._step_max *= self.mstep
        self._pending, self._pending_kind, self._step = self._cycle.plain, "em", 1.0
        self._cycle = None

    def _back_off(self, step: float, *, evaluated: bool) -> float:
        """The step after a rejection at ``step`` (module docstring)."""
        if step == self._step_max:
            self._step_max = max(self.step_max0, self._step_max / self.mstep)
        if evaluated:
            if self._backtracks_left <= 0:
                return 1.0
            self._backtracks_left -= 1
        return (step + 1.0) / 2.0

    def _fallback_point(self) -> Params | None:
        """x2, when a rejection takes it (no back-off left); a backed-off step's point
        depends on the step the rejection leaves, so it is not guessed."""
        if self._cycle is None or self._backtracks_left > 0:
            return None
        return self._cycle.plain

    # -- the result of an extrapolated pass -----------------------------------------
    def _tell_extrapolated(
        self, objective: float, image: Params, stats: Stats
    ) -> AcceptedPoint | None:
        last = self.history[-1].objective
        if not (math.isfinite(objective) and objective >= last):
            self._propose(self._back_off(self._step, evaluated=True))
            return None
        if self._step == self._step_max:
            self._step_max *= self.mstep
        self._cycle = None
        return self._accept(objective, image, stats, kind="extrapolated", step=self._step)
