"""EM as an ask/tell driver: the loop evaluates points, the driver chooses them.

One *pass* over the data evaluates one point ``y``: the E-step at ``y`` gives the
(penalized, mean) objective ``L(y)`` and the M-step the plain EM image ``F(y)``.  A
driver never touches data; any loop (in-process, a Dask cluster, several restarts in
lockstep) runs it as::

    driver = make_driver("squarem", family, params, tol=1e-8)  # or None: plain EM
    while not driver.converged and driver.passes < max_passes:
        y = driver.ask()                               # the point to evaluate
        stats = <one pass at y>                        # E-step, reduced statistics
        point = driver.tell(family.objective(stats, y), family.m_step(stats), stats)
        if point is not None:                          # an accepted point: log, checkpoint
            save(driver.state)

``tell`` returns an :class:`AcceptedPoint` when the point it was told about is
accepted (every pass of plain EM; with acceleration, a rejected extrapolation returns
None).  Accepted objectives never decrease (plain EM steps up to rounding, as EM).

Speculation: after a rejected extrapolation, :meth:`PlainEM.speculative` offers a
second point with the next proposal, the point the driver falls back to if that one is
rejected too.  A loop that evaluates both in one pass (each block read once, two
E-steps; :func:`dask_em.em.lockstep` does) passes the second result to ``tell`` as
``fallback``, and a rejection then costs no pass of its own.  Rejections come in runs
where EM's path curves (the proposals point off it), so on the slow problems of
``benchmarks/passes.py`` this saves up to a third of the passes; a speculative pass
whose proposal is accepted wastes one E-step (once per run of rejections) but no read.
The accepted points are the same with or without speculation: ``evaluations`` counts
the points the run's path evaluated (passes, plus the fallbacks taken in a proposal's
pass), the same either way, and a loop caps that, not the passes.

Convergence is the current loop's rule: a plain EM step (an accepted point reached by
an M-step) whose objective changed by less than ``tol`` from the accepted point before
it.  The parameters returned are the EM image of the last accepted point, and
``lower_bound`` its objective, as scikit-learn's ``fit`` does.

Re-seeding: ``repair(image, stats) -> (image, changed)`` (the loop's hook) runs on the
image of every accepted point.  When it changes something, the repaired image is not an
EM image: the monotone guarantee lapses for one step (the record carries ``reseeded``)
and an accelerated driver starts afresh from it with plain EM steps.

Companions: a driver may ask for more points in the pass at :meth:`PlainEM.ask`'s point
(:meth:`PlainEM.companions`; :class:`~dask_em.acceleration.newton.EMNewton` asks for its
candidate steps and the differences of its Jacobian); the loop evaluates them in the
same pass and gives their ``(objective, image, stats)`` to ``tell`` as ``companions``.

Resume: :attr:`PlainEM.state` (an :class:`EMState`: the parameters reached, the
history, earlier points and the driver's own arrays) is all a driver needs to continue
exactly as it would have without the interruption.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_em.families.base import Params, Stats

logger = logging.getLogger(__name__)

#: An EM step whose objective falls by more than this (relative) is reported.
MONOTONE_TOLERANCE = 1e-10


def monotone_tolerance_of(family: Any) -> float:
    """The relative fall of the objective a fit of ``family`` tolerates before it reports
    one: the family's ``monotone_tolerance`` where it declares one (a Gaussian family
    computing in float32: 1e-5), else :data:`MONOTONE_TOLERANCE`."""
    return float(getattr(family, "monotone_tolerance", MONOTONE_TOLERANCE))


#: What evaluating a companion point may raise (a trial point far out, whose M-step
#: finds a component without weight): a loop reports such a point as ``(-inf, None,
#: ...)`` and the driver passes over it.
TRIAL_POINT_ERRORS = (ValueError, FloatingPointError, ZeroDivisionError)

Repair = Callable[[Params, Stats], tuple[Params, tuple[int, ...]]]


@dataclass(frozen=True)
class AcceptedPoint:
    """One accepted point of an EM run (what a loop logs and checkpoints).

    ``objective``: L at the point; ``change``: L minus the previous accepted point's L
    (inf for the first); ``passes``: passes over the data so far, this one and any
    rejected extrapolations included; ``kind``: ``"em"`` (reached by an M-step, or the
    start) or ``"extrapolated"``; ``step``: the extrapolation's step length s >= 1
    (1 for EM steps); ``step_max``: the driver's maximum step length once this point was
    accepted; ``reseeded``: the components the repair hook moved in this point's image;
    ``after_rejection``: it was taken because the extrapolation proposed before it was
    rejected (the driver then speculates: :meth:`PlainEM.speculative`); ``evaluations``:
    the points evaluated so far on the run's path, ``passes`` plus the fallbacks taken
    in a proposal's pass (what it would have cost in passes without speculation).
    """

    objective: float
    change: float
    passes: int
    kind: str = "em"
    step: float = 1.0
    step_max: float = 1.0
    reseeded: tuple[int, ...] = ()
    after_rejection: bool = False
    evaluations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "change": self.change,
            "passes": self.passes,
            "kind": self.kind,
            "step": self.step,
            "step_max": self.step_max,
            "reseeded": list(self.reseeded),
            "after_rejection": self.after_rejection,
            "evaluations": self.evaluations,
        }


@dataclass(frozen=True)
class EMState:
    """What a driver needs to continue a run (save it after each accepted point).

    ``params``: the EM image of the last accepted point (the parameters reached);
    ``history``: the accepted points; ``chain``: earlier points an accelerated driver
    extrapolates from (oldest first; SQUAREM's last two EM points, DAAREM's window);
    empty for plain EM; ``arrays``: the driver's own float64 arrays by name (the
    Jacobian of :class:`~dask_em.acceleration.newton.EMNewton`), empty for the others.
    """

    params: Params
    history: tuple[AcceptedPoint, ...] = ()
    chain: tuple[Params, ...] = field(default=())
    arrays: dict[str, Any] = field(default_factory=dict)


class PlainEM:
    """Plain EM behind the ask/tell interface (module docstring); SQUAREM extends it.

    Parameters
    ----------
    params : the first point to evaluate.
    tol : stop when a plain EM step changes the mean objective by less than this.
    repair : the loop's re-seeding hook, ``repair(image, stats) -> (image, changed)``.
    resume : continue from a saved :class:`EMState` (``params`` is then ignored).
    monotone_tolerance : the relative fall of the objective between accepted points
        that is logged as a decrease (:func:`monotone_tolerance_of` the family).
    """

    def __init__(
        self,
        params: Params,
        *,
        tol: float,
        repair: Repair | None = None,
        resume: EMState | None = None,
        monotone_tolerance: float = MONOTONE_TOLERANCE,
    ) -> None:
        self.tol = tol
        self.monotone_tolerance = monotone_tolerance
        self.repair = repair
        self.history: list[AcceptedPoint] = []
        self.converged = False
        self.passes = 0
        self.evaluations = 0  # points of the run's path evaluated: passes + taken fallbacks
        self._chain: list[Params] = []
        self._image = params
        self._pending = params
        self._pending_kind = "em"
        self._after_rejection = False  # the pending point follows a rejected extrapolation
        if resume is not None:
            self._restore(resume)

    # -- the interface --------------------------------------------------------------
    def ask(self) -> Params:
        """The parameters to evaluate in the next pass."""
        if self.converged:
            raise RuntimeError("the run has converged; read .params")
        return self._pending

    def speculative(self) -> Params | None:
        """A second point for the pass at :meth:`ask`'s point, or None.

        When the pending point is an extrapolation and the last accepted point was taken
        after a rejected one, the point the driver falls back to if this one is rejected
        too (the EM image of the last accepted point, known before the pass).  A loop
        that evaluates it in the same pass (one read of each block, two E-steps) gives
        its result to :meth:`tell` as ``fallback``; a rejection then costs no pass of
        its own.
        Rejections come in runs on curved stretches of EM's path, so this is asked
        only after one: a pass that speculates and accepts wastes one E-step, never a
        read.  The accepted points are the same whether a loop speculates or not.
        """
        if self._pending_kind != "extrapolated" or not self.history:
            return None
        if not self.history[-1].after_rejection:
            return None
        return self._fallback_point()

    def companions(self) -> list[Params]:
        """More points for the pass at :meth:`ask`'s point (none here; module docstring).
        A loop evaluates them in that pass and gives :meth:`tell` their results, in
        this order."""
        return []

    def tell(
        self,
        objective: float,
        image: Params,
        stats: Stats,
        fallback: Callable[[], tuple[float, Params, Stats]] | None = None,
        companions: Sequence[tuple[float, Params, Stats]] = (),
    ) -> AcceptedPoint | None:
        """The result of the pass at :meth:`ask`'s point: ``L`` there, the M-step's
        image, and the statistics (for the repair hook).  Returns the accepted point, or
        None when an extrapolation was rejected.

        ``fallback``: when the loop evaluated :meth:`speculative`'s point in the same
        pass, a function giving its ``(objective, image, stats)``; called only when this
        point is rejected, and the fallback is then told in the same pass.
        ``companions``: the results at :meth:`companions`' points (drivers that ask
        for none get none).
        """
        if companions:
            raise ValueError("this driver asked for no companions; tell() got some")
        self.passes += 1
        self.evaluations += 1
        if self._pending_kind != "extrapolated":
            return self._tell_em(objective, image, stats)
        speculated = self.speculative() if fallback is not None else None
        point = self._tell_extrapolated(objective, image, stats)
        if point is not None:
            return point
        self._after_rejection = True
        if speculated is not None and self._pending is speculated:
            self.evaluations += 1
            return self._tell_em(*fallback())
        return None

    def _tell_em(self, objective: float, image: Params, stats: Stats) -> AcceptedPoint:
        if not math.isfinite(objective):
            raise FloatingPointError(
                f"the objective became {objective} after {self.passes} passes; check the "
                "data for extreme values or increase regularization"
            )
        return self._accept(objective, image, stats, kind="em", step=1.0)

    @property
    def pending_kind(self) -> str:
        """What :meth:`ask`'s point is: ``"em"`` (an EM image, or the start) or
        ``"extrapolated"``."""
        return self._pending_kind

    @property
    def params(self) -> Params:
        """The EM image of the last accepted point (the result of the run)."""
        return self._image

    @property
    def lower_bound(self) -> float:
        """The objective of the last accepted point."""
        return self.history[-1].objective if self.history else -math.inf

    @property
    def state(self) -> EMState:
        return EMState(self._image, tuple(self.history), tuple(self._chain), self._arrays())

    # -- what subclasses change -----------------------------------------------------
    @property
    def step_max(self) -> float:
        return 1.0

    def _plan_next(self) -> None:
        """Choose the next point once a point has been accepted: plain EM, the image."""
        self._pending, self._pending_kind = self._image, "em"

    def _tell_extrapolated(self, objective, image, stats):  # pragma: no cover - plain EM
        raise AssertionError("plain EM never proposes an extrapolated point")

    def _fallback_point(self) -> Params | None:
        """The point taken if the pending extrapolation is rejected, when it is known
        before the pass (:meth:`speculative`); None otherwise."""
        return None

    def _restore_step(self, last: AcceptedPoint) -> None:
        """Restore the subclass's own state from the last record."""

    def _arrays(self) -> dict[str, Any]:
        """The subclass's own arrays to save (:attr:`EMState.arrays`); none here."""
        return {}

    def _restore_arrays(self, arrays: dict[str, Any]) -> None:
        """Restore the subclass's own arrays, before the next point is planned."""

    def _next_chain(
        self, accepted: Params, previous_image: Params, kind: str, changed: tuple[int, ...]
    ) -> list[Params]:
        """The chain once ``accepted`` is accepted (``previous_image``: the EM image of
        the point accepted before it).  Plain EM extrapolates from nothing: no chain, so
        its checkpoint holds only the current point (accelerators override this)."""
        return []

    # -- bookkeeping ----------------------------------------------------------------
    def _accept(
        self, objective: float, image: Params, stats: Stats, *, kind: str, step: float
    ) -> AcceptedPoint:
        accepted = self._pending
        changed: tuple[int, ...] = ()
        if self.repair is not None:
            image, changed = self.repair(image, stats)
        previous = self.history[-1].objective if self.history else -math.inf
        point = AcceptedPoint(
            objective,
            objective - previous,
            self.passes,
            kind,
            step,
            self.step_max,
            changed,
            self._after_rejection,
            self.evaluations,
        )
        self._after_rejection = False
        self._check_monotone(point)
        self.history.append(point)
        image_before = self._image
        self._image = image
        self._chain = self._next_chain(accepted, image_before, kind, changed)
        self.converged = kind == "em" and abs(point.change) < self.tol
        if not self.converged:
            self._plan_next()
        return point

    def _restore(self, state: EMState) -> None:
        self.history = list(state.history)
        self._image = state.params
        self._chain = list(state.chain)
        if not self.history:
            self._pending = state.params
            return
        last = self.history[-1]
        self.passes = last.passes
        self.evaluations = last.evaluations
        self._restore_step(last)
        self._restore_arrays(dict(state.arrays))
        self.converged = last.kind == "em" and abs(last.change) < self.tol
        if not self.converged:
            self._plan_next()

    def _check_monotone(self, point: AcceptedPoint) -> None:
        if not self.history or self.history[-1].reseeded:
            return
        before = self.history[-1].objective
        if point.objective < before - self.monotone_tolerance * max(1.0, abs(before)):
            logger.warning(
                "objective decreased after %d passes: %.12g -> %.12g",
                point.passes,
                before,
                point.objective,
            )
