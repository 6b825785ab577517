"""What listens at a scheduler address, found with plain sockets, for error messages.

A Dask client that reaches something other than a scheduler can wait a long time (an
HTTP server never answers the handshake); these probes take a second and say what is
there: nothing, an HTTP server (the dashboard's port, most often), a TLS server reached
without ``tls://``, or a plain server reached with ``tls://``.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

#: What :func:`describe_listener` found, in words a user can act on.
NOTHING = "nothing is listening there"
HTTP = "an HTTP server (the Dask dashboard's port?) is listening there, not a Dask scheduler"
TLS_WITHOUT_TLS = "the server there speaks TLS: write the address as tls://"
PLAIN_WITH_TLS = "the server there does not speak TLS: write the address as tcp://"


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``tcp://`` / ``tls://`` / bare ``host:port`` addresses."""
    text = address if "://" in address else f"tcp://{address}"
    parts = urlsplit(text)
    if parts.scheme not in ("tcp", "tls") or parts.hostname is None:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port if port is not None else 8786


def talks_first(found: tuple[str, int], *, tls: bool, wait: float) -> bool | None:
    """Whether the server at ``found`` speaks first, as a Dask scheduler does (it sends its
    handshake on accepting a connection; an HTTP or other server waits for a request).

    True: it sent bytes within ``wait`` seconds; False: it stayed silent; None: nothing
    to say (no connection, or a TLS handshake that failed: the client will find out).
    Closing after the handshake is what a scheduler logs at INFO level only.
    """
    try:
        with socket.create_connection(found, timeout=wait) as sock:
            if tls:
                sock = _unverified_tls().wrap_socket(sock, server_hostname=found[0])
            with sock:
                return bool(sock.recv(1))
    except TimeoutError:
        return False
    except OSError:
        return None


def describe_silent_listener(address: str, timeout: float = 2.0) -> str:
    """What listens at ``address``, a server that does not speak first: an HTTP server,
    a TLS server reached without ``tls://``, or something else."""
    found = host_port(address)
    if found is None:
        return "the server there does not answer like a Dask scheduler"
    if _speaks_http(found, timeout, tls=address.startswith("tls://")):
        return HTTP
    if not address.startswith("tls://") and _speaks_tls(found, timeout):
        return TLS_WITHOUT_TLS
    return "something is listening there, but it does not answer like a Dask scheduler"


def describe_listener(address: str, timeout: float = 2.0) -> str | None:
    """One of the constants above for what listens at ``address`` (probing with HTTP
    and TLS requests: use it only once a Dask client has failed), or None."""
    found = host_port(address)
    if found is None:
        return None
    try:
        with socket.create_connection(found, timeout=timeout):
            pass
    except OSError:
        return NOTHING
    speaks_tls = _speaks_tls(found, timeout)
    if address.startswith("tls://"):
        return None if speaks_tls is not False else PLAIN_WITH_TLS
    if speaks_tls:
        return TLS_WITHOUT_TLS
    if _speaks_http(found, timeout):
        return HTTP
    return None


def _unverified_tls() -> ssl.SSLContext:
    """A client context that only checks that the other side speaks TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _speaks_http(found: tuple[str, int], timeout: float, tls: bool = False) -> bool:
    try:
        with socket.create_connection(found, timeout=timeout) as sock:
            if tls:
                sock = _unverified_tls().wrap_socket(sock, server_hostname=found[0])
            sock.sendall(b"HEAD / HTTP/1.0\r\nHost: dask-em\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def _speaks_tls(found: tuple[str, int], timeout: float) -> bool | None:
    """True when a TLS handshake gets a TLS answer, False when it gets something else,
    None when the server says nothing within ``timeout``."""
    context = _unverified_tls()
    try:
        with socket.create_connection(found, timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=found[0]):
                return True
    except ssl.SSLError as error:
        # A TLS server answers with an alert (a client certificate wanted, say); a plain
        # one answers bytes that are no TLS record.
        reason = (error.reason or str(error)).upper()
        return not any(
            word in reason for word in ("WRONG_VERSION", "RECORD_LAYER", "PACKET_LENGTH", "HTTP")
        )
    except TimeoutError:
        return None
    except OSError:
        return False
