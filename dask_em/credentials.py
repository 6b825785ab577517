"""Storage credentials kept out of task graphs: delivered to the workers out of band.

A task graph is stored by the scheduler, shown on the dashboard, sent to every worker
and written into error reports; it must not hold a secret.  So the storage options of a
Zarr URL are split (:func:`split_storage_options`): the public part (endpoint, region,
``anon``...) travels in the graph; the secret part (keys, secrets, tokens, passwords)
stays in this process's registry under a random reference (:func:`register`) and goes
to the workers in a worker plugin (:func:`deliver`, ``CredentialsPlugin``).  A task
finds it again by reference (:func:`lookup`).

The scheduler holds the plugin so that a worker that joins or restarts during a fit
gets it too; it never appears in a task, an event, a log line, an exception, a model
file, a report or a checkpoint.  Anyone who may submit work to the scheduler can run
code on its workers, and so could read what they hold: protect the scheduler itself
(TLS, see ``deployment/README.md``).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from typing import Any

#: Option names that hold a secret, in any fsspec filesystem's options (compared in
#: lower case; nested dictionaries such as ``client_kwargs`` are searched too).
SECRET_NAMES = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "session_token",
        "security_token",
        "access_key",
        "secret_key",
        "access_key_id",
        "secret_access_key",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "sas_token",
        "client_secret",
        "connection_string",
        "credential",
        "credentials",
        "api_key",
    }
)

#: reference -> secret options, in this process (the client, or a worker).
_REGISTRY: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()
#: plugin names already registered, per scheduler (its id, else its address).
_DELIVERED: dict[str, set[str]] = {}


def is_secret_name(name: str) -> bool:
    """Whether an option called ``name`` holds a secret (see :data:`SECRET_NAMES`)."""
    lowered = name.lower()
    return lowered in SECRET_NAMES or any(
        part in lowered for part in ("secret", "password", "token")
    )


def _holds_secret(name: str, value: Any) -> bool:
    if is_secret_name(name):
        return True
    if isinstance(value, Mapping):
        return any(_holds_secret(str(inner), v) for inner, v in value.items())
    return False


def split_storage_options(
    options: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(public, secret)``: the entries of ``options`` that may travel in a task graph,
    and those that must not (a top-level entry holding a secret anywhere inside, such as
    ``client_kwargs`` with ``aws_secret_access_key``, is secret as a whole)."""
    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for name, value in (options or {}).items():
        (secret if _holds_secret(str(name), value) else public)[name] = value
    return public, secret


def register(secret_options: Mapping[str, Any]) -> str | None:
    """The reference of ``secret_options`` in this process's registry (None for none).

    The same options give the same reference; the reference is random, not derived
    from the secret, so a graph that carries it tells nothing about the secret.
    """
    if not secret_options:
        return None
    options = dict(secret_options)
    with _LOCK:
        for reference, known in _REGISTRY.items():
            if known == options:
                return reference
        reference = "dask-em-credentials-" + secrets.token_hex(8)
        _REGISTRY[reference] = options
    return reference


def lookup(reference: str | None, where: str) -> dict[str, Any]:
    """The secret options of ``reference`` in this process (``{}`` for None).

    ValueError naming ``where`` (the store) when this process never received them:
    a worker that a client other than the fitting one computes on, for example.
    """
    if reference is None:
        return {}
    found = _REGISTRY.get(reference)
    if found is None:
        raise ValueError(
            f"this process has no credentials for {where}: dask_em delivers them to the "
            "workers of the client that opened the store; on another client call "
            "dask_em.credentials.deliver(client) first"
        )
    return dict(found)


def install(reference: str, options: Mapping[str, Any]) -> None:
    """Put ``options`` into this process's registry under ``reference``."""
    with _LOCK:
        _REGISTRY[reference] = dict(options)


def remove(reference: str) -> None:
    """Take ``reference`` out of this process's registry."""
    with _LOCK:
        _REGISTRY.pop(reference, None)


def references() -> list[str]:
    """The references registered in this process."""
    with _LOCK:
        return list(_REGISTRY)


def deliver(client: Any) -> int:
    """Give ``client``'s workers every credential registered in this process (once per
    scheduler; workers that join later get them from the scheduler).  Returns how many
    were newly delivered.  Called by the engine before a fit's first pass."""
    if client is None:
        return 0
    done = _DELIVERED.setdefault(_scheduler_identity(client), set())
    with _LOCK:
        pending = {ref: dict(opts) for ref, opts in _REGISTRY.items() if ref not in done}
    if not pending:
        return 0
    plugin = _plugin_class()
    for reference, options in pending.items():
        client.register_plugin(plugin(reference, options), name=reference)
        done.add(reference)
    return len(pending)


def _plugin_class() -> type:
    """``CredentialsPlugin``: a ``distributed`` WorkerPlugin that puts one reference's
    secret options into a worker's registry and takes them out when it is removed.

    Made on first use so that importing dask_em does not import distributed; it is a
    module attribute (see :func:`__getattr__`), so workers unpickle it by name.
    """
    found = globals().get("CredentialsPlugin")
    if found is not None:
        return found
    from distributed.diagnostics.plugin import WorkerPlugin

    class CredentialsPlugin(WorkerPlugin):
        def __init__(self, reference: str, options: Mapping[str, Any]) -> None:
            self.name = reference
            self.reference = reference
            self.options = dict(options)

        def setup(self, worker: Any) -> None:
            install(self.reference, self.options)

        def teardown(self, worker: Any) -> None:
            remove(self.reference)

        def __repr__(self) -> str:  # what the scheduler and the dashboard may show
            return f"CredentialsPlugin({self.reference!r})"

    CredentialsPlugin.__qualname__ = "CredentialsPlugin"
    globals()["CredentialsPlugin"] = CredentialsPlugin
    return CredentialsPlugin


def __getattr__(name: str) -> Any:  # PEP 562: the plugin class, made on first use
    if name == "CredentialsPlugin":
        return _plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scheduler_identity(client: Any) -> str:
    """The id of ``client``'s scheduler (a restarted scheduler at the same address has
    a new one, and none of the plugins)."""
    try:
        found = client.scheduler_info(n_workers=0).get("id")
    except TypeError:  # older distributed: no n_workers
        found = client.scheduler_info().get("id")
    return str(found or client.scheduler.address)


def deliver_to(client: Any = None) -> int:
    """:func:`deliver` to ``client``, or to the active client when there is one (nothing
    to do, and distributed not imported, while no credential is registered)."""
    if not _REGISTRY:
        return 0
    if client is None:
        from dask_em.engine.cluster import active_client

        client = active_client()
    return deliver(client)
