"""Inverses and log-determinants of small SPD blocks of K precisions, in closed form.

A row of the missing-value E-step (:mod:`dask_em.families.gaussian_missing_runs`) needs,
for its pattern of q missing features and every component k, ``P_mm^-1`` and ``log
|P_mm|`` of the q x q block ``P_mm = P_k[m][:, m]``.  At 10% of the values missing at
random with D=16, 99.6% of the rows with NaN have q <= 5, and most patterns with q >= 3
occur once or twice in a 62,500-row block, so each is factored for a row or two.  The lockstep
Cholesky (:func:`~dask_em.families.gaussian_missing_runs.cholesky_inverses`) runs
dozens of loops of K steps there, whose set-up costs more than their arithmetic (K=8:
0.64 us at q=3, 0.9 us at q=4, 1.7 us at q=5).  Here each q <= 5 is one loop over the
components with a straight-line body (used for the runs of a pattern; the rows of
patterns rare in a block, one row a pattern, take
:mod:`dask_em.families.gaussian_missing_lockstep`'s lockstep factors, laid out
component-last, which took as long as these closed forms and their transpose there):

* q = 1, 2: ``1/a``; the adjugate ``[[d, -b], [-b, a]] / (ad - b^2)``;
* q = 3: the adjugate (cofactors) over the determinant;
* q = 4: by 2 x 2 blocks ``[[A, B], [B^T, C]]``: with ``G = A^-1 B`` and the Schur
  complement ``S = C - B^T G`` (SPD when the block is), ``H = G S^-1``, the inverse is
  ``[[A^-1 + H G^T, -H], [-H^T, S^-1]]`` and ``det = det A det S``;
* q = 5: the same with A 3 x 3 (its adjugate) and C 2 x 2.

For SPD blocks these are block Gaussian elimination without pivoting, which is stable
there; the NumPy reference (:mod:`dask_em.families.gaussian_missing`) uses closed forms
for q <= 3 too.  A determinant outside [1e-300, 1e300] (its log would need the
rescaling the Cholesky path does) returns False so that the caller takes that path.
"""

from __future__ import annotations

import math

from dask_em.families.jit import jit

#: The largest q done in closed form here.
LARGEST_CLOSED_FORM = 5


@jit
def _inverse_2(a, b, d):
    """(det, and the inverse's entries 00, 01, 11) of ``[[a, b], [b, d]]``."""
    det = a * d - b * b
    r = 1.0 / det
    return det, d * r, -b * r, a * r


@jit
def _times_2(g0, g1, s00, s01, s11):
    """The row ``[g0, g1]`` times the symmetric ``[[s00, s01], [s01, s11]]``."""
    return g0 * s00 + g1 * s01, g0 * s01 + g1 * s11


@jit
def _store_coupling(inverse, k, i, n, h0, h1):
    """Row i's entries of the off-diagonal block ``-H`` (columns n, n + 1), and their
    mirror image."""
    inverse[k, i, n] = -h0
    inverse[k, i, n + 1] = -h1
    inverse[k, n, i] = -h0
    inverse[k, n + 1, i] = -h1


@jit
def _store_symmetric_2(inverse, k, n, s00, s01, s11):
    """The symmetric 2 x 2 block ``[[s00, s01], [s01, s11]]`` at rows and columns n, n + 1."""
    inverse[k, n, n] = s00
    inverse[k, n, n + 1] = s01
    inverse[k, n + 1, n] = s01
    inverse[k, n + 1, n + 1] = s11


@jit
def _inverses_1(precisions, i0, inverse, dets):
    for k in range(precisions.shape[0]):
        a = precisions[k, i0, i0]
        inverse[k, 0, 0] = 1.0 / a
        dets[k] = a


@jit
def _inverses_2(precisions, i0, i1, inverse, dets):
    for k in range(precisions.shape[0]):
        a = precisions[k, i0, i0]
        b = precisions[k, i0, i1]
        d = precisions[k, i1, i1]
        det, i00, i01, i11 = _inverse_2(a, b, d)
        _store_symmetric_2(inverse, k, 0, i00, i01, i11)
        dets[k] = det


@jit
def _inverses_3(precisions, i0, i1, i2, inverse, dets):
    for k in range(precisions.shape[0]):
        a = precisions[k, i0, i0]
        b = precisions[k, i0, i1]
        c = precisions[k, i0, i2]
        d = precisions[k, i1, i1]
        e = precisions[k, i1, i2]
        f = precisions[k, i2, i2]
        # cofactors of [[a, b, c], [b, d, e], [c, e, f]]
        c00 = d * f - e * e
        c01 = c * e - b * f
        c02 = b * e - c * d
        c11 = a * f - c * c
        c12 = b * c - a * e
        c22 = a * d - b * b
        det = a * c00 + b * c01 + c * c02
        r = 1.0 / det
        inverse[k, 0, 0] = c00 * r
        inverse[k, 0, 1] = c01 * r
        inverse[k, 0, 2] = c02 * r
        inverse[k, 1, 0] = c01 * r
        inverse[k, 1, 1] = c11 * r
        inverse[k, 1, 2] = c12 * r
        inverse[k, 2, 0] = c02 * r
        inverse[k, 2, 1] = c12 * r
        inverse[k, 2, 2] = c22 * r
        dets[k] = det


@jit
def _inverses_4(precisions, index, inverse, dets):
    i0, i1, i2, i3 = index[0], index[1], index[2], index[3]
    for k in range(precisions.shape[0]):
        p = precisions[k]
        # A = [[a00, a01], [a01, a11]], B = [[b00, b01], [b10, b11]], C = [[c00, c01], [c01, c11]]
        a00, a01, a11 = p[i0, i0], p[i0, i1], p[i1, i1]
        b00, b01, b10, b11 = p[i0, i2], p[i0, i3], p[i1, i2], p[i1, i3]
        c00, c01, c11 = p[i2, i2], p[i2, i3], p[i3, i3]
        det_a, ia00, ia01, ia11 = _inverse_2(a00, a01, a11)
        g00 = ia00 * b00 + ia01 * b10  # G = A^-1 B
        g01 = ia00 * b01 + ia01 * b11
        g10 = ia01 * b00 + ia11 * b10
        g11 = ia01 * b01 + ia11 * b11
        s00 = c00 - (b00 * g00 + b10 * g10)  # S = C - B^T G
        s01 = c01 - (b00 * g01 + b10 * g11)
        s11 = c11 - (b01 * g01 + b11 * g11)
        det_s, is00, is01, is11 = _inverse_2(s00, s01, s11)
        h00, h01 = _times_2(g00, g01, is00, is01, is11)  # H = G S^-1
        h10, h11 = _times_2(g10, g11, is00, is01, is11)
        t01 = ia01 + h00 * g10 + h01 * g11
        inverse[k, 0, 0] = ia00 + h00 * g00 + h01 * g01
        inverse[k, 0, 1] = t01
        inverse[k, 1, 0] = t01
        inverse[k, 1, 1] = ia11 + h10 * g10 + h11 * g11
        _store_coupling(inverse, k, 0, 2, h00, h01)
        _store_coupling(inverse, k, 1, 2, h10, h11)
        _store_symmetric_2(inverse, k, 2, is00, is01, is11)
        dets[k] = det_a * det_s


@jit
def _inverses_5(precisions, index, inverse, dets):
    i0, i1, i2, i3, i4 = index[0], index[1], index[2], index[3], index[4]
    for k in range(precisions.shape[0]):
        p = precisions[k]
        # A (3 x 3) = [[a, b, c], [b, d, e], [c, e, f]], B (3 x 2), C (2 x 2)
        a, b, c = p[i0, i0], p[i0, i1], p[i0, i2]
        d, e, f = p[i1, i1], p[i1, i2], p[i2, i2]
        b00, b01, b10, b11, b20, b21 = (
            p[i0, i3],
            p[i0, i4],
            p[i1, i3],
            p[i1, i4],
            p[i2, i3],
            p[i2, i4],
        )
        c00, c01, c11 = p[i3, i3], p[i3, i4], p[i4, i4]
        m00 = d * f - e * e  # A's cofactors
        m01 = c * e - b * f
        m02 = b * e - c * d
        det_a = a * m00 + b * m01 + c * m02
        r = 1.0 / det_a
        ia00, ia01, ia02 = m00 * r, m01 * r, m02 * r
        ia11, ia12, ia22 = (a * f - c * c) * r, (b * c - a * e) * r, (a * d - b * b) * r
        g00 = ia00 * b00 + ia01 * b10 + ia02 * b20  # G = A^-1 B (3 x 2)
        g01 = ia00 * b01 + ia01 * b11 + ia02 * b21
        g10 = ia01 * b00 + ia11 * b10 + ia12 * b20
        g11 = ia01 * b01 + ia11 * b11 + ia12 * b21
        g20 = ia02 * b00 + ia12 * b10 + ia22 * b20
        g21 = ia02 * b01 + ia12 * b11 + ia22 * b21
        s00 = c00 - (b00 * g00 + b10 * g10 + b20 * g20)  # S = C - B^T G
        s01 = c01 - (b00 * g01 + b10 * g11 + b20 * g21)
        s11 = c11 - (b01 * g01 + b11 * g11 + b21 * g21)
        det_s, is00, is01, is11 = _inverse_2(s00, s01, s11)
        h00, h01 = _times_2(g00, g01, is00, is01, is11)  # H = G S^-1
        h10, h11 = _times_2(g10, g11, is00, is01, is11)
        h20, h21 = _times_2(g20, g21, is00, is01, is11)
        t01 = ia01 + h00 * g10 + h01 * g11  # A^-1 + H G^T
        t02 = ia02 + h00 * g20 + h01 * g21
        t12 = ia12 + h10 * g20 + h11 * g21
        inverse[k, 0, 0] = ia00 + h00 * g00 + h01 * g01
        inverse[k, 1, 1] = ia11 + h10 * g10 + h11 * g11
        inverse[k, 2, 2] = ia22 + h20 * g20 + h21 * g21
        inverse[k, 0, 1] = t01
        inverse[k, 1, 0] = t01
        inverse[k, 0, 2] = t02
        inverse[k, 2, 0] = t02
        inverse[k, 1, 2] = t12
        inverse[k, 2, 1] = t12
        _store_coupling(inverse, k, 0, 3, h00, h01)
        _store_coupling(inverse, k, 1, 3, h10, h11)
        _store_coupling(inverse, k, 2, 3, h20, h21)
        _store_symmetric_2(inverse, k, 3, is00, is01, is11)
        dets[k] = det_a * det_s


@jit
def small_inverses(precisions, index, q, inverse, log_dets):
    """``inverse[k, :q, :q] = P_mm^-1`` and ``log_dets[k] = log |P_mm|`` for ``P_mm =
    precisions[k][index[:q]][:, index[:q]]`` (precisions (K, D, D) SPD, inverse (K, >= q,
    >= q), log_dets (K,)) when 1 <= q <= :data:`LARGEST_CLOSED_FORM` and every
    determinant lies in [1e-300, 1e300]; returns whether it did (else the caller
    factors the blocks itself; what was written is then overwritten)."""
    if q == 1:
        _inverses_1(precisions, index[0], inverse, log_dets)
    elif q == 2:
        _inverses_2(precisions, index[0], index[1], inverse, log_dets)
    elif q == 3:
        _inverses_3(precisions, index[0], index[1], index[2], inverse, log_dets)
    elif q == 4:
        _inverses_4(precisions, index, inverse, log_dets)
    elif q == 5:
        _inverses_5(precisions, index, inverse, log_dets)
    else:
        return False
    for k in range(precisions.shape[0]):
        det = log_dets[k]
        if not (1e-300 <= det <= 1e300):  # also NaN: not positive definite, or out of range
            return False
    for k in range(precisions.shape[0]):
        log_dets[k] = math.log(log_dets[k])
    return True
