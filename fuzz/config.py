"""Target ``config``: arbitrary bytes as each settings file the sidecar reads - the main config,
the web config and the targets file (as ``.yaml``, ``.json`` and an unsuffixed name) - through
the same decoding and capped YAML/JSON loading as the files on disk. Only
:class:`sidecar.config.files.ConfigError` may escape.

    python -m fuzz.config -atheris_runs=100000 fuzz/corpus/config
"""

from __future__ import annotations

from fuzz.common import instrumented, main

with instrumented(__name__ == "__main__", include=("sidecar", "yaml", "json")):
    from sidecar.config.files import ConfigError, decode_text
    from sidecar.config.settings import build_config, parse_config_text
    from sidecar.config.targets import parse_targets_file
    from sidecar.config.web import parse_web_config


def read_config(text: str) -> None:
    settings, lines = parse_config_text(text, "sidecar.yaml")
    build_config(settings, {}, {}, file="sidecar.yaml", lines=lines, environ={})


def read_web_config(text: str) -> None:
    parse_web_config(text, "/nonexistent/web.yml")


def read_targets(text: str) -> None:
    for name in ("targets.yaml", "targets.json", "targets"):
        try:
            parse_targets_file(text, name)
        except ConfigError:
            pass


def test_one_input(data: bytes) -> None:
    try:
        text = decode_text(data, "fuzz")
    except ConfigError:
        return
    for reader in (read_config, read_web_config, read_targets):
        try:
            reader(text)
        except ConfigError:
            pass


if __name__ == "__main__":
    main(test_one_input)
