"""``--web-config FILE``: TLS and basic auth for the sidecar's own endpoints.

The file is in the Prometheus exporter-toolkit format, so the same file (and the same habits)
serve node_exporter, Prometheus and this sidecar::

    tls_server_config:
      cert_file: /etc/tls/tls.crt
      key_file: /etc/tls/tls.key
      client_ca_file: /etc/tls/ca.crt          # optional: mutual TLS
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$12$...                   # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

:func:`load_web_config` validates everything up front (files readable, key matches certificate,
hashes well formed) and raises :class:`~sidecar.config.files.ConfigError` with ``FILE:LINE``;
:func:`build_context` turns a TLS section into an :class:`ssl.SSLContext`. This module is the
file half, as in the exporter-toolkit; what happens per connection and per request (certificates
re-read when they rotate, basic auth, allowed SANs, headers) is :mod:`sidecar.webauth`.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from .files import ConfigError, line_of, load_yaml_text, read_text_file, reject_unknown_keys

# exporter-toolkit's client_auth_type values. Python's ssl cannot demand a certificate without
# verifying it, so RequireAnyClientCert is refused rather than silently changed; RequestClientCert
# (ask, never verify, never use) is served as NoClientCert with a warning.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNSUPPORTED_CLIENT_AUTH = ("RequireAnyClientCert",)
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go cipher-suite names (TLS 1.2; TLS 1.3 suites are not configurable in Go either) -> OpenSSL.
_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
_CURVES = {"CurveP256", "CurveP384", "CurveP521", "X25519"}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "cert",
    "key",
    "client_auth_type",
    "client_ca_file",
    "client_ca",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
    "client_allowed_sans",
}
_HTTP_KEYS = {"http2", "headers"}
# Headers the exporter-toolkit lets a web-config set; anything else is refused there too.
_ALLOWED_HEADERS = {
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "content-security-policy",
}
_BCRYPT_RE = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")
_USERNAME_RE = re.compile(r"^[^:\x00-\x1f\x7f]+$")


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str | None
    key_file: str | None
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: tuple[str, ...] = ()
    #: inline PEM (exporter-toolkit's ``cert``/``key``/``client_ca``); never printed
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)
    client_ca_pem: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WebConfig:
    """A validated web-config file. Build with :func:`load_web_config`."""

    path: str | None = None
    tls: TLSServerConfig | None = None
    #: username -> bcrypt hash; ``repr=False`` so a hash never lands in a log line
    basic_auth_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    #: settings accepted for compatibility but without effect here, worth a log line at start
    warnings: tuple[str, ...] = ()

    @property
    def tls_enabled(self) -> bool:
        return self.tls is not None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_users)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def summary(self) -> dict[str, Any]:
        """What is safe to log or serve: no hashes, no key material."""
        out: dict[str, Any] = {"tls": self.tls_enabled, "basic_auth": self.auth_enabled}
        if self.tls:
            out["client_auth_type"] = self.tls.client_auth_type
            out["min_version"] = self.tls.min_version
        if self.basic_auth_users:
            out["users"] = [u for u, _ in self.basic_auth_users]
        return out


# ---------------------------------------------------------------- loading


def load_web_config(path: str) -> WebConfig:
    """Read, parse and validate ``path``; relative file names are relative to its folder."""
    text = read_text_file(path, "web config")
    config = parse_web_config(text, path)
    if config.tls:
        _check_tls_files(config.tls, path, text)
    return config


def parse_web_config(text: str, path: str) -> WebConfig:
    """Pure part of :func:`load_web_config`: structure and values, no file access."""
    data = load_yaml_text(text, path)
    if data is None:
        return WebConfig(path=path)
    if not isinstance(data, dict):
        raise ConfigError("the web config must be a mapping", path, line_of(data) or 1)
    _no_unknown(data, _TOP_KEYS, "", path)
    base = os.path.dirname(os.path.abspath(path))
    warnings: list[str] = []
    tls = None
    if _has_tls(data.get("tls_server_config")):
        tls = _parse_tls(data["tls_server_config"], path, base, line_of(data, "tls_server_config"), warnings)
    headers: tuple[tuple[str, str], ...] = ()
    if data.get("http_server_config") is not None:
        headers = _parse_http(data["http_server_config"], path, line_of(data, "http_server_config"), warnings)
    users: tuple[tuple[str, str], ...] = ()
    if data.get("basic_auth_users") is not None:
        users = _parse_users(data["basic_auth_users"], path, line_of(data, "basic_auth_users"))
    return WebConfig(path=path, tls=tls, basic_auth_users=users, headers=headers, warnings=tuple(warnings))


def _no_unknown(node: dict[str, Any], known: set[str], section: str, path: str) -> None:
    reject_unknown_keys(node, known, path, "key", f" in {section}" if section else "")


def _str(node: dict[str, Any], key: str, path: str) -> str | None:
    value = node.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string", path, line_of(node, key))
    return value


def _str_list(node: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    value = node.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings", path, line_of(node, key))
    return tuple(value)


def _resolve(base: str, name: str | None) -> str | None:
    if not name:
        return None
    return name if os.path.isabs(name) else os.path.join(base, name)


def _has_tls(node: Any) -> bool:
    """exporter-toolkit serves plain HTTP when the TLS section names no certificate, key, client
    CA or client auth type (an empty ``tls_server_config:`` included)."""
    if node is None:
        return False
    if not isinstance(node, dict):
        return True  # let _parse_tls report the type error with its line
    return any(
        node.get(k) not in (None, "")
        for k in ("cert_file", "key_file", "cert", "key", "client_ca_file", "client_ca", "client_auth_type")
    )


def _parse_tls(node: Any, path: str, base: str, line: int | None, warnings: list[str]) -> TLSServerConfig:
    """``tls_server_config`` as exporter-toolkit reads it (FILE:LINE errors, warnings for what
    is accepted but cannot act as in Go)."""
    if not isinstance(node, dict):
        raise ConfigError("tls_server_config must be a mapping", path, line)
    _no_unknown(node, _TLS_KEYS, "tls_server_config", path)
    cert_file, key_file, cert_pem, key_pem = _key_pair(node, path, line)
    auth, ca_file, ca_pem = _client_auth(node, path, line, warnings)
    low, high = _tls_versions(node, path)
    ciphers, prefer = _cipher_settings(node, path, warnings)
    return TLSServerConfig(
        cert_file=_resolve(base, cert_file),
        key_file=_resolve(base, key_file),
        client_auth_type=auth,
        client_ca_file=_resolve(base, ca_file),
        min_version=low,
        max_version=high,
        cipher_suites=ciphers,
        prefer_server_cipher_suites=prefer,
        client_allowed_sans=_str_list(node, "client_allowed_sans", path),
        cert_pem=cert_pem,
        key_pem=key_pem,
        client_ca_pem=ca_pem,
    )


def _key_pair(node: dict[str, Any], path: str, line: int | None) -> tuple[str | None, ...]:
    """cert_file, key_file, cert, key: each of the pair given once, as a file or inline."""
    cert_file, key_file = _str(node, "cert_file", path), _str(node, "key_file", path)
    cert_pem, key_pem = _str(node, "cert", path), _str(node, "key", path)
    if cert_file and cert_pem:
        raise ConfigError("give cert or cert_file, not both", path, line_of(node, "cert"))
    if key_file and key_pem:
        raise ConfigError("give key or key_file, not both", path, line_of(node, "key"))
    if not (cert_file or cert_pem):
        raise ConfigError("tls_server_config needs cert_file", path, line)
    if not (key_file or key_pem):
        raise ConfigError("tls_server_config needs key_file", path, line)
    return cert_file, key_file, cert_pem, key_pem


def _client_auth(
    node: dict[str, Any], path: str, line: int | None, warnings: list[str]
) -> tuple[str, str | None, str | None]:
    """client_auth_type and the client CA (file or inline), as exporter-toolkit means them."""
    ca_file, ca_pem = _str(node, "client_ca_file", path), _str(node, "client_ca", path)
    if ca_file and ca_pem:
        raise ConfigError("give client_ca or client_ca_file, not both", path, line_of(node, "client_ca"))
    auth = _str(node, "client_auth_type", path)
    if auth is None:
        # exporter-toolkit: a client CA alone means "require and verify".
        auth = "RequireAndVerifyClientCert" if (ca_file or ca_pem) else "NoClientCert"
    aline = line_of(node, "client_auth_type") or line
    if auth == "RequestClientCert":
        # Go asks for a certificate and ignores it: no authorisation ever rests on it, so not
        # asking at all is the same protection.
        warnings.append(
            "tls_server_config.client_auth_type RequestClientCert: client "
            "certificates are not requested (they would not be verified anyway)"
        )
        auth = "NoClientCert"
        ca_file = ca_pem = None
    if auth in _UNSUPPORTED_CLIENT_AUTH:
        raise ConfigError(
            f"client_auth_type {auth} (accept a certificate without verifying it) is "
            f"not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert "
            f"with client_ca_file",
            path,
            aline,
        )
    if auth not in _CLIENT_AUTH:
        raise ConfigError(
            f"invalid client_auth_type {auth!r} (known: "
            f"{', '.join(list(_CLIENT_AUTH) + ['RequestClientCert'])})",
            path,
            aline,
        )
    if auth != "NoClientCert" and not (ca_file or ca_pem):
        raise ConfigError(f"client_auth_type {auth} needs client_ca_file", path, aline)
    if auth == "NoClientCert" and (ca_file or ca_pem):
        warnings.append("tls_server_config.client_ca_file is ignored: client_auth_type is NoClientCert")
        ca_file = ca_pem = None
    return auth, ca_file, ca_pem


def _tls_versions(node: dict[str, Any], path: str) -> tuple[str, str | None]:
    """min_version (default TLS12) and max_version, known names, max not below min."""
    versions: dict[str, str | None] = {}
    for key, default in (("min_version", "TLS12"), ("max_version", None)):
        value = _str(node, key, path) or default
        if value is not None and value not in _TLS_VERSIONS:
            raise ConfigError(
                f"invalid {key} {value!r} (known: {', '.join(_TLS_VERSIONS)})", path, line_of(node, key)
            )
        versions[key] = value
    low, high = versions["min_version"] or "TLS12", versions["max_version"]
    if high and _TLS_VERSIONS[high] < _TLS_VERSIONS[low]:
        raise ConfigError("max_version is below min_version", path, line_of(node, "max_version"))
    return low, high


def _cipher_settings(node: dict[str, Any], path: str, warnings: list[str]) -> tuple[tuple[str, ...], bool]:
    """cipher_suites (known ones), curve_preferences (checked, then left to the TLS library),
    prefer_server_cipher_suites."""
    ciphers = _str_list(node, "cipher_suites", path)
    for c in ciphers:
        if c not in _CIPHERS:
            raise ConfigError(
                f"unknown or unsupported cipher suite {c!r}", path, line_of(node, "cipher_suites")
            )
    for c in _str_list(node, "curve_preferences", path):
        if c not in _CURVES:
            raise ConfigError(
                f"unknown curve {c!r} (known: {', '.join(sorted(_CURVES))})",
                path,
                line_of(node, "curve_preferences"),
            )
    if node.get("curve_preferences"):
        warnings.append(
            "tls_server_config.curve_preferences is accepted but the TLS library chooses curves itself"
        )
    prefer = node.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise ConfigError(
            "prefer_server_cipher_suites must be true or false",
            path,
            line_of(node, "prefer_server_cipher_suites"),
        )
    return ciphers, prefer


def _parse_http(node: Any, path: str, line: int | None, warnings: list[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(node, dict):
        raise ConfigError("http_server_config must be a mapping", path, line)
    _no_unknown(node, _HTTP_KEYS, "http_server_config", path)
    if node.get("http2") is not None and not isinstance(node["http2"], bool):
        raise ConfigError("http2 must be true or false", path, line_of(node, "http2"))
    if node.get("http2"):
        warnings.append("http_server_config.http2 is accepted but this server speaks HTTP/1.1")
    headers = node.get("headers")
    if headers is None:
        return ()
    if not isinstance(headers, dict):
        raise ConfigError("headers must be a mapping of name: value", path, line_of(node, "headers"))
    out = []
    for name, value in headers.items():
        hl = line_of(headers, str(name)) or line_of(node, "headers")
        if str(name).lower() not in _ALLOWED_HEADERS:
            raise ConfigError(
                f"header {name!r} cannot be set here (allowed: {', '.join(sorted(_ALLOWED_HEADERS))})",
                path,
                hl,
            )
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            raise ConfigError(f"header {name!r}: value must be a single-line string", path, hl)
        out.append((str(name), value))
    return tuple(out)


def _parse_users(node: Any, path: str, line: int | None) -> tuple[tuple[str, str], ...]:
    if not isinstance(node, dict):
        raise ConfigError("basic_auth_users must be a mapping of user: bcrypt hash", path, line)
    out = []
    for user, hashed in node.items():
        ul = line_of(node, str(user)) or line
        name = str(user)
        if not _USERNAME_RE.match(name):
            raise ConfigError(f"invalid user name {name!r}", path, ul)
        if not isinstance(hashed, str) or not _BCRYPT_RE.match(hashed.strip()):
            # Never echo the value: it may be a plain password written by mistake.
            raise ConfigError(
                f"user {name!r}: the password must be a bcrypt hash ($2y$..., "
                f"60 characters), e.g. from `htpasswd -nBC 12 \"\" | tr -d ':\\n'`",
                path,
                ul,
            )
        out.append((name, hashed.strip()))
    if out:
        try:
            import bcrypt  # noqa: F401  (fail at load, not at the first request)
        except ImportError:
            raise ConfigError("basic_auth_users needs the 'bcrypt' package", path, line) from None
    return tuple(out)


def _key_line(text: str, key: str) -> int | None:
    m = re.search(rf"^\s*{re.escape(key)}\s*:", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _check_tls_files(tls: TLSServerConfig, path: str, text: str) -> None:
    """Build the context once now, so a bad file fails at start with a pointer to its line."""
    for key in ("cert_file", "key_file", "client_ca_file"):
        name = getattr(tls, key)
        if name and not os.access(name, os.R_OK):
            why = "does not exist" if not os.path.exists(name) else "is not readable"
            raise ConfigError(f"{key} {name} {why}", path, _key_line(text, key))
    try:
        build_context(tls)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot load the TLS certificate/key: {exc.reason or exc}",
            path,
            _key_line(text, "cert_file") or _key_line(text, "cert"),
        ) from None
    except CAError as exc:
        raise ConfigError(
            str(exc), path, _key_line(text, "client_ca_file") or _key_line(text, "client_ca")
        ) from None


# ---------------------------------------------------------------- TLS


class CAError(ValueError):
    """The client CA of a TLS section cannot be loaded."""


def build_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """The server context a TLS section describes (certificate chain, versions, ciphers,
    client verification); :class:`ssl.SSLError` or :class:`CAError` when a file does not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    if tls.max_version:
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    if tls.cipher_suites:
        ctx.set_ciphers(":".join(_CIPHERS[c] for c in tls.cipher_suites))
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, tls)
    ctx.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    if ctx.verify_mode != ssl.CERT_NONE:
        try:
            if tls.client_ca_pem:
                ctx.load_verify_locations(cadata=tls.client_ca_pem)
            else:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise CAError(f"cannot load client_ca_file: {getattr(exc, 'reason', None) or exc}") from None
    return ctx


def _load_chain(ctx: ssl.SSLContext, tls: TLSServerConfig) -> None:
    if tls.cert_pem is None and tls.key_pem is None:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)  # type: ignore[arg-type]
        return
    # ssl only loads chains from files: inline PEM goes through a private temporary file.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cert = tls.cert_file
        key = tls.key_file
        if tls.cert_pem is not None:
            cert = os.path.join(tmp, "cert.pem")
            _write_private(cert, tls.cert_pem)
        if tls.key_pem is not None:
            key = os.path.join(tmp, "key.pem")
            _write_private(key, tls.key_pem)
        ctx.load_cert_chain(cert, key)  # type: ignore[arg-type]


def _write_private(name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
