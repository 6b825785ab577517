"""Mixture estimators with scikit-learn's surface."""

from dask_em.mixture.discrete import BernoulliMixture, CategoricalMixture, PoissonMixture
from dask_em.mixture.gaussian import GaussianMixture

#: Estimator classes by name, as model files record them.
MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (GaussianMixture, PoissonMixture, CategoricalMixture, BernoulliMixture)
}

__all__ = [
    "MODEL_CLASSES",
    "BernoulliMixture",
    "CategoricalMixture",
    "GaussianMixture",
    "PoissonMixture",
]
