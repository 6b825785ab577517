"""Scheduler, workers and client talking TLS only (``distributed.Security``).

The test makes its own certificate authority and one certificate signed by it (the
same shape as the ``openssl`` commands in deployment/README.md), starts a cluster
that requires encryption, fits through it, and checks that a client without a
certificate from that authority is turned away.

Issue #16, the dashboard follows the cluster's security: with TLS in Dask's
configuration, the LocalCluster that ``dask-em`` starts speaks TLS and its dashboard (plain
HTTP) listens on 127.0.0.1 only, checked on the bound sockets and from the machine's
other address; without TLS it stays on every interface.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import Client, LocalCluster, Security

from dask_em import GaussianMixture

pytestmark = pytest.mark.slow

TRUE_WEIGHTS = np.array([0.6, 0.4])
TRUE_MEANS = np.array([[-3.0, 0.0], [3.0, 1.0]])


def write_certificates(directory: Path, name: str = "dask") -> dict[str, str]:
    """A CA (``ca.pem``) and a certificate for 127.0.0.1/localhost signed by it.

    Returns the paths: ``ca``, ``cert``, ``key`` (PEM).
    """
    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, public_key, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    def usage(**allowed):
        flags = dict.fromkeys(
            [
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ],
            False,
        )
        return x509.KeyUsage(**{**flags, **allowed})

    # key usage and key identifiers too, so the pair also passes strict verification
    # (`openssl verify -x509_strict`), as the ones from deployment/README.md do
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = build(
        ca_name,
        ca_name,
        ca_key.public_key(),
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (usage(key_cert_sign=True, crl_sign=True), True),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    roles = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = build(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        ca_name,
        key.public_key(),
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (usage(digital_signature=True, key_agreement=True), True),
            (x509.ExtendedKeyUsage(roles), False),  # one certificate for server and client
            (x509.SubjectAlternativeName(names), False),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        ],
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = {part: str(directory / f"{name}-{part}.pem") for part in ("ca", "cert", "key")}
    Path(paths["ca"]).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(paths["cert"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(paths["key"]).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def security_from(paths: dict[str, str]) -> Security:
    """One certificate for every role, encryption required (as in deployment/README.md)."""
    return Security(
        tls_ca_file=paths["ca"],
        tls_scheduler_cert=paths["cert"],
        tls_scheduler_key=paths["key"],
        tls_worker_cert=paths["cert"],
        tls_worker_key=paths["key"],
        tls_client_cert=paths["cert"],
        tls_client_key=paths["key"],
        require_encryption=True,
    )


def test_fit_on_a_cluster_that_speaks_only_tls(tmp_path, caplog):
    security = security_from(write_certificates(tmp_path / "ours"))
    rng = np.random.default_rng(5)
    labels = rng.choice(2, size=40_000, p=TRUE_WEIGHTS)
    X = da.from_array(TRUE_MEANS[labels] + rng.standard_normal((40_000, 2)), chunks=(5_000, 2))
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            protocol="tls://",
            host="127.0.0.1",
            security=security,
            dashboard_address=":0",
            memory_limit="2GiB",
        ) as cluster,
        Client(cluster, security=security, set_as_default=False) as client,
    ):
        workers = client.scheduler_info()["workers"]
        assert cluster.scheduler_address.startswith("tls://")
        assert len(workers) == 2 and all(a.startswith("tls://") for a in workers)
        with client.as_current():
            model = GaussianMixture(2, random_state=0, cache="memory", tol=1e-6).fit(X)
        assert model.data_placement_ == "memory"  # the data went to the TLS workers
        order = np.argsort(model.means_[:, 0])
        np.testing.assert_allclose(model.weights_[order], TRUE_WEIGHTS, atol=0.01)
        np.testing.assert_allclose(model.means_[order], TRUE_MEANS, atol=0.03)
        # direct passes: the workers are called over TLS too
        with (
            client.as_current(),
            dask.config.set({"dask_em.direct-passes": True}),
            caplog.at_level("INFO", logger="dask_em.engine"),
        ):
            direct = GaussianMixture(2, random_state=0, cache="memory", tol=1e-6).fit(X)
        assert "passes run directly on 2 workers" in caplog.text
        assert "direct pass failed" not in caplog.text
        np.testing.assert_array_equal(direct.means_, model.means_)

        # a certificate from another authority is refused during the handshake
        strangers = write_certificates(tmp_path / "theirs", name="stranger")
        with pytest.raises(OSError, match="TLS"):
            Client(cluster.scheduler_address, security=security_from(strangers), timeout=10)
        # and so is plain TCP to the same port
        plain = cluster.scheduler_address.replace("tls://", "tcp://")
        with pytest.raises(OSError):
            Client(plain, security=Security(require_encryption=False), timeout=10)


# -- issue #16: the dashboard follows the cluster's security ------------------------------
def tls_config(paths: dict[str, str], *, roles: tuple[str, ...]) -> dict[str, object]:
    """Dask configuration that asks for TLS, with certificates for ``roles``."""
    config: dict[str, object] = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": paths["ca"],
    }
    for role in roles:
        config[f"distributed.comm.tls.{role}.cert"] = paths["cert"]
        config[f"distributed.comm.tls.{role}.key"] = paths["key"]
    return config


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def status_of(url: str) -> int:
    """The HTTP status of a GET of ``url``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "roles",
    [("scheduler", "worker", "client"), ("client",)],
    ids=["certificates-for-every-role", "client-certificate-only"],
)
def test_with_tls_configured_the_local_cluster_speaks_tls_and_its_dashboard_is_loopback_only(
    tmp_path, capsys, roles
):
    from dask_em import engine

    paths = write_certificates(tmp_path / "ours")
    with (
        dask.config.set(tls_config(paths, roles=roles)),
        engine.connect(n_workers=1, threads_per_worker=1, memory_limit="1GiB") as client,
    ):
        scheduler = client.cluster.scheduler
        assert client.cluster.scheduler_address.startswith("tls://")
        assert all(a.startswith("tls://") for a in client.scheduler_info()["workers"])
        assert client.submit(sum, [1, 2]).result() == 3
        bound = {sock.getsockname()[0] for sock in scheduler.http_server._sockets.values()}
        assert bound == {"127.0.0.1"}, bound  # Dask's own default is 0.0.0.0
        port = scheduler.http_server.port
        assert client.dashboard_link == f"http://127.0.0.1:{port}/status"
        assert answers("127.0.0.1", port)
        other = non_loopback_ipv4()
        if other is not None:
            assert not answers(other, port), f"the dashboard answers on {other}:{port}"
    assert f"Dask dashboard: http://127.0.0.1:{port}/status" in capsys.readouterr().out


def test_without_tls_the_dashboard_listens_on_every_interface_as_before(capsys):
    from dask_em import engine

    with engine.connect(n_workers=1, threads_per_worker=1, memory_limit="1GiB") as client:
        assert client.cluster.scheduler_address.startswith("tcp://")
        bound = {s.getsockname()[0] for s in client.cluster.scheduler.http_server._sockets.values()}
        assert bound == {"0.0.0.0"}, bound
    assert "Dask dashboard: http://" in capsys.readouterr().out


def test_an_explicit_dashboard_address_wins_and_none_turns_the_dashboard_off(tmp_path, capsys):
    from dask_em import engine

    paths = write_certificates(tmp_path / "ours")
    with dask.config.set(tls_config(paths, roles=("scheduler", "worker", "client"))):
        with engine.connect(
            n_workers=1, threads_per_worker=1, dashboard_address="0.0.0.0:0"
        ) as client:
            bound = {
                s.getsockname()[0] for s in client.cluster.scheduler.http_server._sockets.values()
            }
            assert bound == {"0.0.0.0"}, bound
        with engine.connect(n_workers=1, threads_per_worker=1, dashboard=False) as client:
            http = client.cluster.scheduler.http_server
            assert {s.getsockname()[0] for s in http._sockets.values()} == {"127.0.0.1"}
            for page in ("status", "info/main/logs.html", "info/main/workers.html", "metrics"):
                assert status_of(f"http://127.0.0.1:{http.port}/{page}") == 404, page
            assert status_of(f"http://127.0.0.1:{http.port}/health") == 200
            assert client.submit(sum, [1, 2]).result() == 3
    assert capsys.readouterr().out.splitlines()[-1] == "Dask dashboard: off"


def test_dask_em_fit_with_the_readme_tls_environment_fits_over_tls_with_a_loopback_dashboard(
    tmp_path,
):
    """The environment variables of deployment/README.md (client certificates only, as for
    ``--scheduler tls://...``), and no --scheduler: the LocalCluster speaks TLS (throwaway
    certificates) and its dashboard is on 127.0.0.1."""
    import os
    import subprocess
    import sys

    import zarr

    paths = write_certificates(tmp_path / "ours")
    data = tmp_path / "data.zarr"
    zarr.create_array(
        str(data), data=np.random.default_rng(0).normal(size=(300, 2)), chunks=(100, 2)
    )
    env = {
        **os.environ,
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": paths["ca"],
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": paths["cert"],
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": paths["key"],
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    }
    argv = ["gmm", str(data), "-k", "2", "--out", str(tmp_path / "m.zarr"), "--max-iter", "3"]
    argv += ["--no-report", "--n-workers", "1", "--threads-per-worker", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "dask_em.cli", "fit", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert re.fullmatch(r"Dask dashboard: http://127\.0\.0\.1:\d+/status", first), first
    assert (tmp_path / "m.zarr").is_dir()


@pytest.mark.filterwarnings("ignore::dask_em.ConvergenceWarning")
def test_dask_em_fit_dashboard_address_none_starts_no_dashboard(tmp_path, capsys):
    import zarr

    from dask_em.cli import main

    data = tmp_path / "data.zarr"
    zarr.create_array(
        str(data), data=np.random.default_rng(0).normal(size=(300, 2)), chunks=(100, 2)
    )
    argv = [
        "fit",
        "gmm",
        str(data),
        "-k",
        "2",
        "--out",
        str(tmp_path / "m.zarr"),
        "--max-iter",
        "2",
    ]
    argv += ["--no-report", "--n-workers", "1", "--threads-per-worker", "1", "-q"]
    assert main([*argv, "--dashboard-address", "none"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Dask dashboard: off"
