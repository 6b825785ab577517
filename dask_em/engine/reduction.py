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

from collections.abc import Callable, Hashable, Mapping, Sequence
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


def tree_sizes(n_leaves: int, split_every: int) -> list[int]:
    """Nodes at each level of the tree over ``n_leaves`` leaves: level 0 the leaves, the
    last level the root (always at least one merge above the leaves)."""
    sizes = [n_leaves]
    while len(sizes) == 1 or sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // split_every))
    return sizes


def _children(level: int, j: int, sizes: Sequence[int], split_every: int) -> range:
    """Indices, on level ``level - 1``, of the children of node ``j`` of ``level``."""
    return range(j * split_every, min((j + 1) * split_every, sizes[level - 1]))


def merge_local_subtrees(
    leaves: Mapping[int, Any], n_leaves: int, merge: Callable[..., Any], split_every: int
) -> dict[tuple[int, int], Any]:
    """The highest nodes of the tree over ``n_leaves`` leaves that ``leaves`` (leaf
    index -> part: some of them) suffice for, as ``{(level, j): part}`` (level 0: a
    leaf that joins no such node).  Each node holds what :func:`merge_in_tree` computes
    there, so :func:`merge_from_subtrees` finishes the same tree bit for bit."""
    return merge_complete_subtrees(
        {(0, i): part for i, part in leaves.items()}, n_leaves, merge, split_every
    )


def merge_complete_subtrees(
    nodes: dict[tuple[int, int], Any], n_leaves: int, merge: Callable[..., Any], split_every: int
) -> dict[tuple[int, int], Any]:
    """``nodes`` (``{(level, j): part}``, disjoint subtrees) with every node whose
    children are all there merged, level by level from the bottom (in place)."""
    sizes = tree_sizes(n_leaves, split_every)
    for level in range(1, len(sizes)):
        for j in range(sizes[level]):
            children = [(level - 1, c) for c in _children(level, j, sizes, split_every)]
            if all(child in nodes for child in children):
                nodes[(level, j)] = merge(*(nodes.pop(child) for child in children))
    return nodes


def add_leaf(
    nodes: dict[tuple[int, int], Any],
    i: int,
    part: Any,
    sizes: Sequence[int],
    merge: Callable[..., Any],
    split_every: int,
) -> None:
    """Leaf ``i`` added to ``nodes`` (in place), and each node above it merged as soon
    as all its children are there: after every leaf of a set is added, ``nodes`` is what
    :func:`merge_local_subtrees` gives for that set, while holding at most
    ``split_every - 1`` unmerged parts per level.  ``sizes``: :func:`tree_sizes`."""
    nodes[(0, i)] = part
    level, j = 0, i
    while level + 1 < len(sizes):
        parent = j // split_every
        children = [(level, c) for c in _children(level + 1, parent, sizes, split_every)]
        if not all(child in nodes for child in children):
            return
        nodes[(level + 1, parent)] = merge(*(nodes.pop(child) for child in children))
        level, j = level + 1, parent


def merge_from_subtrees(
    nodes: Mapping[tuple[int, int], Any], n_leaves: int, merge: Callable[..., Any], split_every: int
) -> Any:
    """The root of the tree over ``n_leaves`` leaves (as :func:`merge_in_tree`) from
    ``nodes`` already merged (``{(level, j): part}``, together covering every leaf)."""
    sizes = tree_sizes(n_leaves, split_every)

    def node(level: int, j: int) -> Any:
        if (level, j) in nodes:
            return nodes[level, j]
        if level == 0:
            raise KeyError(f"the statistics of block {j} are missing")
        return merge(*(node(level - 1, c) for c in _children(level, j, sizes, split_every)))

    return node(len(sizes) - 1, 0)
