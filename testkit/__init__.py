"""Helpers for the tests and the benchmark: one home for each, none of them shipped.

Real parts only, nothing here replaces code under test: :mod:`testkit.replay` serves recorded
vLLM bodies, :mod:`testkit.bodies` derives new bodies from real ones.
"""
