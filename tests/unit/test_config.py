"""Configuration: defaults < YAML file < ``VLLM_SIDECAR_*`` environment < flags, and every bad
file reported as ``FILE:LINE: message`` pointing at the offending line."""

from __future__ import annotations

import textwrap

import pytest

from sidecar.config.files import ConfigError
from sidecar.config.settings import (
    DEFAULT_URL,
    TargetConfig,
    load_config,
    parse_duration,
    parse_target_spec,
    parse_windows,
)
from sidecar.model import Window


def write(tmp_path, text: str, name: str = "sidecar.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


def line_of(path: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``needle``: tests never count lines by hand."""
    hits = [i for i, line in enumerate(open(path).read().split("\n"), 1) if needle in line]
    assert len(hits) >= nth, (needle, hits)
    return hits[nth - 1]


def config_error(path: str, flags=None, environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, flags or {}, environ or {})
    return info.value


# ---------------------------------------------------------------- defaults and targets


def test_defaults_scrape_local_vllm():
    c = load_config(None, {}, {})
    assert c.targets == (TargetConfig(name="local", url="http://127.0.0.1:8000/metrics"),)
    assert DEFAULT_URL == "http://127.0.0.1:8000/metrics"
    assert c.listen == "0.0.0.0:9490" and c.listen_host_port == ("0.0.0.0", 9490)
    assert c.interval == 5.0
    assert [w.label for w in c.windows] == ["1m", "5m"]
    assert [w.seconds for w in c.windows] == [60.0, 300.0]
    assert c.static_labels == ()


@pytest.mark.parametrize(
    "spec,name,url",
    [
        ("http://10.0.0.7:8000/metrics", "10.0.0.7:8000", "http://10.0.0.7:8000/metrics"),
        ("http://10.0.0.7:8000", "10.0.0.7:8000", "http://10.0.0.7:8000/metrics"),
        ("http://10.0.0.7:8000/", "10.0.0.7:8000", "http://10.0.0.7:8000/metrics"),
        ("vllm-0.llm:8000", "vllm-0.llm:8000", "http://vllm-0.llm:8000/metrics"),
        ("decode=http://vllm-0.llm:8000", "decode", "http://vllm-0.llm:8000/metrics"),
        ("decode=http://h:8000/custom/path", "decode", "http://h:8000/custom/path"),
        ("https://h", "h:443", "https://h/metrics"),
        ("http://h", "h:80", "http://h/metrics"),
        ("[::1]:8000", "[::1]:8000", "http://[::1]:8000/metrics"),
        ("p=localhost:9", "p", "http://localhost:9/metrics"),
        ("http://h:1/metrics?x=y", "h:1", "http://h:1/metrics?x=y"),
    ],
)
def test_target_specs(spec, name, url):
    t = parse_target_spec(spec)
    assert (t.name, t.url) == (name, url)


def test_target_spec_without_scheme_keeps_a_query_with_equals():
    """``=`` after the URL's path is part of the URL, not a NAME= prefix."""
    t = parse_target_spec("localhost:8000/metrics?x=y")
    assert (t.name, t.url) == ("localhost:8000", "http://localhost:8000/metrics?x=y")


@pytest.mark.parametrize(
    "spec", ["ftp://h:1/metrics", "http://", "=http://h:1", "http://h:99999", "http://h:port"]
)
def test_bad_target_specs(spec):
    with pytest.raises(ValueError):
        parse_target_spec(spec)


def test_version_url_sits_beside_metrics():
    assert parse_target_spec("http://h:1/x/metrics").version_url == "http://h:1/x/version"
    assert parse_target_spec("http://h:1").version_url == "http://h:1/version"


# ---------------------------------------------------------------- windows and durations


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("30s", 30),
        ("1m", 60),
        ("5m", 300),
        ("1h30m", 5400),
        ("1d", 86400),
        ("500ms", 0.5),
        ("90", 90),
        ("2.5", 2.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1s", "1x", "m", "1m1", "s5", "1 m", "30s1m2"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_windows_keep_their_labels_and_sort_by_length():
    assert parse_windows("5m,1m, 1h") == (Window("1m", 60.0), Window("5m", 300.0), Window("1h", 3600.0))
    assert parse_windows(["30s", "90"]) == (Window("30s", 30.0), Window("90", 90.0))


@pytest.mark.parametrize("value", ["", ",", "1m,1m", "1m,bad"])
def test_bad_windows(value):
    with pytest.raises(ValueError):
        parse_windows(value)


def test_window_shorter_than_two_intervals_is_refused():
    e = config_error(None, {"interval": "10", "windows": "15s"})
    assert "--windows" in str(e) and "15s" in str(e)


# ---------------------------------------------------------------- precedence

FULL = """
listen: 127.0.0.1:9500
interval: 2s
windows: [10s, 1m]
max_body_bytes: 2048
log_level: debug
log_format: json
web_config: /etc/web.yaml
targets_file: /etc/sd.yaml
labels:
  cluster: c1
targets:
  - name: a
    url: http://h1:8000
    labels: {role: decode}
    timeout: 1s
"""


def test_file_sets_everything(tmp_path):
    c = load_config(write(tmp_path, FULL), {}, {})
    assert c.listen == "127.0.0.1:9500"
    assert c.interval == 2.0
    assert [w.label for w in c.windows] == ["10s", "1m"]
    assert c.max_body_bytes == 2048
    assert (c.log_level, c.log_format) == ("debug", "json")
    assert (c.web_config, c.targets_file) == ("/etc/web.yaml", "/etc/sd.yaml")
    assert c.static_labels == (("cluster", "c1"),)
    (t,) = c.targets
    assert (t.name, t.url, t.labels, t.timeout) == ("a", "http://h1:8000/metrics", (("role", "decode"),), 1.0)
    assert c.timeout_for(t) == 1.0


ENV_ALL = {
    "VLLM_SIDECAR_LISTEN": "127.0.0.1:9600",
    "VLLM_SIDECAR_INTERVAL": "3",
    "VLLM_SIDECAR_WINDOWS": "30s,2m",
    "VLLM_SIDECAR_MAX_BODY_BYTES": "4096",
    "VLLM_SIDECAR_LOG_LEVEL": "warning",
    "VLLM_SIDECAR_LOG_FORMAT": "text",
    "VLLM_SIDECAR_WEB_CONFIG": "/env/web.yaml",
    "VLLM_SIDECAR_TARGETS_FILE": "/env/sd.yaml",
    "VLLM_SIDECAR_TARGETS": "e1=http://e1:8000,http://e2:9000",
}


def test_environment_overrides_the_file_for_every_setting(tmp_path):
    c = load_config(write(tmp_path, FULL), {}, ENV_ALL)
    assert c.listen == "127.0.0.1:9600"
    assert c.interval == 3.0
    assert [w.label for w in c.windows] == ["30s", "2m"]
    assert c.max_body_bytes == 4096
    assert (c.log_level, c.log_format) == ("warning", "text")
    assert (c.web_config, c.targets_file) == ("/env/web.yaml", "/env/sd.yaml")
    assert [(t.name, t.url) for t in c.targets] == [
        ("e1", "http://e1:8000/metrics"),
        ("e2:9000", "http://e2:9000/metrics"),
    ]


def test_environment_alone_without_a_file():
    c = load_config(None, {}, ENV_ALL)
    assert c.interval == 3.0 and c.listen == "127.0.0.1:9600" and len(c.targets) == 2


def test_config_file_from_environment(tmp_path):
    path = write(tmp_path, FULL)
    c = load_config(None, {}, {"VLLM_SIDECAR_CONFIG": path})
    assert c.listen == "127.0.0.1:9500" and c.source == path


def test_flags_override_environment_and_file(tmp_path):
    flags = {
        "listen": "127.0.0.1:9700",
        "interval": "4",
        "windows": "20s,5m",
        "max_body_bytes": 8192,
        "log_level": "error",
        "log_format": "json",
        "web_config": "/flag/web.yaml",
        "targets_file": "/flag/sd.yaml",
        "targets": [parse_target_spec("f=http://f:1")],
    }
    c = load_config(write(tmp_path, FULL), flags, ENV_ALL)
    assert c.listen == "127.0.0.1:9700"
    assert c.interval == 4.0
    assert [w.label for w in c.windows] == ["20s", "5m"]
    assert c.max_body_bytes == 8192
    assert (c.log_level, c.log_format) == ("error", "json")
    assert (c.web_config, c.targets_file) == ("/flag/web.yaml", "/flag/sd.yaml")
    assert [(t.name, t.url) for t in c.targets] == [("f", "http://f:1/metrics")]


def test_a_flag_overrides_only_its_own_setting(tmp_path):
    c = load_config(write(tmp_path, FULL), {"interval": "1.5"}, {"VLLM_SIDECAR_LOG_LEVEL": "info"})
    assert c.interval == 1.5
    assert c.listen == "127.0.0.1:9500"  # from the file
    assert c.log_level == "info"  # from the environment


def test_empty_environment_values_are_ignored(tmp_path):
    c = load_config(write(tmp_path, FULL), {}, {"VLLM_SIDECAR_INTERVAL": "", "VLLM_SIDECAR_TARGETS": ""})
    assert c.interval == 2.0 and [t.name for t in c.targets] == ["a"]


def test_bad_environment_value_names_the_variable():
    e = config_error(None, environ={"VLLM_SIDECAR_INTERVAL": "fast"})
    assert str(e).startswith("VLLM_SIDECAR_INTERVAL: ")


def test_targets_file_alone_means_no_default_target():
    c = load_config(None, {"targets_file": "/sd.yaml"}, {})
    assert c.targets == () and c.targets_file == "/sd.yaml"


def test_default_timeout_is_below_the_interval():
    for interval in ("0.5", "1", "5", "30"):
        c = load_config(None, {"interval": interval, "windows": "2m"}, {})
        assert 0 < c.timeout_for(c.targets[0]) < c.interval


# ---------------------------------------------------------------- downward API


def test_pod_name_and_namespace_become_static_labels():
    c = load_config(None, {}, {"POD_NAME": "vllm-0", "POD_NAMESPACE": "llm"})
    assert dict(c.static_labels) == {"pod": "vllm-0", "namespace": "llm"}


def test_downward_labels_merge_with_file_labels(tmp_path):
    c = load_config(write(tmp_path, FULL), {}, {"POD_NAME": "vllm-0"})
    assert dict(c.static_labels) == {"cluster": "c1", "pod": "vllm-0"}


def test_no_downward_api_no_pod_labels():
    assert load_config(None, {}, {"POD_NAME": ""}).static_labels == ()


# ---------------------------------------------------------------- bad files: FILE:LINE: message


def assert_located(err: ConfigError, path: str, line: int, *words: str):
    text = str(err)
    assert text.startswith(f"{path}:{line}: "), text
    assert text.count("\n") == 0
    assert (err.file, err.line) == (path, line)
    assert err.message and text == f"{path}:{line}: {err.message}"
    for w in words:
        assert w in err.message, (w, err.message)


def test_unknown_top_level_key(tmp_path):
    p = write(
        tmp_path,
        """
        listen: 127.0.0.1:9500
        intervall: 5
        """,
    )
    assert_located(config_error(p), p, line_of(p, "intervall"), "intervall")


def test_unknown_target_key(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - name: a
            url: http://h:1
            timeuot: 1s
        """,
    )
    assert_located(config_error(p), p, line_of(p, "timeuot"), "timeuot")


@pytest.mark.parametrize(
    "url,word",
    [
        ("ftp://h:1/metrics", "scheme"),
        ("http://", "host"),
        ("http://h:99999", "99999"),
        ("http://h:port", "port"),
    ],
)
def test_bad_url(tmp_path, url, word):
    p = write(
        tmp_path,
        f"""
        interval: 5
        targets:
          - name: a
            url: "{url}"
        """,
    )
    assert_located(config_error(p), p, line_of(p, "url:"), word)


def test_bad_interval(tmp_path):
    p = write(
        tmp_path,
        """
        listen: 127.0.0.1:9500

        interval: 5 minutes
        """,
    )
    assert_located(config_error(p), p, line_of(p, "interval"), "interval")


def test_bad_target_timeout(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - url: http://h:1
            timeout: soon
        """,
    )
    assert_located(config_error(p), p, line_of(p, "timeout"), "timeout")


def test_bad_windows_in_file(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5
        windows: 1m, 1 hour
        """,
    )
    assert_located(config_error(p), p, line_of(p, "windows"), "windows")


def test_bad_listen_in_file(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5
        listen: nowhere
        """,
    )
    assert_located(config_error(p), p, line_of(p, "listen"), "listen")


def test_duplicate_top_level_key(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5
        listen: 127.0.0.1:9500
        interval: 6
        """,
    )
    assert_located(config_error(p), p, line_of(p, "interval", 2), "duplicate", "interval")


def test_duplicate_key_inside_a_target(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - url: http://h1:1
            name: a
            url: http://h2:1
        """,
    )
    assert_located(config_error(p), p, line_of(p, "url:", 2), "duplicate", "url")


def test_bad_yaml(tmp_path):
    p = write(
        tmp_path,
        """
        listen: 127.0.0.1:9500
        windows: 1m
          bad: indent
        """,
    )
    assert_located(config_error(p), p, line_of(p, "bad: indent"), "YAML")


def test_bad_yaml_tab(tmp_path):
    p = write(tmp_path, "interval: 5\ntargets:\n\t- url: http://h:1\n")
    assert_located(config_error(p), p, 3, "YAML")


@pytest.mark.parametrize("name", ["1bad", "bad-name", "__reserved", "target", "engine"])
def test_bad_label_name_in_target(tmp_path, name):
    p = write(
        tmp_path,
        f"""
        targets:
          - url: http://h1:1
            labels:
              fine: x
              "{name}": y
        """,
    )
    assert_located(config_error(p), p, line_of(p, f'"{name}"'), name)


def test_bad_static_label_name(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5
        labels:
          ok: x
          bad.name: y
        """,
    )
    assert_located(config_error(p), p, line_of(p, "bad.name"), "bad.name")


def test_duplicate_target_name_points_at_the_second_target(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5
        targets:
          - name: a
            url: http://h1:8000
          - name: b
            url: http://h2:8000
          - name: a
            url: http://h3:8000
        """,
    )
    assert_located(config_error(p), p, line_of(p, "name: a", 2), "'a'")


def test_duplicate_default_target_name(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - url: http://h1:8000
          - url: http://h1:8000/other
        """,
    )
    assert_located(config_error(p), p, line_of(p, "/other"), "h1:8000")


def test_timeout_not_below_interval_points_at_the_timeout(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5s
        targets:
          - name: a
            url: http://h1:8000
            timeout: 5s
        """,
    )
    assert_located(config_error(p), p, line_of(p, "timeout"), "timeout", "interval")


def test_timeout_below_interval_is_fine(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5s
        targets:
          - url: http://h1:8000
            timeout: 4.9s
        """,
    )
    assert load_config(p, {}, {}).targets[0].timeout == 4.9


@pytest.mark.parametrize(
    "text,word",
    [
        ("- listen: x\n", "mapping"),
        ("targets: {url: http://h:1}\n", "list"),
        ("targets:\n  - 42\n", "mapping"),
        ("targets:\n  - name: a\n", "url"),
        ("max_body_bytes: lots\n", "max_body_bytes"),
        ("log_level: loud\n", "log_level"),
        ("targets:\n  - url: http://h:1\n    basic_auth: {password: x}\n", "username"),
        ("targets:\n  - url: http://h:1\n    tls: {ca: x}\n", "ca"),
    ],
)
def test_other_bad_files_are_located(tmp_path, text, word):
    p = write(tmp_path, text)
    err = config_error(p)
    assert str(err).startswith(f"{p}:"), str(err)
    assert err.line is not None and 1 <= err.line <= text.count("\n")
    assert word in err.message


def test_unreadable_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    err = config_error(missing)
    assert str(err).startswith(f"{missing}: ")


def test_empty_file_means_defaults(tmp_path):
    c = load_config(write(tmp_path, "\n# nothing\n"), {}, {})
    assert c.targets[0].name == "local"


# ---------------------------------------------------------------- secrets


def test_redacted_config_holds_no_secret(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - name: a
            url: http://user:urlpass@h1:8000
            basic_auth:
              username: u
              password: topsecret
            bearer_token_file: /var/run/token
        """,
    )
    c = load_config(p, {}, {})
    text = repr(c.redacted()) + repr(c)
    assert "topsecret" not in text
    assert "urlpass" not in repr(c.redacted())
    assert c.targets[0].basic_auth.password == "topsecret"  # still usable for scraping


def test_errors_never_echo_a_password(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - url: "http://user:hunter2@h1:notaport/metrics"
        """,
    )
    err = config_error(p)
    assert err.line == line_of(p, "url:")
    assert "hunter2" not in str(err)


def test_interval_too_long_for_the_default_windows_points_at_the_interval(tmp_path):
    """Only the file's ``interval`` is at fault (the windows are defaults): the error must say
    ``FILE:LINE:``, not blame a ``--windows`` flag the user never gave."""
    p = write(
        tmp_path,
        """
        listen: 127.0.0.1:9500
        interval: 1m
        """,
    )
    assert_located(config_error(p), p, line_of(p, "interval"), "interval")


def test_window_too_short_in_the_file_points_at_the_windows(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 10
        windows: [15s, 5m]
        """,
    )
    assert_located(config_error(p), p, line_of(p, "windows"), "15s")


def test_targets_may_be_written_as_specs(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - "a=http://h:1"
          - http://h:2
        """,
    )
    assert [(t.name, t.url) for t in load_config(p, {}, {}).targets] == [
        ("a", "http://h:1/metrics"),
        ("h:2", "http://h:2/metrics"),
    ]


@pytest.mark.parametrize("value", ['"false"', '"no"', '"False"', "false", "no"])
def test_quoted_false_never_turns_tls_verification_off(tmp_path, value):
    """``insecure_skip_verify: "false"`` must not mean skip-verify (bool("false") is True)."""
    p = write(
        tmp_path,
        f"""
        targets:
          - url: https://h:1
            tls:
              insecure_skip_verify: {value}
        """,
    )
    try:
        c = load_config(p, {}, {})
    except ConfigError as exc:  # refusing a non-boolean is fine too, if located
        assert exc.line in (line_of(p, "tls:"), line_of(p, "insecure_skip_verify"))
    else:
        assert c.targets[0].tls.insecure_skip_verify is False


def test_tls_true_is_honoured(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - url: https://h:1
            tls: {insecure_skip_verify: true, ca_file: /ca.pem}
        """,
    )
    tls = load_config(p, {}, {}).targets[0].tls
    assert tls.insecure_skip_verify is True and tls.ca_file == "/ca.pem"


def test_bad_target_written_as_a_spec_points_at_its_own_line(tmp_path):
    p = write(
        tmp_path,
        """
        interval: 5
        targets:
          - a=http://h1:1
          - b=ftp://h2:1
        """,
    )
    assert_located(config_error(p), p, line_of(p, "ftp://"), "scheme")


def test_duplicate_target_written_as_a_spec_points_at_the_second_one(tmp_path):
    p = write(
        tmp_path,
        """
        targets:
          - a=http://h1:1
          - a=http://h2:1
        """,
    )
    assert_located(config_error(p), p, line_of(p, "h2:1"), "'a'")


@pytest.mark.parametrize(
    "url", ["http://user:pa/ss@h1:8000", "http://user:pa#ss@h1:port", "user:pa@ss@h1:port"]
)
def test_errors_never_echo_a_password_with_url_special_characters(tmp_path, url):
    """Unencoded ``/``, ``#`` or ``@`` in a password make the URL invalid; its error must still
    not print the password."""
    p = write(
        tmp_path,
        f"""
        targets:
          - url: "{url}"
        """,
    )
    secret = url.split("user:", 1)[1].rsplit("@", 1)[0]
    try:
        c = load_config(p, {}, {})
    except ConfigError as err:
        assert secret not in str(err)
    else:
        assert secret not in repr(c.redacted())
