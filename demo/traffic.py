"""A bounded traffic generator for vLLM's ``/v1/completions``: shared-prefix and unique prompts.

Why: prefix caching only shows up when requests share a prefix longer than one KV block (128
tokens on CPU). This mixes prompts that start with one of a few long "system prompts" (they hit
the cache after the first request) with prompts that share nothing (they never hit), so the hit
ratio lands somewhere clearly between 0 and 1 and moves when the mix changes. Prompt text is built
from the tiny model's word list, so every word is one or two tokens.

Bounded in every dimension: a fixed number of requests or a duration, a concurrency limit, an
optional request rate. Failures (e.g. vLLM restarting) are counted, never raised.

    python -m demo.traffic --url http://127.0.0.1:8000 --requests 50
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from demo.tinymodel import words

#: prompt kinds
SHARED, UNIQUE = "shared", "unique"


@dataclass
class TrafficConfig:
    base_url: str  # e.g. http://127.0.0.1:8000 (no /v1)
    model: str = "tiny"
    requests: int | None = 40  # total requests; None: until ``duration`` or stop
    duration: float | None = None  # seconds; None: until ``requests`` are done
    concurrency: int = 4
    shared_fraction: float = 0.7  # share of prompts that start with a shared prefix
    prefixes: int = 3  # distinct shared prefixes
    prefix_words: int = 300  # ~500 tokens: three full 128-token blocks to hit
    suffix_words: int = 10
    max_tokens: int = 16
    ignore_eos: bool = True  # generate exactly max_tokens (long requests stay long)
    rate: float | None = None  # max requests started per second
    seed: int = 0
    #: first word of every unique prompt; random per run so reruns never hit each other
    unique_tag: str | None = None
    timeout: float = 300.0


@dataclass
class TrafficStats:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    ok: int = 0
    failed: int = 0
    shared: int = 0
    unique: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    failing: int = 0  # consecutive failures (the target may be down)
    last_error: str | None = None

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class PromptMaker:
    """Deterministic prompts: ``shared`` ones start with one of ``prefixes`` long prefixes."""

    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.vocab = words()
        prng = random.Random(config.seed + 7919)
        self.prefixes = [self._text(prng, config.prefix_words) for _ in range(config.prefixes)]
        self.counter = 0
        self.tag = config.unique_tag or secrets.token_hex(4)

    def _text(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choice(self.vocab) for _ in range(n))

    def next(self) -> tuple[str, str]:
        """(kind, prompt). Unique prompts are as long as shared ones, but share nothing."""
        self.counter += 1
        c = self.config
        if c.prefixes > 0 and self.rng.random() < c.shared_fraction:
            prefix = self.rng.choice(self.prefixes)
            return SHARED, f"{prefix} {self._text(self.rng, c.suffix_words)}"
        text = self._text(self.rng, c.prefix_words + c.suffix_words - 1)
        return UNIQUE, f"{self.tag}{self.counter} {text}"


async def _one(
    client: httpx.AsyncClient, config: TrafficConfig, prompt: str, kind: str, stats: TrafficStats
) -> None:
    body = {"model": config.model, "prompt": prompt, "max_tokens": config.max_tokens, "temperature": 0.0}
    if config.ignore_eos:
        body["ignore_eos"] = True
    stats.in_flight += 1
    try:
        resp = await client.post(config.base_url.rstrip("/") + "/v1/completions", json=body)
        resp.raise_for_status()
        usage = resp.json().get("usage") or {}
        stats.ok += 1
        stats.failing = 0
        stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        if kind == SHARED:
            stats.shared += 1
        else:
            stats.unique += 1
    except (httpx.HTTPError, ValueError) as exc:
        stats.failed += 1
        stats.failing += 1
        stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        stats.in_flight -= 1


async def run_traffic(
    config: TrafficConfig,
    stats: TrafficStats | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[TrafficStats], None] | None = None,
) -> TrafficStats:
    """Send requests until ``requests`` are done, ``duration`` passed or ``stop`` is set."""
    if config.requests is None and config.duration is None and stop is None:
        raise ValueError("unbounded traffic: give requests, duration or a stop event")
    stats = stats or TrafficStats()
    stop = stop or asyncio.Event()
    maker = PromptMaker(config)
    sem = asyncio.Semaphore(max(1, config.concurrency))
    deadline = None if config.duration is None else time.monotonic() + config.duration
    tasks: set[asyncio.Task[None]] = set()
    sent = 0  # this run's requests (``stats`` may be shared by several runs)
    limits = httpx.Limits(max_connections=config.concurrency + 2)
    async with httpx.AsyncClient(timeout=config.timeout, limits=limits) as client:
        while not stop.is_set():
            if config.requests is not None and sent >= config.requests:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            await sem.acquire()
            if stop.is_set():
                sem.release()
                break
            kind, prompt = maker.next()
            stats.sent += 1
            sent += 1
            task = asyncio.create_task(_one(client, config, prompt, kind, stats))
            tasks.add(task)
            task.add_done_callback(
                lambda t: (tasks.discard(t), sem.release(), on_progress and on_progress(stats))
            )
            if config.rate:
                await asyncio.sleep(1.0 / config.rate)
            elif stats.failing:
                await asyncio.sleep(0.5)  # target down: do not spin
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def run(config: TrafficConfig) -> TrafficStats:
    """Synchronous wrapper (tests, scripts)."""
    return asyncio.run(run_traffic(config))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Send mixed shared-prefix/unique completions to vLLM.")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="tiny")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--shared-fraction", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args(argv)
    stats = run(
        TrafficConfig(
            base_url=args.url,
            model=args.model,
            requests=args.requests,
            duration=args.duration,
            concurrency=args.concurrency,
            shared_fraction=args.shared_fraction,
            max_tokens=args.max_tokens,
        )
    )
    print(
        f"sent {stats.sent}: ok {stats.ok} (shared {stats.shared}, unique {stats.unique}), "
        f"failed {stats.failed}; prompt tokens {stats.prompt_tokens}, "
        f"completion tokens {stats.completion_tokens}, {stats.elapsed:.1f} s"
        + (f"; last error: {stats.last_error}" if stats.last_error else "")
    )
    return 0 if stats.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
