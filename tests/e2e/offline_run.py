"""Run a real ``vllm.LLM`` on CPU under :class:`OfflineCollector` and print one JSON line.

Run as a script (``python tests/e2e/offline_run.py MODEL_DIR on|off``) in its own process: vLLM
spawns its engine process, which needs the ``__main__`` guard, and each LLM wants a clean process.
The JSON holds the collector's report and vLLM's own ``get_metrics()`` counters read before and
after the block, so the test can compare them.
"""

from __future__ import annotations

import json
import math
import os
import sys


def counters(llm) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in llm.get_metrics():
        if type(m).__name__ == "Counter":
            out[m.name] = out.get(m.name, 0.0) + float(m.value)
    return out


def same_as_scrape(llm) -> list[str]:
    """Differences between the collector's view and a scrape of the same in-process registry.

    The collector converts ``get_metrics()`` objects; a server would expose the same registry as
    text. Both must normalise to identical engine metrics (``_created`` aside: only the text
    carries it).
    """
    from dataclasses import replace

    from prometheus_client import REGISTRY, generate_latest

    from sidecar.normalize import WANTED, normalise
    from sidecar.offline import samples_from_metrics
    from sidecar.parser import parse

    text = normalise(parse(generate_latest(REGISTRY), "text/plain; version=0.0.4", wanted=WANTED).samples)
    ours = normalise(samples_from_metrics(llm.get_metrics()))
    diffs = []
    a = {e.key: replace(e, created=None) for e in text.engines}
    b = {e.key: replace(e, created=None) for e in ours.engines}
    if not a:
        diffs.append("the scrape of the registry shows no engine")
    if a != b:
        diffs.append(f"engines differ: scrape {a} != collector {b}")
    if text.cache_configs != ours.cache_configs:
        diffs.append(f"cache configs differ: {text.cache_configs} != {ours.cache_configs}")
    if text.schema != ours.schema:
        diffs.append(f"schema differs: {text.schema} != {ours.schema}")
    return diffs


def main() -> int:
    model_dir, mode = sys.argv[1], sys.argv[2]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    from vllm import LLM, SamplingParams

    from demo.traffic import PromptMaker, TrafficConfig
    from sidecar.offline import OfflineCollector

    llm = LLM(
        model=model_dir,
        enable_prefix_caching=(mode == "on"),
        disable_log_stats=False,
        max_model_len=1024,
        dtype="float32",
        seed=0,
    )
    maker = PromptMaker(TrafficConfig(base_url="", shared_fraction=1.0, prefixes=2, seed=1))
    prompts = [maker.next()[1] for _ in range(12)]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    before = counters(llm)
    with OfflineCollector(llm, interval=0.1) as stats:
        for i in range(0, len(prompts), 4):  # several batches: later ones hit the cache
            llm.generate(prompts[i : i + 4], params, use_tqdm=False)
        # a batch of long requests, so that a sample sees KV blocks in use
        llm.generate([maker.next()[1] for _ in range(32)], long, use_tqdm=False)
    after = counters(llm)
    diffs = same_as_scrape(llm)
    report = stats.report()
    print("TABLE\n" + stats.table(), file=sys.stderr)
    safe = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}
    print("REPORT " + json.dumps({"report": safe, "before": before, "after": after, "scrape_diffs": diffs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
