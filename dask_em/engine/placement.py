"""Where persisted data lives, and each E-step task kept with its block.

``cache="memory"`` puts every block on one worker, the workers balanced
(:func:`dask_em.engine.scatter.scatter_in_memory` for data held in this process,
for data the workers compute, each worker a run of consecutive blocks,
:func:`in_runs`, then rebalanced where they did not land so), and the
scheduler then runs a block's task where the block is.  That alone does not keep a pass
balanced: once work stealing has moved one task to the other worker, the block has two
holders, and the scheduler's tie-break sent that block's task to the same worker in
every later pass.  In the HMM benchmark (8 blocks, 2 workers) that was 5 blocks
against 3 in 18 of 20 passes, 0.263 s per iteration against 0.232-0.241 s when the
split stayed 4 and 4.

So each block gets a home when it is persisted (:func:`block_homes`: its holder, the
workers balanced where a block has several), and every pass asks for its E-step tasks
to run there, as a loose restriction (:func:`pinned_graph`, ``allow_other_workers``):
the scheduler places each task on its home while that worker lives; stealing may still
move a task when a worker runs out of work.  Each pass first asks where the blocks are
(:func:`block_homes` with the previous homes): a block whose home no longer holds it
(the active memory manager dropped that copy, the worker was lost and the block made
again elsewhere) moves its home to a worker that does, so a pass never ships a block
to its home.  The engine asks that of the scheduler ahead (:class:`HoldersAhead`): a
graph pass over persisted data asks as soon as its results are in, while the client
runs the M-step, so that the next pass does not wait on the round trip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import dask
import dask.array as da
from dask._task_spec import Alias
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from dask_em.engine.cluster import persist_watched
from dask_em.engine.row_order import ordered_collections
from dask_em.engine.scatter import scatter_in_memory
from dask_em.engine.stalls import Blocks
from dask_em.engine.workers import scheduler_workers


def persist_on_workers(
    client: Any, collections: Sequence[da.Array], blocks: Blocks, row_order: Callable | None = None
) -> tuple[list[da.Array], bool, list[str | None]]:
    """``(persisted collections, scattered from this process?, each block's home)``:
    data held here scattered to the workers, data the workers compute persisted there,
    balanced either way (``blocks``: the data, for a stall's message); with
    ``row_order``, each block's rows in that order (:mod:`.row_order`)."""
    from distributed import futures_of

    persisted = scatter_in_memory(client, collections, row_order)
    scattered = persisted is not None
    if not scattered:
        if row_order is not None:
            collections = ordered_collections(row_order, collections)
        pinned, placed = in_runs(client, collections)
        persisted = persist_watched(client, pinned, blocks, optimize_graph=not placed)
        if not placed or any(block_homes(client, array, placed) != placed for array in persisted):
            # moves data only off workers above 30 % of their memory (distributed's
            # default); a pass evens out the rest (:func:`.grouped.even_shares`)
            client.rebalance(futures_of(persisted))
    return persisted, scattered, block_homes(client, persisted[0])


def in_runs(client: Any, collections: Sequence[da.Array]) -> tuple[list[da.Array], list[str]]:
    """``collections`` with block i's task asked to run on worker ``floor(i W / B)`` of
    the W workers (sorted by address), and those workers: each worker then holds a run
    of consecutive blocks, as :func:`~dask_em.engine.scatter.scatter_in_memory` places
    data held in this process, so that a pass can run one task per worker thread
    (:mod:`.grouped`).  Left to itself the scheduler places the blocks the workers read
    in turns (0, 1, 1, 0, 1, ... over 2 workers), and no worker then holds all the
    blocks of any node of the reduction tree.  The collections are optimized together
    (work they share runs once), and where a block's read was fused into another task
    (a slice of a store, say: the block is then an alias of it), that task is pinned
    too, so the read runs where the block is to stay.  The restriction is loose (a
    worker that is gone, or full, leaves the task to another); blocks already in memory
    stay where they are."""
    workers = sorted(scheduler_workers(client))
    n_blocks = collections[0].numblocks[0]
    if not workers or n_blocks == 0:
        return list(collections), []
    placed = [workers[i * len(workers) // n_blocks] for i in range(n_blocks)]
    optimized = dask.optimize(*collections)  # together: work they share is done once
    graphs = [dict(collection.__dask_graph__()) for collection in optimized]
    pins: dict[Hashable, str] = {}
    for collection in optimized:
        for i, key in enumerate(flatten(collection.__dask_keys__())):
            pins[key] = placed[i]
    for dsk in graphs:  # a block fused into another task is an alias of it: pin that too
        for key, worker in list(pins.items()):
            while isinstance(dsk.get(key), Alias):
                key = getattr(dsk[key].target, "key", dsk[key].target)
                pins.setdefault(key, worker)
    pinned = [
        da.Array(pinned_graph(dsk, c.name, pins), c.name, c.chunks, meta=c._meta)
        for c, dsk in zip(optimized, graphs, strict=True)
    ]
    return pinned, placed


def block_homes(
    client: Any,
    array: da.Array,
    previous: Sequence[str | None] | None = None,
    holders: Mapping[Hashable, Sequence[str]] | None = None,
) -> list[str | None]:
    """The worker address of each block of the persisted ``array`` (None for a block no
    worker holds).  A block keeps its ``previous`` home while that worker still holds
    it; any other goes to the holder with the fewest homes so far, in block order.
    ``holders``: ``{block key: workers holding it}`` as the scheduler gave it
    (:class:`HoldersAhead`); None asks now, one ``who_has`` round trip (0.5 ms for 8
    blocks, 8 ms for 1,000 here)."""
    keys = list(flatten(array.__dask_keys__()))
    if holders is None:
        holders = client.who_has(array)
    homes: list[str | None] = [
        home if previous and home in holders.get(key, ()) else None
        for key, home in zip(keys, previous or [None] * len(keys), strict=True)
    ]
    load: Counter[str] = Counter(home for home in homes if home is not None)
    for i, key in enumerate(keys):
        candidates = sorted(holders.get(key, ()))
        if homes[i] is None and candidates:
            homes[i] = min(candidates, key=lambda worker: load[worker])
            load[homes[i]] += 1
    return homes


class HoldersAhead:
    """The workers holding each block of a persisted array, asked of the scheduler ahead
    of the pass that places its tasks by them (:func:`block_homes`).

    :meth:`ask` sends the ``who_has`` and returns at once; the answer comes back on the
    client's event loop while the client runs the M-step, and :meth:`take` hands it to
    the next pass.  A block moved after the ask is seen by the pass after: its task is
    still placed on a worker (the restriction is loose), which may have to copy it.  An
    answer older than :data:`MAX_AGE` seconds when it is taken (a checkpoint or a model
    scored between two passes, say) is left unused, and the pass asks itself.
    """

    #: Seconds :meth:`take` waits for an answer still on its way (then the pass asks).
    TIMEOUT = 10.0

    #: Seconds after the ask beyond which its answer is too old to place a pass by.
    MAX_AGE = 1.0

    def __init__(self) -> None:
        # (the array's name and blocks, when asked, the answer's future)
        self._asked: tuple[tuple[str, int], float, concurrent.futures.Future] | None = None

    def ask(self, client: Any, array: da.Array) -> None:
        """Ask where ``array``'s blocks are (a synchronous ``distributed.Client``; an
        asynchronous one, or one that cannot send, leaves the next pass to ask)."""
        self._asked = None
        if getattr(client, "asynchronous", False):
            return
        coroutine = None
        try:
            coroutine = client.scheduler.who_has(keys=list(flatten(array.__dask_keys__())))
            reply = asyncio.run_coroutine_threadsafe(coroutine, client.loop.asyncio_loop)
        except Exception:  # a client closing: never a reason to fail the pass just run
            if coroutine is not None:
                coroutine.close()
            return
        self._asked = ((array.name, array.numblocks[0]), time.monotonic(), reply)

    def homes(
        self, client: Any, array: da.Array, previous: Sequence[str | None]
    ) -> list[str | None]:
        """:func:`block_homes` of ``array`` after ``previous``, from the answer to the
        last :meth:`ask` where there is one, else asked now."""
        return block_homes(client, array, previous, self.take(array))

    def take(self, array: da.Array) -> Mapping[Hashable, Sequence[str]] | None:
        """The answer to the last :meth:`ask` about ``array``'s blocks, or None (none
        asked, asked about other blocks or more than :data:`MAX_AGE` s ago, failed, or
        not back in :data:`TIMEOUT` s)."""
        asked, self._asked = self._asked, None
        if asked is None:
            return None
        blocks, asked_at, reply = asked
        if blocks != (array.name, array.numblocks[0]) or time.monotonic() - asked_at > self.MAX_AGE:
            reply.cancel()
            return None
        try:
            return reply.result(timeout=self.TIMEOUT)
        except Exception:  # the pass asks again, and meets the failure itself
            reply.cancel()
            return None


def block_pins(
    keys: Sequence[Hashable], leaf_prefix: str, homes: Sequence[str | None] | None
) -> dict[Hashable, str]:
    """``{key: home of its block}`` for the keys ``(name, i, 0)`` among ``keys`` whose
    name starts with ``leaf_prefix`` (the E-step tasks of a pass, block i; a pass's only
    keys of that name); empty without homes."""
    if not homes:
        return {}
    return {
        key: homes[key[1]]
        for key in keys
        if isinstance(key, tuple)
        and str(key[0]).startswith(leaf_prefix)
        and homes[key[1]] is not None
    }


def pinned_graph(dsk: Mapping, name: str, pins: Mapping[Hashable, str]) -> HighLevelGraph:
    """``dsk`` as a one-layer HighLevelGraph named ``name`` (dask then names it by that
    name instead of hashing every task), its keys in ``pins`` restricted loosely to
    their worker."""
    annotations = None
    if pins:  # callables: dask applies them key by key (None: no annotation)
        annotations = {"workers": pins.get, "allow_other_workers": pins.__contains__}
    layer = MaterializedLayer(dict(dsk), annotations=annotations)
    return HighLevelGraph({name: layer}, {name: set()})
