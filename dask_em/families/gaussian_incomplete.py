"""Rows with NaN in the Gaussian family: the E-step, statistics, imputation, posteriors.

The thin layer between :class:`~dask_em.families.gaussian.GaussianFamily` and the
exact missing-value E-step of :mod:`dask_em.families.gaussian_missing` (Ghahramani &
Jordan, 1994): it builds the precision stack and log-determinants of the family's
covariance type and turns the step into statistics in the family's form.  ``family``
is a GaussianFamily (its ``covariance_type``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_em.families.base import (
    Params,
    Stats,
    Workspace,
    log_normalize,
    responsibilities_and_loglik,
)
from dask_em.families.gaussian_linalg import log_det_cholesky
from dask_em.families.gaussian_missing import (
    MissingEStep,
    completed_stats,
    log_det_covariances,
    precision_stack,
)


def missing_estep(
    family: Any, params: Params, X: np.ndarray, work: Workspace | None = None
) -> MissingEStep:
    """The exact E-step of rows with NaN (:class:`MissingEStep`) under ``params``."""
    n_components, n_features = params["means"].shape
    chol = params["precisions_cholesky"]
    return MissingEStep(
        np.asarray(X, dtype=np.float64),
        params["means"],
        precision_stack(chol, family.covariance_type, n_components, n_features),
        log_det_covariances(
            log_det_cholesky(chol, family.covariance_type, n_features), n_components
        ),
        work,
    )


def slice_stats(family: Any, params: Params, X: np.ndarray, w, work=None) -> Stats:
    """Exact EM statistics of a slice with missing values (rows with none observed
    get no weight)."""
    step = missing_estep(family, params, X, work)
    weighted_log_prob = step.log_prob  # in place: the step's arrays are scratch
    with np.errstate(divide="ignore"):
        weighted_log_prob += np.log(params["weights"])
    # the step's rows are in step.order
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)[step.order]
    w = np.where(step.observed_any, w, 0.0)
    resp, weight, loglik = responsibilities_and_loglik(weighted_log_prob, w)
    completed = completed_stats(step, resp, family.covariance_type)
    return {
        "weight": weight,
        "n_rows": len(X),
        "loglik": loglik,
        "nk": completed["nk"],
        "means": completed["means"],
        "scatter": completed["scatter"],
    }


def impute(family: Any, params: Params, X: np.ndarray) -> np.ndarray:
    """X with each missing entry replaced by ``E[x_m | x_o]`` under the mixture.

    That is ``sum_k P(k | x_o) E[x_m | x_o, k]``; a row with nothing observed gets
    the mixture mean.  Rows without NaN are returned unchanged.
    """
    X = np.array(X, dtype=np.float64)
    rows = np.flatnonzero(np.isnan(X).any(axis=1))
    if rows.size == 0:
        return X
    step = missing_estep(family, params, X[rows])
    with np.errstate(divide="ignore"):
        _, posterior = log_normalize(step.log_prob + np.log(params["weights"]))
    rows = rows[step.order]
    X[rows] = np.where(np.isnan(X[rows]), step.conditional_mean(posterior), X[rows])
    return X


def posterior_stats(family: Any, params: Params, X: np.ndarray, resp: np.ndarray) -> Stats:
    """Exact EM statistics of rows that all hold NaN, under given posteriors (n, K).

    Their completed moments (conditional means and covariances of the missing block
    given ``params``); ``loglik`` is 0; rows with nothing observed get no weight.
    """
    step = missing_estep(family, params, X)
    # the step's rows are in step.order
    sub_resp = resp[step.order] * step.observed_any[:, None]
    completed = completed_stats(step, sub_resp, family.covariance_type)
    return {
        "weight": float(step.observed_any.sum()),
        "n_rows": len(X),
        "loglik": 0.0,
        "nk": completed["nk"],
        "means": completed["means"],
        "scatter": completed["scatter"],
    }
