"""DAAREM: damped Anderson acceleration with restarts and monotonicity control
(Henderson and Varadhan 2019, J. Comput. Graph. Stat. 28, 834-846), monotone, as an
ask/tell driver.

Anderson acceleration treats EM as a fixed-point problem x = F(x) with residual
f(x) = F(x) - x, in the unconstrained coordinates u(.) of
:mod:`dask_em.acceleration.parameter_maps`.  With the last c + 1 accepted points
x_0 .. x_c (the window, c <= ``order``), their residuals f_i, and the differences

    X = [x_1 - x_0, ..., x_c - x_{c-1}],  Fd = [f_1 - f_0, ..., f_c - f_{c-1}]   (n, c)

the proposal is (paper, eqs. 2.3-2.5, with the ridge of sec. 3.1)

    gamma = argmin ||f_c - Fd gamma||^2 + lambda ||gamma||^2
          = V diag(d / (d^2 + lambda)) U^T f_c            (Fd = U diag(d) V^T)
    x'    = x_c + f_c - (X + Fd) gamma                   (gamma = 0: the EM point F(x_c))

``lambda`` damps: it is chosen so that ||gamma(lambda)|| = sqrt(delta_k) ||gamma(0)||
with delta_k = 1 / (1 + alpha^(kappa - s_k)) (eq. 3.3), where s_k counts the accepted
proposals: every accepted proposal lets the next one move further (at s_k = kappa,
delta = 1/2; beyond it, almost undamped).  We solve for lambda to rounding (a
safeguarded Newton iteration from a fixed bracket, :func:`ridge_for_norm`), not from
the last lambda as the R package ``daarem`` does, so a run resumed from its state
proposes exactly what the uninterrupted run proposes.

Monotonicity: x' is accepted when its objective is at least that of x_c (the R
package's ``mon.tol = 0``: accepted objectives never decrease); otherwise, and when x'
is infeasible (it overflows the map; known before any pass), the next point is the EM
image F(x_c).  An infeasible or non-finite proposal also restarts the window (the
package's ``count <- 0``).  Restarts: after ``order`` proposals the window keeps only its
last two points (x_{c-1}, x_c), as the package's ``count == nlag``.  The package's cycle
check (decrease ``s_k`` when a cycle ends lower than it began) never fires here, since
accepted objectives never fall, and is left out.

Passes: an accepted proposal costs one pass (its objective and its EM image come from
the same pass: the image is the next residual); a rejected one costs that pass and the
EM point's, except after a rejection, when the loop evaluates F(x_c) in the proposal's
pass (:meth:`~dask_em.acceleration.driver.PlainEM.speculative`).  Convergence is
tested on plain EM steps only, as for SQUAREM: when an accepted proposal changed the
objective by less than ``tol``, the next point is its EM image, whose change decides
(and which is itself the next point of the window).

State: the window and its images are the driver's chain, ``[x_0, F(x_0), x_1, F(x_1),
.., x_c]`` (F(x_c) is the driver's ``params``), and s_k is the number of accepted
proposals in the history since the last re-seeding, so :class:`EMState` resumes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def damping_target(accepted: int, *, alpha: float, kappa: float) -> float:
    """sqrt(delta_k) of eq. 3.3: the ratio ||gamma(lambda)|| / ||gamma(0)|| to reach
    after ``accepted`` (s_k) accepted proposals, in (0, 1)."""
    return math.exp(-0.5 * math.log1p(alpha ** (kappa - accepted)))


def ridge_for_norm(d: np.ndarray, uy: np.ndarray, ratio: float) -> float:
    """The lambda >= 0 with ||s(lambda)|| = ratio ||s(0)||, s_j(lambda) = d_j uy_j /
    (d_j^2 + lambda), over the singular values d > 0 (shapes (c,)).

    ||s|| falls strictly from ||s(0)|| to 0, so the root is unique; it lies in
    (0, ||d * uy|| / target] (the package's upper bound ``Ftf / vk``).  Newton steps on
    1 / ||s(lambda)|| (nearly linear in lambda), kept inside the bracket by bisection,
    to rounding; deterministic (no warm start).
    """
    keep = d > 0.0
    d, uy = d[keep], uy[keep]
    full = float(np.sqrt(np.sum((uy / d) ** 2))) if d.size else 0.0
    if full == 0.0 or ratio >= 1.0:
        return 0.0
    target = ratio * full
    low, high = 0.0, float(np.sqrt(np.sum((d * uy) ** 2))) / target
    lam = 0.5 * (low + high)
    for _ in range(200):
        denominator = d**2 + lam
        norm = float(np.sqrt(np.sum((d * uy / denominator) ** 2)))
        if norm > target:
            low = lam
        else:
            high = lam
        if abs(norm - target) <= 1e-14 * target or high - low <= 1e-15 * high:
            break
        # phi(lambda) = 1 / ||s|| - 1 / target; phi' = sum(s_j^2 / (d_j^2 + lambda)) / ||s||^3
        derivative = float(np.sum((d * uy) ** 2 / denominator**3)) / norm**3
        step = lam - (1.0 / norm - 1.0 / target) / derivative
        lam = step if low < step < high else 0.5 * (low + high)
    return lam


def anderson_point(points: np.ndarray, images: np.ndarray, ratio: float) -> np.ndarray:
    """The damped Anderson proposal x' (module docstring) from the window's points
    ``(c + 1, n)`` and their EM images ``(c + 1, n)`` in unconstrained coordinates;
    ``ratio``: sqrt(delta_k).  Returns shape (n,)."""
    residuals = images - points
    x_diff = np.diff(points, axis=0).T  # (n, c)
    f_diff = np.diff(residuals, axis=0).T
    f_new = residuals[-1]
    u, d, vt = np.linalg.svd(f_diff, full_matrices=False)
    uy = u.T @ f_new
    lam = ridge_for_norm(d, uy, ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        coefficients = np.where(d > 0.0, d * uy / (d**2 + lam), 0.0)
    gamma = vt.T @ coefficients
    return points[-1] + f_new - (x_diff + f_diff) @ gamma


class Daarem(PlainEM):
    """DAAREM-accelerated EM (module docstring), driven by ask/tell like :class:`PlainEM`.

    Parameters
    ----------
    params : the first point to evaluate.
    parameter_map : ``points -> ParameterMap``, e.g.
        ``functools.partial(parameter_map, family)``.
    tol, repair, resume : as :class:`PlainEM`.
    order : the most differences in the window (the package's ``order``, default 5;
        it uses ``min(order, ceil(n / 2))`` for n coordinates).  On the overlapping
        mixture of ``benchmarks/passes.py`` the passes to the optimum depend strongly
        and irregularly on it (orders 3 to 6: 1225, 107, 149, 1262 passes; plain EM
        5312): whether a run leaves the flat stretch early is sensitive to the window.
    alpha, kappa : the damping schedule of eq. 3.3 (the package's defaults 1.2, 25).
    """

    def __init__(
        self,
        params: Params,
        parameter_map: MapFactory,
        *,
        tol: float,
        repair: Repair | None = None,
        order: int = 5,
        alpha: float = 1.2,
        kappa: float = 25.0,
        resume: EMState | None = None,
        monotone_tolerance: float = MONOTONE_TOLERANCE,
    ) -> None:
        if order < 1 or alpha <= 1.0:
            raise ValueError("order must be at least 1 and alpha above 1")
        self.parameter_map = parameter_map
        parameter_map([params if resume is None else resume.params])  # refuse early
        self.order = order
        self.alpha = alpha
        self.kappa = kappa
        self._accepted_proposals = 0
        self._step = 1.0
        super().__init__(
            params, tol=tol, repair=repair, resume=resume, monotone_tolerance=monotone_tolerance
        )

    def _restore_step(self, last: AcceptedPoint) -> None:
        count = 0
        for point in reversed(self.history):
            if point.reseeded:
                break
            count += point.kind == "extrapolated"
        self._accepted_proposals = count

    # -- the window -------------------------------------------------------------------
    def _next_chain(
        self, accepted: Params, previous_image: Params, kind: str, changed: tuple[int, ...]
    ) -> list[Params]:
        if changed:  # a repaired image is no EM image: start afresh
            self._accepted_proposals = 0
            return []
        if not self._chain:
            return [accepted]
        return [*self._chain, previous_image, accepted]

    def _window_size(self, mapping: ParameterMap) -> int:
        return min(self.order, max(1, math.ceil(mapping.size / 2)))

    # -- choosing the next point ------------------------------------------------------
    def _plan_next(self) -> None:
        points = self._chain[0::2]
        last = self.history[-1]
        if len(points) < 2 or (last.kind == "extrapolated" and abs(last.change) < self.tol):
            super()._plan_next()  # the EM image: too few points, or a convergence test
            return
        images = [*self._chain[1::2], self._image]
        mapping = self.parameter_map([*points, *images])
        if len(points) > self._window_size(mapping) + 1:  # restart: keep (x_{c-1}, x_c)
            self._chain = self._chain[-3:]
            points, images = points[-2:], images[-2:]
            mapping = self.parameter_map([*points, *images])
        try:
            u = np.stack([mapping.to_vector(p) for p in points])
            g = np.stack([mapping.to_vector(p) for p in images])
            ratio = damping_target(self._accepted_proposals, alpha=self.alpha, kappa=self.kappa)
            vector = anderson_point(u, g, ratio)
            if not np.all(np.isfinite(vector)):
                raise InfeasiblePoint("non-finite proposal")
            self._pending = mapping.to_params(vector)
        except (InfeasiblePoint, np.linalg.LinAlgError):
            self._restart_with_em()
            return
        self._pending_kind = "extrapolated"
        step = np.linalg.norm(vector - u[-1]) / max(np.linalg.norm(g[-1] - u[-1]), 1e-300)
        self._step = float(step)

    def _restart_with_em(self) -> None:
        """The EM image next, and a window that starts again from the last point."""
        self._chain = self._chain[-1:]
        super()._plan_next()

    def _fallback_point(self) -> Params:
        """A rejected (or non-finite) proposal falls back to F(x_c)."""
        return self._image

    # -- the result of an extrapolated pass -------------------------------------------
    def _tell_extrapolated(
        self, objective: float, image: Params, stats: Stats
    ) -> AcceptedPoint | None:
        last = self.history[-1].objective
        if not math.isfinite(objective):
            self._restart_with_em()
            return None
        if objective < last:
            PlainEM._plan_next(self)  # the EM image of the last accepted point
            return None
        self._accepted_proposals += 1
        return self._accept(objective, image, stats, kind="extrapolated", step=self._step)
