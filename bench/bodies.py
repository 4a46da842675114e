"""Real captured vLLM bodies for the benchmark, and an 8-engine body synthesised from them.

Why synthesise: a data-parallel vLLM (``--data-parallel-size 8``) exposes every per-engine series
once per engine; no capture of one exists, so we relabel the real single-engine lines
``engine="0"`` as ``engine="0".."7"``, family by family, keeping every other byte as vLLM wrote it.
"""

from __future__ import annotations

from testkit.captures import capture_bodies

#: a busy capture: 16 concurrent requests, latency histograms filled, KV usage > 0
SCENARIO = "vllm-0.32.0/concurrent"


def one_engine_bodies(scenario: str = SCENARIO) -> list[bytes]:
    """The plain-text bodies of a capture folder, in scrape order."""
    return capture_bodies(scenario)


def multi_engine(body: bytes, engines: int = 8) -> bytes:
    """``body`` with each family's ``engine="0"`` samples repeated for engines 0..engines-1."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        header = [ln for ln in block if ln.startswith("#")]
        samples = [ln for ln in block if ln and not ln.startswith("#")]
        per_engine = [ln for ln in samples if 'engine="0"' in ln]
        shared = [ln for ln in samples if 'engine="0"' not in ln]
        out.extend(header)
        out.extend(shared)
        for k in range(engines):
            out.extend(ln.replace('engine="0"', f'engine="{k}"') for ln in per_engine)
        block.clear()

    for line in body.decode("utf-8").split("\n"):
        if line.startswith("# HELP") and any(not ln.startswith("#") for ln in block):
            flush()
        block.append(line)
    flush()
    return ("\n".join(out).rstrip("\n") + "\n").encode("utf-8")


def bodies(kind: str) -> list[bytes]:
    """``one`` (the real capture) or ``eight`` (8 data-parallel engines)."""
    real = one_engine_bodies()
    if kind == "one":
        return real
    if kind == "eight":
        return [multi_engine(b) for b in real]
    raise ValueError(f"unknown body kind {kind!r}")


def filtered(seq: list[bytes]) -> list[bytes]:
    """``seq`` as the sidecar receives it in filtered mode: the names it would ask for after a
    probe of the first body (``scrapefilter.request_names``), each body restricted to them the
    way vLLM's prometheus_client does (``testkit.replay.restricted_body``)."""
    from sidecar.parser import parse
    from sidecar.scrapefilter import request_names
    from testkit.replay import TEXT_004, restricted_body

    names = request_names({s[0] for s in parse(seq[0], TEXT_004).samples})
    return [restricted_body(b, TEXT_004, names)[0] for b in seq]
