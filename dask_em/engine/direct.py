"""Passes over persisted data without a graph: on each worker one actor runs a pass's
block function over the blocks that worker holds (``dask_em.direct-passes``).

Why: a pass submitted as a graph pays the scheduler's round trip (the graph sent,
ordered, its tasks assigned, their results reported and gathered).  On a LocalCluster
of 2 workers x 1 thread with 4 persisted blocks and a block function that does almost
nothing, a graph pass of 4 tasks and one merge took a median 31 ms (at best 21), where
one method call on an actor on each worker (:class:`BlockRunner`), sent from the
client straight to the worker, took 3.2 ms (at best 2.2).  A diagonal Gaussian mixture
pass over 10^6 rows on that cluster computes for about 35 ms, so the graph costs a
third of each iteration there.

What a direct pass gives up, and why it is off unless asked for (Dask config
``dask_em.direct-passes``, e.g. ``DASK_DASK_EM__DIRECT_PASSES=True``): its work is not
a task, so it shows neither in the dashboard's task stream nor in the fit's spans
(every iteration is still an event and a log line, :mod:`.monitoring`), and a pass
held up by workers paused for memory is not watched (:mod:`.stalls`).  Only persisted
data (``cache="memory"``) on a ``distributed`` cluster is run this way; streamed data
is read by tasks as before.

How: each worker's :class:`BlockRunner` knows the keys of the blocks whose home is that
worker (:mod:`.placement`).  A pass sends it the block function (with its share of
BLAS threads, :mod:`.threads`, as a task gets), the parameters and the blocks' extra
arguments.  It looks the blocks up in the worker's memory on the worker's event loop,
runs the block function on each in the worker's thread pool, merges every node of the
pass's reduction tree whose blocks it holds (:func:`.reduction.merge_local_subtrees`)
and returns those nodes; the client merges the rest of the same tree
(:func:`.reduction.merge_from_subtrees`), so a direct pass computes what a graph pass
computes, bit for bit.  When anything goes wrong in a direct pass (a worker lost, a
block moved or dropped, an error in the block function) the engine runs that pass,
and every later one of the fit, as a graph, which recovers lost blocks, or raises the
block function's error as a graph pass would.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import dask
from dask.core import flatten

from dask_em.engine.reduction import merge_from_subtrees, merge_local_subtrees

#: Dask config key: True runs the passes over persisted data as direct passes.
CONFIG_KEY = "dask_em.direct-passes"

#: One block a runner holds: (index in the array, key of X's block, key of the weights'
#: block or None).
HeldBlock = tuple[int, Hashable, Hashable | None]


def direct_passes_asked() -> bool:
    """Whether the Dask config asks for direct passes (module docstring)."""
    value = dask.config.get(CONFIG_KEY, False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class BlockRunner:
    """An actor on one worker: runs passes over the persisted blocks it was given.

    Parameters
    ----------
    blocks : the blocks held by this worker (:data:`HeldBlock`), in block order.
    n_blocks : blocks of the whole array (the reduction tree's leaves).
    split_every : fan-in of the reduction tree.
    """

    def __init__(self, blocks: Sequence[HeldBlock], n_blocks: int, split_every: int) -> None:
        self.blocks = list(blocks)
        self.n_blocks = n_blocks
        self.split_every = split_every

    async def run(
        self,
        block_func: Callable[..., Any],
        merge: Callable[..., Any],
        shared: Any,
        extra: dict[int, tuple],
    ) -> dict[tuple[int, int], Any]:
        """``{(level, j): part}``: the highest nodes of the pass's tree this worker's
        blocks make, from ``block_func(shared, X_i, w_i, *extra[i])`` for each."""
        from distributed import get_worker

        worker = get_worker()
        data = worker.data  # read on the event loop, as the worker itself reads it
        held = [(i, data[x], None if w is None else data[w]) for i, x, w in self.blocks]
        loop = asyncio.get_running_loop()
        executor = worker.executors["default"]
        # each call in a copy of this context, where get_worker() finds the worker (the
        # thread limit asks it for the task's share of BLAS threads, .threads)
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    executor,
                    contextvars.copy_context().run,
                    block_func,
                    shared,
                    X,
                    w,
                    *extra.get(i, ()),
                )
                for i, X, w in held
            )
        )
        leaves = {i: part for (i, _, _), part in zip(held, parts, strict=True)}
        return await loop.run_in_executor(
            executor, merge_local_subtrees, leaves, self.n_blocks, merge, self.split_every
        )


class DirectPasses:
    """The client's side: one :class:`BlockRunner` per worker that is home to blocks.

    Parameters
    ----------
    client : the ``distributed.Client``.
    X, sample_weight : the persisted dask arrays (weights or None), blocks along rows.
    homes : each block's worker (:func:`.placement.block_homes`; none may be None).
    split_every : fan-in of the reduction tree.
    model : short name in the actors' keys (``blocks-<model>-<token>``).
    """

    def __init__(
        self,
        client: Any,
        X: Any,
        sample_weight: Any,
        homes: Sequence[str],
        *,
        split_every: int,
        model: str,
    ) -> None:
        x_keys = list(flatten(X.__dask_keys__()))
        w_keys = (
            [None] * len(x_keys)
            if sample_weight is None
            else list(flatten(sample_weight.__dask_keys__()))
        )
        held: dict[str, list[HeldBlock]] = defaultdict(list)
        for i, (home, x_key, w_key) in enumerate(zip(homes, x_keys, w_keys, strict=True)):
            held[home].append((i, x_key, w_key))
        self.n_blocks, self.split_every = len(x_keys), split_every
        self._indices = [[i for i, _, _ in blocks] for blocks in held.values()]
        token = uuid.uuid4().hex[:8]
        # A loose restriction: a call that finds its runner's worker gone may wait for
        # the runner to be made again (distributed's Actor retries there), which only
        # a loose restriction allows; on another worker it finds none of its blocks and
        # fails at once, and the engine turns to graphs (tests/test_fault_tolerance.py).
        self._futures = [
            client.submit(
                BlockRunner,
                blocks,
                self.n_blocks,
                split_every,
                actor=True,
                workers=[home],
                allow_other_workers=True,
                key=f"blocks-{model}-{token}-{n}",
            )
            for n, (home, blocks) in enumerate(held.items())
        ]
        self._runners = [future.result() for future in self._futures]

    def run(
        self,
        block_func: Callable[..., Any],
        merge: Callable[..., Any],
        shared: Any,
        per_block: Sequence[tuple] | None = None,
    ) -> Any:
        """The root of the pass's reduction tree: ``merge`` over ``block_func(shared,
        X_i, w_i, *per_block[i])`` for every block i (as a graph pass)."""
        calls = [
            runner.run(
                block_func,
                merge,
                shared,
                {i: tuple(per_block[i]) for i in indices} if per_block is not None else {},
            )
            for runner, indices in zip(self._runners, self._indices, strict=True)
        ]
        nodes: dict[tuple[int, int], Any] = {}
        for call in calls:
            nodes.update(call.result())
        return merge_from_subtrees(nodes, self.n_blocks, merge, self.split_every)

    def close(self) -> None:
        """Let the cluster drop the actors (they hold no data of their own)."""
        for future in self._futures:
            future.release()
        self._futures, self._runners = [], []
