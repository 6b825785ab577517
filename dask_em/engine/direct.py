"""Passes over persisted data without a graph: each worker runs a pass's block function
over the blocks it holds, called through ``Client.run`` (``dask_em.direct-passes``).

Why: a pass submitted as a graph pays the scheduler's work on it (the graph sent,
ordered, its tasks assigned, their results reported and gathered).  On a LocalCluster
of 2 workers x 1 thread with 4 persisted blocks and a block function that does almost
nothing, a graph pass of 4 tasks and one merge took a median 31 ms (at best 21), where
one ``Client.run`` of a coroutine on both workers (relayed by the scheduler, no task)
took 1.5 ms.  A diagonal Gaussian mixture pass over 10^6 rows on that cluster computes
for about 35 ms, so the graph costs a third of each iteration there.

What a direct pass gives up, and why it is off unless asked for (Dask config
``dask_em.direct-passes``, e.g. ``DASK_DASK_EM__DIRECT_PASSES=True``): its work is not
a task, so it shows neither in the dashboard's task stream nor in the fit's spans
(every iteration is still an event and a log line, :mod:`.monitoring`), each worker
logs distributed's INFO line "Run out-of-band function" per pass, and the scheduler
sees no task run: a small keep-alive task is sent at least every
:data:`KEEP_ALIVE_SECONDS` (a third of ``distributed.scheduler.idle-timeout`` when that
is shorter) while direct passes run, or the idle timeout would close the scheduler in
the middle of a fit, and adaptive scaling sees idle workers.  Only persisted data
(``cache="memory"``) on a ``distributed`` cluster is run this way.

How (:func:`run_direct_pass`, on every worker that is home to blocks,
:mod:`.placement`; a weights block held elsewhere is first copied to its home): the
worker looks each of its blocks up in its memory as a thread becomes free, runs the
block function on it in its thread pool with the task's share of BLAS threads
(:mod:`.threads`), merges every node of the pass's reduction tree whose blocks it holds
(:func:`.reduction.merge_local_subtrees`) and returns those nodes, pickled; the client
merges the rest of the same tree (:func:`.reduction.merge_from_subtrees`), so a direct
pass computes what a graph pass computes, bit for bit.

Failures: an exception raised by the block function or by ``merge`` is raised in the
client at once, as a graph pass would raise it (with the worker's traceback as a note;
an exception that cannot travel becomes a RuntimeError with its text).  Anything else
(a worker lost or paused for memory, a block moved or dropped, a call that fails, the
weights' copies not made within :data:`START_TIMEOUT` seconds) raises
:class:`DirectPassFailed`, and the engine runs that pass as a graph, which recovers
lost blocks or waits, watched, on paused workers (:mod:`.stalls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import threading
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import dask
from dask.core import flatten

from dask_em.engine.reduction import merge_from_subtrees, merge_local_subtrees
from dask_em.engine.tasks import extra_args
from dask_em.engine.threads import task_share, task_thread_limit

#: Dask config key: True runs the passes over persisted data as direct passes.
CONFIG_KEY = "dask_em.direct-passes"

#: Seconds the copies of weights blocks beside their X blocks may take to be made.
START_TIMEOUT = 60.0

#: A keep-alive task is sent at least this often while direct passes run (module
#: docstring); more often when the scheduler's idle timeout is under three times it.
KEEP_ALIVE_SECONDS = 30.0

#: One block a worker runs: (index in the array, key of X's block, key of the weights'
#: block or None).
HeldBlock = tuple[int, Hashable, Hashable | None]


class DirectPassFailed(RuntimeError):
    """A direct pass could not run (not an error of the block function): run it as a graph."""


def config_flag(key: str, default: bool) -> bool:
    """A yes/no Dask config value; strings from the environment ("true", "False", "0",
    "off", ...) read as a person means them."""
    value = dask.config.get(key, default)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def direct_passes_asked() -> bool:
    """Whether the Dask config asks for direct passes (module docstring)."""
    return config_flag(CONFIG_KEY, False)


# -- in the workers -----------------------------------------------------------------
def _guarded(share: int | None, function: Callable[..., Any], *args: Any) -> tuple:
    """``("ok", function(*args))`` or ``("error", exception, traceback text)``, under a
    limit of ``share`` BLAS threads (None: no limit)."""
    try:
        with task_thread_limit(share) if share else contextlib.nullcontext():
            return ("ok", function(*args))
    except Exception as error:
        return ("error", error, traceback.format_exc())


def _sendable(error: Exception, trace: str, address: str) -> Exception:
    """``error`` with the worker's traceback as a note, or a RuntimeError with its text
    when it would not survive the trip to the client."""
    try:
        error.add_note(f"raised in a direct pass on {address}:\n{trace}")
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(
            f"{type(error).__name__}: {error}\n(in a direct pass on {address})\n{trace}"
        )


async def run_direct_pass(
    held: Mapping[str, Sequence[HeldBlock]],
    n_blocks: int,
    split_every: int,
    block_func: Callable[..., Any],
    merge: Callable[..., Any],
    shared: Any,
    extra: Mapping[int, tuple[int, ...]],
    threads_by_host: Mapping[str, int],
    dask_worker: Any = None,
) -> dict[str, Any]:
    """One worker's share of a direct pass (run by ``Client.run`` on that worker).

    ``held[address]``: the blocks of the worker at ``address``, in block order.  Returns
    ``{"nodes": pickled {(level, j): part}}`` (the highest nodes of the pass's tree its
    blocks make from ``block_func(shared, X_i, w_i, *extra[i])``), ``{"error":
    exception}`` (the first the block function or ``merge`` raised), or ``{"failed":
    reason}`` when the pass cannot run here.
    """
    from distributed.core import Status

    worker = dask_worker
    if worker.status != Status.running:  # paused for memory: let a graph wait, watched
        return {"failed": f"worker {worker.address} is {worker.status.name}"}
    blocks = list(held.get(worker.address, ()))
    data = worker.data
    for _, x_key, w_key in blocks:
        if x_key not in data or (w_key is not None and w_key not in data):
            return {"failed": f"a block is no longer on {worker.address}"}
    share = task_share(threads_by_host, worker)
    loop = asyncio.get_running_loop()
    executor = worker.executors["default"]
    free_threads = asyncio.Semaphore(max(1, worker.state.nthreads))

    async def one_block(i: int, x_key: Hashable, w_key: Hashable | None) -> tuple:
        async with free_threads:  # a block is read (maybe unspilled) when it starts
            X = data[x_key]
            w = None if w_key is None else data[w_key]
            arguments = (share, block_func, shared, X, w, *extra.get(i, ()))
            return await loop.run_in_executor(executor, _guarded, *arguments)

    # an exception here is the worker's (a block dropped, its executor shut down)
    results = await asyncio.gather(*(one_block(*b) for b in blocks), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            return {"failed": f"{type(result).__name__}: {result} on {worker.address}"}
    for result in results:
        if result[0] == "error":
            return {"error": _sendable(result[1], result[2], worker.address)}
    leaves = {i: result[1] for (i, _, _), result in zip(blocks, results, strict=True)}
    merged = await loop.run_in_executor(
        executor, _guarded, None, merge_local_subtrees, leaves, n_blocks, merge, split_every
    )
    if merged[0] == "error":
        return {"error": _sendable(merged[1], merged[2], worker.address)}
    try:  # pickled here, so that statistics that cannot travel are an error, not a hang
        return {"nodes": pickle.dumps(merged[1], protocol=pickle.HIGHEST_PROTOCOL)}
    except Exception as error:
        return {"error": _sendable(error, traceback.format_exc(), worker.address)}


def _same(value: Any) -> Any:
    """A weights block, copied to the worker this task runs on."""
    return value


def _keep_alive() -> None:
    """A task that does nothing (module docstring)."""


# -- in the client ------------------------------------------------------------------
class DirectPasses:
    """The client's side of direct passes over one persisted array.

    Parameters
    ----------
    client : the ``distributed.Client`` the fit runs on.
    X, sample_weight : the persisted dask arrays (weights, lengths or None), blocks
        along rows.
    homes : each block's worker (:func:`.placement.block_homes`; none may be None).
    split_every : fan-in of the reduction tree.
    model : short name in the keys (``weights-<model>-...``, ``direct-<model>-alive-...``).

    Raises :class:`DirectPassFailed` when the weights cannot be put beside their blocks.
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
        self.client, self.model = client, model
        self.n_blocks, self.split_every = X.numblocks[0], split_every
        self._futures: list = []
        try:
            w_keys = self._weights_beside_x(sample_weight, homes)
        except Exception as error:
            self.close()
            raise DirectPassFailed(f"the weights were not put beside X: {error!r}") from error
        x_keys = list(flatten(X.__dask_keys__()))
        held: dict[str, list[HeldBlock]] = defaultdict(list)
        for i, (home, x_key, w_key) in enumerate(zip(homes, x_keys, w_keys, strict=True)):
            held[home].append((i, x_key, w_key))
        self._held = dict(held)
        self._keep_alive_every = KEEP_ALIVE_SECONDS
        with contextlib.suppress(Exception):  # the scheduler's idle timeout, if any
            idle = client.run_on_scheduler(_idle_timeout)
            if idle:
                self._keep_alive_every = min(KEEP_ALIVE_SECONDS, idle / 3)
        self._kept_alive = time.monotonic()

    def _weights_beside_x(self, sample_weight: Any, homes: Sequence[str]) -> list:
        """Each block's weights key: a copy on the block's home where the weights block
        is held elsewhere (data the workers computed and rebalanced)."""
        from distributed import futures_of, wait

        if sample_weight is None:
            return [None] * len(homes)
        futures = {future.key: future for future in futures_of(sample_weight)}
        keys: list = list(flatten(sample_weight.__dask_keys__()))
        holders = self.client.who_has(list(futures.values()))
        token = uuid.uuid4().hex[:8]
        for i, (home, key) in enumerate(zip(homes, keys, strict=True)):
            if home not in holders.get(key, ()):
                copy = self.client.submit(
                    _same,
                    futures[key],
                    workers=[home],
                    allow_other_workers=False,
                    key=f"weights-{self.model}-{token}-{i}",
                )
                self._futures.append(copy)
                keys[i] = copy.key
        wait(self._futures, timeout=START_TIMEOUT)
        for copy in self._futures:
            if copy.status != "finished":
                raise DirectPassFailed(f"copy {copy.key} is {copy.status}")
        return keys

    @property
    def copied(self) -> int:
        """Weights blocks copied to their block's home."""
        return len(self._futures)

    def run(
        self,
        block_func: Callable[..., Any],
        merge: Callable[..., Any],
        shared: Any,
        per_block: Sequence[Sequence[int]] | None,
        threads_by_host: Mapping[str, int],
    ) -> Any:
        """The root of the pass's reduction tree: ``merge`` over ``block_func(shared,
        X_i, w_i, *per_block[i])`` for every block i (as a graph pass); ``per_block``:
        (n_blocks, k) small integers, or None; ``threads_by_host``: Dask threads per
        host (:func:`.threads.host_threads`), for each block's share of BLAS threads."""
        extra = {} if per_block is None else {i: extra_args(row) for i, row in enumerate(per_block)}
        arguments = (self._held, self.n_blocks, self.split_every, block_func, merge, shared)
        with self._keeping_scheduler_awake():
            try:
                replies = self.client.run(
                    run_direct_pass,
                    *arguments,
                    extra,
                    dict(threads_by_host),
                    workers=list(self._held),
                )
            except Exception as error:  # a worker lost, or the call itself
                raise DirectPassFailed(f"{type(error).__name__}: {error}") from error
        missing = set(self._held) - set(replies)
        if missing:
            raise DirectPassFailed(f"no reply from {sorted(missing)}")
        for reply in replies.values():
            if "error" in reply:
                raise reply["error"]
        for reply in replies.values():
            if "failed" in reply:
                raise DirectPassFailed(reply["failed"])
        nodes: dict[tuple[int, int], Any] = {}
        for reply in replies.values():
            nodes.update(pickle.loads(reply["nodes"]))
        return merge_from_subtrees(nodes, self.n_blocks, merge, self.split_every)

    @contextlib.contextmanager
    def _keeping_scheduler_awake(self) -> Iterator[None]:
        """A keep-alive task now if one is due, and every ``_keep_alive_every`` seconds
        while the pass runs (module docstring)."""
        done = threading.Event()

        def keep_alive() -> None:
            while not done.is_set():
                due = self._kept_alive + self._keep_alive_every - time.monotonic()
                if due <= 0:
                    self._send_keep_alive()
                    due = self._keep_alive_every
                if done.wait(max(due, 0.05)):
                    return

        thread = threading.Thread(target=keep_alive, name="dask-em-keep-alive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _send_keep_alive(self) -> None:
        from distributed import fire_and_forget

        self._kept_alive = time.monotonic()
        with contextlib.suppress(Exception):  # the pass itself reports a lost cluster
            key = f"direct-{self.model}-alive-{uuid.uuid4().hex[:8]}"
            fire_and_forget(self.client.submit(_keep_alive, key=key))

    def close(self) -> None:
        """Let the cluster drop the copies of weights blocks."""
        for future in self._futures:
            future.release()
        self._futures = []


def _idle_timeout(dask_scheduler: Any = None) -> float | None:
    """The scheduler's idle timeout in seconds (None: none)."""
    return dask_scheduler.idle_timeout
