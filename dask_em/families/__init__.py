"""Families of pure NumPy kernels: one block in, additive statistics out."""

from dask_em.families.base import Family, Params, Stats
from dask_em.families.gaussian import GaussianFamily

__all__ = ["Family", "GaussianFamily", "Params", "Stats"]
