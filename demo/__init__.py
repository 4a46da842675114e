"""The demo and live-test harness: a real vLLM on CPU with a tiny model, traffic, the sidecar.

Not part of the shipped service (the wheel holds ``sidecar/`` only). ``python -m demo`` (or
``make demo``) runs the demo; :mod:`demo.vllm_server`, :mod:`demo.tinymodel` and
:mod:`demo.traffic` are also used by the e2e tests.
"""
