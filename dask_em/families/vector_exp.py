"""``exp`` over a float64 array in a loop the compiler can vectorize.

Without Intel's SVML (not shipped with numba's wheels) every ``math.exp`` in a compiled
loop is a scalar libm call, ~9 ns here; the HMM kernels take K of them per step, more
than the whole recursion costs.  This is the classic Cody-Waite reduction with no call
and no branch, so LLVM turns it into SIMD code:

    n = round(x / ln 2),   r = x - n ln 2  (|r| <= ln(2) / 2, ln 2 split in a high part
    with trailing zero bits and a low part, so n * ln2_hi is exact),
    exp(x) = 2^n * p(r),   p = the Taylor polynomial of degree 13 (truncation error
    below 4e-18 relative on that interval), evaluated by Horner's rule,

and 2^n is built from its IEEE-754 bits as the product of two normal powers of two,
2^n1 * 2^n2 with n1 + n2 = n, so that results in the subnormal range (x down to about
-745) are rounded once, like libm's.  Horner's steps are fused multiply-adds where the
machine has them (20% faster here).  The error is within 2 ulp of the exact value over
the whole float64 range (tested against NumPy); ``exp(-inf) = 0``, ``exp(nan) = nan``,
overflow gives ``inf``.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.jit import HAVE_NUMBA, jit, jit_fused

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 rounded to 32 significant bits
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_LOWEST = -746.0  # exp of anything below is 0 in float64
_HIGHEST = 710.0  # exp of anything above is inf
#: Elements handled per chunk (scratch of 2 x 8 KiB stays in the L1 cache).
CHUNK = 1024

# Taylor coefficients 1/k!, k = 2..13 (exp(r) = 1 + r + r^2 (C2 + r (C3 + ...))).
_C2 = 1.0 / 2.0
_C3 = 1.0 / 6.0
_C4 = 1.0 / 24.0
_C5 = 1.0 / 120.0
_C6 = 1.0 / 720.0
_C7 = 1.0 / 5040.0
_C8 = 1.0 / 40320.0
_C9 = 1.0 / 362880.0
_C10 = 1.0 / 3628800.0
_C11 = 1.0 / 39916800.0
_C12 = 1.0 / 479001600.0
_C13 = 1.0 / 6227020800.0


@jit_fused
def exp_chunk(values, high_bits, low_bits):
    """``values[:] = exp(values)`` for one chunk (len(values) <= len(high_bits))."""
    n_values = len(values)
    for i in range(n_values):
        x = values[i]
        clamped = x
        if clamped < _LOWEST:
            clamped = _LOWEST
        if clamped > _HIGHEST:
            clamped = _HIGHEST
        if x != x:  # no float-to-int conversion of NaN below
            clamped = 0.0
        n_float = np.floor(clamped * _LOG2E + 0.5)
        r = (clamped - n_float * _LN2_HI) - n_float * _LN2_LO
        p = _C13
        p = p * r + _C12
        p = p * r + _C11
        p = p * r + _C10
        p = p * r + _C9
        p = p * r + _C8
        p = p * r + _C7
        p = p * r + _C6
        p = p * r + _C5
        p = p * r + _C4
        p = p * r + _C3
        p = p * r + _C2
        p = 1.0 + (r + r * r * p)
        if x != x:  # NaN stays NaN (a NaN constant: ``p = x`` became a masked store)
            p = np.nan
        values[i] = p
        # n in [-1077, 1025]; biased by 2048 it is positive, so a logical shift halves it
        biased = np.int32(n_float) + 2048
        half = biased >> 1
        high_bits[i] = np.int64(half - 1) << 52  # 2^(half - 1024)
        low_bits[i] = np.int64(biased - half - 1) << 52  # 2^(n - (half - 1024))
    high = high_bits.view(np.float64)
    low = low_bits.view(np.float64)
    for i in range(n_values):
        values[i] = values[i] * high[i] * low[i]


@jit
def exp_inplace(values):
    """``values[:] = exp(values)`` for a contiguous float64 array of any shape (ravelled)."""
    flat = values.reshape(-1)
    high_bits = np.empty(CHUNK, dtype=np.int64)
    low_bits = np.empty(CHUNK, dtype=np.int64)
    for start in range(0, len(flat), CHUNK):
        exp_chunk(flat[start : start + CHUNK], high_bits, low_bits)


# float32: the same reduction in single precision.  |r| <= ln(2)/2, so the Taylor
# polynomial of degree 7 is within e^|r| r^8/8! < 8e-9 relative of exp(r), an eighth of
# float32's unit roundoff; ln 2 is split so that n * _LN2_HI_SINGLE is exact for |n| < 2^9.
_LOG2E_SINGLE = np.float32(_LOG2E)
_LN2_HI_SINGLE = np.float32(0.693359375)  # 9 significant bits
_LN2_LO_SINGLE = np.float32(math.log(2.0) - 0.693359375)
#: exp of anything below is below float32's smallest normal number (2^-126): 0 here
_LOWEST_NORMAL_SINGLE = np.float32(-87.33654)
_HIGHEST_SINGLE = np.float32(89.0)  # exp of anything above is inf
_ZERO_SINGLE = np.float32(0.0)
_NAN_SINGLE = np.float32(np.nan)
_HALF_SINGLE = np.float32(0.5)
_ONE_SINGLE = np.float32(1.0)
_S2, _S3, _S4, _S5, _S6, _S7 = (np.float32(1.0 / math.factorial(k)) for k in range(2, 8))


@jit_fused
def exp_chunk_single(values, high_bits, low_bits):
    """``values[:] = exp(values)`` for one float32 chunk, within 1.5 ulp of the exact
    value, flushed to 0 below float32's normal range.

    values (m,) float32; high_bits, low_bits (>= m,) int32 scratch.  A result that
    would be subnormal (x < -87.34) is 0: the kernels use this exp for Bayes' rule, where
    such a term is lost beside the row's largest (1) anyway, and a subnormal operand
    costs every later product a slow path on many CPUs.  2^n, n in [-126, 128], is built
    as 2^n1 * 2^n2 from two normal powers (2^128 alone is not a float32)."""
    n_values = len(values)
    for i in range(n_values):
        x = values[i]
        clamped = x
        if clamped < _LOWEST_NORMAL_SINGLE:
            clamped = _LOWEST_NORMAL_SINGLE
        if clamped > _HIGHEST_SINGLE:
            clamped = _HIGHEST_SINGLE
        if x != x:  # no float-to-int conversion of NaN below
            clamped = _ZERO_SINGLE
        n_float = np.floor(clamped * _LOG2E_SINGLE + _HALF_SINGLE)
        r = (clamped - n_float * _LN2_HI_SINGLE) - n_float * _LN2_LO_SINGLE
        p = _S7
        p = p * r + _S6
        p = p * r + _S5
        p = p * r + _S4
        p = p * r + _S3
        p = p * r + _S2
        p = _ONE_SINGLE + (r + r * r * p)
        if x < _LOWEST_NORMAL_SINGLE:
            p = _ZERO_SINGLE
        if x != x:  # NaN stays NaN (a NaN constant: ``p = x`` became a masked store)
            p = _NAN_SINGLE
        values[i] = p
        # n in [-126, 128]; biased by 256 it is positive, so a logical shift halves it
        biased = np.int32(np.int32(n_float) + np.int32(256))
        half = np.int32(biased >> np.int32(1))
        high_bits[i] = np.int32((half - np.int32(1)) << np.int32(23))  # 2^(half - 128)
        low_bits[i] = np.int32((biased - half - np.int32(1)) << np.int32(23))  # 2^(n - ...)
    high = high_bits.view(np.float32)
    low = low_bits.view(np.float32)
    for i in range(n_values):
        values[i] = values[i] * high[i] * low[i]


def exp_slice(values, high_bits, low_bits):
    """``values[:] = exp(values)`` for one chunk of either float dtype, in compiled code:
    :func:`exp_chunk` for float64, :func:`exp_chunk_single` for float32 (its scratch,
    high_bits and low_bits (>= len(values),) int64, viewed as int32).  The choice is made
    when the caller is compiled (numba's ``overload``); from Python it is NumPy's exp."""
    values[:] = np.exp(values)


if HAVE_NUMBA:  # pragma: no branch - which branch runs depends on the installation
    from numba import types
    from numba.extending import overload

    @overload(exp_slice, jit_options={"nogil": True})
    def _exp_slice_for(values, high_bits, low_bits):
        if values.dtype == types.float32:

            def exp_single(values, high_bits, low_bits):
                n = len(values)
                exp_chunk_single(values, high_bits.view(np.int32)[:n], low_bits.view(np.int32)[:n])

            return exp_single

        def exp_double(values, high_bits, low_bits):
            exp_chunk(values, high_bits, low_bits)

        return exp_double
