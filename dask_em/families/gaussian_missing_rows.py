"""The missing-value E-step of full covariances one row at a time, for rare NaN patterns.

:mod:`dask_em.families.gaussian_missing_compiled` sorts a block's rows with NaN by
pattern; a pattern with many rows takes loops over its run of rows
(:mod:`dask_em.families.gaussian_missing_runs`).  A pattern with fewer than
:data:`~dask_em.families.gaussian_missing_compiled.RUN_ROWS` rows in the block is
cheaper row by row, with loops over the features (:func:`row_estep`: the
log-densities, Bayes' rule and the pattern's moment terms while ``P_mm^-1`` is at hand).
At 10% missing at random with D=16 such rows are one in twelve of the rows with NaN
(mostly q >= 4), and they used to sit among the frequent patterns in the same
feature-major slices: a row's ``P_k v_k`` was then a column of the (K*D, rows) product,
K*D values each in its own cache line (1.2 us a row for its terms, K=8).  The rows of
rare patterns now have slices of their own (:func:`rare_rows_block`), row-major: the
product ``[xc, 1] [P_1 .. P_K; -(P mc)^T]`` is (rows, K*D), each row's values
contiguous.  The mathematics is that of the runs (module docstring of
:mod:`~dask_em.families.gaussian_missing_compiled`).
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.gaussian_missing_runs import (
    LOG_2PI,
    RESPONSIBILITY_FLOOR,
    gather_rows,
    missing_index,
    pattern_cache,
    pattern_inverses,
)
from dask_em.families.gaussian_slice_loops import pair_moments
from dask_em.families.jit import jit, jit_reassociated


@jit_reassociated
def row_log_densities(y, x, means_c, cache, const, index, q, lp, coef, b):
    """lp (K,) ``log pi_k + log N(x_o | k)`` of one row with pattern ``index[:q]`` and
    ``coef[k, :q] = c_k = P_mm^-1 b`` (coef (K, >= q)).  y (>= K*D,) the row's ``P_k
    v_k`` at k*D + e (``b = (P_k v_k)_m`` read from it); x (>= D,) the row about the
    centre, missing entries 0; means_c (K, D); cache as
    :func:`~dask_em.families.gaussian_missing_runs.pattern_inverses`, holding the
    pattern; const (K,) the complete rows' constants; b (>= q,) scratch."""
    _, inverse, log_dets = cache
    n_components, n_features = means_c.shape
    for k in range(n_components):
        base = k * n_features
        quad = 0.0
        for e in range(n_features):
            quad += (x[e] - means_c[k, e]) * y[base + e]
        for t in range(q):
            b[t] = y[base + index[t]]
        for t in range(q):
            s = 0.0
            for t2 in range(q):
                s += inverse[k, t, t2] * b[t2]
            coef[k, t] = s
            quad -= b[t] * s
        lp[k] = const[k] + 0.5 * q * LOG_2PI - 0.5 * log_dets[k] - 0.5 * quad


@jit
def row_responsibilities(lp, w, nk, held, floor):
    """Bayes' rule for one row: ``held[k] = w r_k`` (0 below ``floor``), added to nk
    (K,); returns (w, w loglik).  lp, held (K,).  The scalar form of
    :func:`~dask_em.families.responsibilities_compiled.responsibilities`."""
    n_components = lp.shape[0]
    peak = -np.inf
    for k in range(n_components):
        peak = max(peak, lp[k])
    if not np.isfinite(peak):
        peak = 0.0
    total = 0.0
    for k in range(n_components):
        held[k] = math.exp(lp[k] - peak)
        total += held[k]
    for k in range(n_components):
        r = w * (held[k] / total)
        if r < floor:
            r = 0.0
        held[k] = r
        nk[k] += r
    return w, w * (math.log(total) + peak)


@jit_reassociated
def row_moments(r, x, coef, cache, index, q, out):
    """What one row adds beyond the moments of its ``xt`` (as
    :func:`~dask_em.families.gaussian_missing_runs.run_moments` for a run of one row):
    r (K,) its weighted responsibilities, x (>= D,) its values, coef (K, >= q) from
    :func:`row_log_densities`; out (nk, sums, cross, block)."""
    _, sums, cross, block = out
    _, inverse, _ = cache
    n_components, n_features = cross.shape[0], cross.shape[2]
    for k in range(n_components):
        weight = r[k]
        if weight == 0.0:
            continue
        for t in range(q):
            j = index[t]
            re = -weight * coef[k, t]
            sums[k, j] += re
            for d in range(n_features):
                cross[k, j, d] += re * x[d]
            for t2 in range(t, q):  # the upper triangle (index ascends): symmetric
                block[k, j, index[t2]] += weight * inverse[k, t, t2] - re * coef[k, t2]


@jit
def row_scratch_of(n_features, n_components):
    """The scratch of :func:`row_estep`: lp, held (K,), coef (K, D), b (D,)."""
    return (
        np.empty(n_components),
        np.empty(n_components),
        np.empty((n_components, n_features)),
        np.empty(n_features),
    )


@jit
def row_estep(y, x, w, means_c, cache, const, index, q, out, scratch):
    """The whole E-step of one row with pattern ``index[:q]`` (q < D; cache holding it):
    its log-densities, Bayes' rule (``w r_k`` left in ``scratch[1]``, (K,)) and its
    pattern's moment terms, added to out; returns (w, w loglik).  y (>= K*D,) and x
    (>= D,) contiguous, as :func:`row_log_densities`; scratch: :func:`row_scratch_of`."""
    lp, held, coef, b = scratch
    row_log_densities(y, x, means_c, cache, const, index, q, lp, coef, b)
    weight, loglik = row_responsibilities(lp, w, out[0], held, RESPONSIBILITY_FLOOR)
    row_moments(held, x, coef, cache, index, q, out)
    return weight, loglik


@jit
def rare_rows_block(
    X, rows, center, matrix_t, means_c, precisions, const, w, out, first, second, moments,
    inverting, slice_rows,
):  # fmt: skip
    """The rows ``rows`` of X (n, D) (with NaN, of patterns rare in the block, in pattern
    order) one at a time, in row-major slices of ``slice_rows``; returns (weight,
    loglik).

    matrix_t (D + 1, K*D): the transpose of
    :func:`~dask_em.families.gaussian_missing_compiled.missing_block_moments`'
    ``precisions_t``, so that ``[xc_i, 1] @ matrix_t`` is row i's ``P_k v_k``; means_c,
    precisions, const, w, out as
    :func:`~dask_em.families.gaussian_missing_compiled._missing_block`; moments (K, P)
    gets the pair sums of ``[xt, 1]`` (xt: missing entries 0) weighted by ``w r``, over
    the pairs first, second (P,); inverting:
    :func:`~dask_em.families.gaussian_missing_runs.inverse_scratch`.  A row with
    nothing observed gets no weight.
    """
    n_features = X.shape[1]
    n_components = const.shape[0]
    m = max(1, min(slice_rows, len(rows)))
    cache = pattern_cache(n_features, n_components)
    xct = np.ones((n_features + 1, m))  # feature-major, for the pair sums
    xc = np.ones((m, n_features + 1))  # row-major with a column of ones
    product = np.empty((m, matrix_t.shape[1]))
    missing = np.empty((m, n_features), dtype=np.bool_)
    ws = np.empty(m)
    held = np.empty((n_components, m))
    index = np.empty(n_features, dtype=np.int64)
    scratch = row_scratch_of(n_features, n_components)
    part = np.empty(moments.shape)
    weight = 0.0
    loglik = 0.0
    for start in range(0, len(rows), m):
        size = min(m, len(rows) - start)
        gather_rows(X, rows[start : start + size], center, w, xct, xc, missing, ws)
        np.dot(xc[:size], matrix_t, product[:size])
        for i in range(size):
            q = missing_index(missing, i, index)
            if q == n_features:  # nothing observed: no weight
                for k in range(n_components):
                    held[k, i] = 0.0
                continue
            pattern_inverses(precisions, index, q, cache, inverting)
            row_weight, row_loglik = row_estep(
                product[i], xc[i], ws[i], means_c, cache, const, index, q, out, scratch
            )
            weight += row_weight
            loglik += row_loglik
            for k in range(n_components):
                held[k, i] = scratch[1][k]
        pair_moments(held, xct, size, first, second, part, 0.0)
        moments += part
    return weight, loglik
