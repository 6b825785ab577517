"""Compiled, fused exact E-step + completed-data moments of rows with NaN (full covariance).

The same mathematics as the NumPy reference :mod:`dask_em.families.gaussian_missing`
(Ghahramani & Jordan, 1994; Schur complements of the precision ``P_k = L_k L_k^T``),
arranged so that the work shared by all rows runs as for complete rows (the factor product,
the moment sums of :func:`~dask_em.families.gaussian_slice_loops.pair_moments`) on the
rows with their missing entries set to the centre, and only what a row's pattern adds runs in
compiled loops over the rows of one pattern, with no (n, K, D) temporary:

* ``xt`` = x - center with missing entries 0; the complete rows' product
  (:mod:`~dask_em.families.gaussian_triangular`: products in groups of output
  features that read only what the triangular factors reach) gives ``u_k = L_k^T v_k =
  L_k^T xt - L_k^T mc_k`` for ``v_k = xt - mc_k`` (mc_k = mu_k - center), whose missing
  entries are ``-mc_km`` instead of the reference's 0.  That changes nothing below: the
  Schur complement form (gaussian_missing, eq. 1) is the minimum of ``v^T P v`` over
  the missing entries, whatever they hold, and its minimizer moves with them (``v_m -
  P_mm^-1 (P v)_m`` for any ``v_m``).
* ``v^T P v = |u_k|^2`` and ``b = (P v)_m = P_k[m] xt - (P_k mc_k)_m``, D products a
  row and component for each missing feature only, per run of one pattern
  (:func:`~dask_em.families.gaussian_missing_runs.missing_products`).  Before, one
  dense product with ``[P_k, -P_k mc_k]`` gave all of ``P_k v_k`` (D^2 + D products a
  row and component, against 160 + D q for D=16); ``P_mm^-1`` and ``log |P_mm|``
  of the q x q ``P_mm`` once per pattern (in
  closed form for q <= 5, else by Cholesky; for the rows of rare patterns by a Cholesky
  of the K blocks side by side, :mod:`~dask_em.families.gaussian_missing_lockstep`)
  give ``c = P_mm^-1 b``; then
  (gaussian_missing, eqs. 1-3)

      maha_o = v.y - b.c,    log pi_k + log N(x_o | k) = const_k + 1/2 q log 2 pi
               - 1/2 log |P_mm| - 1/2 maha_o,
      E[x_m | x_o, k] - center_m = mc_km + (v_m - c) = -c,   Cov[x_m | x_o, k] = P_mm^-1.

* The completed row about the centre is ``xt + e_k`` with ``e_k = -c`` on the missing
  entries only, so its moments are those of ``xt`` (``sum r xt [xt, 1]^T``, by
  :func:`~dask_em.families.gaussian_slice_loops.pair_moments` as for complete rows)
  plus, per row, ``r e`` on the missing entries, the cross terms ``r xt e^T`` (D x q)
  and ``r (e e^T + P_mm^-1)`` (q x q).

A block's rows with NaN are those the complete-row kernel passed over (their indices
and their NaN patterns' bit masks); they are visited in the order of their pattern (a
counting sort of the masks, which also puts the rows of patterns with fewer than
:data:`RUN_ROWS` rows in the block after the others: :func:`~dask_em.families.
gaussian_missing_patterns.pattern_groups`), so that each pattern's ``P_mm`` is factored
once per run of rows, and the whole block runs in one compiled call.  Rows with nothing
observed get no weight (the reference's rule).  Moments come out about ``center`` in the
form of the moments that
:func:`dask_em.families.gaussian_compiled.full_block_moments` returns for full
covariances (per component), so the complete and incomplete rows of a block add up
before the family's statistics.  Tied covariances take
:mod:`dask_em.families.gaussian_missing_tied`: the same mathematics with the one shared
precision used once, not K times.
"""

from __future__ import annotations

import numpy as np

from dask_em.families.gaussian_fused_product import product_distances
from dask_em.families.gaussian_missing_lockstep import lockstep_layout, lockstep_rows
from dask_em.families.gaussian_missing_patterns import pattern_groups
from dask_em.families.gaussian_missing_rows import row_estep, row_scratch_of
from dask_em.families.gaussian_missing_runs import (
    floor_responsibilities,
    gather_rows,
    inverse_scratch,
    missing_index,
    missing_products,
    moment_scratch,
    pattern_cache,
    pattern_inverses,
    run_log_densities,
    run_moments,
)
from dask_em.families.gaussian_slice_loops import moments_from_pairs, pair_moments, upper_pairs
from dask_em.families.gaussian_triangular import factor_groups, packed_factors, product_rows
from dask_em.families.jit import jit
from dask_em.families.responsibilities_compiled import responsibilities, row_scratch

#: Rows per slice: the (rows, K*D) buffer of 256 x 128 doubles is 256 KiB.
SLICE_ROWS = 256

#: Runs of rows of one NaN pattern at least this long take the loops over their rows
#: (:func:`~dask_em.families.gaussian_missing_runs.run_log_densities`); shorter ones
#: go row by row.
RUN_ROWS = 8


@jit
def _run_end(keys, missing, start, m):
    """The first row after ``start`` (< m) whose NaN pattern differs from its own: by the
    patterns' bit masks keys (m,) where there are any (D <= 63; one comparison a row
    instead of D, 0.07 against 0.63 ms for a block of 50,000 rows with NaN), else by
    comparing the rows of missing (m, D)."""
    end = start + 1
    if keys.shape[0] > 0:
        while end < m and keys[end] == keys[start]:
            end += 1
        return end
    n_features = missing.shape[1]
    while end < m:
        for d in range(n_features):
            if missing[end, d] != missing[start, d]:
                return end
        end += 1
    return m


@jit
def _missing_slice(
    xct, xc, keys, missing, pv, triangular, precisions, const, w, out, cache, buffers
):
    """One slice of m rows with NaN, sorted by pattern; returns (weight, loglik).

    xct (D + 1, m): x - center, feature-major, missing entries 0, last row 1, and xc
    (>= m, D) the same rows row-major; keys (m,) the patterns' bit masks, or empty
    (:func:`_run_end`); missing (m, D) bool; pv (K*D, >= m)
    scratch for ``b = (P_k v_k)_m`` at rows k*D + j; triangular: (the product's rows
    (K, D), offsets ``L_k^T mc_k`` (K, D), shifts ``P_k mc_k`` (K, D)), of which this
    reads the shifts (:func:`_missing_block` the others); precisions (K,
    D, D) ``P_k``; const (K,)
    the complete rows' ``log pi_k + log |P_k|^1/2 - D/2 log 2 pi``; w (m,), overwritten
    with 0 for a row with nothing observed (it gets no weight) and for the rows of short
    runs (their Bayes' rule is done row by row).
    ``out`` holds nk (K,), sums (K, D), cross (K, D, D) and block (K, D, D) (its upper
    triangle only: symmetric, mirrored at the end), added to.
    ``cache`` as :func:`~dask_em.families.gaussian_missing_runs.pattern_inverses`, kept
    across slices; ``buffers``: lp (K, m) (on entry every row's ``v.Pv``), coef (K, D, m), work
    (:func:`~dask_em.families.gaussian_missing_runs.moment_scratch`),
    :func:`~dask_em.families.gaussian_missing_runs.inverse_scratch`, u (D,), y (K*D,)
    and quads (K,) (a short run's row: its values, its ``b`` and its ``v_k^T P_k v_k``),
    index (D,), held (K, m)
    (the short runs' ``w r``), run_ends (m,) int,
    :func:`~dask_em.families.responsibilities_compiled.row_scratch` and
    :func:`~dask_em.families.gaussian_missing_rows.row_scratch_of`.

    lp (``buffers[0]``) comes in holding every row's ``v.Pv = |u_k|^2`` (K, >= m)
    (:func:`~dask_em.families.gaussian_fused_product.product_distances`); per run of
    one pattern the rest of the
    log-densities (P_mm factored once); then Bayes' rule over the whole slice; then per
    run the pattern's terms of the moments (P_mm factored again).  A run shorter than
    :data:`RUN_ROWS` rows (a piece of a frequent pattern's rows cut by a slice end; with
    D > 63, whose rows have no bit masks, also the rare patterns) goes through all three
    row by row at once (:func:`~dask_em.families.gaussian_missing_rows.row_estep`), so
    that its pattern is factored once.  Leaves lp holding every
    row's ``w_i r_ik``, for the moment product of ``xct``.
    """
    lp, coef, work, inverting, u, y, quads, index, held, run_ends, scratch, one_row = buffers
    _, _, shifts = triangular
    m, n_features = missing.shape
    n_components = const.shape[0]
    weight = 0.0
    loglik = 0.0
    n_runs = 0
    start = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
    while start < m:
        end = _run_end(keys, missing, start, m)
        run_ends[n_runs] = end
        n_runs += 1
        q = missing_index(missing, start, index)
        if q < n_features:
            pattern_inverses(precisions, index, q, cache, inverting)
            missing_products(xct, precisions, shifts, index, q, start, end, pv)
        if q < n_features and end - start >= RUN_ROWS:
            run_log_densities(pv, cache, const, index, q, start, end, lp, coef)
        elif q < n_features:  # a short run: each row's whole E-step now, P_mm^-1 at hand
            for i in range(start, end):  # what it reads of xct, lp and pv copied out once
                for d in range(n_features):
                    u[d] = xct[d, i]
                for k in range(n_components):
                    quads[k] = lp[k, i]
                    for t in range(q):
                        y[k * n_features + index[t]] = pv[k * n_features + index[t], i]
                row_weight, row_loglik = row_estep(
                    y, u, quads, w[i], cache, const, index, q, out, one_row
                )
                weight += row_weight
                loglik += row_loglik
                for k in range(n_components):
                    held[k, i] = one_row[1][k]
        if q == n_features or end - start < RUN_ROWS:  # out of the Bayes' rule below
            for i in range(start, end):
                w[i] = 0.0
                for k in range(n_components):
                    lp[k, i] = 0.0
                    if q == n_features:
                        held[k, i] = 0.0  # nothing observed: no weight
        start = end
    part_weight, part_loglik = responsibilities(lp, m, w, out[0], scratch)
    weight += part_weight
    loglik += part_loglik
    floor_responsibilities(lp, m, out[0])  # as the reference: not in nk either
    start = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
    for run in range(n_runs):  # the runs found above
        end = run_ends[run]
        q = missing_index(missing, start, index)
        if q < n_features and end - start >= RUN_ROWS:
            pattern_inverses(precisions, index, q, cache, inverting)
            run_moments(lp, xc, coef, cache, index, q, start, end, out, work)
        else:  # done above: their responsibilities go into the moment product
            for i in range(start, end):
                for k in range(n_components):
                    lp[k, i] = held[k, i]
        start = end
    return weight, loglik


@jit
def slice_buffers(m, n_features, width):
    """The buffers of slices of m rows: xct (D + 1, m) (its last row ones), xc (m, D),
    product (width, m), missing (m, D) bool and ws (m,); :func:`gathered_slice` fills
    all but product."""
    return (
        np.ones((n_features + 1, m)),
        np.empty((m, n_features)),
        np.empty((width, m)),
        np.empty((m, n_features), dtype=np.bool_),
        np.empty(m),
    )


@jit
def gathered_slice(X, rows, center, w, xct, xc, product, missing, ws):
    """The rows ``rows`` of X gathered (:func:`gather_rows`) into xct (D + 1, m), xc,
    missing and ws; returns (xct, product (P, m)), new arrays of the slice's width when
    the slice is shorter than they are (the last one), so that every loop over its rows
    stays contiguous and the caller's factor product can write the whole of product."""
    m = len(rows)
    if xct.shape[1] != m:
        xct = np.ones((X.shape[1] + 1, m))
        product = np.empty((product.shape[0], m))
    gather_rows(X, rows, center, w, xct, xc, missing, ws)
    return xct, product


@jit
def _missing_block(
    X,
    rows,
    keys,
    center,
    product,
    triangular,
    precisions,
    const,
    w,
    out,
    first,
    second,
    moments,
    inverting,
):
    """The rows ``rows`` of X (n, D) (all with NaN, in pattern order; keys their patterns'
    bit masks, or empty:
    :func:`~dask_em.families.gaussian_missing_patterns.pattern_groups`) in slices of
    :data:`SLICE_ROWS`, in one compiled call; returns (weight, loglik).

    product: (packed, starts, groups, product rows) of the
    :mod:`~dask_em.families.gaussian_triangular` factors ``L_k``, whose products with
    each slice give every row's ``v_k^T P_k v_k = |L_k^T xt - L_k^T mc_k|^2``
    (:func:`~dask_em.families.gaussian_fused_product.product_distances`; ``b`` per run:
    :func:`~dask_em.families.gaussian_missing_runs.missing_products`); triangular,
    precisions, const, out as :func:`_missing_slice`;
    w (n,), or empty for unit
    weights; first, second (P,): the pairs of
    :func:`~dask_em.families.gaussian_slice_loops.upper_pairs`; moments (K, P) gets
    ``sum_i r_ik xt[first[p], i] xt[second[p], i]`` (xt: the rows with NaN as 0, then
    a row of ones: ``sum_i r_ik xt_i [xt_i, 1]^T`` by pairs);
    inverting: :func:`~dask_em.families.gaussian_missing_runs.inverse_scratch`.
    """
    n_features = X.shape[1]
    n_components = const.shape[0]
    offsets = triangular[1]
    width = n_components * n_features
    m = min(SLICE_ROWS, max(len(rows), 1))
    cache = pattern_cache(n_features, n_components)
    lp = np.empty((n_components, m))
    buffers = (
        lp,
        np.empty((n_components, n_features, m)),
        moment_scratch(m, n_features, n_components),
        inverting,
        np.empty(n_features),
        np.empty(width),
        np.empty(n_components),
        np.empty(n_features, dtype=np.int64),
        np.empty((n_components, m)),
        np.empty(m, dtype=np.int64),
        row_scratch(m, lp),
        row_scratch_of(n_features, n_components),
    )
    xct, xc, ut, missing, ws = slice_buffers(m, n_features, width)
    pv = np.empty((width, m))
    part = np.empty(moments.shape)
    weight = 0.0
    loglik = 0.0
    width_first = m
    for start in range(0, len(rows), width_first):
        m = min(width_first, len(rows) - start)
        xct, ut = gathered_slice(X, rows[start : start + m], center, w, xct, xc, ut, missing, ws)
        # every row's v.Pv = |L_k^T xt - L_k^T mc_k|^2 into lp (buffers[0])
        product_distances(product, xct, offsets, m, buffers[0], ut)
        part_weight, part_loglik = _missing_slice(
            xct, xc, keys[start : start + m], missing[:m], pv, triangular, precisions,
            const, ws, out, cache, buffers,
        )  # fmt: skip
        weight += part_weight
        loglik += part_loglik
        # buffers[0]: w r, (K, the first slice's width), its first m columns
        pair_moments(buffers[0], xct, m, first, second, part, 0.0)
        moments += part
    return weight, loglik


def missing_block_moments(X, rows, center, prec_chol, means_c, const, w, keys=None):
    """Moments about ``center`` of the rows ``rows`` of a block, which hold NaN (module
    docstring).

    X (n, D); rows (r,) int: the indices of its rows with NaN; prec_chol (K, D, D) dense
    factors ``L_k`` (``P_k = L_k L_k^T``); const
    (K,) the complete rows' ``log pi_k + log |P_k|^1/2 - D/2 log 2 pi`` (as
    :func:`~dask_em.families.gaussian_compiled.block_stats`); w (n,) the block's weights,
    or empty for unit weights; keys (r,): the rows' NaN patterns' bit masks
    (:func:`~dask_em.families.gaussian_missing_patterns.pattern_order`), or None to find
    them here.  Returns ``(weight, loglik, nk (K,), sums (K, D), second (K, D, D))`` (r
    weighted).
    """
    n_features = X.shape[1]
    n_components = len(means_c)
    factors = np.ascontiguousarray(prec_chol, dtype=np.float64)
    precisions = factors @ factors.transpose(0, 2, 1)
    means_c = np.ascontiguousarray(means_c, dtype=np.float64)
    groups = factor_groups(factors)
    packed, starts = packed_factors(factors, groups, np.float64)
    triangular = (
        product_rows(n_components, n_components, groups),
        np.einsum("kd,kde->ke", means_c, factors),  # L_k^T mc_k
        np.einsum("kde,ke->kd", precisions, means_c),  # P_k mc_k
    )
    out = (
        np.zeros(n_components),
        np.zeros((n_components, n_features)),
        np.zeros((n_components, n_features, n_features)),
        np.zeros((n_components, n_features, n_features)),
    )
    first, second = upper_pairs(n_features)
    moments = np.zeros((n_components, len(first)))
    # rows of one pattern side by side: each pattern's P_mm is factored once per run
    # the rows of patterns with fewer than RUN_ROWS rows in the block after the others
    ordered, keys, n_frequent = pattern_groups(X, rows, keys, RUN_ROWS)
    frequent, rare = ordered[:n_frequent], ordered[n_frequent:]
    frequent_keys, rare_keys = keys[:n_frequent], keys[n_frequent:]
    inverting = inverse_scratch(n_features, n_components)
    center = np.asarray(center, dtype=np.float64)
    weight, loglik = _missing_block(
        X, frequent, frequent_keys, center, (packed, starts, groups, triangular[0]), triangular,
        precisions, const, w, out, first, second, moments, inverting,
    )  # fmt: skip
    if len(rare):  # row by row, the components in lockstep (gaussian_missing_lockstep)
        matrix, means_t, precisions_by_feature = lockstep_layout(precisions, means_c)
        sums_t = (
            out[0],
            np.zeros((n_features, n_components)),
            np.zeros((n_features, n_features, n_components)),
            np.zeros((n_features, n_features, n_components)),
        )
        rare_weight, rare_loglik = lockstep_rows(
            X, rare, rare_keys, center, matrix, means_t, precisions_by_feature,
            const, w, sums_t, first, second, moments, inverting, SLICE_ROWS,
        )  # fmt: skip
        weight += rare_weight
        loglik += rare_loglik
        for total, by_feature in zip(out[1:], sums_t[1:], strict=True):
            total += np.moveaxis(by_feature, -1, 0)  # component first again
    nk, extra_sums, cross, block = out
    sums, second_moments = moments_from_pairs(moments, first, second)
    sums += extra_sums
    # block: the upper triangle of each symmetric q x q term (run_, row_, lockstep_moments)
    block += np.triu(block, 1).transpose(0, 2, 1)
    second = second_moments + cross + cross.transpose(0, 2, 1) + block
    return weight, loglik, nk, sums, second
