"""Object storage: fit from a Zarr store on an S3-compatible server started on loopback.

The server is moto in server mode (a real HTTP S3 endpoint in a thread of this process).
The cluster is this module's own, started with every AWS credential source removed from
the environment, so its workers can read the bucket only with the credentials that
travel in ``storage_options``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from moto.server import ThreadedMotoServer

from dask_em import GaussianMixture
from tests.helpers import assert_monotone

pytestmark = pytest.mark.slow

BUCKET = "dask-em-test"
ROWS, CHUNK_ROWS = 60_000, 5_000
TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])
TRUE_MEANS = np.array([[-4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [4.0, 0.0, 4.0]])


def draw_data() -> np.ndarray:
    rng = np.random.default_rng(3)
    labels = rng.choice(3, size=ROWS, p=TRUE_WEIGHTS)
    return TRUE_MEANS[labels] + rng.standard_normal((ROWS, 3))


class RequestLog(logging.Handler):
    """The request lines the S3 server logs (werkzeug: '"GET /path HTTP/1.1" 200 -')."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, prefix: str) -> int:
        return sum(f'"GET {prefix}' in line and '" 200 ' in line for line in self.lines)


@pytest.fixture(scope="module")
def s3():
    """``(storage_options, request log)`` of a fresh S3 server on 127.0.0.1."""
    requests = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(requests)
    previous_level = werkzeug.level
    werkzeug.setLevel(logging.INFO)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "dask-em", "secret": "not-a-secret", "endpoint_url": f"http://{host}:{port}"}
    try:
        yield options, requests
    finally:
        server.stop()
        werkzeug.removeHandler(requests)
        werkzeug.setLevel(previous_level)


@pytest.fixture(scope="module")
def client_without_credentials(tmp_path_factory):
    """A 2-worker cluster whose processes have no AWS credentials of their own."""
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                env.delenv(name)
        missing = str(tmp_path_factory.mktemp("no-aws") / "none")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
        env.setenv("AWS_CONFIG_FILE", missing)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, dashboard_address=":0", memory_limit="2GiB"
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            yield client


def test_fit_streams_a_zarr_store_from_s3(s3, client_without_credentials, tmp_path):
    options, requests = s3
    import s3fs

    s3fs.S3FileSystem(**options).mkdir(BUCKET)
    url = f"s3://{BUCKET}/gmm.zarr"
    X = draw_data()
    zarr.create_array(store=url, storage_options=options, data=X, chunks=(CHUNK_ROWS, 3))
    zarr.create_array(store=str(tmp_path / "gmm.zarr"), data=X, chunks=(CHUNK_ROWS, 3))
    client = client_without_credentials
    settings = dict(random_state=0, cache="stream", tol=1e-6)

    reads_before = requests.count(f"/{BUCKET}/gmm.zarr/c/")
    with client.as_current():
        model = GaussianMixture(3, **settings).fit(url, storage_options=options)
        reference = GaussianMixture(3, **settings).fit(str(tmp_path / "gmm.zarr"))
    chunk_reads = requests.count(f"/{BUCKET}/gmm.zarr/c/") - reads_before

    assert model.data_placement_ == "stream"
    # the scan pass, the init pass and every EM iteration each read every chunk once more
    n_chunks = ROWS // CHUNK_ROWS
    assert chunk_reads == n_chunks * (2 + model.n_iter_)
    # the same data from object storage and from a local store: the same fit, bit for bit
    np.testing.assert_array_equal(model.means_, reference.means_)
    np.testing.assert_array_equal(model.covariances_, reference.covariances_)
    assert model.lower_bound_ == reference.lower_bound_
    assert_monotone(model.history_)
    order = np.argsort(model.means_[:, 0])
    np.testing.assert_allclose(model.weights_[order], TRUE_WEIGHTS, atol=0.01)
    np.testing.assert_allclose(model.means_[order], TRUE_MEANS, atol=0.03)


def test_storage_options_need_a_path():
    with pytest.raises(ValueError, match="storage_options apply only"):
        GaussianMixture(2).fit(np.zeros((10, 2)), storage_options={"anon": True})
