"""The request-time half of ``--web-config``: TLS per connection, basic auth per request.

:mod:`sidecar.config.web` reads and validates the file; this module serves what it says, beside
the server, as Prometheus' exporter-toolkit separates them. :func:`ssl_context` gives the
server's :class:`ssl.SSLContext`, whose certificates are re-read on the first handshake after
their files change (cert-manager rotates them in place); :func:`middleware` gives an aiohttp
middleware that enforces basic auth, the allowed client-certificate SANs and the extra response
headers, re-reading users and headers when the file changes (a rotated password needs no
restart) and failing closed while it is invalid.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .config.files import ConfigError, file_stamp, read_text_file
from .config.web import CAError, TLSServerConfig, WebConfig, build_context, parse_web_config

REALM = "vllm-cache-sidecar"
log = logging.getLogger(__name__)


def ssl_context(config: WebConfig) -> ssl.SSLContext | None:
    """The server's TLS context (``None`` without ``tls_server_config``).

    Certificates are re-read on the first handshake after their files change, so a rotated
    certificate is served without a restart.
    """
    if config.tls is None:
        return None
    return _ReloadingContext(config.tls, config.path).outer


def middleware(config: WebConfig, exempt_paths: Iterable[str] = ()) -> Callable[..., Awaitable[Any]]:
    """An aiohttp middleware: basic auth (401 + ``WWW-Authenticate``), allowed client SANs
    (403), and the configured response headers. ``exempt_paths`` skip basic auth only
    (exporter-toolkit protects everything: pass nothing unless you mean it).

    Users, headers and allowed SANs are re-read when the file changes (checked at most once
    a second); while the file is invalid, protected paths answer 500 (fail closed)."""
    return _make_middleware(config, frozenset(exempt_paths))


# ---------------------------------------------------------------- TLS


def _stamp(tls: TLSServerConfig) -> tuple[Any, ...]:
    return tuple(file_stamp(name) for name in (tls.cert_file, tls.key_file, tls.client_ca_file))


class _ReloadingContext:
    """An outer context whose SNI hook swaps in a freshly loaded inner one when the certificate
    files changed. A failed reload keeps serving the last good certificate."""

    def __init__(self, tls: TLSServerConfig, path: str | None):
        self.tls = tls
        self.path = path
        self.stamp = _stamp(tls)
        self.inner = build_context(tls)
        self.outer = build_context(tls)
        self.outer.sni_callback = self._on_sni

    def _on_sni(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        stamp = _stamp(self.tls)
        if stamp != self.stamp:
            try:
                self.inner = build_context(self.tls)
                self.stamp = stamp
            except (ssl.SSLError, OSError, CAError):
                pass  # half-written files during rotation: keep the old pair, retry next time
        sslobj.context = self.inner
        return None


# ---------------------------------------------------------------- basic auth


class _AuthCache:
    """Remembers recent successful checks, keyed by a hash of user and password, so a scraper
    that authenticates every few seconds does not pay a bcrypt round (~0.1-0.3 s of CPU) each
    time. Only successes are cached: wrong passwords always cost a full bcrypt check."""

    def __init__(self, size: int = 64):
        self.size = size
        self.entries: OrderedDict[bytes, None] = OrderedDict()
        self.salt = os.urandom(16)

    def key(self, user: str, password: bytes, hashed: str) -> bytes:
        return hashlib.sha256(self.salt + user.encode() + b"\0" + hashed.encode() + b"\0" + password).digest()

    def hit(self, key: bytes) -> bool:
        for k in self.entries:
            if hmac.compare_digest(k, key):
                self.entries.move_to_end(k)
                return True
        return False

    def add(self, key: bytes) -> None:
        self.entries[key] = None
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def parse_basic_authorization(header: str | None) -> tuple[str, bytes] | None:
    """``Authorization: Basic base64(user:password)`` -> (user, password bytes), else ``None``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def dummy_hash(users: dict[str, str]) -> bytes:
    """A hash of a random password at the cost of the configured ones: checking an unknown user
    against it takes as long as checking a known one, so timing does not reveal user names."""
    import bcrypt

    costs = [int(h.split("$")[2]) for h in users.values()] or [10]
    return bcrypt.hashpw(os.urandom(18), bcrypt.gensalt(rounds=max(costs)))


def check_password(users: dict[str, str], user: str, password: bytes, dummy: bytes) -> bool:
    """bcrypt check against the configured hash; unknown users are checked against ``dummy``."""
    import bcrypt

    hashed = users.get(user)
    candidate = hashed.encode() if hashed else dummy
    try:
        ok = bcrypt.checkpw(password, candidate)
    except ValueError:
        ok = False
    return ok and hashed is not None


class _LiveSettings:
    """The per-request part of the web config (users, headers, allowed SANs), re-read when the
    file changes, as the exporter-toolkit does: a rotated password needs no restart.

    A file that turns invalid fails closed: protected paths answer 500 until it is fixed, so a
    typo made while revoking a user never keeps that user in. TLS settings other than the
    certificate files (which :func:`ssl_context` reloads itself) need a restart.
    """

    CHECK_EVERY = 1.0

    def __init__(self, config: WebConfig):
        self.path = config.path
        self.error: str | None = None
        self.checked = time.monotonic()
        self.stamp = file_stamp(self.path)
        self.apply(config)

    def apply(self, config: WebConfig) -> None:
        users = dict(config.basic_auth_users)
        if users != getattr(self, "users", None):
            self.dummy = dummy_hash(users) if users else b""
        self.users = users
        self.headers = config.headers
        self.sans = set(config.tls.client_allowed_sans) if config.tls else set()

    def refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self.checked < self.CHECK_EVERY:
            return
        self.checked = now
        stamp = file_stamp(self.path)
        if stamp == self.stamp:
            return
        self.stamp = stamp
        try:
            config = parse_web_config(read_text_file(self.path, "web config"), self.path)
        except ConfigError as exc:
            reason = str(exc)
            if reason != self.error:
                log.error(
                    "web config %s is invalid, refusing protected requests until it is fixed: %s",
                    self.path,
                    reason,
                )
            self.error = reason
            return
        self.apply(config)
        if self.error:
            log.info("web config %s is valid again", self.path)
        self.error = None


def _make_middleware(config: WebConfig, exempt: frozenset[str]) -> Callable[..., Awaitable[Any]]:
    from aiohttp import web

    live = _LiveSettings(config)
    cache = _AuthCache()

    async def authorised(request: web.Request) -> bool:
        creds = parse_basic_authorization(request.headers.get("Authorization"))
        if creds is None:
            return False
        user, password = creds
        users = live.users
        key = cache.key(user, password, users.get(user, ""))
        if user in users and cache.hit(key):
            return True
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, check_password, users, user, password, live.dummy)
        if ok:
            cache.add(key)
        return ok

    def finish(response: web.StreamResponse) -> web.StreamResponse:
        for name, value in live.headers:
            response.headers[name] = value
        return response

    @web.middleware
    async def web_config_middleware(
        request: web.Request, handler: Callable[..., Awaitable[Any]]
    ) -> web.StreamResponse:
        live.refresh()
        protected = request.path not in exempt
        if live.error is not None and protected:
            return finish(web.Response(status=500, text="web config invalid: see the logs\n"))
        if live.sans and not _peer_san_allowed(request, live.sans):
            return finish(web.Response(status=403, text="client certificate not allowed\n"))
        if live.users and protected and not await authorised(request):
            return finish(
                web.Response(
                    status=401, text="Unauthorized\n", headers={"WWW-Authenticate": f'Basic realm="{REALM}"'}
                )
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            finish(exc)
            raise
        return finish(response)

    return web_config_middleware


def _peer_san_allowed(request: Any, allowed: set[str]) -> bool:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return False
    names = {value for kind, value in cert.get("subjectAltName", ())}
    return bool(names & allowed)
