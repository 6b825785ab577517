"""The engine alone: graph shape, reduction order, placement, the monotone check."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import types
from collections import Counter

import dask
import dask.array as da
import numpy as np
import pytest
from dask.core import flatten
from distributed import futures_of, wait

from dask_em.em import IterationRecord, check_monotone
from dask_em.engine import EVENT_TOPIC, EMEngine
from dask_em.engine.events import EventSender
from dask_em.engine.malloc import MMAP_THRESHOLD, TRIM_THRESHOLD, set_thresholds
from dask_em.engine.placement import HoldersAhead, block_homes
from dask_em.engine.reduction import add_lower_levels, merge_in_tree
from dask_em.engine.scatter import in_graph_bytes, scatter_in_memory
from dask_em.engine.workers import scheduler_workers


def count_rows(_shared, X, w):
    return {"rows": [len(X)], "weight": float(len(X) if w is None else w.sum())}


def concatenate(*parts):
    return {
        "rows": [rows for p in parts for rows in p["rows"]],
        "weight": sum(p["weight"] for p in parts),
    }


def test_map_reduce_visits_every_block_once_in_order(client):
    X = da.ones((1000, 3), chunks=(37, 3))
    engine = EMEngine(X, model="test", cache="memory", split_every=3)
    result = engine.map_reduce(count_rows, concatenate, None)
    assert result["rows"] == list(X.chunks[0])  # a fixed tree merges blocks in order
    w = da.full(1000, 2.0, chunks=100)
    weighted = EMEngine(X, w.rechunk((X.chunks[0],)), model="test")
    assert weighted.map_reduce(count_rows, concatenate, None)["weight"] == 2000.0


def test_one_block_still_goes_through_merge():
    engine = EMEngine(da.ones((10, 2), chunks=(10, 2)), model="test", cache="memory")
    assert engine.map_reduce(count_rows, concatenate, None)["rows"] == [10]


def nested(*parts):
    """A merge that records the tree's shape: which parts it merged, in order."""
    return parts[0] if len(parts) == 1 else tuple(parts)


@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_the_tree_split_between_tasks_and_the_client_has_the_shape_of_the_whole_tree(
    split_every,
):
    for n in [*range(1, 30), 63, 64, 65, 513]:
        dsk: dict = {}
        leaves = [("leaf", i) for i in range(n)]
        top = add_lower_levels(dsk, leaves, nested, "node", split_every)
        assert 1 <= len(top) <= split_every
        assert (len(dsk) == 0) == (n <= split_every)  # few blocks: no reduce task at all
        # every task merges at most split_every children; every leaf and every task
        # below the top is the child of exactly one task
        children = [child for task in dsk.values() for child in task[2:]]
        assert all(len(task) - 2 <= split_every for task in dsk.values())
        below_top = [key for key in dsk if key not in top]
        if dsk:
            assert sorted(children, key=str) == sorted([*leaves, *below_top], key=str)
        else:
            assert top == leaves

        def value(key, dsk=dsk):
            if key in dsk:
                return nested(*(value(child) for child in dsk[key][2:]))
            return key

        split = merge_in_tree([value(key) for key in top], nested, split_every)
        assert split == merge_in_tree(leaves, nested, split_every)  # the same association


def test_stream_mode_reads_each_block_inside_its_estep_task(tmp_path):
    path = str(tmp_path / "X.zarr")
    da.random.random((1000, 4), chunks=(100, 4)).to_zarr(path)
    X = da.from_zarr(path)
    engine = EMEngine(X, model="test", cache="stream")
    assert not engine.persisted
    dsk, _ = engine.pass_graph(count_rows, concatenate, None, per_block=[(i,) for i in range(10)])
    chunk_keys = [k for k in dsk if isinstance(k, tuple) and k[0] == X.name]
    assert chunk_keys == []  # no separate read tasks: each is fused into its E-step
    assert sum(1 for k in dsk if isinstance(k, tuple) and k[0].startswith("estep-test")) == 10
    assert engine.map_reduce(count_rows, concatenate, None)["rows"] == [100] * 10


def test_in_memory_data_is_scattered_to_the_workers_not_sent_through_the_scheduler(client):
    rng = np.random.default_rng(0)
    values, weights = rng.normal(size=(1000, 3)), rng.random(1000)
    X = da.from_array(values, chunks=(125, 3))
    w = da.from_array(weights, chunks=(125,))
    assert in_graph_bytes(X) == X.nbytes  # the data travels inside the graph
    engine = EMEngine(X, w, model="test", cache="memory")
    assert engine.persisted and engine.X.name.startswith("scattered-")
    assert engine.sample_weight.name.startswith("scattered-")
    assert engine.X.chunks == X.chunks and engine.sample_weight.chunks == w.chunks
    # every worker holds an equal share of the blocks, each block beside its weights
    x_holders = client.who_has(futures_of(engine.X))
    w_holders = client.who_has(futures_of(engine.sample_weight))
    shares = Counter(address for addresses in x_holders.values() for address in addresses)
    assert len(shares) == 2 and set(shares.values()) == {4}
    assert [x_holders[(engine.X.name, i, 0)] for i in range(8)] == [
        w_holders[(engine.sample_weight.name, i)] for i in range(8)
    ]
    assert engine.map_reduce(count_rows, concatenate, None)["weight"] == pytest.approx(
        weights.sum()
    )
    np.testing.assert_array_equal(engine.X.compute(), values)
    np.testing.assert_array_equal(engine.sample_weight.compute(), weights)


def test_the_workers_are_asked_of_the_scheduler_not_read_from_the_clients_cache(
    client, monkeypatch
):
    """distributed's periodic refresh leaves the client's cached identity without
    per-worker entries, and a failed refresh keeps that cache; read from it (what
    ``scheduler_info`` returns), the workers were none, and in-memory data was persisted
    through the scheduler instead of scattered (a flaky fault-tolerance test)."""

    async def refresh_failed(n_workers=0):  # distributed logs the OSError, keeps the cache
        return None

    monkeypatch.setattr(client, "_update_scheduler_info", refresh_failed)
    monkeypatch.setattr(client, "_scheduler_identity", {"type": "Scheduler", "workers": {}})
    # what the engine used to read: distributed up to 2026.7 answered scheduler_info from
    # this cache (2026.11 returns what its own fetch returned, None after a failed one)
    assert client._scheduler_identity["workers"] == {}
    assert sorted(scheduler_workers(client)) == sorted(client.nthreads())
    X = da.from_array(np.arange(3000.0).reshape(1000, 3), chunks=(125, 3))
    (scattered,) = scatter_in_memory(client, [X])
    assert scattered.name.startswith("scattered-")
    holders = client.who_has(futures_of(scattered))
    assert len({address for addresses in holders.values() for address in addresses}) == 2


def test_data_read_by_tasks_is_not_scattered(client, tmp_path):
    path = str(tmp_path / "X.zarr")
    da.random.random((1000, 4), chunks=(100, 4)).to_zarr(path)
    X = da.from_zarr(path)
    assert in_graph_bytes(X) == 0
    assert scatter_in_memory(client, [X]) is None
    in_memory = da.from_array(np.ones(1000), chunks=100)
    assert scatter_in_memory(client, [X, in_memory]) is None  # all or nothing


def test_auto_placement_follows_the_memory_budget(client, monkeypatch):
    X = da.ones((1000, 4), chunks=(100, 4))
    assert EMEngine(X, model="test").persisted
    monkeypatch.setattr(EMEngine, "memory_budget", lambda self: X.nbytes)
    assert not EMEngine(X, model="test").persisted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"cache": "disk"}, "cache must be one of"), ({"split_every": 1}, "split_every")],
)
def test_bad_engine_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EMEngine(da.ones((10, 2)), model="test", **kwargs)


@pytest.mark.allow_objective_decrease
def test_a_decreasing_objective_is_reported(caplog):
    history = [IterationRecord(1, -1.0, np.inf, 0.1)]
    with caplog.at_level(logging.WARNING, logger="dask_em.engine"):
        check_monotone(IterationRecord(2, -1.0 - 1e-12, -1e-12, 0.1), history)
        assert caplog.records == []  # within 1e-10 relative: rounding
        check_monotone(IterationRecord(2, -1.0 - 1e-8, -1e-8, 0.1), history)
    assert caplog.records[0].getMessage().startswith("objective decreased at iteration 2")
    history[0].reseeded = (1,)
    caplog.clear()
    check_monotone(IterationRecord(2, -2.0, -1.0, 0.1), history)
    assert caplog.records == []  # a re-seeding step is not an EM step


def test_events_sent_without_waiting_reach_the_scheduler_in_order(client):
    engine = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="test", cache="memory")
    with engine.fit_span(n_samples=100) as end:
        for i in range(200):
            engine.log_event("iteration", iteration=i)
        end["n_iter"] = 200
    # fit_span waited for the last event: every one is in the log, in order
    events = [e for _, e in client.get_events(EVENT_TOPIC) if e["fit_id"] == engine.fit_id]
    assert [e["kind"] for e in events] == ["fit-start"] + ["iteration"] * 200 + ["fit-end"]
    assert [e["iteration"] for e in events[1:-1]] == list(range(200))
    assert events[-1]["n_iter"] == 200


class _RecordingScheduler:
    """Stands in for ``client.scheduler``: keeps events, fails on the ones marked bad."""

    def __init__(self):
        self.log: list = []

    async def log_event(self, topic, msg):
        await asyncio.sleep(0.001 * (msg["i"] % 3))  # later sends would overtake
        if msg.get("bad"):
            raise OSError(f"event {msg['i']} lost")
        self.log.append(msg["i"])


def test_event_sender_keeps_order_and_reports_the_first_failed_send():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = types.SimpleNamespace(
        loop=types.SimpleNamespace(asyncio_loop=loop), scheduler=_RecordingScheduler()
    )
    try:
        sender = EventSender(client, "topic")
        for i in range(30):
            sender.send({"i": i})
        sender.flush()
        assert client.scheduler.log == list(range(30))
        for i in range(30, 40):
            sender.send({"i": i, "bad": i in (33, 36)})
        with pytest.raises(OSError, match="event 33 lost"):  # the first, not the last
            sender.flush()
        assert client.scheduler.log == [i for i in range(40) if i not in (33, 36)]
        sender.flush()  # reported once
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def where_rows_ran(_shared, X, w):
    """A block's rows and the worker its task ran on (a few ms of work, as a kernel)."""
    from distributed import get_worker

    time.sleep(0.02)
    return {"rows": [len(X)], "where": [get_worker().address]}


def concatenate_where(*parts):
    return {key: [value for p in parts for value in p[key]] for key in ("rows", "where")}


def test_each_pass_runs_a_block_on_its_home_even_after_the_block_was_copied(client):
    # After work stealing has moved one task, its block is on two workers, and the
    # scheduler's tie-break could then send that block's task to the other worker in
    # every later pass (5 blocks against 3).  Each block keeps a home instead.
    rng = np.random.default_rng(0)
    X = da.from_array(rng.normal(size=(800, 3)), chunks=(100, 3))
    engine = EMEngine(X, model="test", cache="memory")
    keys = list(flatten(engine.X.__dask_keys__()))
    holders = client.who_has(engine.X)
    assert engine._homes == [holders[key][0] for key in keys]
    assert sorted(Counter(engine._homes).values()) == [4, 4]
    client.amm.stop()  # the active memory manager would drop the copies made below
    try:
        client.replicate(futures_of(engine.X), n=2)  # every block held by both workers
        assert all(len(addresses) == 2 for addresses in client.who_has(engine.X).values())
        assert sorted(Counter(block_homes(client, engine.X)).values()) == [4, 4]  # balanced
        # homes the scheduler would not pick by itself (it alternates between tied workers)
        first, second = sorted(set(engine._homes))
        homes = engine._homes = [first] * 4 + [second] * 4
        runs = [
            engine.map_reduce(where_rows_ran, concatenate_where, None)["where"] for _ in range(6)
        ]
    finally:
        client.amm.start()
    assert engine._homes == homes  # both workers still hold every block: homes stay
    at_home = [sum(w == h for w, h in zip(where, homes, strict=True)) for where in runs]
    # stealing may still move a task now and then; the scheduler's choice may not
    assert sorted(at_home)[len(at_home) // 2] == len(keys), at_home


def test_a_block_whose_home_lost_it_gets_the_worker_that_holds_it_as_home(client):
    # the active memory manager may drop the home's copy of a block, or a lost worker's
    # blocks may be made again elsewhere: the pass must not ship the block back home
    X = da.from_array(np.arange(800.0).reshape(400, 2), chunks=(50, 2))
    engine = EMEngine(X, model="test", cache="memory")
    holders = client.who_has(engine.X)
    keys = list(flatten(engine.X.__dask_keys__()))
    actual = [holders[key][0] for key in keys]
    first, second = sorted(set(actual))
    engine._homes = [second if home == first else first for home in actual]  # all wrong
    where = engine.map_reduce(where_rows_ran, concatenate_where, None)["where"]
    assert engine._homes == actual
    assert sum(w == h for w, h in zip(where, actual, strict=True)) >= len(keys) - 1, where


def test_the_next_pass_places_its_tasks_by_holders_asked_after_the_last_pass(client, monkeypatch):
    # each pass asks where the blocks are once its tasks are done; the next pass takes
    # that answer instead of waiting on a who_has round trip of its own
    X = da.from_array(np.arange(800.0).reshape(400, 2), chunks=(50, 2))
    engine = EMEngine(X, model="test", cache="memory")
    engine.map_reduce(where_rows_ran, concatenate_where, None)
    holders = client.who_has(engine.X)
    actual = [holders[key][0] for key in flatten(engine.X.__dask_keys__())]
    first, second = sorted(set(actual))
    engine._homes = [second if home == first else first for home in actual]  # all wrong
    asked_now = []
    who_has = type(client).who_has

    def recorded(*args, **kwargs):
        asked_now.append(args)
        return who_has(*args, **kwargs)

    monkeypatch.setattr(type(client), "who_has", recorded)
    monkeypatch.setattr(HoldersAhead, "MAX_AGE", 60.0)  # a loaded CI host between passes
    where = engine.map_reduce(where_rows_ran, concatenate_where, None)["where"]
    assert not asked_now  # the answer asked after the first pass
    assert engine._homes == actual  # and it moved every home to where its block is
    assert sum(w == h for w, h in zip(where, actual, strict=True)) >= len(actual) - 1, where


def test_holders_asked_ahead_are_only_taken_once_and_for_the_same_blocks(client):
    X = client.persist(da.from_array(np.arange(40.0).reshape(20, 2), chunks=(5, 2)))
    wait(X)
    ahead = HoldersAhead()
    assert ahead.take(X) is None  # nothing asked
    ahead.ask(client, X)
    assert ahead.take(X[:10]) is None  # asked about other blocks: the pass asks itself
    ahead.ask(client, X)
    holders = ahead.take(X)
    assert {key: set(addresses) for key, addresses in holders.items()} == {
        key: set(addresses) for key, addresses in client.who_has(X).items()
    }
    assert ahead.take(X) is None  # taken
    assert block_homes(client, X, None, holders) == block_homes(client, X)


def test_holders_asked_ahead_give_way_to_an_ask_of_the_pass_when_not_usable(client, monkeypatch):
    X = client.persist(da.from_array(np.arange(40.0).reshape(20, 2), chunks=(5, 2)))
    wait(X)
    ahead = HoldersAhead()
    monkeypatch.setattr(HoldersAhead, "MAX_AGE", 0.0)
    ahead.ask(client, X)
    time.sleep(0.01)
    assert ahead.take(X) is None  # too old to place a pass by
    monkeypatch.setattr(HoldersAhead, "MAX_AGE", 60.0)
    monkeypatch.setattr(HoldersAhead, "TIMEOUT", 0.05)
    failed = concurrent.futures.Future()
    failed.set_exception(OSError("scheduler gone"))
    for reply in (failed, concurrent.futures.Future()):  # failed; never answered
        ahead._asked = ((X.name, X.numblocks[0]), time.monotonic(), reply)
        assert ahead.take(X) is None
    closed = types.SimpleNamespace(scheduler=None, loop=None)  # a client that cannot send
    ahead.ask(closed, X)  # does not raise: the pass it follows has its results
    assert ahead.take(X) is None


def _mallinfo2():
    """glibc's mallinfo2() of this process (its main arena)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    return mallinfo2()


def mmapped_bytes_of_an_array(n_bytes: int) -> int:
    """Bytes glibc serves by a fresh mmap for an array of ``n_bytes`` (mallinfo2's
    ``hblkhd``)."""
    before = _mallinfo2().hblkhd
    array = np.empty(n_bytes // 8)
    mmapped = _mallinfo2().hblkhd - before
    del array
    return mmapped


def mmapped_bytes_of_an_8_mib_array(*_args):
    """Bytes glibc serves by a fresh mmap for an 8 MiB array: about 8 MiB under the
    nanny's setting, 0 when freed heap memory is reused."""
    return mmapped_bytes_of_an_array(2**23)


def mmapped_bytes_beyond_the_free_heap() -> int:
    """Bytes glibc serves by a fresh mmap for an array of at least 8 MiB that no free
    chunk of the heap can hold (more than its free bytes, ``fordblks``): glibc reuses a
    free chunk whatever its mmap threshold, so an 8 MiB array is mmapped under the
    nanny's setting only where no earlier test of this process left 8 MiB free."""
    return mmapped_bytes_of_an_array(max(2**23, _mallinfo2().fordblks + 2**20))


def test_workers_reuse_freed_memory_during_a_fit_and_get_the_nannys_setting_back(client):
    # the nanny's MALLOC_TRIM_THRESHOLD_ makes every large array a fresh mmap (pages
    # that fault one by one); during a fit the workers serve them from freed memory, as
    # glibc does by itself
    X = da.ones((100, 2), chunks=(50, 2))
    engine = EMEngine(X, model="test", cache="memory")
    mmapped = 2**23
    before = client.run(mmapped_bytes_of_an_8_mib_array)
    assert all(value >= mmapped for value in before.values()), before
    with engine.fit_span():
        during = client.run(mmapped_bytes_of_an_8_mib_array)
        in_tasks = engine.map_reduce(
            lambda _s, _X, _w: {"bytes": [mmapped_bytes_of_an_8_mib_array()]},
            lambda *parts: {"bytes": [b for p in parts for b in p["bytes"]]},
            None,
        )["bytes"]
    assert set(during.values()) == set(in_tasks) == {0}, (during, in_tasks)
    after = client.run(mmapped_bytes_of_an_8_mib_array)
    assert all(value >= mmapped for value in after.values()), after
    with dask.config.set({"dask_em.worker-malloc": False}), engine.fit_span():
        untouched = client.run(mmapped_bytes_of_an_8_mib_array)
    assert all(value >= mmapped for value in untouched.values()), untouched


def test_a_process_without_the_nannys_variable_keeps_its_malloc_settings(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD) is False


def fake_worker(limit, spill, pause, held=None, threads=1):
    """What :mod:`dask_em.engine.malloc` reads of a worker: its memory manager's limit
    (bytes) and spill and pause fractions, and, unless ``held`` is None (unknown), the
    bytes it holds and its threads."""
    manager = types.SimpleNamespace(
        memory_limit=limit, memory_spill_fraction=spill, memory_pause_fraction=pause
    )
    state = None if held is None else types.SimpleNamespace(nbytes=held, nthreads=threads)
    return types.SimpleNamespace(memory_manager=manager, state=state)


def test_a_worker_with_little_room_left_keeps_the_nannys_malloc_setting(monkeypatch):
    # memory kept for reuse must not push a worker close to its limit into spilling or
    # pausing: a worker already past its spill threshold keeps the nanny's setting where
    # it may hold data (here: what it holds is unknown)
    import psutil

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    rss = psutil.Process().memory_info().rss

    def worker(limit):
        return fake_worker(limit, 0.7, 0.8)

    try:
        assert set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD, worker(rss)) is True
        assert mmapped_bytes_beyond_the_free_heap() >= 2**23  # no room: still fresh pages
        assert set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD, worker(100 * rss)) is True
        assert mmapped_bytes_of_an_8_mib_array() == 0  # room enough: reused
    finally:
        set_thresholds(None, None)
    assert mmapped_bytes_beyond_the_free_heap() >= 2**23


def test_the_mmap_threshold_cap_is_a_share_of_the_room_the_worker_has(monkeypatch):
    # 1/4 of the room to spilling where a worker holds data (or what it holds is
    # unknown, or its pause threshold is off); 1/(4 (threads + 1)) of the room to
    # pausing where it holds none
    from dask_em.engine import malloc

    mib = 2**20
    in_use = types.SimpleNamespace(rss=300 * mib)
    process = types.SimpleNamespace(memory_info=lambda: in_use)
    monkeypatch.setattr(malloc, "psutil", types.SimpleNamespace(Process=lambda: process))

    def worker(held=None, threads=1, pause=0.75, limit=1000 * mib):
        return fake_worker(limit, 0.5, pause, held, threads)

    # spilling at 500 MiB, pausing at 750 MiB, 300 MiB in use
    assert malloc.mmap_threshold_cap(worker(held=64 * mib)) == 200 * mib // 4
    assert malloc.mmap_threshold_cap(worker()) == 200 * mib // 4
    assert malloc.mmap_threshold_cap(worker(held=0, pause=False)) == 200 * mib // 4
    assert malloc.mmap_threshold_cap(worker(held=0)) == 450 * mib // 8
    assert malloc.mmap_threshold_cap(worker(held=mib, threads=3)) == 450 * mib // 16
    assert malloc.mmap_threshold_cap(worker(held=0, limit=0)) is None
    in_use.rss = 800 * mib  # past pausing: no room
    assert malloc.mmap_threshold_cap(worker(held=0)) == 0


def test_a_worker_that_holds_no_data_counts_its_room_to_pausing(monkeypatch):
    # past its spill threshold a worker that holds next to nothing has little to spill:
    # it reuses freed memory while it has room before pausing; one that holds data keeps
    # the nanny's setting, so that kept memory does not spill its data
    import psutil

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    rss = psutil.Process().memory_info().rss
    limit = rss + 2**28

    def worker(held_bytes):
        spill = (rss - 2**20) / limit  # already past it
        pause = (rss + 2**27) / limit  # 128 MiB ahead
        return fake_worker(limit, spill, pause, held_bytes)

    try:
        assert set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD, worker(2**27)) is True
        assert mmapped_bytes_beyond_the_free_heap() >= 2**23  # holds data: no reuse
        assert set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD, worker(2**10)) is True
        assert mmapped_bytes_of_an_8_mib_array() == 0  # nothing to spill: reused
    finally:
        set_thresholds(None, None)
    assert mmapped_bytes_beyond_the_free_heap() >= 2**23


def weighted_sum(_shared, X, w, first_row):
    """Float sums whose value depends on the order of addition, and the block's row."""
    return {"sum": float((X.sum(axis=1) * w).sum()), "first": [int(first_row)]}


def add_sums(*parts):
    return {"sum": sum(p["sum"] for p in parts), "first": [f for p in parts for f in p["first"]]}


@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_a_direct_pass_computes_what_a_graph_pass_does_bit_for_bit(client, split_every):
    rng = np.random.default_rng(5)
    X = da.from_array(rng.standard_normal((2000, 3)) * 1e6, chunks=(61, 3))
    w = da.from_array(rng.random(2000), chunks=(61,))
    firsts = [(int(start),) for start in np.cumsum((0, *X.chunks[0][:-1]))]
    graph = EMEngine(X, w, model="test", cache="memory", split_every=split_every)
    expected = graph.map_reduce(weighted_sum, add_sums, None, per_block=firsts)
    expected_tree = graph.map_reduce(lambda s, X, w: len(X), nested, None)
    with dask.config.set({"dask_em.direct-passes": True}):
        direct = EMEngine(X, w, model="test", cache="memory", split_every=split_every)
    assert direct.map_reduce(weighted_sum, add_sums, None, per_block=firsts) == expected
    assert direct._direct is not None  # it ran directly
    assert direct.map_reduce(lambda s, X, w: len(X), nested, None) == expected_tree
    assert direct.passes == 2
    direct.release()
    assert direct._direct is None


def fails_on_block_3(_shared, X, w, index):
    if index == 3:
        raise ValueError("bad value in block 3")
    return {"rows": [len(X)], "weight": 0.0}


def test_an_error_of_the_block_function_in_a_direct_pass_is_raised_at_once(client, caplog):
    X = da.ones((100, 2), chunks=(10, 2))
    with dask.config.set({"dask_em.direct-passes": True}):
        engine = EMEngine(X, model="test", cache="memory")
    with caplog.at_level(logging.INFO, logger="dask_em.engine"):
        with pytest.raises(ValueError, match="bad value in block 3"):
            engine.map_reduce(
                fails_on_block_3, concatenate, None, per_block=[(i,) for i in range(10)]
            )
    assert "direct pass failed" not in caplog.text  # not run again as a graph
    assert engine._direct is not None and engine._direct_wanted  # direct passes go on
    assert engine.map_reduce(count_rows, concatenate, None)["rows"] == [10] * 10
    engine.release()


def test_weights_held_by_another_worker_are_copied_beside_their_block(client):
    """Data the workers computed: X's and the weights' blocks may sit on different
    workers (persisted apart, then rebalanced); the runners get a copy of each weights
    block on its X block's worker, and the pass is the graph pass, bit for bit."""
    first, second = sorted(client.scheduler_info()["workers"])
    X = da.random.RandomState(3).standard_normal((4000, 3), chunks=(500, 3))
    w = da.random.RandomState(4).random_sample(4000, chunks=500)
    X, w = client.persist(X, workers=[first]), client.persist(w, workers=[second])
    firsts = [(500 * i,) for i in range(8)]
    with dask.config.set({"dask_em.direct-passes": True}):
        direct = EMEngine(X, w, model="test", cache="memory")
    result = direct.map_reduce(weighted_sum, add_sums, None, per_block=firsts)
    assert direct._direct is not None and direct._direct.copied > 0
    direct.release()
    graph = EMEngine(X, w, model="test", cache="memory")
    assert graph.map_reduce(weighted_sum, add_sums, None, per_block=firsts) == result


def test_direct_passes_are_only_for_persisted_data_on_a_cluster(client, tmp_path):
    X = da.ones((100, 2), chunks=(10, 2))
    with dask.config.set({"dask_em.direct-passes": True}):
        assert not EMEngine(X, model="test", cache="stream")._direct_wanted
        assert not EMEngine(X, model="test", local=True)._direct_wanted
        assert EMEngine(X, model="test", cache="memory")._direct_wanted
    assert not EMEngine(X, model="test", cache="memory")._direct_wanted  # off by default


def test_direct_passes_keep_the_scheduler_from_going_idle(client, monkeypatch):
    """No task runs during direct passes, so the scheduler's idle timeout would close it
    in a long fit: a small task is sent every KEEP_ALIVE_SECONDS (here: every pass)."""
    from dask_em.engine import direct

    monkeypatch.setattr(direct, "KEEP_ALIVE_SECONDS", 0.0)
    with dask.config.set({"dask_em.direct-passes": True}):
        engine = EMEngine(da.ones((100, 2), chunks=(10, 2)), model="keepalive", cache="memory")
    for _ in range(2):
        engine.map_reduce(count_rows, concatenate, None)
    engine.release()

    def prefixes(dask_scheduler):
        return sorted(dask_scheduler.task_prefixes)

    deadline = time.monotonic() + 10
    while "direct-keepalive-alive" not in client.run_on_scheduler(prefixes):
        assert time.monotonic() < deadline, client.run_on_scheduler(prefixes)
        time.sleep(0.05)


class TwoArgumentError(Exception):
    """An exception that pickles but cannot be unpickled (two required arguments)."""

    def __init__(self, first, second):
        super().__init__(f"{first} and {second}")


def raises_what_cannot_travel(_shared, X, w):
    raise TwoArgumentError("bad", "worse")


def merge_that_fails(*parts):
    raise ZeroDivisionError("in merge")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("block_func", "merge", "error"),
    [
        (raises_what_cannot_travel, concatenate, RuntimeError),  # its text, not a hang
        (count_rows, merge_that_fails, ZeroDivisionError),
    ],
)
def test_errors_of_a_direct_pass_are_raised_once_even_when_they_cannot_travel(
    client, caplog, block_func, merge, error
):
    with dask.config.set({"dask_em.direct-passes": True}):
        engine = EMEngine(da.ones((100, 2), chunks=(10, 2)), model="test", cache="memory")
    with caplog.at_level(logging.INFO, logger="dask_em.engine"):
        with pytest.raises(error) as raised:
            engine.map_reduce(block_func, merge, None)
    assert "direct pass failed" not in caplog.text  # raised at once, not run as a graph
    if block_func is raises_what_cannot_travel:  # raised in a worker: where, and its text
        assert "TwoArgumentError: bad and worse" in str(raised.value)
        assert "in a direct pass on tcp://" in str(raised.value)
    engine.release()
