"""Hidden Markov model estimators with hmmlearn's surface, fitted over many sequences."""

from dask_em.hmm.discrete import CategoricalHMM, PoissonHMM
from dask_em.hmm.gaussian import GaussianHMM

#: Estimator classes by name, as model files record them.
MODEL_CLASSES = {cls.__name__: cls for cls in (GaussianHMM, PoissonHMM, CategoricalHMM)}

__all__ = ["MODEL_CLASSES", "CategoricalHMM", "GaussianHMM", "PoissonHMM"]
