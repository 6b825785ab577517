"""The prefetch hint of the missing-value gathers compiles to a prefetch instruction and
changes no value."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from dask_em.families.jit import HAVE_NUMBA
from dask_em.families.prefetch import prefetch

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is off")


def test_prefetch_compiles_to_a_prefetch_instruction_and_changes_no_value():
    import numba

    @numba.njit
    def gather_ahead(X, rows, out):  # compiled afresh: numba keeps no assembly for cached code
        for i in range(len(rows)):
            if i + 2 < len(rows):
                prefetch(X, rows[i + 2], 0)
                prefetch(X, rows[i + 2], X.shape[1] - 1)
            for d in range(X.shape[1]):
                out[i, d] = X[rows[i], d]

    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        X = rng.normal(size=(50, 7)).astype(dtype)
        rows = rng.permutation(50)
        out = np.empty((50, 7), dtype=dtype)
        gather_ahead(X, rows, out)
        np.testing.assert_array_equal(out, X[rows])
    if platform.machine().lower() in ("x86_64", "amd64"):
        assembly = "\n".join(gather_ahead.inspect_asm().values()).lower()
        assert "prefetcht0" in assembly
