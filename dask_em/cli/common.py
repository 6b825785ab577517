"""What the ``dask-em`` commands share: argument types and groups, INPUT, the model
registry's names, the cluster.

Names, choices and defaults come from the library (the registry, the estimators'
signatures, the modules' constants), so the command line cannot drift from it.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from dask_em import engine, registry, stores
from dask_em.credentials import split_storage_options
from dask_em.registry import ModelKind
from dask_em.zarr_source import InputGapWarning


class UsageError(Exception):
    """Bad usage or bad input: exit status 2 with a one-line message."""


# -- argument types ---------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


# -- models -----------------------------------------------------------------------------
def model_kinds() -> dict[str, ModelKind]:
    """The models the command line knows: every registered one."""
    return registry.model_kinds()


def default_of(kind: ModelKind, parameter: str) -> Any:
    """The default of ``parameter`` in ``kind``'s estimator (None if it has none)."""
    found = inspect.signature(kind.estimator).parameters.get(parameter)
    return None if found is None else found.default


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


def load_model(path: str):
    """The model saved at ``path``; UsageError for a path that holds something else."""
    from dask_em.model_io import FORMAT_NAME, load

    if not os.path.exists(path):
        raise UsageError(f"MODEL {path} does not exist")
    found = _zarr_node_kind(path)
    if found != FORMAT_NAME:
        raise UsageError(
            f"MODEL {path} is {found}, not a dask_em model file; pass the model that "
            "dask-em fit saved with --out (MODEL comes first, then INPUT)"
        )
    return load(path)


def _zarr_node_kind(path: str) -> str:
    """What ``path`` holds, in words, or the ``dask_em_format`` of a Zarr group."""
    import zarr

    if os.path.isfile(path):
        return "a file (a model is a Zarr store, a directory)"
    try:
        node = zarr.open(store=path, mode="r")
    except Exception:  # zarr raises several types for what it cannot read
        return "not a readable Zarr store"
    if isinstance(node, zarr.Array):
        return f"a Zarr array of shape {node.shape} (data?)"
    found = node.attrs.get("dask_em_format")
    if found is None:
        return "a Zarr group without a dask_em_format attribute (data?)"
    if found == "dask_em.checkpoint":
        return "the checkpoint of a fit (dask-em fit --resume reads it)"
    return str(found)


# -- paths --------------------------------------------------------------------------------
def local_path(path: str, flag: str) -> str:
    """``path`` made absolute; outputs are renamed into place, so they must be local."""
    if stores.is_url(path):
        raise UsageError(f"{flag} must be a local path (it is renamed into place), got {path}")
    return os.path.abspath(path)


def refuse_existing(paths: list[str], overwrite: bool) -> None:
    for path in paths:
        if os.path.lexists(path) and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")


# -- INPUT --------------------------------------------------------------------------------
def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="Zarr array or group, or netCDF file: a local path or an fsspec URL (s3://...)",
    )
    parser.add_argument(
        "--variable",
        metavar="NAME",
        help="the array of a Zarr group (or the variable of an xarray Dataset) to use",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec storage option for a URL INPUT (repeatable; VALUE is JSON or text), "
        "e.g. anon=true or endpoint_url=http://... . For values that are not secret: a "
        "command line is visible to every local user (ps); give keys, secrets and tokens "
        f"with --storage-options-file or the environment variable {STORAGE_OPTIONS_ENV}",
    )
    parser.add_argument(
        "--storage-options-file",
        metavar="PATH",
        help="a JSON object of fsspec storage options for a URL INPUT, e.g. "
        '{"key": "...", "secret": "..."} (the place for secrets; also read from '
        f"${STORAGE_OPTIONS_ENV}, a JSON object)",
    )
    parser.add_argument(
        "--strict-input",
        action="store_true",
        help="refuse a Zarr INPUT with chunks absent from its store (they would read as "
        "the fill value); by default that is a warning",
    )


#: Environment variable holding a JSON object of storage options (secrets included).
STORAGE_OPTIONS_ENV = "DASK_EM_STORAGE_OPTIONS"


def parse_storage_options(items: list[str] | None, path: str) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs -> dict (values parsed as JSON when they are JSON).

    Warns on stderr of a secret given this way (see :func:`storage_options`)."""
    if not items:
        return None
    if not stores.is_url(path):
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
    _, secret = split_storage_options(options)
    if secret:
        print(
            f"dask-em: warning: --storage-option {', '.join(sorted(secret))} puts a secret on "
            "the command line, where every local user can read it (ps, /proc); give it "
            f"with --storage-options-file or ${STORAGE_OPTIONS_ENV} instead",
            file=sys.stderr,
            flush=True,
        )
    return options


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{source} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(found, dict):
        raise UsageError(f"{source} must hold a JSON object, got {type(found).__name__}")
    return found


def storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """INPUT's storage options: ``$DASK_EM_STORAGE_OPTIONS``, then
    ``--storage-options-file``, then ``--storage-option`` (later ones win a key).

    None when none is given.  Options from the file or the environment apply only to a
    URL INPUT; the environment's are ignored for a local one (it may be set for others).
    """
    options: dict[str, Any] = {}
    from_environment = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if from_environment and stores.is_url(args.input):
        options |= _json_object(from_environment, f"${STORAGE_OPTIONS_ENV}")
    path = getattr(args, "storage_options_file", None)
    if path:
        if not stores.is_url(args.input):
            raise UsageError(
                f"--storage-options-file applies to URLs (s3://, gs://, ...), not to {args.input}"
            )
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise UsageError(
                f"cannot read --storage-options-file {path}: {error.strerror}"
            ) from None
        options |= _json_object(text, f"--storage-options-file {path}")
    options |= parse_storage_options(args.storage_option, args.input) or {}
    return options or None


def read_input(args: argparse.Namespace, sequences: bool) -> tuple[Any, Any]:
    """INPUT of ``args`` as ``(X, lengths)`` (see :func:`dask_em.stores.open_input`).

    Chunks absent from the store are one warning line on stderr (an error with
    ``--strict-input``)."""
    options = storage_options(args)
    strict = getattr(args, "strict_input", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputGapWarning)
        try:
            found = stores.open_input(args.input, args.variable, options, sequences, strict)
        except ValueError as error:
            raise UsageError(_in_flags(str(error))) from None
    for warning in caught:
        if issubclass(warning.category, InputGapWarning):
            text = _in_flags(" ".join(str(warning.message).split()))
            print(f"dask-em: warning: {text}", file=sys.stderr, flush=True)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return found


def _in_flags(text: str) -> str:
    """A library message in the command line's terms."""
    return text.replace("because strict_input=True", "under --strict-input").replace(
        "strict_input=True", "--strict-input"
    )


# -- the cluster ----------------------------------------------------------------------------
def add_cluster_arguments(parser) -> None:
    group = parser.add_argument_group(
        "cluster", "an existing scheduler (--scheduler), or a LocalCluster started here"
    )
    group.add_argument("--scheduler", metavar="ADDRESS", help="e.g. tcp://10.0.0.5:8786")
    group.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=engine.DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for --scheduler to answer, and again for its workers "
        f"(default {engine.DEFAULT_CONNECT_TIMEOUT:g})",
    )
    group.add_argument(
        "--min-workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="wait (up to --connect-timeout) until --scheduler has N workers (default 1)",
    )
    group.add_argument("--n-workers", type=int, metavar="N", help="LocalCluster workers")
    group.add_argument("--threads-per-worker", type=int, metavar="N")
    group.add_argument("--memory-limit", metavar="BYTES", help="per worker, e.g. 4GiB")
    group.add_argument(
        "--verbose",
        action="store_true",
        help="show the log lines of dask_em and of the LocalCluster's workers, and the "
        "traceback of a failure (by default a failure is one line)",
    )
    group.add_argument(
        "--dashboard-address",
        metavar="[HOST]:PORT",
        help="LocalCluster dashboard, or 'none' for no dashboard (default "
        f"{engine.cluster.DASHBOARD_EVERY_INTERFACE} on every interface; "
        f"{engine.cluster.DASHBOARD_LOOPBACK} "
        "when Dask's configuration asks for TLS, whose LocalCluster then speaks TLS; "
        "another port is chosen when this one is busy)",
    )
    add_stall_argument(group)


def add_direct_passes_argument(parser) -> None:
    """``--direct-passes``: the fit's passes over data in the workers' memory without
    graphs (:mod:`dask_em.engine.direct`); for the commands that fit."""
    parser.add_argument(
        "--direct-passes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the fit's passes over data held in the workers' memory without Dask "
        "graphs, each worker running its blocks: no scheduling per pass (tens of ms "
        "saved), but the passes show neither in the dashboard's task stream nor in its "
        "spans (default: Dask config dask_em.direct-passes, else off)",
    )


def add_stall_argument(group) -> None:
    """``--stall-timeout``: how long a pass may wait on workers paused for memory."""
    group.add_argument(
        "--stall-timeout",
        type=non_negative_float,
        metavar="SECONDS",
        help="stop (exit 3) when workers are paused for memory and no block finished for "
        f"this long (default: Dask config {engine.STALL_TIMEOUT_KEY}, else "
        f"{engine.DEFAULT_STALL_TIMEOUT:g}; 0: wait forever)",
    )


@contextlib.contextmanager
def connect(args) -> Iterator[Any]:
    """The client of ``--scheduler``, or of a LocalCluster started here
    (:func:`dask_em.engine.connect`), after checking the flags combine."""
    local_options = {
        "n_workers": args.n_workers,
        "threads_per_worker": args.threads_per_worker,
        "memory_limit": args.memory_limit,
    }
    quiet_workers = {} if args.verbose else {"silence_logs": logging.CRITICAL}
    given = [name for name, value in local_options.items() if value is not None]
    if args.scheduler and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} start a LocalCluster and do not combine with --scheduler")
    for name in ("n_workers", "threads_per_worker"):
        if local_options[name] is not None and local_options[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
    dashboard = (args.dashboard_address or "").lower() != "none"
    with (
        engine.connect(
            args.scheduler,
            dashboard_address=args.dashboard_address if dashboard else None,
            dashboard=dashboard,
            timeout=args.connect_timeout,
            min_workers=args.min_workers,
            **local_options,
            quiet=not args.verbose,
            stall_timeout=getattr(args, "stall_timeout", None),
            direct_passes=getattr(args, "direct_passes", None),
            **({} if args.scheduler else quiet_workers),
        ) as client,
    ):
        yield client
