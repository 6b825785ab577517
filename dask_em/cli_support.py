"""What the ``dask-em`` commands share: the model registry, reading INPUT, the cluster.

The registry maps a command-line model name to its estimator class.  Hidden Markov
models join it as soon as their classes exist in :mod:`dask_em`; their INPUT is a Zarr
group holding ``values`` (total steps, D) and ``lengths`` (sequences,).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask_em

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad usage or bad input: exit status 2 with a one-line message."""


class ClusterError(Exception):
    """The cluster failed (unreachable scheduler, lost connection): exit status 3."""


@dataclass(frozen=True)
class ModelKind:
    """One model the command line knows: its name there and its estimator class."""

    name: str
    estimator: type
    sequences: bool = False  # INPUT is a group of ``values`` and ``lengths`` (HMMs)


def model_kinds() -> dict[str, ModelKind]:
    """Command-line model names -> :class:`ModelKind`, for the classes that exist."""
    kinds = [
        ModelKind("gmm", dask_em.GaussianMixture),
        ModelKind("poisson", dask_em.PoissonMixture),
        ModelKind("categorical", dask_em.CategoricalMixture),
        ModelKind("bernoulli", dask_em.BernoulliMixture),
    ]
    for name, class_name in (
        ("gaussian-hmm", "GaussianHMM"),
        ("poisson-hmm", "PoissonHMM"),
        ("categorical-hmm", "CategoricalHMM"),
    ):
        if hasattr(dask_em, class_name):
            kinds.append(ModelKind(name, getattr(dask_em, class_name), sequences=True))
    return {kind.name: kind for kind in kinds}


def kind_of_estimator(estimator: Any) -> ModelKind:
    """The registry entry of a (loaded) estimator."""
    for kind in model_kinds().values():
        if type(estimator) is kind.estimator:
            return kind
    raise UsageError(f"the command line does not know models of type {type(estimator).__name__}")


def build_estimator(kind: ModelKind, options: dict[str, Any]) -> Any:
    """``kind.estimator(**options)``; options the class does not take are refused.

    ``options`` maps constructor parameters to values; None means "not given".
    """
    accepted = set(inspect.signature(kind.estimator).parameters)
    given = {name: value for name, value in options.items() if value is not None}
    refused = sorted(name for name in given if name not in accepted)
    if refused:
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise UsageError(f"{flags} does not apply to {kind.name} models")
    return kind.estimator(**given)


def fit_keywords(estimator: Any, optional: dict[str, Any], **keywords: Any) -> dict[str, Any]:
    """The keywords for ``estimator.fit``: ``keywords`` that are given (not None/False)
    must be accepted; ``optional`` ones are passed only if they are."""
    accepted = set(inspect.signature(estimator.fit).parameters)
    given = {name: value for name, value in keywords.items() if value not in (None, False)}
    refused = sorted(name for name in given if name not in accepted)
    if refused:
        raise UsageError(f"{type(estimator).__name__} does not support {', '.join(refused)}")
    return given | {name: value for name, value in optional.items() if name in accepted}


# -- INPUT -------------------------------------------------------------------------------
def is_url(path: str) -> bool:
    return "://" in path


def parse_storage_options(items: list[str] | None, path: str) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs -> dict (values parsed as JSON when they are JSON)."""
    if not items:
        return None
    if not is_url(path):
        raise UsageError(f"--storage-option applies to URLs (s3://, gs://, ...), not to {path}")
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def open_input(
    path: str,
    variable: str | None = None,
    storage_options: dict | None = None,
    sequences: bool = False,
) -> tuple[Any, Any]:
    """INPUT as ``(X, lengths)``: a lazy array and, for sequence models, the lengths.

    ``path``: a Zarr array, a Zarr group (with ``variable``; an xarray Dataset written to
    Zarr is one), or a netCDF file (with ``variable``), local or an fsspec URL.
    """
    import dask.array as da
    import zarr

    if not is_url(path) and not os.path.exists(path):
        raise UsageError(f"INPUT {path} does not exist")
    if path.endswith((".nc", ".nc4", ".netcdf")):
        return _open_netcdf(path, variable, storage_options), None
    try:
        node = zarr.open(store=path, mode="r", storage_options=storage_options)
    except FileNotFoundError:
        raise UsageError(f"INPUT {path}: nothing found there") from None
    except Exception as error:  # zarr raises several types for what it cannot read
        raise UsageError(
            f"INPUT {path} is not a readable Zarr store: {_first_line(error)}"
        ) from None
    if variable is not None:
        if not isinstance(node, zarr.Group):
            raise UsageError(f"--variable needs a Zarr group, but INPUT {path} is an array")
        if variable not in node:
            raise UsageError(f"INPUT {path} has no {variable!r}; its members are {_members(node)}")
        node = node[variable]
    if sequences:
        if not isinstance(node, zarr.Group) or "values" not in node or "lengths" not in node:
            raise UsageError(
                f"INPUT {path} must be a Zarr group with arrays 'values' (steps, features) "
                "and 'lengths' (sequences)"
            )
        from dask_em.sequences import Sequences

        try:
            return Sequences.from_group(node), None  # blocks on sequence boundaries
        except ValueError as error:
            raise UsageError(f"INPUT {path}: {error}") from None
    if isinstance(node, zarr.Group):
        raise UsageError(
            f"INPUT {path} is a Zarr group; choose one of its arrays with --variable "
            f"(its members are {_members(node)})"
        )
    return da.from_zarr(node), None


def _open_netcdf(path: str, variable: str | None, storage_options: dict | None):
    import xarray as xr

    if variable is None:
        raise UsageError(f"INPUT {path} is a netCDF file; name the variable with --variable")
    try:
        ds = xr.open_dataset(path, chunks={}, storage_options=storage_options)
    except Exception as error:  # backends raise several types
        raise UsageError(
            f"INPUT {path} is not a readable netCDF file: {_first_line(error)}"
        ) from None
    if variable not in ds:
        raise UsageError(f"INPUT {path} has no variable {variable!r}; it has {sorted(ds)}")
    return ds[variable]


def _members(group) -> list[str]:
    return sorted(name for name, _ in group.members())


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# -- the cluster -----------------------------------------------------------------------
def add_cluster_arguments(parser) -> None:
    group = parser.add_argument_group(
        "cluster", "an existing scheduler (--scheduler), or a LocalCluster started here"
    )
    group.add_argument("--scheduler", metavar="ADDRESS", help="e.g. tcp://10.0.0.5:8786")
    group.add_argument("--n-workers", type=int, metavar="N", help="LocalCluster workers")
    group.add_argument("--threads-per-worker", type=int, metavar="N")
    group.add_argument("--memory-limit", metavar="BYTES", help="per worker, e.g. 4GiB")
    group.add_argument(
        "--dashboard-address",
        default=":8787",
        metavar="[HOST]:PORT",
        help="LocalCluster dashboard (another port is chosen when this one is busy)",
    )


@contextlib.contextmanager
def connect(args) -> Iterator[Any]:
    """A ``distributed.Client`` on ``--scheduler`` or on a LocalCluster started here.

    The dashboard link is printed.  OSError or TimeoutError from an unreachable or lost
    scheduler become :class:`ClusterError`.  LocalCluster workers shut down when this
    process dies without closing them (their nanny loses its parent); to be sure, kill
    the whole process group (``kill -9 -- -PGID``).
    """
    from distributed import Client, LocalCluster

    local_options = {
        "n_workers": args.n_workers,
        "threads_per_worker": args.threads_per_worker,
        "memory_limit": args.memory_limit,
    }
    given = [name for name, value in local_options.items() if value is not None]
    if args.scheduler and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} start a LocalCluster and do not combine with --scheduler")
    for name in ("n_workers", "threads_per_worker"):
        if local_options[name] is not None and local_options[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        if args.scheduler:
            try:
                client = stack.enter_context(Client(args.scheduler))
            except (OSError, TimeoutError) as error:
                raise ClusterError(
                    f"cannot reach the scheduler at {args.scheduler}: {error}"
                ) from error
        else:
            options = {name: value for name, value in local_options.items() if value is not None}
            cluster = stack.enter_context(
                LocalCluster(dashboard_address=args.dashboard_address, **options)
            )
            client = stack.enter_context(Client(cluster))
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        try:
            yield client
        except (OSError, TimeoutError) as error:
            if client.status != "running":  # the connection to the scheduler is gone
                raise ClusterError(f"lost the cluster: {error}") from error
            raise
