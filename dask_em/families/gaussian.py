"""Gaussian mixture kernels: log-densities, block statistics and the M-step.

Pure NumPy/SciPy on ONE block; no Dask here.  Shapes, with K components and D features:

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

MAP estimation (Murphy 2012, sec. 4.6.3; Bishop 2006, sec. 2.3.6): a conjugate
normal-inverse-Wishart kernel per component, written with pseudocounts so that zero
strength is exactly maximum likelihood,

    log p(mu_k, Sigma_k) = -(eta/2) log|Sigma_k| - (eta/2) tr(Sigma0 Sigma_k^-1)
                           - (kappa/2) (mu_k - m0)^T Sigma_k^-1 (mu_k - m0)      (+ const)

with ``mean_prior`` m0, ``mean_pseudocount`` kappa, ``covariance_prior`` Sigma0 and
``covariance_pseudocount`` eta.  The M-step maximizes the expected complete-data
log-likelihood plus this log-prior exactly:

    mu_k    = (N_k xbar_k + kappa m0) / (N_k + kappa)
    Sigma_k = (S_k + eta Sigma0 + kappa N_k / (kappa + N_k) (xbar_k - m0)(xbar_k - m0)^T)
              / (N_k + eta)

(diag: the diagonal of this; spherical: its trace / D; tied: numerator summed over k,
divided by N + eta).  A standard NIW(m0, kappa0, Psi0, nu0) prior is kappa = kappa0,
eta = nu0 + D + 2, Sigma0 = Psi0 / eta.  ``reg_covar * I`` is added after the update, as
scikit-learn does; it is not part of the prior, so for a strictly monotone penalized
objective use a covariance prior with ``reg_covar=0``.  The mixing weights get the
Dirichlet prior of :mod:`dask_em.families.discrete`.

Numerics: each block is first shifted by ``params["center"]`` (the mixture's overall
mean), so data far from the origin (values around 1e6 with unit spread) loses no
precision in the E-step.  Fitting casts float32 blocks to float64 one slice at a time;
prediction (:meth:`GaussianFamily.weighted_log_prob`) keeps float32 products.
Statistics are always float64 and centred: per component the weighted mean and the
scatter ``sum_i r_ik (x_i - m_k)(x_i - m_k)^T`` about it, merged across rows with
:func:`dask_em.families.base.merge_centred_moments`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from dask_em.families.base import (
    Params,
    Stats,
    Workspace,
    add_fields,
    log_normalize,
    merge_centred_moments,
    responsibilities_and_loglik,
    rows_per_slice,
    sliced_stats,
)
from dask_em.families.discrete import dirichlet_log_prior, dirichlet_weights
from dask_em.families.gaussian_missing import (
    MissingEStep,
    completed_stats,
    log_det_covariances,
    precision_stack,
)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: A component whose weight falls to this share of the total (or below) is empty.
EMPTY_COMPONENT_SHARE = 1e-12

_ADDITIVE_FIELDS = ("weight", "n_rows", "loglik")


# --------------------------------------------------------------------------- precisions
def compute_precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors ``L`` of the precision matrices (``precision = L L^T``).

    Raises a ValueError that says what to do when a covariance is not positive definite.
    """
    message = (
        "Fitting the mixture model failed because some components have ill-defined "
        "empirical covariance (for instance caused by singleton or collapsed samples). "
        "Try to decrease the number of components, increase reg_covar, or scale the "
        "input data."
    )
    if covariance_type in ("full", "tied"):
        stack = covariances[None] if covariance_type == "tied" else covariances
        n_features = stack.shape[-1]
        eye = np.eye(n_features)
        out = np.empty_like(stack, dtype=np.float64)
        for k, cov in enumerate(stack):
            try:
                cov_chol = linalg.cholesky(cov, lower=True)
            except linalg.LinAlgError:
                raise ValueError(message) from None
            out[k] = linalg.solve_triangular(cov_chol, eye, lower=True).T
        return out[0] if covariance_type == "tied" else out
    if np.any(np.less_equal(covariances, 0.0)) or not np.all(np.isfinite(covariances)):
        raise ValueError(message)
    return 1.0 / np.sqrt(covariances)


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """``precision = L L^T`` (full, tied) or ``L**2`` (diag, spherical)."""
    if covariance_type == "full":
        return prec_chol @ prec_chol.transpose(0, 2, 1)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Inverse of :func:`precisions_from_cholesky` (lower Cholesky factor of each)."""
    if covariance_type == "full":
        return np.stack([linalg.cholesky(p, lower=True) for p in precisions])
    if covariance_type == "tied":
        return linalg.cholesky(precisions, lower=True)
    return np.sqrt(precisions)


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances ``(L L^T)^{-1}`` from precision Cholesky factors."""
    if covariance_type == "full":
        return np.stack([_inverse_from_cholesky(L) for L in prec_chol])
    if covariance_type == "tied":
        return _inverse_from_cholesky(prec_chol)
    return 1.0 / prec_chol**2


def _inverse_from_cholesky(L: np.ndarray) -> np.ndarray:
    # (L L^T)^{-1} = L^{-T} L^{-1}.  L is upper triangular when it came from a covariance
    # (scikit-learn's convention) and lower when it came from a precision matrix.
    lower = not np.any(np.triu(L, 1))
    L_inv = linalg.solve_triangular(L, np.eye(L.shape[0]), lower=lower)
    return L_inv.T @ L_inv


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """``log det(precision_k)^{1/2}`` for each component, shape (K,) (or scalar, tied)."""
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diag(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


# --------------------------------------------------------------------------- E-step
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


_MAHALANOBIS = {
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
    maha = _MAHALANOBIS[covariance_type](Xc, means_c, prec_chol, work)
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


def _merge_scatter(covariance_type, scatter_a, scatter_b, delta, correction):
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


# --------------------------------------------------------------------------- the family
@dataclass(frozen=True)
class GaussianFamily:
    """Gaussian mixture kernels for one covariance type (see module docstring).

    Parameters are a dict with ``weights`` (K,), ``means`` (K, D), ``covariances`` and
    ``precisions_cholesky`` (shapes in the module table) and ``center`` (D,).
    """

    covariance_type: str = "full"
    reg_covar: float = 1e-6
    name: str = "gmm"
    handles_missing = True  # NaN features are marginalized (families.protocols)
    weight_concentration: float = 1.0
    mean_prior: np.ndarray | None = None
    mean_pseudocount: float = 0.0
    covariance_prior: np.ndarray | float | None = None
    covariance_pseudocount: float = 0.0

    def __post_init__(self):
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )

    # -- parameters ---------------------------------------------------------------
    def make_params(
        self,
        weights: np.ndarray,
        means: np.ndarray,
        covariances: np.ndarray | None = None,
        precisions_cholesky: np.ndarray | None = None,
    ) -> Params:
        """Complete a parameter dict from weights, means and either covariance form."""
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        if precisions_cholesky is None:
            covariances = np.asarray(covariances, dtype=np.float64)
            precisions_cholesky = compute_precision_cholesky(covariances, self.covariance_type)
        elif covariances is None:
            precisions_cholesky = np.asarray(precisions_cholesky, dtype=np.float64)
            covariances = covariances_from_cholesky(precisions_cholesky, self.covariance_type)
        return {
            "weights": weights,
            "means": means,
            "covariances": covariances,
            "precisions_cholesky": precisions_cholesky,
            "center": weights @ means,
        }

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Number of free parameters (for BIC/AIC)."""
        per_cov = {
            "full": n_components * n_features * (n_features + 1) / 2.0,
            "tied": n_features * (n_features + 1) / 2.0,
            "diag": n_components * n_features,
            "spherical": n_components,
        }[self.covariance_type]
        return int(per_cov + n_components * n_features + n_components - 1)

    def init_features(self, X: np.ndarray) -> np.ndarray:
        """Coordinates in which k-means initialization measures distances: X itself."""
        return np.asarray(X, dtype=np.float64)

    # -- E-step -------------------------------------------------------------------
    def _missing_estep(
        self, params: Params, X: np.ndarray, work: Workspace | None = None
    ) -> MissingEStep:
        n_components, n_features = params["means"].shape
        chol = params["precisions_cholesky"]
        return MissingEStep(
            np.asarray(X, dtype=np.float64),
            params["means"],
            precision_stack(chol, self.covariance_type, n_components, n_features),
            log_det_covariances(
                log_det_cholesky(chol, self.covariance_type, n_features), n_components
            ),
            work,
        )

    def log_component_prob(
        self, params: Params, X: np.ndarray, work: Workspace | None = None
    ) -> np.ndarray:
        """``log N(x_i | k)``, shape (n, K), float64.

        Rows with NaN use the marginal density of their observed features
        (:mod:`dask_em.families.gaussian_missing`); a row with nothing observed gets 0.
        """
        if np.isnan(X).any():
            step = self._missing_estep(params, X, work)
            log_prob = np.empty_like(step.log_prob)
            log_prob[step.order] = step.log_prob  # the step's rows are in step.order
            return log_prob
        return estimate_log_gaussian_prob(
            X,
            params["means"],
            params["precisions_cholesky"],
            self.covariance_type,
            params["center"],
            work,
        )

    def weighted_log_prob(
        self, params: Params, X: np.ndarray, work: Workspace | None = None
    ) -> np.ndarray:
        """``log pi_k + log N(x_i | k)``, shape (n, K), float64 (NaN: as above)."""
        log_prob = self.log_component_prob(params, X, work)
        with np.errstate(divide="ignore"):
            return log_prob + np.log(params["weights"])

    def block_stats(self, params: Params, X: np.ndarray, w: np.ndarray | None = None) -> Stats:
        """E-step fused with the statistics of one block ``X`` (n, D), weights ``w`` (n,)."""
        work = Workspace()
        n_components, n_features = params["means"].shape
        return sliced_stats(
            lambda X_slice, w_slice: self._slice_stats(params, X_slice, w_slice, work),
            self.merge,
            X,
            w,
            rows_per_slice=rows_per_slice(n_components * max(n_features, 2)),
        )

    def _slice_stats(self, params, X, w, work=None):
        # Fitting computes in float64 even for float32 blocks (cast one slice at a time):
        # float32 products leave ~1e-7 relative noise in the objective, too coarse for the
        # monotone-objective guarantee and for small tol.  Prediction keeps float32.
        X = np.asarray(X, dtype=np.float64)
        if np.isnan(X).any():
            # the whole slice takes the exact missing-value E-step: its rows without NaN
            # cost there what they cost in the complete-data kernel, and the slice is
            # neither split nor merged
            return self._slice_stats_missing(params, X, w, work)
        resp, weight, loglik = responsibilities_and_loglik(
            self.weighted_log_prob(params, X, work), w
        )
        stats = stats_from_responsibilities(X, resp, self.covariance_type, params["center"], work)
        stats.update(weight=weight, n_rows=len(X), loglik=loglik)
        return stats

    def _slice_stats_missing(self, params, X, w, work=None):
        """Exact EM statistics of a slice with missing values (rows with none observed
        get no weight)."""
        step = self._missing_estep(params, X, work)
        weighted_log_prob = step.log_prob  # in place: the step's arrays are scratch
        with np.errstate(divide="ignore"):
            weighted_log_prob += np.log(params["weights"])
        # the step's rows are in step.order
        w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)[step.order]
        w = np.where(step.observed_any, w, 0.0)
        resp, weight, loglik = responsibilities_and_loglik(weighted_log_prob, w)
        completed = completed_stats(step, resp, self.covariance_type)
        return {
            "weight": weight,
            "n_rows": len(X),
            "loglik": loglik,
            "nk": completed["nk"],
            "means": completed["means"],
            "scatter": completed["scatter"],
        }

    def impute(self, params: Params, X: np.ndarray) -> np.ndarray:
        """X with each missing entry replaced by ``E[x_m | x_o]`` under the mixture.

        That is ``sum_k P(k | x_o) E[x_m | x_o, k]``; a row with nothing observed gets
        the mixture mean.  Rows without NaN are returned unchanged.
        """
        X = np.array(X, dtype=np.float64)
        rows = np.flatnonzero(np.isnan(X).any(axis=1))
        if rows.size == 0:
            return X
        step = self._missing_estep(params, X[rows])
        with np.errstate(divide="ignore"):
            _, posterior = log_normalize(step.log_prob + np.log(params["weights"]))
        rows = rows[step.order]
        X[rows] = np.where(np.isnan(X[rows]), step.conditional_mean(posterior), X[rows])
        return X

    def responsibility_stats(
        self, X: np.ndarray, resp: np.ndarray, w: np.ndarray | None = None
    ) -> Stats:
        """Statistics of a block from given responsibilities ``resp`` (n, K) (initialization)."""
        return sliced_stats(self._slice_responsibility_stats, self.merge, X, resp, w)

    def _slice_responsibility_stats(self, X, resp, w):
        if w is not None:
            resp = resp * np.asarray(w, dtype=np.float64)[:, None]
        center = np.asarray(X, dtype=np.float64).mean(axis=0) if len(X) else None
        stats = stats_from_responsibilities(X, resp, self.covariance_type, center)
        weight = float(len(X)) if w is None else float(np.sum(w, dtype=np.float64))
        stats.update(weight=weight, n_rows=len(X), loglik=0.0)
        return stats

    def posterior_stats(self, params: Params, X: np.ndarray, resp: np.ndarray) -> Stats:
        """Exact EM statistics of a block under given posteriors ``resp`` (n, K).

        For hidden Markov models, whose posteriors come from forward-backward.  Rows with
        NaN contribute their completed moments (conditional means and covariances of the
        missing block given ``params``, as in the mixture E-step); ``loglik`` is 0.
        """
        X = np.asarray(X, dtype=np.float64)
        incomplete = np.isnan(X @ np.ones(X.shape[1]))  # NaN anywhere in the row
        if not incomplete.any():
            stats = stats_from_responsibilities(X, resp, self.covariance_type, params["center"])
            stats.update(weight=float(len(X)), n_rows=len(X), loglik=0.0)
            return stats
        complete = ~incomplete
        parts = []
        if complete.any() or not incomplete.any():
            stats = stats_from_responsibilities(
                X[complete], resp[complete], self.covariance_type, params["center"]
            )
            stats.update(weight=float(complete.sum()), n_rows=int(complete.sum()), loglik=0.0)
            parts.append(stats)
        if incomplete.any():
            step = self._missing_estep(params, X[incomplete])
            # the step's rows are in step.order
            sub_resp = resp[incomplete][step.order] * step.observed_any[:, None]
            completed = completed_stats(step, sub_resp, self.covariance_type)
            parts.append(
                {
                    "weight": float(step.observed_any.sum()),
                    "n_rows": int(incomplete.sum()),
                    "loglik": 0.0,
                    "nk": completed["nk"],
                    "means": completed["means"],
                    "scatter": completed["scatter"],
                }
            )
        return self.merge(*parts)

    # -- reduction ----------------------------------------------------------------
    def merge(self, *parts: Stats) -> Stats:
        """Merge statistics of disjoint row sets, left to right."""
        out = parts[0]
        for b in parts[1:]:
            if out["n_rows"] == 0:
                out = b
                continue
            if b["n_rows"] == 0:
                continue
            nk, means, delta, correction = merge_centred_moments(
                out["nk"], out["means"], b["nk"], b["means"]
            )
            scatter = _merge_scatter(
                self.covariance_type, out["scatter"], b["scatter"], delta, correction
            )
            merged = add_fields(out, b, _ADDITIVE_FIELDS)
            merged.update(nk=nk, means=means, scatter=scatter)
            out = merged
        return out

    # -- M-step -------------------------------------------------------------------
    def empty_components(self, stats: Stats) -> np.ndarray:
        """Indices of components whose weight vanished (they need re-seeding)."""
        return np.flatnonzero(stats["nk"] <= EMPTY_COMPONENT_SHARE * stats["weight"])

    def m_step(self, stats: Stats) -> Params:
        """MAP update from merged statistics (module docstring), then ``reg_covar * I``.

        With zero pseudocounts this is weighted maximum likelihood.  Empty components
        (see :meth:`empty_components`) keep finite placeholder values; the estimator
        re-seeds them.
        """
        nk = stats["nk"]
        n_features = stats["means"].shape[1]
        means, scatter = stats["means"], stats["scatter"]
        kappa, eta = self.mean_pseudocount, self.covariance_pseudocount
        if kappa:
            m0 = self._mean_prior(n_features)
            shrink = kappa * nk / (kappa + nk)
            delta = means - m0
            means = (nk[:, None] * means + kappa * m0) / (nk + kappa)[:, None]
            scatter = _merge_scatter(
                self.covariance_type, scatter, np.zeros_like(scatter), delta, shrink
            )
        if eta:
            scatter = scatter + eta * self._covariance_prior(n_features)
        safe_nk = np.maximum(nk + eta, np.finfo(np.float64).tiny)
        reg = self.reg_covar
        if self.covariance_type == "full":
            covariances = scatter / safe_nk[:, None, None] + reg * np.eye(n_features)
        elif self.covariance_type == "tied":
            covariances = scatter / (nk.sum() + eta) + reg * np.eye(n_features)
        elif self.covariance_type == "diag":
            covariances = scatter / safe_nk[:, None] + reg
        else:
            covariances = scatter / (safe_nk * n_features) + reg
        empty = self.empty_components(stats)
        if empty.size and self.covariance_type != "tied":
            covariances[empty] = _neutral_covariance(self.covariance_type, n_features, reg)
        weights = dirichlet_weights(nk, stats["weight"], self.weight_concentration)
        return self.make_params(weights, means, covariances=covariances)

    def _mean_prior(self, n_features: int) -> np.ndarray:
        if self.mean_prior is None:
            raise ValueError("mean_pseudocount > 0 needs a mean_prior")
        return np.broadcast_to(np.asarray(self.mean_prior, dtype=np.float64), (n_features,))

    def _covariance_prior(self, n_features: int) -> np.ndarray:
        """Sigma0 in the shape of one scatter term: (D, D), (D,) or scalar."""
        prior = np.asarray(1.0 if self.covariance_prior is None else self.covariance_prior)
        if prior.ndim == 0:
            matrix = float(prior) * np.eye(n_features)
        elif prior.ndim == 1:
            matrix = np.diag(prior.astype(np.float64))
        else:
            matrix = prior.astype(np.float64)
        return {
            "full": matrix,
            "tied": matrix,
            "diag": np.diag(matrix),
            "spherical": np.trace(matrix),
        }[self.covariance_type]

    def log_prior(self, params: Params) -> float:
        """Log-prior of ``params`` (module docstring), up to a constant; 0 when flat."""
        total = dirichlet_log_prior(params["weights"], self.weight_concentration)
        kappa, eta = self.mean_pseudocount, self.covariance_pseudocount
        if not (kappa or eta):
            return total
        n_features = params["means"].shape[1]
        chol = params["precisions_cholesky"]
        precisions = precisions_from_cholesky(chol, self.covariance_type)
        # log|Sigma_k| = -2 log det(L_k)
        log_det_cov = -2.0 * log_det_cholesky(chol, self.covariance_type, n_features)
        if eta:
            sigma0 = self._covariance_prior(n_features)
            if self.covariance_type == "full":
                trace = np.einsum("ij,kji->k", sigma0, precisions)
            elif self.covariance_type == "tied":
                trace = np.trace(sigma0 @ precisions)
            elif self.covariance_type == "diag":
                trace = precisions @ sigma0
            else:
                trace = sigma0 * precisions
            total -= 0.5 * eta * float(np.sum(log_det_cov) + np.sum(trace))
        if kappa:
            offsets = params["means"] - self._mean_prior(n_features)
            maha = _MAHALANOBIS[self.covariance_type](np.zeros((1, n_features)), offsets, chol)[0]
            total -= 0.5 * kappa * float(maha.sum())
        return total

    def objective(self, stats: Stats, params: Params) -> float:
        """``(log-likelihood + log-prior) / total weight`` at ``params``."""
        return (stats["loglik"] + self.log_prior(params)) / stats["weight"]

    # -- re-seeding ---------------------------------------------------------------
    def reseed(self, params: Params, empty: np.ndarray, sample: np.ndarray) -> Params:
        """Move each empty component onto the sample row the model explains worst.

        Its covariance becomes the sample covariance (in the family's form) and its
        weight ``1 / len(sample)``; the other weights are renormalized.
        """
        log_density, _ = log_normalize(self.weighted_log_prob(params, sample))
        order = np.argsort(log_density)
        weights = params["weights"].copy()
        means = params["means"].copy()
        covariances = params["covariances"].copy()
        n_features = sample.shape[1]
        spread = np.cov(sample, rowvar=False).reshape(n_features, n_features)
        pooled = {
            "full": spread,
            "diag": np.diag(spread),
            "spherical": np.trace(spread) / n_features,
        }
        for rank, k in enumerate(empty):
            means[k] = sample[order[rank % len(order)]]
            weights[k] = 1.0 / len(sample)
            if self.covariance_type != "tied":
                covariances[k] = pooled[self.covariance_type] + self.reg_covar * (
                    np.eye(n_features) if self.covariance_type == "full" else 1.0
                )
        return self.make_params(weights / weights.sum(), means, covariances=covariances)

    # -- sampling -----------------------------------------------------------------
    def sample_component(
        self, params: Params, k: int, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``n`` draws from component ``k``, shape (n, D)."""
        mean = params["means"][k]
        cov = params["covariances"]
        if self.covariance_type == "full":
            return rng.multivariate_normal(mean, cov[k], n)
        if self.covariance_type == "tied":
            return rng.multivariate_normal(mean, cov, n)
        scale = np.sqrt(cov[k])
        return mean + rng.standard_normal((n, len(mean))) * scale


def _neutral_covariance(covariance_type, n_features, reg):
    if covariance_type == "full":
        return np.eye(n_features) * max(reg, 1.0)
    return max(reg, 1.0)
