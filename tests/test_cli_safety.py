"""Issue #15, the command line's safety: inputs never written over, outputs checked
writable before any cluster, bounded and explained cluster connections, INPUT checked
before any cluster, one-line messages.

Every refusal asserts the exit status, the one-line message, and that the user's files
are byte-identical before and after.  Clusters are real: the session's LocalCluster, or
``dask scheduler`` processes on loopback started here.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from dask_em import engine
from dask_em.cli import main
from dask_em.exceptions import ClusterError

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")


def snapshot(*paths: Path) -> dict[str, str]:
    """Every file under ``paths`` -> the SHA-256 of its bytes."""
    found = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def dask_em(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dask_em.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "data.zarr"
    X = np.random.default_rng(0).normal(size=(400, 3))
    zarr.create_array(str(path), data=X, chunks=(100, 3))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory, store) -> Path:
    from dask_em import GaussianMixture

    path = tmp_path_factory.mktemp("models") / "model.zarr"
    GaussianMixture(2, max_iter=3, random_state=0).fit(zarr.open_array(str(store))[:]).save(path)
    return path


def assert_one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dask-em"), err
    for fragment in fragments:
        assert fragment in lines[0], err


# -- inputs are never written over --------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "gmm", "{store}", "-k", "2", "--out", "{store}", "--overwrite"],
        ["fit", "gmm", "{store}", "-k", "2", "--out", "{store}/model.zarr", "--overwrite"],
        ["fit", "gmm", "{store}", "-k", "2", "--out", "{store}/.."],
        ["fit", "gmm", "{link}", "-k", "2", "--out", "{store}", "--overwrite", "--no-report"],
        ["fit", "gmm", "file://{store}", "-k", "2", "--out", "{link}", "--overwrite"],
        ["fit", "gmm", "{store}", "-k", "2", "--out", "{out}", "--checkpoint", "{store}/c"],
        ["predict", "{model}", "{store}", "--out", "{store}", "--overwrite"],
        ["predict", "{model}", "{store}", "--out", "{model}", "--overwrite"],
        ["predict", "{model}", "{store}", "--out", "{model}/labels.zarr"],
    ],
    ids=[
        "out-is-input",
        "out-inside-input",
        "out-holds-input",
        "input-through-symlink",
        "file-url-input",
        "checkpoint-inside-input",
        "predict-out-is-input",
        "predict-out-is-model",
        "predict-out-inside-model",
    ],
)
def test_an_output_over_an_input_is_refused_before_any_work(tmp_path, store, model, capsys, argv):
    link = tmp_path / "link.zarr"
    link.symlink_to(store)
    names = {"store": store, "model": model, "link": link, "out": tmp_path / "out.zarr"}
    before = snapshot(store, model)
    assert main([a.format(**names) for a in argv]) == 2
    captured = capsys.readouterr()
    assert_one_line(captured.err, "never writes over its inputs", "choose another")
    assert "Dask dashboard" not in captured.out  # no cluster was started
    assert snapshot(store, model) == before
    assert sorted(os.listdir(tmp_path)) == ["link.zarr"]


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A read-only file system (a tmpfs mounted ``ro``): root can write anywhere else."""
    path = tmp_path / "read-only"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--out", "--checkpoint"])
def test_an_unwritable_output_exits_2_in_seconds_without_a_cluster(
    tmp_path, store, read_only_dir, flag
):
    out = read_only_dir / "model.zarr" if flag == "--out" else tmp_path / "model.zarr"
    argv = ["fit", "gmm", str(store), "-k", "2", "--out", str(out)]
    if flag == "--checkpoint":
        argv += ["--checkpoint", str(read_only_dir / "fit.ckpt.zarr")]
    before = snapshot(store)
    result = dask_em(*argv, "--n-workers", "1", "--dashboard-address", ":0")  # a LocalCluster
    assert result.returncode == 2, result.stderr
    assert_one_line(result.stderr, flag, f"cannot write in {read_only_dir}", "Read-only")
    assert "Dask dashboard" not in result.stdout  # the cluster never started
    # refused before any work: no data persisted, no pass run (the check, not a timing)
    assert "persisted" not in result.stdout and " iteration " not in result.stdout
    assert snapshot(store) == before and not out.exists()


# -- INPUT checked before any cluster ---------------------------------------------------------
def test_bad_inputs_are_refused_before_any_cluster_in_command_line_terms(tmp_path, capsys):
    rng = np.random.default_rng(1)
    csv = tmp_path / "data.csv"
    np.savetxt(csv, rng.normal(size=(20, 3)), delimiter=",")
    one_d = tmp_path / "one-d.zarr"
    zarr.create_array(str(one_d), data=rng.normal(size=50), chunks=(25,))
    strings = tmp_path / "strings.zarr"
    with warnings.catch_warnings():  # zarr: no v3 specification for fixed-length strings
        warnings.simplefilter("ignore")
        zarr.create_array(str(strings), data=np.array([["a", "b"]] * 10))
    small = tmp_path / "small.zarr"
    zarr.create_array(str(small), data=rng.normal(size=(3, 2)))
    cases = {
        csv: (["-k", "2"], ["INPUT", "data.csv is a text (CSV) file, not a Zarr store", "save"]),
        one_d: (["-k", "2"], ["1-D data of shape (50,)", "store a single feature"]),
        strings: (["-k", "2"], ["dtype <U1", "real numbers"]),
        small: (["-k", "5"], ["--components 5 is more than the 3 rows"]),
    }
    before = snapshot(tmp_path)
    for path, (flags, fragments) in cases.items():
        out = tmp_path / "out.zarr"
        assert main(["fit", "gmm", str(path), *flags, "--out", str(out), "--n-workers", "1"]) == 2
        captured = capsys.readouterr()
        assert_one_line(captured.err, *fragments)
        assert "reshape" not in captured.err  # no Python advice to a command-line user
        assert "Dask dashboard" not in captured.out, path  # no cluster was started
    assert snapshot(tmp_path) == before


def test_a_data_store_given_as_the_model_is_named_as_such(tmp_path, store, capsys):
    before = snapshot(store)
    out = tmp_path / "labels.zarr"
    assert main(["predict", str(store), str(store), "--out", str(out)]) == 2
    assert_one_line(
        capsys.readouterr().err,
        f"MODEL {store} is a Zarr array of shape (400, 3) (data?), not a dask_em model file",
        "MODEL comes first",
    )
    assert snapshot(store) == before and not out.exists()


# -- clusters: bounded waits, and what was found ------------------------------------------
@pytest.fixture(scope="module")
def lonely_scheduler():
    """A real ``dask scheduler`` on loopback with no workers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"tcp://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield address
    process.terminate()
    process.wait(30)


def fit_argv(store: Path, tmp_path: Path, address: str, timeout: str = "3") -> list[str]:
    out = str(tmp_path / "model.zarr")
    return ["fit", "gmm", str(store), "-k", "2", "--out", out, "--no-report", "--scheduler",
            address, "--connect-timeout", timeout]  # fmt: skip


def test_nothing_listening_is_said_at_once(tmp_path, store, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert main(fit_argv(store, tmp_path, address, timeout="120")) == 3
    assert time.monotonic() - started < 120  # answered, not the timeout waited out
    assert_one_line(
        capsys.readouterr().err, f"cannot reach the scheduler at {address}", "nothing is listening"
    )


@pytest.mark.slow
def test_the_dashboard_port_is_named_not_waited_on_forever(client, tmp_path, store, capsys):
    port = int(client.dashboard_link.split(":")[2].split("/")[0])
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    assert main(fit_argv(store, tmp_path, address, timeout="120")) == 3
    assert time.monotonic() - started < 120  # named, not the timeout waited out
    assert_one_line(capsys.readouterr().err, "cluster error", "an HTTP server", "not a Dask sched")
    assert not (tmp_path / "model.zarr").exists()


def test_tls_to_a_plain_scheduler_is_named(tmp_path, store, lonely_scheduler, capsys):
    address = lonely_scheduler.replace("tcp://", "tls://")
    assert main(fit_argv(store, tmp_path, address)) == 3
    assert_one_line(capsys.readouterr().err, "does not speak TLS", "tcp://")


@pytest.mark.slow
def test_a_scheduler_without_workers_is_waited_for_then_exit_3(
    tmp_path, store, lonely_scheduler, capsys
):
    started = time.monotonic()
    assert main(fit_argv(store, tmp_path, lonely_scheduler, timeout="2")) == 3
    assert time.monotonic() - started >= 2  # the workers were waited for, then refused
    assert_one_line(
        capsys.readouterr().err,
        f"the scheduler at {lonely_scheduler} has 0 workers after 2 s (1 needed)",
        f"dask worker {lonely_scheduler}",
    )


@pytest.mark.slow
def test_open_client_waits_for_workers_or_says_how_many(client, lonely_scheduler):
    with pytest.raises(ClusterError, match="has 0 workers after 1 s"):
        engine.open_client(lonely_scheduler, timeout=1)
    joined = engine.open_client(client.scheduler.address, timeout=10, min_workers=2)
    try:
        assert len(joined.scheduler_info()["workers"]) >= 2
    finally:
        joined.close()
    with pytest.raises(ClusterError, match="has 2 workers after 1 s \\(3 needed\\)"):
        engine.open_client(client.scheduler.address, timeout=1, min_workers=3)


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["stream", "memory"])
def test_an_unreadable_input_chunk_is_one_line_naming_the_store_and_rows(tmp_path, cache):
    """A truncated chunk file: exit 2, one line naming the store, the rows and the chunk
    (the workers' own log lines only with --verbose); the store is left as it was."""
    path = tmp_path / "damaged.zarr"
    X = np.random.default_rng(1).normal(size=(4000, 3))
    zarr.create_array(str(path), data=X, chunks=(1000, 3))
    chunk = path / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    before = snapshot(path)
    argv = ["fit", "gmm", str(path), "-k", "2", "--out", str(tmp_path / "m.zarr"), "--no-report"]
    argv += ["--cache", cache, "--n-workers", "1", "--dashboard-address", ":0"]
    done = dask_em(*argv)
    assert done.returncode == 2
    assert_one_line(
        done.stderr, f"cannot read rows 2000:3000 of the Zarr array {path}, chunk 2 along the rows"
    )
    if cache == "stream":  # --verbose: the traceback (the same path for both caches)
        verbose = dask_em(*argv, "--verbose")
        assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert snapshot(path) == before and not (tmp_path / "m.zarr").exists()
