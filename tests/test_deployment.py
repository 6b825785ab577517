"""Deployment recipes: deployment/local/run.sh end to end, and the other recipes' files.

The local recipe is run as a user runs it: a subprocess in its own session that starts
``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, writes synthetic data
with ``dask-em make-data``, fits with ``dask-em fit --scheduler`` and saves the model.
Docker, Kubernetes and SLURM cannot run here; their files are checked for what can be
checked without them, including that every ``dask-em`` command in them is accepted by
the ``dask-em`` argument parser and that the batch fits checkpoint and resume.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
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
from dask_em.cli import build_parser
from dask_em.synthetic import random_gaussian_mixture

pytestmark = pytest.mark.slow

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
        # and their `dask_em` is this checkout, as in every other test: not a copy
        # installed earlier (stale after an edit), whose kernels would also compile
        # again beside this checkout's cache
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
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
        # a worker's helper processes (multiprocessing's resource tracker, say) end a
        # moment after their parent: give what is still exiting 10 s, then count it
        _, leftovers = psutil.wait_procs(session_processes(process.pid), timeout=10)
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


def dask_em_commands(script: str) -> list[list[str]]:
    """The ``dask-em`` command lines in a shell script (split at ``&&``, ``||``, ``;``)."""
    words = shlex.split(script.replace(";", " ; "))
    commands, current = [], []
    for word in [*words, ";"]:
        if word in ("&&", "||", ";"):
            if current and current[0] == "exec":
                current = current[1:]
            if current and current[0] == "dask-em":
                commands.append(current)
            current = []
        else:
            current.append(word)
    return commands


def parse_dask_em(command: list[str]) -> argparse.Namespace:
    """``command``'s arguments as ``dask-em`` parses them; fails the test if it refuses."""
    assert command[0] == "dask-em"
    try:
        return build_parser().parse_args(command[1:])
    except SystemExit as refused:
        pytest.fail(f"dask-em refuses {shlex.join(command)} (exit status {refused.code})")


def assert_batch_fit(command: list[str], shared: str) -> argparse.Namespace:
    """A fit on a named scheduler that checkpoints under ``shared`` and resumes."""
    args = parse_dask_em(command)
    assert args.command == "fit"
    assert args.scheduler, "without --scheduler, dask-em fit starts a LocalCluster"
    assert args.checkpoint and args.resume
    assert args.checkpoint.startswith(shared + "/") and args.out.startswith(shared + "/")
    assert args.checkpoint != args.out
    return args


def test_dask_em_commands_are_found_and_checked():
    script = "[ -e /x ] || exec dask-em info /x && echo ok; dask-em fit gmm /x --bogus"
    assert dask_em_commands(script) == [
        ["dask-em", "info", "/x"],
        ["dask-em", "fit", "gmm", "/x", "--bogus"],
    ]
    parse_dask_em(["dask-em", "info", "/x"])
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        parse_dask_em(["dask-em", "fit", "gmm", "/x", "--bogus"])


def test_compose_recipe_runs_dask_em_with_a_checkpoint_on_the_volume():
    compose = yaml.safe_load((DEPLOYMENT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"scheduler", "worker", "make-data", "fit"}
    assert "data" in compose["volumes"]
    for service in services.values():
        assert "data:/data" in service["volumes"]
    assert "tcp://scheduler:8786" in services["worker"]["command"]

    make_data = dask_em_commands(services["make-data"]["command"][0])
    assert len(make_data) == 1
    made = parse_dask_em(make_data[0])
    assert made.command == "make-data" and made.out == "/data/gmm.zarr"

    fits = dask_em_commands(services["fit"]["command"][0])
    assert len(fits) == 1
    fit = assert_batch_fit(fits[0], "/data")
    assert fit.input == made.out and fit.scheduler == "tcp://scheduler:8786"
    assert services["fit"]["depends_on"]["make-data"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["fit"]["restart"].startswith("on-failure")

    dockerfile = (DEPLOYMENT / "docker" / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE)
    assert copied and all((ROOT / path).exists() for path in copied)


def test_kubernetes_job_runs_dask_em_fit_with_a_checkpoint_on_its_volume():
    kinds = {}
    for path in (DEPLOYMENT / "kubernetes").glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            kinds[document["kind"]] = document
    assert {"DaskJob", "DaskCluster", "Secret", "PersistentVolumeClaim"} <= set(kinds)
    job = kinds["DaskJob"]
    service = job["spec"]["cluster"]["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]

    pod = job["spec"]["job"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["sh", "-c"]
    (fit_command,) = dask_em_commands(container["args"][0])
    (mount,) = container["volumeMounts"]
    fit = assert_batch_fit(fit_command, mount["mountPath"])
    assert fit.scheduler == "$DASK_SCHEDULER_ADDRESS"  # set in the pod by the operator
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == kinds["PersistentVolumeClaim"]["metadata"]["name"]


def test_slurm_driver_runs_dask_em_fit_with_a_checkpoint_next_to_the_model():
    spec = importlib.util.spec_from_file_location("fit_slurm", DEPLOYMENT / "hpc" / "fit_slurm.py")
    fit_slurm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_slurm)  # dask_jobqueue is imported only to start a cluster
    argv = ["/scratch/u/data.zarr", "--components", "8", "--out", "/scratch/u/gmm8.zarr"]
    args = fit_slurm.build_parser().parse_args(argv)
    command = fit_slurm.fit_command(args, "tcp://10.0.0.5:8786")
    fit = assert_batch_fit(command, "/scratch/u")
    assert (fit.model, fit.input, fit.components) == ("gmm", "/scratch/u/data.zarr", 8)
    assert fit.checkpoint == "/scratch/u/gmm8.ckpt.zarr"
    assert fit.scheduler == "tcp://10.0.0.5:8786"
    own = fit_slurm.build_parser().parse_args([*argv, "--checkpoint", "/scratch/u/c.zarr"])
    assert assert_batch_fit(fit_slurm.fit_command(own, "x"), "/scratch/u").checkpoint == (
        "/scratch/u/c.zarr"
    )

    sbatch = (DEPLOYMENT / "hpc" / "fit_slurm.sbatch").read_text()
    assert "python deployment/hpc/fit_slurm.py" in sbatch


def test_recipes_are_documented_and_job_py_is_gone():
    assert not (DEPLOYMENT / "job.py").exists()
    readme = (ROOT / "README.md").read_text()
    for recipe in ("local", "docker", "kubernetes", "hpc"):
        assert (DEPLOYMENT / recipe / "README.md").exists()
        assert f"deployment/{recipe}" in readme
    for path in [ROOT / "README.md", *DEPLOYMENT.rglob("*")]:
        if path.is_file() and "__pycache__" not in path.parts:
            assert "job.py" not in path.read_text(), path
