"""The normal-inverse-Wishart prior of the Gaussian mixture families: MAP update, log-prior.

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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.families.base import Params
from dask_em.families.gaussian_kernels import MAHALANOBIS, merge_scatter
from dask_em.families.gaussian_linalg import log_det_cholesky, precisions_from_cholesky


def mean_prior_vector(family: Any, n_features: int) -> np.ndarray:
    """m0 as a (D,) vector (``family.mean_prior`` may be a scalar)."""
    if family.mean_prior is None:
        raise ValueError("mean_pseudocount > 0 needs a mean_prior")
    return np.broadcast_to(np.asarray(family.mean_prior, dtype=np.float64), (n_features,))


def covariance_prior_term(family: Any, n_features: int) -> np.ndarray:
    """Sigma0 in the shape of one scatter term: (D, D), (D,) or scalar."""
    prior = np.asarray(1.0 if family.covariance_prior is None else family.covariance_prior)
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
    }[family.covariance_type]


def posterior_moments(
    family: Any, nk: np.ndarray, means: np.ndarray, scatter: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Means (K, D) and scatter with the prior's pseudo-observations added (MAP numerators).

    ``means`` are the weighted means of the statistics, ``scatter`` their scatter (shape
    per covariance type); with zero pseudocounts both come back unchanged.
    """
    n_features = means.shape[1]
    kappa, eta = family.mean_pseudocount, family.covariance_pseudocount
    if kappa:
        m0 = mean_prior_vector(family, n_features)
        shrink = kappa * nk / (kappa + nk)
        delta = means - m0
        means = (nk[:, None] * means + kappa * m0) / (nk + kappa)[:, None]
        scatter = merge_scatter(
            family.covariance_type, scatter, np.zeros_like(scatter), delta, shrink
        )
    if eta:
        scatter = scatter + eta * covariance_prior_term(family, n_features)
    return means, scatter


def niw_log_prior(family: Any, params: Params) -> float:
    """Log-prior of the means and covariances in ``params``, up to a constant (0 if flat)."""
    kappa, eta = family.mean_pseudocount, family.covariance_pseudocount
    if not (kappa or eta):
        return 0.0
    covariance_type = family.covariance_type
    n_features = params["means"].shape[1]
    chol = params["precisions_cholesky"]
    total = 0.0
    if eta:
        precisions = precisions_from_cholesky(chol, covariance_type)
        # log|Sigma_k| = -2 log det(L_k)
        log_det_cov = -2.0 * log_det_cholesky(chol, covariance_type, n_features)
        sigma0 = covariance_prior_term(family, n_features)
        if covariance_type == "full":
            trace = np.einsum("ij,kji->k", sigma0, precisions)
        elif covariance_type == "tied":
            trace = np.trace(sigma0 @ precisions)
        elif covariance_type == "diag":
            trace = precisions @ sigma0
        else:
            trace = sigma0 * precisions
        total -= 0.5 * eta * float(np.sum(log_det_cov) + np.sum(trace))
    if kappa:
        offsets = params["means"] - mean_prior_vector(family, n_features)
        maha = MAHALANOBIS[covariance_type](np.zeros((1, n_features)), offsets, chol)[0]
        total -= 0.5 * kappa * float(maha.sum())
    return total
