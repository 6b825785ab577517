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


@pytest.fixture(autouse=True)
def no_fit_decreases_its_objective(request):
    """Every fit in every test: the engine reports any decrease beyond 1e-10 relative."""
    if request.node.get_closest_marker("allow_objective_decrease"):
        yield
        return
    recorder = _DecreaseRecorder()
    engine_logger = logging.getLogger("dask_em.engine")
    engine_logger.addHandler(recorder)
    try:
        yield
    finally:
        engine_logger.removeHandler(recorder)
    assert recorder.messages == []
