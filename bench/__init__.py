"""Benchmarks of vllm-cache-sidecar (``make bench`` / ``python -m bench``); not tests, never asserted."""
