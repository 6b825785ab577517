"""The per-slice loops of the Gaussian kernels (complete rows; :func:`pair_moments`
also for the rows with NaN), several features or components per pass over the
slice's rows.

The kernels of :mod:`dask_em.families.gaussian_compiled` hold a slice feature-major, so
each loop here runs over the slice's rows, contiguous, and vectorizes.  A loop that
adds one feature's term to a row of log-densities loads and stores that row once per
feature; taking four features per pass loads and stores it a quarter as often, and a
loop that adds one component's moments reads the feature's values once per component;
taking two components per pass reads them half as often.  On a 250,000-row block (K=8,
D=16, one thread) that took the diag log-densities from 4.4 to 3.9 ms (float32: 3.2 to
2.0) and the diag moments from 3.8 to 3.1 ms (float32: 2.3 to 1.8).  The sums are the
same terms in another order (the kernels are compiled with reassociation allowed).
The moment sums of the full and tied kernels (:func:`pair_moments`) take four
components and four pairs of features per pass (two pairs on hosts without AVX-512,
:data:`PAIRS_PER_PASS`), for the same reason.  How many rows a
slice holds is :func:`slice_rows`' choice.
"""

from __future__ import annotations

import numpy as np

from dask_em.families.jit import WIDE_VECTORS, jit_reassociated

#: Rows per slice: a slice's buffers are feature-major ((D, rows), (K, rows), and for
#: full (K*D, rows)), so every compiled loop runs over ``rows`` contiguous values
#: (vectorized); 256 rows of K*D = 128 doubles is 256 KiB, within a core's L2 cache.
#: float32 slices may be longer (:func:`slice_rows`).
SLICE_ROWS = 256

#: float32 slices of twice :data:`SLICE_ROWS` rows, where a full/tied slice's feature
#: rows and responsibilities ((D + 1 + K) rows, which its pair sums read again and
#: again) take at most this many bytes (:func:`slice_rows`).
FLOAT32_SLICE_BYTES = 48 * 1024


def slice_rows(n_rows: int, compute_dtype, loop_rows: int = 0) -> int:
    """Rows per slice of a block of n_rows: :data:`SLICE_ROWS`, or twice as many in
    float32 where ``loop_rows`` rows of the slice (full/tied: D + 1 + K; diag: 0) take at
    most :data:`FLOAT32_SLICE_BYTES`.  A float32 vector holds twice the values, so a
    slice's loops and its BLAS call cost the same set-up for twice the rows.  One
    thread, 131,072-row blocks, 512 against 256 rows: full float32 K=4 D=16 0.95x
    ((D + 1 + K) rows of 2 KiB: 42 KiB), K=2 D=16 0.95x, K=4 D=8 0.91x, K=8 D=8 0.95x,
    but K=8 D=16 (50 KiB) 1.09x; diag float32 0.91x (K=4, 8, 16; D=16); float64 1.03-1.16x
    in every case (full K=2-8, diag K=8)."""
    rows = SLICE_ROWS
    if np.dtype(compute_dtype) == np.float32 and loop_rows * 2 * rows * 4 <= FLOAT32_SLICE_BYTES:
        rows = 2 * rows
    return min(rows, max(n_rows, 1))


#: Features whose squared terms one pass over a slice adds to its log-densities.
FEATURES_PER_PASS = 4


@jit_reassociated
def add_scaled_squares(row, x, centres, scales, start, stop, m):
    """``row[i] += sum_{d in [start, stop)} ((x[d, i] - centres[d]) * scales[d])^2`` for
    i < m, four features per pass over the rows.  row (>= m,); x (>= stop, >= m)
    feature-major; centres, scales (>= stop,), in x's dtype (the difference is taken
    first, as the reference does)."""
    d = start
    while d + FEATURES_PER_PASS <= stop:
        x0, x1, x2, x3 = x[d], x[d + 1], x[d + 2], x[d + 3]
        c0, c1, c2, c3 = centres[d], centres[d + 1], centres[d + 2], centres[d + 3]
        s0, s1, s2, s3 = scales[d], scales[d + 1], scales[d + 2], scales[d + 3]
        for i in range(m):
            v0 = (x0[i] - c0) * s0
            v1 = (x1[i] - c1) * s1
            v2 = (x2[i] - c2) * s2
            v3 = (x3[i] - c3) * s3
            row[i] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
        d += FEATURES_PER_PASS
    while d < stop:
        xd, c, s = x[d], centres[d], scales[d]
        for i in range(m):
            v = (xd[i] - c) * s
            row[i] += v * v
        d += 1


@jit_reassociated
def diag_log_densities(xct, means_c, scales, const, m, squares_sum, lp):
    """``lp[k, i] = const_k - 1/2 sum_d ((xct[d, i] - means_c[k, d]) * scales[k, d])^2``
    for i < m.  xct (D, >= m) feature-major; means_c, scales (K, D) in xct's dtype (the
    compute dtype); const (K,); squares_sum (K, >= m) scratch of that dtype; lp (K, >=
    m) of the compute dtype too."""
    n_components, n_features = means_c.shape
    zero = means_c[0, 0] - means_c[0, 0]  # 0 in the compute dtype
    for k in range(n_components):
        row = squares_sum[k]
        for i in range(m):
            row[i] = zero
        add_scaled_squares(row, xct, means_c[k], scales[k], 0, n_features, m)
        target = lp[k]
        for i in range(m):
            target[i] = const[k] - 0.5 * row[i]


@jit_reassociated
def squared_distances(yt, rows, offsets, m, out):
    """``out[k, i] = sum_e (yt[rows[k, e], i] - offsets[k, e])^2`` for i < m: each row's
    ``v_k^T P_k v_k = |L_k^T v_k|^2`` (``v_k = xc - mc_k``).

    yt (F*D, >= m) ``(L_k^T xc_i)_e`` at row ``rows[k, e]`` (K, D) int64 (F = K, or 1 for
    one factor shared by every component, tied:
    :func:`~dask_em.families.gaussian_triangular.product_rows`); offsets (K, D) ``L_k^T
    mc_k`` in yt's dtype; out (K, >= m) of yt's dtype (the squares add up in it)."""
    n_components, n_features = offsets.shape
    for k in range(n_components):
        row = out[k]
        for i in range(m):
            row[i] = 0.0
        at = rows[k]
        d = 0
        while d + FEATURES_PER_PASS <= n_features:
            y0, y1, y2, y3 = yt[at[d]], yt[at[d + 1]], yt[at[d + 2]], yt[at[d + 3]]
            o0, o1, o2, o3 = offsets[k, d], offsets[k, d + 1], offsets[k, d + 2], offsets[k, d + 3]
            for i in range(m):
                v0 = y0[i] - o0
                v1 = y1[i] - o1
                v2 = y2[i] - o2
                v3 = y3[i] - o3
                row[i] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
            d += FEATURES_PER_PASS
        while d < n_features:
            y, o = yt[at[d]], offsets[k, d]
            for i in range(m):
                v = y[i] - o
                row[i] += v * v
            d += 1


@jit_reassociated
def log_densities_from_distances(const, m, lp):
    """``lp[k, i] = const_k - 1/2 lp[k, i]`` for i < m: the log-densities from the squared
    distances of :func:`squared_distances` (or
    :func:`~dask_em.families.gaussian_fused_product.product_distances`); const (K,)."""
    for k in range(lp.shape[0]):
        row = lp[k]
        for i in range(m):
            row[i] = const[k] - 0.5 * row[i]


@jit_reassociated
def diag_moments(resp, xct, m, sums, second, zero):
    """``sums[k, d] += sum_i resp[k, i] xct[d, i]`` and ``second[k, d] += sum_i resp[k, i]
    xct[d, i]^2`` over i < m, two components per pass over a feature's values.

    resp (K, >= m) and xct (D, >= m) in the compute dtype (each pass's sums in it);
    sums, second (K, D) float64; zero: 0 in the compute dtype (the buffers may hold
    anything past column m)."""
    n_components = resp.shape[0]
    n_features = xct.shape[0]
    k = 0
    while k + 2 <= n_components:
        r0, r1 = resp[k], resp[k + 1]
        for d in range(n_features):
            x = xct[d]
            first0 = zero
            squares0 = zero
            first1 = zero
            squares1 = zero
            for i in range(m):
                value = x[i]
                v0 = r0[i] * value
                v1 = r1[i] * value
                first0 += v0
                squares0 += v0 * value
                first1 += v1
                squares1 += v1 * value
            sums[k, d] += first0
            second[k, d] += squares0
            sums[k + 1, d] += first1
            second[k + 1, d] += squares1
        k += 2
    if k < n_components:  # an odd K: the last component alone
        r = resp[k]
        for d in range(n_features):
            x = xct[d]
            first = zero
            squares = zero
            for i in range(m):
                v = r[i] * x[i]
                first += v
                squares += v * x[i]
            sums[k, d] += first
            second[k, d] += squares


#: Components whose moments one pass of :func:`pair_moments` adds (four, times four
#: pairs: sixteen running sums, held in vector registers across the slice's rows).
COMPONENTS_PER_PASS = 4

#: (feature, feature) pairs one pass of :func:`pair_moments` takes: four with AVX-512's
#: 32 vector registers, two on hosts with 16 (AVX2), where sixteen running sums and
#: their operands spilled to memory: one thread, AMD EPYC Zen 3, a 512-row float32 slice
#: (K=4, D=16) 13.3 us with four pairs, 10.6 us with two; a 256-row float64 one (K=8)
#: 31.5 and 22.8 us (:data:`~dask_em.families.jit.WIDE_VECTORS`).
PAIRS_PER_PASS = 4 if WIDE_VECTORS else 2


@jit_reassociated
def pair_moments(r, xt, m, first, second, out, zero):
    """``out[k, p] = sum_{i < m} r[k, i] xt[first[p], i] xt[second[p], i]`` (out is
    overwritten, not added to).

    The moment product of the full and tied kernels: with xt (F, >= m) feature-major,
    its last row all 1, and the pairs ``first[p] <= second[p]`` of the upper triangle,
    out holds each component's second moments ``sum_i r_ik xc_i xc_i^T`` (each pair
    once: half the products of the dense ``(r xc)^T [xc, 1]``) and, in the pairs with
    the row of ones, its first moments.  r (K, >= m) and out (K, P) in xt's dtype, the
    compute dtype; first, second (P,) int64; zero: 0 in that dtype.  Four components
    and :data:`PAIRS_PER_PASS` pairs a pass over the rows (sixteen or eight sums; the
    pair products ``xt[first] xt[second]`` formed once for four components); components
    past a multiple of four one at a time.  On a 256-row slice (K=8, D=16, one thread,
    AMD EPYC Zen 4) this took 8.7 us in float32 and 15.9 us in float64 where ``r xc``
    and the BLAS product took 13.5 and 26.8 us.
    """
    n_components = r.shape[0]
    k = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
    while k + COMPONENTS_PER_PASS <= n_components:
        if PAIRS_PER_PASS == 4:
            _four_components(r, k, xt, m, first, second, out, zero)
        else:
            _four_components_two_pairs(r, k, xt, m, first, second, out, zero)
        k += COMPONENTS_PER_PASS
    while k < n_components:
        _one_component(r[k], xt, m, first, second, out[k], zero)
        k += 1


@jit_reassociated
def summed_pair_moments(r, xt, m, first, second, total, out, zero):
    """:func:`pair_moments` weighted by each row's total ``sum_k r[k, i]`` (r (K, >= m)),
    into out (1, P): ``sum_i (sum_k r_ik) xt[first[p], i] xt[second[p], i]``, the second
    moments summed over the components that a tied covariance needs.  total (1, >= m)
    scratch; zero: 0 in r's dtype."""
    row_total = total[0]
    for i in range(m):
        row_total[i] = zero
    for k in range(r.shape[0]):
        for i in range(m):
            row_total[i] += r[k, i]
    pair_moments(total, xt, m, first, second, out, zero)


@jit_reassociated
def _four_components(r, k, xt, m, first, second, out, zero):
    """:func:`pair_moments` of components k..k+3, four pairs a pass (the last pass of
    an uneven pair list takes its last pair again: the same sum written twice)."""
    n_pairs = first.shape[0]
    r0, r1, r2, r3 = r[k], r[k + 1], r[k + 2], r[k + 3]
    for p in range(0, n_pairs, 4):
        q0, q1 = p, min(p + 1, n_pairs - 1)
        q2, q3 = min(p + 2, n_pairs - 1), min(p + 3, n_pairs - 1)
        u0, v0, u1, v1 = xt[first[q0]], xt[second[q0]], xt[first[q1]], xt[second[q1]]
        u2, v2, u3, v3 = xt[first[q2]], xt[second[q2]], xt[first[q3]], xt[second[q3]]
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
        for i in range(m):
            x0, x1, x2, x3 = u0[i] * v0[i], u1[i] * v1[i], u2[i] * v2[i], u3[i] * v3[i]
            w0, w1, w2, w3 = r0[i], r1[i], r2[i], r3[i]
            a00 += w0 * x0
            a01 += w0 * x1
            a02 += w0 * x2
            a03 += w0 * x3
            a10 += w1 * x0
            a11 += w1 * x1
            a12 += w1 * x2
            a13 += w1 * x3
            a20 += w2 * x0
            a21 += w2 * x1
            a22 += w2 * x2
            a23 += w2 * x3
            a30 += w3 * x0
            a31 += w3 * x1
            a32 += w3 * x2
            a33 += w3 * x3
        out[k, q0], out[k, q1], out[k, q2], out[k, q3] = a00, a01, a02, a03
        out[k + 1, q0], out[k + 1, q1], out[k + 1, q2], out[k + 1, q3] = a10, a11, a12, a13
        out[k + 2, q0], out[k + 2, q1], out[k + 2, q2], out[k + 2, q3] = a20, a21, a22, a23
        out[k + 3, q0], out[k + 3, q1], out[k + 3, q2], out[k + 3, q3] = a30, a31, a32, a33


@jit_reassociated
def _four_components_two_pairs(r, k, xt, m, first, second, out, zero):
    """:func:`_four_components` two pairs a pass (eight running sums: hosts with 16 vector
    registers, :data:`PAIRS_PER_PASS`)."""
    n_pairs = first.shape[0]
    r0, r1, r2, r3 = r[k], r[k + 1], r[k + 2], r[k + 3]
    for p in range(0, n_pairs, 2):
        q0, q1 = p, min(p + 1, n_pairs - 1)
        u0, v0, u1, v1 = xt[first[q0]], xt[second[q0]], xt[first[q1]], xt[second[q1]]
        a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = zero
        for i in range(m):
            x0, x1 = u0[i] * v0[i], u1[i] * v1[i]
            w0, w1, w2, w3 = r0[i], r1[i], r2[i], r3[i]
            a00 += w0 * x0
            a01 += w0 * x1
            a10 += w1 * x0
            a11 += w1 * x1
            a20 += w2 * x0
            a21 += w2 * x1
            a30 += w3 * x0
            a31 += w3 * x1
        out[k, q0], out[k, q1] = a00, a01
        out[k + 1, q0], out[k + 1, q1] = a10, a11
        out[k + 2, q0], out[k + 2, q1] = a20, a21
        out[k + 3, q0], out[k + 3, q1] = a30, a31


@jit_reassociated
def _one_component(r, xt, m, first, second, out, zero):
    """:func:`pair_moments` of one component (r (>= m,), out (P,)), four pairs a pass."""
    n_pairs = first.shape[0]
    for p in range(0, n_pairs, 4):
        q0, q1 = p, min(p + 1, n_pairs - 1)
        q2, q3 = min(p + 2, n_pairs - 1), min(p + 3, n_pairs - 1)
        u0, v0, u1, v1 = xt[first[q0]], xt[second[q0]], xt[first[q1]], xt[second[q1]]
        u2, v2, u3, v3 = xt[first[q2]], xt[second[q2]], xt[first[q3]], xt[second[q3]]
        a0 = a1 = a2 = a3 = zero
        for i in range(m):
            w = r[i]
            a0 += w * (u0[i] * v0[i])
            a1 += w * (u1[i] * v1[i])
            a2 += w * (u2[i] * v2[i])
            a3 += w * (u3[i] * v3[i])
        out[q0], out[q1], out[q2], out[q3] = a0, a1, a2, a3


def upper_pairs(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) (P,) int64: the pairs ``first <= second`` of ``n_features + 1``
    features (the last one a row of ones), row by row, for :func:`pair_moments`;
    P = (D + 1)(D + 2)/2."""
    first, second = np.triu_indices(n_features + 1)
    return first.astype(np.int64), second.astype(np.int64)


def first_moment_pairs(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) (D + 1,) int64: the pairs ``(d, D)`` of each feature with the row
    of ones, for :func:`pair_moments`: the first moments ``sum_i r_ik xt[d, i]`` alone (the
    last, ``sum_i r_ik``), where a tied covariance needs no per-component second moments."""
    return (
        np.arange(n_features + 1, dtype=np.int64),
        np.full(n_features + 1, n_features, dtype=np.int64),
    )


def moments_from_pairs(
    pairs: np.ndarray, first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(sums (K, D), second moments (K, D, D))`` from the sums of :func:`pair_moments`
    over a block, pairs (K, P) as :func:`upper_pairs` orders them."""
    n_components = pairs.shape[0]
    n_features = int(first.max())  # the row of ones is feature D
    square = np.empty((n_components, n_features + 1, n_features + 1))
    square[:, first, second] = pairs
    square[:, second, first] = pairs
    return square[:, :n_features, n_features].copy(), square[:, :n_features, :n_features].copy()
