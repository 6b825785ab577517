"""Scheduler, workers and client talking TLS only (``distributed.Security``).

The test makes its own certificate authority and one certificate signed by it (the
same shape as the ``openssl`` commands in deployment/README.md), starts a cluster
that requires encryption, fits through it, and checks that a client without a
certificate from that authority is turned away.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

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


def test_fit_on_a_cluster_that_speaks_only_tls(tmp_path):
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

        # a certificate from another authority is refused during the handshake
        strangers = write_certificates(tmp_path / "theirs", name="stranger")
        with pytest.raises(OSError, match="TLS"):
            Client(cluster.scheduler_address, security=security_from(strangers), timeout=10)
        # and so is plain TCP to the same port
        plain = cluster.scheduler_address.replace("tls://", "tcp://")
        with pytest.raises(OSError):
            Client(plain, security=Security(require_encryption=False), timeout=10)
