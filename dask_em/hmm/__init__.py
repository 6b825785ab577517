"""Hidden Markov model estimators with hmmlearn's surface, fitted over many sequences."""

from dask_em.hmm.discrete import CategoricalHMM, PoissonHMM
from dask_em.hmm.gaussian import GaussianHMM

__all__ = ["CategoricalHMM", "GaussianHMM", "PoissonHMM"]
