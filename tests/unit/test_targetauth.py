"""Credentials and TLS toward one target: read at scrape time, never echoed.

The end-to-end behaviour against an HTTPS fake vLLM is in tests/integration/test_security.py.
"""

from __future__ import annotations

import base64
import os
import ssl

import pytest

from sidecar.config.settings import BasicAuth, TargetConfig, TLSConfig
from sidecar.targetauth import (
    MAX_SECRET_BYTES,
    TargetAuthError,
    build_tls_context,
    read_secret,
    request_options,
    tls_context,
)

SECRET = "s3cr3t-value-never-printed"


def target(**kw) -> TargetConfig:
    return TargetConfig(name="t", url="https://vllm:8000/metrics", **kw)


def test_no_settings_means_no_options():
    headers, ctx = request_options(target())
    assert (headers, ctx) == ({}, None)


def test_bearer_token_is_read_stripped_and_re_read_after_rotation(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(f"  {SECRET}\n")
    headers, _ = request_options(target(bearer_token_file=str(tok)))
    assert headers == {"Authorization": f"Bearer {SECRET}"}
    tok.write_text("rotated\n")
    assert request_options(target(bearer_token_file=str(tok))).headers["Authorization"] == "Bearer rotated"


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_from_file_or_inline_goes_in_the_header(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    headers, _ = request_options(target(basic_auth=BasicAuth("scraper", password_file=str(pw))))
    assert headers == {"Authorization": basic("scraper", SECRET)}
    headers, _ = request_options(target(basic_auth=BasicAuth("scraper", password="inlïne")))
    assert headers == {"Authorization": basic("scraper", "inlïne")}  # UTF-8 (RFC 7617)


def test_repr_of_the_options_hides_the_secrets(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(SECRET)
    opts = request_options(target(bearer_token_file=str(tok)))
    assert SECRET not in repr(opts) and "Authorization" in repr(opts)
    opts = request_options(target(basic_auth=BasicAuth("u", password=SECRET)))
    assert SECRET not in repr(opts)


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (SECRET.encode() + b"\nX-Injected: 1", "control characters"),
        (SECRET.encode() + b"\x00", "control characters"),
        (b"\xff\xfe" + SECRET.encode(), "not UTF-8"),
        (b"a" * (MAX_SECRET_BYTES + 1), "larger than"),
    ],
)
def test_bad_secret_files_fail_without_echoing_the_content(tmp_path, content, fragment):
    f = tmp_path / "token"
    f.write_bytes(content)
    with pytest.raises(TargetAuthError) as info:
        read_secret(str(f), "bearer_token_file")
    assert fragment in str(info.value)
    assert str(f) in str(info.value)
    assert SECRET not in str(info.value)


def test_missing_secret_file_names_the_file_and_the_reason(tmp_path):
    with pytest.raises(TargetAuthError) as info:
        request_options(target(bearer_token_file=str(tmp_path / "nope")))
    assert str(info.value) == f"cannot read bearer_token_file {tmp_path / 'nope'}: No such file or directory"


def test_bearer_and_basic_together_are_refused(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("x")
    with pytest.raises(TargetAuthError, match="not both"):
        request_options(target(bearer_token_file=str(tok), basic_auth=BasicAuth("u", "p")))


def test_control_characters_in_an_inline_password_are_refused():
    with pytest.raises(TargetAuthError) as info:
        request_options(target(basic_auth=BasicAuth("u", password=SECRET + "\r\n")))
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------- TLS


def test_default_tls_context_verifies_chain_and_host():
    ctx = build_tls_context(TLSConfig())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_skip_verify_turns_off_chain_and_host_checks():
    ctx = build_tls_context(TLSConfig(insecure_skip_verify=True))
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_tls_file_errors_are_clear(tmp_path):
    with pytest.raises(TargetAuthError, match="does not exist"):
        build_tls_context(TLSConfig(ca_file=str(tmp_path / "ca.crt")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TargetAuthError, match="cannot load tls.ca_file"):
        build_tls_context(TLSConfig(ca_file=str(junk)))
    with pytest.raises(TargetAuthError, match="needs both cert_file and key_file"):
        build_tls_context(TLSConfig(cert_file=str(junk)))
    with pytest.raises(TargetAuthError, match="cannot load tls client certificate"):
        build_tls_context(TLSConfig(cert_file=str(junk), key_file=str(junk)))


def test_tls_context_is_cached_until_a_file_changes(tmp_path):
    cryptography = pytest.importorskip("cryptography")  # noqa: F841
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def ca_pem(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    ca = tmp_path / "ca.crt"
    ca.write_bytes(ca_pem("first"))
    cfg = TLSConfig(ca_file=str(ca))
    first = tls_context(cfg)
    assert tls_context(cfg) is first
    ca.write_bytes(ca_pem("second-and-longer"))
    os.utime(ca, ns=(1, 1))
    second = tls_context(cfg)
    assert second is not first
    subjects = [dict(x[0] for x in c["subject"]).get("commonName") for c in second.get_ca_certs()]
    assert "second-and-longer" in subjects and "first" not in subjects
