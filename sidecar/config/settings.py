"""Configuration: YAML file, then environment (``VLLM_SIDECAR_*``), then flags.

Everything here is pure: it turns text and mappings into frozen dataclasses or raises
:class:`~sidecar.config.files.ConfigError` carrying ``FILE:LINE: message`` so a user can jump to
the bad line. Reading files is the only I/O, kept to :func:`load_file` (through
:mod:`sidecar.config.files`, like every settings reader).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..model import Window
from .files import (
    ConfigError,
    check_label_name,
    line_of,
    load_yaml_text,
    read_text_file,
    reject_unknown_keys,
)

DEFAULT_URL = "http://127.0.0.1:8000/metrics"
DEFAULT_LISTEN = "0.0.0.0:9490"
DEFAULT_INTERVAL = 5.0
DEFAULT_WINDOWS = "1m,5m"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
ENV_PREFIX = "VLLM_SIDECAR_"


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None


@dataclass(frozen=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class TargetConfig:
    """One vLLM server to scrape."""

    name: str
    url: str
    labels: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    bearer_token_file: str | None = None
    basic_auth: BasicAuth | None = None
    tls: TLSConfig | None = None
    #: ``auto`` / ``off`` for this target; None: the global ``scrape_filter``
    scrape_filter: str | None = None

    @property
    def version_url(self) -> str:
        """vLLM's ``/version`` beside the metrics path (``/x/metrics`` -> ``/x/version``)."""
        return self.sibling_url("version")

    @property
    def health_url(self) -> str:
        """vLLM's ``/health`` beside the metrics path."""
        return self.sibling_url("health")

    def sibling_url(self, name: str) -> str:
        parts = urlsplit(self.url)
        path = parts.path[: -len("metrics")] + name if parts.path.endswith("/metrics") else "/" + name
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    def redacted(self) -> dict[str, Any]:
        """A dict safe to print, log or serve: no secrets, no userinfo in the URL."""
        out: dict[str, Any] = {"name": self.name, "url": redact_url(self.url)}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.bearer_token_file:
            out["bearer_token_file"] = self.bearer_token_file
        if self.basic_auth:
            ba: dict[str, Any] = {"username": self.basic_auth.username}
            if self.basic_auth.password is not None:
                ba["password"] = "<secret>"
            if self.basic_auth.password_file:
                ba["password_file"] = self.basic_auth.password_file
            out["basic_auth"] = ba
        if self.tls:
            out["tls"] = {k: v for k, v in vars(self.tls).items() if v not in (None, False)}
        if self.scrape_filter is not None:
            out["scrape_filter"] = self.scrape_filter
        return out


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    interval: float = DEFAULT_INTERVAL
    windows: tuple[Window, ...] = ()
    targets: tuple[TargetConfig, ...] = ()
    targets_file: str | None = None
    web_config: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "info"
    log_format: str = "text"
    #: labels added to every exported series (``pod``/``namespace`` from the downward API)
    static_labels: tuple[tuple[str, str], ...] = ()
    source: str | None = None
    #: ask vLLM only for the samples the sidecar reads (``auto``) or always in full (``off``)
    scrape_filter: str = "auto"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def timeout_for(self, target: TargetConfig) -> float:
        """A scrape timeout strictly below the interval, so one cycle never overlaps the next."""
        if target.timeout is not None:
            return target.timeout
        return max(0.1, min(10.0, self.interval * 0.8))

    def scrape_filter_for(self, target: TargetConfig) -> str:
        """The target's own ``scrape_filter`` if it has one, else the global setting."""
        return target.scrape_filter or self.scrape_filter

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "listen": self.listen,
            "interval": self.interval,
            "windows": [w.label for w in self.windows],
            "max_body_bytes": self.max_body_bytes,
            "log_level": self.log_level,
            "log_format": self.log_format,
            "scrape_filter": self.scrape_filter,
            "targets": [t.redacted() for t in self.targets],
        }
        if self.targets_file:
            out["targets_file"] = self.targets_file
        if self.web_config:
            out["web_config"] = self.web_config
        if self.static_labels:
            out["static_labels"] = dict(self.static_labels)
        return out


# ---------------------------------------------------------------- small parsers

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Prometheus-style durations (``30s``, ``1m``, ``1h30m``); a bare number is seconds."""
    s = str(text).strip()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(f"invalid duration {s!r} (use e.g. 30s, 1m, 5m, 1h)") from None
        value = total
    if value <= 0:
        raise ValueError(f"duration {s!r} must be positive")
    return value


def parse_windows(value: str | list[Any] | tuple[Any, ...]) -> tuple[Window, ...]:
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out: list[Window] = []
    for raw in items:
        label = raw.strip()
        if not label:
            continue
        w = Window(label, parse_duration(label))
        if any(o.label == w.label for o in out):
            raise ValueError(f"window {label!r} given twice")
        out.append(w)
    if not out:
        raise ValueError("at least one window is needed")
    return tuple(sorted(out, key=lambda w: w.seconds))


SCRAPE_FILTER_VALUES = ("auto", "off")


def parse_scrape_filter(value: Any) -> str:
    """``auto`` or ``off``; YAML reads an unquoted ``off`` as false, which means ``off`` too."""
    if value is False:
        return "off"
    text = str(value).strip().lower()
    if isinstance(value, bool) or text not in SCRAPE_FILTER_VALUES:
        raise ValueError(f"must be auto or off, not {value!r}")
    return text


def parse_listen(value: str) -> tuple[str, int]:
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {text!r} must be HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} out of range")
    return host, p


def redact_url(url: str) -> str:
    """Drop ``user:password@`` from a URL."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _safe_url(text: str) -> str:
    """``text`` with any userinfo replaced, without trusting that the URL is valid."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if "@" in rest:  # a password may hold '/', so the userinfo ends at the last '@'
        rest = "<credentials>@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def normalise_url(url: str) -> str:
    """Validate a target URL; a URL without a path gets ``/metrics``.

    Error messages show the URL without its ``user:password@`` part.
    """
    text = str(url).strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    shown = _safe_url(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL {shown!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"URL {shown!r} has no host")
    try:
        _ = parts.port  # raises for a non-numeric or out-of-range port
    except ValueError:
        raise ValueError(f"URL {shown!r}: the port must be a number from 0 to 65535") from None
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def default_target_name(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def parse_target_spec(spec: str) -> TargetConfig:
    """``[NAME=]URL`` as given to ``--target``."""
    text = spec.strip()
    name = ""
    prefix, eq, rest = text.partition("=")
    # ``NAME=URL``: the part before the first '=' is a name only if it cannot be part of a URL
    # (``host:8000/metrics?x=y`` has its '=' in the query).
    if eq and not any(c in prefix for c in "/?#@"):
        name, text = prefix.strip(), rest
        if not name:
            raise ValueError(f"target {_safe_url(spec)!r}: empty name before '='")
    url = normalise_url(text)
    return TargetConfig(name=name or default_target_name(url), url=url)


_GLOBAL_KEYS = {
    "listen",
    "interval",
    "windows",
    "web_config",
    "targets_file",
    "targets",
    "max_body_bytes",
    "log_level",
    "log_format",
    "labels",
    "scrape_filter",
}
_TARGET_KEYS = {"name", "url", "labels", "timeout", "bearer_token_file", "basic_auth", "tls", "scrape_filter"}


def _labels(value: Any, file: str, line: int | None) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError("labels must be a mapping of name: value", file, line)
    out = []
    for k, v in value.items():
        k = str(k)
        kl = line_of(value, k) or line
        check_label_name(k, file, kl)
        if isinstance(v, bool):
            raise ConfigError(f"label {k}: YAML read this as a boolean; quote the value", file, kl)
        out.append((k, "" if v is None else str(v)))
    return tuple(sorted(out))


def _target_timeout(item: dict[str, Any], file: str) -> float | None:
    if item.get("timeout") is None:
        return None
    try:
        return parse_duration(str(item["timeout"]))
    except ValueError as exc:
        raise ConfigError(f"timeout: {exc}", file, line_of(item, "timeout")) from None


def _basic_auth(item: dict[str, Any], file: str) -> BasicAuth | None:
    """A target's ``basic_auth``: a username and a password or a password file (not both)."""
    ba = item.get("basic_auth")
    if ba is None:
        return None
    bl = line_of(item, "basic_auth")
    if not isinstance(ba, dict) or not ba.get("username"):
        raise ConfigError("basic_auth needs 'username' and 'password' or 'password_file'", file, bl)
    reject_unknown_keys(ba, ("username", "password", "password_file"), file, "basic_auth key")
    if ba.get("password") is not None and ba.get("password_file"):
        raise ConfigError("basic_auth: give password or password_file, not both", file, bl)
    password = None if ba.get("password") is None else str(ba["password"])
    return BasicAuth(str(ba["username"]), password, ba.get("password_file"))


def _target_tls(item: dict[str, Any], file: str) -> TLSConfig | None:
    """A target's ``tls``: CA, client certificate and key files, ``insecure_skip_verify``."""
    t = item.get("tls")
    if t is None:
        return None
    tl = line_of(item, "tls")
    if not isinstance(t, dict):
        raise ConfigError("tls must be a mapping", file, tl)
    reject_unknown_keys(t, ("ca_file", "cert_file", "key_file", "insecure_skip_verify"), file, "tls key")
    skip = t.get("insecure_skip_verify", False)
    if not isinstance(skip, bool):
        raise ConfigError(
            "tls.insecure_skip_verify must be true or false (unquoted)",
            file,
            line_of(t, "insecure_skip_verify") or tl,
        )
    return TLSConfig(t.get("ca_file"), t.get("cert_file"), t.get("key_file"), skip)


def _target_from_mapping(item: Any, file: str, default_line: int | None) -> TargetConfig:
    line = line_of(item) or default_line
    if isinstance(item, str):
        try:
            return parse_target_spec(item)
        except ValueError as exc:
            raise ConfigError(str(exc), file, line) from None
    if not isinstance(item, dict):
        raise ConfigError("each target must be a mapping with at least 'url'", file, line)
    reject_unknown_keys(item, _TARGET_KEYS, file, "target key")
    if "url" not in item:
        raise ConfigError("target needs a 'url'", file, line)
    try:
        url = normalise_url(str(item["url"]))
    except ValueError as exc:
        raise ConfigError(str(exc), file, line_of(item, "url")) from None
    if isinstance(item.get("name"), bool):
        raise ConfigError(
            'name: YAML read this as a boolean; quote it (name: "on")', file, line_of(item, "name")
        )
    name = str(item.get("name") or default_target_name(url))
    timeout, basic, tls = _target_timeout(item, file), _basic_auth(item, file), _target_tls(item, file)
    return TargetConfig(
        name=name,
        url=url,
        labels=_labels(item.get("labels"), file, line_of(item, "labels")),
        timeout=timeout,
        bearer_token_file=item.get("bearer_token_file"),
        basic_auth=basic,
        tls=tls,
        scrape_filter=_target_scrape_filter(item, file),
    )


def _target_scrape_filter(item: dict[str, Any], file: str) -> str | None:
    if item.get("scrape_filter") is None:
        return None
    try:
        return parse_scrape_filter(item["scrape_filter"])
    except ValueError as exc:
        raise ConfigError(f"scrape_filter: {exc}", file, line_of(item, "scrape_filter")) from None


def _settings_from_mapping(data: Any, file: str) -> tuple[dict[str, Any], dict[str, int | None]]:
    """Raw settings (not yet validated together) and the line each came from."""
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError("the config file must be a mapping of settings", file, line_of(data) or 1)
    reject_unknown_keys(data, _GLOBAL_KEYS, file, "setting")
    settings: dict[str, Any] = {}
    lines: dict[str, int | None] = {}
    for key, value in data.items():
        lines[key] = line_of(data, key)
        if key == "targets":
            if value is None:
                value = []
            if not isinstance(value, list):
                raise ConfigError("targets must be a list", file, lines[key])
            item_lines = getattr(value, "item_lines", None) or [lines[key]] * len(value)
            settings[key] = [_target_from_mapping(v, file, item_lines[i]) for i, v in enumerate(value)]
            for i, item in enumerate(value):
                lines[f"targets.{i}"] = line_of(item) or item_lines[i]
                if isinstance(item, dict):
                    for k in ("name", "url", "timeout"):
                        if k in item:
                            lines[f"targets.{i}.{k}"] = line_of(item, k)
        elif key == "labels":
            settings[key] = _labels(value, file, lines[key])
        else:
            settings[key] = value
    return settings, lines


def env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """``VLLM_SIDECAR_<SETTING>`` variables; ``VLLM_SIDECAR_TARGETS`` is comma-separated."""
    out: dict[str, Any] = {}
    for key in (
        "listen",
        "interval",
        "windows",
        "web_config",
        "targets_file",
        "max_body_bytes",
        "log_level",
        "log_format",
        "scrape_filter",
    ):
        v = environ.get(ENV_PREFIX + key.upper())
        if v not in (None, ""):
            out[key] = v
    lab = environ.get(ENV_PREFIX + "LABELS")
    if lab:
        pairs = {}
        for item in lab.split(","):
            k, eq, v = item.partition("=")
            if not eq:
                raise ConfigError(f"{ENV_PREFIX}LABELS: expected name=value pairs, got {item!r}")
            pairs[k.strip()] = v.strip()
        try:
            out["labels"] = _labels(pairs, "", None)
        except ConfigError as exc:
            raise ConfigError(f"{ENV_PREFIX}LABELS: {exc.message}") from None
    t = environ.get(ENV_PREFIX + "TARGETS")
    if t:
        try:
            out["targets"] = [parse_target_spec(s) for s in t.split(",") if s.strip()]
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}TARGETS: {exc}") from None
    return out


def downward_api_labels(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``POD_NAME`` / ``POD_NAMESPACE`` (Kubernetes downward API) become ``pod`` / ``namespace``."""
    out = []
    if environ.get("POD_NAME"):
        out.append(("pod", environ["POD_NAME"]))
    if environ.get("POD_NAMESPACE"):
        out.append(("namespace", environ["POD_NAMESPACE"]))
    return tuple(out)


class _Layers:
    """Settings merged from defaults < file < environment < flags, remembering where each value
    came from, so an error names the flag, the variable or the ``FILE:LINE`` the user wrote."""

    def __init__(
        self, layers: tuple[tuple[str, dict[str, Any]], ...], file: str | None, lines: dict[str, int | None]
    ):
        self.file, self.lines = file, lines
        self.merged: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        for name, layer in layers:
            for k, v in layer.items():
                if v is not None and k != "labels":
                    self.merged[k], self.origin[k] = v, name

    def get(self, key: str, default: Any = None) -> Any:
        return self.merged.get(key, default)

    def fail(self, key: str, msg: str, line_key: str | None = None) -> ConfigError:
        where = self.origin.get(key)
        if where == "file":
            line = self.lines.get(line_key) if line_key else None
            return ConfigError(f"{key}: {msg}", self.file, line or self.lines.get(key))
        if where == "env":
            return ConfigError(f"{ENV_PREFIX}{key.upper()}: {msg}")
        return ConfigError(f"--{key.replace('_', '-')}: {msg}")

    def parsed(self, key: str, parse: Callable[[Any], Any], default: Any) -> Any:
        """``parse(value)``; its ValueError becomes this setting's ConfigError."""
        try:
            return parse(self.get(key, default))
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.fail(key, str(exc)) from None


def _max_body_bytes(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"invalid size: {exc}") from None
    if n < 1024:
        raise ValueError("invalid size: must be at least 1024")
    return n


def _listen(value: Any) -> str:
    parse_listen(str(value))  # ValueError when it is no HOST:PORT
    return str(value)


def _log_level(value: Any) -> str:
    level = str(value).lower()
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError(f"unknown level {level!r}")
    return level


def _log_format(value: Any) -> str:
    fmt = str(value).lower()
    if fmt not in ("text", "json"):
        raise ValueError("must be text or json")
    return fmt


def _scalars(s: _Layers) -> dict[str, Any]:
    """Every single-valued setting, parsed and checked."""
    kwargs: dict[str, Any] = {
        "interval": s.parsed("interval", lambda v: parse_duration(str(v)), DEFAULT_INTERVAL),
        "windows": s.parsed("windows", parse_windows, DEFAULT_WINDOWS),
        "listen": s.parsed("listen", _listen, DEFAULT_LISTEN),
        "max_body_bytes": s.parsed("max_body_bytes", _max_body_bytes, DEFAULT_MAX_BODY_BYTES),
        "log_level": s.parsed("log_level", _log_level, "info"),
        "log_format": s.parsed("log_format", _log_format, "text"),
        "scrape_filter": s.parsed("scrape_filter", parse_scrape_filter, "auto"),
    }
    for w in kwargs["windows"]:
        if w.seconds < 2 * kwargs["interval"]:
            msg = f"window {w.label} must span at least two scrape intervals ({2 * kwargs['interval']:g}s)"
            # blame what the user set: the windows if they gave them, else the interval
            raise s.fail("windows" if "windows" in s.origin else "interval", msg)
    for k in ("web_config", "targets_file"):
        if s.get(k):
            kwargs[k] = str(s.get(k))
    return kwargs


def _checked_targets(s: _Layers, interval: float, has_file: bool) -> tuple[TargetConfig, ...]:
    """The targets (the default one when none and no targets file): names unique, timeouts
    below the interval."""
    targets = list(s.get("targets") or [])
    if not targets and not has_file:
        targets = [TargetConfig(name="local", url=DEFAULT_URL)]
    seen: set[str] = set()
    for i, t in enumerate(targets):
        if t.name in seen:
            name_key = next(
                (k for k in (f"targets.{i}.name", f"targets.{i}.url", f"targets.{i}") if k in s.lines), None
            )
            raise s.fail("targets", f"target name {t.name!r} used twice", name_key)
        seen.add(t.name)
        if t.timeout is not None and t.timeout >= interval:
            raise s.fail(
                "targets",
                f"target {t.name!r}: timeout {t.timeout:g}s must be below the interval {interval:g}s",
                f"targets.{i}.timeout",
            )
    return tuple(targets)


def build_config(
    file_settings: dict[str, Any],
    env: dict[str, Any],
    flags: dict[str, Any],
    *,
    file: str | None = None,
    lines: dict[str, int | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults < file < environment < flags and validate the result.

    Raises :class:`ConfigError` naming the flag, the environment variable or ``FILE:LINE``."""
    layers = _Layers((("file", file_settings), ("env", env), ("flag", flags)), file, lines or {})
    kwargs = _scalars(layers)
    kwargs["targets"] = _checked_targets(layers, kwargs["interval"], bool(kwargs.get("targets_file")))
    static = dict(file_settings.get("labels") or ())
    static.update(env.get("labels") or ())
    static.update(downward_api_labels(environ if environ is not None else os.environ))
    kwargs["static_labels"] = tuple(sorted(static.items()))
    kwargs["source"] = file
    return Config(**kwargs)


def parse_config_text(text: str, path: str) -> tuple[dict[str, Any], dict[str, int | None]]:
    """A config file's text -> raw settings and the line each came from (see :func:`load_file`)."""
    return _settings_from_mapping(load_yaml_text(text, path), path)


def load_file(path: str) -> tuple[dict[str, Any], dict[str, int | None]]:
    return parse_config_text(read_text_file(path, "config"), path)


def load_config(
    path: str | None = None, flags: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """The effective config: ``path`` (or ``$VLLM_SIDECAR_CONFIG``), environment, flags."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG") or None
    file_settings, lines = load_file(path) if path else ({}, {})
    return build_config(
        file_settings, env_settings(environ), flags or {}, file=path, lines=lines, environ=environ
    )
