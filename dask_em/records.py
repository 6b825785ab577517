"""The record of one accepted point of an EM run, and the monotone check on it.

Kept apart from :mod:`dask_em.em` (which re-exports both) so that the loop stays small;
model files, checkpoints, the estimators and the command line read these records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dask_em.acceleration import AcceptedPoint

# the drivers' threshold: an objective that falls by more than this (relative) is
# reported as a decrease, by the loop and by the drivers alike
from dask_em.acceleration.driver import MONOTONE_TOLERANCE

__all__ = ["MONOTONE_TOLERANCE", "IterationRecord", "check_monotone"]

# the logger of dask_em.em, where these lived: handlers set up for it keep working
logger = logging.getLogger("dask_em.em")


@dataclass
class IterationRecord:
    """One accepted point of an EM run: the objective at it (mean, penalized).

    ``iteration``: its index (1-based); ``change``: objective minus the previous
    record's; ``seconds`` and ``bytes_read``: of the passes since the previous record
    (rejected extrapolations included); ``passes``: passes of this EM run so far;
    ``move``: how the point was reached, ``"em"`` (an M-step, or the start) or
    ``"extrapolated"`` (SQUAREM, DAAREM, Newton); ``step``: its step length;
    ``after_rejection``: taken because the extrapolation proposed before it was
    rejected (:meth:`dask_em.acceleration.PlainEM.speculative`); ``evaluations``: the
    points of this run's path evaluated so far, ``passes`` plus the fallbacks taken in a
    proposal's pass (``max_iter`` caps it).
    """

    iteration: int
    objective: float
    change: float
    seconds: float
    reseeded: tuple[int, ...] = ()
    bytes_read: int = 0  # bytes of data (X and weights) the iteration's E-step tasks read
    passes: int = 0
    move: str = "em"
    step: float = 1.0
    step_max: float = 1.0
    after_rejection: bool = False
    evaluations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "objective": self.objective,
            "change": self.change,
            "seconds": self.seconds,
            "reseeded": list(self.reseeded),
            "bytes_read": self.bytes_read,
            "passes": self.passes,
            "move": self.move,
            "step": self.step,
            "after_rejection": self.after_rejection,
            "evaluations": self.evaluations,
        }

    def accepted_point(self) -> AcceptedPoint:
        """The driver's view of this record (to resume a driver)."""
        return AcceptedPoint(
            self.objective,
            self.change,
            self.passes,
            self.move,
            self.step,
            self.step_max,
            self.reseeded,
            self.after_rejection,
            self.evaluations,
        )


def check_monotone(
    record: IterationRecord,
    history: list[IterationRecord],
    log: logging.Logger = logger,
    tolerance: float = MONOTONE_TOLERANCE,
) -> None:
    """Warn (log) when the objective fell since the last iteration (no re-seeding then)."""
    if not history or history[-1].reseeded:
        return
    before = history[-1].objective
    if record.objective < before - tolerance * max(1.0, abs(before)):
        log.warning(
            "objective decreased at iteration %d: %.12g -> %.12g",
            record.iteration,
            before,
            record.objective,
        )
