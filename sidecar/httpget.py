"""A minimal keep-alive HTTP/1.1 GET for plain-HTTP scrape targets (no auth, no TLS).

Why our own client: scraping is what this service exists for, and one GET through aiohttp cost as
much CPU as parsing and deriving the answer (docs/performance.md). This does only what a scrape
needs: one persistent connection per target (reconnected after a close or an error), a fixed
request (Host, Accept, ``Connection: keep-alive``; no gzip asked for, no redirects followed), the
status line and headers, a body delimited by Content-Length, chunked transfer or the end of the
connection, and the size cap (a declared length over the cap is refused before reading). The
caller sets the deadline (``asyncio.timeout_at``) and turns the exceptions below into the
contract's reasons, as it does for aiohttp. Targets with auth or TLS keep aiohttp.

Measured (CPU per GET of a 50 KB body over loopback, docs/performance.md): aiohttp 0.12-0.13 ms,
this 0.05 ms, h11 on streams 0.12-0.15 ms (so not h11). A :class:`asyncio.Protocol` and asyncio
streams cost the same within the noise with this head parser; the protocol wakes the reader once
when the bytes it waits for are all in, not once per segment. The head is parsed here, not with
``http.client.parse_headers`` (an email parser: ~6x the cost of this one, more than the whole GET).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

#: aiohttp's limits on one line of the head, so both clients refuse the same answers
MAX_LINE = 8190
#: the whole head (status line and headers)
MAX_HEAD = 64 * 1024
#: how long a target's resolved addresses serve new connections (aiohttp's ``ttl_dns_cache``):
#: vLLM closes idle connections after 5 s, so at 5 s scrapes a target may reconnect often
DNS_TTL = 60.0


class BadResponse(Exception):
    """The status line or headers are not HTTP (aiohttp: ``ClientResponseError``)."""


class BrokenBody(Exception):
    """The connection ended, or the framing broke, inside the body (aiohttp: ``ClientPayloadError``)."""


class ServerDisconnectedError(ConnectionError):
    """The connection ended before a complete head (named as aiohttp's, so errors read the same)."""


class TooLarge(Exception):
    """The body is over the cap (declared or counted)."""


class ClientConnectorError(OSError):
    """No connection: refused, unreachable, name not resolved (named and worded as aiohttp's)."""


@dataclass(slots=True)
class Response:
    """A response read in full (status 200), or the head of any other status (no body read)."""

    status: int
    reason: str
    body: bytes
    content_type: str | None


@dataclass(slots=True)
class _Head:
    status: int
    reason: str
    keep_alive: bool
    length: int | None  # None: chunked or to the end of the connection
    chunked: bool
    content_type: str | None
    encoding: str  # Content-Encoding, not asked for; "" or "identity" when there is none


#: the headers a scrape reads; the others are only checked for their form
_READ = frozenset(
    (b"content-length", b"transfer-encoding", b"content-encoding", b"content-type", b"connection")
)
_SPACE = b" \t"


def _status_line(line: bytes) -> tuple[bool, int, str]:
    """``HTTP/1.1 200 OK`` -> (HTTP/1.1 or later, 200, "OK")."""
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not (version[:5] == b"HTTP/" and len(version) == 8 and version[5:6].isdigit()) or not (
        code.isdigit() and len(code) == 3 and rest[3:4] in (b"", b" ")
    ):
        raise BadResponse(f"Invalid status line {line[:100]!r}")
    return version >= b"HTTP/1.1", int(code), rest[4:].decode("latin-1").strip()


def _headers(lines: list[bytes]) -> dict[bytes, bytes]:
    """The headers of :data:`_READ` (lower-case name -> value); a line without a colon, a folded
    line, a line over :data:`MAX_LINE` or two different Content-Lengths is a :class:`BadResponse`."""
    found: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or line[0] in _SPACE or name[-1] in _SPACE:
            raise BadResponse(f"Invalid header {line[:100]!r}")
        if len(line) > MAX_LINE:
            raise BadResponse(f"Got more than {MAX_LINE} bytes when reading: header line too long")
        key = name.lower()
        if key in _READ:
            value = value.strip(_SPACE)
            if key == b"content-length" and found.get(key, value) != value:
                raise BadResponse("Conflicting Content-Length headers")
            found[key] = value
    return found


def parse_head(head: bytes) -> _Head:
    """Status line and headers (without the blank line) -> what framing the body has, as aiohttp
    reads it (which refuses the same malformed heads, with :class:`BadResponse`)."""
    lines = head.split(b"\r\n")
    http11, status, reason = _status_line(lines[0])
    h = _headers(lines[1:])
    length: int | None = None
    if (value := h.get(b"content-length")) is not None:
        if not value.isdigit():
            raise BadResponse(f"Invalid Content-Length {value[:40]!r}")
        length = int(value)
    te = h.get(b"transfer-encoding")
    chunked = te is not None and te.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
    if te is not None and length is not None:
        raise BadResponse("Transfer-Encoding can't be present with Content-Length")
    # a Transfer-Encoding that does not end in chunked: the body ends with the connection
    conn = h.get(b"connection", b"").lower()
    keep = b"close" not in conn if http11 else b"keep-alive" in conn
    if status in (204, 304) or 100 <= status < 200:
        length = 0
    ctype = h.get(b"content-type")
    return _Head(
        status,
        reason,
        keep and (chunked or length is not None),
        length,
        chunked,
        ctype.decode("latin-1") if ctype is not None else None,
        h.get(b"content-encoding", b"").lower().decode("latin-1"),
    )


class _Conn(asyncio.Protocol):
    """One TCP connection's bytes, and a reader woken when ``want`` bytes (or the end) are in."""

    __slots__ = ("transport", "_buf", "_pos", "_pending", "size", "want", "waiter", "eof", "error", "used")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # unread bytes: _buf[_pos:] then the segments received since it was last joined (joined
        # only when the reader looks at them: a body that came in one segment is never copied)
        self._buf = b""
        self._pos = 0
        self._pending: list[bytes] = []
        self.size = 0
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.error: BaseException | None = None
        self.used = 0  # responses read on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._pending.append(data)
        self.size += len(data)
        if self.waiter is not None and self.size >= self.want:
            self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def fill(self, want: int) -> bool:
        """Wait until the buffer holds ``want`` bytes; False when the connection ended first."""
        while self.size < want:
            if self.eof:
                return False
            self.want = want
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return True

    def _joined(self) -> bytes:
        if self._pending:
            if self._pos == len(self._buf) and len(self._pending) == 1:
                self._buf = self._pending[0]
            else:
                self._buf = b"".join([self._buf[self._pos :], *self._pending])
            self._pos = 0
            self._pending.clear()
        return self._buf

    def find(self, sep: bytes, start: int = 0) -> int:
        """Where ``sep`` is in the unread bytes (from ``start``), or -1."""
        i = self._joined().find(sep, self._pos + start)
        return i - self._pos if i >= 0 else -1

    def take(self, n: int) -> bytes:
        """The next ``n`` unread bytes (there must be that many)."""
        buf = self._joined()
        pos = self._pos
        self.size -= n
        if pos + n == len(buf):
            self._buf, self._pos = b"", 0
            return buf if pos == 0 else buf[pos:]
        self._pos = pos + n
        return buf[pos : pos + n]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return (
            not self.eof and not self.size and self.transport is not None and not self.transport.is_closing()
        )


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    request: bytes
    numeric: bool  # an IP address: nothing to resolve


class Client:
    """One target's persistent connection; ``get`` never runs twice at once for one client.

    ``limit`` is shared by every client of the service: the most requests in flight (memory of
    bodies being read), as aiohttp's connector limit is for the other targets."""

    def __init__(self, accept: str, limit: asyncio.Semaphore | None = None):
        self._accept = accept
        self._limit = limit
        self._conn: _Conn | None = None
        self._targets: dict[str, _Target] = {}
        self._addrs: list[tuple[int, str, int]] = []  # (family, IP, port) of the target's host
        self._addrs_until = 0.0
        self.closed = False
        self.connects = 0  # connections opened (tests read it: keep-alive is really kept)

    def _target(self, url: str) -> _Target:
        t = self._targets.get(url)
        if t is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname or parts.username is not None:
                raise ValueError(f"not a plain http:// URL: {url}")
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.netloc
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {self._accept}\r\n"
                "Connection: keep-alive\r\n\r\n"
            ).encode("latin-1")
            t = _Target(parts.hostname, parts.port or 80, request, _is_ip(parts.hostname))
            if len(self._targets) < 8:  # the target's URL and its filtered URL
                self._targets[url] = t
        return t

    async def get(self, url: str, max_bytes: int) -> Response:
        """GET ``url``; raises the exceptions above (or ``OSError``), never retries a failure
        except a kept-alive connection that the server closed before answering (GET is idempotent)."""
        if self.closed:
            raise ServerDisconnectedError("client closed")
        t = self._target(url)
        if self._limit is None:
            return await self._get(t, max_bytes)
        async with self._limit:
            return await self._get(t, max_bytes)

    async def _get(self, t: _Target, max_bytes: int) -> Response:
        conn = self._conn
        if conn is not None and not conn.reusable():
            conn.close()
            conn = self._conn = None
        try:
            if conn is not None:
                try:
                    return await self._exchange(conn, t, max_bytes)
                except ServerDisconnectedError:  # closed while idle, seen only now: one fresh try
                    conn.close()
            conn = await self._connect(t)
            return await self._exchange(conn, t, max_bytes)
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise

    async def _connect(self, t: _Target) -> _Conn:
        loop = asyncio.get_running_loop()
        self._conn = None
        try:
            if t.numeric:
                _, conn = await loop.create_connection(_Conn, t.host, t.port)
            else:
                conn = await self._connect_resolved(t)
        except OSError as exc:
            msg = f"Cannot connect to host {t.host}:{t.port} ssl:default [{exc.strerror or exc}]"
            raise ClientConnectorError(msg) from exc
        self.connects += 1
        if self.closed:
            conn.close()
            raise ServerDisconnectedError("client closed")
        self._conn = conn
        return conn

    async def _connect_resolved(self, t: _Target) -> _Conn:
        """Connect to the host's addresses in turn, resolved at most every :data:`DNS_TTL`
        (``create_connection`` with a name would resolve it in a thread on every connect)."""
        loop = asyncio.get_running_loop()
        if not self._addrs or loop.time() >= self._addrs_until:
            infos = await loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
            self._addrs = [(family, str(addr[0]), int(addr[1])) for family, _, _, _, addr in infos]
            self._addrs_until = loop.time() + DNS_TTL
        error: OSError = OSError(f"no address for {t.host}")
        for family, ip, port in self._addrs:
            try:
                _, conn = await loop.create_connection(_Conn, ip, port, family=family)
                return conn
            except OSError as exc:
                error = exc
        self._addrs = []  # resolve again next time
        raise error

    async def _exchange(self, conn: _Conn, t: _Target, max_bytes: int) -> Response:
        assert conn.transport is not None
        conn.transport.write(t.request)
        head = await _read_head(conn)
        while 100 <= head.status < 200 and head.status != 101:  # interim answers: skip
            head = await _read_head(conn)
        conn.used += 1
        if head.status != 200:
            conn.close()  # the body is not read: the connection cannot be reused
            self._conn = None
            return Response(head.status, head.reason, b"", head.content_type)
        body = await _read_body(conn, head, max_bytes)
        if head.encoding not in ("", "identity"):
            body = _decode(body, head.encoding, max_bytes)
        if not head.keep_alive or not conn.reusable():
            conn.close()
            self._conn = None
        return Response(200, head.reason, body, head.content_type)

    def close(self) -> None:
        """Close the connection now; a closed client opens no new ones."""
        self.closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read_head(conn: _Conn) -> _Head:
    start = 0
    while True:
        end = conn.find(b"\r\n\r\n", start)
        if 0 <= end <= MAX_HEAD:
            return parse_head(conn.take(end + 4)[:-4])
        if conn.size > MAX_HEAD:
            raise BadResponse(f"Got more than {MAX_HEAD} bytes when reading the headers")
        first_line = conn.find(b"\r\n")
        if (first_line if first_line >= 0 else conn.size) > MAX_LINE:
            raise BadResponse(f"Got more than {MAX_LINE} bytes when reading the status line")
        start = max(0, conn.size - 3)
        if not await conn.fill(conn.size + 1):
            raise ServerDisconnectedError("Server disconnected" + (f": {conn.error}" if conn.error else ""))


async def _read_body(conn: _Conn, head: _Head, max_bytes: int) -> bytes:
    if head.chunked:
        return await _read_chunked(conn, max_bytes)
    if head.length is None:
        return await _read_to_eof(conn, max_bytes)
    if head.length > max_bytes:
        raise TooLarge(f"Content-Length {head.length} exceeds the {max_bytes}-byte cap")
    if not await conn.fill(head.length):
        raise BrokenBody(
            f"Response payload is not completed: {conn.size} of {head.length} bytes"
            + (f" ({conn.error})" if conn.error else "")
        )
    return conn.take(head.length)


def _decode(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """A compressed body we did not ask for (as aiohttp would, gzip and deflate; capped)."""
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BrokenBody(f"Can not decode content-encoding: {encoding}")
    try:
        d = zlib.decompressobj(wbits=47 if "gzip" in encoding else 15)
        out = d.decompress(body, max_bytes + 1)
    except zlib.error:
        raise BrokenBody(f"Can not decode content-encoding: {encoding}") from None
    if len(out) > max_bytes:
        raise TooLarge(f"body exceeds the {max_bytes}-byte cap")
    return out


async def _read_to_eof(conn: _Conn, max_bytes: int) -> bytes:
    while not conn.eof:
        if conn.size > max_bytes:
            raise TooLarge(f"body exceeds the {max_bytes}-byte cap")
        await conn.fill(conn.size + 1)
    if conn.error is not None:
        raise BrokenBody(f"Response payload is not completed: {conn.error}")
    if conn.size > max_bytes:
        raise TooLarge(f"body exceeds the {max_bytes}-byte cap")
    return conn.take(conn.size)


async def _line(conn: _Conn, what: str) -> bytes:
    """The next CRLF-terminated line (without it); :class:`BrokenBody` if the connection ends."""
    while (end := conn.find(b"\r\n")) < 0:
        if conn.size > MAX_LINE:
            raise BrokenBody(f"{what} line too long")
        if not await conn.fill(conn.size + 1):
            raise BrokenBody(f"Response payload is not completed: connection closed in the {what}")
    return conn.take(end + 2)[:-2]


async def _read_chunked(conn: _Conn, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = (await _line(conn, "chunk size")).split(b";", 1)[0].strip(b" \t")
        try:
            if not size_line or size_line[:1] in b"+-" or size_line[:2].lower() == b"0x":
                raise ValueError
            size = int(size_line, 16)
        except ValueError:
            raise BadResponse(f"Invalid character in chunk size: {size_line[:40]!r}") from None
        if size == 0:
            while await _line(conn, "trailer"):  # trailers are ignored
                pass
            return b"".join(parts)
        total += size
        if total > max_bytes:
            raise TooLarge(f"body exceeds the {max_bytes}-byte cap")
        if not await conn.fill(size + 2):
            raise BrokenBody("Response payload is not completed: connection closed in a chunk")
        chunk = conn.take(size + 2)
        if chunk[-2:] != b"\r\n":
            raise BadResponse("Chunk size mismatch: no CRLF after the chunk")
        parts.append(chunk[:-2])
