"""Poisson mixture kernels: independent Poisson counts per feature within a component.

Parameters: ``weights`` (K,) and ``rates`` (K, D), expected counts per row.

    log p(x | k) = sum_d [ x_d log lambda_kd - lambda_kd - log(x_d!) ]

M-step under a Gamma(alpha, beta) prior on every rate (shape alpha >= 1, rate beta >= 0;
alpha = 1, beta = 0 is the flat prior and gives maximum likelihood):

    lambda_kd = (alpha - 1 + sum_i r_ik x_id) / (beta + sum_i r_ik),
    log-prior = sum_kd [ (alpha - 1) log lambda_kd - beta lambda_kd ]   (+ const).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from dask_em.families.base import Params, Stats
from dask_em.families.discrete import DiscreteMixtureFamily, safe_log
from dask_em.families.discrete_compiled import affine_stats


@dataclass(frozen=True)
class PoissonFamily(DiscreteMixtureFamily):
    """Poisson mixture kernels (see module docstring)."""

    rate_alpha: float = 1.0
    rate_beta: float = 0.0
    name: str = "poisson"

    parameter = "rates"

    def log_component_prob(self, params: Params, X: np.ndarray) -> np.ndarray:
        rates = params["rates"]
        return X @ safe_log(rates).T - rates.sum(axis=1) - gammaln(X + 1.0).sum(axis=1)[:, None]

    def compiled_stats(self, params: Params, X: np.ndarray, w: np.ndarray) -> Stats:
        rates = params["rates"]
        offsets = safe_log(params["weights"]) - rates.sum(axis=1)
        return affine_stats(X, w, safe_log(rates), offsets, poisson=True)

    @staticmethod
    def sums(X: np.ndarray, resp: np.ndarray) -> np.ndarray:
        """``sum_i r_ik x_id``, shape (K, D)."""
        return resp.T @ X

    def component_m_step(self, stats: Stats) -> np.ndarray:
        numerator = self.rate_alpha - 1.0 + stats["sums"]
        denominator = np.broadcast_to(self.rate_beta + stats["nk"][:, None], numerator.shape)
        # 0/0 for an empty component under the flat prior: a placeholder, re-seeded later
        return np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0)

    def component_log_prior(self, params: Params) -> float:
        rates = params["rates"]
        if self.rate_alpha == 1.0 and self.rate_beta == 0.0:
            return 0.0
        return float(((self.rate_alpha - 1.0) * safe_log(rates) - self.rate_beta * rates).sum())

    def n_parameters(self, n_components: int, n_features: int) -> int:
        return n_components * n_features + n_components - 1

    def init_features(self, X: np.ndarray) -> np.ndarray:
        """Anscombe's square root makes Poisson counts about equally variable for k-means."""
        return 2.0 * np.sqrt(np.asarray(X, dtype=np.float64) + 0.375)

    @staticmethod
    def reseed_row(row: np.ndarray, sample: np.ndarray) -> np.ndarray:
        return 0.5 * row + 0.5 * sample.mean(axis=0) + 1e-3

    def sample_component(
        self, params: Params, k: int, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        return rng.poisson(params["rates"][k], size=(n, params["rates"].shape[1]))
