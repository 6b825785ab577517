"""Compiled, fused E-step + statistics of a Gaussian mixture on one block.

The NumPy kernels of :mod:`dask_em.families.gaussian_kernels` are the reference; these
compute the same statistics (to rounding) without any (n, K) or (n, K, D) temporary
going through main memory.  The complete rows go through in slices of
:data:`~dask_em.families.gaussian_slice_loops.SLICE_ROWS` (twice that in float32 where
they fit: :func:`~dask_em.families.gaussian_slice_loops.slice_rows`), held
feature-major ((D, rows) and, for full, (K*D, rows) buffers
that stay in a core's L2 cache), so that every compiled loop runs over the rows of a slice,
contiguous, and the compiler vectorizes it; rows with NaN are passed over while a slice
is filled and take :mod:`dask_em.families.gaussian_missing_compiled` (full),
:mod:`dask_em.families.gaussian_missing_tied` (tied) or
:mod:`dask_em.families.gaussian_missing_diag` (diag, spherical) afterwards:

* ``diag`` and ``spherical``: one compiled call per block (:func:`_diag_block`) copies
  each slice centred and feature-major, gives the K log-densities of each row
  (difference first, as the reference), applies Bayes' rule in log space (log-sum-exp
  over k, with a vectorized exp) and adds the slice's ``sum r xc`` and ``sum r xc^2``
  in reassociated loops.  The products are K*D short dot products, too small for BLAS
  to beat the call overhead NumPy adds per slice.
* ``full`` and ``tied``: one compiled call per block (:func:`_full_block`); per slice
  the products ``[L_1 ... L_K]^T @ xc^T`` give ``L_k^T xc`` for every k (by BLAS where
  numba compiles for AVX-512, which runs these D x D products several times faster than
  loops there; in compiled loops elsewhere, where OpenBLAS packs every operand first), in
  groups of four output features that read only the features the triangular factors reach
  (:mod:`~dask_em.families.gaussian_triangular`: 160 of 256 products a row and
  component for D=16; a 131,072-row float32 block, K=4, 7.0-7.2 -> 6.1-6.2 ms, a
  524,288-row float64 block, K=8, 93-95 -> 81-83 ms, one thread); in the loops, a full
  covariance's products are squared into the distances as they are formed
  (:mod:`~dask_em.families.gaussian_fused_product`); compiled loops turn them
  into responsibilities, and :func:`~dask_em.families.gaussian_slice_loops.pair_moments`
  sums ``r_ik xc_i xc_i^T`` over each pair of features once (half the products of a
  dense ``(r xc)^T [xc, 1]``, which BLAS ran 1.5x slower than these loops) and, with a
  row of ones under the slice, ``r_ik xc_i``.  ``tied`` shares one factor: its product
  is ``L^T xc`` once (D rows, whatever K), and since the M-step needs only the second
  moments' sum over components, those are one pair sum weighted by ``sum_k r_ik`` (the
  per-component first moments beside it): 11.6 -> 4.9 ms a 62,500-row float64 block
  (K=8, D=16) against the per-component form.

Moments are accumulated about ``center`` (the mixture mean; ``xc = x - center``), per
slice, then summed across slices in float64, and finally centred on each component's
weighted mean (``scatter = S2 - N_k mc mc^T``), as the reference does per slice.  With
the family's ``dtype="float32"`` the products, log-densities, Bayes' rule (the shift,
the exp and the sum over components) and per-slice sums run in float32 (diag and
spherical too); the log of each row's total, the log-likelihood and every accumulator
across slices in float64.  X may be float32 or float64 either way.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families import gaussian_linalg
from dask_em.families.gaussian_fused_product import product_distances
from dask_em.families.gaussian_kernels import centred_stats
from dask_em.families.gaussian_missing_compiled import missing_block_moments
from dask_em.families.gaussian_missing_diag import diag_missing_block_moments
from dask_em.families.gaussian_missing_patterns import nan_mask
from dask_em.families.gaussian_missing_tied import tied_missing_block_moments
from dask_em.families.gaussian_slice_loops import (
    diag_log_densities,
    diag_moments,
    first_moment_pairs,
    log_densities_from_distances,
    moments_from_pairs,
    pair_moments,
    slice_rows,
    summed_pair_moments,
    upper_pairs,
)
from dask_em.families.gaussian_triangular import factor_groups, packed_factors, product_rows
from dask_em.families.jit import HAVE_NUMBA, jit, jit_reassociated
from dask_em.families.responsibilities_compiled import responsibilities, row_scratch

LOG_2PI = math.log(2.0 * math.pi)

#: True when the compiled kernels run (numba importable and not disabled).
COMPILED = HAVE_NUMBA


@jit
def _centred_slice(
    X, start, center, xct, w, ws, capacity, passed_over, passed_keys, n_passed, kept_rows
):
    """The next ``capacity`` complete rows of X (n, D) from row ``start`` on (fewer at
    the end of X), copied centred and feature-major to the first columns of xct (D or
    more, >= capacity), their weights to ws (>= capacity,) (w (n,), or empty for unit
    weights).  Returns ``(rows copied, the row after the last one read, n_passed)``.

    A row with NaN (``isnan(X).any(axis=1)``) is passed over, for the missing-value
    E-step: the slice holds complete rows only, whatever their share; its index goes to
    ``passed_over[n_passed]`` (n_passed: how many are there so far) and its NaN
    pattern's bit mask (``sum of 2^d`` over its NaN features d, as
    :func:`~dask_em.families.gaussian_missing_patterns.pattern_order` sorts by; any
    nonzero value for D > 63) to ``passed_keys[n_passed]``, found in the same test for
    NaN, while the row is in cache, where a pass of its own read the block's rows
    with NaN again from memory (3.4 ms of a 524,288-row float64 block, D=16).  Until the block's
    first such row, the next ``capacity`` rows are copied at once and tested for NaN
    inside the copy (:func:`_copy_centred`); a slice with NaN is then done again
    the general way: the rows checked first (their indices in kept_rows (>= capacity,))
    and then copied a feature at a time, from a plain slice of X where no row was
    passed over.  On a 62,500-row float32 block (D=16, one thread) the copy took 0.46 ms
    the general way and about 0.3 ms the first way.
    """
    n_rows, n_features = X.shape
    unweighted = w.shape[0] == 0
    if n_passed == 0 and n_rows - start >= capacity:  # no NaN in the block so far
        if _copy_centred(X[start : start + capacity], center, xct):
            for i in range(capacity):
                ws[i] = 1.0 if unweighted else w[start + i]
            return capacity, start + capacity, n_passed
    kept = 0
    row = start
    masks = n_features <= 63  # a bit per feature in an int64
    while row < n_rows and kept < capacity:
        values = X[row]
        has_nan = False
        for d in range(n_features):
            has_nan |= values[d] != values[d]
        if has_nan:
            passed_over[n_passed] = row
            passed_keys[n_passed] = nan_mask(X, row) if masks else 1
            n_passed += 1
        else:
            kept_rows[kept] = row
            ws[kept] = 1.0 if unweighted else w[row]
            kept += 1
        row += 1
    if kept == 0:
        return kept, row, n_passed
    first = kept_rows[0]
    chosen = kept_rows[:kept]
    contiguous = kept_rows[kept - 1] - first == kept - 1
    if contiguous:  # a plain slice of X (these rows have no NaN)
        _copy_centred(X[first : first + kept], center, xct)
        return kept, row, n_passed
    for d in range(n_features):
        c = center[d]
        target = xct[d]
        for i in range(kept):
            target[i] = X[chosen[i], d] - c
    return kept, row, n_passed


@jit
def _copy_centred(block, center, xct):
    """Copy block (m, D) centred and feature-major to the first m columns of xct; return
    whether none of its values is NaN (tested inside the vectorized copy, where a test
    row by row before it took a third of the copy's time)."""
    has_nan = False
    for d in range(block.shape[1]):
        c = center[d]
        target = xct[d]
        for i in range(block.shape[0]):
            value = block[i, d]
            has_nan |= value != value
            target[i] = value - c
    return not has_nan


@jit_reassociated
def _diag_block(X, center, means_c, scales, const, w, rows, nk, sums, second):
    """The whole diag/spherical E-step and moments of a block, in one compiled call.

    X (n, D); center (D,), means_c, scales (K, D) (``1/sigma``) in the compute dtype
    (float32 or float64: the log-densities and each slice's sums run in it); const (K,);
    w (n,).
    Adds ``sum_i w_i r_ik`` to nk (K,), ``sum_i w_i r_ik xc_i`` to sums (K, D) and
    ``sum_i w_i r_ik xc_i^2`` to second (K, D) over the complete rows; returns (weight,
    loglik, the indices of the rows with NaN, which add nothing, and their patterns' bit
    masks, as :func:`_centred_slice`).  w (n,) or empty for unit weights.  Each slice of
    ``rows`` rows is copied centred and feature-major, so that every loop over its rows
    is contiguous and vectorizes; no NumPy call is made per slice.
    """
    n_rows, n_features = X.shape
    n_components = means_c.shape[0]
    dtype = means_c.dtype  # the compute dtype of the densities and the slice's sums
    zero = means_c[0, 0] - means_c[0, 0]  # 0 in that dtype
    xct = np.empty((n_features, rows), dtype=dtype)
    squares_sum = np.empty((n_components, rows), dtype=dtype)
    lp = np.empty((n_components, rows), dtype=dtype)
    ws = np.empty(rows)
    scratch = row_scratch(rows, lp)
    weight = 0.0
    loglik = 0.0
    passed_over = np.empty(n_rows, dtype=np.int64)
    passed_keys = np.empty(n_rows, dtype=np.int64)
    n_passed = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
    start = np.int64(0)
    kept_rows = np.empty(rows, dtype=np.int64)
    while start < n_rows:
        m, start, n_passed = _centred_slice(  # m complete rows
            X, start, center, xct, w, ws, rows, passed_over, passed_keys, n_passed, kept_rows
        )
        diag_log_densities(xct, means_c, scales, const, m, squares_sum, lp)
        part_weight, part_loglik = responsibilities(lp, m, ws, nk, scratch)  # lp now w_i r_ik
        weight += part_weight
        loglik += part_loglik
        diag_moments(lp, xct, m, sums, second, zero)
    return weight, loglik, passed_over[:n_passed], passed_keys[:n_passed]


@jit
def _full_block(
    X, center, product, offsets, const, w, rows, nk, first, second, moments, shared_pairs, shared
):
    """The whole full/tied E-step and moments of a block, in one compiled call.

    X (n, D) float32 or float64; center (D,) and offsets (K, D) ``L_k^T mc_k`` in the
    compute dtype; product: (packed, starts, groups, product rows) of
    :mod:`~dask_em.families.gaussian_triangular` for the factors ``L_k`` (tied: the one
    factor), packed in the compute dtype; const (K,); w (n,), or empty for unit weights.  With
    ``xt_i = [xc_i, 1]`` (D + 1 features, the last one all 1) over the complete rows,
    adds ``sum_i w_i r_ik`` to nk (K,), ``sum_i w_i r_ik xt[first[p], i] xt[second[p],
    i]`` to moments[k, p] (K, P) for the pairs ``first[p] <= second[p]`` (P,) int64, and
    ``sum_i w_i (sum_k r_ik) xt[a, i] xt[b, i]`` to shared[p] (P',) for the pairs (a, b)
    = ``shared_pairs[:, p]`` (2, P') (tied: the second moments, which only their sum
    over k reaches; empty for full).  Returns (weight, loglik, the indices of the rows
    with NaN, which add nothing, and their patterns' bit masks, :func:`_centred_slice`).
    The products and squared distances of
    :func:`~dask_em.families.gaussian_fused_product.product_distances` per slice (BLAS or
    compiled loops, fused or not, by host), the rest compiled loops.
    """
    n_rows, n_features = X.shape
    packed, _, _, product_rows = product
    n_components = offsets.shape[0]
    width = product_rows.max() + 1  # F*D: the rows of the product
    dtype = packed.dtype
    zero = offsets[0, 0] - offsets[0, 0]  # 0 in the compute dtype (offsets are finite)
    # xc feature-major with a row of ones: the pairs with it give the first moments
    # sum_i r_ik xc_i beside the second ones, in the same pass (pair_moments)
    xt = np.ones((n_features + 1, rows), dtype=dtype)
    yt = np.empty((width, rows), dtype=dtype)
    lp = np.empty((n_components, rows), dtype=dtype)
    part = np.empty(moments.shape, dtype=dtype)
    row_weight = np.empty((1, rows), dtype=dtype)  # sum_k w_i r_ik (shared pairs)
    shared_part = np.empty((1, shared.shape[0]), dtype=dtype)
    ws = np.empty(rows)
    scratch = row_scratch(rows, lp)
    weight = 0.0
    loglik = 0.0
    kept_rows = np.empty(rows, dtype=np.int64)
    passed_over = np.empty(n_rows, dtype=np.int64)
    passed_keys = np.empty(n_rows, dtype=np.int64)
    n_passed = np.int64(0)  # int64, not Literal[int](0) (jit docstring)
    start = np.int64(0)
    while start < n_rows:
        if n_rows - start < rows:  # the last rows: buffers of their width (contiguous)
            m = n_rows - start
            xt = np.ones((n_features + 1, m), dtype=dtype)
            yt = np.empty((width, m), dtype=dtype)
            lp = np.empty((n_components, m), dtype=dtype)
        m = xt.shape[1]
        kept, start, n_passed = _centred_slice(
            X, start, center, xt, w, ws, m, passed_over, passed_keys, n_passed, kept_rows
        )
        if kept < m:  # rows with NaN at the end of X: the columns past the rest are 0
            for d in range(n_features):
                for i in range(kept, m):
                    xt[d, i] = 0.0
        product_distances(product, xt, offsets, m, lp, yt)
        log_densities_from_distances(const, m, lp)
        part_weight, part_loglik = responsibilities(lp, kept, ws, nk, scratch)
        weight += part_weight
        loglik += part_loglik
        pair_moments(lp, xt, kept, first, second, part, zero)
        moments += part
        if shared.shape[0] > 0:
            summed_pair_moments(
                lp, xt, kept, shared_pairs[0], shared_pairs[1], row_weight, shared_part, zero
            )
            shared += shared_part[0]
    return weight, loglik, passed_over[:n_passed], passed_keys[:n_passed]


def diag_block_moments(X, center, means_c, scales, const, w, compute_dtype=np.float64):
    """Moments about ``center`` of a diag/spherical block (see module docstring).

    scales (K, D) or (K, 1): ``1/sigma``; w (n,), or empty for unit weights;
    ``compute_dtype`` float32 runs the log-densities and each slice's sums in float32 (the
    moments still add up across slices in float64).  Returns ``((weight, loglik, nk
    (K,), sums (K, D), second (K, D)), indices of the rows with NaN, their patterns' bit
    masks)`` (:func:`_centred_slice`) with ``sums =
    sum_i r_ik xc_i`` and ``second = sum_i r_ik xc_i^2`` (r already weighted) over the
    rows without NaN.
    """
    n_components, n_features = means_c.shape
    # a copy, never broadcast_to's read-only view: numba compiles a kernel once per
    # argument type, and a read-only array is another type (diag would compile apart
    # from spherical, 2 of _diag_block's 5 versions in a run of the tests)
    scales = np.array(np.broadcast_to(scales, means_c.shape), dtype=compute_dtype, order="C")
    means_c = np.ascontiguousarray(means_c, dtype=compute_dtype)
    center = np.asarray(center, dtype=compute_dtype)
    nk = np.zeros(n_components)
    sums = np.zeros((n_components, n_features))
    second = np.zeros((n_components, n_features))
    rows = slice_rows(len(X), compute_dtype)
    weight, loglik, incomplete, keys = _diag_block(
        X, center, means_c, scales, const, w, rows, nk, sums, second
    )
    return (weight, loglik, nk, sums, second), incomplete, keys


def full_block_moments(X, center, prec_chol, means_c, const, w, compute_dtype):
    """Moments about ``center`` of a full/tied block (see module docstring).

    prec_chol (K, D, D), or (D, D) for tied: the one factor's product is then formed once
    a slice, not once per component, and only the second moments' sum over components
    is summed (a single weighted pair sum).  w (n,), or empty for unit weights.  Returns
    ``((weight, loglik, nk (K,), sums (K, D), second), indices of the rows with NaN,
    their patterns' bit masks)`` (:func:`_centred_slice`), the moments over the rows
    without NaN; second (K, D, D) per component, or (D, D) summed over them for tied.
    """
    n_rows, n_features = X.shape
    n_components = len(means_c)
    tied = prec_chol.ndim == 2
    factors = prec_chol[None] if tied else prec_chol
    groups = factor_groups(factors)
    packed, starts = packed_factors(factors, groups, compute_dtype)
    product = (packed, starts, groups, product_rows(len(factors), n_components, groups))
    each = np.broadcast_to(factors, (n_components, n_features, n_features))
    offsets = np.einsum("kd,kde->ke", means_c, each).astype(compute_dtype)
    center = center.astype(compute_dtype)
    first, second = upper_pairs(n_features)
    if tied:  # per component only the first moments: the pairs (d, D) with the ones
        shared_pairs = np.stack([first, second])
        first, second = first_moment_pairs(n_features)
    else:
        shared_pairs = np.empty((2, 0), dtype=np.int64)
    nk = np.zeros(n_components)
    moments = np.zeros((n_components, len(first)))
    shared = np.zeros(shared_pairs.shape[1])
    rows = slice_rows(n_rows, compute_dtype, n_features + 1 + n_components)
    weight, loglik, incomplete, keys = _full_block(
        X, center, product, offsets, const, w, rows, nk, first, second, moments,
        shared_pairs, shared,
    )  # fmt: skip
    if tied:
        sums = moments[:, :n_features].copy()
        _, second_moments = moments_from_pairs(shared[None], shared_pairs[0], shared_pairs[1])
        return (weight, loglik, nk, sums, second_moments[0]), incomplete, keys
    sums, second_moments = moments_from_pairs(moments, first, second)
    return (weight, loglik, nk, sums, second_moments), incomplete, keys


def block_stats(family, params: dict, X: np.ndarray, w: np.ndarray | None) -> dict:
    """Statistics of a block, in the form of ``family.block_stats``.

    ``family`` is a :class:`~dask_em.families.gaussian.GaussianFamily` (its
    ``covariance_type`` and ``dtype``); X (n, D) float32 or float64.  Rows with NaN go
    through :mod:`dask_em.families.gaussian_missing_compiled` (full),
    :mod:`dask_em.families.gaussian_missing_tied` (tied) or
    :mod:`dask_em.families.gaussian_missing_diag` (diag, spherical), in float64, the
    others through the kernels above; their moments about the centre add up.
    """
    n_components, n_features = params["means"].shape
    center, chol = params["center"], params["precisions_cholesky"]
    covariance_type = family.covariance_type
    weights = np.empty(0) if w is None else np.asarray(w, dtype=np.float64)  # empty: all 1
    log_det = np.broadcast_to(
        gaussian_linalg.log_det_cholesky(chol, covariance_type, n_features), (n_components,)
    )
    with np.errstate(divide="ignore"):  # a component of weight 0: log-density -inf
        # log pi_k + log det L_k - D/2 log 2 pi (K,)
        const = np.log(params["weights"]) + log_det - 0.5 * n_features * LOG_2PI
    means_c = params["means"] - center
    # the kernels find the rows with NaN while they copy each slice (no extra read of the
    # block) and leave them out; those rows then take the exact missing-value E-step
    dtype = np.float32 if family.dtype == "float32" else np.float64
    if covariance_type in ("full", "tied"):
        complete, incomplete, keys = full_block_moments(
            X, center, chol, means_c, const, weights, dtype
        )
    else:
        scales = chol if covariance_type == "diag" else chol[:, None]
        complete, incomplete, _ = diag_block_moments(
            X, center, means_c, scales, const, weights, dtype
        )
    parts = [complete]
    if len(incomplete) and covariance_type == "full":
        factors = gaussian_linalg.dense_factors(chol, covariance_type, n_components, n_features)
        parts.insert(
            0, missing_block_moments(X, incomplete, center, factors, means_c, const, weights, keys)
        )
    elif len(incomplete) and covariance_type == "tied":  # second moments summed over k
        parts.insert(
            0,
            tied_missing_block_moments(X, incomplete, center, chol, means_c, const, weights, keys),
        )
    elif len(incomplete):  # diag, spherical: independent features, no pattern to factor
        parts.insert(
            0, diag_missing_block_moments(X, incomplete, center, means_c, scales, const, weights)
        )
    moments = [sum(values) for values in zip(*parts, strict=True)]
    stats = centred_stats(*moments, center, covariance_type)
    stats["n_rows"] = len(X)
    return stats
