"""Compiled, fused E-step + statistics of a Gaussian mixture on one block of complete rows.

The NumPy kernels of :mod:`dask_em.families.gaussian_kernels` are the reference; these
compute the same statistics (to rounding) without any (n, K) or (n, K, D) temporary
going through main memory:

* ``diag`` and ``spherical``: one compiled loop over the rows.  Per row, the K
  log-densities (difference first, as the reference), Bayes' rule in log space, and the
  weighted sums ``sum r``, ``sum r xc``, ``sum r xc^2`` are updated in registers.
* ``full`` and ``tied``: per slice of :data:`FULL_SLICE_ROWS` rows (its (rows, K*D)
  buffer stays in the L2 cache), one BLAS product ``xc @ [L_1 ... L_K]`` gives
  ``xc L_k`` for every k, a compiled loop turns it into responsibilities and overwrites
  the buffer with ``r_ik xc_i``, and a second BLAS product ``buffer^T @ xc`` adds the
  slice's second moments.  The D x D products are where the flops are, and BLAS runs
  them several times faster than hand-written loops.

Moments are accumulated about ``center`` (the mixture mean; ``xc = x - center``), per
slice, then summed across slices in float64, and finally centred on each component's
weighted mean (``scatter = S2 - N_k mc mc^T``), as the reference does per slice.  In
float32 mode (X float32) the products and the log-densities of a slice run in float32,
the per-row log-sum-exp and every accumulator in float64.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families import gaussian_linalg
from dask_em.families.jit import HAVE_NUMBA, jit

#: Rows per slice of the full/tied kernels: a (rows, K*D) buffer of 1024 x 128 doubles is
#: 1 MiB, within a core's L2 cache on current x86 and ARM servers.
FULL_SLICE_ROWS = 1024

#: Rows per inner accumulation group of the row loops (two-level summation: the
#: rounding error of a block sum grows like sqrt(rows) per level, not like n).
GROUP_ROWS = 1024

LOG_2PI = math.log(2.0 * math.pi)

#: True when the compiled kernels run (numba importable and not disabled).
COMPILED = HAVE_NUMBA


@jit
def _diag_rows(X, center, means_t, scales_t, const, w, nk, sums, second):
    """Rows of a diag/spherical block: returns (weight, loglik); updates nk, sums, second.

    X (n, D); center (D,); means_t, scales_t (D, K): ``mu_k - center`` and
    ``1/sigma_k``, feature-major so that the K distances of a row are updated side by
    side (the same additions, in the same order per k, as the reference); const (K,)
    ``log pi_k + log det L_k - D/2 log 2 pi``; w (n,).  sums and second are (K, D).
    """
    n, n_features = X.shape
    n_components = means_t.shape[1]
    xc = np.empty(n_features)
    lp = np.empty(n_components)
    maha = np.empty(n_components)
    g_nk = np.zeros(n_components)
    g_sums = np.zeros((n_components, n_features))
    g_second = np.zeros((n_components, n_features))
    weight = 0.0
    loglik = 0.0
    g_weight = 0.0
    g_loglik = 0.0
    for i in range(n):
        for d in range(n_features):
            xc[d] = X[i, d] - center[d]
        for k in range(n_components):
            v = (xc[0] - means_t[0, k]) * scales_t[0, k]
            maha[k] = v * v
        for d in range(1, n_features):
            for k in range(n_components):
                v = (xc[d] - means_t[d, k]) * scales_t[d, k]
                maha[k] += v * v
        peak = -np.inf
        for k in range(n_components):
            lp[k] = const[k] - 0.5 * maha[k]
            if lp[k] > peak:
                peak = lp[k]
        if not np.isfinite(peak):
            peak = 0.0
        total = 0.0
        for k in range(n_components):
            lp[k] = math.exp(lp[k] - peak)
            total += lp[k]
        wi = w[i]
        g_weight += wi
        g_loglik += wi * (math.log(total) + peak)
        for k in range(n_components):
            r = wi * (lp[k] / total)
            g_nk[k] += r
            for d in range(n_features):
                rx = r * xc[d]
                g_sums[k, d] += rx
                g_second[k, d] += rx * xc[d]
        if (i + 1) % GROUP_ROWS == 0 or i == n - 1:
            weight += g_weight
            loglik += g_loglik
            g_weight = 0.0
            g_loglik = 0.0
            for k in range(n_components):
                nk[k] += g_nk[k]
                g_nk[k] = 0.0
                for d in range(n_features):
                    sums[k, d] += g_sums[k, d]
                    second[k, d] += g_second[k, d]
                    g_sums[k, d] = 0.0
                    g_second[k, d] = 0.0
    return weight, loglik


@jit
def _full_distances(y, offsets, maha):
    """Squared Mahalanobis distances of one slice: ``maha[i, k] = sum_d (y[i, d*K + k] -
    offsets[d*K + k])^2``, summed over d in order (as the reference).

    y (m, D*K) ``xc @ [L_1 .. L_K]`` (component-minor columns); offsets (D*K,)
    ``((mu_k - center) L_k)_d`` in the same order; maha (m, K), written.  A loop of its
    own, over contiguous rows, so that the K sums of a row are updated side by side.
    """
    m, width = y.shape
    n_components = maha.shape[1]
    n_features = width // n_components
    for i in range(m):
        for k in range(n_components):
            v = y[i, k] - offsets[k]
            maha[i, k] = v * v
        for d in range(1, n_features):
            base = d * n_components
            for k in range(n_components):
                v = y[i, base + k] - offsets[base + k]
                maha[i, k] += v * v


@jit
def _full_slice_rows(xc, y, maha, const, w, nk):
    """Responsibilities of one slice from its distances; returns (weight, loglik).

    xc (m, D + 1), its last column 1; y (m, D*K), overwritten with ``r_ik xc_id`` at
    column ``d*K + k`` (the left factor of the moment product); maha (m, K) from
    :func:`_full_distances`; const (K,); w (m,).  Adds the slice's ``sum r`` to nk (K,).
    """
    m = xc.shape[0]
    n_features = xc.shape[1] - 1
    n_components = const.shape[0]
    lp = np.empty(n_components)
    weight = 0.0
    loglik = 0.0
    for i in range(m):
        peak = -np.inf
        for k in range(n_components):
            lp[k] = const[k] - 0.5 * maha[i, k]
            if lp[k] > peak:
                peak = lp[k]
        if not np.isfinite(peak):
            peak = 0.0
        total = 0.0
        for k in range(n_components):
            lp[k] = math.exp(lp[k] - peak)
            total += lp[k]
        wi = w[i]
        weight += wi
        loglik += wi * (math.log(total) + peak)
        for k in range(n_components):
            lp[k] = wi * (lp[k] / total)
            nk[k] += lp[k]
        for d in range(n_features):
            base = d * n_components
            x = xc[i, d]
            for k in range(n_components):
                y[i, base + k] = lp[k] * x
    return weight, loglik


def log_constants(log_weights: np.ndarray, log_det: np.ndarray, n_features: int) -> np.ndarray:
    """``log pi_k + log det L_k - D/2 log 2 pi``, shape (K,)."""
    with np.errstate(divide="ignore"):
        return log_weights + log_det - 0.5 * n_features * LOG_2PI


def diag_block_moments(X, center, means_c, scales, const, w):
    """Moments about ``center`` of a diag/spherical block (see module docstring).

    Returns ``(weight, loglik, nk (K,), sums (K, D), second (K, D))`` with
    ``sums = sum_i r_ik xc_i`` and ``second = sum_i r_ik xc_i^2`` (r already weighted).
    """
    n_components, n_features = means_c.shape
    nk = np.zeros(n_components)
    sums = np.zeros((n_components, n_features))
    second = np.zeros((n_components, n_features))
    means_t = np.ascontiguousarray(means_c.T)
    scales_t = np.ascontiguousarray(np.broadcast_to(scales, means_c.shape).T)
    weight, loglik = _diag_rows(X, center, means_t, scales_t, const, w, nk, sums, second)
    return weight, loglik, nk, sums, second


def full_block_moments(X, center, prec_chol, means_c, const, w, compute_dtype):
    """Moments about ``center`` of a full/tied block (see module docstring).

    prec_chol (K, D, D) (tied: the shared factor repeated).  Returns
    ``(weight, loglik, nk (K,), sums (K, D), second (K, D, D))``.
    """
    n_rows, n_features = X.shape
    n_components = len(means_c)
    width = n_components * n_features
    # column d*K + k of the factors is column d of L_k (component-minor, see above)
    factors = np.ascontiguousarray(prec_chol.transpose(1, 2, 0).reshape(n_features, width))
    offsets = np.einsum("kd,kde->ek", means_c, prec_chol).reshape(-1).astype(compute_dtype)
    factors = factors.astype(compute_dtype)
    center = center.astype(compute_dtype)
    rows = min(FULL_SLICE_ROWS, max(n_rows, 1))
    # xc with a column of ones: y^T @ [xc, 1] gives the second moments AND, in its last
    # column, the first moments sum_i r_ik xc_i, in one product
    xc_buffer = np.ones((rows, n_features + 1), dtype=compute_dtype)
    y_buffer = np.empty((rows, width), dtype=compute_dtype)
    part = np.empty((width, n_features + 1), dtype=compute_dtype)
    maha_buffer = np.empty((rows, n_components))
    nk = np.zeros(n_components)
    moments = np.zeros((width, n_features + 1))
    weight = loglik = 0.0
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        xc = xc_buffer[: stop - start]
        np.subtract(X[start:stop], center, out=xc[:, :n_features])
        y = np.matmul(xc[:, :n_features], factors, out=y_buffer[: stop - start])
        maha = maha_buffer[: stop - start]
        _full_distances(y, offsets, maha)
        part_weight, part_loglik = _full_slice_rows(xc, y, maha, const, w[start:stop], nk)
        weight += part_weight
        loglik += part_loglik
        moments += np.matmul(y.T, xc, out=part)
    moments = moments.reshape(n_features, n_components, n_features + 1)
    sums = np.ascontiguousarray(moments[:, :, n_features].T)
    second = np.ascontiguousarray(moments[:, :, :n_features].transpose(1, 0, 2))
    return weight, loglik, nk, sums, second


def centred_stats(weight, loglik, nk, sums, second, center, covariance_type) -> dict:
    """Statistics in the family's form from moments about ``center``.

    ``means = sums / nk + center`` and ``scatter_k = second_k - nk mc_k mc_k^T`` (its
    diagonal for diag, trace for spherical, sum over k for tied).
    """
    means_c = np.divide(sums, nk[:, None], out=np.zeros_like(sums), where=nk[:, None] > 0)
    if covariance_type in ("full", "tied"):
        scatter = second - nk[:, None, None] * means_c[:, :, None] * means_c[:, None, :]
        if covariance_type == "tied":
            scatter = scatter.sum(axis=0)
    else:
        scatter = second - nk[:, None] * means_c**2
        if covariance_type == "spherical":
            scatter = scatter.sum(axis=1)
    return {
        "weight": float(weight),
        "loglik": float(loglik),
        "nk": nk,
        "means": means_c + center,
        "scatter": scatter,
    }


def block_stats(family, params: dict, X: np.ndarray, w: np.ndarray | None) -> dict:
    """Statistics of a block of complete rows, in the form of ``family.block_stats``.

    ``family`` is a :class:`~dask_em.families.gaussian.GaussianFamily` (its
    ``covariance_type`` and ``dtype``); X (n, D) float32 or float64 without NaN.
    """
    n_components, n_features = params["means"].shape
    center, chol = params["center"], params["precisions_cholesky"]
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    log_det = np.broadcast_to(
        gaussian_linalg.log_det_cholesky(chol, family.covariance_type, n_features), (n_components,)
    )
    const = log_constants(np.log(params["weights"]), log_det, n_features)
    means_c = params["means"] - center
    if family.covariance_type in ("full", "tied"):
        chol = np.broadcast_to(chol, (n_components, n_features, n_features))
        dtype = np.float32 if family.dtype == "float32" else np.float64
        moments = full_block_moments(X, center, chol, means_c, const, w, dtype)
    else:
        scales = chol if family.covariance_type == "diag" else chol[:, None]
        moments = diag_block_moments(X, center, means_c, scales, const, w)
    stats = centred_stats(*moments, center, family.covariance_type)
    stats["n_rows"] = len(X)
    return stats
