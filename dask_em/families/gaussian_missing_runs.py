"""The part of the missing-value E-step that depends on a row's NaN pattern, compiled.

:mod:`dask_em.families.gaussian_missing_compiled` sorts a block's rows with NaN by
pattern and holds a slice of them feature-major; the functions here work on one run
of rows that share a pattern ``index[:q]`` (the missing features): ``P_mm`` factored
once for the run (:func:`pattern_inverses`), then the log-densities and ``c =
P_mm^-1 b`` (:func:`run_log_densities`) and, once the responsibilities are known, the
pattern's terms of the completed-data moments (:func:`run_moments`), each loop over
the run's rows.  A run of a few rows takes the same mathematics row by row, where
loops over the features or the components are cheaper than setting up loops over
rows: a piece of a run cut by a slice end in
:mod:`dask_em.families.gaussian_missing_rows`, the rows of patterns rare in the block in
:mod:`dask_em.families.gaussian_missing_lockstep` (with the factor half of
:func:`cholesky_inverses`, :func:`lockstep_factors`).
"""

from __future__ import annotations

import math

import numpy as np

# responsibilities below this count as 0, as in the NumPy reference
from dask_em.families.gaussian_missing import RESPONSIBILITY_FLOOR
from dask_em.families.jit import jit, jit_reassociated
from dask_em.families.prefetch import ROWS_AHEAD, prefetch
from dask_em.families.small_spd import small_inverses

LOG_2PI = math.log(2.0 * math.pi)


@jit_reassociated
def floor_responsibilities(r, m, nk):
    """``r[k, i]`` (K, >= m) below :data:`RESPONSIBILITY_FLOOR` set to 0 and taken out of
    nk (K,) (the reference leaves them out of both), for i < m.  A select before an
    unconditional store: a conditional one is a masked vector store on AVX2, about ten
    cycles on AMD's Zen cores (:mod:`~dask_em.families.peaks`)."""
    for k in range(r.shape[0]):
        row = r[k]
        removed = 0.0
        for i in range(m):
            value = row[i]
            small = value < RESPONSIBILITY_FLOOR
            removed += value if small else 0.0
            row[i] = 0.0 if small else value
        nk[k] -= removed


@jit
def missing_index(missing, i, index):
    """q, with ``index[:q]`` the missing features of row i of ``missing`` (m, D) bool."""
    q = 0
    for d in range(missing.shape[1]):
        if missing[i, d]:
            index[q] = d
            q += 1
    return q


@jit
def gather_rows(X, rows, center, w, xct, xc, missing, ws):
    """xct[:D, i] = xc[i, :D] = X[rows[i]] - center with NaN as 0 (feature-major and
    row-major), missing[i] its NaN mask, ws[i] its weight (w (n,), or empty for unit
    weights).  The rows come out of order: each asks for the one
    :data:`~dask_em.families.prefetch.ROWS_AHEAD` ahead, a value every 64 bytes and its
    last one (every cache line it touches, however the row is aligned).  The row-major
    copy is made first and transposed after, a feature at a time: the 427,518 rows with
    NaN of a 524,288-row block (D=16) in pattern order took 15.0-16.4 ms so, against
    16.3-17.2 with a column of xct stored per row as the rows came (in block order 7.4-7.6
    against 9.1-9.5)."""
    n_features = X.shape[1]
    unweighted = w.shape[0] == 0
    step = max(1, 64 // X.itemsize)
    m = len(rows)
    for i in range(m):
        if i + ROWS_AHEAD < m:
            ahead = rows[i + ROWS_AHEAD]
            for d in range(0, n_features, step):
                prefetch(X, ahead, d)
            prefetch(X, ahead, n_features - 1)
        row = rows[i]
        ws[i] = 1.0 if unweighted else w[row]
        for d in range(n_features):
            value = X[row, d]
            gone = value != value
            centred = value - center[d]
            missing[i, d] = gone
            xc[i, d] = 0.0 if gone else centred
    for d in range(n_features):
        target = xct[d]
        for i in range(m):
            target[i] = xc[i, d]


@jit
def cholesky_inverses(a, q, inverse, log_dets, scratch):
    """``inverse[k, :q, :q] = a_k^-1`` and ``log_dets[k] = log det a_k`` for the SPD
    ``a_k = a[:q, :q, k]`` of every k (a (>= q, >= q, K)), by :func:`lockstep_factors`;
    the inverse as ``W^T W`` (q^3 / 3 steps, not the q^3 of solving for its columns).
    scratch: (reciprocal (>= q, K), s (K,), det (K,))."""
    lockstep_factors(a, q, log_dets, scratch)
    inverses_from_factors(a, q, inverse.transpose(1, 2, 0), scratch)


@jit
def inverses_from_factors(a, q, inverse_t, scratch):
    """``inverse_t[:q, :q, k] = a_k^-1 = W_k^T W_k``, ``(a^-1)_ij = sum_{t >= max(i, j)}
    W_ti W_tj``, from W as :func:`lockstep_factors` leaves it in a and ``scratch[0]``;
    inverse_t (>= q, >= q, K) component last (a transposed view of a (K, D, D) array)."""
    reciprocal, s, _ = scratch
    n_components = a.shape[2]
    for i in range(q):
        for j in range(i, q):
            for k in range(n_components):
                s[k] = reciprocal[j, k] * (reciprocal[j, k] if i == j else a[i, j, k])
            for t in range(j + 1, q):
                for k in range(n_components):
                    s[k] += a[i, t, k] * a[j, t, k]
            for k in range(n_components):
                inverse_t[i, j, k] = s[k]
                inverse_t[j, i, k] = s[k]


@jit
def lockstep_factors(a, q, log_dets, scratch):
    """``log_dets[k] = log det a_k`` for the SPD ``a_k = a[:q, :q, k]`` of every k (a
    (>= q, >= q, K)), and ``W_k = L_k^-1`` of their Cholesky factors ``a_k = L_k
    L_k^T``: L in a's lower triangle, W in its strict upper triangle, transposed
    (``a[j, i] = W_ij``, i > j), W's diagonal (the reciprocals of L's) in
    ``scratch[0][:q]``.  The K factorizations run in lockstep, the component innermost,
    so each step is one short loop the compiler vectorizes instead of K dependent
    scalar chains.  One division per pivot (its reciprocal multiplies) and one log per
    1e200 of a determinant's range.  scratch: (reciprocal (>= q, K), s (K,), det (K,)).
    """
    reciprocal, s, det = scratch
    n_components = a.shape[2]
    for k in range(n_components):
        log_dets[k] = 0.0
        det[k] = 1.0
    for j in range(q):
        for i in range(j, q):  # column j of the factors: a_ij - sum_{t<j} L_it L_jt
            for k in range(n_components):
                s[k] = a[i, j, k]
            for t in range(j):
                for k in range(n_components):
                    s[k] -= a[i, t, k] * a[j, t, k]
            if i > j:
                for k in range(n_components):
                    a[i, j, k] = s[k] * reciprocal[j, k]
                continue
            for k in range(n_components):
                det[k] *= s[k]  # det a = prod of the squared pivots
                pivot = math.sqrt(s[k])
                a[j, j, k] = pivot
                reciprocal[j, k] = 1.0 / pivot
            for k in range(n_components):
                if det[k] > 1e200 or det[k] < 1e-200:
                    log_dets[k] += math.log(det[k])
                    det[k] = 1.0
    for k in range(n_components):
        log_dets[k] += math.log(det[k])
    # W = L^-1 (lower) into a's strict upper triangle, transposed (a[j, i] = W_ij, i > j):
    # W_jj = 1 / L_jj, W_ij = -(sum_{j <= t < i} L_it W_tj) / L_ii
    for j in range(q):
        for i in range(j + 1, q):
            for k in range(n_components):
                s[k] = a[i, j, k] * reciprocal[j, k]
            for t in range(j + 1, i):
                for k in range(n_components):
                    s[k] += a[i, t, k] * a[j, t, k]
            for k in range(n_components):
                a[j, i, k] = -s[k] * reciprocal[i, k]


@jit
def spd_inverse(precision, index, q, inverse, low):
    """``inverse[:q, :q] = P_mm^-1`` for ``P_mm = precision[index[:q]][:, index[:q]]``
    (precision (D, D) SPD); returns ``log |P_mm|``.  One matrix in scalar loops (the
    tied covariance's one precision), where :func:`cholesky_inverses`' lockstep over
    components would run loops of one step: Cholesky ``P_mm = L L^T`` into low's lower
    triangle, ``W = L^-1`` into inverse's, then ``P_mm^-1 = W^T W`` (through low's upper
    triangle and diagonal, which L no longer needs).  low (>= q, >= q) scratch."""
    log_det = 0.0
    for j in range(q):
        column = index[j]
        for i in range(j, q):
            s = precision[index[i], column]
            for t in range(j):
                s -= low[i, t] * low[j, t]
            if i == j:
                log_det += math.log(s)
                low[j, j] = math.sqrt(s)
            else:
                low[i, j] = s / low[j, j]
    for j in range(q):
        inverse[j, j] = 1.0 / low[j, j]
        for i in range(j + 1, q):
            s = 0.0
            for t in range(j, i):
                s -= low[i, t] * inverse[t, j]
            inverse[i, j] = s / low[i, i]
    for i in range(q):
        for j in range(i, q):
            s = 0.0
            for t in range(j, q):
                s += inverse[t, i] * inverse[t, j]
            low[i, j] = s
    for i in range(q):
        for j in range(i, q):
            inverse[i, j] = low[i, j]
            inverse[j, i] = low[i, j]
    return log_det


def inverse_scratch(n_features: int, n_components: int) -> tuple:
    """The scratch of :func:`pattern_inverses`: a (D, D, K) and that of
    :func:`cholesky_inverses`."""
    return (
        np.empty((n_features, n_features, n_components)),
        (
            np.empty((n_features, n_components)),
            np.empty(n_components),
            np.empty(n_components),
        ),
    )


@jit
def pattern_cache(n_features, n_components):
    """An empty cache for :func:`pattern_inverses`: (pattern (D + 1,) int, -1 for none
    yet, ``P_mm^-1`` (K, D, D), ``log |P_mm|`` (K,))."""
    return (
        np.full(n_features + 1, -1, dtype=np.int64),
        np.empty((n_components, n_features, n_features)),
        np.empty(n_components),
    )


@jit
def pattern_inverses(precisions, index, q, cache, scratch):
    """The cache (pattern, ``P_mm^-1`` (K, D, D), ``log |P_mm|`` (K,)) made that of the
    pattern ``index[:q]``, unless it holds it already (rows sorted by pattern factor
    each pattern once per run): in closed form for q <= 5
    (:func:`~dask_em.families.small_spd.small_inverses`), else, and where a
    determinant lies outside [1e-300, 1e300], by :func:`cholesky_inverses`.  scratch:
    :func:`inverse_scratch`."""
    pattern, inverse, log_dets = cache
    n_features = pattern.shape[0] - 1
    same = pattern[n_features] == q
    for t in range(q):
        same = same and pattern[t] == index[t]
    if same:
        return
    for t in range(q):
        pattern[t] = index[t]
    pattern[n_features] = q
    if small_inverses(precisions, index, q, inverse, log_dets):
        return
    a, chol_scratch = scratch
    for t in range(q):
        for t2 in range(q):
            for k in range(precisions.shape[0]):
                a[t, t2, k] = precisions[k, index[t], index[t2]]
    cholesky_inverses(a, q, inverse, log_dets, chol_scratch)


@jit_reassociated
def missing_products(xct, precisions, shifts, index, q, start, end, pv):
    """``pv[k*D + j, start:end] = (P_k v_k)_j = P_k[j] . xt - (P_k mc_k)_j`` (``b``) for
    the missing features ``j = index[:q]`` of a run of rows start:end.  xct (D + 1, m)
    the slice about the centre, missing entries 0; precisions (K, D, D); shifts (K, D)
    ``P_k mc_k``; pv (K*D, >= end).  Four features of the slice (in L1) a pass, each
    serving every component: 8.4 ns a row against 18.3 for ``(L_k u_k)_j`` from the
    product (its K*D rows in L2; q=1, K=8, D=16, runs of 256 rows)."""
    n_components, n_features = shifts.shape
    n = end - start
    for t in range(q):
        j = index[t]
        for k in range(n_components):
            out = pv[k * n_features + j, start:end]
            shift = shifts[k, j]
            for i in range(n):
                out[i] = -shift
        e = 0
        while e < n_features:
            if e + 4 <= n_features:
                x0, x1 = xct[e, start:end], xct[e + 1, start:end]
                x2, x3 = xct[e + 2, start:end], xct[e + 3, start:end]
                for k in range(n_components):
                    weights = precisions[k, j]
                    a0, a1, a2, a3 = weights[e], weights[e + 1], weights[e + 2], weights[e + 3]
                    out = pv[k * n_features + j, start:end]
                    for i in range(n):
                        out[i] += (a0 * x0[i] + a1 * x1[i]) + (a2 * x2[i] + a3 * x3[i])
                e += 4
            else:
                x = xct[e, start:end]
                for k in range(n_components):
                    a = precisions[k, j, e]
                    out = pv[k * n_features + j, start:end]
                    for i in range(n):
                        out[i] += a * x[i]
                e += 1


@jit_reassociated
def run_log_densities(yt, cache, const, index, q, start, end, lp, coef):
    """Columns start:end of lp (K, m) for a run of rows of one pattern ``index[:q]``
    (module docstring): ``const_k + q/2 log 2 pi - 1/2 log |P_mm| - 1/2 (v.Pv - b.c)``,
    with ``c = P_mm^-1 b`` into ``coef[k, :q, start:end]`` (K, D, m).

    On entry ``lp[k, start:end]`` holds ``v.Pv`` (:func:`~dask_em.families.
    gaussian_fused_product.product_distances`); yt (K*D, m): ``b = (P_k v_k)_m`` at rows
    k*D + j of the missing features j (:func:`missing_products`); cache as
    :func:`pattern_inverses` (holding this pattern).  Every loop runs over the run's
    rows, contiguous (views from ``start``: numba checks a loop index that might be
    negative, which would stop the loop from being vectorized).
    """
    _, inverse, log_dets = cache
    n_components = const.shape[0]
    n_features = yt.shape[0] // n_components
    n = end - start
    for k in range(n_components):
        base = k * n_features
        quad = lp[k, start:end]
        for t in range(q):
            c = coef[k, t, start:end]
            for i in range(n):
                c[i] = 0.0
            for t2 in range(q):
                g = inverse[k, t, t2]
                b = yt[base + index[t2], start:end]
                for i in range(n):
                    c[i] += g * b[i]
            b = yt[base + index[t], start:end]
            for i in range(n):
                quad[i] -= b[i] * c[i]
        shift = const[k] + 0.5 * q * LOG_2PI - 0.5 * log_dets[k]
        for i in range(n):
            quad[i] = shift - 0.5 * quad[i]


@jit_reassociated
def run_moments(r, xc, coef, cache, index, q, start, end, out, scratch):
    """What the rows start:end of one pattern ``index[:q]`` add beyond the moments of
    ``xt`` (module docstring): with ``e = -c`` on the missing entries, ``sum r e`` to
    sums (K, D), ``sum r e xt^T`` to cross (K, D, D) (row j a missing feature) and
    ``sum r (e e^T + P_mm^-1)`` to block (K, D, D) (its upper triangle: j <= j').

    r (K, m) weighted responsibilities; xc (>= m, D) the slice's rows about the centre,
    row-major, missing entries 0; coef (K, D, m) as :func:`run_log_densities`; cache holding
    this pattern; out (nk, sums, cross, block); scratch :func:`moment_scratch`.  The
    cross sums are one BLAS product ``(r e) (K q, n) @ xc (n, D)`` a run: 0.63 against
    1.29 us for loops over the rows, four features a pass (K=8, q=2, D=16, runs of 53
    rows), whose sums went through the remainder of loops vectorized 32 doubles a step.
    """
    _, sums, cross, block = out
    _, inverse, _ = cache
    flat, product = scratch
    n_components = r.shape[0]
    n_features = xc.shape[1]
    n = end - start
    re = flat[: n_components * q * n].reshape(n_components * q, n)
    for k in range(n_components):
        weights = r[k, start:end]
        total = 0.0
        for i in range(n):
            total += weights[i]
        for t in range(q):
            j = index[t]
            c = coef[k, t, start:end]
            row = re[k * q + t]
            first = 0.0
            for i in range(n):
                row[i] = -weights[i] * c[i]
                first += row[i]
            sums[k, j] += first
            for t2 in range(t, q):  # the upper triangle (index ascends): symmetric
                c2 = coef[k, t2, start:end]
                part = 0.0
                for i in range(n):
                    part -= row[i] * c2[i]
                block[k, j, index[t2]] += part + total * inverse[k, t, t2]
    np.dot(re, xc[start:end], product[: n_components * q])
    for k in range(n_components):
        for t in range(q):
            target = cross[k, index[t]]
            terms = product[k * q + t]
            for d in range(n_features):
                target[d] += terms[d]


@jit
def moment_scratch(n_rows, n_features, n_components):
    """The scratch of :func:`run_moments` for slices of n_rows rows: ``r e`` (K D n_rows,)
    flat, and the product (K D, D)."""
    return (
        np.empty(n_components * n_features * n_rows),
        np.empty((n_components * n_features, n_features)),
    )
