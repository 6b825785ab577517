"""Passes over persisted data as one task per worker thread (dask_em.engine.grouped).

The grouping must not change a pass's arithmetic: the same fixed tree, so the same
result bit for bit as one task per block, whatever blocks each group holds.
"""

from __future__ import annotations

import dataclasses
import time

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import get_task_stream

from dask_em.engine import EMEngine
from dask_em.engine.grouped import (
    INLINE_PARAMETERS_BYTES,
    array_bytes,
    block_groups,
    even_shares,
    finish_grouped,
    fragmented,
    grouped_pass_graph,
    grouped_passes_asked,
)
from dask_em.engine.reduction import add_leaf, merge_in_tree, merge_local_subtrees, tree_sizes


def weighted_sum(_shared, X, w, first_row):
    """Float sums whose value depends on the order of addition, and the block's row."""
    return {"sum": float((X.sum(axis=1) * w).sum()), "first": [int(first_row)]}


def add_sums(*parts):
    return {"sum": sum(p["sum"] for p in parts), "first": [f for p in parts for f in p["first"]]}


def block_size(_shared, X, _w, *_extra):
    return len(X)


def last(shared, X, _w):
    """What the block function was given as the parameters: their last value, times rows."""
    return float(shared[-1]) * len(X)


def nested(*parts):
    """A merge that keeps the tree's shape: which parts were merged together, in order."""
    return list(parts)


def data(seed=5, n_rows=2000, chunk=61):
    rng = np.random.default_rng(seed)
    X = da.from_array(rng.standard_normal((n_rows, 3)) * 1e6, chunks=(chunk, 3))
    w = da.from_array(rng.random(n_rows), chunks=(chunk,))
    firsts = [(int(start),) for start in np.cumsum((0, *X.chunks[0][:-1]))]
    return X, w, firsts


@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_grouped_passes_compute_what_one_task_per_block_does_bit_for_bit(client, split_every):
    X, w, firsts = data()
    with dask.config.set({"dask_em.grouped-passes": False}):
        per_block = EMEngine(X, w, model="test", cache="memory", split_every=split_every)
        expected = per_block.map_reduce(weighted_sum, add_sums, None, per_block=firsts)
        expected_tree = per_block.map_reduce(block_size, nested, None)
    grouped = EMEngine(X, w, model="test", cache="memory", split_every=split_every)
    with get_task_stream(client) as stream:
        assert grouped.map_reduce(weighted_sum, add_sums, None, per_block=firsts) == expected
    assert grouped.map_reduce(block_size, nested, None) == expected_tree
    assert expected["first"] == [first for (first,) in firsts]  # every block, in order
    estep = [r for r in stream.data if str(r["key"][0]).startswith("estep-test")]
    assert len(estep) == 2  # 33 blocks, 2 workers x 1 thread: one task each
    assert {r["worker"] for r in estep} == set(grouped._homes)  # each where its blocks are
    assert not [r for r in stream.data if "params-" in str(r["key"])]  # inside the tasks
    # the engine holds the last pass's results only, until the next pass is sent
    held = {future.key for future in grouped._previous_results}
    assert len(held) == 2 and held <= set(client.futures)
    assert len({key[0] for key in held}) == 1 and str(next(iter(held))[0]).startswith("estep-")
    grouped.release()
    deadline = time.monotonic() + 10  # a release reaches the client's loop a moment later
    while held & set(client.futures):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_stream_pass_stays_one_task_per_block(client, tmp_path):
    X, _, _ = data(n_rows=600, chunk=100)
    X.to_zarr(str(tmp_path / "X.zarr"))
    engine = EMEngine(da.from_zarr(str(tmp_path / "X.zarr")), model="test", cache="stream")
    with get_task_stream(client) as stream:
        assert engine.map_reduce(block_size, nested, None) == [100] * 6
    assert sum(str(r["key"][0]).startswith("estep-test") for r in stream.data) == 6


def test_groups_split_each_workers_blocks_by_its_threads():
    homes = ["a", "a", "b", "a", "b", "a", "c", "b", "c"]
    groups = block_groups(homes, {"a": 2, "b": 1, "c": 1})  # 3 blocks each
    assert groups == [("a", [0, 1]), ("b", [2, 4, 7]), ("a", [3]), ("c", [5, 6, 8])]
    assert block_groups(["a", "a", "c"], {"a": 2})[-1] == ("c", [2])  # c unknown: 1 thread
    assert block_groups(["a", "a"], {"a": 8}) == [("a", [0]), ("a", [1])]  # no empty run
    assert block_groups(["a", None], {"a": 1}) is None  # a block held nowhere: per block
    assert block_groups([], {}) is None


@pytest.mark.parametrize(
    ("homes", "threads", "expected"),
    [
        (["a"] * 16, {"a": 1, "b": 1}, {"a": list(range(8)), "b": list(range(8, 16))}),
        (["a"] * 9 + ["b"] * 7, {"a": 1, "b": 1}, {"a": list(range(8)), "b": list(range(8, 16))}),
        (["a", "b"] * 4, {"a": 1, "b": 1}, {"a": [0, 2, 4, 6], "b": [1, 3, 5, 7]}),  # even
        (["a"] * 10, {"a": 1, "b": 1, "c": 1}, {"a": [0, 1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]}),
        (["a"] * 6, {"a": 2, "b": 1}, {"a": [0, 1, 2], "b": [3, 4, 5]}),  # not by threads
        (["a"] * 4 + ["b"] * 4, {"a": 3, "b": 1}, {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7]}),
        (["a"] * 3, {"a": 1, "b": 1, "c": 1, "d": 1}, {"a": [0], "b": [1], "c": [2]}),
    ],
)
def test_a_worker_holding_more_than_its_share_hands_the_rest_over(homes, threads, expected):
    assert even_shares(homes, threads) == expected


def test_data_the_user_persisted_on_one_worker_is_run_by_both(client):
    # Client.rebalance moves nothing off a worker below 30 % of its memory: each pass
    # gives half the blocks to the other worker, which fetches them (and keeps them
    # until the active memory manager drops one of the two copies, which one depends
    # on the workers' memory: not checked here)
    first, second = sorted(client.scheduler_info()["workers"])
    X, w, firsts = data(n_rows=1600, chunk=100)  # 16 blocks
    X_user = client.persist(X, workers=[first])
    blocks = zip(local_blocks(X, w), firsts, strict=True)
    expected = merge_in_tree([weighted_sum(None, *b, *f) for b, f in blocks], add_sums, 8)
    engine = EMEngine(X_user, w, model="test", cache="memory")
    for _ in range(3):
        with get_task_stream(client) as stream:
            assert engine.map_reduce(weighted_sum, add_sums, None, per_block=firsts) == expected
        ran = [r["worker"] for r in stream.data if str(r["key"][0]).startswith("estep-test")]
        assert sorted(ran) == [first, second]  # one task each, every pass


def local_blocks(X, w):
    return dask.compute(*zip(X.to_delayed().ravel(), w.to_delayed().ravel(), strict=True))


@pytest.mark.parametrize("split_every", [2, 3, 8])
@pytest.mark.parametrize("layout", ["runs", "interleaved", "random"])
@pytest.mark.parametrize("shared", [np.full(4, 1.5), np.full(2**18, 2.5)], ids=["inline", "key"])
def test_any_grouping_merges_the_same_tree(split_every, layout, shared):
    # more groups than split_every (reduce tasks over the groups' nodes), groups of
    # consecutive blocks or not, computed by dask's local scheduler; parameters over
    # INLINE_PARAMETERS_BYTES with workers of several threads go in a key of their own
    X, w, firsts = data(seed=7, n_rows=1500, chunk=40)  # 38 blocks
    n_blocks = X.numblocks[0]
    workers = {
        "runs": np.repeat(np.arange(5), -(-n_blocks // 5))[:n_blocks],
        "interleaved": np.arange(n_blocks) % 5,
        "random": np.random.default_rng(split_every).integers(0, 7, n_blocks),
    }[layout]
    homes = [f"w{worker}" for worker in workers]
    groups = block_groups(homes, {"w0": 2, "w3": 3})
    assert len(groups) > split_every or split_every == 8
    pairs = ((add_sums, weighted_sum, firsts), (nested, block_size, None), (nested, last, None))
    for merge, func, extra in pairs:
        dsk, keys, pins = grouped_pass_graph(
            X, w, groups, func, merge, shared,
            stage="estep", model="test", per_block=extra, split_every=split_every,
        )  # fmt: skip
        assert set(pins.values()) == set(homes)
        params_keys = [key for key in dsk if str(key).startswith("params-test")]
        assert len(params_keys) == (0 if shared.nbytes <= INLINE_PARAMETERS_BYTES else 1)
        result = finish_grouped(dask.get(dsk, keys), n_blocks, merge, split_every)
        blocks = zip(X.to_delayed().ravel(), w.to_delayed().ravel(), strict=True)
        leaves = [
            func(shared, np.asarray(x), np.asarray(v), *(extra[i] if extra else ()))
            for i, (x, v) in enumerate(dask.compute(*blocks))
        ]
        assert result == merge_in_tree(leaves, merge, split_every)


@pytest.mark.parametrize("n_leaves", [1, 2, 7, 8, 9, 64, 100])
@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_leaves_added_one_by_one_merge_as_the_whole_set_does(n_leaves, split_every):
    rng = np.random.default_rng(n_leaves)
    held = sorted(rng.choice(n_leaves, size=max(1, n_leaves // 2), replace=False).tolist())
    held = held if n_leaves > 2 else list(range(n_leaves))
    nodes: dict = {}
    for i in held:
        add_leaf(nodes, i, [i], tree_sizes(n_leaves, split_every), nested, split_every)
    assert nodes == merge_local_subtrees({i: [i] for i in held}, n_leaves, nested, split_every)


def test_blocks_the_workers_read_are_read_in_runs_where_they_stay(client, tmp_path):
    # placement.in_runs: block i read on worker floor(i W / B), the reads of a sliced
    # store (fused into other tasks, the blocks aliases of them) and weights from the
    # same store included, so a pass runs one task per worker thread
    X, _, _ = data(n_rows=1600, chunk=100)  # 16 blocks
    X.to_zarr(str(tmp_path / "X.zarr"))
    stored = da.from_zarr(str(tmp_path / "X.zarr"))
    with get_task_stream(client) as stream:
        engine = EMEngine(stored[:, :2], abs(stored[:, 2]), model="test", cache="memory")
    first, second = sorted(client.scheduler_info()["workers"])
    assert engine._homes == [first] * 8 + [second] * 8
    per_block = [r for r in stream.data if isinstance(r["key"], tuple) and len(r["key"]) > 1]
    # a read is asked to run where its block stays; one that ran elsewhere was moved by
    # the scheduler's work stealing (the restriction is loose, so that a lost worker's
    # reads run on), and the persisted block, an alias pinned to its home, fetched it
    stolen = {
        (tuple(message[1]), message[4])
        for _, message in client.get_events("stealing")
        if message[0] == "confirm"
    }
    elsewhere = [
        (r["key"], r["worker"]) for r in per_block if r["worker"] != engine._homes[r["key"][1]]
    ]
    assert per_block and set(elsewhere) <= stolen, elsewhere
    with get_task_stream(client) as stream:
        assert engine.map_reduce(block_size, add_rows, None) == 1600
    assert sum(str(r["key"][0]).startswith("estep-test") for r in stream.data) == 2


def add_rows(*parts):
    return sum(parts)


def test_runs_are_never_fragmented_and_turns_are():
    for n_blocks in (3, 16, 100, 1000):
        for n_workers in (1, 2, 5):
            runs = [f"w{i * n_workers // n_blocks}" for i in range(n_blocks)]
            assert not fragmented(block_groups(runs, {}), n_blocks, 8)
    turns = [f"w{i % 2}" for i in range(100)]
    assert fragmented(block_groups(turns, {}), 100, 8)


@pytest.mark.parametrize(
    "value, asked", [(None, True), (False, False), ("false", False), ("0", False), ("True", True)]
)
def test_the_config_switch_reads_strings_as_meant(value, asked):
    with dask.config.set({"dask_em.grouped-passes": value} if value is not None else {}):
        assert grouped_passes_asked() is asked


@dataclasses.dataclass(frozen=True)
class Prior:
    mean: np.ndarray
    strength: float = 1.0


def test_parameter_bytes_count_every_array_also_in_objects():
    # what decides whether the parameters go inside the tasks: dask's sizeof samples
    # long sequences and sees a dataclass' own size only
    many = [np.zeros(10) for _ in range(50)]
    shared = ({"means": np.zeros((8, 16))}, Prior(np.zeros((64, 64))), many, "label", 3)
    assert array_bytes(shared) == 8 * 16 * 8 + 64 * 64 * 8 + 50 * 80
