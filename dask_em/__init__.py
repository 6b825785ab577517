"""dask_em: EM for latent-variable models on data larger than memory, on Dask.

>>> from dask_em import GaussianMixture
>>> gmm = GaussianMixture(n_components=4).fit("data.zarr")   # doctest: +SKIP
"""

from dask_em.data import open_zarr_array
from dask_em.exceptions import ConvergenceWarning, EmptyComponentWarning, MemoryStallError
from dask_em.hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from dask_em.mixture import BernoulliMixture, CategoricalMixture, GaussianMixture, PoissonMixture
from dask_em.model_io import load
from dask_em.sequences import Sequences
from dask_em.sweep import ModelSweep, sweep
from dask_em.version import __version__
from dask_em.zarr_source import InputGapWarning

__all__ = [
    "BernoulliMixture",
    "CategoricalHMM",
    "CategoricalMixture",
    "ConvergenceWarning",
    "EmptyComponentWarning",
    "GaussianHMM",
    "GaussianMixture",
    "InputGapWarning",
    "MemoryStallError",
    "ModelSweep",
    "PoissonHMM",
    "PoissonMixture",
    "Sequences",
    "__version__",
    "load",
    "open_zarr_array",
    "sweep",
]
