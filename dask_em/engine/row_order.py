"""Blocks held in the order of their rows that a model's kernels read fastest.

A model whose rows are exchangeable (a mixture: every pass sums over rows) may give the
engine a ``row_order(X_block, w_block) -> permutation (n,) or None`` (None: keep the
block as it is), such as
:func:`~dask_em.families.gaussian_row_order.nan_pattern_order`.  Data the engine holds
itself (persisted with ``cache="memory"`` from a store or a lazy array, scattered from
this process, or the blocks of a local fit) is then held with each block's rows, and
its weights, in that order (:func:`ordered_collections`, :func:`ordered_blocks`); the
statistics of a pass are the same sums in another order.  Data the user persisted is
used as it is: ordering it would mean a second copy of it.  Streamed blocks are read
as stored (ordering a block costs about what it saves in one pass).

Passes whose results depend on where a row stands (:data:`ORDER_SENSITIVE_STAGES`: the
scan draws its sample by position, the init pass can draw random responsibilities row
by row) read every block in that order (:func:`in_row_order`), however the data is held,
so that a fit gives the same result from the same data and seed held in memory, streamed
or persisted by the user.  The order must leave a block already in it unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

#: Stages (``map_reduce``'s ``stage``) whose block functions read rows by position.
ORDER_SENSITIVE_STAGES = frozenset({"scan", "init"})

RowOrder = Callable[[np.ndarray, "np.ndarray | None"], "np.ndarray | None"]


def in_row_order(row_order: RowOrder | None, block_func: Callable, stage: str) -> Callable:
    """``block_func`` reading each block (and its weights) in ``row_order`` in a stage of
    :data:`ORDER_SENSITIVE_STAGES`; ``block_func`` itself otherwise."""
    if row_order is None or stage not in ORDER_SENSITIVE_STAGES:
        return block_func
    return functools.partial(_ordered_call, row_order, block_func)


def _ordered_call(row_order: RowOrder, block_func: Callable, shared, X, w, *args) -> Any:
    X, w = ordered_blocks(row_order, X, w)
    return block_func(shared, X, w, *args)


def ordered_blocks(
    row_order: RowOrder, X: np.ndarray, w: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A block X (n, D) and its weights w (n,) or None in ``row_order`` (copies), or as
    given where the order keeps them (None, or the identity)."""
    order = row_order(X, w)
    if order is None or _is_identity(order):
        return X, w
    return X[order], (None if w is None else w[order])


def _is_identity(order: np.ndarray) -> bool:
    return np.array_equal(order, np.arange(len(order)))


def _order_of(row_order: RowOrder, X: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """The permutation of a block's rows, the identity where ``row_order`` keeps them."""
    order = row_order(X, w)
    return np.arange(len(X)) if order is None else np.asarray(order, dtype=np.int64)


def _taken(block: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``block`` (rows first) in ``order``: itself for the identity, else a copy."""
    return block if _is_identity(order) else block[order]


def ordered_collections(row_order: RowOrder, collections: Sequence[da.Array]) -> list[da.Array]:
    """``collections`` ``(X,)`` or ``(X, weights)`` (dask arrays, X in one column chunk)
    with every block's rows in ``row_order``: lazy, a task a block finds the order (from X
    and the weights) and one a block of each array takes it.  The layers are named by
    the inputs' names and the order function, so two fits over the same weights and
    different X (or another order) never share a key."""
    X, w = collections[0], (collections[1] if len(collections) > 1 else None)
    token = tokenize(X.name, None if w is None else w.name, row_order)
    order_args = (X, "ij") if w is None else (X, "ij", w, "i")
    orders = da.blockwise(
        functools.partial(_order_of, row_order), "i", *order_args, dtype=np.int64,
        concatenate=True, name=f"row-order-{token}",
    )  # fmt: skip
    indices = ("ij", "i")[: len(collections)]
    return [
        da.blockwise(
            _taken,
            index,
            array,
            index,
            orders,
            "i",
            dtype=array.dtype,
            meta=array._meta,
            name=f"in-row-order-{array.name}-{token}",  # its input's name kept in sight
        )
        for array, index in zip(collections, indices, strict=True)
    ]


def is_persisted(array: da.Array) -> bool:
    """Whether ``array``'s blocks are futures already (persisted by the user)."""
    from distributed import futures_of

    return bool(futures_of(array))
