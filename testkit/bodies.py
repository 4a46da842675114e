"""Build new ``/metrics`` bodies from real captured ones (pure text transforms).

Tests, benchmarks and the replay server need cases no capture holds: several data-parallel
engines, a restart, a counter stuck at zero. Deriving them from real bodies keeps every other line
exactly as vLLM wrote it.
"""

from __future__ import annotations

import re

_SAMPLE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})?(?P<sep>\s+)"
    r"(?P<value>\S+)(?P<rest>.*)$"
)


def _lines(body: bytes | str) -> list[str]:
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return text.split("\n")


def set_value(body: bytes | str, name: str, value: float, where: dict[str, str] | None = None) -> bytes:
    """Set every sample ``name`` (whose labels include ``where``) to ``value``."""
    out = []
    found = False
    for line in _lines(body):
        m = _SAMPLE_RE.match(line)
        if m and m.group("name") == name and _matches(m.group("labels") or "", where or {}):
            line = (
                f"{m.group('name')}{m.group('labels') or ''}{m.group('sep')}{float(value)!r}{m.group('rest')}"
            )
            found = True
        out.append(line)
    if not found:
        raise KeyError(f"no sample {name} {where or ''} in body")
    return "\n".join(out).encode("utf-8")


def get_value(body: bytes | str, name: str, where: dict[str, str] | None = None) -> float:
    for line in _lines(body):
        m = _SAMPLE_RE.match(line)
        if m and m.group("name") == name and _matches(m.group("labels") or "", where or {}):
            return float(m.group("value"))
    raise KeyError(f"no sample {name} {where or ''} in body")


def _matches(labels: str, where: dict[str, str]) -> bool:
    return all(f'{k}="{v}"' in labels for k, v in where.items())


def scale_counters(body: bytes | str, names: tuple[str, ...], factor: float) -> bytes:
    """Multiply the values of the named samples (e.g. to fake more or less traffic)."""
    out = []
    for line in _lines(body):
        m = _SAMPLE_RE.match(line)
        if m and m.group("name") in names:
            line = (
                f"{m.group('name')}{m.group('labels') or ''}{m.group('sep')}"
                f"{float(m.group('value')) * factor!r}{m.group('rest')}"
            )
        out.append(line)
    return "\n".join(out).encode("utf-8")


def no_hits(body: bytes | str) -> bytes:
    """The body with no prefix-cache hit from any tier: the hit counter and, where vLLM counts
    hits by source (0.32+), every source at zero (a consistent body: sources sum to hits)."""
    out = set_value(body, "vllm:prefix_cache_hits_total", 0)
    text = out.decode("utf-8")
    if "vllm:prompt_tokens_cached_by_source_total" in text:
        for src in set(re.findall(r'prompt_tokens_cached_by_source_total\{[^}]*source="([^"]*)"', text)):
            out = set_value(out, "vllm:prompt_tokens_cached_by_source_total", 0, {"source": src})
    return out


def multi_engine(bodies: list[bytes | str], engine_label: str = "engine") -> bytes:
    """One data-parallel body from per-engine bodies: body i's ``engine="0"`` series become
    ``engine="i"``. Comment lines and non-engine series come from the first body only."""
    seen_meta: set[str] = set()
    out: list[str] = []
    per_family: dict[str, list[str]] = {}
    order: list[str] = []
    for i, body in enumerate(bodies):
        for line in _lines(body):
            if not line:
                continue
            if line.startswith("#"):
                if i == 0 and line not in seen_meta:
                    seen_meta.add(line)
                    fam = line.split()[2] if len(line.split()) > 2 else ""
                    per_family.setdefault(fam, []).append(line)
                    if fam not in order:
                        order.append(fam)
                continue
            m = _SAMPLE_RE.match(line)
            if not m:
                continue
            labels = m.group("labels") or ""
            tag = f'{engine_label}="0"'
            if tag not in labels and i > 0:
                continue
            if tag in labels:
                line = line.replace(tag, f'{engine_label}="{i}"', 1)
            fam = _family_of(m.group("name"), per_family)
            per_family.setdefault(fam, []).append(line)
            if fam not in order:
                order.append(fam)
    for fam in order:
        out.extend(per_family[fam])
    return ("\n".join(out) + "\n").encode("utf-8")


def _family_of(name: str, known: dict[str, list[str]]) -> str:
    if name in known:
        return name
    for suffix in ("_total", "_created", "_bucket", "_sum", "_count", "_info"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


#: a vLLM production-stack router's /metrics (issue 10): vLLM-named gauges per backend `server`,
#: no model_name/engine; ``ROUTER % n`` sets backend-a's queries
ROUTER = """# TYPE vllm:gpu_prefix_cache_queries_total gauge
vllm:gpu_prefix_cache_queries_total{server="http://backend-a:8000"} %d
vllm:gpu_prefix_cache_queries_total{server="http://backend-b:8000"} 1000
vllm:gpu_prefix_cache_queries_total{server="http://backend-c:8000"} 11000
# TYPE vllm:gpu_prefix_cache_hits_total gauge
vllm:gpu_prefix_cache_hits_total{server="http://backend-a:8000"} 7500
vllm:gpu_prefix_cache_hits_total{server="http://backend-b:8000"} 500
vllm:gpu_prefix_cache_hits_total{server="http://backend-c:8000"} 105
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{server="http://backend-a:8000"} 5
vllm:num_requests_running{server="http://backend-b:8000"} 2
vllm:num_requests_running{server="http://backend-c:8000"} 3
"""

RAY_LABELS = 'engine="0",model_name="m",SessionName="s",Version="2.52.0"'


def ray_body(replicas: dict[str, tuple[int, int]]) -> str:
    """Ray Serve LLM's metrics port: ``ray_vllm_`` names, replicas {ReplicaId: (queries, hits)}
    all saying engine="0" for one model."""
    out = ["# TYPE ray_vllm_prefix_cache_queries_total counter"]
    for r, (q, _) in replicas.items():
        out.append(
            f'ray_vllm_prefix_cache_queries_total{{ReplicaId="{r}",WorkerId="w{r[1:]}",{RAY_LABELS}}} {q}'
        )
    out.append("# TYPE ray_vllm_prefix_cache_hits_total counter")
    for r, (_, h) in replicas.items():
        out.append(
            f'ray_vllm_prefix_cache_hits_total{{ReplicaId="{r}",WorkerId="w{r[1:]}",{RAY_LABELS}}} {h}'
        )
    return "\n".join(out) + "\n"


#: sample-name endings of the series that only grow (counters and histogram parts)
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def growing(bodies: list[bytes], extra: int) -> list[bytes]:
    """The real bodies, then ``extra`` copies of the last one with every counter and histogram
    series scaled up step by step (x1.05, x1.10, ...), so windowed rates and latency stay defined
    for as long as a test runs. Gauges and label sets stay exactly as vLLM wrote them."""
    last = bodies[-1]
    names = tuple(
        {
            line.split("{")[0].split()[0]
            for line in last.decode().split("\n")
            if line.strip() and not line.startswith("#")
        }
    )
    counters = tuple(n for n in names if n.endswith(COUNTER_SUFFIXES))
    return list(bodies) + [scale_counters(last, counters, 1 + 0.05 * k) for k in range(1, extra + 1)]


def without_counters(body: bytes | str) -> bytes:
    """The body as an idle V0 server serves it: every ``vllm:`` series dropped but
    ``vllm:cache_config_info`` (V0 creates its counters only once requests arrive)."""
    return (
        "\n".join(
            ln for ln in _lines(body) if not ln.startswith("vllm:") or ln.startswith("vllm:cache_config_info")
        ).encode()
        + b"\n"
    )
