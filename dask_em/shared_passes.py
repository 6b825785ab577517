"""One pass over the data for several points: each block read once, one E-step a point.

The runs :func:`dask_em.em.lockstep` advances together (restarts, a sweep's candidates,
an accelerated run's speculative fallback) each give a ``(family, params)`` point; one
``map_reduce`` over the blocks evaluates every point's E-step on each block as it is
read, and merges the statistics point by point with each family's own ``merge``.  Pure
Python over a ``map_reduce`` callable, like :mod:`dask_em.em`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from dask_em.families.base import Family, Params, Stats
from dask_em.preparation import prepare_each


def pass_each(
    map_reduce: Callable[..., Any], pairs: Sequence[tuple[Family, Params]], *, stage: str = "estep"
) -> list[Stats]:
    """The merged E-step statistics of every ``(family, params)`` of ``pairs`` from one
    pass over the data (each block read once), after the preliminary pass of the
    families that need one (:func:`dask_em.preparation.prepare_each`)."""
    pairs = prepare_each(map_reduce, pairs)
    if len(pairs) == 1:
        ((family, params),) = pairs
        return [map_reduce(family.block_stats, family.merge, params, stage=stage)]
    families = tuple(family for family, _ in pairs)
    return list(
        map_reduce(
            block_stats_each,
            functools.partial(merge_each, families),
            tuple(pairs),
            stage=stage,
        )
    )


def block_stats_each(shared: tuple, X: Any, w: Any, *args: Any) -> tuple:
    """One block's statistics for each ``(family, params)`` in ``shared`` (a lockstep
    pass: one read of the block, one E-step per run)."""
    return tuple(family.block_stats(params, X, w, *args) for family, params in shared)


def merge_each(families: tuple, *parts: tuple) -> tuple:
    """Merge lockstep statistics run by run (each with its family's ``merge``)."""
    return tuple(family.merge(*(part[r] for part in parts)) for r, family in enumerate(families))
