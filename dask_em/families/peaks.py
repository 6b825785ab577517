"""The shift of log-sum-exp: each column's maximum over the rows of a (K, n) block of
log-densities, 0 where it is not finite, in compiled loops without conditional stores.

A loop that stores only where a condition holds (``max(peak[i], v)``, ``if not
finite: peak[i] = 0``) is compiled for AVX2 into masked vector stores, which AMD's Zen
cores run in about ten cycles each (0.48 ns a value against 0.08 ns for this form,
float32); ``np.maximum`` and a select before an unconditional store avoid them
(``tests/test_masked_stores.py``).  A NaN log-density gives a NaN maximum, hence 0: the
column's exp and sum are NaN either way.  Bayes' rule
(:mod:`~dask_em.families.responsibilities_compiled`) and the HMM's shifted densities
(:mod:`~dask_em.families.hmm_compiled`) call them row by row, each row contiguous.
"""

from __future__ import annotations

import numpy as np

from dask_em.families.jit import jit


@jit
def raise_peak(peak, row):
    """``peak[i] = max(peak[i], row[i])`` (NaN propagates), peak and row (n,)."""
    for i in range(len(peak)):
        peak[i] = np.maximum(peak[i], row[i])


@jit
def finish_peak(peak, last):
    """:func:`raise_peak` with the last row, then a peak that is not finite set to 0."""
    for i in range(len(peak)):
        highest = np.maximum(peak[i], last[i])
        peak[i] = highest if np.isfinite(highest) else 0.0
