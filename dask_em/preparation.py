"""Preliminary passes: what an E-step needs from the whole data before its own pass.

A family may declare ``needs_preparation`` (true): every evaluation of its E-step is
then preceded by one pass of ``preparation_block(params, X_i, w_i)`` over the blocks,
merged with ``merge_preparation``, and the E-step runs at ``prepared(params, merged)``.
Hidden Markov models over sequences split across blocks use it for the summaries of the
pieces and the boundary messages the scan derives from them
(:mod:`dask_em.families.hmm_split`).  The points of several runs in lockstep share one
preliminary pass, as they share the E-step's.  Pure Python over a ``map_reduce``
callable, like :mod:`dask_em.em`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

#: The stage name of a preliminary pass (its tasks show as ``summary-<model>``).
STAGE = "summary"


def prepare_each(
    map_reduce: Callable[..., Any], pairs: Sequence[tuple[Any, Any]]
) -> list[tuple[Any, Any]]:
    """``pairs`` of ``(family, params)`` with the params of every family that needs
    preparation replaced by its prepared params (one pass for all of them; none when
    no family needs it)."""
    pairs = list(pairs)
    needing = [i for i, (family, _) in enumerate(pairs) if _needs(family)]
    if not needing:
        return pairs
    chosen = tuple(pairs[i] for i in needing)
    families = tuple(family for family, _ in chosen)
    merged = map_reduce(
        preparation_each, functools.partial(merge_each, families), chosen, stage=STAGE
    )
    for i, part in zip(needing, merged, strict=True):
        family, params = pairs[i]
        pairs[i] = (family, family.prepared(params, part))
    return pairs


def _needs(family: Any) -> bool:
    return bool(getattr(family, "needs_preparation", False))


def preparation_each(shared: tuple, X: Any, w: Any, *args: Any) -> tuple:
    """One block's preliminary result for each ``(family, params)`` in ``shared``."""
    return tuple(family.preparation_block(params, X, w, *args) for family, params in shared)


def merge_each(families: tuple, *parts: tuple) -> tuple:
    """Merge preliminary results run by run."""
    return tuple(
        family.merge_preparation(*(part[r] for part in parts)) for r, family in enumerate(families)
    )
