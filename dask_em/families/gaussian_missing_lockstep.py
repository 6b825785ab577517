"""The missing-value E-step of full covariances for rare NaN patterns, components in lockstep.

:mod:`dask_em.families.gaussian_missing_compiled` sorts a block's rows with NaN by
pattern; a pattern with many rows takes loops over its run of rows
(:mod:`dask_em.families.gaussian_missing_runs`).  A pattern with fewer than
:data:`~dask_em.families.gaussian_missing_compiled.RUN_ROWS` rows in the block (at 10%
missing at random with D=16, one row with NaN in twelve, mostly q >= 4 missing) has no
run to loop over, so its work goes row by row, and here every step of a row loops over
the K components innermost: its ``P_mm`` factored for all K at once
(:func:`~dask_em.families.gaussian_missing_runs.lockstep_factors`; the closed forms of
:mod:`~dask_em.families.small_spd` for q <= 5, which write component-first, then
transposed, took as long: 1.24 against 1.22 us a row), its quadratic forms,
Bayes' rule and moment terms as loops of length K the compiler vectorizes, on arrays
laid out with the component last: ``P_k`` as (D, D, K), the product ``P_k v_k`` of a row as
(D*K,) at ``e*K + k``, the inverses ``P_mm^-1`` as (q, q, K), and the moment terms
summed into (D, K) and (D, D, K) arrays that are transposed once a block.  At K=8, D=16
a row takes 1.09 us against 1.31 us with the features innermost (K separate chains of
loops of length q or D; four alternating timings of the 4,263 rare rows of a block).
Loops of K steps are still short: each costs its set-up, and the moment terms
read and write q x D x K doubles of the accumulators per row (4 KiB at q = 4), so
neither layout comes near the arithmetic's peak.  The mathematics is that of the runs
(module docstring of :mod:`~dask_em.families.gaussian_missing_compiled`).
"""

from __future__ import annotations

import numpy as np

from dask_em.families.gaussian_missing_rows import row_responsibilities
from dask_em.families.gaussian_missing_runs import (
    LOG_2PI,
    gather_rows,
    inverses_from_factors,
    lockstep_factors,
    missing_index,
)
from dask_em.families.gaussian_slice_loops import pair_moments
from dask_em.families.jit import jit, jit_reassociated


@jit
def lockstep_inverses(precisions_t, index, q, a, inverse_t, log_dets, scratch):
    """``inverse_t[:q, :q, k] = P_mm^-1`` and ``log_dets[k] = log |P_mm|`` of component k
    for the pattern ``index[:q]``: ``P_mm = precisions_t[index[:q]][:, index[:q], k]``
    (precisions_t (D, D, K)), gathered into a (>= q, >= q, K) and factored there;
    inverse_t (>= q, >= q, K), by
    :func:`~dask_em.families.gaussian_missing_runs.lockstep_factors` and
    :func:`~dask_em.families.gaussian_missing_runs.inverses_from_factors`; scratch:
    theirs."""
    n_components = precisions_t.shape[2]
    for t in range(q):
        for t2 in range(t + 1):
            for k in range(n_components):
                a[t, t2, k] = precisions_t[index[t], index[t2], k]
    lockstep_factors(a, q, log_dets, scratch)
    inverses_from_factors(a, q, inverse_t, scratch)


@jit_reassociated
def lockstep_solve(inverse_t, q, b, c):
    """``c[t, k] = sum_t2 inverse_t[t, t2, k] b[t2, k]`` for t < q and every lane k: each
    lane's ``P_mm^-1 b`` (inverse_t (>= q, >= q, L), b and c (>= q, L)), a loop over the
    lanes (components, or rows in :mod:`~dask_em.families.gaussian_missing_tied_groups`)
    innermost."""
    n_lanes = inverse_t.shape[2]
    for t in range(q):
        for k in range(n_lanes):
            c[t, k] = 0.0
        for t2 in range(q):
            for k in range(n_lanes):
                c[t, k] += inverse_t[t, t2, k] * b[t2, k]


@jit_reassociated
def lockstep_log_densities(y, x, means_t, const, inverse_t, log_dets, index, q, lp, b, c):
    """lp (K,) ``log pi_k + log N(x_o | k)`` of one row with pattern ``index[:q]``, and
    ``c[t, k] = (P_mm^-1 b)_t`` (c, b (>= q, K)).  y (>= D*K,) the row's ``P_k v_k`` at
    ``e*K + k`` (``b = (P_k v_k)_m`` read from it); x (>= D,) the row about the centre,
    missing entries 0; means_t (D, K) ``mc_k`` by feature; const (K,) the complete rows'
    constants; inverse_t, log_dets as :func:`lockstep_inverses`.

        maha_o = v.y - b.c,  lp = const + q/2 log 2 pi - 1/2 log |P_mm| - 1/2 maha_o
    """
    n_features, n_components = means_t.shape
    for k in range(n_components):
        lp[k] = 0.0
    for e in range(n_features):
        value = x[e]
        base = e * n_components
        for k in range(n_components):
            lp[k] += (value - means_t[e, k]) * y[base + k]
    for t in range(q):
        base = index[t] * n_components
        for k in range(n_components):
            b[t, k] = y[base + k]
    lockstep_solve(inverse_t, q, b, c)
    for t in range(q):
        for k in range(n_components):
            lp[k] -= b[t, k] * c[t, k]
    for k in range(n_components):
        lp[k] = const[k] + 0.5 * q * LOG_2PI - 0.5 * log_dets[k] - 0.5 * lp[k]


@jit_reassociated
def lockstep_moments(r, x, c, inverse_t, index, q, sums_t, cross_t, block_t, rc):
    """What one row adds beyond the moments of its ``xt`` (with ``e = -c`` its completed
    missing entries about the centre): ``sums_t[j] += r e_j``, ``cross_t[j, :] += r e_j
    x``, ``block_t[j, j2] += r (e_j e_j2 + (P_mm^-1)_{j j2})`` (upper triangle: index
    ascends) for the missing j, j2 of ``index[:q]``.  r (K,) its weighted
    responsibilities, x (>= D,), c (>= q, K) from :func:`lockstep_log_densities`;
    sums_t (D, K), cross_t and block_t (D, D, K); rc (>= q, K) scratch."""
    n_components = r.shape[0]
    n_features = cross_t.shape[1]
    for t in range(q):
        for k in range(n_components):
            # a component with no weight adds nothing, even where its c is not finite
            rc[t, k] = 0.0 if r[k] == 0.0 else -r[k] * c[t, k]
    for t in range(q):
        j = index[t]
        for k in range(n_components):
            sums_t[j, k] += rc[t, k]
        for d in range(n_features):
            value = x[d]
            for k in range(n_components):
                cross_t[j, d, k] += rc[t, k] * value
        for t2 in range(t, q):
            j2 = index[t2]
            for k in range(n_components):
                term = r[k] * inverse_t[t, t2, k] - rc[t, k] * c[t2, k]
                block_t[j, j2, k] += 0.0 if r[k] == 0.0 else term


@jit
def _rows_slice(X, rows, keys, center, matrix, means_t, precisions_t, const, w, sums, work):
    """The rows ``rows`` (one slice) gathered, their products and each row's E-step
    in lockstep; returns (weight, loglik), leaving the rows' ``w r`` in the first m
    columns of ``held`` (``work[0][5]``, (K, slice_rows)) for the pair sums of ``xct``
    (``work[0][0]``).  work: the buffers :func:`lockstep_rows` makes."""
    xct, xc, product, missing, ws, held, index = work[0]
    a, inverse_t, log_dets, chol = work[1]
    lp, b, c, r, high_bits, low_bits, rc = work[2]
    nk, sums_t, cross_t, block_t = sums
    n_features = X.shape[1]
    n_components = const.shape[0]
    m = len(rows)
    gather_rows(X, rows, center, w, xct, xc, missing, ws)
    np.dot(xc[:m], matrix, product[:m])
    weight = 0.0
    loglik = 0.0
    for i in range(m):
        q = missing_index(missing, i, index)
        if q == n_features:  # nothing observed: no weight
            for k in range(n_components):
                held[k, i] = 0.0
            continue
        if i == 0 or keys[i] != keys[i - 1]:  # sorted by pattern: factor each once a run
            lockstep_inverses(precisions_t, index, q, a, inverse_t, log_dets, chol)
        row = xc[i]
        lockstep_log_densities(
            product[i], row, means_t, const, inverse_t, log_dets, index, q, lp, b, c
        )
        loglik += row_responsibilities(lp, ws[i], nk, r, high_bits, low_bits)
        weight += ws[i]
        lockstep_moments(r, row, c, inverse_t, index, q, sums_t, cross_t, block_t, rc)
        for k in range(n_components):
            held[k, i] = r[k]
    return weight, loglik


@jit
def lockstep_rows(
    X, rows, keys, center, matrix, means_t, precisions_t, const, w, sums, first, second,
    moments, inverting, slice_rows,
):  # fmt: skip
    """The rows ``rows`` of X (n, D) (with NaN, in pattern order, keys (r,) their
    patterns' bit masks) one at a time, in row-major slices of ``slice_rows``; returns
    (weight, loglik).

    matrix (D + 1, D*K): column ``e*K + k`` is column e of ``P_k`` over ``-(P_k mc_k)_e``,
    so that ``[xc_i, 1] @ matrix`` is row i's ``P_k v_k`` component-innermost; means_t (D,
    K) ``mc_k``; precisions_t (D, D, K) ``P_k``; const (K,) as
    :func:`~dask_em.families.gaussian_missing_compiled.missing_block_moments`; w (n,) or
    empty for unit weights; sums (nk (K,), sums_t (D, K), cross_t (D, D, K), block_t (D,
    D, K)) added to (:func:`lockstep_moments`; block_t's upper triangle); moments (K, P)
    gets the pair sums of ``[xt, 1]`` (xt: missing entries 0) weighted by ``w r``, over
    the pairs first, second (P,); inverting:
    :func:`~dask_em.families.gaussian_missing_runs.inverse_scratch` (the factors' a and
    scratch).  A row with nothing observed gets no weight.
    """
    n_features = X.shape[1]
    n_components = const.shape[0]
    m = max(1, min(slice_rows, len(rows)))
    slice_buffers = (
        np.ones((n_features + 1, m)),  # xct: feature-major, for the pair sums
        np.ones((m, n_features + 1)),  # xc: row-major with a column of ones, for the product
        np.empty((m, matrix.shape[1])),  # product
        np.empty((m, n_features), dtype=np.bool_),  # missing
        np.empty(m),  # ws
        np.empty((n_components, m)),  # held: w r
        np.empty(n_features, dtype=np.int64),  # index
    )
    a, chol = inverting
    factoring = (a, np.empty((n_features, n_features, n_components)), np.empty(n_components), chol)
    row_scratch = (
        np.empty(n_components),  # lp
        np.empty((n_features, n_components)),  # b
        np.empty((n_features, n_components)),  # c
        np.empty(n_components),  # r
        np.empty(n_components, dtype=np.int64),  # exp_chunk's scratch
        np.empty(n_components, dtype=np.int64),
        np.empty((n_features, n_components)),  # rc
    )
    work = (slice_buffers, factoring, row_scratch)
    part = np.empty(moments.shape)
    weight = 0.0
    loglik = 0.0
    for start in range(0, len(rows), m):
        size = min(m, len(rows) - start)
        part_weight, part_loglik = _rows_slice(
            X, rows[start : start + size], keys[start : start + size], center, matrix, means_t,
            precisions_t, const, w, sums, work,
        )  # fmt: skip
        weight += part_weight
        loglik += part_loglik
        pair_moments(slice_buffers[5], slice_buffers[0], size, first, second, part, 0.0)
        moments += part
    return weight, loglik


def lockstep_layout(precisions: np.ndarray, means_c: np.ndarray) -> tuple:
    """The component-last arrays :func:`lockstep_rows` takes, from precisions (K, D, D)
    and means_c (K, D): (matrix (D + 1, D*K), means_t (D, K), precisions_t (D, D, K))."""
    n_components, n_features = means_c.shape
    precisions_t = np.ascontiguousarray(precisions.transpose(1, 2, 0))
    matrix = np.empty((n_features + 1, n_features * n_components))
    # P_k symmetric: column e*K + k is row e of P_k
    matrix[:n_features] = precisions_t.reshape(n_features, n_features * n_components)
    matrix[n_features] = -np.einsum("kde,ke->dk", precisions, means_c).reshape(-1)
    return matrix, np.ascontiguousarray(means_c.T), precisions_t
