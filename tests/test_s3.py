"""Object storage: fit from a Zarr store on an S3-compatible server started on loopback.

The server is moto in server mode (a real HTTP S3 endpoint in a thread of this process).
The cluster is this module's own, started with every AWS credential source removed from
the environment, so its workers can read the bucket only with the credentials that
travel in ``storage_options``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from moto.server import ThreadedMotoServer

from dask_em import GaussianMixture, load, open_zarr_array
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


def bucket_store(options: dict, name: str) -> str:
    """The URL of a new Zarr array of :func:`draw_data` in the test bucket."""
    import s3fs

    s3fs.S3FileSystem(**options).makedirs(BUCKET, exist_ok=True)
    url = f"s3://{BUCKET}/{name}"
    zarr.create_array(store=url, storage_options=options, data=draw_data(), chunks=(CHUNK_ROWS, 3))
    return url


def scheduler_specs(dask_scheduler) -> list[tuple[str, bytes]]:
    """Every task the scheduler holds now: its key and its pickled spec."""
    from distributed.protocol.pickle import dumps

    return [(str(key), dumps(ts.run_spec)) for key, ts in dask_scheduler.tasks.items()]


class SpecWatcher:
    """Reads the scheduler's tasks every 20 ms while a fit runs (from a thread)."""

    def __init__(self, client) -> None:
        import threading

        self.client = client
        self.seen: dict[str, bytes] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        while not self.stopped.is_set():
            for key, spec in self.client.run_on_scheduler(scheduler_specs):
                self.seen[key] = spec
            self.stopped.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def test_credentials_never_enter_the_scheduler_tasks_events_or_files(
    s3, client_without_credentials, tmp_path
):
    options, _ = s3
    url = bucket_store(options, "secret-test.zarr")
    client = client_without_credentials
    secret = options["secret"].encode()
    with client.as_current(), SpecWatcher(client) as watcher:
        model = GaussianMixture(3, random_state=0, cache="stream", max_iter=4, tol=0.0)
        model.fit(url, storage_options=options, checkpoint=tmp_path / "fit.ckpt.zarr")
        labels = model.predict(open_zarr_array(url, options)).compute()
    reads = [spec for key, spec in watcher.seen.items() if "zarr" in key]
    assert reads, f"no task reading the store was seen among {len(watcher.seen)}"
    leaking = [key for key, spec in watcher.seen.items() if secret in spec]
    assert leaking == [], leaking
    assert np.bincount(labels, minlength=3).min() > 0.15 * ROWS
    events = client.get_events()
    leaking = [(t, e) for t, es in events.items() for e in es if options["secret"] in repr(e)]
    assert leaking == [], leaking
    model.save(tmp_path / "model.zarr")
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert secret not in path.read_bytes(), path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dask_em.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_the_command_line_takes_secrets_from_a_file_or_the_environment(
    s3, client_without_credentials, tmp_path
):
    options, _ = s3
    url = bucket_store(options, "cli.zarr")
    address = client_without_credentials.scheduler.address
    common = ["gmm", url, "-k", "3", "--max-iter", "3", "--no-report", "-q"]
    common += ["--scheduler", address, "--cache", "stream"]
    public = {"endpoint_url": options["endpoint_url"]}
    secrets_file = tmp_path / "s3.json"
    secrets_file.write_text(json.dumps({"key": options["key"], "secret": options["secret"]}))
    secrets_file.chmod(0o600)

    from_file = cli(
        "fit", *common, "--out", str(tmp_path / "a.zarr"), "--storage-options-file",
        str(secrets_file), "--storage-option", f"endpoint_url={public['endpoint_url']}",
    )  # fmt: skip
    assert from_file.returncode == 0, from_file.stderr
    assert "warning" not in from_file.stderr, from_file.stderr

    from_environment = cli(
        "fit", *common, "--out", str(tmp_path / "b.zarr"),
        env={"DASK_EM_STORAGE_OPTIONS": json.dumps(options)},
    )  # fmt: skip
    assert from_environment.returncode == 0, from_environment.stderr
    assert load(tmp_path / "a.zarr").lower_bound_ == load(tmp_path / "b.zarr").lower_bound_

    on_the_command_line = cli(
        "fit", *common, "--out", str(tmp_path / "c.zarr"),
        *[f"--storage-option={name}={value}" for name, value in options.items()],
    )  # fmt: skip
    assert on_the_command_line.returncode == 0, on_the_command_line.stderr
    warned = on_the_command_line.stderr.strip().splitlines()
    assert len(warned) == 1 and warned[0].startswith("dask-em: warning: --storage-option key,")
    assert "--storage-options-file" in warned[0] and "DASK_EM_STORAGE_OPTIONS" in warned[0]
    assert options["secret"] not in on_the_command_line.stderr


def test_storage_options_are_split_into_what_may_travel_and_what_may_not():
    from dask_em.credentials import split_storage_options

    public, secret = split_storage_options(
        {
            "endpoint_url": "http://x",
            "anon": False,
            "key": "AKIA",
            "secret": "s",
            "token": "t",
            "client_kwargs": {"region_name": "eu", "aws_secret_access_key": "s2"},
            "config_kwargs": {"retries": {"max_attempts": 3}},
            "account_key": "k",
            "sas_token": "q",
        }
    )
    assert public == {
        "endpoint_url": "http://x",
        "anon": False,
        "config_kwargs": {"retries": {"max_attempts": 3}},
    }
    assert set(secret) == {"key", "secret", "token", "client_kwargs", "account_key", "sas_token"}
