"""Coverage-guided fuzz targets (atheris). Run one with ``python -m fuzz.<target> [libFuzzer args]``;
see fuzz/README.md. Each target's ``test_one_input`` is plain Python, so regression tests import
and call it without atheris."""
