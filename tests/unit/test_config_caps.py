"""Settings files are read with caps on size, nesting and YAML aliases, in one place
(``sidecar.config.files``) shared by the config, the web config and the targets file: a hostile or
broken file is a clean ``ConfigError`` (``FILE:LINE`` where known), never a hang, a memory
blow-up or a RecursionError. Also the crashes the ``config`` fuzz target found, as regressions."""

from __future__ import annotations

import pytest

from fuzz.config import test_one_input as fuzz_config
from sidecar.config.files import (
    MAX_NESTING,
    MAX_SETTINGS_BYTES,
    MAX_YAML_ALIASES,
    ConfigError,
    load_json_text,
    load_yaml_text,
    read_text_file,
)
from sidecar.config.settings import load_config
from sidecar.config.targets import load_targets_file, parse_targets_file
from sidecar.config.web import load_web_config

#: "billion laughs": nine levels of ten aliases each, 10**9 scalars once expanded
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)
DEEP_FLOW = "[" * 100_000 + "]" * 100_000
DEEP_BLOCK = "a:\n" + "".join(" " * i + "- \n" for i in range(MAX_NESTING + 5))


def readers(tmp_path):
    """Each settings reader, reading a file that holds ``text``."""

    def run(loader, name):
        def read(text: str):
            path = tmp_path / name
            path.write_text(text)
            return loader(str(path))

        return read

    return {
        "config": run(lambda p: load_config(p, environ={}), "sidecar.yaml"),
        "web config": run(load_web_config, "web.yml"),
        "targets file (yaml)": run(load_targets_file, "sd.yaml"),
        "targets file (json)": run(load_targets_file, "sd.json"),
    }


@pytest.mark.parametrize("reader", ["config", "web config", "targets file (yaml)"])
def test_an_alias_bomb_is_a_clean_error_with_its_line(tmp_path, reader):
    read = readers(tmp_path)[reader]
    with pytest.raises(ConfigError, match=r":\d+: YAML aliases expand to more than") as exc:
        read(ALIAS_BOMB)
    assert exc.value.line is not None and 2 <= exc.value.line <= 9


def test_too_many_aliases_is_an_error_even_when_they_expand_to_little():
    text = "a: &a x\nb: [" + ",".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    with pytest.raises(ConfigError, match=f"f.yaml:2: more than {MAX_YAML_ALIASES} YAML aliases"):
        load_yaml_text(text, "f.yaml")


def test_a_few_anchors_and_merge_keys_still_work():
    data = load_yaml_text("base: &b {username: u}\nt: [{<<: *b, x: 1}, *b]\n", "f.yaml")
    assert data["t"] == [{"username": "u", "x": 1}, {"username": "u"}]


@pytest.mark.parametrize(
    "reader, style",
    [
        *((r, s) for r in ("config", "web config", "targets file (yaml)") for s in ("flow", "block")),
        ("targets file (json)", "flow"),
    ],
)
def test_deep_nesting_is_a_clean_error_not_a_recursion_error(tmp_path, reader, style):
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_NESTING} levels"):
        readers(tmp_path)[reader](DEEP_FLOW if style == "flow" else DEEP_BLOCK)


def test_nesting_up_to_the_cap_is_accepted_in_yaml_and_json():
    text = "[" * (MAX_NESTING - 1) + "1" + "]" * (MAX_NESTING - 1)
    assert load_yaml_text(text, "f.yaml") == load_json_text(text, "f.json")
    deeper = "[" + text + "]"
    for load in (load_yaml_text, load_json_text):
        with pytest.raises(ConfigError, match="nested deeper"):
            load(deeper, "f")


@pytest.mark.parametrize("reader", ["config", "web config", "targets file (yaml)", "targets file (json)"])
def test_a_file_over_the_size_cap_is_refused_before_parsing(tmp_path, reader):
    with pytest.raises(ConfigError, match=f"larger than {MAX_SETTINGS_BYTES} bytes"):
        readers(tmp_path)[reader]("#" * (MAX_SETTINGS_BYTES + 1))


def test_the_size_cap_reads_no_more_than_it_needs():
    """``/dev/zero`` never ends: the reader stops one byte past the cap."""
    with pytest.raises(ConfigError, match="larger than"):
        read_text_file("/dev/zero", "config")


def test_a_targets_file_at_the_cap_minus_a_comment_still_loads():
    text = '[{"targets": ["a:1"]}]' + " " * (MAX_SETTINGS_BYTES - 30)
    assert [t.name for t in parse_targets_file(text, "sd.json")] == ["a:1"]


# ---------------------------------------------------------------- found by fuzz/config.py


@pytest.mark.parametrize(
    "text, message",
    [
        ("{[1]: 2}", "f.yaml:1: a mapping key must be a plain value"),
        ("? - a\n: b", "f.yaml:1: a mapping key must be a plain value"),
        ("? !!set {a}\n: b", "f.yaml:1: a mapping key must be a plain value"),
        ("a: 2020-13-01", "f.yaml:1: invalid timestamp '2020-13-01': month must be in 1..12"),
        ("a:\n  b: !!timestamp 2020-02-30", "f.yaml:2: invalid timestamp '2020-02-30'"),
        ("!!timestamp", "f.yaml:1: invalid timestamp ''"),
        ("a: 0x_", "f.yaml:1: invalid int '0x_': invalid literal for int()"),
        ("a:\n  - !!bool ''", "f.yaml:2: invalid bool ''"),
        ("!!int ", "f.yaml:1: invalid int ''"),
        ("!!seq x", "f.yaml:1: invalid seq 'x'"),
        ("b: !!map [1]", "f.yaml:1: invalid map: cannot unpack"),
        ("!!omap [x]", "f.yaml:1: invalid YAML: expected a mapping of length 1"),
    ],
)
def test_yaml_that_crashed_the_loader_is_a_config_error(text, message):
    with pytest.raises(ConfigError) as exc:
        load_yaml_text(text, "f.yaml")
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize(
    "data",
    [
        b"{[1]: 2}",
        b"? - a\n: b",
        b"2020-13-01",
        b"!!timestamp 2020-02-30",
        b"a: 0x_",
        b"max_body_bytes: .inf",
        b"!!timestamp",
        b"!!bool ",
        b"!!float ",
        b"!!seq x",
        b"!!map [1]",
    ],
)
def test_fuzz_config_regressions(data):
    fuzz_config(data)  # raises anything but ConfigError on a regression


def test_an_infinite_max_body_bytes_is_a_config_error(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("max_body_bytes: .inf\n")
    with pytest.raises(ConfigError, match=r"sidecar.yaml:1: max_body_bytes: invalid size"):
        load_config(str(path), environ={})
