"""Bernoulli mixture kernels: D independent binary features per row and component.

Parameters: ``weights`` (K,) and ``probabilities`` (K, D), ``P(x_d = 1 | k)``.

    log p(x | k) = sum_d [ x_d log p_kd + (1 - x_d) log(1 - p_kd) ]

M-step under a symmetric Beta(1 + a, 1 + a) prior (``pseudocount`` a >= 0; a = 0 is
maximum likelihood):

    p_kd = (sum_i r_ik x_id + a) / (N_k + 2 a),
    log-prior = a sum [ log p + log(1 - p) ]   (+ const).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.families.base import Params, Stats
from dask_em.families.discrete import DiscreteMixtureFamily, safe_log
from dask_em.families.discrete_compiled import affine_stats


@dataclass(frozen=True)
class BernoulliFamily(DiscreteMixtureFamily):
    """Bernoulli mixture kernels (see module docstring)."""

    pseudocount: float = 0.0
    name: str = "bernoulli"

    parameter = "probabilities"

    def log_component_prob(self, params: Params, X: np.ndarray) -> np.ndarray:
        p = params["probabilities"]
        log_p, log_q = safe_log(p), safe_log(1.0 - p)
        return X @ (log_p - log_q).T + log_q.sum(axis=1)

    def compiled_stats(self, params: Params, X: np.ndarray, w: np.ndarray) -> Stats:
        p = params["probabilities"]
        log_p, log_q = safe_log(p), safe_log(1.0 - p)
        offsets = safe_log(params["weights"]) + log_q.sum(axis=1)
        return affine_stats(X, w, log_p - log_q, offsets, poisson=False)

    @staticmethod
    def sums(X: np.ndarray, resp: np.ndarray) -> np.ndarray:
        """``sum_i r_ik x_id``, shape (K, D)."""
        return resp.T @ X

    def component_m_step(self, stats: Stats) -> np.ndarray:
        numerator = stats["sums"] + self.pseudocount
        denominator = np.broadcast_to(
            stats["nk"][:, None] + 2.0 * self.pseudocount, numerator.shape
        )
        half = np.full_like(numerator, 0.5)
        return np.divide(numerator, denominator, out=half, where=denominator > 0)

    def component_log_prior(self, params: Params) -> float:
        if not self.pseudocount:
            return 0.0
        p = params["probabilities"]
        return float(self.pseudocount * (safe_log(p) + safe_log(1.0 - p)).sum())

    def n_parameters(self, n_components: int, n_features: int) -> int:
        return n_components * n_features + n_components - 1

    def init_features(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)

    @staticmethod
    def reseed_row(row: np.ndarray, sample: np.ndarray) -> np.ndarray:
        return np.clip(0.5 * row + 0.5 * sample.mean(axis=0), 0.01, 0.99)

    def sample_component(
        self, params: Params, k: int, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        p = params["probabilities"][k]
        return (rng.random((n, len(p))) < p).astype(np.int8)
