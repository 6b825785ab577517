"""The installed version of dask_em (model files record it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dask_em")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
