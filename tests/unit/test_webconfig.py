"""``--web-config``: parsing and validation of the exporter-toolkit file, TLS context, auth checks.

The end-to-end checks with real HTTPS clients against the running service live in
tests/integration/test_security.py; here the pieces are exercised directly, with certificates
made at test time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl

import pytest

from testkit.tls import issue, key_pem, make_ca, pem

bcrypt = pytest.importorskip("bcrypt")
pytest.importorskip("cryptography")

from aiohttp import web  # noqa: E402

from sidecar.config.files import ConfigError  # noqa: E402
from sidecar.config.web import WebConfig, load_web_config, parse_web_config  # noqa: E402
from sidecar.webauth import (  # noqa: E402
    check_password,
    middleware,
    parse_basic_authorization,
    ssl_context,
)

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


# ---------------------------------------------------------------- certificates


@pytest.fixture
def pki(tmp_path):
    ca = make_ca()
    skey, scert = issue(ca, "server")
    ckey, ccert = issue(ca, "client", sans=("scraper.monitoring",), client=True)
    files = {
        "ca": tmp_path / "ca.crt",
        "crt": tmp_path / "tls.crt",
        "key": tmp_path / "tls.key",
        "ccrt": tmp_path / "client.crt",
        "ckey": tmp_path / "client.key",
    }
    files["ca"].write_bytes(pem(ca[1]))
    files["crt"].write_bytes(pem(scert))
    files["key"].write_bytes(key_pem(skey))
    files["ccrt"].write_bytes(pem(ccert))
    files["ckey"].write_bytes(key_pem(ckey))
    files["ca_obj"] = ca
    return files


def write(tmp_path, text, name="web.yml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ---------------------------------------------------------------- parsing


def test_empty_file_means_plain_http_without_auth(tmp_path):
    wc = load_web_config(write(tmp_path, ""))
    assert not wc.tls_enabled and not wc.auth_enabled and ssl_context(wc) is None
    assert wc.scheme == "http"


def test_full_file_with_relative_paths_resolved_next_to_it(tmp_path, pki):
    text = f"""
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
  client_ca_file: ca.crt
  min_version: TLS13
http_server_config:
  headers:
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: {HASH}
"""
    wc = load_web_config(write(tmp_path, text))
    assert wc.tls.cert_file == str(tmp_path / "tls.crt")
    assert wc.tls.client_ca_file == str(tmp_path / "ca.crt")
    # exporter-toolkit: a client CA alone means "require and verify"
    assert wc.tls.client_auth_type == "RequireAndVerifyClientCert"
    ctx = ssl_context(wc)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert wc.headers == (("Strict-Transport-Security", "max-age=31536000"),)
    assert wc.summary() == {
        "tls": True,
        "basic_auth": True,
        "users": ["prometheus"],
        "client_auth_type": "RequireAndVerifyClientCert",
        "min_version": "TLS13",
    }


def test_hashes_never_appear_in_repr_or_summary(tmp_path):
    wc = load_web_config(write(tmp_path, f"basic_auth_users:\n  prom: {HASH}\n"))
    assert HASH not in repr(wc) and HASH not in str(wc.summary())


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("tls_server_config:\n  cert_file: a\n  keyfile: b\n", 3, "unknown key 'keyfile'"),
        ("tls_config:\n  cert_file: a\n", 1, "unknown key 'tls_config'"),
        ("tls_server_config:\n  cert_file: a\n", 1, "needs key_file"),
        ("tls_server_config:\n  key_file: a\n", 1, "needs cert_file"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Bogus\n",
            4,
            "invalid client_auth_type",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
            4,
            "not supported",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            4,
            "needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n",
            4,
            "invalid min_version",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
            5,
            "below min_version",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_FOO]\n",
            4,
            "unsupported cipher",
        ),
        ("http_server_config:\n  headers:\n    Set-Cookie: x\n", 3, "cannot be set"),
        ("basic_auth_users:\n  alice: plaintext-password\n", 2, "bcrypt hash"),
        (f"basic_auth_users:\n  ok: {HASH}\n  'bad:user': {HASH}\n", 3, "invalid user name"),
        ("basic_auth_users: [a]\n", 1, "mapping"),
        ("- a\n", 1, "must be a mapping"),
        ("basic_auth_users:\n  a: b\n  a: c\n", 3, "duplicate key"),
    ],
)
def test_errors_carry_file_and_line(tmp_path, text, line, fragment):
    path = str(tmp_path / "web.yml")
    with pytest.raises(ConfigError) as info:
        parse_web_config(text, path)
    assert (info.value.file, info.value.line) == (path, line), str(info.value)
    assert fragment in str(info.value)


def test_a_plain_password_in_the_users_section_is_never_echoed(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_web_config("basic_auth_users:\n  alice: hunter2-not-a-hash\n", "w.yml")
    assert "hunter2" not in str(info.value)


def test_missing_or_mismatched_files_fail_at_load_with_the_key_line(tmp_path, pki):
    text = "tls_server_config:\n  cert_file: tls.crt\n  key_file: nope.key\n"
    with pytest.raises(ConfigError) as info:
        load_web_config(write(tmp_path, text))
    assert info.value.line == 3 and "does not exist" in str(info.value)

    other_key, _ = issue(pki["ca_obj"], "other")
    (tmp_path / "other.key").write_bytes(key_pem(other_key))
    text = "tls_server_config:\n  cert_file: tls.crt\n  key_file: other.key\n"
    with pytest.raises(ConfigError) as info:
        load_web_config(write(tmp_path, text))
    assert info.value.line == 2 and "cannot load the TLS certificate/key" in str(info.value)
    assert "BEGIN" not in str(info.value)

    (tmp_path / "junk.crt").write_text("not a certificate")
    text = "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: junk.crt\n"
    with pytest.raises(ConfigError) as info:
        load_web_config(write(tmp_path, text))
    assert info.value.line == 4 and "client_ca_file" in str(info.value)


def test_unreadable_web_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read web config"):
        load_web_config(str(tmp_path / "missing.yml"))


def test_inline_pem_is_accepted(tmp_path, pki):
    crt = pki["crt"].read_text().replace("\n", "\n    ")
    key = pki["key"].read_text().replace("\n", "\n    ")
    text = f"tls_server_config:\n  cert: |\n    {crt}\n  key: |\n    {key}\n"
    wc = load_web_config(write(tmp_path, text))
    assert ssl_context(wc) is not None
    assert "PRIVATE KEY" not in repr(wc)


def test_compat_settings_without_effect_are_reported_as_warnings(tmp_path, pki):
    text = (
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        "  curve_preferences: [X25519]\nhttp_server_config:\n  http2: true\n"
    )
    wc = load_web_config(write(tmp_path, text))
    assert len(wc.warnings) == 2


# ---------------------------------------------------------------- basic auth pieces


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_parse_basic_authorization():
    assert parse_basic_authorization(basic("u", "p:w")) == ("u", b"p:w")
    assert parse_basic_authorization("Bearer abc") is None
    assert parse_basic_authorization("Basic !!!") is None
    assert parse_basic_authorization("Basic " + base64.b64encode(b"nocolon").decode()) is None
    assert parse_basic_authorization(None) is None


def test_check_password_needs_known_user_and_right_password():
    users = {"prom": HASH}
    dummy = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4))
    assert check_password(users, "prom", b"s3cret", dummy)
    assert not check_password(users, "prom", b"wrong", dummy)
    assert not check_password(users, "nobody", b"s3cret", dummy)
    assert not check_password(users, "nobody", b"x", dummy)  # the dummy hash never admits


# ---------------------------------------------------------------- middleware on a real server


async def serve(wc: WebConfig, exempt=()):
    app = web.Application(middlewares=[middleware(wc, exempt)])

    async def ok(request):
        return web.Response(text="ok")

    app.router.add_get("/metrics", ok)
    app.router.add_get("/healthz", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(wc))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, port


def https_statuses(wc: WebConfig, *contexts: ssl.SSLContext) -> list[int]:
    """The status of ``GET /metrics`` on a real server with ``wc``, once per client context."""
    import httpx

    async def scenario():
        runner, port = await serve(wc)
        try:
            out = []
            for ctx in contexts:
                async with httpx.AsyncClient(verify=ctx) as c:
                    out.append((await c.get(f"https://127.0.0.1:{port}/metrics")).status_code)
            return out
        finally:
            await runner.cleanup()

    return asyncio.run(scenario())


def test_middleware_answers_401_then_200_and_adds_headers(tmp_path):
    import httpx

    text = f"basic_auth_users:\n  prom: {HASH}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    wc = load_web_config(write(tmp_path, text))

    async def scenario():
        runner, port = await serve(wc, exempt=("/healthz",))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                r = await c.get("/metrics")
                assert r.status_code == 401
                assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
                assert r.headers["X-Frame-Options"] == "deny"
                assert (await c.get("/metrics", auth=("prom", "bad"))).status_code == 401
                assert (await c.get("/metrics", auth=("other", "s3cret"))).status_code == 401
                for _ in range(2):  # the second time comes from the success cache
                    r = await c.get("/metrics", auth=("prom", "s3cret"))
                    assert (r.status_code, r.text) == (200, "ok")
                    assert r.headers["X-Frame-Options"] == "deny"
                assert (await c.get("/metrics", auth=("prom", "bad"))).status_code == 401
                assert (await c.get("/healthz")).status_code == 200  # exempted on request
                assert (await c.get("/nope", auth=("prom", "s3cret"))).status_code == 404
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_tls_certificate_rotation_is_served_without_restart(tmp_path, pki):
    text = "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
    wc = load_web_config(write(tmp_path, text))
    client = ssl.create_default_context(cafile=str(pki["ca"]))

    async def peer_cn(port):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        cert = writer.get_extra_info("peercert")
        writer.close()
        return dict(x[0] for x in cert["subject"])["commonName"]

    async def scenario():
        runner, port = await serve(wc)
        try:
            assert await peer_cn(port) == "server"
            key, cert = issue(pki["ca_obj"], "rotated")
            pki["key"].write_bytes(key_pem(key))
            pki["crt"].write_bytes(pem(cert))
            assert await peer_cn(port) == "rotated"
            pki["crt"].write_text("half-written")  # a broken rotation keeps the last good pair
            assert await peer_cn(port) == "rotated"
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_client_allowed_sans_rejects_other_client_certificates(tmp_path, pki):
    text = (
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        "  client_ca_file: ca.crt\n  client_allowed_sans: [prometheus.monitoring]\n"
    )
    wc = load_web_config(write(tmp_path, text))
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    ctx.load_cert_chain(str(pki["ccrt"]), str(pki["ckey"]))  # SAN scraper.monitoring
    assert https_statuses(wc, ctx) == [403]


# ---------------------------------------------------------------- exporter-toolkit compatibility


@pytest.mark.parametrize(
    "text", ["tls_server_config:\n", "tls_server_config: {}\n", "tls_server_config:\n  min_version: TLS13\n"]
)
def test_tls_section_without_certificate_means_plain_http_like_the_toolkit(tmp_path, text):
    wc = load_web_config(write(tmp_path, text))
    assert not wc.tls_enabled and ssl_context(wc) is None


def test_request_client_cert_is_served_as_no_client_cert_with_a_warning(tmp_path, pki):
    text = (
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        "  client_auth_type: RequestClientCert\n"
    )
    wc = load_web_config(write(tmp_path, text))
    assert wc.tls.client_auth_type == "NoClientCert"
    assert ssl_context(wc).verify_mode == ssl.CERT_NONE
    assert any("RequestClientCert" in w for w in wc.warnings)


def test_client_ca_with_no_client_cert_is_ignored_with_a_warning(tmp_path, pki):
    text = (
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        "  client_ca_file: ca.crt\n  client_auth_type: NoClientCert\n"
    )
    wc = load_web_config(write(tmp_path, text))
    assert ssl_context(wc).verify_mode == ssl.CERT_NONE
    assert any("client_ca_file is ignored" in w for w in wc.warnings)


def test_verify_if_given_accepts_clients_with_and_without_certificates(tmp_path, pki):
    text = (
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        "  client_ca_file: ca.crt\n  client_auth_type: VerifyClientCertIfGiven\n"
    )
    wc = load_web_config(write(tmp_path, text))
    plain = ssl.create_default_context(cafile=str(pki["ca"]))
    with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
    with_cert.load_cert_chain(str(pki["ccrt"]), str(pki["ckey"]))
    assert https_statuses(wc, plain, with_cert) == [200, 200]


def test_users_are_reloaded_from_the_file_and_a_broken_file_fails_closed(tmp_path, monkeypatch):
    import httpx

    from sidecar import webauth

    monkeypatch.setattr(webauth._LiveSettings, "CHECK_EVERY", 0.0)  # look at every request
    path = write(tmp_path, f"basic_auth_users:\n  prom: {HASH}\n")
    wc = load_web_config(path)
    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(rounds=4)).decode()

    def rewrite(text):
        tmp = tmp_path / "web.yml.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)

    async def scenario():
        runner, port = await serve(wc, exempt=("/healthz",))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                assert (await c.get("/metrics", auth=("prom", "s3cret"))).status_code == 200
                rewrite(f"basic_auth_users:\n  prom: {new_hash}\n")
                assert (await c.get("/metrics", auth=("prom", "s3cret"))).status_code == 401
                assert (await c.get("/metrics", auth=("prom", "rotated"))).status_code == 200
                rewrite("basic_auth_users:\n  prom: not-a-hash\n")
                r = await c.get("/metrics", auth=("prom", "rotated"))
                assert r.status_code == 500 and "not-a-hash" not in r.text
                assert (await c.get("/healthz")).status_code == 200
                rewrite(f"basic_auth_users:\n  prom: {new_hash}\n  other: {HASH}\n")
                assert (await c.get("/metrics", auth=("prom", "rotated"))).status_code == 200
                assert (await c.get("/metrics", auth=("other", "s3cret"))).status_code == 200
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
