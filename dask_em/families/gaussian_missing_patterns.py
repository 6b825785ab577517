"""A block's rows with NaN grouped by their NaN pattern, in compiled loops.

The missing-value E-steps (:mod:`dask_em.families.gaussian_missing_compiled`,
:mod:`dask_em.families.gaussian_missing_tied`) visit the rows with NaN pattern by
pattern, so that each pattern's ``P_mm`` is factored once per run of rows.  A pattern
is named by its bit mask (``sum of 2^d`` over the NaN features d; D <= 63), and the
rows are put in the order of their masks by a least-significant-digit radix sort,
16 bits a pass (one pass for D <= 16): a counting sort, stable, in linear time.  With
8-bit digits the rows whose low features are all observed (43% at 10% missing) fall
into one bucket one after the other, and each count waits on the one before; 16-bit
digits spread them.  For a 62,500-row block with 10% of its values missing at random
(D=16, 51,000 rows with NaN) the order took 1.0-1.2 ms in NumPy (``argsort(kind=
"stable")`` of 16-bit digits, then fancy indexing), 1.2 ms here with 8-bit digits and
0.53 ms with 16-bit ones (0.30 ms of it the sort).
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.jit import jit

#: Bits of the mask a radix pass sorts by: 65,536 buckets.
DIGIT_BITS = 16


@jit
def _pattern_keys(X, rows, keys):
    """keys[i] = sum over the NaN features d of row ``rows[i]`` of X (n, D) of 2^d (D <= 63)."""
    n_features = X.shape[1]
    for i in range(len(rows)):
        key = 0
        for d in range(n_features):
            if math.isnan(X[rows[i], d]):
                key |= 1 << d
        keys[i] = key


@jit
def _radix_sort(rows, keys, n_bits):
    """(rows, keys) (r,) both int64, reordered by key, stably, by counting sorts of
    :data:`DIGIT_BITS` bits a pass over the lowest ``n_bits`` bits of the keys; returns
    new arrays."""
    n = len(rows)
    rows = rows.copy()
    keys = keys.copy()
    if n == 0:
        return rows, keys
    buckets = 1 << DIGIT_BITS
    mask = buckets - 1
    rows_to = np.empty(n, dtype=np.int64)
    keys_to = np.empty(n, dtype=np.int64)
    starts = np.empty(buckets, dtype=np.int64)
    for shift in range(0, n_bits, DIGIT_BITS):
        starts[:] = 0
        for i in range(n):
            starts[(keys[i] >> shift) & mask] += 1
        if starts[(keys[0] >> shift) & mask] == n:
            continue  # one bucket: this digit leaves the order as it is
        total = 0
        for b in range(buckets):  # counts into each bucket's first place
            count = starts[b]
            starts[b] = total
            total += count
        if n_bits <= DIGIT_BITS:  # one pass: the sorted keys are the buckets in turn
            for i in range(n):
                b = keys[i]
                rows_to[starts[b]] = rows[i]
                starts[b] += 1
            begin = 0  # starts[b] is now where bucket b ends
            for b in range(buckets):
                for i in range(begin, starts[b]):
                    keys_to[i] = b
                begin = starts[b]
        else:
            for i in range(n):
                b = (keys[i] >> shift) & mask
                rows_to[starts[b]] = rows[i]
                keys_to[starts[b]] = keys[i]
                starts[b] += 1
        rows, rows_to = rows_to, rows
        keys, keys_to = keys_to, keys
    return rows, keys


def pattern_order(
    X: np.ndarray, rows: np.ndarray, keys: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (indices into X (n, D)) reordered so that rows with the same NaN pattern
    stand side by side, in their own order within a pattern, and their patterns' bit
    masks, int64 (D <= 63; above, the rows as given and no masks, an empty array).
    keys (len(rows),): those masks where the caller has them already (the complete-row
    kernels find them in their test for NaN), else computed here, a read of the rows."""
    rows = np.asarray(rows, dtype=np.int64)
    n_features = X.shape[1]
    if n_features > 63:
        return rows, np.empty(0, dtype=np.int64)
    if keys is None:
        keys = np.empty(len(rows), dtype=np.int64)
        _pattern_keys(X, rows, keys)
    return _radix_sort(rows, np.asarray(keys, dtype=np.int64), n_features)
