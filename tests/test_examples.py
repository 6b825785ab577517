"""Every script in examples/ runs and writes its plot: at its default (small) size, but
accelerated_em at a tenth of it and with every fit stopped after 40 iterations (its four
fits make about 850 passes over the store to converge, 40 ms each on a LocalCluster;
the script is the same, only shorter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = sorted(
    p for p in (Path(__file__).parents[1] / "examples").glob("*.py") if p.name != "common.py"
)


def test_there_is_one_example_per_model_and_one_for_accelerated_em():
    names = {p.stem for p in EXAMPLES}
    assert names == {
        "gaussian_mixture",
        "poisson_mixture",
        "categorical_mixture",
        "bernoulli_mixture",
        "gaussian_hmm",
        "poisson_hmm",
        "categorical_hmm",
        "accelerated_em",  # the four ways of running EM, not a model
    }


#: Arguments beyond ``--out`` and ``--scheduler``, per example.
ARGUMENTS = {"accelerated_em": ["--scale", "0.1", "--max-iter", "40"]}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_and_plots(script, tmp_path, client):
    """On the session's cluster (the examples' own LocalCluster is the default path of
    every ``dask-em`` command the other tests run)."""
    pytest.importorskip("matplotlib")
    address = client.scheduler.address
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            *("--out", str(tmp_path), "--scheduler", address),
            *ARGUMENTS.get(script.stem, []),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plot = tmp_path / f"{script.stem}.png"
    assert plot.exists() and plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
