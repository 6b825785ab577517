"""Mixture estimators with scikit-learn's surface."""

from dask_em.mixture.gaussian import GaussianMixture

__all__ = ["GaussianMixture"]
