"""Security, end to end: the real sidecar process with ``--web-config``, real HTTPS clients, and
a local HTTPS fake vLLM that demands credentials.

Certificates are made at test time with ``cryptography``. Two CAs: one for the sidecar's own
server certificate (what Prometheus would trust), one for the fake vLLM (what the sidecar trusts
through ``tls.ca_file``) which also signs the client certificate the sidecar presents.

Checked: 401 without or with wrong credentials and 200 with the right ones; plain HTTP refused
when TLS is on; mutual TLS; bearer token file (re-read after rotation), basic auth (file and
inline), CA file, skip-verify, client certificate toward targets; secrets never appear in logs,
/metrics, /api/v1/targets, the status page, check-config or error messages; no request can make
the sidecar fetch a URL of the caller's choosing.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from testkit.captures import FIXTURES
from testkit.procs import GUARD_SECONDS, SidecarProcess, sidecar_cli, wait_until
from testkit.tls import issue, key_pem, make_ca, pem

bcrypt = pytest.importorskip("bcrypt")
pytest.importorskip("cryptography")

from aiohttp import web  # noqa: E402

BODY_DIR = FIXTURES / "vllm-0.32.0" / "prefix_on_shared"


def secret(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(12)}"


# ---------------------------------------------------------------- certificates


def write_pair(folder: Path, stem: str, pair) -> tuple[str, str]:
    key, cert = pair
    crt, k = folder / f"{stem}.crt", folder / f"{stem}.key"
    crt.write_bytes(pem(cert))
    k.write_bytes(key_pem(key))
    return str(crt), str(k)


def write_ca(folder: Path, stem: str, ca) -> str:
    path = folder / f"{stem}.crt"
    path.write_bytes(pem(ca[1]))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    sidecar_ca, target_ca, other_ca = make_ca("sidecar-ca"), make_ca("vllm-ca"), make_ca("rogue")
    out = {
        "dir": d,
        "sidecar_ca": write_ca(d, "sidecar-ca", sidecar_ca),
        "target_ca": write_ca(d, "vllm-ca", target_ca),
    }
    out["sidecar_crt"], out["sidecar_key"] = write_pair(d, "sidecar", issue(sidecar_ca, "sidecar"))
    out["vllm_crt"], out["vllm_key"] = write_pair(d, "vllm", issue(target_ca, "vllm"))
    out["client_crt"], out["client_key"] = write_pair(
        d, "client", issue(target_ca, "sidecar-client", sans=("vllm-cache-sidecar",), client=True)
    )
    out["rogue_crt"], out["rogue_key"] = write_pair(
        d, "rogue", issue(other_ca, "rogue", sans=("rogue",), client=True)
    )
    return out


# ---------------------------------------------------------------- servers in a thread


class LoopThread:
    """An asyncio loop in a daemon thread, for aiohttp servers used from sync tests."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def start_site(app, ssl_context=None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # noqa: SLF001


class FakeVLLM:
    """HTTPS fake vLLM. ``/bearer`` wants ``Bearer <token>``, ``/basic`` and ``/inline`` want
    basic auth, ``/urlcreds`` wants the credentials of the URL, ``/open`` wants nothing.
    A second port requires a client certificate signed by the target CA."""

    def __init__(self, pki, body: bytes, credentials: dict[str, str]):
        self.body = body
        self.expected = dict(credentials)  # path name -> expected Authorization header
        self.seen: dict[str, list[str | None]] = {}
        self.client_cns: list[str] = []
        self.pki = pki

    async def metrics(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        auth = request.headers.get("Authorization")
        self.seen.setdefault(name, []).append(auth)
        want = self.expected.get(name)
        if want is not None and auth != want:
            return web.Response(status=401, text="unauthorized\n")
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            self.client_cns.append(dict(x[0] for x in peer["subject"])["commonName"])
        return web.Response(
            body=self.body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name}/metrics", self.metrics)
        app.router.add_get("/version", self.version)
        return app

    async def start(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki["vllm_crt"], self.pki["vllm_key"])
        self.runner, self.port = await start_site(self.app(), ctx)
        mctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        mctx.load_cert_chain(self.pki["vllm_crt"], self.pki["vllm_key"])
        mctx.load_verify_locations(self.pki["target_ca"])
        mctx.verify_mode = ssl.CERT_REQUIRED
        self.mtls_runner, self.mtls_port = await start_site(self.app(), mctx)

    async def stop(self):
        await self.runner.cleanup()
        await self.mtls_runner.cleanup()


class Canary:
    """A plain HTTP server that counts every request: nothing should ever reach it."""

    def __init__(self):
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path_qs)
        return web.Response(text="vllm:num_requests_running 0\n")

    async def start(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, self.port = await start_site(app)

    async def stop(self):
        await self.runner.cleanup()


# ---------------------------------------------------------------- the scene


@pytest.fixture(scope="module")
def scene(pki, tmp_path_factory):
    if not (BODY_DIR / "000.prom").exists():
        pytest.skip(f"no fixtures at {FIXTURES}")
    d = tmp_path_factory.mktemp("security")
    s = {
        name: secret(name)
        for name in ("token", "wrong_token", "password", "inline", "urlsecret", "prom_pass", "new_token")
    }
    (d / "token").write_text(s["token"] + "\n")
    (d / "wrong-token").write_text(s["wrong_token"])
    (d / "password").write_text(s["password"] + "\n")
    prom_hash = bcrypt.hashpw(s["prom_pass"].encode(), bcrypt.gensalt(rounds=4)).decode()
    s["prom_hash"] = prom_hash

    def basic(user, password):
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    s["basic_header"] = basic("vllm", s["password"]).split()[1]
    fake = FakeVLLM(
        pki,
        (BODY_DIR / "000.prom").read_bytes(),
        {
            "bearer": f"Bearer {s['token']}",
            "basic": basic("vllm", s["password"]),
            "inline": basic("vllm2", s["inline"]),
            "urlcreds": basic("vllm3", s["urlsecret"]),
        },
    )
    canary = Canary()
    loop = LoopThread()
    loop.run(fake.start())
    loop.run(canary.start())
    ca = pki["target_ca"]
    url = f"https://127.0.0.1:{fake.port}"
    config = {
        "targets": [
            {
                "name": "bearer",
                "url": f"{url}/bearer/metrics",
                "bearer_token_file": str(d / "token"),
                "tls": {"ca_file": ca},
            },
            {
                "name": "basic",
                "url": f"{url}/basic/metrics",
                "basic_auth": {"username": "vllm", "password_file": str(d / "password")},
                "tls": {"ca_file": ca},
            },
            {
                "name": "inline",
                "url": f"{url}/inline/metrics",
                "basic_auth": {"username": "vllm2", "password": s["inline"]},
                "tls": {"ca_file": ca},
            },
            {
                "name": "urlcreds",
                "url": f"https://vllm3:{s['urlsecret']}@127.0.0.1:{fake.port}/urlcreds/metrics",
                "tls": {"ca_file": ca},
            },
            {"name": "skipverify", "url": f"{url}/open/metrics", "tls": {"insecure_skip_verify": True}},
            {"name": "unverified", "url": f"{url}/open/metrics"},
            {
                "name": "mtls",
                "url": f"https://127.0.0.1:{fake.mtls_port}/open/metrics",
                "tls": {"ca_file": ca, "cert_file": pki["client_crt"], "key_file": pki["client_key"]},
            },
            {
                "name": "nocert",
                "url": f"https://127.0.0.1:{fake.mtls_port}/open/metrics",
                "tls": {"ca_file": ca},
            },
            {
                "name": "wrongtoken",
                "url": f"{url}/bearer/metrics",
                "bearer_token_file": str(d / "wrong-token"),
                "tls": {"ca_file": ca},
            },
            {
                "name": "missingtoken",
                "url": f"{url}/bearer/metrics",
                "bearer_token_file": str(d / "no-such-token"),
                "tls": {"ca_file": ca},
            },
        ],
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "web.yml").write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": pki["sidecar_crt"], "key_file": pki["sidecar_key"]},
                "basic_auth_users": {"prometheus": prom_hash},
            }
        )
    )
    sidecar = SidecarProcess(
        [
            "--config",
            str(d / "config.yaml"),
            "--web-config",
            str(d / "web.yml"),
            "--interval",
            "1",
            "--windows",
            "10s,30s",
            "--log-level",
            "debug",
        ],
        d,
        scheme="https",
    )
    base = sidecar.base
    client = httpx.Client(
        base_url=base,
        verify=ssl.create_default_context(cafile=pki["sidecar_ca"]),
        auth=("prometheus", s["prom_pass"]),
    )
    try:
        yield {
            "dir": d,
            "secrets": s,
            "fake": fake,
            "canary": canary,
            "loop": loop,
            "sidecar": sidecar,
            "base": base,
            "client": client,
            "pki": pki,
        }
    finally:
        client.close()
        sidecar.stop()
        loop.run(fake.stop())
        loop.run(canary.stop())
        loop.close()


def targets_doc(scene) -> dict:
    r = scene["client"].get("/api/v1/targets")
    assert r.status_code == 200
    return r.json()


def target_states(scene) -> dict[str, dict]:
    doc = targets_doc(scene)
    items = doc["targets"] if isinstance(doc, dict) else doc
    return {t["name"]: t for t in items}


def up(scene) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = scene["client"].get("/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "vllm_sidecar_target_up":
                out[smp.labels["target"]] = smp.value
    return out


EXPECT_UP = {"bearer", "basic", "inline", "urlcreds", "skipverify", "mtls"}
EXPECT_DOWN = {"unverified", "nocert", "wrongtoken", "missingtoken"}


@pytest.fixture(scope="module")
def settled(scene):
    """Every target scraped, the good ones up."""

    def ok():
        u = up(scene)
        return (
            set(u) == EXPECT_UP | EXPECT_DOWN
            and all(u[n] == 1 for n in EXPECT_UP)
            and all(u[n] == 0 for n in EXPECT_DOWN)
            and u
        )

    wait_until(ok, "good targets up, bad ones down", timeout=GUARD_SECONDS)
    return scene


# ---------------------------------------------------------------- the sidecar's own endpoints

PROTECTED = ["/metrics", "/api/v1/targets", "/"]


@pytest.mark.parametrize("path", PROTECTED)
def test_no_credentials_401(scene, path):
    with httpx.Client(verify=ssl.create_default_context(cafile=scene["pki"]["sidecar_ca"])) as c:
        r = c.get(scene["base"] + path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].lower().startswith("basic")
    assert "vllm_sidecar" not in r.text


@pytest.mark.parametrize("auth", [("prometheus", "wrong"), ("nobody", "x"), ("prometheus", "")])
def test_wrong_credentials_401(scene, auth):
    ctx = ssl.create_default_context(cafile=scene["pki"]["sidecar_ca"])
    with httpx.Client(verify=ctx, auth=auth) as c:
        for path in PROTECTED:
            assert c.get(scene["base"] + path).status_code == 401


def test_right_credentials_200(settled):
    c = settled["client"]
    r = c.get("/metrics")
    assert r.status_code == 200
    assert 'vllm_sidecar_target_up{target="bearer"} 1.0' in r.text
    assert c.get("/api/v1/targets").status_code == 200
    assert c.get("/").status_code == 200


def test_probes_stay_open_for_kubernetes_but_only_over_tls(scene):
    ctx = ssl.create_default_context(cafile=scene["pki"]["sidecar_ca"])
    with httpx.Client(verify=ctx) as c:
        assert c.get(scene["base"] + "/healthz").status_code == 200
        assert c.get(scene["base"] + "/readyz").status_code in (200, 503)


def test_plain_http_is_refused_when_tls_is_on(scene):
    try:
        r = httpx.get(
            f"http://127.0.0.1:{scene['sidecar'].port}/metrics",
            auth=("prometheus", scene["secrets"]["prom_pass"]),
        )
    except httpx.TransportError:
        return  # the TLS server hung up on the plain-text request
    assert r.status_code >= 400 and "vllm_sidecar" not in r.text


def test_the_served_certificate_is_ours(scene):
    with pytest.raises(httpx.ConnectError):  # not trusted by the system store
        httpx.get(scene["base"] + "/healthz")
    ctx = ssl.create_default_context(cafile=scene["pki"]["sidecar_ca"])
    assert httpx.get(scene["base"] + "/healthz", verify=ctx).status_code == 200


# ---------------------------------------------------------------- toward the targets


def test_target_credentials_and_tls_options_work(settled):
    fake = settled["fake"]
    s = settled["secrets"]
    assert f"Bearer {s['token']}" in fake.seen["bearer"]
    assert "sidecar-client" in fake.client_cns  # client certificate presented to the mTLS port
    states = target_states(settled)
    for name in EXPECT_DOWN:
        assert states[name]["last_error"] and not states[name]["up"], states[name]
    assert "cannot read bearer_token_file" in states["missingtoken"]["last_error"]


def test_failure_reasons(settled):
    """The last error of each failing target has the contract's reason, and the counter shows it
    (all-time sets are not compared: a cold first scrape on a busy machine may time out)."""
    states = target_states(settled)
    want = {
        "wrongtoken": "http_status",
        "unverified": "connect",
        "nocert": "connect",
        "missingtoken": "connect",
    }
    assert {n: states[n]["last_error_reason"] for n in want} == want
    text = settled["client"].get("/metrics").text
    for name, reason in want.items():
        line = [
            ln
            for ln in text.splitlines()
            if ln.startswith("vllm_sidecar_scrape_errors_total{")
            and f'target="{name}"' in ln
            and f'reason="{reason}"' in ln
        ]
        assert line and float(line[0].rsplit(" ", 1)[1]) >= 1, name


def test_rotated_token_file_is_picked_up_without_restart(settled):
    fake, s, d = settled["fake"], settled["secrets"], settled["dir"]
    fake.expected["bearer"] = f"Bearer {s['new_token']}"
    tmp = d / "token.new"
    tmp.write_text(s["new_token"] + "\n")
    os.replace(tmp, d / "token")  # as a Kubernetes Secret update swaps the file
    wait_until(
        lambda: f"Bearer {s['new_token']}" in fake.seen["bearer"], "new token used", timeout=GUARD_SECONDS
    )
    wait_until(lambda: up(settled).get("bearer") == 1, "bearer target up again", timeout=GUARD_SECONDS)


# ---------------------------------------------------------------- no fetch on request


def test_no_request_makes_the_sidecar_fetch_a_url_of_the_callers_choosing(scene):
    canary = scene["canary"]
    target = f"http://127.0.0.1:{canary.port}/metrics"
    c = scene["client"]
    q = {"target": target, "url": target, "module": "vllm", "address": f"127.0.0.1:{canary.port}"}
    for path in (
        "/",
        "/metrics",
        "/api/v1/targets",
        "/probe",
        "/scrape",
        "/api/v1/scrape",
        "/api/v1/targets/add",
        "/federate",
        "/-/reload",
        "/api/v1/reload",
    ):
        c.get(path, params=q)
        c.post(path, json={"targets": [target], **q})
        c.put(path, json={"targets": [target], **q})
    c.get(f"/api/v1/targets/{target}")
    # Scrapes go on at a one-second interval: give any misrouted fetch a few of them to happen.
    time.sleep(3)
    assert canary.hits == []
    assert not any(n == target or n.endswith(f":{canary.port}") for n in up(scene))


# ---------------------------------------------------------------- no secret anywhere


def leaks(text: str, scene) -> list[str]:
    s = scene["secrets"]
    values = [v for k, v in s.items() if k != "basic_header"]
    values.append(s["basic_header"])
    return [v for v in values if v in text]


def test_secrets_never_appear_in_any_output(settled, tmp_path):
    scene = settled
    c = scene["client"]
    outputs = {
        "/metrics": c.get("/metrics").text,
        "/api/v1/targets": c.get("/api/v1/targets").text,
        "status page": c.get("/").text,
        "/metrics (OpenMetrics)": c.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        ).text,
    }
    check = sidecar_cli("check-config", str(scene["dir"] / "config.yaml"), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    outputs["check-config"] = check.stdout + check.stderr
    outputs["logs"] = scene["sidecar"].logs
    assert "inline" in outputs["/api/v1/targets"] and "urlcreds" in outputs["/api/v1/targets"]
    for where, text in outputs.items():
        assert not leaks(text, scene), f"secret in {where}"


def test_secrets_never_appear_in_logs_after_shutdown(settled):
    """Last: stop the process so every log line (shutdown included) is in."""
    rc = settled["sidecar"].stop()
    assert rc == 0
    assert not leaks(settled["sidecar"].logs, settled)
    assert '"level": "debug"' in settled["sidecar"].logs or "debug" in settled["sidecar"].logs


# ---------------------------------------------------------------- mutual TLS on the sidecar


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki, tmp_path):
    (tmp_path / "web.yml").write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": pki["sidecar_crt"],
                    "key_file": pki["sidecar_key"],
                    "client_ca_file": pki["target_ca"],
                    "client_auth_type": "RequireAndVerifyClientCert",
                }
            }
        )
    )
    sidecar = SidecarProcess(
        [
            "--web-config",
            str(tmp_path / "web.yml"),
            "--target",
            "dead=http://127.0.0.1:9/metrics",
            "--interval",
            "1",
            "--windows",
            "10s",
        ],
        tmp_path,
        scheme="https",
    )
    base = sidecar.base
    try:
        plain = ssl.create_default_context(cafile=pki["sidecar_ca"])
        with pytest.raises(httpx.TransportError):
            httpx.get(base + "/metrics", verify=plain)
        rogue = ssl.create_default_context(cafile=pki["sidecar_ca"])
        rogue.load_cert_chain(pki["rogue_crt"], pki["rogue_key"])
        with pytest.raises(httpx.TransportError):
            httpx.get(base + "/metrics", verify=rogue)
        good = ssl.create_default_context(cafile=pki["sidecar_ca"])
        good.load_cert_chain(pki["client_crt"], pki["client_key"])
        r = httpx.get(base + "/metrics", verify=good)
        assert r.status_code == 200 and "vllm_sidecar_build_info" in r.text
    finally:
        assert sidecar.stop() == 0


# ---------------------------------------------------------------- bad web configs refuse to start


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("basic_auth_users:\n  prometheus: plain-password-oops\n", 2, "bcrypt"),
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            2,
            "does not exist",
        ),
        (
            "tls_server_config:\n  cert_file: x\n  key_file: y\n  client_auth_type: Maybe\n",
            4,
            "client_auth_type",
        ),
    ],
)
def test_bad_web_config_refuses_to_start_with_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "web.yml"
    path.write_text(text)
    result = sidecar_cli(
        "run",
        "--listen",
        "127.0.0.1:0",
        "--web-config",
        str(path),
        "--target",
        "http://127.0.0.1:9",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    out = result.stdout + result.stderr
    assert f"{path}:{line}:" in out and fragment in out
    assert "plain-password-oops" not in out
