"""Linear algebra of Gaussian components: precision Cholesky factors and what follows.

As in scikit-learn, only the Cholesky factor ``L`` of each precision matrix is used in the
E-step (``precision = L L^T``); ``log det(precision)^{1/2} = sum(log diag L)``, and
nothing is ever inverted there.  Shapes per covariance type: see
:mod:`dask_em.families.gaussian_kernels`.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


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


def dense_factors(chol: np.ndarray, covariance_type: str, n_components: int, n_features: int):
    """The precision factors ``L_k`` (``P_k = L_k L_k^T``) of any type as (K, D, D)."""
    if covariance_type == "full":
        return chol
    if covariance_type == "tied":
        return np.broadcast_to(chol, (n_components, n_features, n_features))
    scales = np.broadcast_to(
        chol if covariance_type == "diag" else chol[:, None], (n_components, n_features)
    )
    return scales[:, :, None] * np.eye(n_features)
