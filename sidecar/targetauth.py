"""How to authenticate to one target: bearer token file, basic auth, CA, client cert, skip-verify.

:func:`request_options` is called on every scrape, so a rotated token or password file (a
Kubernetes Secret updated in place) is picked up at the next scrape without a restart. TLS
contexts are cached and rebuilt only when one of their files changes.

Secrets never leave this module except inside the returned header/auth objects: error messages
name the file and the reason, never its content.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.config.files import file_stamp
from sidecar.config.settings import TargetConfig, TLSConfig

# A token or password larger than this is not a token: refuse rather than send megabytes.
MAX_SECRET_BYTES = 64 * 1024


class TargetAuthError(Exception):
    """The target's credentials or TLS files cannot be used. The message is safe to log and to
    serve: it names files and reasons, never secret values."""


@dataclass(frozen=True)
class RequestOptions:
    """What to pass to the HTTP client for one scrape (a tuple-like: headers, ssl)."""

    headers: dict[str, str]
    ssl: ssl.SSLContext | None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.headers, self.ssl))

    def __repr__(self) -> str:  # never print the Authorization header or the password
        return f"RequestOptions(headers={sorted(self.headers)}, ssl={self.ssl!r})"


def request_options(target: TargetConfig) -> RequestOptions:
    """Headers and SSL context for scraping ``target``.

    * ``headers``: ``Authorization: Bearer ...`` when ``bearer_token_file`` is set, or
      ``Authorization: Basic ...`` (UTF-8, RFC 7617) for ``basic_auth``, as aiohttp 4 wants it.
    * ``ssl``: an :class:`ssl.SSLContext` when the target has ``tls`` settings (CA file, client
      certificate, ``insecure_skip_verify``); ``None`` means the client's default verification.

    Raises :class:`TargetAuthError` (safe message) when a file is missing or unusable.
    """
    if target.bearer_token_file and target.basic_auth:
        raise TargetAuthError(f"target {target.name}: give bearer_token_file or basic_auth, not both")
    headers: dict[str, str] = {}
    if target.bearer_token_file:
        token = read_secret(target.bearer_token_file, "bearer_token_file")
        headers["Authorization"] = f"Bearer {token}"
    if target.basic_auth:
        headers["Authorization"] = _basic_auth(target)
    context = tls_context(target.tls) if target.tls else None
    return RequestOptions(headers, context)


def read_secret(path: str, what: str) -> str:
    """The file's content without surrounding whitespace (``echo token > file`` adds a newline).

    Control characters inside the value (a header injection, or a binary file by mistake) are
    refused; the message never repeats the value.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise TargetAuthError(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise TargetAuthError(f"{what} {path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TargetAuthError(f"{what} {path} is not UTF-8 text") from None
    if not text:
        raise TargetAuthError(f"{what} {path} is empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise TargetAuthError(f"{what} {path} contains control characters (line breaks?)")
    return text


def _basic_auth(target: TargetConfig) -> str:
    ba = target.basic_auth
    assert ba is not None
    if ba.password_file:
        password = read_secret(ba.password_file, "basic_auth.password_file")
    else:
        password = ba.password or ""
    if ":" in ba.username:
        raise TargetAuthError(f"target {target.name}: basic_auth username must not contain ':'")
    if any(ord(c) < 0x20 for c in ba.username + password):
        raise TargetAuthError(f"target {target.name}: basic_auth contains control characters")
    token = base64.b64encode(f"{ba.username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


# ---------------------------------------------------------------- TLS

_contexts: dict[TLSConfig, tuple[tuple[Any, ...], ssl.SSLContext]] = {}


def _stamp(tls: TLSConfig) -> tuple[Any, ...]:
    return tuple(file_stamp(name) for name in (tls.ca_file, tls.cert_file, tls.key_file))


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """A client context for ``tls``, cached until one of its files changes."""
    stamp = _stamp(tls)
    cached = _contexts.get(tls)
    if cached and cached[0] == stamp:
        return cached[1]
    context = build_tls_context(tls)
    _contexts[tls] = (stamp, context)
    return context


def build_tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """Verification on by default (system CAs, or ``ca_file``); ``insecure_skip_verify`` turns
    off both the chain and the host-name check, as in Prometheus."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except FileNotFoundError:
            raise TargetAuthError(f"tls.ca_file {tls.ca_file} does not exist") from None
        except (ssl.SSLError, OSError) as exc:
            raise TargetAuthError(f"cannot load tls.ca_file {tls.ca_file}: {_reason(exc)}") from None
    if tls.cert_file or tls.key_file:
        if not (tls.cert_file and tls.key_file):
            raise TargetAuthError("tls: a client certificate needs both cert_file and key_file")
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except FileNotFoundError as exc:
            raise TargetAuthError(
                f"tls client certificate file {exc.filename or ''} does not exist".replace("  ", " ")
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise TargetAuthError(
                f"cannot load tls client certificate {tls.cert_file} / {tls.key_file}: {_reason(exc)}"
            ) from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__)
