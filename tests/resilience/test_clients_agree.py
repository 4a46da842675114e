"""Both HTTP clients of the scrape give the same reason for the same fault.

Plain-HTTP targets are scraped with the service's own client (:mod:`sidecar.httpget`), the rest
with aiohttp. A user must not see a fault change its reason with the client, so every fault of
the fault server, and answers broken below HTTP's good manners (canned bytes), go through both
``scrape._get`` (aiohttp) and ``scrape._get_plain`` and must be classified alike; where the text
comes from our own code (status, timeout, cap, connection), it must be the same text too.
"""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import pytest
from faultserver import FaultServer, real_bodies, refused_url

from sidecar import httpget, scrape

CAP = 256 * 1024
SLOW = 0.5  # the timeout for the cases that hang on purpose
TIMEOUT = 10.0  # the others: a hang guard only, so a loaded machine cannot change a reason
GOOD = real_bodies()[-1]


def answer(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


def chunks(body: bytes, size: int, ext: str = "") -> bytes:
    return b"".join(
        f"{len(body[i : i + size]):x}{ext}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )


CL = f"Content-Type: text/plain\nContent-Length: {len(GOOD)}\n"
TE = "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n"
#: canned answers (sent, then the connection is closed)
CANNED = {
    "chunked_ext": answer(TE, chunks(GOOD, 5000, ";a=b") + b"0\r\nX-Trailer: 1\r\n\r\n"),
    "bad_chunk_size": answer(TE, b"zz\r\nabc\r\n0\r\n\r\n"),
    "truncated_chunked": answer(TE, b"1000\r\nabc"),
    "truncated_length": answer("HTTP/1.1 200 OK\n" + CL, GOOD[:500]),
    "http10_to_eof": answer("HTTP/1.0 200 OK\nContent-Type: text/plain\n", GOOD),
    "http11_close_to_eof": answer("HTTP/1.1 200 OK\nConnection: close\n", GOOD),
    "interim_100": answer("HTTP/1.1 100 Continue\n") + answer("HTTP/1.1 200 OK\n" + CL, GOOD),
    "header_line_long": answer("HTTP/1.1 200 OK\nX-Big: " + "a" * 10000 + "\n" + CL, GOOD),
    "headers_huge": answer(
        "HTTP/1.1 200 OK\n" + "".join(f"X-H{i}: {'a' * 1000}\n" for i in range(200)) + CL, GOOD
    ),
    "bad_status_line": answer("HTTP/1.1 abc\n" + CL, GOOD),
    "not_http": b"hello there\r\n\r\n",
    "length_and_chunked": answer(TE + CL, GOOD),
    "bad_length": answer("HTTP/1.1 200 OK\nContent-Length: abc\n", GOOD),
    "header_without_colon": answer("HTTP/1.1 200 OK\nBroken header\n" + CL, GOOD),
    "truncated_head": b"HTTP/1.1 200 OK\r\nContent-Le",
    "redirect": answer("HTTP/1.1 301 Moved\nLocation: /x\nContent-Length: 0\n"),
    "status_without_phrase": answer("HTTP/1.1 503\nContent-Length: 0\n"),
    "gzip_unasked": answer("HTTP/1.1 200 OK\nContent-Encoding: gzip\n", gzip.compress(GOOD)),
    "gzip_not_gzip": answer("HTTP/1.1 200 OK\nContent-Encoding: gzip\n" + CL, GOOD),
    "te_not_chunked": answer("HTTP/1.1 200 OK\nTransfer-Encoding: gzip\n", GOOD),
}
#: fault-server cases (fresh answers per request; "ok" serves a different body each time)
FAULTS = (
    "slow_headers",
    "slow_body",
    "reset_mid_body",
    "close_without_answer",
    "status_500",
    "status_404",
    "oversize_declared",
    "oversize_chunked",
    "garbage",
)
#: cases whose error text is ours in both paths: it must be the same text
SAME_TEXT = {
    "slow_headers",
    "slow_body",
    "close_without_answer",
    "status_500",
    "status_404",
    "oversize_declared",
    "oversize_chunked",
    "redirect",
    "status_without_phrase",
    "refused",
}


async def _canned_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(CANNED[head.split(b" ")[1].decode().strip("/").split("/")[0]])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _both() -> dict[str, tuple[scrape._Answer, scrape._Answer]]:
    server, port = await _canned_server()
    faults = await FaultServer(CAP).start()
    urls = {name: f"http://127.0.0.1:{port}/{name}/metrics" for name in CANNED}
    urls.update({name: faults.url(name) for name in FAULTS})
    urls["refused"] = refused_url()
    loop = asyncio.get_running_loop()
    out = {}
    try:
        async with aiohttp.ClientSession() as session:
            opts = {"headers": {"Accept": scrape.ACCEPT}}
            for name, url in urls.items():
                t = SLOW if name.startswith("slow_") else TIMEOUT
                theirs = await scrape._get(session, url, opts, CAP, loop.time() + t, t)
                client = httpget.Client(scrape.ACCEPT)
                ours = await scrape._get_plain(client, url, CAP, loop.time() + t, t)
                client.close()
                out[name] = (theirs, ours)
    finally:
        server.close()
        await faults.stop()
    return out


@pytest.fixture(scope="module")
def answers() -> dict[str, tuple[scrape._Answer, scrape._Answer]]:
    return asyncio.run(_both())


@pytest.mark.parametrize("case", sorted([*CANNED, *FAULTS, "refused"]))
def test_both_clients_classify_alike(
    answers: dict[str, tuple[scrape._Answer, scrape._Answer]], case: str
) -> None:
    theirs, ours = answers[case]
    assert (ours.reason, ours.status) == (theirs.reason, theirs.status), (theirs.error, ours.error)
    assert ours.body == theirs.body
    assert ours.content_type == theirs.content_type
    assert bool(ours.error) == bool(theirs.error)
    if case in SAME_TEXT:
        assert ours.error == theirs.error


def test_the_good_answers_were_read_in_full(
    answers: dict[str, tuple[scrape._Answer, scrape._Answer]],
) -> None:
    for case in (
        "chunked_ext",
        "http10_to_eof",
        "http11_close_to_eof",
        "interim_100",
        "gzip_unasked",
        "te_not_chunked",
    ):
        assert answers[case][1].body == GOOD, case
