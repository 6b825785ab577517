"""Bayes' rule in log space over a slice of rows, compiled, for the Gaussian kernels.

The complete-row kernels (:mod:`dask_em.families.gaussian_compiled`) and the
missing-value kernels (:mod:`dask_em.families.gaussian_missing_compiled`,
:mod:`dask_em.families.gaussian_missing_diag`) all hold a slice's log-densities
component-major, (K, rows), so that each step below is a loop over contiguous rows
that the compiler vectorizes, the exp included (:mod:`dask_em.families.vector_exp`).
"""

from __future__ import annotations

import numpy as np

from dask_em.families.jit import jit, jit_reassociated
from dask_em.families.peaks import finish_peak, raise_peak
from dask_em.families.vector_exp import exp_slice
from dask_em.families.vector_log import log_chunk


@jit
def row_scratch(rows, like):
    """The scratch of :func:`responsibilities` for slices of up to ``rows`` rows,
    made once per block: (peak, total) in the dtype of ``like`` (the log-densities'
    buffer), the log of total in float64, and the vectorized exp's and log's two
    int64."""
    return (
        np.empty(rows, dtype=like.dtype),
        np.empty(rows, dtype=like.dtype),
        np.empty(rows),
        np.empty(rows, dtype=np.int64),
        np.empty(rows, dtype=np.int64),
    )


@jit_reassociated
def responsibilities(lp, m, w, nk, scratch):
    """Bayes' rule in log space, column by column; returns (weight, loglik).

    lp (K, >= m) float64 or float32 (the compute dtype), a whole C-contiguous buffer
    (every row contiguous): its first m columns hold ``log pi_k + log N(x_i | k)`` and
    are overwritten with ``w_i r_ik``; the shift, the exp and the sum over k run in its
    dtype.  w (>= m,); scratch from :func:`row_scratch` (made for lp).  Adds ``sum_i w_i
    r_ik`` (in float64) to nk (K,); the log of each row's total and the log-likelihood
    are float64.  The shift by the per-row maximum keeps exp in range (log-sum-exp); a
    row where every component has density 0 keeps peak 0.  The exp is
    :func:`~dask_em.families.vector_exp.exp_slice` (float32: a single-precision
    polynomial, twice as many values per vector, terms below float32's normal range
    flushed to 0) and the log :func:`~dask_em.families.vector_log.log_chunk` (libm's are
    scalar calls); the sums are reassociated (a few ulps).

    In place, not into an ``out`` buffer: a loop that reads one array and writes another
    is compiled behind a run-time check that they do not overlap, and where callers
    passed lp itself as ``out`` the check failed and the loop ran scalar (0.35 ms more
    over a 131,072-row float32 block in 256-row slices, K=4; 0.3 ms over a 62,464-row
    float64 one, K=8).

    The shift is :mod:`~dask_em.families.peaks`' (no masked vector stores; a NaN
    log-density gives a NaN peak, taken as 0: the row's responsibilities and
    log-likelihood are NaN either way).
    """
    n_components = lp.shape[0]
    peak, total, log_total, high_bits, low_bits = scratch
    for i in range(m):
        peak[i] = -np.inf
        total[i] = 0.0
    for k in range(n_components - 1):
        raise_peak(peak[:m], lp[k, :m])
    finish_peak(peak[:m], lp[n_components - 1, :m])
    for k in range(n_components):
        row = lp[k]
        for i in range(m):
            row[i] -= peak[i]
        exp_slice(row[:m], high_bits, low_bits)
        for i in range(m):
            total[i] += row[i]
    for i in range(m):
        log_total[i] = total[i]
    log_chunk(log_total[:m], high_bits, low_bits.view(np.float64))
    weight = 0.0
    loglik = 0.0
    for i in range(m):
        weight += w[i]
        loglik += w[i] * (log_total[i] + peak[i])
        total[i] = w[i] / total[i]
    for k in range(n_components):
        row = lp[k]
        part = 0.0
        for i in range(m):
            row[i] *= total[i]
            part += row[i]
        nk[k] += part
    return weight, loglik
