"""The squared Mahalanobis distances ``|L_k^T xc - L_k^T mc_k|^2`` of a slice, with the
product ``L_k^T xc`` fused into them where a component has its own factor.

The full kernels first formed every row's ``L_k^T xc`` (K*D values a row,
:func:`~dask_em.families.gaussian_triangular.grouped_product_by`) into a (K*D, rows) buffer,
then read it back to sum the squares
(:func:`~dask_em.families.gaussian_slice_loops.squared_distances`).  On hosts without
AVX-512, where the product runs in compiled loops anyway
(:data:`~dask_em.families.jit.WIDE_VECTORS`), :func:`_fused_distances` takes four
output features of one component a pass over the slice, as
:func:`~dask_em.families.gaussian_triangular.loop_product` does, and in the pass that
adds the group's last features it squares them into the component's distances instead
of storing them: the buffer is written only between the passes of a group wider than
four features, and read back once.  Each output is a chain of fused multiply-adds
(``contract`` only, no reordering).  One thread, AMD EPYC Zen 3, product and distances
of 131,072 rows (D=16, upper factors): float32 K=4 3.45-4.73 -> 3.11-3.55 ms, float64
K=8 16.9-18.4 -> 12.7-13.7 ms.  With AVX-512 (BLAS for the product) and with one factor
shared by every component (tied: the product is formed once, read K times) the two
steps stay apart.
"""

from __future__ import annotations

from dask_em.families.gaussian_slice_loops import squared_distances
from dask_em.families.gaussian_triangular import grouped_product_by, loop_product
from dask_em.families.jit import WIDE_VECTORS, jit, jit_fused


@jit
def product_distances(product, xt, offsets, m, out, scratch):
    """``out[k, i] = sum_e ((L_k^T xt_i)_e - offsets[k, e])^2`` for i < m.

    product: (packed, starts, groups, product rows) of
    :mod:`~dask_em.families.gaussian_triangular` for F factors (F = K, or 1 shared);
    xt (>= D, >= m) feature-major; offsets (K, D) ``L_k^T mc_k`` in xt's dtype; out (K,
    >= m) in xt's dtype; scratch (F*D, xt's columns) for the product's rows.  Fused
    (module docstring) where every component has its own factor and numba does not
    compile for AVX-512; else the product into scratch, then its squares."""
    fused = not WIDE_VECTORS and scratch.shape[0] == offsets.size  # F = K factors
    product_distances_by(product, xt, offsets, m, out, scratch, fused, WIDE_VECTORS)


@jit
def product_distances_by(product, xt, offsets, m, out, scratch, fused, by_blas):
    """:func:`product_distances`, fused if ``fused`` (one factor per component only),
    else the product (by BLAS if ``by_blas``) and then the squares: both ways tested on
    every host."""
    packed, starts, groups, rows = product
    if fused:
        _fused_distances(packed, starts, groups, xt, offsets, m, out, scratch)
    else:
        grouped_product_by(packed, starts, groups, xt, scratch, by_blas)
        squared_distances(scratch, rows, offsets, m, out)


@jit
def _fused_distances(packed, starts, groups, xt, offsets, m, out, scratch):
    """:func:`product_distances` fused, for K factors (offsets (K, D)).  Group ``(s, e,
    lo, hi)``'s product has row ``k w + t`` for component k's feature ``s + t`` (w = e - s;
    :mod:`~dask_em.families.gaussian_triangular`): four rows of one component a pass where
    w and the features read, ``hi - lo``, are multiples of four; otherwise (some groups
    when D is not, or D < 4) the group's product into scratch and its squares row by
    row."""
    n_components = offsets.shape[0]
    for k in range(n_components):
        row = out[k]
        for i in range(m):
            row[i] = 0.0
    for g in range(groups.shape[0]):
        s, e, lo, hi = groups[g, 0], groups[g, 1], groups[g, 2], groups[g, 3]
        width = e - s
        height = n_components * width
        matrix = packed[starts[g] : starts[g] + height * (hi - lo)].reshape((height, hi - lo))
        rows = scratch[n_components * s : n_components * e]
        if width % 4 == 0 and (hi - lo) % 4 == 0:
            for j in range(0, height, 4):
                k = j // width
                t = s + j % width
                _four_features_squared(matrix, j, xt, lo, rows, out[k], offsets[k, t : t + 4], m)
        else:
            loop_product(matrix, xt, lo, rows)
            for j in range(height):
                k = j // width
                _add_square(rows[j], offsets[k, s + j % width], out[k], m)


@jit_fused
def _add_square(values, offset, row, m):
    """``row[i] += (values[i] - offset)^2`` for i < m."""
    for i in range(m):
        v = values[i] - offset
        row[i] = row[i] + v * v


@jit_fused
def _four_features_squared(matrix, j, x, lo, rows, target, offsets, m):
    """Add ``sum_t (sum_c matrix[j + t, c] x[lo + c, i] - offsets[t])^2`` (t < 4) to
    target[i] for i < m: four features of one component, four input features a step;
    between steps the four running outputs wait in ``rows[j : j + 4]``, and the last
    step squares them into target instead of storing them."""
    width = matrix.shape[1]
    o0, o1, o2, o3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
    f0, f1, f2, f3 = offsets[0], offsets[1], offsets[2], offsets[3]
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
        first, last = t == 0, t + 4 == width
        if first and last:
            for i in range(m):
                v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
                e0 = a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 - f0
                e1 = b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 - f1
                e2 = c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 - f2
                e3 = d0 * v0 + d1 * v1 + d2 * v2 + d3 * v3 - f3
                target[i] = target[i] + e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3
        elif first:
            for i in range(m):
                v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
                o0[i] = a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                o1[i] = b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3
                o2[i] = c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3
                o3[i] = d0 * v0 + d1 * v1 + d2 * v2 + d3 * v3
        elif last:
            for i in range(m):
                v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
                e0 = o0[i] + a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 - f0
                e1 = o1[i] + b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 - f1
                e2 = o2[i] + c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 - f2
                e3 = o3[i] + d0 * v0 + d1 * v1 + d2 * v2 + d3 * v3 - f3
                target[i] = target[i] + e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3
        else:
            for i in range(m):
                v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
                o0[i] = o0[i] + a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                o1[i] = o1[i] + b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3
                o2[i] = o2[i] + c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3
                o3[i] = o3[i] + d0 * v0 + d1 * v1 + d2 * v2 + d3 * v3
        t += 4
