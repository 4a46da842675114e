"""The service's own HTTP GET (:mod:`sidecar.httpget`) against a scripted server on loopback.

Each connection the server accepts plays the next script: one canned answer per request read
(``None``: close without answering), then the connection is closed. The tests read what the
client returns or raises, how many connections it opened, and the requests the server saw.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import pytest

from sidecar import httpget
from sidecar.config.settings import BasicAuth, Config, TargetConfig, TLSConfig
from sidecar.httpget import BadResponse, BrokenBody, Client, ServerDisconnectedError, TooLarge, parse_head
from sidecar.model import Window
from sidecar.scrape import ACCEPT, _get_plain, plain
from sidecar.service import Sidecar

BODY = b'# TYPE vllm:x gauge\nvllm:x{model_name="m"} 1\n' * 50
CAP = 64 * 1024


def answer(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


def ok(body: bytes = BODY, extra: str = "") -> bytes:
    return answer(f"HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: {len(body)}\n{extra}", body)


def chunked(body: bytes, size: int = 100, ext: str = "") -> bytes:
    parts = [
        f"{len(body[i : i + size]):x}{ext}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    ]
    return answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"".join(parts) + b"0\r\n\r\n")


class Hold(bytes):
    """A scripted answer after which the server sends nothing more and keeps the connection open."""


class Scripted:
    """A loopback server playing one script per accepted connection."""

    def __init__(self, *scripts: list[bytes | None]):
        self.scripts = list(scripts)
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed_by_peer = 0  # connections the client closed (EOF while waiting for a request)
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.scripts[self.connections] if self.connections < len(self.scripts) else []
        self.connections += 1
        try:
            for item in script:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                if item is None:
                    break
                writer.write(item)
                await writer.drain()
                if isinstance(item, Hold):
                    await reader.read()
                    break
            else:
                if not script:
                    if not await reader.read(1):
                        self.closed_by_peer += 1
        except asyncio.IncompleteReadError:
            self.closed_by_peer += 1
        finally:
            writer.close()

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


# ------------------------------------------------------------------ the head, pure


def test_head_framing_and_keep_alive() -> None:
    h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain")
    assert (h.status, h.reason, h.length, h.chunked, h.keep_alive, h.content_type) == (
        200,
        "OK",
        12,
        False,
        True,
        "text/plain",
    )
    assert not parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close").keep_alive
    assert not parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1").keep_alive
    assert parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive").keep_alive
    to_eof = parse_head(b"HTTP/1.1 200 OK")
    assert to_eof.length is None and not to_eof.chunked and not to_eof.keep_alive
    te = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")
    assert te.chunked and te.keep_alive
    assert parse_head(b"HTTP/1.1 503").reason == ""  # as aiohttp reports it: no phrase made up
    assert parse_head(b"HTTP/1.1 204 No Content").length == 0


@pytest.mark.parametrize(
    "head",
    [
        b"hello there",
        b"HTTP/1.1 abc",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 200 OK\r\nBroken header",
        b"HTTP/1.1 200 OK\r\n folded: value",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000,
    ],
)
def test_heads_that_are_not_http_are_refused(head: bytes) -> None:
    with pytest.raises(BadResponse):
        parse_head(head)


# ------------------------------------------------------------------ bodies


async def get(
    server: Scripted, url: str | None = None, cap: int = CAP, client: Client | None = None
) -> bytes:
    c = client or Client(ACCEPT)
    try:
        return (await c.get(url or server.url(), cap)).body
    finally:
        if client is None:
            c.close()


def test_chunked_with_extensions_and_trailers() -> None:
    async def main() -> None:
        body = chunked(BODY, 97, ';name="v"; x=1')[: -len(b"\r\n")] + b"Expires: never\r\n\r\n"
        async with Scripted([body]) as s:
            assert await get(s) == BODY

    run(main)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"zz\r\nabc\r\n0\r\n\r\n"), BadResponse),
        (answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"-5\r\nabc\r\n0\r\n\r\n"), BadResponse),
        (answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"3\r\nabcd\r\n0\r\n\r\n"), BadResponse),
        (answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"1000\r\nabc"), BrokenBody),
        (answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"3\r\nabc\r\n"), BrokenBody),
        (ok(BODY)[:-10], BrokenBody),
        (answer("HTTP/1.1 200 OK\nX-Big: " + "a" * 9000 + "\n") + BODY, BadResponse),
        (answer("HTTP/1.1 200 OK\n" + "X-H: aaaaaaaa\n" * 8000) + BODY, BadResponse),
        (b"HTTP/1.1 200 OK\r\nContent-Le", ServerDisconnectedError),
    ],
    ids=[
        "bad chunk size",
        "negative chunk size",
        "chunk longer than its size",
        "truncated chunk",
        "no last chunk",
        "truncated body",
        "header line too long",
        "head too large",
        "truncated head",
    ],
)
def test_broken_answers_raise_what_the_scrape_classifies(raw: bytes, error: type[Exception]) -> None:
    async def main() -> None:
        async with Scripted([raw]) as s:
            with pytest.raises(error):
                await get(s)

    run(main)


def test_interim_answers_are_skipped() -> None:
    async def main() -> None:
        async with Scripted(
            [answer("HTTP/1.1 100 Continue\n") + answer("HTTP/1.1 103 Early Hints\nLink: x\n") + ok()]
        ) as s:
            assert await get(s) == BODY

    run(main)


def test_http_10_without_length_is_read_to_the_end_and_not_reused() -> None:
    async def main() -> None:
        raw = answer("HTTP/1.0 200 OK\nContent-Type: text/plain\n", BODY)
        async with Scripted([raw], [raw]) as s:
            c = Client(ACCEPT)
            assert await get(s, client=c) == BODY
            assert await get(s, client=c) == BODY
            assert c.connects == 2
            c.close()

    run(main)


def test_unasked_gzip_is_decoded_within_the_cap() -> None:
    async def main() -> None:
        packed = gzip.compress(BODY)
        async with Scripted(
            [ok(packed, "Content-Encoding: gzip\n")], [ok(packed, "Content-Encoding: gzip\n")]
        ) as s:
            assert await get(s) == BODY
            with pytest.raises(TooLarge):
                await get(s, cap=len(BODY) - 1)

    run(main)


# ------------------------------------------------------------------ the cap


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    async def main() -> None:
        # the head promises 10 MB and nothing follows: waiting for the body would hang
        async with Scripted([Hold(answer("HTTP/1.1 200 OK\nContent-Length: 10000000\n"))]) as s:
            with pytest.raises(TooLarge, match="Content-Length 10000000 exceeds the 65536-byte cap"):
                await get(s)

    run(main)


@pytest.mark.parametrize("framing", ["chunked", "to the end"])
def test_undeclared_bodies_are_counted_against_the_cap(framing: str) -> None:
    async def main() -> None:
        big = BODY * (CAP // len(BODY) + 2)
        raw = chunked(big, 4096) if framing == "chunked" else answer("HTTP/1.0 200 OK\n", big)
        async with Scripted([raw], [raw]) as s:
            with pytest.raises(TooLarge, match="body exceeds the 65536-byte cap"):
                await get(s)
            assert await get(s, cap=len(big)) == big

    run(main)


# ------------------------------------------------------------------ the connection


def test_the_request_and_one_connection_kept_alive() -> None:
    async def main() -> None:
        async with Scripted([ok(), chunked(BODY), ok()]) as s:
            c = Client(ACCEPT)
            for url in (s.url(), s.url("/metrics?name[]=vllm:x"), s.url()):
                assert await get(s, url, client=c) == BODY
            assert c.connects == 1 and s.connections == 1
            c.close()
        first = s.requests[1].decode("latin-1")
        assert first == (
            f"GET /metrics?name[]=vllm:x HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nAccept: {ACCEPT}\r\n"
            "Connection: keep-alive\r\n\r\n"
        )
        assert "accept-encoding" not in first.lower()  # no gzip asked for

    run(main)


def test_connection_close_is_honoured() -> None:
    async def main() -> None:
        async with Scripted([ok(extra="Connection: close\n"), ok()], [ok()]) as s:
            c = Client(ACCEPT)
            assert await get(s, client=c) == BODY
            assert await get(s, client=c) == BODY
            assert c.connects == 2 and len(s.requests) == 2  # nothing sent on the closed one
            c.close()

    run(main)


def test_a_keep_alive_connection_closed_between_scrapes_reconnects_without_error() -> None:
    async def main() -> None:
        async with Scripted([ok()], [ok()], [ok(), None], [ok()]) as s:
            c = Client(ACCEPT)
            assert await get(s, client=c) == BODY
            await asyncio.sleep(0.05)  # the server's close arrives while idle
            assert await get(s, client=c) == BODY
            assert await get(s, client=c) == BODY
            # the server reads this request, then closes without answering (an idle timeout
            # racing the request): GET is idempotent, so it is sent again on a new connection
            assert await get(s, client=c) == BODY
            assert c.connects == 4
            c.close()

    run(main)


def test_a_server_closing_idle_connections_at_the_scrape_interval_costs_no_scrape() -> None:
    """vLLM (uvicorn) closes a connection idle for 5 s, the default scrape interval: the close
    and the next request race. Scaled down to 50 ms; every GET must still succeed."""
    idle = 0.05

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
                writer.write(ok())
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/metrics"
        c = Client(ACCEPT)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            for _ in range(40):
                next_at += idle
                await asyncio.sleep(next_at - loop.time())
                assert (await c.get(url, CAP)).body == BODY
        finally:
            c.close()
            server.close()

    run(main)


def test_a_fresh_connection_closed_without_answer_is_an_error_not_a_retry() -> None:
    async def main() -> None:
        async with Scripted([None], [ok()]) as s:
            c = Client(ACCEPT)
            with pytest.raises(ServerDisconnectedError):
                await get(s, client=c)
            assert c.connects == 1
            assert await get(s, client=c) == BODY
            c.close()

    run(main)


def test_other_statuses_are_returned_unread_and_the_connection_dropped() -> None:
    async def main() -> None:
        async with Scripted([answer("HTTP/1.1 301 Moved\nLocation: /x\nContent-Length: 0\n")], [ok()]) as s:
            c = Client(ACCEPT)
            r = await c.get(s.url(), CAP)
            assert (r.status, r.reason, r.body) == (301, "Moved", b"")  # no redirect followed
            assert await get(s, client=c) == BODY
            assert c.connects == 2
            c.close()

    run(main)


def test_close_ends_the_connection_and_the_client() -> None:
    async def main() -> None:
        async with Scripted([ok(), ok()]) as s:
            c = Client(ACCEPT)
            assert await get(s, client=c) == BODY
            c.close()
            for _ in range(50):
                if s.closed_by_peer:
                    break
                await asyncio.sleep(0.01)
            assert s.closed_by_peer == 1
            with pytest.raises(ServerDisconnectedError):
                await c.get(s.url(), CAP)

    run(main)


def test_a_timeout_drops_the_connection() -> None:
    async def main() -> None:
        async with Scripted([Hold(ok()[:100])], [ok()]) as s:
            c = Client(ACCEPT)
            loop = asyncio.get_running_loop()
            a = await _get_plain(c, s.url(), CAP, loop.time() + 0.2, 0.2)
            assert (a.reason, a.error) == ("timeout", "no complete answer within 0.2s")
            b = await _get_plain(c, s.url(), CAP, loop.time() + 5, 5)
            assert (b.reason, b.body) == (None, BODY)
            assert c.connects == 2
            c.close()

    run(main)


def test_a_host_name_is_resolved_and_reconnects() -> None:
    async def main() -> None:
        async with Scripted([ok()], [ok()]) as s:
            c = Client(ACCEPT)
            for _ in range(2):  # the server closes after each answer: two connections
                assert await get(s, f"http://localhost:{s.port}/metrics", client=c) == BODY
            assert c.connects == 2
            c.close()

    run(main)


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError):
        httpget.Client(ACCEPT)._target("https://127.0.0.1/metrics")
    with pytest.raises(ValueError):
        httpget.Client(ACCEPT)._target("http://u:p@127.0.0.1/metrics")


def test_only_targets_without_auth_or_tls_get_the_own_client() -> None:
    url = "http://127.0.0.1:8000/metrics"
    targets = {
        "plain": TargetConfig("plain", url),
        "bearer": TargetConfig("bearer", url, bearer_token_file="/run/token"),
        "basic": TargetConfig("basic", url, basic_auth=BasicAuth("u", "p")),
        "tls": TargetConfig("tls", url, tls=TLSConfig(ca_file="/run/ca.pem")),
        "https": TargetConfig("https", "https://127.0.0.1:8000/metrics"),
        "userinfo": TargetConfig("userinfo", "http://u:p@127.0.0.1:8000/metrics"),
    }
    assert [name for name, t in targets.items() if plain(t)] == ["plain"]
    windows = (Window("1m", 60.0),)
    sidecar = Sidecar(Config(windows=windows, targets=tuple(targets.values())))
    sidecar.set_targets(tuple(targets.values()))  # not started: no tasks, the clients only
    clients = {name: r.client for name, r in sidecar._running.items()}
    assert [name for name, c in clients.items() if c is not None] == ["plain"]
    sidecar.set_targets(())
    assert clients["plain"] is not None and clients["plain"].closed  # removal closes it
    aiohttp_only = Sidecar(Config(windows=windows, targets=(targets["plain"],)), own_client=False)
    aiohttp_only.set_targets((targets["plain"],))
    assert aiohttp_only._running["plain"].client is None
