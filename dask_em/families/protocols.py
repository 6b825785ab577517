"""The complete contracts of the families: what the estimators, the engine and the HMM call.

:class:`dask_em.families.base.Family` is what the EM loop itself needs (``block_stats``,
``merge``, ``m_step``, ``objective``).  The estimators and the hidden Markov model need
more; this module lists all of it, in two Protocols:

- :class:`MixtureFamily`: a mixture model on one block (Gaussian, Poisson, categorical,
  Bernoulli).  A mixture estimator composes one with the fit driver.
- :class:`EmissionFamily`: what :class:`dask_em.families.hmm.HMMFamily` asks of the
  family that models one observation given the hidden state.  Every mixture family is an
  emission family (its mixing weights are then unused placeholders).

``handles_missing`` replaces asking a family what it is: ``True`` when the family's
``log_component_prob`` and ``posterior_stats`` take rows with NaN themselves (the
Gaussian marginalizes the missing features, exact EM); ``False`` when the caller must
leave such rows out (the HMM gives a missing step no emission term).

``tests/test_family_contract.py`` lists every family (each covariance type, and the HMM
over each emission) and checks it against these Protocols and against the behaviour they
promise: additivity over any split, merge order, a finite M-step, sample shapes.  A new
family is added to that list, and is done when it passes.

Shapes: ``n`` rows of a block, ``D`` features, ``K`` components.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from dask_em.families.base import Params, Stats


@runtime_checkable
class EmissionFamily(Protocol):
    """Per-state observation model of a hidden Markov model (see module docstring)."""

    name: str
    #: True when rows with NaN are accepted by log_component_prob and posterior_stats.
    handles_missing: bool

    def make_params(self, weights: np.ndarray, *args, **values) -> Params:
        """Complete parameter dict from the mixing ``weights`` (K,) and the family's arrays."""

    def with_weights(self, params: Params, weights: np.ndarray) -> Params:
        """``params`` with the mixing ``weights`` (K,) replaced, as :meth:`make_params`
        would build it (what derives from the weights recomputed)."""

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters of a K-component model on D features (BIC/AIC)."""

    def log_component_prob(self, params: Params, X: np.ndarray) -> np.ndarray:
        """``log p(x_i | k)``, shape (n, K), float64."""

    def posterior_stats(self, params: Params, X: np.ndarray, resp: np.ndarray) -> Stats:
        """Additive statistics of ``X`` (n, D) under given posteriors ``resp`` (n, K)."""

    def merge(self, *parts: Stats) -> Stats:
        """Statistics of disjoint row sets combined (associative, commutative)."""

    def m_step(self, stats: Stats) -> Params:
        """MAP (or ML) parameters from merged statistics; finite for any statistics."""

    def log_prior(self, params: Params) -> float:
        """Log prior density of ``params`` (0 under maximum likelihood)."""

    def init_features(self, X: np.ndarray) -> np.ndarray:
        """(n, F) coordinates in which k-means initialization measures distances."""

    def sample_component(
        self, params: Params, component: int, n_samples: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``n_samples`` rows (n_samples, D) drawn from component ``component``."""


@runtime_checkable
class MixtureFamily(EmissionFamily, Protocol):
    """A mixture model's kernels on one block (see module docstring)."""

    def block_stats(self, params: Params, X: np.ndarray, w: np.ndarray | None = None) -> Stats:
        """E-step fused with the statistics of ``X`` (n, D), row weights ``w`` (n,) or None."""

    def responsibility_stats(
        self, X: np.ndarray, resp: np.ndarray, w: np.ndarray | None = None
    ) -> Stats:
        """Statistics of ``X`` under given responsibilities (n, K) (initialization)."""

    def weighted_log_prob(self, params: Params, X: np.ndarray) -> np.ndarray:
        """``log pi_k + log p(x_i | k)``, shape (n, K)."""

    def objective(self, stats: Stats, params: Params) -> float:
        """``(log-likelihood + log-prior) / total weight`` at ``params``."""

    def empty_components(self, stats: Stats) -> np.ndarray:
        """Indices of the components that hold (almost) no weight."""

    def reseed(self, params: Params, empty: np.ndarray, sample: np.ndarray) -> Params:
        """``params`` with each empty component moved onto a row of ``sample`` (m, D)."""
