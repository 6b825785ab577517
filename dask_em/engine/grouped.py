"""A pass over persisted data as one task per worker thread, not one per block.

Every task of a graph costs the scheduler and the worker the same whatever it computes
(the task assigned, run in the worker's thread pool, its result reported and moved):
on a LocalCluster of 2 workers x 1 thread, a pass of tasks that do nothing took 40 ms
over 10 blocks, 121 ms over 100 and 944 ms over 1,000 as one task per block, and 21,
20 and 77 ms as one task per worker.  Persisted blocks do not move between passes, so
where each one is computed is known before the pass (:mod:`.placement`, each block's
home): each worker thread gets one task, ``estep-<model>``, over a run of the blocks its
worker holds, pinned to that worker (loosely, as the per-block tasks are), with the
parameters inside it where they are small (:func:`inline_parameters`).

The task runs the block function on its blocks one after another, in block order, and
merges every node of the pass's fixed reduction tree (:mod:`.reduction`) that its
blocks complete, as soon as they do (:func:`.reduction.add_leaf`, so it holds at most a
few statistics per level of the tree at once); it returns those nodes.  With more such
tasks than ``split_every``, ``reduce-<model>`` tasks merge their nodes further up the
tree; the client finishes it (:func:`.reduction.merge_from_subtrees`).  The tree, and
so every sum's order, is the one of a pass of per-block tasks: the result is the same
bit for bit.

A pass over data read from storage (``cache="stream"``) stays one task per block: its
blocks have no home, and the scheduler spreads the reads.  Dask config
``dask_em.grouped-passes: False`` keeps one task per block for persisted data too (e.g.
to see each block in the task stream, or to let work stealing balance workers of
unequal speed).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from dask.core import flatten
from dask.delayed import delayed

from dask_em.engine.direct import config_flag
from dask_em.engine.reduction import (
    add_leaf,
    add_lower_levels,
    merge_complete_subtrees,
    merge_from_subtrees,
    tree_sizes,
)
from dask_em.engine.tasks import extra_args
from dask_em.engine.threads import worker_threads

#: Dask config key: False keeps one task per block for persisted data too.
CONFIG_KEY = "dask_em.grouped-passes"

#: Parameters up to this size travel inside every group task (:func:`inline_parameters`),
#: as long as all the pass's copies together stay within INLINE_PARAMETERS_TOTAL.
INLINE_PARAMETERS_BYTES = 2**20
INLINE_PARAMETERS_TOTAL = 64 * 2**20


def grouped_passes_asked() -> bool:
    """Whether passes over persisted data run as one task per worker thread (default)."""
    return config_flag(CONFIG_KEY, True)


def pass_groups(
    client: Any, persisted: bool, homes: Sequence[str | None] | None, split_every: int
) -> list[tuple[str, list[int]]] | None:
    """The groups of a pass over data on ``client``'s cluster (:func:`block_groups` of
    the blocks' homes and the workers' threads), or None for one task per block: data
    not persisted, no client, ``dask_em.grouped-passes`` False, or blocks placed so
    that a group would complete few nodes of the tree (:func:`fragmented`)."""
    if client is None or not persisted or not grouped_passes_asked():
        return None
    groups = block_groups(homes or [], worker_threads(client))
    if groups is None or fragmented(groups, len(homes or []), split_every):
        return None
    return groups


def _discard(*_parts: Any) -> None:
    return None


def fragmented(
    groups: Sequence[tuple[str, Sequence[int]]], n_leaves: int, split_every: int
) -> bool:
    """Whether a group would be left with more nodes of the tree unmerged than a run of
    consecutive blocks ever is (at most ``2 (split_every - 1)`` a level).  Blocks spread
    over the workers in turns (as the scheduler places blocks left to itself) complete
    no node: each group would hold all its blocks' statistics at once and the client
    would merge every leaf, so such a pass runs one task per block instead."""
    sizes = tree_sizes(n_leaves, split_every)
    limit = 2 * (split_every - 1) * (len(sizes) - 1)  # the levels below the root
    for _, blocks in groups:
        nodes: dict[tuple[int, int], Any] = {}
        for i in blocks:
            add_leaf(nodes, i, None, sizes, _discard, split_every)
        if len(nodes) > limit:
            return True
    return False


def block_groups(
    homes: Sequence[str | None], threads: Mapping[str, int]
) -> list[tuple[str, list[int]]] | None:
    """``[(worker, block indices)]``: each worker's blocks (in block order, after
    :func:`even_shares`) split into as many runs of near-equal length as it has threads
    (``threads``: worker address -> nthreads; 1 where unknown), ordered by their first
    block; None when a block has no home (the pass then runs one task per block)."""
    if not homes or any(home is None for home in homes):
        return None
    held = even_shares([str(home) for home in homes], threads)
    groups = []
    for worker, blocks in held.items():
        n_runs = max(1, min(int(threads.get(worker, 1)), len(blocks)))
        for run in np.array_split(np.asarray(blocks), n_runs):
            groups.append((worker, [int(i) for i in run]))
    return sorted(groups, key=lambda group: group[1][0])


def even_shares(homes: Sequence[str], threads: Mapping[str, int]) -> dict[str, list[int]]:
    """``{worker: the blocks it runs}``: each worker its own blocks, except that a worker
    holding more than an equal share of the blocks (rounded up) hands the last of them
    to workers holding less than theirs (rounded down), in address order.  ``threads``
    names the cluster's workers (those holding no block get a share too).

    Data the user persisted stays where the scheduler put it, often unevenly (9:7 over
    2 workers), and ``Client.rebalance`` moves nothing off a worker below 30 % of its
    memory (distributed's ``rebalance.sender-min``).  A worker given another's block
    fetches it at the first pass and keeps the copy; when the active memory manager
    drops one of the two copies (the one on the worker using more memory), the block's
    home is where the other stays (:func:`.placement.block_homes`), and a dropped
    receiver's copy is fetched again by the next pass.  Shares are equal, not in
    proportion to threads: the engine places its own data so (:mod:`.placement`,
    :mod:`.scatter`), which this then leaves alone, and equal shares of equal blocks
    keep every worker's memory at the average."""
    held: dict[str, list[int]] = {}
    for i, home in enumerate(homes):
        held.setdefault(home, []).append(i)
    workers = sorted(set(held) | set(threads))
    share = len(homes) / len(workers)
    surplus: list[int] = []
    for worker in workers:
        blocks = held.get(worker, [])
        if len(blocks) > math.ceil(share):
            held[worker], extra = blocks[: math.ceil(share)], blocks[math.ceil(share) :]
            surplus.extend(extra)
    for worker in workers:
        room = math.floor(share) - len(held.get(worker, []))
        if surplus and room > 0:
            held[worker] = sorted(held.get(worker, []) + surplus[:room])
            surplus = surplus[room:]
    for i in surplus:  # rounding: what is left goes to the workers holding the fewest
        worker = min(workers, key=lambda w: (len(held.get(w, [])), w))
        held[worker] = sorted([*held.get(worker, []), i])
    return {worker: blocks for worker, blocks in held.items() if blocks}


def estep_group_task(
    shared: Any,
    *arrays: Any,
    block_func: Callable[..., Any],
    merge: Callable[..., Any],
    blocks: Sequence[int],
    extras: Sequence[Any],
    n_leaves: int,
    split_every: int,
    weighted: bool,
) -> dict[tuple[int, int], Any]:
    """One worker thread's blocks of a pass: ``arrays`` are their X blocks, then (when
    ``weighted``) their weights blocks; returns the tree's nodes they complete,
    ``{(level, j): part}`` (leaves that complete none as ``(0, i)``)."""
    n_blocks = len(blocks)
    weights = arrays[n_blocks:] if weighted else (None,) * n_blocks
    sizes = tree_sizes(n_leaves, split_every)
    nodes: dict[tuple[int, int], Any] = {}
    for i, X_i, w_i, extra in zip(blocks, arrays[:n_blocks], weights, extras, strict=True):
        add_leaf(
            nodes, i, block_func(shared, X_i, w_i, *extra_args(extra)), sizes, merge, split_every
        )
    return nodes


def merge_nodes_task(
    merge: Callable[..., Any], n_leaves: int, split_every: int, *node_sets: Mapping
) -> dict[tuple[int, int], Any]:
    """A ``reduce`` node over group tasks: their nodes together, with every node whose
    children are all among them merged."""
    return merge_complete_subtrees(union(node_sets), n_leaves, merge, split_every)


def union(node_sets: Sequence[Mapping]) -> dict[tuple[int, int], Any]:
    """The nodes of disjoint node sets, in one dict."""
    nodes: dict[tuple[int, int], Any] = {}
    for node_set in node_sets:
        nodes.update(node_set)
    return nodes


def grouped_pass_graph(
    X: Any,
    sample_weight: Any,
    groups: Sequence[tuple[str, Sequence[int]]],
    block_func: Callable[..., Any],
    merge: Callable[..., Any],
    shared: Any,
    *,
    stage: str,
    model: str,
    per_block: Sequence[tuple] | None,
    split_every: int,
) -> tuple[dict, list[Hashable], dict[Hashable, str]]:
    """``(graph, keys whose node sets the client finishes, {task key: its worker})`` of
    one pass; the tasks are named ``<stage>-<model>`` (the E-step of each group),
    ``reduce-<model>`` and, where :func:`inline_parameters` says no, ``params-<model>``
    (the parameters, one literal key)."""
    token = uuid.uuid4().hex[:16]
    map_name, reduce_name = f"{stage}-{model}-{token}", f"reduce-{model}-{token}"
    dsk: dict = {}
    params_arg: tuple = ()  # the parameters travel inside each task (see below)
    if not inline_parameters(shared, groups):
        params = delayed(shared, name=f"params-{model}-{token}", traverse=False)
        dsk.update(params.__dask_graph__())
        params_arg = (params.key,)
    dsk.update(X.__dask_graph__())
    X_keys = list(flatten(X.__dask_keys__()))
    w_keys: list[Hashable] = []
    if sample_weight is not None:
        dsk.update(sample_weight.__dask_graph__())
        w_keys = list(flatten(sample_weight.__dask_keys__()))
    n_leaves = len(X_keys)
    keys, pins = [], {}
    for g, (worker, blocks) in enumerate(groups):
        task = functools.partial(
            estep_group_task,
            *(() if params_arg else (shared,)),  # inline: bound here, never parsed as a task
            block_func=block_func,
            merge=merge,
            blocks=list(blocks),
            extras=[per_block[i] if per_block is not None else None for i in blocks],
            n_leaves=n_leaves,
            split_every=split_every,
            weighted=sample_weight is not None,
        )
        key = (map_name, g)
        inputs = [X_keys[i] for i in blocks] + [w_keys[i] for i in blocks if w_keys]
        dsk[key] = (task, *params_arg, *inputs)
        keys.append(key)
        pins[key] = worker
    merge_nodes = functools.partial(merge_nodes_task, merge, n_leaves, split_every)
    return dsk, add_lower_levels(dsk, keys, merge_nodes, reduce_name, split_every), pins


def inline_parameters(shared: Any, groups: Sequence[tuple[str, Sequence[int]]]) -> bool:
    """Whether a pass's parameters go inside each of its group tasks rather than in a
    ``params`` key of their own.  A key is a task of its own: the scheduler runs it on
    one worker and the others fetch it from there before their E-step starts, which
    took 5 ms of a 25 ms pass here (2 workers x 1 thread).  Inside the tasks, the
    scheduler pickles and sends a copy with each of them, so they go that way only up
    to :data:`INLINE_PARAMETERS_BYTES` a copy and :data:`INLINE_PARAMETERS_TOTAL` for
    all the pass's tasks (8 MiB of parameters inside each of 2 tasks cost a pass over
    100 blocks 0.70 s against 0.62 s with a key)."""
    size = array_bytes(shared)
    return size <= INLINE_PARAMETERS_BYTES and size * len(groups) <= INLINE_PARAMETERS_TOTAL


def array_bytes(value: Any, depth: int = 0) -> int:
    """Bytes of the NumPy arrays in ``value``: in mappings, lists and tuples, and in the
    fields of objects (a family's prior arrays, say), down to 4 levels.  Every item is
    counted (dask's ``sizeof`` samples long sequences and misses objects' fields)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if depth >= 4:
        return 0
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, field.name, None) for field in dataclasses.fields(value)]
    elif hasattr(value, "__dict__") and not callable(value):
        items = vars(value).values()
    else:
        return 0
    return sum(array_bytes(item, depth + 1) for item in items)


def finish_grouped(
    node_sets: Sequence[Mapping], n_leaves: int, merge: Callable[..., Any], split_every: int
) -> Any:
    """The pass's result: the root of the tree from the node sets the client gathered."""
    return merge_from_subtrees(union(node_sets), n_leaves, merge, split_every)
