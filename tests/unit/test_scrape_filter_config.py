"""The ``scrape_filter`` knob: flag, environment, config file (global and per target), and how
the service and exporter carry the mode."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cli import _flags, build_parser
from sidecar.config.files import ConfigError
from sidecar.config.settings import load_config
from sidecar.exporter import render, render_target
from sidecar.model import TargetSnapshot


def write(tmp_path, text: str) -> str:
    p = tmp_path / "sidecar.yaml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


def test_default_is_auto() -> None:
    c = load_config(None, {}, {})
    assert c.scrape_filter == "auto"
    assert c.scrape_filter_for(c.targets[0]) == "auto"
    assert c.redacted()["scrape_filter"] == "auto"


def test_file_global_and_per_target(tmp_path) -> None:
    path = write(
        tmp_path,
        """
        scrape_filter: off
        targets:
          - {name: a, url: "http://h:1/metrics"}
          - {name: b, url: "http://h:2/metrics", scrape_filter: auto}
          - {name: c, url: "http://h:3/metrics", scrape_filter: "off"}
    """,
    )
    c = load_config(path, {}, {})
    assert c.scrape_filter == "off"  # YAML reads an unquoted off as false: still off
    a, b, cc = c.targets
    assert [c.scrape_filter_for(t) for t in (a, b, cc)] == ["off", "auto", "off"]
    assert b.redacted()["scrape_filter"] == "auto" and "scrape_filter" not in a.redacted()


def test_environment_and_flag_win_over_the_file(tmp_path) -> None:
    path = write(tmp_path, "scrape_filter: auto\n")
    env = {"VLLM_SIDECAR_SCRAPE_FILTER": "off"}
    assert load_config(path, {}, env).scrape_filter == "off"
    assert load_config(path, {"scrape_filter": "auto"}, env).scrape_filter == "auto"


@pytest.mark.parametrize(
    "text,line",
    [
        ("scrape_filter: on\n", 1),
        ("scrape_filter: sometimes\n", 1),
        ("targets:\n  - url: http://h/metrics\n    scrape_filter: maybe\n", 3),
    ],
)
def test_bad_values_name_the_file_and_line(tmp_path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, {}, {})
    assert err.value.line == line and "auto or off" in str(err.value)


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError, match="VLLM_SIDECAR_SCRAPE_FILTER"):
        load_config(None, {}, {"VLLM_SIDECAR_SCRAPE_FILTER": "yes"})


def test_mode_is_a_reserved_label(tmp_path) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        load_config(write(tmp_path, "labels: {mode: x}\n"), {}, {})


def test_flag_on_run_and_doctor() -> None:
    ns = build_parser().parse_args(["run", "--scrape-filter", "off"])
    assert _flags(ns)["scrape_filter"] == "off"
    assert build_parser().parse_args(["doctor", "--scrape-filter", "off"]).scrape_filter == "off"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--scrape-filter", "on"])


def _modes(snap: TargetSnapshot) -> dict[str, float]:
    text = render([render_target(snap)])
    return {
        s.labels["mode"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm_sidecar_scrape_mode"
    }


def test_the_mode_is_a_state_set_of_both_modes() -> None:
    base = TargetSnapshot("t", "http://h/metrics", scraped=True, up=True, last_success=1.0)
    assert _modes(base) == {}  # no mode known: no series
    assert _modes(replace(base, scrape_mode="filtered")) == {"filtered": 1.0, "full": 0.0}
    assert _modes(replace(base, scrape_mode="full", up=False)) == {"filtered": 0.0, "full": 1.0}
