"""The dask-em command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from dask_em import load

pytestmark = pytest.mark.slow  # each test starts Python subprocesses (1+ s each)


def dask_em(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dask_em.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_demo_writes_fits_and_compares_with_the_truth(tmp_path):
    store, out = tmp_path / "demo.zarr", tmp_path / "model.zarr"
    result = dask_em(
        "demo",
        "--n-samples",
        "60000",
        "--chunk-rows",
        "10000",
        "--store",
        str(store),
        "--out",
        str(out),
        "--components",
        "3",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("Dask dashboard: http://") for line in lines)
    assert any(line.startswith("wrote 60,000 rows") for line in lines)
    iterations = [line for line in lines if re.match(r"gmm iteration \d+: objective", line)]
    assert len(iterations) >= 2
    header = next(line for line in lines if line.startswith("component"))
    table = lines[lines.index(header) + 1 :]
    assert len(table) == 3
    for row in table:
        true_weight, fitted_weight, mean_error, cov_error = map(float, row.split()[1:])
        assert abs(true_weight - fitted_weight) < 0.02
        assert mean_error < 0.1 and cov_error < 0.2
    assert store.exists()  # an explicit --store is kept
    assert load(out).n_iter_ == len(iterations)


def test_demo_never_writes_over_an_existing_path(tmp_path):
    precious = tmp_path / "precious.zarr"
    precious.mkdir()
    (precious / "data").write_text("mine")
    result = dask_em("demo", "--store", str(precious))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("dask-em: error:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert (precious / "data").read_text() == "mine"


@pytest.mark.parametrize("args", [[], ["demo", "--n-samples", "0"], ["nonsense"]])
def test_bad_usage_exits_with_status_2(args):
    assert dask_em(*args).returncode == 2


def test_console_script_is_installed():
    scripts = os.path.dirname(sys.executable)
    result = subprocess.run(
        [os.path.join(scripts, "dask-em"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "demo" in result.stdout
