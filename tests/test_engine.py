"""The engine alone: graph shape, reduction order, placement, the monotone check."""

from __future__ import annotations

import logging
from collections import Counter

import dask.array as da
import numpy as np
import pytest
from distributed import futures_of

from dask_em.em import IterationRecord, check_monotone
from dask_em.engine import EMEngine
from dask_em.engine.scatter import in_graph_bytes, scatter_in_memory


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


def test_one_block_still_goes_through_a_reduce_task():
    engine = EMEngine(da.ones((10, 2), chunks=(10, 2)), model="test", cache="memory")
    assert engine.map_reduce(count_rows, concatenate, None)["rows"] == [10]


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
