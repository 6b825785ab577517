"""The two environments the speed benchmarks run in, each in its own process: as given,
and with the BLAS/OpenMP thread variables exported (as SLURM job scripts and HPC
profiles do), so that a LocalCluster's workers inherit them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def environments() -> tuple[tuple[str, dict[str, str]], ...]:
    """(label, environment) of the two runs: this process' environment without the
    thread variables, and the same with each of them set to 2."""
    plain = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    exported = {**plain, **dict.fromkeys(THREAD_VARIABLES, "2")}
    return (("as given", plain), ("thread variables = 2", exported))


def run_child(script: str, argv: list[str], env: dict[str, str], flag: str = "--child") -> dict:
    """``script flag *argv`` run in ``env``; the last line it prints, read as JSON.  A
    child that fails raises RuntimeError with the end of what it wrote to stderr."""
    command = [sys.executable, script, flag, *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
