"""The part of the missing-value E-step that depends on a row's NaN pattern, compiled.

:mod:`dask_em.families.gaussian_missing_compiled` sorts a block's rows with NaN by
pattern and holds a slice of them feature-major; the functions here work on one run
of rows that share a pattern ``index[:q]`` (the missing features): ``P_mm`` factored
once for the run (:func:`pattern_inverses`), then the log-densities and ``c =
P_mm^-1 b`` (:func:`run_log_densities`) and, once the responsibilities are known, the
pattern's terms of the completed-data moments (:func:`run_moments`), each loop over
the run's rows.  A run of a few rows takes the same mathematics row by row
(:func:`row_log_densities`, :func:`row_moments`), where loops over the features are
cheaper than setting up loops over rows.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.jit import jit, jit_reassociated

LOG_2PI = math.log(2.0 * math.pi)


@jit
def cholesky_inverse(a, inverse, q):
    """``inverse[:q, :q] = a^-1`` for the SPD ``a[:q, :q]`` (its Cholesky factor
    overwrites ``a``, lower; a has more than q rows, its last one is scratch); returns
    ``log det a``.  One division per pivot (its reciprocal multiplies) and one log per
    1e200 of the determinant's range: both cost more than the rest for the small q of
    most patterns."""
    reciprocal = a[a.shape[0] - 1]
    log_det = 0.0
    det = 1.0
    for j in range(q):
        s = a[j, j]
        for t in range(j):
            s -= a[j, t] * a[j, t]
        det *= s  # det a = prod of the squared pivots
        if det > 1e200 or det < 1e-200:
            log_det += math.log(det)
            det = 1.0
        pivot = math.sqrt(s)
        a[j, j] = pivot
        reciprocal[j] = 1.0 / pivot
        for i in range(j + 1, q):
            s = a[i, j]
            for t in range(j):
                s -= a[i, t] * a[j, t]
            a[i, j] = s * reciprocal[j]
    for col in range(q):  # column col of a^-1: L z = e_col, then L^T x = z
        z = inverse[col]
        for i in range(q):
            s = 1.0 if i == col else 0.0
            for t in range(i):
                s -= a[i, t] * z[t]
            z[i] = s * reciprocal[i]
        for i in range(q - 1, -1, -1):
            s = z[i]
            for t in range(i + 1, q):
                s -= a[t, i] * z[t]
            z[i] = s * reciprocal[i]
    return log_det + math.log(det)


@jit
def pattern_inverses(precisions, index, q, cache, a):
    """The cache (pattern, ``P_mm^-1`` (K, D, D), ``log |P_mm|`` (K,)) made that of the
    pattern ``index[:q]``, unless it holds it already (rows sorted by pattern factor
    each pattern once per run).  a (D + 1, D): scratch."""
    pattern, inverse, log_dets = cache
    n_features = pattern.shape[0] - 1
    same = pattern[n_features] == q
    for t in range(q):
        same = same and pattern[t] == index[t]
    if same:
        return
    for k in range(precisions.shape[0]):
        for t in range(q):
            for t2 in range(q):
                a[t, t2] = precisions[k, index[t], index[t2]]
        log_dets[k] = cholesky_inverse(a, inverse[k], q)
    for t in range(q):
        pattern[t] = index[t]
    pattern[n_features] = q


@jit_reassociated
def run_log_densities(yt, factors, cache, const, index, q, start, end, lp, coef, work):
    """Columns start:end of lp (K, m) for a run of rows of one pattern ``index[:q]``
    (module docstring): ``const_k + q/2 log 2 pi - 1/2 log |P_mm| - 1/2 (|u|^2 - b.c)``,
    with ``c = P_mm^-1 b`` into ``coef[k, :q, start:end]`` (K, D, m).

    yt (K*D, m): ``u_k`` at rows k*D + e; factors (K, D, D) ``L_k``; cache as
    :func:`pattern_inverses` (holding this pattern); work (D + 1, m): scratch (b, then
    the quadratic form).  Every loop runs over the run's rows, contiguous (views from
    ``start``: numba checks a loop index that might be negative, which would stop the
    loop from being vectorized).
    """
    _, inverse, log_dets = cache
    n_components, n_features = factors.shape[0], factors.shape[1]
    n = end - start
    quad = work[n_features, start:end]
    for k in range(n_components):
        base = k * n_features
        for i in range(n):
            quad[i] = 0.0
        for e in range(n_features):
            u = yt[base + e, start:end]
            for i in range(n):
                quad[i] += u[i] * u[i]
        for t in range(q):  # b_t = (L_k u)_j, j the t-th missing feature
            b = work[t, start:end]
            for i in range(n):
                b[i] = 0.0
            for e in range(n_features):
                f = factors[k, index[t], e]
                u = yt[base + e, start:end]
                for i in range(n):
                    b[i] += f * u[i]
        for t in range(q):
            c = coef[k, t, start:end]
            for i in range(n):
                c[i] = 0.0
            for t2 in range(q):
                g = inverse[k, t, t2]
                b = work[t2, start:end]
                for i in range(n):
                    c[i] += g * b[i]
            b = work[t, start:end]
            for i in range(n):
                quad[i] -= b[i] * c[i]
        shift = const[k] + 0.5 * q * LOG_2PI - 0.5 * log_dets[k]
        row = lp[k, start:end]
        for i in range(n):
            row[i] = shift - 0.5 * quad[i]


@jit_reassociated
def run_moments(r, xct, coef, cache, index, q, start, end, out, scratch):
    """What the rows start:end of one pattern ``index[:q]`` add beyond the moments of
    ``xt`` (module docstring): with ``e = -c`` on the missing entries, ``sum r e`` to
    sums (K, D), ``sum r e xt^T`` to cross (K, D, D) (row j a missing feature) and
    ``sum r (e e^T + P_mm^-1)`` to block (K, D, D).

    r (K, m) weighted responsibilities; xct (D + 1, m) feature-major; coef (K, D, m) as
    :func:`run_log_densities`; cache holding this pattern; out (nk, sums, cross, block);
    scratch (m,).  Loops over views from ``start``, as there.
    """
    _, sums, cross, block = out
    _, inverse, _ = cache
    n_components = r.shape[0]
    n_features = xct.shape[0] - 1
    n = end - start
    re = scratch[start:end]
    for k in range(n_components):
        weights = r[k, start:end]
        total = 0.0
        for i in range(n):
            total += weights[i]
        for t in range(q):
            j = index[t]
            c = coef[k, t, start:end]
            first = 0.0
            for i in range(n):
                re[i] = -weights[i] * c[i]
                first += re[i]
            sums[k, j] += first
            target = cross[k, j]
            for d in range(n_features):
                x = xct[d, start:end]
                part = 0.0
                for i in range(n):
                    part += re[i] * x[i]
                target[d] += part
            for t2 in range(q):
                c2 = coef[k, t2, start:end]
                part = 0.0
                for i in range(n):
                    part -= re[i] * c2[i]
                block[k, j, index[t2]] += part + total * inverse[k, t, t2]


@jit_reassociated
def row_log_densities(yt, factors, cache, const, index, q, i, lp, coef, u, b):
    """Column i of lp and ``coef[:, :q, i]`` as :func:`run_log_densities`, for a row of a
    run too short for loops over its rows to pay (the loops run over the features, on
    ``u_k`` copied out of its column once).  u (D,), b (>= q,): scratch."""
    _, inverse, log_dets = cache
    n_components, n_features = factors.shape[0], factors.shape[1]
    for k in range(n_components):
        base = k * n_features
        norm = 0.0
        for e in range(n_features):
            u[e] = yt[base + e, i]
            norm += u[e] * u[e]
        for t in range(q):
            s = 0.0
            for e in range(n_features):
                s += factors[k, index[t], e] * u[e]
            b[t] = s
        quad = 0.0
        for t in range(q):
            s = 0.0
            for t2 in range(q):
                s += inverse[k, t, t2] * b[t2]
            coef[k, t, i] = s
            quad += b[t] * s
        lp[k, i] = const[k] + 0.5 * q * LOG_2PI - 0.5 * log_dets[k] - 0.5 * (norm - quad)


@jit_reassociated
def row_moments(r, xct, coef, cache, index, q, i, out):
    """What row i adds, as :func:`run_moments` for a run of one row."""
    _, sums, cross, block = out
    _, inverse, _ = cache
    n_components = r.shape[0]
    n_features = xct.shape[0] - 1
    for k in range(n_components):
        weight = r[k, i]
        if weight == 0.0:
            continue
        for t in range(q):
            j = index[t]
            re = -weight * coef[k, t, i]
            sums[k, j] += re
            target = cross[k, j]
            for d in range(n_features):
                target[d] += re * xct[d, i]
            for t2 in range(q):
                block[k, j, index[t2]] += weight * inverse[k, t, t2] - re * coef[k, t2, i]


@jit
def row_responsibilities(lp, i, w, nk, held, floor):
    """Bayes' rule for column i of lp (K, m) alone: ``held[:, i] = w r_ik`` (0 below
    ``floor``), added to nk (K,); returns (w, w loglik).  The scalar form of
    :func:`~dask_em.families.responsibilities_compiled.responsibilities`, for a row of
    a short run, whose pattern's terms are added while its ``P_mm^-1`` is at hand."""
    n_components = lp.shape[0]
    peak = -np.inf
    for k in range(n_components):
        peak = max(peak, lp[k, i])
    if not np.isfinite(peak):
        peak = 0.0
    total = 0.0
    for k in range(n_components):
        held[k, i] = math.exp(lp[k, i] - peak)
        total += held[k, i]
    for k in range(n_components):
        r = w * (held[k, i] / total)
        if r < floor:
            r = 0.0
        held[k, i] = r
        nk[k] += r
    return w, w * (math.log(total) + peak)
