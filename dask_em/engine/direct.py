"""Passes over persisted data without a graph: on each worker one actor runs a pass's
block function over the blocks that worker holds (``dask_em.direct-passes``).

Why: a pass submitted as a graph pays the scheduler's work on it (the graph sent,
ordered, its tasks assigned, their results reported and gathered).  On a LocalCluster
of 2 workers x 1 thread with 4 persisted blocks and a block function that does almost
nothing, a graph pass of 4 tasks and one merge took a median 31 ms (at best 21), where
one method call on an actor on each worker (:class:`BlockRunner`; the call and its
result relayed by the scheduler, no task) took 2.2-3.2 ms.  A diagonal Gaussian mixture
pass over 10^6 rows on that cluster computes for about 35 ms, so the graph costs a
third of each iteration there.

What a direct pass gives up, and why it is off unless asked for (Dask config
``dask_em.direct-passes``, e.g. ``DASK_DASK_EM__DIRECT_PASSES=True``): its work is not
a task, so it shows neither in the dashboard's task stream nor in the fit's spans
(every iteration is still an event and a log line, :mod:`.monitoring`); the scheduler
sees no task run, so a small keep-alive task is sent every :data:`KEEP_ALIVE_SECONDS`
(``distributed.scheduler.idle-timeout`` would otherwise close it in the middle of a
fit), and a worker that holds an actor is not retired gracefully (adaptive scaling
down waits for the fit's end).  Only persisted data (``cache="memory"``) on a
``distributed`` cluster is run this way; streamed data is read by tasks as before.

How: each worker's :class:`BlockRunner` knows the keys of the blocks whose home is that
worker (:mod:`.placement`; a weights block held elsewhere is copied to its home when
the runners start).  A pass sends it the block function, the parameters and the blocks'
extra arguments.  On the worker's event loop it looks each block up in the worker's
memory as a thread becomes free, runs the block function on it in the worker's thread
pool (with the task's share of BLAS threads, :mod:`.threads`), merges every node of the
pass's reduction tree whose blocks it holds (:func:`.reduction.merge_local_subtrees`)
and returns those nodes; the client merges the rest of the same tree
(:func:`.reduction.merge_from_subtrees`), so a direct pass computes what a graph pass
computes, bit for bit.

Failures: an exception raised by the block function is raised at once, as a graph pass
would raise it.  Anything else (a worker lost or paused for memory, a block moved or
dropped, the runners not starting within :data:`START_TIMEOUT` seconds) raises
:class:`DirectPassFailed`, and the engine runs that pass as a graph, which recovers
lost blocks or waits, watched, on paused workers (:mod:`.stalls`).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import dask
from dask.core import flatten

from dask_em.engine.reduction import merge_from_subtrees, merge_local_subtrees
from dask_em.engine.tasks import extra_args

#: Dask config key: True runs the passes over persisted data as direct passes.
CONFIG_KEY = "dask_em.direct-passes"

#: Seconds the runners (and the weights blocks copied to their homes) may take to start.
START_TIMEOUT = 60.0

#: A small task is sent at most this often while direct passes run (module docstring).
KEEP_ALIVE_SECONDS = 30.0

#: One block a runner holds: (index in the array, key of X's block, key of the weights'
#: block or None).
HeldBlock = tuple[int, Hashable, Hashable | None]


class DirectPassFailed(RuntimeError):
    """A direct pass could not run (not an error of the block function): run it as a graph."""


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
        extra: dict[int, tuple[int, ...]],
    ) -> dict[str, Any]:
        """``{"nodes": {(level, j): part}}``, the highest nodes of the pass's tree this
        worker's blocks make from ``block_func(shared, X_i, w_i, *extra[i])``; or
        ``{"error": exception}``, the first the block function raised; or
        ``{"failed": reason}`` when the pass cannot run here."""
        from distributed import get_worker
        from distributed.core import Status

        worker = get_worker()
        if worker.status != Status.running:  # paused for memory: let a graph wait, watched
            return {"failed": f"worker {worker.address} is {worker.status.name}"}
        loop = asyncio.get_running_loop()
        executor = worker.executors["default"]
        free_threads = asyncio.Semaphore(max(1, worker.state.nthreads))

        async def one_block(i: int, x_key: Hashable, w_key: Hashable | None) -> Any:
            async with free_threads:  # a block is read (maybe unspilled) when it starts
                try:
                    X = worker.data[x_key]
                    w = None if w_key is None else worker.data[w_key]
                except KeyError as missing:  # dropped since the check below
                    raise DirectPassFailed(f"a block left {worker.address}") from missing
                # in a copy of this context, where get_worker() finds the worker (the
                # thread limit asks it for the task's share of BLAS threads, .threads)
                call = contextvars.copy_context().run
                arguments = (block_func, shared, X, w, *extra.get(i, ()))
                return await loop.run_in_executor(executor, call, *arguments)

        blocks = self.blocks
        for _, x_key, w_key in blocks:
            if x_key not in worker.data or (w_key is not None and w_key not in worker.data):
                return {"failed": f"a block is no longer on {worker.address}"}
        results = await asyncio.gather(
            *(one_block(*block) for block in blocks), return_exceptions=True
        )
        for result in results:
            if isinstance(result, DirectPassFailed):
                return {"failed": str(result)}
        for result in results:
            if isinstance(result, BaseException):
                return {"error": result}
        leaves = {i: part for (i, _, _), part in zip(blocks, results, strict=True)}
        nodes = await loop.run_in_executor(
            executor, merge_local_subtrees, leaves, self.n_blocks, merge, self.split_every
        )
        return {"nodes": nodes}


def _same(value: Any) -> Any:
    """A weights block, copied to the worker this task runs on."""
    return value


def _keep_alive() -> None:
    """A task that does nothing (module docstring)."""


class DirectPasses:
    """The client's side: one :class:`BlockRunner` per worker that is home to blocks.

    Parameters
    ----------
    client : the ``distributed.Client`` the fit runs on (the runners are made and
        called on it, whichever client is the current one).
    X, sample_weight : the persisted dask arrays (weights, lengths or None), blocks
        along rows.
    homes : each block's worker (:func:`.placement.block_homes`; none may be None).
    split_every : fan-in of the reduction tree.
    model : short name in the keys (``blocks-<model>-<token>-<n>``).

    Raises :class:`DirectPassFailed` when the runners do not start.
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
        from distributed import wait

        self.client, self.model = client, model
        self.n_blocks, self.split_every = X.numblocks[0], split_every
        token = uuid.uuid4().hex[:8]
        x_keys = list(flatten(X.__dask_keys__()))
        with client.as_current():
            w_keys, self._futures = self._weights_beside_x(sample_weight, homes, token)
            held: dict[str, list[HeldBlock]] = defaultdict(list)
            for i, (home, x_key, w_key) in enumerate(zip(homes, x_keys, w_keys, strict=True)):
                held[home].append((i, x_key, w_key))
            self._indices = [[i for i, _, _ in blocks] for blocks in held.values()]
            # A loose restriction: the scheduler puts each runner on its worker, and a
            # runner lost with its worker may be made again elsewhere (where its blocks
            # are not, so a call there fails) instead of waiting for ever.
            runners = [
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
            self._futures += runners
            try:
                wait(self._futures, timeout=START_TIMEOUT)
            except TimeoutError as error:
                self.close()
                message = f"the runners did not start in {START_TIMEOUT:g} s"
                raise DirectPassFailed(message) from error
            self._runners = [future.result() for future in runners]
        self._kept_alive = time.monotonic()

    def _weights_beside_x(
        self, sample_weight: Any, homes: Sequence[str], token: str
    ) -> tuple[list[Hashable | None], list]:
        """Each block's weights key, a copy on the block's home where the weights block
        is held elsewhere (data the workers computed and rebalanced), and the copies'
        futures."""
        from distributed import futures_of

        if sample_weight is None:
            return [None] * len(homes), []
        futures = {future.key: future for future in futures_of(sample_weight)}
        keys: list[Hashable | None] = list(flatten(sample_weight.__dask_keys__()))
        holders = self.client.who_has(list(futures.values()))
        copies = []
        for i, (home, key) in enumerate(zip(homes, keys, strict=True)):
            if home not in holders.get(key, ()):
                copy = self.client.submit(
                    _same,
                    futures[key],
                    workers=[home],
                    allow_other_workers=False,
                    key=f"weights-{self.model}-{token}-{i}",
                )
                copies.append(copy)
                keys[i] = copy.key
        return keys, copies

    @property
    def copied(self) -> int:
        """Weights blocks copied to their block's home when the runners started."""
        return sum(1 for future in self._futures if str(future.key).startswith("weights-"))

    def run(
        self,
        block_func: Callable[..., Any],
        merge: Callable[..., Any],
        shared: Any,
        per_block: Sequence[Sequence[int]] | None = None,
    ) -> Any:
        """The root of the pass's reduction tree: ``merge`` over ``block_func(shared,
        X_i, w_i, *per_block[i])`` for every block i (as a graph pass); ``per_block``:
        (n_blocks, k) small integers, or None."""
        from distributed.protocol import pickle

        self._keep_scheduler_awake()
        arguments = [
            (
                block_func,
                merge,
                shared,
                {i: extra_args(per_block[i]) for i in indices} if per_block is not None else {},
            )
            for indices in self._indices
        ]
        try:  # an argument that cannot be sent would leave the actor's reply unset
            pickle.dumps(arguments[0][:3])
        except Exception as error:
            raise DirectPassFailed(f"the pass's arguments cannot be sent: {error!r}") from error
        with self.client.as_current():
            calls = [
                runner.run(*args) for runner, args in zip(self._runners, arguments, strict=True)
            ]
            try:
                replies = [call.result() for call in calls]
            except Exception as error:  # a worker lost, or its runner
                raise DirectPassFailed(repr(error)) from error
        nodes: dict[tuple[int, int], Any] = {}
        for reply in replies:
            if "error" in reply:
                raise reply["error"]
            if "failed" in reply:
                raise DirectPassFailed(reply["failed"])
            nodes.update(reply["nodes"])
        return merge_from_subtrees(nodes, self.n_blocks, merge, self.split_every)

    def _keep_scheduler_awake(self) -> None:
        from distributed import fire_and_forget

        if time.monotonic() - self._kept_alive >= KEEP_ALIVE_SECONDS:
            key = f"direct-{self.model}-alive-{uuid.uuid4().hex[:8]}"
            fire_and_forget(self.client.submit(_keep_alive, key=key))
            self._kept_alive = time.monotonic()

    def close(self) -> None:
        """Let the cluster drop the runners and the copies of weights blocks."""
        for future in self._futures:
            future.release()
        self._futures, self._runners = [], []
