"""Compiled exact E-step + completed-data moments of rows with NaN, tied covariance.

The mathematics of :mod:`dask_em.families.gaussian_missing_compiled` (Schur complements
of the precision; see there and :mod:`dask_em.families.gaussian_missing`, eqs. 1-3),
with the one precision ``P`` that every component shares used as such, as the
complete-row tied kernel does, instead of as K equal ones:

* one BLAS product ``y = P xt`` (``xt`` = x - center, missing entries 0) serves every
  component: ``P v_k = y - o_k`` with ``o_k = P mc_k`` (mc_k = mu_k - center, ``v_k =
  xt - mc_k``), so ``b_k = (P v_k)_m = y_m - o_km`` and ``v^T P v = xt.y - 2 o_k.xt +
  mc_k.o_k``, its K terms ``o_k.xt`` K more rows of the same product (then D + K
  products a row, not the 2 K D of ``v_k . (y - o_k)``: 83.0-87.5 -> 79.6-80.1 ms a
  524,288-row block, K=8, D=16);
* ``P_mm``, its inverse and ``log |P_mm|`` depend on the pattern only: one Cholesky per
  run of rows of a pattern, not one per component;
* ``c_k = P_mm^-1 b_k = g - h_k`` with ``g = P_mm^-1 y_m`` (per row) and ``h_k =
  P_mm^-1 o_km`` (per run and component);
* only the second moments summed over the components are needed (tied M-step), so the
  completed rows' ``sum_k r_ik (xt + e_ik)(xt + e_ik)^T`` (``e_ik = -c_ik`` on the
  missing entries) is ``w_i xt xt^T`` (``w_i = sum_k r_ik``, one weighted pair sum, as
  the complete rows' tied kernel) plus ``E_i xt^T + xt E_i^T`` with ``E_i = sum_k r_ik
  e_ik`` (q x D per row, not K q x D) plus ``sum_k r_ik e_ik e_ik^T + w_i P_mm^-1``.

Rows are visited in the order of their NaN pattern (:func:`~dask_em.families.
gaussian_missing_patterns.pattern_groups`), in slices of
:data:`~dask_em.families.gaussian_missing_compiled.SLICE_ROWS`; every loop over rows
runs over the rows of one run (one pattern), contiguous.  The patterns with fewer than
:data:`~dask_em.families.gaussian_missing_compiled.RUN_ROWS` rows in the block come
last, sorted by their number q of NaN, and go in groups of rows with q NaN each, as
do the pieces of runs shorter than that where a slice ends: each row factored on its
own, the rows in lockstep (:mod:`dask_em.families.gaussian_missing_tied_groups`; at
10% missing at random, one 62,500-row block with D=16, K=8: 11.1 -> 10.1 ms, where
those rows went one by one in scalar loops).  Rows with nothing observed get no
weight.  Moments come out about ``center`` as those of
:func:`~dask_em.families.gaussian_compiled.full_block_moments` for tied (per-component
first moments, second moments summed over the components).
"""

from __future__ import annotations

import numpy as np

from dask_em.families.gaussian_missing_compiled import (
    RUN_ROWS,
    SLICE_ROWS,
    _run_end,
    gathered_slice,
    slice_buffers,
)
from dask_em.families.gaussian_missing_patterns import by_nan_count, pattern_groups
from dask_em.families.gaussian_missing_runs import (
    LOG_2PI,
    floor_responsibilities,
    missing_index,
    spd_inverse,
)
from dask_em.families.gaussian_missing_tied_groups import (
    group_buffers,
    group_log_densities,
    group_moments,
    same_count_end,
)
from dask_em.families.gaussian_slice_loops import (
    first_moment_pairs,
    moments_from_pairs,
    pair_moments,
    summed_pair_moments,
    upper_pairs,
)
from dask_em.families.jit import jit, jit_reassociated
from dask_em.families.responsibilities_compiled import responsibilities, row_scratch


@jit_reassociated
def _quadratic_forms(xct, y, m, quad, shared):
    """``quad[k, i] = v_k^T P v_k`` for the m rows of a slice (the missing entries as
    they stand, ``v_k = xt - mc_k``), expanded as ``xt.Pxt - 2 o_k.xt + mc_k.o_k``: xct
    (D + 1, m) the rows about the centre; y (D + K, m) the slice's product with the
    matrix of :func:`tied_missing_block_moments` (rows :D ``P xt``, row D + k
    ``mc_k.o_k - 2 o_k.xt``); quad (K, >= m); shared (>= m,) scratch (``xt.Pxt``).
    The terms grow with the square of a row's distance to the centre (the mixture's
    mean) and ``v_k^T P v_k`` keeps their rounding: 3e-12 of the log-likelihood with
    components 1,000 apart at unit spread (the complete rows keep the differences)."""
    n_components = quad.shape[0]
    n_features = y.shape[0] - n_components
    for i in range(m):
        shared[i] = 0.0
    for e in range(n_features):
        x = xct[e, :m]
        ye = y[e, :m]
        for i in range(m):
            shared[i] += x[i] * ye[i]
    for k in range(n_components):
        row = quad[k, :m]
        terms = y[n_features + k, :m]
        for i in range(m):
            row[i] = shared[i] + terms[i]


@jit
def _solved_offsets(offsets, inverse, index, q, h):
    """``h[k, :q] = P_mm^-1 o_km`` (K, >= q) for every component: the part of ``c_k``
    that depends on the run's pattern only."""
    for k in range(offsets.shape[0]):
        for t in range(q):
            s = 0.0
            for t2 in range(q):
                s += inverse[t, t2] * offsets[k, index[t2]]
            h[k, t] = s


@jit_reassociated
def _run_log_densities(y, offsets, h, inverse, log_det, const, index, q, start, end, lp, coef, g):
    """lp[:, start:end] from the quadratic forms lp holds there, for a run of rows of one
    pattern ``index[:q]``: ``const_k + q/2 log 2 pi - 1/2 log |P_mm| - 1/2 (v.Pv - b.c)``;
    ``c_k`` into ``coef[k, :q, start:end]`` (K, D, m).  h (K, >= q) ``P_mm^-1 o_km``
    (:func:`_solved_offsets`); inverse (>= q, >= q) ``P_mm^-1``; g (D, m) scratch."""
    n_components = offsets.shape[0]
    n = end - start
    for t in range(q):  # g = P_mm^-1 y_m, the part of c shared by the components
        gt = g[t, start:end]
        for i in range(n):
            gt[i] = 0.0
        for t2 in range(q):
            a = inverse[t, t2]
            yt = y[index[t2], start:end]
            for i in range(n):
                gt[i] += a * yt[i]
    shift = 0.5 * q * LOG_2PI - 0.5 * log_det
    for k in range(n_components):
        row = lp[k, start:end]
        for t in range(q):
            ht = h[k, t]
            offset = offsets[k, index[t]]
            gt = g[t, start:end]
            yt = y[index[t], start:end]
            c = coef[k, t, start:end]
            for i in range(n):
                c[i] = gt[i] - ht
                row[i] -= (yt[i] - offset) * c[i]  # v.Pv - b.c, b_t = y_t - o_kt
        total = const[k] + shift
        for i in range(n):
            row[i] = total - 0.5 * row[i]


@jit_reassociated
def _run_moments(r, xct, coef, inverse, index, q, start, end, sums, cross, block, scratch):
    """What the rows start:end of one pattern ``index[:q]`` add beyond the moments of
    ``xt`` (module docstring): ``sum r_k e_k`` to sums (K, D), ``sum E xt^T`` to cross
    (D, D) (rows: the missing features) and ``sum_k r_k e_k e_k^T + w P_mm^-1`` to block
    (D, D).  r (K, m) weighted responsibilities; coef (K, D, m) ``c_k``; scratch (m,)."""
    n_components = r.shape[0]
    n_features = xct.shape[0] - 1
    n = end - start
    share = 0.0  # sum_i w_i, the weight of the run's P_mm^-1
    for k in range(n_components):
        weights = r[k, start:end]
        for i in range(n):
            share += weights[i]
    summed = scratch[start:end]
    for t in range(q):
        j = index[t]
        for i in range(n):
            summed[i] = 0.0
        for k in range(n_components):
            weights = r[k, start:end]
            c = coef[k, t, start:end]
            first = 0.0
            for i in range(n):
                re = weights[i] * c[i]
                summed[i] -= re  # E_t = sum_k r_k e_kt, e = -c
                first -= re
            sums[k, j] += first
            for t2 in range(t, q):
                c2 = coef[k, t2, start:end]
                part = 0.0
                for i in range(n):
                    part += weights[i] * c[i] * c2[i]
                block[j, index[t2]] += part
                if t2 != t:
                    block[index[t2], j] += part
        for d in range(n_features):
            x = xct[d, start:end]
            part = 0.0
            for i in range(n):
                part += summed[i] * x[i]
            cross[j, d] += part
        for t2 in range(q):
            block[j, index[t2]] += share * inverse[t, t2]


@jit
def _run_inverse(pool, run_starts, run, q):
    """Room for run ``run``'s q x q ``P_mm^-1`` in pool (1-D), after the runs before it
    (``run_starts[run]``); returns (the (q, q) view, the pool, grown if it was short)."""
    start = run_starts[run]
    end = start + q * q
    if end > pool.shape[0]:
        grown = np.empty(max(2 * pool.shape[0], end))
        grown[:start] = pool[:start]
        pool = grown
    run_starts[run + 1] = end
    return pool[start:end].reshape((q, q)), pool


@jit
def _stored_inverse(pool, run_starts, run, q):
    """Run ``run``'s ``P_mm^-1`` (q, q), as :func:`_run_inverse` left it."""
    return pool[run_starts[run] : run_starts[run] + q * q].reshape((q, q))


@jit
def _tied_missing_block(
    X, rows, keys, n_frequent, center, precision_t, precision, offsets, const, w, out, pairs
):
    """The rows ``rows`` of X (n, D) (all with NaN; keys their bit masks or empty) in
    slices, in one compiled call; returns (weight, loglik).  ``rows[:n_frequent]`` are in
    pattern order and go run by run (a run shorter than RUN_ROWS, cut by a slice end, in
    lockstep); the rest, the rare patterns sorted by their number of NaN, go in groups
    of rows with as many NaN each (:mod:`~dask_em.families.gaussian_missing_tied_groups`).

    precision_t (D + K, D + 1): ``[P, 0]`` over ``[-2 o_k, mc_k.o_k]``, so one BLAS
    product with ``[xt, 1]^T`` gives y and the terms of :func:`_quadratic_forms`;
    precision (D, D); offsets (K, D) ``o_k = P mc_k``; const (K,) the complete rows'
    ``log pi_k + log |P|^1/2 - D/2 log 2 pi``; w (n,), or empty for unit weights.  out:
    nk (K,), sums (K, D), cross (D, D), block (D, D), firsts (K, D + 1) (``sum_i r_ik
    xt[d, i]``, the last column ``sum_i r_ik``), seconds (P,) (``sum_i w_i xt[a, i]
    xt[b, i]`` over the upper pairs); pairs: (first, second) of the per-component pairs
    ``(d, D)`` and (a, b) of the upper pairs.
    """
    n_features = X.shape[1]
    n_components = const.shape[0]
    nk, sums, cross, block, firsts, seconds = out
    first_pairs, second_pairs, upper_a, upper_b = pairs
    m = min(SLICE_ROWS, max(len(rows), 1))
    low = np.empty((n_features, n_features))  # spd_inverse's scratch
    lp = np.empty((n_components, m))
    coef = np.empty((n_components, n_features, m))
    g = np.empty((n_features, m))
    scratch = np.empty(m)
    run_ends = np.empty(m, dtype=np.int64)
    pool = np.empty(m * 4)  # the slice's runs' P_mm^-1, q * q each from run_starts
    run_starts = np.empty(m + 1, dtype=np.int64)
    h = np.empty((n_components, n_features))
    index = np.empty(n_features, dtype=np.int64)
    in_lockstep = np.empty(m, dtype=np.bool_)  # each run's: rows in lockstep (groups)
    grouping = group_buffers(m, n_features, n_components)
    bayes = row_scratch(m, lp)
    xct, xc, y, missing, ws = slice_buffers(m, n_features, precision_t.shape[0])
    total = np.empty((1, m))
    first_part = np.empty((n_components, n_features + 1))
    second_part = np.empty((1, seconds.shape[0]))
    weight = 0.0
    loglik = 0.0
    width_first = m
    for begin in range(0, len(rows), width_first):
        m = min(width_first, len(rows) - begin)
        xct, y = gathered_slice(X, rows[begin : begin + m], center, w, xct, xc, y, missing, ws)
        np.dot(precision_t, xct, y)
        _quadratic_forms(xct, y, m, lp, scratch)
        slice_keys = keys[begin : begin + m]
        n_runs = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
        run_starts[0] = 0
        start = np.int64(0)
        while start < m:  # the log-densities, run by run
            q = missing_index(missing[:m], start, index)
            if begin + start < n_frequent:  # a run of one pattern
                end = _run_end(slice_keys, missing[:m], start, m)
            else:  # rare patterns, sorted by q: a group of rows with q NaN each
                end = same_count_end(missing[:m], start, m, q)
            run_ends[n_runs] = end
            in_lockstep[n_runs] = begin + start >= n_frequent or end - start < RUN_ROWS
            run_starts[n_runs + 1] = run_starts[n_runs]
            if q < n_features and in_lockstep[n_runs]:
                group_log_densities(
                    y, precision, offsets, const, missing[:m], start, end, q, lp, grouping
                )
            elif q < n_features:
                inverse, pool = _run_inverse(pool, run_starts, n_runs, q)
                log_det = spd_inverse(precision, index, q, inverse, low)
                _solved_offsets(offsets, inverse, index, q, h)
                _run_log_densities(
                    y, offsets, h, inverse, log_det, const, index, q, start, end, lp, coef, g
                )
            else:  # nothing observed: no weight
                for i in range(start, end):
                    ws[i] = 0.0
                    for k in range(n_components):
                        lp[k, i] = 0.0
            n_runs += 1
            start = end
        part_weight, part_loglik = responsibilities(lp, m, ws, nk, bayes)
        weight += part_weight
        loglik += part_loglik
        floor_responsibilities(lp, m, nk)  # as the reference: not in nk either
        start = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
        for run in range(n_runs):
            end = run_ends[run]
            q = missing_index(missing[:m], start, index)
            if q < n_features and in_lockstep[run]:
                group_moments(lp, xc, start, end, q, grouping, sums, cross, block)
            elif q < n_features:
                inverse = _stored_inverse(pool, run_starts, run, q)
                _run_moments(
                    lp, xct, coef, inverse, index, q, start, end, sums, cross, block, scratch
                )
            start = end
        pair_moments(lp, xct, m, first_pairs, second_pairs, first_part, 0.0)
        firsts += first_part
        summed_pair_moments(lp, xct, m, upper_a, upper_b, total, second_part, 0.0)
        seconds += second_part[0]
    return weight, loglik


def tied_missing_block_moments(X, rows, center, prec_chol, means_c, const, w, keys=None):
    """Moments about ``center`` of the rows ``rows`` of a block, which hold NaN, for a
    tied covariance (module docstring).

    X (n, D); rows (r,) int: the indices of its rows with NaN; prec_chol (D, D) the
    shared factor ``L`` (``P = L L^T``); means_c (K, D); const (K,) the complete rows'
    ``log pi_k + log |P|^1/2 - D/2 log 2 pi``; w (n,) the block's weights, or empty for
    unit weights; keys (r,) the rows' NaN patterns' bit masks, or None (as
    :func:`~dask_em.families.gaussian_missing_compiled.missing_block_moments`).  Returns
    ``(weight, loglik, nk (K,), sums (K, D), second (D, D))``, second summed over the
    components (r weighted).
    """
    n_features = X.shape[1]
    n_components = len(means_c)
    factor = np.asarray(prec_chol, dtype=np.float64)
    precision = factor @ factor.T
    means_c = np.ascontiguousarray(means_c, dtype=np.float64)
    offsets = means_c @ precision  # o_k = P mc_k (P symmetric)
    # [xt, 1] times this: P xt (rows :D) and mc_k.o_k - 2 o_k.xt (row D + k)
    precision_t = np.zeros((n_features + n_components, n_features + 1))
    precision_t[:n_features, :n_features] = precision
    precision_t[n_features:, :n_features] = -2.0 * offsets
    precision_t[n_features:, n_features] = np.einsum("kd,kd->k", means_c, offsets)
    upper_a, upper_b = upper_pairs(n_features)
    per_component = first_moment_pairs(n_features)
    out = (
        np.zeros(n_components),
        np.zeros((n_components, n_features)),
        np.zeros((n_features, n_features)),
        np.zeros((n_features, n_features)),
        np.zeros((n_components, n_features + 1)),
        np.zeros(len(upper_a)),
    )
    # the rows of one pattern side by side, the patterns with fewer than RUN_ROWS rows
    # in the block after the others, by their number of NaN (gaussian_missing_tied_groups)
    ordered, keys, n_frequent = pattern_groups(X, rows, keys, RUN_ROWS)
    if len(keys):
        ordered[n_frequent:], keys[n_frequent:] = by_nan_count(
            ordered[n_frequent:], keys[n_frequent:]
        )
    weight, loglik = _tied_missing_block(
        X, ordered, keys, n_frequent, np.asarray(center, dtype=np.float64), precision_t, precision,
        offsets, const, w, out, (*per_component, upper_a, upper_b),
    )  # fmt: skip
    nk, extra_sums, cross, block, firsts, seconds = out
    sums = firsts[:, :n_features] + extra_sums
    _, second = moments_from_pairs(seconds[None], upper_a, upper_b)
    return weight, loglik, nk, sums, second[0] + cross + cross.T + block
