"""The tied covariance's missing-value E-step for short runs, rows in lockstep.

:mod:`dask_em.families.gaussian_missing_tied` takes a run of rows of one NaN pattern
with loops over its rows, ``P_mm`` factored once for the run.  A pattern with few rows
in a block has no such run: at 10% missing at random with D=16, most rows with four or
more NaN have a pattern of their own (4,368 patterns with q = 5 for about 7,000 rows
in a 524,288-row block).  Each such row used to be factored and solved on its own, in
scalar loops of q or K steps: 800 ns a row at q >= 5, against 105-140 ns for the rows
of the long runs of q <= 3.

Here the rows of a group (consecutive rows with the same number q of NaN, whatever
their patterns) go through every step in lockstep, the row innermost, so that each
step is one loop over the group's rows that the compiler vectorizes: each row's
``P_mm`` gathered into a (q, q, G) array and factored for all G rows at once
(:func:`~dask_em.families.gaussian_missing_runs.lockstep_factors`, the lockstep the
full covariance runs over its components), its inverse, ``g = P_mm^-1 y_m``, each
component's ``h_k = P_mm^-1 o_km`` and ``c_k = g - h_k``, and the log-densities; after
Bayes' rule the moment terms, formed in the same layout and added into the
accumulators row by row.  The mathematics and the accumulators are those of the runs
(module docstring of :mod:`dask_em.families.gaussian_missing_tied`).  On the rows with
five or more NaN of a 524,288-row block (one thread): 866 -> 527 ns a row, gather,
product and pair sums included; in a group of 256 rows with q = 5 the log-densities
take 115 ns a row and the moment terms 135, most of it the scalar gathers and the
adds into the accumulators at each row's own features, which no loop over rows
vectorizes.

A group's factors, inverses, coefficients and missing features stay in the buffers of
:func:`group_buffers` between its log-densities and its moments (Bayes' rule comes
between, over the whole slice), at offsets set by the group's first row in the slice:
a group of G rows uses at most what G rows of D missing features would, so groups
never overlap.
"""

from __future__ import annotations

import numpy as np

from dask_em.families.gaussian_missing_lockstep import lockstep_solve
from dask_em.families.gaussian_missing_runs import (
    LOG_2PI,
    inverses_from_factors,
    lockstep_factors,
)
from dask_em.families.jit import jit, jit_reassociated


@jit
def group_buffers(m, n_features, n_components):
    """The buffers of :func:`group_log_densities` and :func:`group_moments` for slices of
    m rows: (index (D*m,) int64, inverses (D*D*m,), coef (K*D*m,), factors (D*D*m,),
    lane scratch ((D, m), (m,), (m,), log_dets (m,)), row scratch ((D, m) twice, (m,)))."""
    return (
        np.empty(n_features * m, dtype=np.int64),
        np.empty(n_features * n_features * m),
        np.empty(n_components * n_features * m),
        np.empty(n_features * n_features * m),
        (np.empty((n_features, m)), np.empty(m), np.empty(m), np.empty(m)),
        (np.empty((n_features, m)), np.empty((n_features, m)), np.empty(m)),
    )


@jit
def _group_views(buffers, start, end, q, n_features, n_components):
    """The group start:end's (index (q, G), inverse (q, q, G), coef (K, q, G)) in the
    buffers, at offsets set by ``start`` (module docstring)."""
    n = end - start
    index_pool, inverse_pool, coef_pool = buffers[0], buffers[1], buffers[2]
    at = start * n_features
    index = index_pool[at : at + q * n].reshape((q, n))
    at = start * n_features * n_features
    inverse = inverse_pool[at : at + q * q * n].reshape((q, q, n))
    at = start * n_features * n_components
    coef = coef_pool[at : at + n_components * q * n].reshape((n_components, q, n))
    return index, inverse, coef


@jit
def same_count_end(missing, start, m, q):
    """The first row after ``start`` (< m) of missing (m, D) bool whose count of NaN is
    not q."""
    end = start + 1
    while end < m:
        count = 0
        for d in range(missing.shape[1]):
            count += missing[end, d]
        if count != q:
            return end
        end += 1
    return m


@jit_reassociated
def group_log_densities(y, precision, offsets, const, missing, start, end, q, lp, buffers):
    """lp[:, start:end] from the quadratic forms ``v_k^T P v_k`` it holds there, for the
    rows start:end of a slice, each with q NaN (patterns of their own or shared):
    ``const_k + q/2 log 2 pi - 1/2 log |P_mm| - 1/2 (v.Pv - b.c)`` with ``b_k = y_m -
    o_km`` and ``c_k = P_mm^-1 b_k``.  y (D + K, m) the slice's ``P xt`` (rows :D);
    precision (D, D) P; offsets (K, D) ``o_k = P mc_k``; const (K,) as the runs';
    missing (m, D) bool; buffers: :func:`group_buffers`, which keep each row's missing
    features, ``P_mm^-1`` and ``c_k`` for :func:`group_moments`."""
    n_features = missing.shape[1]
    n_components = offsets.shape[0]
    n = end - start
    index, inverse, coef = _group_views(buffers, start, end, q, n_features, n_components)
    factors = buffers[3][: q * q * n].reshape((q, q, n))
    reciprocal, s, det, log_dets = buffers[4]
    ym, om, correction = buffers[5]
    for i in range(n):
        t = 0
        for d in range(n_features):
            if missing[start + i, d]:
                index[t, i] = d
                t += 1
    for t in range(q):  # P_mm of each row, lower triangle
        for t2 in range(t + 1):
            for i in range(n):
                factors[t, t2, i] = precision[index[t, i], index[t2, i]]
    lockstep_factors(factors, q, log_dets, (reciprocal, s, det))
    inverses_from_factors(factors, q, inverse, (reciprocal, s, det))
    for t in range(q):
        for i in range(n):
            ym[t, i] = y[index[t, i], start + i]
    g = reciprocal  # P_mm^-1 y_m (q, n): the factors' reciprocals are no longer needed
    lockstep_solve(inverse, q, ym, g)
    for k in range(n_components):
        for t in range(q):
            for i in range(n):
                om[t, i] = offsets[k, index[t, i]]
        for i in range(n):
            correction[i] = 0.0
        for t in range(q):
            c = coef[k, t]
            for i in range(n):
                c[i] = g[t, i]
            for t2 in range(q):
                for i in range(n):
                    c[i] -= inverse[t, t2, i] * om[t2, i]  # c_k = g - P_mm^-1 o_km
            for i in range(n):
                correction[i] += (ym[t, i] - om[t, i]) * c[i]  # b.c
        row = lp[k, start:end]
        for i in range(n):
            shift = 0.5 * q * LOG_2PI - 0.5 * log_dets[i]
            row[i] = const[k] + shift - 0.5 * (row[i] - correction[i])


@jit_reassociated
def group_moments(r, xc, start, end, q, buffers, sums, cross, block):
    """What the rows start:end (q NaN each, after :func:`group_log_densities`) add beyond
    the moments of their ``xt``: ``sum r_k e_k`` to sums (K, D), ``E xt^T`` to cross
    (D, D) and ``sum_k r_k e_k e_k^T + w P_mm^-1`` to block (D, D), with ``e_k = -c_k``
    on the missing features and ``E = sum_k r_k e_k`` (module docstring of
    :mod:`dask_em.families.gaussian_missing_tied`).  r (K, m) weighted responsibilities;
    xc (>= m, D) the rows about the centre, row-major, missing entries 0."""
    n_features = xc.shape[1]
    n_components = r.shape[0]
    n = end - start
    index, inverse, coef = _group_views(buffers, start, end, q, n_features, n_components)
    summed, term, share = buffers[5]
    for i in range(n):
        share[i] = 0.0
    for k in range(n_components):
        weights = r[k, start:end]
        for i in range(n):
            share[i] += weights[i]
    for t in range(q):
        for i in range(n):
            summed[t, i] = 0.0
        for k in range(n_components):
            weights = r[k, start:end]
            c = coef[k, t]
            for i in range(n):
                summed[t, i] -= weights[i] * c[i]  # E_t
            for i in range(n):
                sums[k, index[t, i]] -= weights[i] * c[i]
    for t in range(q):
        for t2 in range(t, q):
            for i in range(n):
                term[t2, i] = share[i] * inverse[t, t2, i]
            for k in range(n_components):
                weights = r[k, start:end]
                c, c2 = coef[k, t], coef[k, t2]
                for i in range(n):
                    term[t2, i] += weights[i] * c[i] * c2[i]
        for i in range(n):
            j = index[t, i]
            value = term[t, i]
            block[j, j] += value
            for t2 in range(t + 1, q):
                j2 = index[t2, i]
                block[j, j2] += term[t2, i]
                block[j2, j] += term[t2, i]
            row = xc[start + i]
            e = summed[t, i]
            for d in range(n_features):
                cross[j, d] += e * row[d]
