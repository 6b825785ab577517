"""Points whose statistics a pass already gave: what :func:`dask_em.em.lockstep` takes
instead of making its first pass (the scan pass that also ran the runs' first E-steps,
:mod:`dask_em.estimators.first_pass`).  Pure Python, like :mod:`dask_em.em`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_em.families.base import Params, Stats


@dataclass
class Evaluated:
    """A pass already made for the runs' first points: per run (in the order of the
    runs), ``(points, merged statistics)``; ``started``: when that pass began
    (``time.perf_counter()``), from which the runs' first records count their seconds."""

    entries: Sequence[tuple[Sequence[Params], Sequence[Stats]]]
    started: float

    def serves(self, live: Sequence[Any], points: Sequence[Sequence[Params]], runs) -> bool:
        """Whether these are the statistics of the pass at ``points`` (one list per
        run of ``live``, a subset of ``runs``): each live run to evaluate exactly the
        points of its entry (equal values)."""
        if len(self.entries) != len(runs):
            return False
        entries = dict(zip(map(id, runs), self.entries, strict=True))
        return all(
            len(ps) == len(entries[id(run)][0]) and all(map(same_params, ps, entries[id(run)][0]))
            for run, ps in zip(live, points, strict=True)
        )

    def stats_of(self, live: Sequence[Any], runs: Sequence[Any]) -> list[Stats]:
        """The statistics of ``live``'s runs, run after run, as a pass gives them."""
        entries = dict(zip(map(id, runs), self.entries, strict=True))
        return [s for run in live for s in entries[id(run)][1]]


def same_params(a: Any, b: Any) -> bool:
    """Whether two parameter sets (nested dicts of arrays and numbers) are equal, value
    for value, shape for shape."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_params(a[key], b[key]) for key in a)
        )
    return np.array_equal(np.asarray(a), np.asarray(b))
