"""Checkpoint and resume: a fit killed at any moment resumes to the uninterrupted result.

The in-process tests stop a fit by raising from an iteration callback (the checkpoint of
that iteration is written first, as when the process dies right after it); the last test
kills ``dask-em fit`` with SIGKILL, process group and all, and resumes it.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

import dask.array as da
import numpy as np
import psutil
import pytest
import xarray as xr

from dask_em import CategoricalMixture, GaussianMixture, load
from dask_em.checkpoint import FORMAT_NAME, open_checkpoint, progress

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")

FITTED = {
    GaussianMixture: ("weights_", "means_", "covariances_", "precisions_cholesky_"),
    CategoricalMixture: ("weights_", "probabilities_"),
}


class Stop(Exception):
    """Raised from a callback to interrupt a fit after its n-th iteration."""


def stop_after(n_calls: int):
    calls = []

    def callback(record, params):
        calls.append(record.iteration)
        if len(calls) == n_calls:
            raise Stop

    return callback


def gaussian_data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 3))
    X[:1000] += 1.5  # overlapping clusters: EM needs many iterations
    return X


def categorical_data():
    rng = np.random.default_rng(4)
    return rng.integers(0, 4, size=(2000, 5)) * (rng.random((2000, 5)) < 0.7)


def assert_same_fit(a, b) -> None:
    for name in FITTED[type(a)]:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-12)
    assert (a.n_iter_, a.converged_, a.lower_bounds_) == (b.n_iter_, b.converged_, b.lower_bounds_)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("estimator", "make_data"),
    [
        (GaussianMixture(3, tol=0.0, max_iter=10, n_init=2, random_state=1), gaussian_data),
        (CategoricalMixture(3, tol=0.0, max_iter=8, n_init=2, random_state=2), categorical_data),
    ],
    ids=["gmm", "categorical"],
)
def test_resumed_fit_equals_the_uninterrupted_one(tmp_path, estimator, make_data):
    X = make_data()
    reference = type(estimator)(**estimator.get_params()).fit(X)
    # The initializations run in lockstep, each pass calls the callbacks of both (the
    # checkpoint of a pass is written before): stop after the first pass, in the middle,
    # and in the pass before the last.
    n_calls = [2, estimator.max_iter, estimator.max_iter * estimator.n_init - 3]
    for stop in n_calls:
        path = tmp_path / f"stop-{stop}.zarr"
        model = type(estimator)(**estimator.get_params())
        with pytest.raises(Stop):
            model.fit(X, checkpoint=path, callbacks=[stop_after(stop)])
        saved = progress(path)
        assert saved["iterations"] == [-(-stop // estimator.n_init)] * estimator.n_init
        resumed = type(estimator)(**estimator.get_params()).fit(X, checkpoint=path, resume=True)
        assert_same_fit(resumed, reference)


@pytest.mark.slow
def test_a_fit_stopped_at_its_converging_iteration_resumes_as_converged(tmp_path):
    X = gaussian_data()
    params = {"n_components": 3, "tol": 1e-4, "max_iter": 100, "random_state": 0}
    reference = GaussianMixture(**params).fit(X)
    assert reference.converged_ and reference.n_iter_ > 3
    path = tmp_path / "ck.zarr"
    with pytest.raises(Stop):
        GaussianMixture(**params).fit(X, checkpoint=path, callbacks=[stop_after(reference.n_iter_)])
    resumed = GaussianMixture(**params).fit(X, checkpoint=path, resume=True)
    assert_same_fit(resumed, reference)


@pytest.mark.slow
def test_resume_takes_the_seed_from_the_checkpoint(tmp_path):
    X = gaussian_data()
    path = tmp_path / "ck.zarr"
    with pytest.raises(Stop):
        GaussianMixture(3, max_iter=8, random_state=None).fit(
            X, checkpoint=path, callbacks=[stop_after(3)]
        )
    seed = int(open_checkpoint(path).attrs["seed"])
    reference = GaussianMixture(3, max_iter=8, random_state=seed).fit(X)
    resumed = GaussianMixture(3, max_iter=8, random_state=None).fit(X, checkpoint=path, resume=True)
    assert_same_fit(resumed, reference)


@pytest.mark.slow
def test_a_kill_between_the_two_renames_leaves_a_checkpoint_to_resume_from(tmp_path):
    X = gaussian_data()
    params = {"n_components": 3, "tol": 0.0, "max_iter": 10, "random_state": 0}
    reference = GaussianMixture(**params).fit(X)
    path = tmp_path / "ck.zarr"
    with pytest.raises(Stop):
        GaussianMixture(**params).fit(X, checkpoint=path, callbacks=[stop_after(4)])
    # The state a replacement leaves if killed after "rename the old one aside" and before
    # "rename the new one into place": no checkpoint at path, the old one beside it, and
    # a half-written staging store.
    os.rename(path, f"{path}.old-12345678")
    os.makedirs(f"{path}.tmp-87654321/weights")
    resumed = GaussianMixture(**params).fit(X, checkpoint=path, resume=True)
    assert_same_fit(resumed, reference)
    assert sorted(os.listdir(tmp_path)) == ["ck.zarr"]  # leftovers removed by the next write


@pytest.mark.slow
def test_the_checkpoint_is_a_versioned_zarr_store_holding_the_loop_state(tmp_path):
    path = tmp_path / "ck.zarr"
    model = GaussianMixture(2, max_iter=5, tol=0.0, n_init=2, random_state=0)
    model.fit(gaussian_data(), checkpoint=path)
    ds = xr.open_zarr(path, consolidated=False)
    assert ds.attrs["dask_em_format"] == FORMAT_NAME
    assert ds.attrs["dask_em_format_version"] == 6
    assert int(ds.attrs["n_runs"]) == 2
    assert ds["run1_means"].dims == ("component", "feature")
    assert ds["run0_history"].shape == (5, 5)
    assert ds["run1_history"].shape == (5, 5)
    # passes, step, step_max, extrapolated, after_rejection, evaluations
    assert ds["run1_steps_history"].shape == (5, 6)
    np.testing.assert_array_equal(ds["run1_steps_history"].values[:, 0], np.arange(1, 6))
    # scan, one init pass and five EM passes, each serving both initializations
    assert int(ds.attrs["passes"]) == 1 + 1 + 5
    # plain EM resumes from its current point alone: no chain of earlier points
    assert int(ds.attrs["run1_chain_length"]) == 0
    assert not [name for name in ds.data_vars if "chain" in name]
    files = [name for _, _, names in os.walk(path) for name in names]
    assert all(name == "zarr.json" or name.isdigit() or "." not in name for name in files), files


def test_checkpoint_refusals(tmp_path):
    X = gaussian_data()
    path = tmp_path / "ck.zarr"
    with pytest.raises(Stop):
        GaussianMixture(3, max_iter=10, random_state=0).fit(
            X, checkpoint=path, callbacks=[stop_after(2)]
        )
    with pytest.raises(FileExistsError, match="resume from it, or remove it"):
        GaussianMixture(3, max_iter=10, random_state=0).fit(X, checkpoint=path)
    with pytest.raises(ValueError, match="parameters n_components differ"):
        GaussianMixture(4, max_iter=10, random_state=0).fit(X, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="row_chunks differ"):
        GaussianMixture(3, max_iter=10, random_state=0).fit(
            da.from_array(X, chunks=(500, 3)), checkpoint=path, resume=True
        )
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        GaussianMixture(3).fit(X, resume=True)
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(ValueError, match="not a dask_em checkpoint"):
        GaussianMixture(3).fit(X, checkpoint=tmp_path / "other.zarr", resume=True)
    # max_iter may change: a resumed fit can be given more iterations
    longer = GaussianMixture(3, max_iter=12, random_state=0).fit(X, checkpoint=path, resume=True)
    assert longer.n_iter_ > 2


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    X = gaussian_data()
    path = tmp_path / "ck.zarr"
    model = GaussianMixture(2, max_iter=4, random_state=0).fit(X, checkpoint=path, resume=True)
    assert progress(path)["iteration"] == model.n_iter_


# -- the kill -9 flow through the command line -----------------------------------------
def _group_members(pgid: int) -> list[int]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def wait_for_line(stream, marker: str, timeout: float) -> bool:
    """Read ``stream`` until a line contains ``marker`` (True) or it ends or times out."""
    found = threading.Event()

    def read() -> None:
        for line in stream:
            if marker in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    return found.wait(timeout)


def wait_for_exit(pids: list[int], timeout: float) -> list[int]:
    """Wait on process exit notifications (pidfds) for ``pids``; those still alive."""
    waiting = {}
    for pid in pids:
        try:
            waiting[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    try:
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                os.close(fd)
                del waiting[fd]
    finally:
        for fd in waiting:
            os.close(fd)
    return sorted(waiting.values())


@pytest.mark.slow
def test_kill_9_of_the_cli_then_resume_gives_the_uninterrupted_parameters(client, tmp_path):
    """Three initializations in lockstep with SQUAREM: killed mid-fit, resumed, the same
    parameters as a fit never interrupted."""
    from dask_em.synthetic import random_gaussian_mixture, write_gaussian_mixture

    store = tmp_path / "data.zarr"
    truth = random_gaussian_mixture(4, 4, seed=5, separation=1.5)  # overlapping: slow EM
    write_gaussian_mixture(store, 20_000, truth, seed=5, chunk_rows=2_500)
    max_iter = 10  # each iteration writes a checkpoint of three restarts: about 1.5 s
    reference = GaussianMixture(
        4, max_iter=max_iter, tol=0.0, random_state=0, n_init=3, accelerate="squarem"
    ).fit(str(store))

    checkpoint, out = tmp_path / "fit.ckpt.zarr", tmp_path / "model.zarr"
    command = [
        sys.executable, "-m", "dask_em.cli", "fit", "gmm", str(store),
        "--components", "4", "--max-iter", str(max_iter), "--tol", "0", "--seed", "0",
        "--n-init", "3", "--accelerate", "squarem", "--out", str(out),
        "--checkpoint", str(checkpoint), "--no-report",
        "--n-workers", "2", "--threads-per-worker", "1", "--dashboard-address", ":0",
    ]  # fmt: skip
    first = subprocess.Popen(
        command,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # The CLI prints each iteration's line before writing its checkpoint, so the line
        # of iteration 3 means that the checkpoint of iteration 2 is complete on disk.
        line = "gmm restart 3/3 iteration 3:"
        assert wait_for_line(first.stdout, line, timeout=120), "no iteration 3"
        assert len(_group_members(first.pid)) > 1  # the client and its LocalCluster's workers
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.stdout.close()
    killed_at = progress(checkpoint)
    assert 2 <= killed_at["iteration"] < max_iter
    assert not out.exists()
    lingering = wait_for_exit(_group_members(first.pid), timeout=20)
    assert not lingering, f"left running: {lingering}"  # no worker of the killed client

    resumed = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, timeout=300, start_new_session=True
    )
    assert resumed.returncode == 0, resumed.stderr
    done = ", ".join(str(n) for n in killed_at["iterations"])
    assert f"resuming initializations 1, 2, 3 after iterations {done}" in resumed.stdout
    assert_same_fit(load(out), reference)
    shutil.rmtree(checkpoint)
