"""Dirichlet helpers shared by every family: MAP mixing weights, their log-prior, safe logs.

A symmetric Dirichlet(alpha) prior on the mixing weights (``weight_concentration =
alpha >= 1``) gives the MAP update (Bishop 2006, eq. 2.21 for the mode)

    pi_k = (N_k + alpha - 1) / (N + K (alpha - 1)),   log-prior = (alpha - 1) sum_k log pi_k,

which is maximum likelihood for alpha = 1.
"""

from __future__ import annotations

import numpy as np


def safe_log(values: np.ndarray) -> np.ndarray:
    """``log(values)``, zeros mapped to ``log(tiny)`` = -708 (no -inf, no NaN in 0*log 0)."""
    return np.log(np.maximum(values, np.finfo(np.float64).tiny))


def dirichlet_weights(nk: np.ndarray, total: float, concentration: float) -> np.ndarray:
    """MAP mixing weights under a symmetric Dirichlet(concentration) prior."""
    extra = concentration - 1.0
    return (nk + extra) / (total + len(nk) * extra)


def dirichlet_log_prior(weights: np.ndarray, concentration: float) -> float:
    """``(alpha - 1) sum log pi`` (0 for the flat prior alpha = 1)."""
    extra = concentration - 1.0
    return float(extra * safe_log(weights).sum()) if extra else 0.0
