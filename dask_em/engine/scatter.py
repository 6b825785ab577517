"""Data that is already in this process, sent to the workers directly.

A dask array made from a NumPy array (``da.from_array``, or ``Sequences`` over arrays)
carries its data inside its graph.  Persisting such an array sends the whole graph, data
and all, through the scheduler, which hands it to one worker; that worker cuts the
blocks, and a rebalance then moves half of them to the other workers.  For the 64 MB of
the HMM benchmark that took 3.3 s of a 9 s fit on the 2-core machine.

:func:`scatter_in_memory` instead computes the blocks here (slices of memory this
process holds anyway) and scatters them straight to the workers, round-robin, so each
block crosses the network once and the workers start balanced.  Arrays whose data is not
in the graph (Zarr stores, anything read by tasks) are returned unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.core import flatten

from dask_em.engine.row_order import ordered_blocks
from dask_em.engine.workers import scheduler_workers

#: Times a fit sends its in-memory data again after workers holding it were lost.
MAX_RESENDS = 3


def in_graph_bytes(array: da.Array) -> int:
    """Bytes of NumPy arrays held in ``array``'s graph itself (0 for data that tasks
    read from storage)."""
    return sum(
        value.nbytes for value in array.__dask_graph__().values() if isinstance(value, np.ndarray)
    )


def scatter_in_memory(
    client: Any, arrays: Sequence[da.Array], row_order: Callable | None = None
) -> list[da.Array] | None:
    """``arrays`` (X, and its weights or lengths: the same blocks along the rows) with
    their blocks held by the workers of ``client``, as persisted arrays, when all of
    their data is in their graphs; None otherwise.

    The blocks are computed in this process with the synchronous scheduler (each
    shared step once); of B blocks on n workers (sorted by address), block ``i`` of
    every array goes to worker ``floor(i n / B)``: a block and its weights sit together,
    the workers start balanced, and each holds a run of consecutive blocks, so the
    reduction tree's lower merges find their blocks on one worker (:mod:`.reduction`;
    a direct pass merges them there, :mod:`.direct`).  Each returned array has its
    input's shape, chunks and dtype.  With ``row_order`` (X and weights only), each
    block's rows go in that order (:func:`dask_em.engine.row_order.ordered_blocks`).
    """
    if any(in_graph_bytes(array) < array.nbytes for array in arrays):
        return None
    workers = sorted(scheduler_workers(client))
    if not workers:
        return None
    token = uuid.uuid4().hex[:16]
    names = [f"scattered-{token}-{n}" for n in range(len(arrays))]
    computed = [dask.compute(*array.to_delayed().ravel(), scheduler="sync") for array in arrays]
    keys = [
        [(name, *key[1:]) for key in flatten(array.__dask_keys__())]
        for array, name in zip(arrays, names, strict=True)
    ]
    n_blocks = len(keys[0])
    by_worker: dict[str, list[int]] = {}
    for i in range(n_blocks):
        by_worker.setdefault(workers[i * len(workers) // n_blocks], []).append(i)
    futures = {}
    for worker, indices in by_worker.items():  # one worker's ordered copies at a time
        data = {}
        for i in indices:
            parts = [blocks[i] for blocks in computed]
            if row_order is not None:
                x, w = ordered_blocks(row_order, parts[0], parts[1] if len(parts) > 1 else None)
                parts = [x, w][: len(parts)]
            data.update({key[i]: part for key, part in zip(keys, parts, strict=True)})
        futures.update(client.scatter(data, workers=[worker], hash=False))
    return [
        da.Array(
            {key: future for key, future in futures.items() if key[0] == name},
            name,
            array.chunks,
            dtype=array.dtype,
            meta=array._meta,
        )
        for array, name in zip(arrays, names, strict=True)
    ]


def blocks_here(
    X: da.Array, w: da.Array | None, row_order: Callable | None = None
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Each block of X and of its weights w (None: no weights) as NumPy arrays, computed
    in this process once (for a local fit: views of an in-memory X), with ``row_order``
    each block's rows in that order (copies of the blocks it moves)."""
    X_blocks = list(X.to_delayed().ravel())
    if w is None:
        pairs = [(block, None) for block in dask.compute(*X_blocks, scheduler="sync")]
    else:
        w_blocks = list(w.to_delayed().ravel())
        computed = dask.compute(*X_blocks, *w_blocks, scheduler="sync")
        pairs = list(zip(computed[: len(X_blocks)], computed[len(X_blocks) :], strict=True))
    if row_order is None:
        return pairs
    return [ordered_blocks(row_order, x, block_w) for x, block_w in pairs]


def lost_blocks(*arrays: da.Array | None) -> int:
    """Blocks of ``arrays`` (persisted: futures) no longer held by any worker."""
    from distributed import futures_of

    return sum(
        future.status != "finished"
        for array in arrays
        if array is not None
        for future in futures_of(array)
    )
