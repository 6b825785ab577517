"""Newton's method on EM's fixed point, with the EM map's Jacobian measured in the pass.

EM is a fixed-point iteration x = F(x).  Near its fixed point, with J the Jacobian of F
(Dempster, Laird and Rubin's rate matrix; 1 - its largest eigenvalue is EM's rate),
Newton's method for F(x) - x = 0 gives the multivariate Aitken step of Louis (1982,
J. R. Stat. Soc. B 44, 226-233, eq. 3.1), in the unconstrained coordinates u(.) of
:mod:`dask_em.acceleration.parameter_maps`:

    u' = u(x) + (I - J)^-1 (u(F(x)) - u(x))

which converges quadratically where plain EM crawls at rate 1 - eps.  Far from the
fixed point the step can go anywhere (I - J need not be positive definite there), so
each pass tries a path from the EM step to the Newton step,

    d(lam) = (I - (1 - lam) J)^-1 r,   r = u(F(x)) - u(x),   lam in ``damping``

(lam = 1 is the EM step, lam = 0 Newton's), as a trust region would, but all of it in
one pass.  J is measured as Meng and Rubin's SEM algorithm does (1991, J. Am. Stat. Assoc.
86, 899-909): by forward differences of F, one E-step per coordinate at a point
u + h_j e_j, h_j = ``relative_step`` * max(1, |u_j|), beside the other points of the
same pass (:class:`_Differences`: not every coordinate needs one).  A pass over the
data therefore evaluates, each block read once:

- F(x), the EM point (``ask``), whose objective change decides convergence as for plain
  EM (:mod:`dask_em.acceleration.driver`);
- the candidates u(x) + d(lam) (:meth:`EMNewton.companions`), when a Jacobian is known;
- the m points of the differences around the *centre*: the candidate whose lam was
  taken in the last pass (the step the run is likely to take again), or F(x).

Of F(x) and the candidates, the one with the highest objective is taken (F(x) on ties;
every one taken has L >= L(F(x)) >= L(x), so accepted objectives never decrease).
The run has converged when neither the EM step nor the best candidate changes the
objective by ``tol``: F(x) is then taken, an EM step of change below ``tol``, as the
loop's rule asks (:mod:`dask_em.acceleration.driver`).  Testing the EM step alone would
stop where EM crawls and Newton's step still moves: on the concentration-10
categorical mixture of ``benchmarks/passes.py --variants`` at ``tol=1e-8``, after 18
passes and 2e-2 from the optimum, against 28 passes and 4e-3 with both tested.
The Jacobian of the pass's centre then serves the next pass; when the point taken is
another candidate, Broyden's rank-one secant update (``J += (y - J s) s^T / s^T s``,
s and y the differences of the two points and of their images) moves it there.

Cost: one pass a step, but up to 1 + len(``damping``) + m E-steps in it, m the
coordinates differenced: n less one per probability row (the centred log-ratios of a
row sum to zero, so its last column is minus the sum of the others) and less the held
ones (``params=``) and the HMM's emission weights (their columns are 0).  E.g.
m = 14 of n = 21 for a 3-state one-feature Gaussian HMM, 56 of 75 for a 3-component
categorical mixture of 6 features with 4 symbols.  That pays where reading the data
costs more than those E-steps (a store streamed from disk or object storage, small
models); models with m above
``max_coordinates`` are refused (:func:`check_coordinates`; the estimators refuse
before any pass a model whose coordinates countable without the data exceed it: a
Gaussian's means and covariances, an HMM's chain).  On
``benchmarks/passes.py`` it reached the optimum in 0.003-0.103 of plain EM's passes
on the slow problems (README, Benchmarks).

Which optimum: the candidates leave EM's path in directions EM does not take, so where
the likelihood has several local optima a run may end at another one than plain EM from
the same start (``benchmarks/optima.py``: 13 of 60 draws of a multimodal mixture, 6 of
them at a lower objective, where SQUAREM and DAAREM ended with plain EM in all 60).

State: the last accepted point x is the chain (F(x) is ``params``); the Jacobian and the
centre's lam are :attr:`EMState.arrays`, so a resumed run proposes exactly what the
uninterrupted one does.  A re-seeded image (the repair hook) drops the Jacobian: the
next pass measures one again before any candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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

MapFactory = Callable[[Sequence[Params]], ParameterMap]

#: lam of the candidates: Newton's step (0), then ever closer to the EM step (1).
DAMPING = (0.0, 0.01, 0.03, 0.1, 0.3, 0.6, 0.9)
#: The centre's lam when the differences are around F(x) (no candidate was taken).
NO_CENTRE = -1.0
#: The most coordinates differenced (E-steps added to every pass) that a model may have.
MAX_COORDINATES = 256


def check_coordinates(
    count: int, model: str = "this model", limit: int = MAX_COORDINATES, *, at_least: bool = False
) -> None:
    """Refuse ``count`` coordinates to difference above ``limit`` (ValueError naming
    both, and the other methods); ``at_least``: ``count`` is a lower bound."""
    if count > limit:
        counted = f"{count} or more" if at_least else f"{count}"
        raise ValueError(
            f"accelerate='newton' evaluates one E-step per free coordinate of the model in "
            f"every pass; {model} has {counted} (at most {limit}): use "
            "accelerate='squarem' or 'daarem'"
        )


@dataclass(frozen=True)
class _Candidate:
    damping: float  # lam
    point: Params
    length: float  # ||d(lam)|| / ||r||: the step against the EM step's


@dataclass(frozen=True)
class _Differences:
    """The forward differences of one pass around a centre with n coordinates: the
    points ``centre + h_j e_j`` for the ``columns`` j that need an E-step.  The others
    need none: a held coordinate (an M-step that keeps a field, ``params=``) moves no
    point, and EM's image does not read an unread one (the HMM's emission weights,
    :attr:`ParameterMap.unread`), so their columns are 0; in each probability row
    (centred log-ratios sum to zero) the last free coordinate's column is minus the sum
    of the row's others."""

    size: int  # n
    columns: np.ndarray  # (m,) int: the coordinates differenced, m <= n
    steps: np.ndarray  # (m,) h_j
    points: tuple[Params, ...]  # (m,) centre + h_j e_j
    dependent: tuple[tuple[int, np.ndarray], ...]  # (last of a row, the row's others)


@dataclass(frozen=True)
class _Plan:
    """What the next pass evaluates besides ``ask()``'s point."""

    candidates: tuple[_Candidate, ...]
    centre: int | None  # the candidate the differences are around; None: ask()'s point
    differences: _Differences | None  # None: no Jacobian measured in this pass

    def points(self) -> list[Params]:
        measured = () if self.differences is None else self.differences.points
        return [c.point for c in self.candidates] + list(measured)


class EMNewton(PlainEM):
    """Newton's method on the EM map (module docstring), driven by ask/tell.

    Parameters
    ----------
    params : the first point to evaluate.
    parameter_map : ``points -> ParameterMap``, e.g.
        ``functools.partial(parameter_map, family)``.
    tol, repair, resume : as :class:`~dask_em.acceleration.driver.PlainEM`.
    damping : lam of the candidate steps (module docstring).
    relative_step : h_j / max(1, |u_j|) of the forward differences.
    max_coordinates : refuse models with more coordinates to difference (each costs an
        E-step in every pass).
    """

    def __init__(
        self,
        params: Params,
        parameter_map: MapFactory,
        *,
        tol: float,
        repair: Repair | None = None,
        damping: Sequence[float] = DAMPING,
        relative_step: float = 1e-6,
        max_coordinates: int = MAX_COORDINATES,
        resume: EMState | None = None,
        monotone_tolerance: float = MONOTONE_TOLERANCE,
    ) -> None:
        if not all(0.0 <= lam < 1.0 for lam in damping) or relative_step <= 0.0:
            raise ValueError("damping must lie in [0, 1) and relative_step be positive")
        self.parameter_map = parameter_map
        self.damping = tuple(float(lam) for lam in damping)
        self.relative_step = relative_step
        start = params if resume is None else resume.params
        measured = self._differences(start)
        count = parameter_map([start]).size if measured is None else len(measured.columns)
        check_coordinates(count, limit=max_coordinates)
        self._jacobian: np.ndarray | None = None  # (n, n), at the last accepted point
        self._centre_damping = NO_CENTRE  # lam of the candidate taken last
        self._plan = _Plan((), None, None)
        super().__init__(
            params, tol=tol, repair=repair, resume=resume, monotone_tolerance=monotone_tolerance
        )
        if not self.history:  # the start: its pass measures the first Jacobian
            self._plan = _Plan((), None, measured)

    def companions(self) -> list[Params]:
        """The candidates, then the differences (none once converged)."""
        return [] if self.converged else self._plan.points()

    # -- the result of a pass ------------------------------------------------------------
    def tell(
        self,
        objective: float,
        image: Params,
        stats: Stats,
        fallback: Callable[[], tuple[float, Params, Stats]] | None = None,
        companions: Sequence[tuple[float, Params, Stats]] = (),
    ) -> AcceptedPoint | None:
        plan = self._plan
        if len(companions) != len(plan.points()):
            raise ValueError("tell() needs the results at every point of companions()")
        self.passes += 1
        self.evaluations += 1
        tried = list(zip(plan.candidates, companions[: len(plan.candidates)], strict=True))
        images = [result[1] for result in companions[len(plan.candidates) :]]
        if plan.centre is None:
            at = (self._pending, image)
        else:
            at = (plan.candidates[plan.centre].point, tried[plan.centre][1][1])
        jacobian = self._measured(plan.differences, *at, images)
        if jacobian is None and self._jacobian is not None and self._chain:
            # not measured (a difference's image failed): the last J, known at the last
            # accepted point x, whose image is this pass's EM point
            jacobian, at = self._jacobian, (self._chain[-1], self._pending)
        best: tuple[_Candidate, tuple[float, Params, Stats]] | None = None
        for candidate, result in tried:
            if not (math.isfinite(result[0]) and _finite(result[1])):
                continue  # an image EM could not continue from: never taken
            if result[0] > (best[1][0] if best else objective):
                best = (candidate, result)
        last = self.history[-1].objective if self.history else -math.inf
        if best is not None and abs(objective - last) < self.tol and best[1][0] - last < self.tol:
            best = None  # neither step moves the objective by tol: converged at F(x)
        if best is None:
            taken, damping = (self._pending, image), NO_CENTRE
        else:
            taken, damping = (best[0].point, best[1][1]), best[0].damping
        if jacobian is not None and taken[0] is not at[0]:  # J to the point taken
            jacobian = self._secant(jacobian, *at, *taken)
        self._jacobian, self._centre_damping = jacobian, damping
        if best is None:
            return self._tell_em(objective, image, stats)
        candidate, (value, candidate_image, candidate_stats) = best
        self._pending = candidate.point
        return self._accept(
            value, candidate_image, candidate_stats, kind="extrapolated", step=candidate.length
        )

    def _measured(
        self,
        differences: _Differences | None,
        centre: Params,
        centre_image: Params,
        images: list[Params | None],
    ) -> np.ndarray | None:
        """J, (n, n) in the map's coordinates, at the centre from the images of its
        differences; None without differences, or when an image is missing (its M-step
        failed) or left the map (a probability reached exactly zero, say)."""
        if differences is None or not all(_finite(p) for p in [centre_image, *images]):
            return None
        mapping = self.parameter_map([centre, centre_image, *images])
        if mapping.size != differences.size:
            return None
        base = mapping.to_vector(centre_image)
        jacobian = np.zeros((differences.size, differences.size))
        with np.errstate(invalid="ignore", over="ignore"):
            for j, h, point in zip(differences.columns, differences.steps, images, strict=True):
                jacobian[:, j] = (mapping.to_vector(point) - base) / h
        for last, others in differences.dependent:
            jacobian[:, last] = -jacobian[:, others].sum(axis=1)
        return jacobian if np.all(np.isfinite(jacobian)) else None

    def _secant(
        self, jacobian: np.ndarray, a: Params, image_a: Params, b: Params, image_b: Params
    ) -> np.ndarray | None:
        """Broyden's update of J (at a) along the step from a to b."""
        mapping = self.parameter_map([a, image_a, b, image_b])
        if mapping.size != len(jacobian):
            return None
        s = mapping.to_vector(b) - mapping.to_vector(a)
        y = mapping.to_vector(image_b) - mapping.to_vector(image_a)
        ss = float(s @ s)
        if not ss > 0.0:
            return jacobian
        updated = jacobian + np.outer(y - jacobian @ s, s) / ss
        return updated if np.all(np.isfinite(updated)) else None

    # -- choosing the next pass ---------------------------------------------------------
    def _next_chain(
        self, accepted: Params, previous_image: Params, kind: str, changed: tuple[int, ...]
    ) -> list[Params]:
        if changed:  # a repaired image is no EM image: measure the map again
            self._jacobian, self._centre_damping = None, NO_CENTRE
            return []
        return [accepted]

    def _plan_next(self) -> None:
        super()._plan_next()  # ask() is F(x)
        candidates: list[_Candidate] = []
        if self._chain and self._jacobian is not None:
            candidates = self._candidates(self._chain[-1], self._image, self._jacobian)
        centre = next(
            (i for i, c in enumerate(candidates) if c.damping == self._centre_damping), None
        )
        self._plan = self._plan_around(tuple(candidates), centre)

    def _candidates(self, x: Params, image: Params, jacobian: np.ndarray) -> list[_Candidate]:
        mapping = self.parameter_map([x, image])
        u, r = mapping.to_vector(x), mapping.to_vector(image) - mapping.to_vector(x)
        if jacobian.shape != (len(u), len(u)):
            return []
        r_norm = max(float(np.linalg.norm(r)), 1e-300)
        found = []
        for lam in self.damping:
            try:
                d = np.linalg.solve(np.eye(len(u)) - (1.0 - lam) * jacobian, r)
                if not np.all(np.isfinite(d)):
                    continue
                point = mapping.to_params(u + d)
            except (np.linalg.LinAlgError, InfeasiblePoint):
                continue
            found.append(_Candidate(lam, point, float(np.linalg.norm(d)) / r_norm))
        return found

    def _plan_around(self, candidates: tuple[_Candidate, ...], centre: int | None) -> _Plan:
        """The plan with the differences around ``candidates[centre]`` (or ask()'s
        point)."""
        point = self._pending if centre is None else candidates[centre].point
        return _Plan(candidates, centre, self._differences(point))

    def _differences(self, point: Params) -> _Differences | None:
        """The forward differences around ``point`` (:class:`_Differences`); None when
        one of them leaves the parameter space (no Jacobian is measured then)."""
        mapping = self.parameter_map([point])
        u = mapping.to_vector(point)
        steps = self.relative_step * np.maximum(1.0, np.abs(u))
        dependent = tuple((int(row[-1]), row[:-1]) for row in mapping.simplex_rows())
        skipped = {last for last, _ in dependent} | set(mapping.unread_positions().tolist())
        try:
            unmoved = mapping.to_vector(mapping.to_params(u))
            columns, points = [], []
            for j in range(len(u)):
                if j in skipped:
                    continue
                moved = u.copy()
                moved[j] += steps[j]
                moved_point = mapping.to_params(moved)
                if np.array_equal(mapping.to_vector(moved_point), unmoved):
                    continue  # a held coordinate: the point does not move, J's column is 0
                columns.append(j)
                points.append(moved_point)
        except InfeasiblePoint:
            return None
        columns_array = np.asarray(columns, dtype=np.intp)
        return _Differences(len(u), columns_array, steps[columns_array], tuple(points), dependent)

    # -- resume ----------------------------------------------------------------------
    def _arrays(self) -> dict[str, Any]:
        jacobian = np.zeros((0, 0)) if self._jacobian is None else self._jacobian
        return {"jacobian": jacobian, "centre_damping": np.array([self._centre_damping])}

    def _restore_arrays(self, arrays: dict[str, Any]) -> None:
        jacobian = np.asarray(arrays.get("jacobian", np.zeros((0, 0))), dtype=np.float64)
        self._jacobian = jacobian if jacobian.size else None
        self._centre_damping = float(np.asarray(arrays.get("centre_damping", [NO_CENTRE]))[0])


def _finite(params: Params | None) -> bool:
    """Whether ``params`` (a companion's image, or None where its M-step failed) holds
    only finite floating-point arrays (the HMM's emission nested)."""
    if params is None:
        return False
    for value in params.values():
        if isinstance(value, dict):
            if not _finite(value):
                return False
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            if not np.all(np.isfinite(value)):
                return False
    return True
