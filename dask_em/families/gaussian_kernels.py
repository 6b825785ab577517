"""Reference NumPy kernels of a Gaussian mixture: log-densities and slice statistics.

Pure NumPy on one slice of rows; the compiled kernels of
:mod:`dask_em.families.gaussian_compiled` are tested against these, and these run
wherever numba is unavailable.  Shapes, with K components and D features:

================  ==================  ========================  =====================
covariance_type   covariances         precisions_cholesky       scatter statistic
================  ==================  ========================  =====================
"full"            (K, D, D)           (K, D, D)                 (K, D, D)
"tied"            (D, D)              (D, D)                    (D, D)
"diag"            (K, D)              (K, D)                    (K, D)
"spherical"       (K,)                (K,)                      (K,)
================  ==================  ========================  =====================

As in scikit-learn, only the Cholesky factor ``L`` of each precision matrix is used in the
E-step (``precision = L L^T``): the Mahalanobis term is ``||(x - mu) L||^2`` and
``log det(precision)^{1/2} = sum(log diag L)``; nothing is ever inverted.

Statistics are always float64 and centred: per component the weighted mean and the
scatter ``sum_i r_ik (x_i - m_k)(x_i - m_k)^T`` about it, merged across rows with
:func:`dask_em.families.base.merge_centred_moments`.
"""

from __future__ import annotations

import math

import numpy as np

from dask_em.families.base import Stats, Workspace
from dask_em.families.gaussian_linalg import log_det_cholesky


def _mahalanobis_full(Xc, means_c, prec_chol, work=None):
    # y_ik = (x_i - mu_k) L_k for all k by ONE matrix product of [x_i, 1] (D + 1) with
    # [[L_1 ... L_K], [-mu_1 L_1 ... -mu_K L_K]] (D + 1, K*D); then ||y_ik||^2 by a second
    # product with the (K*D, K) block indicator, so no strided reduction is needed.
    work = work or Workspace()
    n_components, n_features = means_c.shape
    n_rows, dtype = len(Xc), Xc.dtype
    stacked = np.empty((n_features + 1, n_components * n_features), dtype=dtype)
    stacked[:n_features] = prec_chol.transpose(1, 0, 2).reshape(n_features, -1)
    stacked[n_features] = -np.einsum("kd,kde->ke", means_c, prec_chol).reshape(-1)
    augmented = work.get("augmented", (n_rows, n_features + 1), dtype)
    augmented[:, :n_features] = Xc
    augmented[:, n_features] = 1.0
    y = np.matmul(augmented, stacked, out=work.get("y", (n_rows, stacked.shape[1]), dtype))
    np.multiply(y, y, out=y)
    return y @ _block_indicator(n_components, n_features, dtype)


def _block_indicator(n_components, n_features, dtype):
    """(K*D, K) matrix with ones where row k*D + d meets column k."""
    return np.repeat(np.eye(n_components, dtype=dtype), n_features, axis=0)


def _mahalanobis_tied(Xc, means_c, prec_chol, work=None):
    n_components = len(means_c)
    shared = np.broadcast_to(prec_chol, (n_components, *prec_chol.shape))
    return _mahalanobis_full(Xc, means_c, shared, work)


#: Up to this many (component, feature) pairs, the diagonal Mahalanobis distances are
#: accumulated one contiguous feature column at a time (5x faster than broadcasting a
#: (rows, K, D) array when D is small, and the same operations in the same order).
DIAG_COLUMNWISE_MAX = 64


def _mahalanobis_diag(Xc, means_c, prec_chol, work=None):
    # sum_d ((x_d - mu_kd) s_kd)^2, difference first: the expanded form
    # |x|^2 p - 2 x mu p + |mu|^2 p loses eps |x|^2 p, which is large for a tight component.
    n_rows, n_features = Xc.shape
    dtype = Xc.dtype
    if len(means_c) * n_features <= DIAG_COLUMNWISE_MAX:
        return _mahalanobis_diag_columnwise(Xc, means_c, prec_chol, work)
    diff = (work or Workspace()).get("diff", (n_rows, len(means_c), n_features), dtype)
    np.subtract(Xc[:, None, :], means_c.astype(dtype, copy=False)[None], out=diff)
    diff *= prec_chol.astype(dtype, copy=False)[None]
    diff *= diff
    return diff.sum(axis=2)


def _mahalanobis_diag_columnwise(Xc, means_c, prec_chol, work=None):
    """:func:`_mahalanobis_diag` by K*D operations on contiguous columns of length n."""
    work = work or Workspace()
    n_rows, n_features = Xc.shape
    dtype = Xc.dtype
    columns = work.get("columns", (n_features, n_rows), dtype)
    columns[...] = Xc.T
    maha = work.get("maha_t", (len(means_c), n_rows), dtype)
    term = work.get("term", (1, n_rows), dtype)[0]
    means_c = means_c.astype(dtype, copy=False)
    prec_chol = np.broadcast_to(prec_chol, means_c.shape).astype(dtype, copy=False)
    for k in range(len(means_c)):
        out = maha[k]
        for d in range(n_features):
            target = out if d == 0 else term
            np.subtract(columns[d], means_c[k, d], out=target)
            target *= prec_chol[k, d]
            target *= target
            if d:
                out += term
    return maha.T


def _mahalanobis_spherical(Xc, means_c, prec_chol, work=None):
    n_features = Xc.shape[1]
    scales = np.broadcast_to(prec_chol[:, None], (len(prec_chol), n_features))
    return _mahalanobis_diag(Xc, means_c, scales, work)


MAHALANOBIS = {
    "full": _mahalanobis_full,
    "tied": _mahalanobis_tied,
    "diag": _mahalanobis_diag,
    "spherical": _mahalanobis_spherical,
}


def estimate_log_gaussian_prob(
    X: np.ndarray,
    means: np.ndarray,
    prec_chol: np.ndarray,
    covariance_type: str,
    center: np.ndarray | None = None,
    work: Workspace | None = None,
) -> np.ndarray:
    """``log N(x_i | mu_k, Sigma_k)``, shape (n, K), float64.

    ``X`` is (n, D) float32 or float64; the products run in X's dtype after shifting by
    ``center`` (D,), which must be close to the data (the mixture mean is).
    """
    n_features = X.shape[1]
    if center is None:
        center = np.zeros(n_features)
    Xc = X - center.astype(X.dtype, copy=False)
    means_c = means - center
    maha = MAHALANOBIS[covariance_type](Xc, means_c, prec_chol, work)
    maha = maha.astype(np.float64, copy=False)
    log_det = log_det_cholesky(prec_chol, covariance_type, n_features)
    return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det


# --------------------------------------------------------------------------- statistics
# Second moments of one slice about the shift c (the mixture mean, so Xc = X - c is of the
# order of the data's spread):  scatter_k = sum_i r_ik xc_i xc_i^T - N_k mc_k mc_k^T, with
# mc_k = m_k - c.  The subtraction loses about eps * |mc_k|^2 / sigma_k^2 relative to the
# scatter, which is negligible in float64 because c is central; across slices and blocks
# the scatter is merged in the exactly centred form (Chan et al.).
def _scatter_full(Xc, resp, means_c, nk, work=None):
    n_rows, n_features = Xc.shape
    n_components = resp.shape[1]
    weighted = (work or Workspace()).get("weighted", (n_rows, n_components, n_features), Xc.dtype)
    np.multiply(resp[:, :, None], Xc[:, None, :], out=weighted)
    weighted = weighted.reshape(n_rows, n_components * n_features)
    raw = (weighted.T @ Xc).reshape(n_components, n_features, n_features)
    return raw - nk[:, None, None] * means_c[:, :, None] * means_c[:, None, :]


def _scatter_tied(Xc, resp, means_c, nk, work=None):
    row_weight = resp.sum(axis=1)
    raw = (Xc * row_weight[:, None]).T @ Xc
    return raw - np.einsum("k,ki,kj->ij", nk, means_c, means_c)


def _scatter_diag(Xc, resp, means_c, nk, work=None):
    return resp.T @ (Xc * Xc) - nk[:, None] * means_c**2


def _scatter_spherical(Xc, resp, means_c, nk, work=None):
    return _scatter_diag(Xc, resp, means_c, nk).sum(axis=1)


_SCATTER = {
    "full": _scatter_full,
    "tied": _scatter_tied,
    "diag": _scatter_diag,
    "spherical": _scatter_spherical,
}


def merge_scatter(covariance_type, scatter_a, scatter_b, delta, correction):
    total = scatter_a + scatter_b
    if covariance_type == "full":
        return total + correction[:, None, None] * delta[:, :, None] * delta[:, None, :]
    if covariance_type == "tied":
        return total + np.einsum("k,ki,kj->ij", correction, delta, delta)
    if covariance_type == "diag":
        return total + correction[:, None] * delta**2
    return total + correction * (delta**2).sum(axis=1)


def stats_from_responsibilities(
    X: np.ndarray,
    resp: np.ndarray,
    covariance_type: str,
    center: np.ndarray | None = None,
    work: Workspace | None = None,
) -> Stats:
    """Weighted centred moments of one slice, given (already weighted) responsibilities.

    ``resp`` (n, K) holds ``w_i * r_ik``.  Returns the fields ``nk`` (K,), ``means``
    (K, D, absolute coordinates) and ``scatter`` (see the module table); ``weight``,
    ``n_rows`` and ``loglik`` are the caller's.
    """
    n_features = X.shape[1]
    if center is None:
        center = np.zeros(n_features)
    Xc = np.asarray(X, dtype=np.float64) - center
    nk = resp.sum(axis=0)
    sums = resp.T @ Xc
    means_c = np.divide(sums, nk[:, None], out=np.zeros_like(sums), where=nk[:, None] > 0)
    scatter = _SCATTER[covariance_type](Xc, resp, means_c, nk, work)
    return {"nk": nk, "means": means_c + center, "scatter": scatter}


def centred_stats(weight, loglik, nk, sums, second, center, covariance_type) -> dict:
    """Statistics in the family's form from moments about ``center``.

    ``means = sums / nk + center`` and ``scatter_k = second_k - nk mc_k mc_k^T`` (its
    diagonal for diag, trace for spherical, sum over k for tied, where second may also
    come summed over k already, (D, D)).
    """
    means_c = np.divide(sums, nk[:, None], out=np.zeros_like(sums), where=nk[:, None] > 0)
    if covariance_type in ("full", "tied"):
        outer = nk[:, None, None] * means_c[:, :, None] * means_c[:, None, :]
        if covariance_type == "tied":
            scatter = (second if second.ndim == 2 else second.sum(axis=0)) - outer.sum(axis=0)
        else:
            scatter = second - outer
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


def stats_from_labels(
    X: np.ndarray,
    labels: np.ndarray,
    w: np.ndarray | None,
    n_components: int,
    covariance_type: str,
    work: Workspace | None = None,
) -> Stats:
    """Statistics of one slice whose rows each belong to one component (hard assignment).

    The same as :func:`stats_from_responsibilities` with one-hot responsibilities
    ``r_ik = w_i [labels_i == k]`` about the slice's mean, but each row enters only its
    own component's moments: D^2 work per row instead of K D^2, and no (n, K, D)
    temporary.  X (n, D); labels (n,) int in [0, K); w (n,) or None; ``work`` keeps the
    (n, D) scratch arrays across a block's slices.  Returns ``nk``, ``means``,
    ``scatter``, ``weight``, ``n_rows`` and ``loglik`` (0), as the initialization pass
    merges them.
    """
    work = work or Workspace()
    n_rows, n_features = X.shape
    weights = np.ones(n_rows) if w is None else np.asarray(w, dtype=np.float64)
    center = X.mean(axis=0, dtype=np.float64) if n_rows else np.zeros(n_features)
    Xc = np.subtract(X, center, out=work.get("centred", X.shape, np.float64))
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_components + 1))
    dense = covariance_type in ("full", "tied")
    nk = np.zeros(n_components)
    sums = np.zeros((n_components, n_features))
    # second moments about the slice mean: (K, D, D), or only their diagonals (K, D)
    raw = np.zeros((n_components, n_features, n_features) if dense else (n_components, n_features))
    for k in range(n_components):
        rows = order[bounds[k] : bounds[k + 1]]
        shape = (len(rows), n_features)
        Xk = np.take(Xc, rows, axis=0, out=work.get("gathered", shape, np.float64))
        wk = weights[rows]
        nk[k] = wk.sum()
        sums[k] = wk @ Xk
        product = work.get("product", shape, np.float64)
        if dense:
            raw[k] = np.multiply(Xk, wk[:, None], out=product).T @ Xk
        else:
            raw[k] = wk @ np.multiply(Xk, Xk, out=product)
    weight = float(n_rows) if w is None else float(weights.sum())
    return {**centred_stats(weight, 0.0, nk, sums, raw, center, covariance_type), "n_rows": n_rows}
