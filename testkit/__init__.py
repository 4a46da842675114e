"""Helpers for the tests and the benchmark: one home for each, none of them shipped.

Real parts only; nothing here replaces code under test.

- :mod:`testkit.captures`: readers of the recorded vLLM ``/metrics`` captures
- :mod:`testkit.bodies`: new bodies derived from real ones (more engines, a restart, growth)
- :mod:`testkit.replay`: an HTTP server that replays bodies as fake vLLM targets
- :mod:`testkit.procs`: free ports, polling, the real sidecar CLI as a subprocess
- :mod:`testkit.tls`: a throw-away certificate authority for the TLS tests
"""

from pathlib import Path

#: the repository this checkout of testkit/ lives in
REPO = Path(__file__).resolve().parent.parent
