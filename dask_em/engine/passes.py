"""The engine's passes: data placement and one pass over the data as one Dask graph.

One pass over the data is one small graph:

    params-<model>-<token>                     the parameters, one literal key
    estep-<model>-<token>, i                   block_stats(params, X_i, w_i), one per block
    reduce-<model>-<token>, level, j           merge of up to ``split_every`` children

so each worker receives the parameters once (a pass over persisted data puts small ones
inside its tasks, :mod:`.grouped`), the E-step and the statistics of a block run fused
in one task where the block lives, and only statistics of size O(K D^2) travel up a
fixed tree (:mod:`.reduction`) whose root, a merge of at most ``split_every`` parts,
runs in the client, which then runs the M-step (task stream: ``estep-``, ``reduce-``).

Data placement (``cache``): ``"memory"`` persists X (and the sample weights) in the
cluster once (data held here is scattered, :mod:`.scatter`; blocks lost with a worker
are sent again; rows in the model's ``row_order``, :mod:`.row_order`); ``"stream"``
keeps the graph that reads X (from Zarr, say), so every pass reads it again, each
block's read fused into its E-step task (the per-block layer is blockwise over X) so
that a worker holds one block per thread; ``"auto"`` persists when X takes at most half
of the cluster's memory.  A pass over persisted data runs one E-step task per worker
thread over its worker's blocks (:mod:`.grouped`, :mod:`.placement`), or no graph with
``dask_em.direct-passes`` set (:mod:`.direct`).  Spans and events: :mod:`.monitoring`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
from dask.delayed import Delayed, delayed

from dask_em.engine.cluster import active_client, wait_watched
from dask_em.engine.direct import DirectPasses, DirectPassFailed, direct_passes_asked
from dask_em.engine.grouped import finish_grouped, grouped_pass_graph, pass_groups
from dask_em.engine.monitoring import FitMonitor
from dask_em.engine.placement import HoldersAhead, block_pins, persist_on_workers, pinned_graph
from dask_em.engine.reduction import add_lower_levels, merge_in_tree
from dask_em.engine.row_order import RowOrder, in_row_order, is_persisted, ordered_collections
from dask_em.engine.scatter import MAX_RESENDS, blocks_here, lost_blocks
from dask_em.engine.stalls import blocks_of, key_name
from dask_em.engine.tasks import estep_block_task
from dask_em.engine.threads import host_threads, limit_threads
from dask_em.engine.workers import scheduler_workers

#: One logger for the whole engine: a fit's log lines (and its warnings) come from it.
logger = logging.getLogger("dask_em.engine")

CACHE_MODES = ("auto", "memory", "stream")

#: In "auto" mode, persist when the data takes at most this share of cluster memory.
AUTO_PERSIST_SHARE = 0.5

#: Direct passes that could not run before the rest of a fit's passes run as graphs.
MAX_DIRECT_FAILURES = 3

#: In-memory NumPy input up to this size is fitted in the calling process, without the
#: cluster: shipping it would cost more than the arithmetic (EM can need 1,000s of passes).
LOCAL_FIT_BYTES = 32 * 2**20


class EMEngine:
    """Runs passes of block functions and full EM loops over a row-chunked dask array.

    Parameters
    ----------
    X : dask array (n_samples, n_features), chunked along rows only.
    sample_weight : dask array (n_samples,) with X's row chunks, or None.
    lengths : for sequence data (hidden Markov models), instead of weights: a dask array
        (n_sequences,) whose block i holds the lengths of the sequences in X's block i
        (see :mod:`dask_em.sequences`).  Block functions then receive the lengths where
        they would receive the weights; weighted sequences come as one table per block,
        fields ``length`` and ``weight`` (:func:`dask_em.sequences.weighted_lengths`).
    model : short name used in task names (``estep-<model>``).
    cache : "auto", "memory" or "stream" (see module docstring).
    split_every : fan-in of the reduction tree.
    local : run in this process, block by block, without building graphs, even when a
        ``distributed.Client`` is active (small in-memory data, where shipping it to the
        cluster and scheduling would cost more than the arithmetic).
    client : the ``distributed.Client`` to run on; None: the active one, if any.
    row_order : for exchangeable rows, the order each block is read in (:mod:`.row_order`).
    """

    def __init__(
        self,
        X: da.Array,
        sample_weight: da.Array | None = None,
        *,
        lengths: da.Array | None = None,
        model: str,
        cache: str = "auto",
        split_every: int = 8,
        local: bool = False,
        client: Any = None,
        row_order: RowOrder | None = None,
    ):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if len(X.chunks[1]) != 1:
            raise ValueError("EMEngine needs the feature axis in one chunk; rechunk X first")
        if split_every < 2:
            raise ValueError(f"split_every must be at least 2, got {split_every}")
        if lengths is not None:
            if sample_weight is not None:
                raise ValueError("pass sample_weight or lengths, not both")
            if lengths.numblocks[0] != X.numblocks[0]:
                raise ValueError("lengths must have one block per block of X")
            sample_weight = lengths  # travels in the weights' place, block by block
        self.sequences = lengths is not None
        self.row_order = None if self.sequences else row_order
        self.model = model
        self.fit_id = uuid.uuid4().hex[:8]
        self.split_every = split_every
        self.local = local
        self.client = None if local else client if client is not None else active_client()
        self.monitor = FitMonitor(self.client, model, self.fit_id)  # spans, events, log lines
        self._scattered_from: tuple | None = None  # (X, weights) as given, to resend
        self._resent = 0  # times they were sent again after a worker loss
        self._homes: list[str | None] | None = None  # each block's worker, once persisted
        self._holders = HoldersAhead()  # where the blocks are, asked after each pass
        self._previous_results: list = []  # the last pass's futures (_submit)
        self.persisted = self._should_persist(X, sample_weight, cache)
        if self.persisted:
            X, sample_weight = self._persist(X, sample_weight)
        self.X, self.sample_weight = X, sample_weight
        # passes over persisted data without graphs, when the config asks (.direct)
        self._direct_wanted = self.persisted and self.client is not None and direct_passes_asked()
        self._direct: DirectPasses | None = None
        self._direct_failures = 0
        self._local_blocks = blocks_here(X, sample_weight, self.row_order) if local else None
        self.passes = 0  # passes over the data run so far (every stage)
        self.bytes_read = 0  # bytes of data (X and weights) those passes read

    # -- placement ------------------------------------------------------------------
    def memory_budget(self) -> int:
        """Bytes of memory the cluster (or this machine, without a client) offers."""
        if self.client is not None:
            limits = [w.get("memory_limit") or 0 for w in scheduler_workers(self.client).values()]
            if limits and all(limits):
                return int(sum(limits))
            return int(psutil.virtual_memory().total)
        return int(psutil.virtual_memory().available)

    def _should_persist(self, X, sample_weight, cache) -> bool:
        if self.local:
            return False  # the blocks are views of an in-memory array already
        if cache != "auto":
            return cache == "memory"
        nbytes = X.nbytes + (0 if sample_weight is None else sample_weight.nbytes)
        return nbytes <= AUTO_PERSIST_SHARE * self.memory_budget()

    def _persist(self, X, sample_weight):
        collections = (X,) if sample_weight is None else (X, sample_weight)
        order = None if is_persisted(X) else self.row_order  # the user's: as it is
        if self.client is not None:  # data held here is scattered, the workers balanced
            persisted, scattered, self._homes = persist_on_workers(
                self.client, collections, blocks_of(X, sample_weight), order
            )
            self._scattered_from = (X, sample_weight) if scattered else None
        else:
            persisted = dask.persist(
                *(ordered_collections(order, collections) if order else collections)
            )
        where = "the cluster" if self.client is not None else "local memory"
        logger.info("persisted %.1f MB of data in %s", X.nbytes / 1e6, where)
        return persisted[0], (persisted[1] if sample_weight is not None else None)

    @property
    def n_blocks(self) -> int:
        return self.X.numblocks[0]

    @property
    def block_rows(self) -> tuple[int, ...]:
        """Rows of X in each block."""
        return tuple(int(n) for n in self.X.chunks[0])

    @property
    def pass_bytes(self) -> int:
        """Bytes of data one pass reads: X and the sample weights, every block once."""
        return int(self.X.nbytes + (0 if self.sample_weight is None else self.sample_weight.nbytes))

    def _submit(self, dsk: dict, keys: list, pins: dict) -> list:
        """The values of ``keys``, computed on the cluster in the open span, each task
        in ``pins`` kept on its worker (:mod:`.placement`); a pass stalled on workers
        paused for memory raises MemoryStallError (:func:`.cluster.wait_watched`)."""
        span = self.monitor.current_span
        # a HighLevelGraph, not a dict: named by a random token, not a hash of it all (5 ms)
        graph = pinned_graph(dsk, keys[0][0], pins)
        with dask.annotate(span=span) if span else contextlib.nullcontext():
            futures = self.client.get(graph, keys, sync=False)
        # the last pass's results released only now: a release sent between passes held
        # the next graph back (distributed batches a stream's messages; README: Architecture)
        self._previous_results = futures
        names = {key_name(key) for key in dsk}  # the pass's tasks, O(n_blocks)
        try:
            wait_watched(self.client, futures, names, blocks_of(self.X, self.sample_weight))
            parts = self.client.gather(futures)
            if self._homes is not None:  # asked now, taken by the next pass (.placement)
                self._holders.ask(self.client, self.X)
            return parts
        except BaseException:  # a failed or interrupted pass is not held (or run on)
            self._previous_results = []
            raise

    def release(self) -> None:
        """Drop references to persisted data so the cluster can free it."""
        self.X = self.sample_weight = self._scattered_from = self._local_blocks = None
        self._previous_results = []
        self._direct_wanted = False
        self._close_direct()

    # -- one pass -------------------------------------------------------------------
    def pass_graph(
        self,
        block_func: Callable[..., Any],
        merge: Callable[..., Any],
        shared: Any,
        *,
        stage: str = "estep",
        per_block: Sequence[tuple] | None = None,
    ) -> tuple[dict, list]:
        """The low-level graph of one pass and the keys whose values the client merges
        (the root of the reduction tree, :mod:`.reduction`).

        The per-block tasks are a blockwise layer over X, optimized as a dask array, so
        that reading a block (from Zarr, say) is fused into the task that consumes it
        and a worker holds one block per thread.  On top sit the tree's lower levels.
        """
        token = uuid.uuid4().hex[:16]
        map_name = f"{stage}-{self.model}-{token}"
        reduce_name = f"reduce-{self.model}-{token}"
        shared_node = delayed(shared, name=f"params-{self.model}-{token}", traverse=False)
        weights = (self.sample_weight, "i") if self.sample_weight is not None else (None, None)
        extra = (None, None)
        if per_block is not None:
            table = np.asarray(per_block, dtype=np.int64).reshape(self.n_blocks, -1)
            extra = (da.from_array(table, chunks=(1, -1)), "ij")
        # Output and inputs share the index "ij" (one block along j): contracting an index
        # would stop dask's blockwise optimizer from fusing the reads into these tasks.
        cells = da.blockwise(
            estep_block_task,
            "ij",
            self.X,
            "ij",
            *weights,
            shared_node,
            None,
            *extra,
            block_func=limit_threads(block_func, self.client),  # BLAS: the task's share
            name=map_name,
            dtype=object,
            adjust_chunks={"i": 1, "j": 1},
            meta=np.empty((0, 0), dtype=object),
            concatenate=True,
            align_arrays=False,  # blocks match one to one; the table has a row per block
        )
        dsk = dict(cells.__dask_optimize__(cells.__dask_graph__(), cells.__dask_keys__()))
        leaves = [(map_name, i, 0) for i in range(self.n_blocks)]
        return dsk, add_lower_levels(dsk, leaves, merge, reduce_name, self.split_every)

    def map_reduce(
        self,
        block_func: Callable[..., Any],
        merge: Callable[..., Any],
        shared: Any,
        *,
        stage: str = "estep",
        per_block: Sequence[tuple] | None = None,
    ) -> Any:
        """``merge(block_func(shared, X_i, w_i, *per_block[i]) for every block i)``.

        ``shared`` is sent once a worker (module docstring); ``per_block[i]`` holds small
        integer arguments for block i.  The reduction is a fixed tree, so the same chunking
        always merges in the same order (bitwise reproducible).
        """
        self.passes += 1
        self.bytes_read += self.pass_bytes
        block_func = in_row_order(self.row_order, block_func, stage)
        if self._local_blocks is not None:
            parts = [
                block_func(shared, X_block, w_block, *(per_block[i] if per_block else ()))
                for i, (X_block, w_block) in enumerate(self._local_blocks)
            ]
            return merge_in_tree(parts, merge, self.split_every)
        if self._direct_wanted:
            try:
                return self._direct_pass(block_func, merge, shared, per_block)
            except DirectPassFailed as failure:  # this pass runs as a graph
                self._direct_failed(failure)
        while True:
            try:
                if self._homes is not None:  # where the blocks are now (.placement)
                    self._homes = self._holders.homes(self.client, self.X, self._homes)
                groups = pass_groups(self.client, self.persisted, self._homes, self.split_every)
                if groups is None:
                    dsk, keys = self.pass_graph(
                        block_func, merge, shared, stage=stage, per_block=per_block
                    )
                    pins = block_pins(list(dsk), f"{stage}-{self.model}-", self._homes)
                else:
                    dsk, keys, pins = grouped_pass_graph(
                        self.X, self.sample_weight, groups,
                        limit_threads(block_func, self.client),  # BLAS: the task's share
                        merge, shared, stage=stage, model=self.model, per_block=per_block,
                        split_every=self.split_every,
                    )  # fmt: skip
                if self.client is None:
                    parts = dask.compute(*(Delayed(k, dsk) for k in keys), optimize_graph=False)
                else:
                    parts = self._submit(dsk, keys, pins)
            except Exception:
                if self.client is None or not self._send_lost_blocks_again():
                    raise
            else:
                if groups is not None:
                    return finish_grouped(parts, self.n_blocks, merge, self.split_every)
                return merge_in_tree(parts, merge, self.split_every)

    def _direct_pass(
        self,
        block_func: Callable[..., Any],
        merge: Callable[..., Any],
        shared: Any,
        per_block: Sequence[tuple] | None,
    ) -> Any:
        """One pass run by the workers directly (:mod:`.direct`); its client side is
        set up at the first pass, and again after a failed one, where the blocks are then."""
        if self._direct is None:
            self._homes = self._holders.homes(self.client, self.X, self._homes)
            if None in self._homes:
                raise DirectPassFailed("a block of the data is held by no worker")
            try:
                self._direct = DirectPasses(
                    self.client, self.X, self.sample_weight, self._homes,
                    split_every=self.split_every, model=self.model,
                )  # fmt: skip
            except DirectPassFailed:
                raise
            except Exception as error:  # the cluster could not set them up
                raise DirectPassFailed(repr(error)) from error
            logger.info("passes run directly on %d workers (no graphs)", len(set(self._homes)))
        threads = host_threads(self.client)  # each block's BLAS share, as in a task
        return self._direct.run(block_func, merge, shared, per_block, threads)

    def _direct_failed(self, failure: DirectPassFailed) -> None:
        """A direct pass could not run: this one runs as a graph, and after
        :data:`MAX_DIRECT_FAILURES` of them so does the rest of the fit."""
        self._direct_failures += 1
        rest = self._direct_failures >= MAX_DIRECT_FAILURES
        logger.warning(
            "direct pass failed (%s): it runs as a graph%s",
            failure,
            ", as will the rest of the fit" if rest else "",
        )
        self._close_direct()
        self._direct_wanted = not rest

    def _close_direct(self) -> None:
        if self._direct is not None:
            with contextlib.suppress(Exception):  # the cluster may be what failed
                self._direct.close()
            self._direct = None

    def _send_lost_blocks_again(self) -> bool:
        """After a failed pass: scatter all the data again if blocks were lost (True)."""
        lost = lost_blocks(self.X, self.sample_weight) if self._scattered_from else 0
        if not lost or self._resent >= MAX_RESENDS:
            return False
        self._resent += 1
        self.X, self.sample_weight = self._persist(*self._scattered_from)
        logger.warning("%d blocks of the data were lost with a worker: sent all again", lost)
        return True

    # -- the fit's monitoring and the EM loop's hooks (.monitoring) -------------------
    def fit_span(self, **details: Any) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """The fit's span and its ``fit-start``/``fit-end`` events (:meth:`FitMonitor.fit_span`)."""
        groups = pass_groups(self.client, self.persisted, self._homes, self.split_every)
        return self.monitor.fit_span(self.n_blocks, grouped=groups is not None, **details)

    def log_event(self, kind: str, **fields: Any) -> None:
        """One event of the fit, under :data:`EVENT_TOPIC` (:meth:`FitMonitor.log_event`)."""
        self.monitor.log_event(kind, **fields)

    def iteration_scope(self, iteration: int) -> contextlib.AbstractContextManager[None]:
        """The dashboard span ``iteration-<n>`` around one pass of the EM loop."""
        return self.monitor.span(f"iteration-{iteration}")

    def observe(self, record: Any, label: str = "") -> None:
        """One EM iteration done: its log line and its event (:meth:`FitMonitor.observe`)."""
        self.monitor.observe(record, label, self.passes)

    #: Where the EM loop's warnings go (see :func:`dask_em.em.run`).
    log = logger
