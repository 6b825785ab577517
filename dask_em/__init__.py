"""dask_em: EM for latent-variable models on data larger than memory, on Dask.

>>> from dask_em import GaussianMixture
>>> gmm = GaussianMixture(n_components=4).fit("data.zarr")   # doctest: +SKIP

The estimators and helpers below are imported on first use (PEP 562), so that a Dask
worker, which imports ``dask_em`` to run a pass's tasks, loads only the engine and the
kernels, not xarray, pandas and the estimators' model-file code (about a second of
every worker process's start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dask_em.exceptions import ConvergenceWarning, EmptyComponentWarning, MemoryStallError
from dask_em.version import __version__

#: Public name -> the module that defines it, imported when the name is first read.
_LAZY = {
    "open_zarr_array": "dask_em.data",
    "CategoricalHMM": "dask_em.hmm",
    "GaussianHMM": "dask_em.hmm",
    "PoissonHMM": "dask_em.hmm",
    "BernoulliMixture": "dask_em.mixture",
    "CategoricalMixture": "dask_em.mixture",
    "GaussianMixture": "dask_em.mixture",
    "PoissonMixture": "dask_em.mixture",
    "load": "dask_em.model_io",
    "Sequences": "dask_em.sequences",
    "ModelSweep": "dask_em.sweep",
    "sweep": "dask_em.sweep",
    "InputGapWarning": "dask_em.zarr_source",
}

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


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'dask_em' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and editors see
    from dask_em.data import open_zarr_array
    from dask_em.hmm import CategoricalHMM, GaussianHMM, PoissonHMM
    from dask_em.mixture import (
        BernoulliMixture,
        CategoricalMixture,
        GaussianMixture,
        PoissonMixture,
    )
    from dask_em.model_io import load
    from dask_em.sequences import Sequences
    from dask_em.sweep import ModelSweep, sweep
    from dask_em.zarr_source import InputGapWarning
