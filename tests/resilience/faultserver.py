"""A misbehaving HTTP server on loopback, for the resilience tests.

A raw ``asyncio`` server rather than aiohttp: the faults worth testing live below HTTP's good
manners (a socket reset in the middle of a body, headers that never come, a body that lies about
its length). Each path ``/<case>/metrics`` selects one behaviour from :data:`CASES`; every request
is counted per case, and :attr:`FaultServer.inflight` shows requests being held open right now.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable

from testkit.captures import capture_bodies
from testkit.replay import InThread

TEXT = "text/plain; version=0.0.4; charset=utf-8"
HANG = 3600.0  # "forever": the client's timeout or the server's stop ends it


def real_bodies(folder: str = "vllm-0.32.0/prefix_on_shared") -> list[bytes]:
    """Captured vLLM bodies of one scenario (shared prefixes, caching on by default), in order."""
    return capture_bodies(folder)


def body_with(body: bytes, extra: str) -> bytes:
    return body.rstrip(b"\n") + b"\n" + extra.encode() + b"\n"


def set_sample(body: bytes, name: str, value: str) -> bytes:
    """Replace the value of every sample line called ``name`` (labels kept) by ``value``."""
    out = []
    for line in body.decode().split("\n"):
        if line.startswith(name + "{") or line.startswith(name + " "):
            line = line.rsplit(" ", 1)[0] + " " + value
        out.append(line)
    return "\n".join(out).encode()


def first_sample_line(body: bytes, name: str) -> str:
    for line in body.decode().split("\n"):
        if line.startswith(name + "{") or line.startswith(name + " "):
            return line
    raise KeyError(name)


class Conn:
    """One accepted connection: the request is read; the case decides what goes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.keep_alive = False  # the last answer left the connection open for the next request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = TEXT,
        reason: str = "",
        length: int | None = None,
        keep_alive: bool = False,
    ) -> None:
        self.keep_alive = keep_alive
        head = (
            f"HTTP/1.1 {status} {reason or 'X'}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        await self.send(head.encode("latin-1") + body)

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER 0), as a crashed peer would."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Case = Callable[[Conn, int], Awaitable[None]]  # (connection, how many earlier requests)


def build_cases(max_body: int) -> dict[str, Case]:
    """The behaviours. ``max_body`` is the sidecar's body cap (the oversize cases exceed it)."""
    bodies = real_bodies()
    good = bodies[-1]

    async def ok(c: Conn, n: int) -> None:
        await c.respond(200, bodies[min(n, len(bodies) - 1)])

    async def slow_headers(c: Conn, n: int) -> None:
        await asyncio.sleep(HANG)

    async def slow_body(c: Conn, n: int) -> None:
        await c.send(
            f"HTTP/1.1 200 OK\r\nContent-Type: {TEXT}\r\nContent-Length: {len(good)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + good[:1000]
        )
        await asyncio.sleep(HANG)

    async def reset_mid_body(c: Conn, n: int) -> None:
        await c.send(
            f"HTTP/1.1 200 OK\r\nContent-Type: {TEXT}\r\nContent-Length: {len(good)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + good[: len(good) // 2]
        )
        await asyncio.sleep(0.05)
        c.reset()

    async def close_without_answer(c: Conn, n: int) -> None:
        c.writer.close()

    async def status_500(c: Conn, n: int) -> None:
        await c.respond(500, b"internal error\n", "text/plain", "Internal Server Error")

    async def status_404(c: Conn, n: int) -> None:
        await c.respond(404, b"not found\n", "text/plain", "Not Found")

    async def oversize_declared(c: Conn, n: int) -> None:
        big = good * (max_body // len(good) + 2)
        await c.respond(200, big)

    async def oversize_chunked(c: Conn, n: int) -> None:
        """No Content-Length: the cap must hold while streaming."""
        await c.send(
            f"HTTP/1.1 200 OK\r\nContent-Type: {TEXT}\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        sent = 0
        while sent <= 4 * max_body:
            chunk = good[:16384]
            await c.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        await c.send(b"0\r\n\r\n")

    async def non_utf8(c: Conn, n: int) -> None:
        await c.respond(200, good.rstrip(b"\n") + b'\nvllm:odd_info{model_name="t\xffny"} 1\n')

    async def garbage(c: Conn, n: int) -> None:
        await c.respond(200, b"<html><body>\x00\x01 502 Bad Gateway {{{ }}} </body></html>\n", "text/html")

    async def duplicate_series(c: Conn, n: int) -> None:
        await c.respond(200, body_with(good, first_sample_line(good, "vllm:kv_cache_usage_perc")))

    async def nan_inf(c: Conn, n: int) -> None:
        body = set_sample(good, "vllm:prefix_cache_queries_total", "+Inf")
        body = set_sample(body, "vllm:prefix_cache_hits_total", "NaN")
        body = set_sample(body, "vllm:kv_cache_usage_perc", "NaN")
        await c.respond(200, body)

    async def no_vllm(c: Conn, n: int) -> None:
        plain = "\n".join(ln for ln in good.decode().split("\n") if "vllm:" not in ln) + "\n"
        await c.respond(200, plain.encode())

    async def flapping(c: Conn, n: int) -> None:
        if n % 2 == 0:
            await c.respond(200, bodies[min(n // 2, len(bodies) - 1)])
        else:
            await c.respond(503, b"flap\n", "text/plain", "Service Unavailable")

    async def goes_bad(c: Conn, n: int) -> None:
        """Healthy for two scrapes, then reset mid-body for ever: nothing old may stay visible."""
        if n < 2:
            await c.respond(200, bodies[n])
        else:
            await reset_mid_body(c, n)

    return {
        f.__name__: f
        for f in (
            ok,
            slow_headers,
            slow_body,
            reset_mid_body,
            close_without_answer,
            status_500,
            status_404,
            oversize_declared,
            oversize_chunked,
            non_utf8,
            garbage,
            duplicate_series,
            nan_inf,
            no_vllm,
            flapping,
            goes_bad,
        )
    }


def _static(body: bytes) -> Case:
    """A healthy target that keeps its connections alive, as vLLM does."""

    async def serve(c: Conn, n: int) -> None:
        await c.respond(200, body, keep_alive=True)

    return serve


class FaultServer(InThread):
    """``await start()`` in a running loop, or ``with FaultServer(...)`` to run it in a thread."""

    def __init__(self, max_body: int = 256 * 1024, static: dict[str, bytes] | None = None):
        self.cases = build_cases(max_body)
        for name, body in (static or {}).items():
            self.cases[name] = _static(body)
        self.requests: Counter[str] = Counter()
        self.inflight: Counter[str] = Counter()
        self.connections = 0  # open right now
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    def url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.port}/{case}/metrics"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = Conn(reader, writer)
        try:
            while await self._answer(conn):  # the next request on a kept-alive connection
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, IndexError):
            pass
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _answer(self, conn: Conn) -> bool:
        """Read one request and answer it; True when the connection stays open for another."""
        head = await conn.reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]
        case = path.strip("/").split("/")[0]
        fn = self.cases.get(case)
        n = self.requests[case]
        self.requests[case] += 1
        if fn is None or not path.endswith("/metrics"):
            await conn.respond(404, b"no such case\n", "text/plain", "Not Found")
            return False
        self.inflight[case] += 1
        try:
            await fn(conn, n)
        finally:
            self.inflight[case] -= 1
        return conn.keep_alive

    async def start(self) -> FaultServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def refused_url() -> str:
    """A loopback port that nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"
