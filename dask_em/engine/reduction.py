"""The fixed reduction tree of a pass: its lower levels run as tasks, its root here.

A pass merges the statistics of ``n`` blocks in a tree of fan-in ``split_every``:
level 0 merges leaves ``[0, s)``, ``[s, 2s)``, ...; each level above merges the nodes of
the level below in the same way, until one node is left.  The shape depends only on
``n`` and ``split_every``, so the same chunking always adds in the same order and a fit
is bitwise reproducible.

Where the nodes run does not change what they compute.  The levels with more than
``split_every`` nodes are tasks (``reduce-<model>``) on the workers, next to the data;
the root, a merge of at most ``split_every`` parts, runs in the client that asked for
the pass, from the parts it gathers.  A root task instead would add one more hop
(the parts to the root's worker, then its result to the client): on a LocalCluster of
2 workers that hop cost about 10 ms of a 30 ms pass of 4 small tasks.  The client
receives at most ``split_every`` statistics of size O(K D^2) per pass.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from dask_em.engine.tasks import reduce_task, unboxed


def add_lower_levels(
    dsk: dict, leaves: Sequence[Hashable], merge: Callable[..., Any], name: str, split_every: int
) -> list[Hashable]:
    """Add the tree's levels below the root to ``dsk`` as ``(name, level, j)`` tasks.

    Returns the keys whose parts the root merges: the leaves themselves when there are
    at most ``split_every`` of them, else the nodes of the top level below the root.
    """
    keys, level = list(leaves), 0
    while len(keys) > split_every:
        parents = []
        for j in range(0, len(keys), split_every):
            key = (name, level, j // split_every)
            dsk[key] = (reduce_task, merge, *keys[j : j + split_every])
            parents.append(key)
        keys, level = parents, level + 1
    return keys


def merge_in_tree(parts: Sequence[Any], merge: Callable[..., Any], split_every: int) -> Any:
    """The tree over ``parts`` run in this process: ``merge`` applied level by level in
    the order of :func:`add_lower_levels`, up to the root (one ``merge`` call at least).

    ``parts`` are the leaves, or the top nodes that :func:`add_lower_levels` returned
    (at most ``split_every``: the root alone).
    """
    parts = [unboxed(part) for part in parts]  # the leaves come boxed from their tasks
    while True:
        parts = [merge(*parts[j : j + split_every]) for j in range(0, len(parts), split_every)]
        if len(parts) == 1:
            return parts[0]
