"""Issue #16, outputs of one run stay together: two ``dask-em fit --overwrite`` to the
same ``--out`` at once once left the model of one run beside the report of the other.

A run now holds a lock on ``--out`` (and ``--checkpoint``) from before its cluster
starts until its last file is written (:mod:`dask_em.cli.locks`); a second run is refused
at once.  The lock itself is tested across real processes (a forked holder, killed with
SIGKILL); the command line with real ``dask-em fit`` subprocesses.
"""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from dask_em.cli import main
from dask_em.cli.locks import OutputBusy, acquire, holding, lock_path, release

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")

#: The pid is there once the holder has written it (a run refused in the moment between
#: the holder's lock and its write sees none).
BUSY = re.compile(
    r"dask-em: error: (\S+) is being written by another dask-em run(?: \(pid (\d+)\))?; wait for "
    r"it to finish or choose another (--out|--checkpoint)"
)


def hold_in_another_process(path: Path, flag: str = "--out") -> int:
    """A forked process that takes the lock of ``path`` and waits; returns its pid."""
    ready, tell = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(ready)
            acquire(str(path), flag)
            os.write(tell, b"locked")
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(tell)
    try:
        assert os.read(ready, 16) == b"locked"
    finally:
        os.close(ready)
    return pid


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.fixture
def holder(tmp_path):
    """The lock of ``tmp_path/model.zarr`` held by another live process."""
    pid = hold_in_another_process(tmp_path / "model.zarr")
    yield pid
    try:
        kill(pid)
    except ProcessLookupError:
        pass


# -- the lock -------------------------------------------------------------------------------
def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path, holder):
    with pytest.raises(OutputBusy, match=rf"model\.zarr is being written .* \(pid {holder}\)"):
        acquire(str(tmp_path / "model.zarr"), "--out")
    # model and model.zarr share their report's files, hence their lock
    with pytest.raises(OutputBusy):
        acquire(str(tmp_path / "model"), "--out")
    release(str(tmp_path / "other.zarr"), acquire(str(tmp_path / "other.zarr"), "--out"))


def test_a_lock_left_by_a_process_killed_with_sigkill_is_taken_over(tmp_path, holder):
    kill(holder)
    assert os.path.exists(lock_path(str(tmp_path / "model.zarr")))  # left behind, unlocked
    descriptor = acquire(str(tmp_path / "model.zarr"), "--out")
    assert Path(lock_path(str(tmp_path / "model.zarr"))).read_text() == f"{os.getpid()}\n"
    release(str(tmp_path / "model.zarr"), descriptor)
    assert os.listdir(tmp_path) == []  # the lock file is gone once released


def test_holding_locks_each_lock_file_once_and_releases_them_all(tmp_path):
    outputs = {"--out": str(tmp_path / "m.zarr"), "--checkpoint": str(tmp_path / "m")}
    with holding(outputs):  # the same lock file twice: taken once, not refused by itself
        assert os.listdir(tmp_path) == [".m.dask-em-lock"]
    assert os.listdir(tmp_path) == []


def test_a_refused_second_lock_releases_the_first(tmp_path):
    pid = hold_in_another_process(tmp_path / "c.zarr", "--checkpoint")
    try:
        outputs = {"--out": str(tmp_path / "m.zarr"), "--checkpoint": str(tmp_path / "c.zarr")}
        with pytest.raises(OutputBusy, match="choose another --checkpoint"), holding(outputs):
            pass
        release(str(tmp_path / "m.zarr"), acquire(str(tmp_path / "m.zarr"), "--out"))
    finally:
        kill(pid)


# -- the command line -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "data.zarr"
    rng = np.random.default_rng(0)
    means = np.array([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    X = means[rng.integers(3, size=600)] + rng.normal(size=(600, 2))
    zarr.create_array(str(path), data=X, chunks=(200, 2))
    return path


@pytest.mark.parametrize("flag", ["--out", "--checkpoint"])
def test_fit_to_an_output_another_run_holds_is_refused_before_any_cluster(
    tmp_path, store, capsys, flag
):
    out, checkpoint = tmp_path / "model.zarr", tmp_path / "state.zarr"
    pid = hold_in_another_process(out if flag == "--out" else checkpoint, flag)
    try:
        argv = ["fit", "gmm", str(store), "-k", "2", "--out", str(out), "--overwrite"]
        assert main([*argv, "--checkpoint", str(checkpoint), "--resume"]) == 2
    finally:
        kill(pid)
    captured = capsys.readouterr()
    assert "Dask dashboard" not in captured.out  # refused before the cluster
    (line,) = captured.err.strip().splitlines()
    found = BUSY.fullmatch(line)
    assert found is not None, line
    held = out if flag == "--out" else checkpoint
    assert found.groups() == (str(held), str(pid), flag)


def report_numbers(report: Path) -> tuple[str, list[str]]:
    """The final objective and the per-iteration objectives the HTML report records."""
    page = html.unescape(report.read_text())
    final = re.search(r"<th>final objective \(mean per row\)</th><td>([^<]+)</td>", page)
    rows = re.findall(r"<tr><td>\d+</td><td>([^<]+)</td>", page)
    return final.group(1), rows


@pytest.mark.slow
def test_two_concurrent_overwrite_runs_leave_a_matching_model_and_report(tmp_path, store):
    from dask_em import load

    out = tmp_path / "model.zarr"
    command = [sys.executable, "-m", "dask_em.cli", "fit", "gmm", str(store), "-k", "3"]
    command += ["--out", str(out), "--overwrite", "--max-iter", "4", "--n-workers", "1"]
    command += ["--threads-per-worker", "1", "--dashboard-address", ":0"]
    runs = [
        subprocess.Popen(
            [*command, "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for seed in (1, 2)
    ]
    results = [(run.wait(timeout=180), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, stdout, stderr in results:
        if code == 2:  # refused at once, before its cluster, naming the other run
            (line,) = stderr.strip().splitlines()
            assert BUSY.fullmatch(line) and BUSY.fullmatch(line).group(1) == str(out), line
            assert "Dask dashboard" not in stdout
    model = load(out)
    final, iterations = report_numbers(tmp_path / "model.report.html")
    assert final == f"{model.lower_bound_:.12g}"
    assert iterations == [f"{h['objective']:.12g}" for h in model.history_]
    assert sorted(os.listdir(tmp_path)) == [
        "model.convergence.png",
        "model.report.html",
        "model.zarr",
    ]  # no lock file, nothing staged left behind
