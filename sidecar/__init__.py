"""vllm-cache-sidecar: is vLLM's prefix caching working, and if not, why?"""

__version__ = "0.1.0"
