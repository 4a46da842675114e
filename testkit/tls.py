"""A throw-away certificate authority for the TLS tests, made at test time.

Certificates are valid from an hour ago for a day, on P-256 keys. ``cryptography`` is imported
inside each function, so importing this module costs nothing for tests that do not use it.
"""

from __future__ import annotations

from collections.abc import Sequence


def _x509_name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _signed(subject: str, issuer, public_key, signing_key, extensions):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_x509_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def make_ca(cn: str = "test-ca"):
    """A self-signed CA valid from an hour ago for a day: ``(key, certificate)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _signed(
        cn, _x509_name(cn), key.public_key(), key, [(x509.BasicConstraints(ca=True, path_length=None), True)]
    )
    return key, cert


def issue(ca, cn: str, sans: Sequence[str] = ("127.0.0.1", "localhost"), client: bool = False):
    """A server (or, with ``client``, client) certificate signed by ``ca``: ``(key, cert)``.
    SANs that start with a digit are IP addresses, the others DNS names."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.IPAddress(ipaddress.ip_address(s)) if s[0].isdigit() else x509.DNSName(s) for s in sans]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = _signed(
        cn,
        ca_cert.subject,
        key.public_key(),
        ca_key,
        [(x509.SubjectAlternativeName(alt), False), (x509.ExtendedKeyUsage([usage]), False)],
    )
    return key, cert


def pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
