"""vllm-cache-sidecar: is vLLM's prefix caching working, and if not, why?

The pipeline, one module per step; a change belongs where its concern lives:

- ``scrape`` (I/O) fetches one target's ``/metrics`` (``scrapefilter`` decides full or
  ``name[]``-filtered; ``targetauth`` adds credentials and TLS);
- ``parser`` reads exposition text into samples (pure);
- ``normalize`` folds every vLLM era's names into per-engine ``model.EngineMetrics``: aliases,
  engine identity, exposers, impossible values (pure);
- ``derive`` keeps each target's history: restart-safe windows, lifetime ratios (pure);
- ``diagnose`` turns a snapshot into the contract's findings; ``explain`` into causes and fixes;
- ``exporter`` renders ``vllm_sidecar_*`` series; ``api``, ``statuspage`` and ``doctor`` show
  the same snapshots to programs and people (all pure);
- ``service`` runs one scrape loop per target, ``server`` serves HTTP (``webauth``: TLS and
  basic auth), ``config`` reads settings files, ``cli`` is the thin ``main``.
"""

from __future__ import annotations

from functools import cache

DISTRIBUTION = "vllm-cache-sidecar"


@cache
def _version() -> str:
    """The installed distribution's version (pyproject.toml is the one source)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> str:
    # looked up on first use, not at import: start-up memory does not grow for it
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _defer_mime_types() -> None:
    """aiohttp builds a ``mimetypes.MimeTypes()`` at import (for static files, which the sidecar
    never serves), and the first one makes ``mimetypes`` read ``/etc/mime.types`` into its
    module-wide table: ~0.35 MB of heap held for the process's life. Marked initialised, it
    reads them on the first ``mimetypes.guess_type()`` instead (its own lazy path: the table is
    built when ``_db`` is still None), and aiohttp's table is the same (built from the defaults)."""
    import mimetypes

    mimetypes.inited = True  # no change if they were read already: then it is True anyway


_defer_mime_types()
