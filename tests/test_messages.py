"""distributed's message batching during a fit (dask_em.engine.messages)."""

from __future__ import annotations

import dask
import dask.array as da
import pytest

from dask_em.engine import EMEngine, messages
from dask_em.engine.messages import INTERVAL, scheduler_streams


def _scheduler_intervals(dask_scheduler=None, client_id=""):
    return [stream.interval for stream in scheduler_streams(dask_scheduler, client_id)]


def _worker_interval(dask_worker=None):
    return dask_worker.batched_stream.interval


def _intervals(client) -> dict:
    """Every stream a fit of ``client`` uses: its interval (seconds)."""
    return {
        "client": client.scheduler_comm.interval,
        "scheduler": client.run_on_scheduler(_scheduler_intervals, client_id=client.id),
        "workers": client.run(_worker_interval),
    }


def _in_task(_shared, _X, _w):
    from distributed import get_worker

    return {"intervals": [get_worker().batched_stream.interval]}


def _together(*parts):
    return {"intervals": [value for part in parts for value in part["intervals"]]}


def _all_short(intervals: dict) -> bool:
    values = [intervals["client"], *intervals["scheduler"], *intervals["workers"].values()]
    return all(value == INTERVAL for value in values)


def test_a_fit_sends_its_messages_promptly_and_gives_each_stream_its_interval_back(client):
    # distributed's own intervals (10 ms from the client, 5 ms to each worker, 2 ms from
    # a worker) held each message of a pass back; during a fit all are 1 ms
    engine = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="test", cache="memory")
    before = _intervals(client)
    assert before["client"] > INTERVAL and all(v > INTERVAL for v in before["workers"].values())
    assert all(value > INTERVAL for value in before["scheduler"]), before
    with engine.fit_span():
        during = _intervals(client)
        in_tasks = engine.map_reduce(_in_task, _together, None)["intervals"]
    assert _all_short(during), during
    assert set(in_tasks) == {INTERVAL}, in_tasks
    assert _intervals(client) == before


def test_two_fits_at_once_keep_the_short_interval_until_both_end(client):
    first = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="one", cache="memory")
    second = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="two", cache="memory")
    before = _intervals(client)
    with first.fit_span():
        with second.fit_span():
            assert _all_short(_intervals(client))
        assert _all_short(_intervals(client))  # the first fit still runs
    assert _intervals(client) == before


def test_the_config_leaves_distributeds_intervals_alone(client):
    engine = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="test", cache="memory")
    before = _intervals(client)
    with dask.config.set({"dask_em.prompt-messages": False}), engine.fit_span():
        assert _intervals(client) == before


@pytest.mark.parametrize(
    ("cache", "config"),
    [("stream", {}), ("memory", {"dask_em.grouped-passes": False})],
    ids=["streamed", "a-task-per-block"],
)
def test_passes_of_a_task_per_block_keep_distributeds_batching(client, cache, config):
    # many short tasks send many messages: there batching pays (a task per block of 100
    # one-row blocks: 109-114 ms a pass with distributed's intervals, 112-122 ms with
    # 1 ms; benchmarks/batching.py)
    with dask.config.set(config):
        engine = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="test", cache=cache)
        before = _intervals(client)
        with engine.fit_span():
            assert _intervals(client) == before


def test_a_fit_that_fails_gives_every_stream_its_interval_back(client):
    engine = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="test", cache="memory")
    before = _intervals(client)
    with pytest.raises(RuntimeError, match="the fit failed"), engine.fit_span():
        assert _all_short(_intervals(client))
        raise RuntimeError("the fit failed")
    assert _intervals(client) == before


def test_the_workers_get_their_interval_back_when_the_scheduler_does_not_answer(
    client, monkeypatch
):
    engine = EMEngine(da.ones((100, 2), chunks=(50, 2)), model="test", cache="memory")
    before = _intervals(client)
    run_on_scheduler = client.run_on_scheduler

    def refused(function, *args, **kwargs):
        if function is messages.restore_scheduler:
            raise OSError("the scheduler did not answer")
        return run_on_scheduler(function, *args, **kwargs)

    try:
        with engine.fit_span():
            monkeypatch.setattr(client, "run_on_scheduler", refused)
        assert client.run(_worker_interval) == before["workers"]
        assert client.scheduler_comm.interval == before["client"]
    finally:
        monkeypatch.undo()
        client.run_on_scheduler(messages.restore_scheduler, client_id=client.id)
    assert _intervals(client) == before
