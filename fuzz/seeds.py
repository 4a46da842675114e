"""Rebuild the seed corpus under fuzz/corpus/ (committed; run this only to change it).

    python -m fuzz.seeds ../shared/fixtures

Seeds: a few real vLLM captures (whole, for the parser), the same captures cut down to the
series the sidecar reads (short inputs fuzz faster), small hand-written edge bodies, and config
files. Files are named by content hash, as libFuzzer names the inputs it adds.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from sidecar.normalize import WANTED

CORPUS = Path(__file__).resolve().parent / "corpus"
SEP = b"\x00"  # fuzz.pipeline: bodies are separated by this byte

REAL = (
    "vllm-0.8.5.post2-v0-hidden/prefix_on_shared/000.prom",
    "vllm-0.8.5.post2-v0-hidden/prefix_on_shared/001.prom",
    "vllm-0.10.1.1.post2/prefix_on_shared/004.prom",
    "vllm-0.32.0/concurrent/003.prom",
)
SEQUENCES = (
    "vllm-0.32.0/prefix_on_shared",
    "vllm-0.32.0/concurrent",
    "vllm-0.10.1.1.post2/prefix_on_shared",
    "vllm-0.8.5.post2-v0-hidden/prefix_on_shared",
)

L = '{engine="0",model_name="tiny"}'
EDGE = {
    "escapes": 'vllm:prefix_cache_queries_total{engine="0",model_name="a\\\\b\\"c\\nd"} 10\n'
    'vllm:prefix_cache_hits_total{engine="0",model_name="a\\\\b\\"c\\nd"} 4\n',
    "comma_brace_in_value": 'vllm:prefix_cache_queries_total{engine="0",model_name="x,y}z= \\"}"} 5\n'
    'vllm:kv_cache_usage_perc{engine="0",model_name="x,y}z= \\"}"} 0.5\n',
    "nan_inf": f"vllm:prefix_cache_queries_total{L} NaN\nvllm:prefix_cache_hits_total{L} +Inf\n"
    f"vllm:kv_cache_usage_perc{L} -Inf\nvllm:num_requests_running{L} -1\n",
    "negative_and_above_one": f"vllm:prefix_cache_queries_total{L} -5\nvllm:prefix_cache_hits_total{L} 9\n"
    f"vllm:kv_cache_usage_perc{L} 1.5\nvllm:gpu_prefix_cache_hit_rate{L} 2\n",
    "duplicate_series": f"vllm:prefix_cache_queries_total{L} 1\nvllm:prefix_cache_queries_total{L} 2\n",
    "openmetrics_eof": f"# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{L} 3\n"
    f"vllm:prefix_cache_queries_created{L} 1.7e9\n# EOF\ngarbage after eof\n",
    "exemplar": f'vllm:prefix_cache_queries_total{L} 7 # {{trace_id="abc"}} 1.0 1.7e9\n'
    f'vllm:time_to_first_token_seconds_bucket{{engine="0",model_name="tiny",le="+Inf"}} 2 '
    f'# {{trace_id="x"}} 0.5\n# EOF\n',
    "created": f"vllm:prefix_cache_queries_total{L} 3\nvllm:prefix_cache_queries_created{L} 1.7e9\n"
    f"vllm:prompt_tokens_total{L} 3\nvllm:prompt_tokens_created{L} 1.7e9\n",
    "no_trailing_newline": f"vllm:prefix_cache_queries_total{L} 3",
    "crlf": f"# HELP x y\r\nvllm:prefix_cache_queries_total{L} 3\r\nvllm:prefix_cache_hits_total{L} 1\r\n",
    "identities": 'vllm:prefix_cache_queries_total{engine="0",model_name="m",ReplicaId="r1"} 10\n'
    'vllm:prefix_cache_queries_total{engine="0",model_name="m",ReplicaId="r2"} 20\n'
    'vllm:prefix_cache_hits_total{engine="0",model_name="m",ReplicaId="r1"} 1\n'
    'vllm:prefix_cache_hits_total{engine="0",model_name="m",ReplicaId="r2"} 2\n',
    "pids": 'vllm:prefix_cache_queries_total{engine="0",model_name="m",pid="1"} 10\n'
    'vllm:prefix_cache_queries_total{engine="0",model_name="m",pid="2"} 20\n',
    "histogram": 'vllm:time_to_first_token_seconds_bucket{engine="0",model_name="t",le="0.1"} 1\n'
    'vllm:time_to_first_token_seconds_bucket{engine="0",model_name="t",le="+Inf"} 3\n'
    'vllm:time_to_first_token_seconds_sum{engine="0",model_name="t"} 0.9\n'
    'vllm:time_to_first_token_seconds_count{engine="0",model_name="t"} 3\n',
    "spaces": f"  vllm:prefix_cache_queries_total {L}  4  1700000000000\n\t# comment\n",
}
# Pipeline sequences: the same series going up, down (a restart), impossible, then back.
PIPE = {
    "restart": [
        f"vllm:prefix_cache_queries_total{L} 100\nvllm:prefix_cache_hits_total{L} 50\n",
        f"vllm:prefix_cache_queries_total{L} 10\nvllm:prefix_cache_hits_total{L} 2\n",
        f"vllm:prefix_cache_queries_total{L} 30\nvllm:prefix_cache_hits_total{L} 12\n",
    ],
    "impossible": [
        f"vllm:prefix_cache_queries_total{L} 10\nvllm:kv_cache_usage_perc{L} 0.5\n",
        f"vllm:prefix_cache_queries_total{L} -1\nvllm:kv_cache_usage_perc{L} -0.5\n",
        f"vllm:prefix_cache_queries_total{L} 12\nvllm:kv_cache_usage_perc{L} 1.5\n",
    ],
    "unread_counters_drop": [
        f"vllm:external_prefix_cache_queries_total{L} 10\n"
        f'vllm:request_success_total{L[:-1]},finished_reason="stop"}} 4\n',
        f"vllm:external_prefix_cache_queries_total{L} 5\n"
        f'vllm:request_success_total{L[:-1]},finished_reason="stop"}} 2\n',
    ],
    "failure_between": [EDGE["created"], "not a metrics body", EDGE["created"].replace(" 3\n", " 1\n")],
}
CONFIGS = {
    "config.yaml": "listen: 127.0.0.1:9490\ninterval: 5s\nwindows: [1m, 5m]\nlabels: {cluster: a}\n"
    "targets:\n  - name: a\n    url: http://127.0.0.1:8000/metrics\n    timeout: 2s\n"
    "    basic_auth: {username: u, password_file: /p}\n"
    "    tls: {insecure_skip_verify: false}\n"
    "  - http://127.0.0.1:8001\n",
    "targets.yaml": "- targets: ['127.0.0.1:8000', '127.0.0.1:8001']\n  labels: {__scheme__: http, "
    "__metrics_path__: /metrics, zone: a}\n- targets: [h:1]\n  labels: {name: one}\n",
    "targets.json": '[{"targets": ["127.0.0.1:8000"], "labels": {"zone": "b"}}]\n',
    "web.yaml": "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_version: TLS12\n"
    "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
    "http_server_config:\n  headers: {X-Frame-Options: deny}\nbasic_auth_users:\n"
    "  alice: $2y$10$" + "a" * 53 + "\n",
    "anchors.yaml": "base: &b {username: u}\ntargets:\n  - {url: 'h:1', basic_auth: *b}\n"
    "  - {url: 'h:2', <<: *b}\n",
    "deep.json": "[" * 40 + "]" * 40,
}


def _write(target: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def trim(body: bytes) -> bytes:
    """Only the sample lines the sidecar reads (and their order), so a seed is a few KB."""
    keep = [ln for ln in body.split(b"\n") if ln.split(b"{")[0].split(b" ")[0].decode() in WANTED]
    return b"\n".join(keep) + b"\n"


def main(fixtures: Path) -> None:
    for rel in REAL:
        _write("parser", (fixtures / rel).read_bytes())
    for body in EDGE.values():
        _write("parser", body.encode())
        _write("pipeline", body.encode())
    for folder in SEQUENCES:
        bodies = [trim(p.read_bytes()) for p in sorted((fixtures / folder).glob("*.prom"))]
        _write("parser", bodies[-1])
        _write("pipeline", SEP.join(bodies[:3]))
    for bodies in PIPE.values():
        _write("pipeline", SEP.join(b.encode() for b in bodies))
    for text in CONFIGS.values():
        _write("config", text.encode())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/fixtures"))
