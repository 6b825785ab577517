"""Mixture estimators with scikit-learn's surface."""

from dask_em.mixture.discrete import BernoulliMixture, CategoricalMixture, PoissonMixture
from dask_em.mixture.gaussian import GaussianMixture

__all__ = ["BernoulliMixture", "CategoricalMixture", "GaussianMixture", "PoissonMixture"]
