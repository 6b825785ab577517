"""Prediction graphs: one way for every model.

One task per block of X runs :func:`~dask_em.engine.tasks.predict_block_task` (the
values checked, then the model's kernel); each output is a lazy dask array over those
tasks, chunked like X along rows (per-row outputs) or like the sequence lengths
(per-sequence outputs of hidden Markov models).  Reading a block from Zarr is fused
into its task, as in a fit pass.

With an explicit ``client`` the parameters are scattered to it once and the graphs
refer to that future, so they run on that cluster (computing them through another
client fails); :func:`as_float` computes such a graph on its client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from dask_em import credentials
from dask_em.engine.tasks import pick_output_task, predict_block_task
from dask_em.engine.threads import limit_threads

#: What one output of a kernel is: ``(per, trailing shape, dtype)`` with ``per`` either
#: ``"row"`` (one entry per row of X) or ``"sequence"`` (one per sequence).
OutputSpec = tuple[str, tuple[int, ...], Any]


def apply_blocks(
    X: da.Array,
    kernel: Callable[..., Any],
    family: Any,
    params: Any,
    check: Any,
    *,
    name: str,
    outputs: Sequence[OutputSpec],
    lengths: da.Array | None = None,
    client: Any = None,
) -> list[da.Array]:
    """``kernel(family, params, X_i[, lengths_i])`` on every block i of X, lazily.

    Without ``lengths`` the kernel returns one array; with them (blocks of whole
    sequences, block i of ``lengths`` holding the lengths of the sequences in X's block
    i) it returns one array per entry of ``outputs``.  ``check.raise_for`` sees each
    block first (an error names the rows, ``X[a:b]``).  ``client``: the cluster the
    graph is tied to (see module docstring); None: any, the parameters in the graph.
    """
    credentials.deliver_to(client)  # storage secrets reach the workers out of band
    token = tokenize(X, lengths, name, params)
    payload = (kernel, family, params, check)
    if client is not None:
        [future] = client.scatter([payload], hash=False)
        shared = delayed(future)  # the graph holds the future, which keeps the data alive
    else:
        shared = delayed(payload, name=f"{name}-params-{token}", traverse=False)
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(np.int64)
    table = da.from_array(starts.reshape(-1, 1), chunks=(1, -1))
    cells = da.blockwise(
        limit_threads(predict_block_task),  # BLAS: the task's share of its worker
        "ij",
        X,
        "ij",
        *((lengths, "i") if lengths is not None else (None, None)),
        shared,
        None,
        table,
        "ij",
        name=f"{name}-blocks-{token}",
        dtype=object,
        adjust_chunks={"i": 1, "j": 1},
        meta=np.empty((0, 0), dtype=object),
        concatenate=True,
        align_arrays=False,  # blocks match one to one; the table has a row per block
    )
    arrays = []
    for index, (per, trailing, dtype) in enumerate(outputs):
        rows = X.chunks[0] if per == "row" else lengths.chunks[0]
        chunks = (rows, *((n,) for n in trailing))
        arrays.append(
            cells.map_blocks(
                pick_output_task,
                index,
                chunks=chunks,
                drop_axis=None if trailing else 1,
                dtype=dtype,
                meta=np.empty((0,) * len(chunks), dtype=dtype),
                name=f"{name}-{token}" if index == 0 else f"{name}-{index}-{token}",
            )
        )
    return arrays


def as_float(value: Any) -> float:
    """A NumPy or dask scalar as a float, computed on the client its graph is tied to
    (:func:`apply_blocks` with ``client``), else on the active scheduler."""
    if not isinstance(value, da.Array):
        return float(value)
    from distributed import futures_of

    futures = futures_of(value)
    return float(value.compute(scheduler=futures[0].client) if futures else value.compute())


def block_results(
    X: da.Array,
    lengths: da.Array,
    function: Callable[..., Any],
    shared: Any,
    blocks: Sequence[int],
    client: Any = None,
) -> list[Any]:
    """``[function(shared, X_i, lengths_i) for i in blocks]``, computed now (on
    ``client`` if set), one task per block with the block's read fused into it: the
    summaries of the pieces of split sequences that a prediction needs first."""
    credentials.deliver_to(client)
    if not blocks:
        return []
    run = limit_threads(function)
    tasks = [
        delayed(run, pure=False)(shared, X.blocks[int(i)], lengths.blocks[int(i)]) for i in blocks
    ]
    if client is not None:
        return client.gather(client.compute(tasks))
    return list(dask.compute(*tasks))
