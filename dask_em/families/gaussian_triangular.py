"""The product ``L_k^T xc`` of the full/tied kernels, in groups of output features.

The precision factors are triangular: upper from a covariance
(:func:`~dask_em.families.gaussian_linalg.compute_precision_cholesky`: ``L = C^-T``
with C the lower Cholesky factor of the covariance, as scikit-learn), lower from a
given precision (:func:`~dask_em.families.gaussian_linalg.cholesky_from_precisions`).
With L upper, feature e of ``L_k^T xc`` is ``sum_{d <= e} L_k[d, e] xc_d``: it reads
the first e + 1 features only (lower: the features from e on).  One dense BLAS product
of every component's D x D factor with the slice does all D^2 products a row and
component, half of them with zeros.  Cut into groups of :data:`GROUP_FEATURES` output
features, group ``[s, e)`` reads features ``[0, e)`` (lower: ``[s, D)``): for D = 16,
160 products a row and component instead of 256, in a product per group and slice: a
BLAS call where numba compiles for AVX-512, else compiled loops
(:func:`loop_product`; :data:`~dask_em.families.jit.WIDE_VECTORS`).  One thread,
131,072 rows, the product alone by BLAS (512-row float32 and 256-row float64 slices;
AMD EPYC Zen 4):

=====================  ==========  ==============  ===================
case                   one call    groups of four  groups of two
=====================  ==========  ==============  ===================
float32 K=4 D=16       2.47 ms     1.69 ms         1.64 ms
float32 K=8 D=16       5.02        3.50            3.39
float64 K=8 D=16       9.89        6.65            6.35
float64 K=1 D=16 tied  1.36        1.10            1.17
float64 K=8 D=32       36.2        23.7            23.1
float32 K=4 D=64       62.5        21.2            (groups of 8: 22.0)
=====================  ==========  ==============  ===================

Groups of four features are near the best in every case measured (D = 4 to 64, K = 1
to 8, both dtypes; narrower groups win a little at some sizes and lose at others).
A factor with nonzeros on both sides of its diagonal takes one group, the dense product.

The product's rows come out grouped: group j (features ``[s, e)``, width ``w = e - s``)
fills rows ``F s`` to ``F e`` of yt, component k's feature ``s + t`` at row ``F s + k w
+ t`` (F factors: K, or 1 for tied); :func:`product_rows` gives that row for every
(k, feature), which the log-densities read.
"""

from __future__ import annotations

import numpy as np

from dask_em.families.jit import jit, jit_reassociated

#: Output features per product (a BLAS call or :func:`loop_product`) of
#: :func:`grouped_product_by` (module docstring; the fused product of
#: :mod:`~dask_em.families.gaussian_fused_product` takes four features a pass too).
GROUP_FEATURES = 4


def factor_groups(factors: np.ndarray) -> np.ndarray:
    """groups (G, 4) int64 for factors (F, D, D): per group of output features ``[s, e)``
    the features ``[lo, hi)`` it reads, as rows ``(s, e, lo, hi)``.  Groups of
    :data:`GROUP_FEATURES` where every factor is upper triangular (zeros below the
    diagonal, exactly: ``lo = 0, hi = e``) or every one lower (``lo = s, hi = D``); else
    one group ``(0, D, 0, D)``, the dense product."""
    n_features = factors.shape[-1]
    upper = not np.any(np.tril(factors, -1))
    lower = not np.any(np.triu(factors, 1))
    if not (upper or lower) or n_features <= GROUP_FEATURES:
        return np.array([[0, n_features, 0, n_features]], dtype=np.int64)
    starts = np.arange(0, n_features, GROUP_FEATURES)
    ends = np.minimum(starts + GROUP_FEATURES, n_features)
    if upper:
        return np.stack([starts, ends, np.zeros_like(starts), ends], axis=1).astype(np.int64)
    return np.stack([starts, ends, starts, np.full_like(starts, n_features)], axis=1).astype(
        np.int64
    )


def packed_factors(factors: np.ndarray, groups: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(packed (S,), starts (G,) int64)``: for each group ``(s, e, lo, hi)`` of
    :func:`factor_groups`, the matrix (F w, hi - lo) whose row ``k w + t`` is column
    ``s + t`` of ``factors[k]`` (F, D, D), rows lo:hi (what :func:`grouped_product_by`
    multiplies features lo:hi by), C-ordered from ``packed[starts[j]]``, in ``dtype``."""
    n_factors = factors.shape[0]
    pieces = []
    for s, e, lo, hi in groups:
        # block[k, t, d] = L_k[lo + d, s + t]: column s + t of factor k, rows lo:hi
        block = factors[:, lo:hi, s:e].transpose(0, 2, 1)
        pieces.append(block.reshape(n_factors * (e - s), hi - lo).ravel())
    sizes = np.array([len(piece) for piece in pieces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return np.ascontiguousarray(np.concatenate(pieces), dtype=dtype), starts


def product_rows(n_factors: int, n_components: int, groups: np.ndarray) -> np.ndarray:
    """rows (K, D) int64: the row of :func:`grouped_product_by`'s output that holds feature d
    of component k's ``L_k^T xc`` (module docstring); with one factor (tied,
    ``n_factors`` 1) every component reads the same rows."""
    n_features = int(groups[-1, 1])
    rows = np.empty((n_components, n_features), dtype=np.int64)
    for s, e, _, _ in groups:
        width = e - s
        for k in range(n_components):
            factor = k if n_factors > 1 else 0
            rows[k, s:e] = n_factors * s + factor * width + np.arange(width)
    return rows


@jit
def grouped_product_by(packed, starts, groups, xt, yt, by_blas):
    """yt (F D, m) = the products of :func:`packed_factors`'s matrices with the features
    of xt (>= D, m) feature-major that each group reads: one BLAS call (numba's
    ``np.dot``) a group if by_blas, else :func:`loop_product` a group.  The kernels pass
    :data:`~dask_em.families.jit.WIDE_VECTORS` (BLAS where numba compiles for AVX-512)
    or fuse the product into the squared distances
    (:mod:`~dask_em.families.gaussian_fused_product`); both ways are tested on every
    host."""
    n_factors = yt.shape[0] // groups[-1, 1]
    for j in range(groups.shape[0]):
        s, e, lo, hi = groups[j, 0], groups[j, 1], groups[j, 2], groups[j, 3]
        height = n_factors * (e - s)
        matrix = packed[starts[j] : starts[j] + height * (hi - lo)].reshape((height, hi - lo))
        if by_blas:
            np.dot(matrix, xt[lo:hi], yt[n_factors * s : n_factors * e])
        else:
            loop_product(matrix, xt, lo, yt[n_factors * s : n_factors * e])


@jit
def loop_product(matrix, xt, lo, out):
    """out (H, m) = matrix (H, W) @ xt[lo : lo + W] (xt (>= lo + W, m) feature-major), in
    compiled loops: four rows of out a pass over the slice, four features a step.

    OpenBLAS's Haswell-class kernels (hosts without AVX-512) pack both operands of every
    call, which for these products (16 x 4 to 16 x 16 matrices, 256 or 512 columns)
    costs more than the arithmetic: one thread, AMD EPYC Zen 3, per 131,072 rows, float32
    K=4 D=16 2.9-5.2 ms here against 6.2-8.4 ms by BLAS; float64 K=8 16.5-17.1 against
    17.1-22.5 ms.  With AVX-512 (SkylakeX-class kernels, which multiply small matrices
    without packing) BLAS took 1.7 and 6.7 ms (Zen 4), so it keeps them there."""
    height = out.shape[0]
    width = matrix.shape[1]
    if xt.shape[1] < out.shape[1] or xt.shape[0] < lo + width or matrix.shape[0] != height:
        raise ValueError("loop_product: out (H, m) needs matrix (H, W) and xt (>= lo + W, >= m)")
    j = 0
    while j + 4 <= height:
        _four_rows(matrix, j, xt, lo, width, out)
        j += 4
    while j < height:
        _one_row(matrix, j, xt, lo, width, out)
        j += 1


@jit_reassociated
def _four_rows(matrix, j, x, lo, width, out):
    """Rows j to j + 3 of :func:`loop_product`: each step adds four features' terms to
    four rows of out, so a row of out is loaded and stored once per four features and
    each feature's values are read once per four rows."""
    o0, o1, o2, o3 = out[j], out[j + 1], out[j + 2], out[j + 3]
    m = out.shape[1]
    for i in range(m):
        o0[i] = o1[i] = o2[i] = o3[i] = 0.0
    t = 0
    while t + 4 <= width:
        x0, x1, x2, x3 = x[lo + t], x[lo + t + 1], x[lo + t + 2], x[lo + t + 3]
        a0, a1, a2, a3 = matrix[j, t], matrix[j, t + 1], matrix[j, t + 2], matrix[j, t + 3]
        b0, b1 = matrix[j + 1, t], matrix[j + 1, t + 1]
        b2, b3 = matrix[j + 1, t + 2], matrix[j + 1, t + 3]
        c0, c1 = matrix[j + 2, t], matrix[j + 2, t + 1]
        c2, c3 = matrix[j + 2, t + 2], matrix[j + 2, t + 3]
        d0, d1 = matrix[j + 3, t], matrix[j + 3, t + 1]
        d2, d3 = matrix[j + 3, t + 2], matrix[j + 3, t + 3]
        for i in range(m):
            v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
            o0[i] += (a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)
            o1[i] += (b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)
            o2[i] += (c0 * v0 + c1 * v1) + (c2 * v2 + c3 * v3)
            o3[i] += (d0 * v0 + d1 * v1) + (d2 * v2 + d3 * v3)
        t += 4
    while t < width:
        v = x[lo + t]
        a0, b0, c0, d0 = matrix[j, t], matrix[j + 1, t], matrix[j + 2, t], matrix[j + 3, t]
        for i in range(m):
            o0[i] += a0 * v[i]
            o1[i] += b0 * v[i]
            o2[i] += c0 * v[i]
            o3[i] += d0 * v[i]
        t += 1


@jit_reassociated
def _one_row(matrix, j, x, lo, width, out):
    """Row j of :func:`loop_product` (the rows past a multiple of four)."""
    row = out[j]
    m = out.shape[1]
    for i in range(m):
        row[i] = 0.0
    for t in range(width):
        a, v = matrix[j, t], x[lo + t]
        for i in range(m):
            row[i] += a * v[i]
