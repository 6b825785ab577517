"""Deployment recipes: deployment/local/run.sh end to end, and the other recipes' files.

The local recipe is run as a user runs it: a subprocess in its own session that starts
``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, writes synthetic data,
fits through ``deployment/job.py`` and saves the model.  Docker, Kubernetes and SLURM
cannot run here; their files are checked for what can be checked without them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from scipy.optimize import linear_sum_assignment

from dask_em import load
from dask_em.synthetic import random_gaussian_mixture

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "deployment"


def session_processes(session_id: int) -> list[psutil.Process]:
    """Live processes of a session (everything the script started, however deep)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def run_script(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a recipe script in a new session; on timeout, stop that session (and only it)."""
    env = {
        **os.environ,
        # the `python` and `dask` of this test run come first on PATH
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        "TMPDIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # the script's trap stops what it started
        try:
            stdout, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"{args[1]} timed out after {timeout} s\n{stdout}\n{stderr}")
    finally:
        leftovers = session_processes(process.pid)
        for leftover in leftovers:
            leftover.kill()
    result = subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
    result.leftovers = [p.pid for p in leftovers]
    return result


def test_local_recipe_runs_a_cluster_fits_and_cleans_up(tmp_path):
    out = tmp_path / "model.zarr"
    script = str(DEPLOYMENT / "local" / "run.sh")
    args = ["--workers", "2", "--samples", "60000", "--components", "3", "--seed", "7"]
    result = run_script(["bash", script, *args, "--out", str(out)], tmp_path, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"

    lines = result.stdout.splitlines()
    assert any(re.fullmatch(r"scheduler at tcp://127\.0\.0\.1:\d+", line) for line in lines)
    assert any(re.fullmatch(r"dashboard at http://127\.0\.0\.1:\d+/status", line) for line in lines)
    started = [int(m.group(1)) for line in lines if (m := re.search(r", pid (\d+)$", line))]
    assert len(started) == 3  # the scheduler and two workers
    # every process the script started is gone, and so is its temporary directory
    assert result.leftovers == []
    assert not any(psutil.pid_exists(pid) for pid in started)
    assert list(tmp_path.glob("dask-em-local.*")) == []

    model = load(out)
    assert model.converged_
    truth = random_gaussian_mixture(3, 3, seed=7)
    distances = ((model.means_[:, None] - truth.means[None]) ** 2).sum(axis=2)
    fitted, true = linear_sum_assignment(distances)
    np.testing.assert_allclose(model.weights_[fitted], truth.weights[true], atol=0.01)
    np.testing.assert_allclose(model.means_[fitted], truth.means[true], atol=0.05)
    np.testing.assert_allclose(model.covariances_[fitted], truth.covariances[true], atol=0.05)


def test_local_recipe_refuses_to_write_over_a_model(tmp_path):
    out = tmp_path / "model.zarr"
    out.mkdir()
    script = str(DEPLOYMENT / "local" / "run.sh")
    result = run_script(["bash", script, "--out", str(out)], tmp_path, timeout=60)
    assert result.returncode == 2
    assert "exists" in result.stderr
    assert "started" not in result.stdout  # refused before starting anything


def test_container_recipes_are_well_formed():
    """What can be checked without Docker, Kubernetes or SLURM."""
    compose = yaml.safe_load((DEPLOYMENT / "docker" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"scheduler", "worker", "make-data", "fit"}
    assert "data" in compose["volumes"]
    for service in compose["services"].values():
        assert "data:/data" in service["volumes"]
    dockerfile = (DEPLOYMENT / "docker" / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE)
    assert copied and all((ROOT / path).exists() for path in copied)

    kinds = {}
    for path in (DEPLOYMENT / "kubernetes").glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            kinds[document["kind"]] = document
    assert {"DaskJob", "DaskCluster", "Secret", "PersistentVolumeClaim"} <= set(kinds)
    job = kinds["DaskJob"]
    service = job["spec"]["cluster"]["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]

    # job.py and the SLURM driver at least parse their own --help
    for script in (DEPLOYMENT / "job.py", DEPLOYMENT / "hpc" / "fit_slurm.py"):
        compile(script.read_text(), str(script), "exec")
    help_text = subprocess.run(
        [sys.executable, str(DEPLOYMENT / "job.py"), "fit", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_text.returncode == 0 and "--scheduler" in help_text.stdout

    readme = (ROOT / "README.md").read_text()
    for recipe in ("local", "docker", "kubernetes", "hpc"):
        assert (DEPLOYMENT / recipe / "README.md").exists()
        assert f"deployment/{recipe}" in readme
