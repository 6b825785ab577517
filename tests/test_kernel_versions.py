"""The compiled kernels are compiled once per dtype and memory layout of the data, not
once per accident of how their other arguments were made (``dask_em.families.jit``).

numba compiles a version of a kernel for each distinct tuple of argument types, and
again inside every kernel that calls it; a first run waits for all of them.  A
read-only parameter array (``np.broadcast_to``'s view) and a literal 0 passed as a loop
counter are each another type, and each once cost a whole second version.
"""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.families import gaussian_compiled
from dask_em.families.gaussian import COVARIANCE_TYPES, GaussianFamily
from tests.helpers import random_gaussian_params

pytestmark = pytest.mark.skipif(
    not gaussian_compiled.COMPILED, reason="the compiled kernels are off"
)


def kernels():
    """The compiled entry points of a Gaussian block and the kernels they call with a
    loop counter (name -> numba dispatcher)."""
    from dask_em.families import (
        gaussian_missing_compiled,
        gaussian_missing_diag,
        gaussian_missing_lockstep,
        gaussian_missing_rows,
        gaussian_missing_runs,
        gaussian_missing_tied,
        gaussian_missing_tied_groups,
        gaussian_slice_loops,
    )

    modules = (
        gaussian_compiled,
        gaussian_missing_compiled,
        gaussian_missing_diag,
        gaussian_missing_lockstep,
        gaussian_missing_rows,
        gaussian_missing_runs,
        gaussian_missing_tied,
        gaussian_missing_tied_groups,
        gaussian_slice_loops,
    )
    found = {}
    for module in modules:
        for name, value in vars(module).items():
            if hasattr(value, "signatures") and hasattr(value, "py_func"):
                found[f"{module.__name__}.{name}"] = value
    return found


def duplicate_versions(kernel) -> list:
    """Versions of ``kernel`` that another version covers but for literal arguments or
    read-only parameter matrices (arrays of 2 or more dimensions after the first
    argument).  The data may come read-only (an unpickled or memory-mapped block, and
    its weights, 1-D) and is then a version of its own."""
    from numba.core import types

    def writable(t):
        if isinstance(t, types.Array) and t.ndim >= 2:
            return t.copy(readonly=False)
        return t

    def plain(signature):
        first, *rest = (types.unliteral(t) for t in signature)
        return (first, *(writable(t) for t in rest))

    seen: dict = {}
    for signature in kernel.signatures:
        seen.setdefault(plain(signature), []).append(signature)
    return [versions for versions in seen.values() if len(versions) > 1]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_no_kernel_of_a_gaussian_block_is_compiled_twice_for_one_data_type(dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(700, 5)).astype(dtype)
    X[rng.random(X.shape) < 0.1] = np.nan
    for covariance_type in COVARIANCE_TYPES:
        family = GaussianFamily(covariance_type, dtype=dtype)
        params = random_gaussian_params(family, 3, 5, rng)
        for block in (X, np.nan_to_num(X)):  # the missing-value kernels, and not
            family.block_stats(params, block, None)
    compiled = kernels()
    assert compiled["dask_em.families.gaussian_compiled._diag_block"].signatures
    duplicates = {name: d for name, kernel in compiled.items() if (d := duplicate_versions(kernel))}
    assert duplicates == {}
