"""Shared fixtures: one real LocalCluster with 2 worker processes for the session."""

from __future__ import annotations

import logging

import pytest
from distributed import Client, LocalCluster


def pytest_collection_modifyitems(items):
    """Mark every test that uses the session's cluster, for ``-m "not cluster"``."""
    for item in items:
        if {"client", "cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster():
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit="3GiB",
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def client(cluster):
    with Client(cluster) as client:
        yield client


class _DecreaseRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("objective decreased"):
            self.messages.append(record.getMessage())


_LOOP_LOGGERS = ("dask_em.engine", "dask_em.em", "dask_em.acceleration.driver")


@pytest.fixture(autouse=True)
def no_fit_decreases_its_objective(request):
    """Every fit in every test: the engine, the loop and the drivers report any decrease
    beyond 1e-10 relative (a float32 fit's loop: its family's looser tolerance)."""
    if request.node.get_closest_marker("allow_objective_decrease"):
        yield
        return
    recorder = _DecreaseRecorder()
    # the engine's fits; loops run directly (dask_em.em) and drivers run by run_em
    loggers = [logging.getLogger(name) for name in _LOOP_LOGGERS]
    for logger in loggers:
        logger.addHandler(recorder)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(recorder)
    assert recorder.messages == []
