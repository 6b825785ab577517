"""Compiled, fused exact E-step + completed-data moments of rows with NaN (any type).

The same mathematics as the NumPy reference :mod:`dask_em.families.gaussian_missing`
(Ghahramani & Jordan, 1994; Schur complements of the precision ``P_k = L_k L_k^T``),
arranged so that the work shared by all rows runs as BLAS products on the rows with
their missing entries set to the centre, and only what a row's pattern adds runs per
row, in compiled code, with no (n, K, D) temporary:

* ``xt`` = x - center with missing entries 0; one product of ``[xt, 1]`` with
  ``[L_1 .. L_K]`` over a row ``-L_k^T mc_k`` gives ``u_k = L_k^T v_k`` for ``v_k = xt -
  mc_k`` (mc_k = mu_k - center), whose missing entries are ``-mc_km`` instead of the
  reference's 0.  That changes nothing below: the Schur complement form
  (gaussian_missing, eq. 1) is the minimum of ``v^T P v`` over the missing entries,
  whatever they hold, and its minimizer moves with them (``v_m - P_mm^-1 (P v)_m`` for any ``v_m``).
* ``v^T P v = |u|^2`` and ``b = (P v)_m = (L_k u)_m`` (q x D per row and component);
  one Cholesky of the q x q ``P_mm`` gives ``c = P_mm^-1 b``, ``log |P_mm|`` and
  ``P_mm^-1``; then (gaussian_missing, eqs. 1-3)

      maha_o = |u|^2 - b.c,    log pi_k + log N(x_o | k) = const_k + 1/2 q log 2 pi
               - 1/2 log |P_mm| - 1/2 maha_o,
      E[x_m | x_o, k] - center_m = mc_km + (v_m - c) = -c,   Cov[x_m | x_o, k] = P_mm^-1.

* The completed row about the centre is ``xt + e_k`` with ``e_k = -c`` on the missing
  entries only, so its moments are those of ``xt`` (the second BLAS product
  ``(r xt)^T [xt, 1]``, as for complete rows) plus, per row, ``r e`` on the missing
  entries, the cross terms ``r xt e^T`` (D x q) and ``r (e e^T + P_mm^-1)`` (q x q).

A block's rows with NaN are those the complete-row kernel passed over (their indices);
they are visited in the order of their NaN pattern (a radix sort of its bit mask), so
that each pattern's ``P_mm`` is factored once per run of rows, and the whole block runs
in one compiled call.  Rows with nothing observed get no weight (the reference's
rule).  Moments come out about ``center`` in the form of the moments that
:func:`dask_em.families.gaussian_compiled.full_block_moments` returns, so the complete
and incomplete rows of a block add up before the family's statistics.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.jit import jit, jit_reassociated

LOG_2PI = math.log(2.0 * math.pi)

#: Rows per slice: the (rows, K*D) buffer of 256 x 128 doubles is 256 KiB.
SLICE_ROWS = 256

#: Responsibilities below this are taken as 0, as the reference does (their products
#: with the data would be subnormal numbers, each some hundred times a normal multiply).
RESPONSIBILITY_FLOOR = 1e-200


@jit
def _cholesky_inverse(a, inverse, q):
    """``inverse[:q, :q] = a^-1`` for the SPD ``a[:q, :q]`` (its Cholesky factor
    overwrites ``a``, lower); returns ``log det a``."""
    log_det = 0.0
    for j in range(q):
        s = a[j, j]
        for t in range(j):
            s -= a[j, t] * a[j, t]
        pivot = math.sqrt(s)
        a[j, j] = pivot
        log_det += 2.0 * math.log(pivot)
        for i in range(j + 1, q):
            s = a[i, j]
            for t in range(j):
                s -= a[i, t] * a[j, t]
            a[i, j] = s / pivot
    for col in range(q):  # column col of a^-1: L z = e_col, then L^T x = z
        z = inverse[col]
        for i in range(q):
            s = 1.0 if i == col else 0.0
            for t in range(i):
                s -= a[i, t] * z[t]
            z[i] = s / a[i, i]
        for i in range(q - 1, -1, -1):
            s = z[i]
            for t in range(i + 1, q):
                s -= a[t, i] * z[t]
            z[i] = s / a[i, i]
    return log_det


@jit_reassociated
def _missing_slice(xt, missing, y, factors, precisions, const, w, out, cache):
    """One slice of rows with NaN; returns (weight, loglik).

    xt (m, D + 1): x - center, missing entries 0, last column 1; missing (m, D) bool;
    y (m, K*D) ``u_k`` (column k*D + e), overwritten with ``r_ik xt_i`` (the left
    factor of the moment product); factors, precisions (K, D, D) ``L_k`` and ``P_k``;
    const (K,) the complete rows' ``log pi_k + log |P_k|^1/2 - D/2 log 2 pi``; w (m,).
    ``out`` holds nk (K,), sums (K, D), cross (K, D, D) (``sum r e xt^T``, row j a
    missing feature) and block (K, D, D), added to (module docstring).
    ``cache`` holds the last row's pattern (its missing features, then q; q = -1 for
    none yet), ``P_mm^-1`` (K, D, D) and ``log |P_mm|`` (K,) of that pattern, kept
    across slices: rows sorted by pattern solve each pattern once.
    """
    nk, sums, cross, block = out
    pattern, inverse, log_dets = cache
    m, n_features = missing.shape
    n_components = const.shape[0]
    index = np.empty(n_features, dtype=np.int64)
    u = np.empty(n_features)
    b = np.empty(n_features)
    a = np.empty((n_features, n_features))
    c = np.empty((n_components, n_features))
    lp = np.empty(n_components)
    weight = 0.0
    loglik = 0.0
    for i in range(m):
        q = 0
        for d in range(n_features):
            if missing[i, d]:
                index[q] = d
                q += 1
        if q == n_features:  # nothing observed: no weight
            for j in range(n_components * n_features):
                y[i, j] = 0.0
            continue
        same = pattern[n_features] == q
        for t in range(q):
            same = same and pattern[t] == index[t]
        if not same:
            for k in range(n_components):
                for t in range(q):
                    for t2 in range(q):
                        a[t, t2] = precisions[k, index[t], index[t2]]
                log_dets[k] = _cholesky_inverse(a, inverse[k], q)
            for t in range(q):
                pattern[t] = index[t]
            pattern[n_features] = q
        for k in range(n_components):
            base = k * n_features
            for e in range(n_features):
                u[e] = y[i, base + e]
            norm = 0.0
            for e in range(n_features):
                norm += u[e] * u[e]
            for t in range(q):
                j = index[t]
                s = 0.0
                for e in range(n_features):
                    s += factors[k, j, e] * u[e]
                b[t] = s
            for t in range(q):
                s = 0.0
                for t2 in range(q):
                    s += inverse[k, t, t2] * b[t2]
                c[k, t] = s
            quad = 0.0
            for t in range(q):
                quad += b[t] * c[k, t]
            lp[k] = const[k] + 0.5 * q * LOG_2PI - 0.5 * log_dets[k]
            lp[k] -= 0.5 * (norm - quad)
        peak = -np.inf
        for k in range(n_components):
            peak = max(peak, lp[k])
        if not np.isfinite(peak):
            peak = 0.0
        total = 0.0
        for k in range(n_components):
            lp[k] = math.exp(lp[k] - peak)
            total += lp[k]
        weight += w[i]
        loglik += w[i] * (math.log(total) + peak)
        for k in range(n_components):
            r = w[i] * (lp[k] / total)
            if r < RESPONSIBILITY_FLOOR:
                r = 0.0
            nk[k] += r
            base = k * n_features
            for d in range(n_features):
                y[i, base + d] = r * xt[i, d]
            if r == 0.0:
                continue
            for t in range(q):
                j = index[t]
                ej = -c[k, t]
                sums[k, j] += r * ej
                re = r * ej
                target = cross[k, j]  # e x^T, contiguous; second adds it and its transpose
                for d in range(n_features):
                    target[d] += re * xt[i, d]
                for t2 in range(q):
                    el = -c[k, t2]
                    block[k, j, index[t2]] += r * (ej * el + inverse[k, t, t2])
    return weight, loglik


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
def _gather_rows(X, rows, center, w, xt, missing, ws):
    """xt[i, :D] = X[rows[i]] - center with NaN as 0, missing[i] its NaN mask, ws[i] its
    weight (w (n,), or empty for unit weights)."""
    n_features = X.shape[1]
    for i in range(len(rows)):
        row = rows[i]
        ws[i] = 1.0 if w.shape[0] == 0 else w[row]
        for d in range(n_features):
            value = X[row, d]
            gone = math.isnan(value)
            missing[i, d] = gone
            xt[i, d] = 0.0 if gone else value - center[d]


def pattern_order(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` (indices into X (n, D)) reordered so that rows with the same NaN pattern
    stand side by side, in their own order within a pattern (D <= 63; above, as given).

    A least-significant-digit radix sort of the patterns' bit masks, 16 bits a pass:
    NumPy sorts 16-bit keys stably by counting, in linear time (30x faster here than
    a comparison sort of the 64-bit masks).
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_features = X.shape[1]
    if n_features > 63:
        return rows
    keys = np.empty(len(rows), dtype=np.int64)
    _pattern_keys(X, rows, keys)
    order = np.arange(len(rows))
    for shift in range(0, n_features, 16):
        digit = ((keys[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return rows[order]


@jit
def _missing_block(X, rows, center, columns, factors, precisions, const, w, out, moments):
    """The rows ``rows`` of X (n, D) (all with NaN, in pattern order) in slices of
    :data:`SLICE_ROWS`, in one compiled call; returns (weight, loglik).

    columns (D + 1, K*D): ``[L_1 .. L_K]`` over a last row ``-L_k^T mc_k``, so that one
    BLAS product of ``[xt, 1]`` with it gives ``u_k`` directly; factors, precisions,
    const, out as :func:`_missing_slice`; w (n,), or empty for unit weights;
    moments (K*D, D + 1) gets ``sum_i r_ik xt_i [xt_i, 1]^T`` (row k*D + d).
    """
    n_features = X.shape[1]
    n_components = const.shape[0]
    width = columns.shape[1]
    rows_per_slice = min(SLICE_ROWS, max(len(rows), 1))
    cache = (
        np.full(n_features + 1, -1, dtype=np.int64),
        np.empty((n_components, n_features, n_features)),
        np.empty(n_components),
    )
    xt_buffer = np.ones((rows_per_slice, n_features + 1))
    missing_buffer = np.empty((rows_per_slice, n_features), dtype=np.bool_)
    y_buffer = np.empty((rows_per_slice, width))
    ws = np.empty(rows_per_slice)
    part = np.empty((width, n_features + 1))
    weight = 0.0
    loglik = 0.0
    for start in range(0, len(rows), rows_per_slice):
        stop = min(start + rows_per_slice, len(rows))
        xt, missing = xt_buffer[: stop - start], missing_buffer[: stop - start]
        y = y_buffer[: stop - start]
        _gather_rows(X, rows[start:stop], center, w, xt, missing, ws)
        np.dot(xt, columns, y)
        part_weight, part_loglik = _missing_slice(
            xt, missing, y, factors, precisions, const, ws, out, cache
        )
        weight += part_weight
        loglik += part_loglik
        np.dot(y.T, xt, part)
        for j in range(width):
            for e in range(n_features + 1):
                moments[j, e] += part[j, e]
    return weight, loglik


def missing_block_moments(X, rows, center, prec_chol, means_c, const, w):
    """Moments about ``center`` of the rows ``rows`` of a block, which hold NaN (module
    docstring).

    X (n, D); rows (r,) int: the indices of its rows with NaN; prec_chol (K, D, D) dense
    factors ``L_k`` (``P_k = L_k L_k^T``) of every type (diag: ``diag(1/sigma_k)``); const
    (K,) the complete rows' ``log pi_k + log |P_k|^1/2 - D/2 log 2 pi`` (as
    :func:`~dask_em.families.gaussian_compiled.block_stats`); w (n,) the block's weights,
    or empty for unit weights.  Returns ``(weight, loglik, nk (K,), sums (K, D), second
    (K, D, D))`` (r weighted).
    """
    n_features = X.shape[1]
    n_components = len(means_c)
    width = n_components * n_features
    factors = np.ascontiguousarray(prec_chol, dtype=np.float64)
    precisions = factors @ factors.transpose(0, 2, 1)
    offsets = np.einsum("kd,kde->ke", means_c, factors)
    columns = np.empty((n_features + 1, width))
    columns[:n_features] = factors.transpose(1, 0, 2).reshape(n_features, width)
    columns[n_features] = -offsets.reshape(width)
    out = (
        np.zeros(n_components),
        np.zeros((n_components, n_features)),
        np.zeros((n_components, n_features, n_features)),
        np.zeros((n_components, n_features, n_features)),
    )
    moments = np.zeros((width, n_features + 1))
    # rows of one pattern side by side: each pattern's P_mm is factored once per run
    ordered = pattern_order(X, rows)
    center = np.asarray(center, dtype=np.float64)
    weight, loglik = _missing_block(
        X, ordered, center, columns, factors, precisions, const, w, out, moments
    )
    moments = moments.reshape(n_components, n_features, n_features + 1)
    nk, extra_sums, cross, block = out
    sums = moments[:, :, n_features] + extra_sums
    second = moments[:, :, :n_features] + cross + cross.transpose(0, 2, 1) + block
    return weight, loglik, nk, sums, second
