"""No masked vector store in the hot loops of Bayes' rule, exp and log.

On AVX2 machines (no AVX-512) LLVM turns a loop that stores a value only where a
condition holds (``peak[i] = max(peak[i], v)``, ``if not finite: peak[i] = 0``, an
exp that stores back the input where it is NaN) into ``vmaskmovps``/``vmaskmovpd``
stores, which AMD's Zen cores run in about ten cycles each: on this project's 2-core
EPYC host the maximum over components took 0.48 ns a value with them and 0.08 ns with
``np.maximum`` (float32), and the diag float32 E-step of a 62,500-row block went from
2.7-2.9 to 2.35-2.45 ms without them.  The kernels are compiled afresh in a subprocess
(numba gives no assembly for cached code) and their assembly searched; on a machine
whose compiler target has no such instruction (AVX-512 uses mask registers instead,
cheap there) the check has nothing to find and passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dask_em.families import gaussian_compiled

SCRIPT = r"""
import json, re
import numpy as np
from dask_em.families.hmm_compiled import shift_chunk
from dask_em.families.responsibilities_compiled import responsibilities, row_scratch
from dask_em.families.vector_exp import CHUNK, exp_chunk, exp_chunk_single
from dask_em.families.vector_log import log_chunk

rows, K = 64, 3
for dtype in (np.float32, np.float64):
    lp = np.random.default_rng(0).normal(size=(K, rows)).astype(dtype)
    responsibilities(lp, rows, np.ones(rows), np.zeros(K), row_scratch(rows, lp))
exp_chunk(np.zeros(8), np.empty(8, np.int64), np.empty(8, np.int64))
exp_chunk_single(np.zeros(8, np.float32), np.empty(8, np.int32), np.empty(8, np.int32))
log_chunk(np.ones(8), np.empty(8, np.int64), np.empty(8))
shift_chunk(np.zeros((K, rows)), 0, rows, np.zeros(rows),
            np.empty(CHUNK, np.int64), np.empty(CHUNK, np.int64))
# AT&T syntax: a masked store names the memory operand last
store = re.compile(r"^\s*vp?maskmov\w+\s+%[xy]mm\d+,\s*%[xy]mm\d+,\s*\S*\(", re.M)
found = {}
for kernel in (responsibilities, exp_chunk, exp_chunk_single, log_chunk, shift_chunk):
    for signature in kernel.signatures:
        name = f"{kernel.py_func.__name__}{tuple(str(t) for t in signature)}"
        found[name] = len(store.findall(kernel.inspect_asm(signature)))
print(json.dumps(found))
"""


@pytest.mark.skipif(not gaussian_compiled.COMPILED, reason="the compiled kernels are off")
def test_bayes_rule_exp_and_log_store_unconditionally(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert len(found) == 6, found  # responsibilities twice (float32, float64)
    assert not any(found.values()), f"masked vector stores per kernel: {found}"
