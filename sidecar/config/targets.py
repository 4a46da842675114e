"""Central mode: targets from a Prometheus ``file_sd`` file (JSON or YAML).

The format is Prometheus' own, so the same file can feed Prometheus and the sidecar::

    - targets: ["10.0.0.7:8000", "10.0.0.8:8000"]
      labels: {namespace: llm, __metrics_path__: /metrics}
    - targets: ["vllm-0.vllm:8000"]
      labels: {name: decode-0, __scheme__: https}

Each address becomes one target named ``host:port`` unless the group's labels hold ``name``.
``__metrics_path__`` and ``__scheme__`` are honoured as in Prometheus; other ``__*`` labels
(``__meta_*`` from a generator, ``__address__``...) are dropped; the remaining labels become
static labels of the target.

Everything here is pure (text in, :class:`~sidecar.config.settings.TargetConfig` out) except
:func:`load_targets_file`, which only reads the file. Errors are
:class:`~sidecar.config.files.ConfigError` carrying ``FILE:LINE`` so a user can jump to the bad line.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from .files import (
    ConfigError,
    check_label_name,
    line_of,
    load_json_text,
    load_yaml_text,
    read_text_file,
    reject_unknown_keys,
    safe_yaml_loader,
)
from .settings import TargetConfig, default_target_name, normalise_url

_GROUP_KEYS = {"targets", "labels"}
_SCHEMES = ("http", "https")
NAME_LABEL = "name"


def load_targets_file(path: str, defaults: TargetConfig | None = None) -> tuple[TargetConfig, ...]:
    """Read and parse ``path``; see :func:`parse_targets_file`."""
    return parse_targets_file(read_targets_file(path), path, defaults)


def read_targets_file(path: str) -> str:
    """The file's text, or a :class:`ConfigError` that says why it could not be read."""
    return read_text_file(path, "targets file")


def parse_targets_file(
    text: str, path: str, defaults: TargetConfig | None = None
) -> tuple[TargetConfig, ...]:
    """Targets described by a file_sd document.

    ``defaults`` (optional) supplies what file_sd cannot express and every target shares in
    central mode: ``timeout``, ``bearer_token_file``, ``basic_auth``, ``tls`` and extra labels.
    An empty document means no targets, as in Prometheus.
    """
    fast = _plain_json(text, path)
    if fast is not None:
        try:  # JSON through the C parser: a 1,000-target file in ~1 ms instead of ~0.5 s
            return _targets(fast, path, defaults, {})
        except ConfigError:
            pass  # a bad file: parsed again below with line numbers, for a precise error
    data = _load_document(text, path)
    if data is None:
        return ()
    return _targets(data, path, defaults, _address_lines(text))


def _targets(
    data: Any, path: str, defaults: TargetConfig | None, item_lines: dict[tuple[int, int], int]
) -> tuple[TargetConfig, ...]:
    if not isinstance(data, list):
        raise ConfigError(
            "a targets file must be a list of {targets: [...], labels: {...}} groups",
            path,
            line_of(data) or 1,
        )
    out: list[TargetConfig] = []
    seen: dict[str, int | None] = {}
    for gi, group in enumerate(data):
        lines = {i: item_lines.get((gi, i)) for i in range(_count(group))}
        for target, line in _group_targets(group, path, defaults, lines):
            if target.name in seen:
                raise ConfigError(
                    f"target name {target.name!r} used twice (first on line {seen[target.name]})", path, line
                )
            seen[target.name] = line
            out.append(target)
    return tuple(out)


def _plain_json(text: str, path: str) -> Any:
    """The document when it is JSON (by name, or by its first character for other names), read
    without line numbers; None otherwise (empty, YAML, or not valid JSON)."""
    stripped = text.lstrip()
    if not stripped or path.lower().endswith((".yml", ".yaml")) or stripped[0] not in "[{":
        return None
    try:
        return load_json_text(text, path)
    except ConfigError:
        return None


# ---------------------------------------------------------------- internals


def _load_document(text: str, path: str) -> Any:
    """By extension as in Prometheus (``.json`` is JSON, ``.yml``/``.yaml`` YAML); other names
    are JSON when they parse as JSON, else YAML. Line numbers come from the YAML loader."""
    stripped = text.lstrip()
    if not stripped:
        return None
    lower = path.lower()
    if lower.endswith((".yml", ".yaml")):
        return load_yaml_text(text, path)
    if lower.endswith(".json") or stripped[0] in "[{":
        try:
            plain = load_json_text(text, path)
        except ConfigError:
            if lower.endswith(".json"):
                raise
            return load_yaml_text(text, path)
        try:  # the same document through the line-tracking YAML loader, for error locations
            located = load_yaml_text(text, path)
        except ConfigError:
            return plain
        return located if located == plain else plain
    return load_yaml_text(text, path)


def _count(group: Any) -> int:
    addresses = group.get("targets") if isinstance(group, dict) else None
    return len(addresses) if isinstance(addresses, list) else 0


def _address_lines(text: str) -> dict[tuple[int, int], int]:
    """(group index, address index) -> 1-based line, from the YAML node tree (JSON is YAML)."""
    try:
        root = yaml.compose(text, Loader=safe_yaml_loader())
    except (yaml.YAMLError, ConfigError):
        return {}
    out: dict[tuple[int, int], int] = {}
    if not isinstance(root, yaml.SequenceNode):
        return out
    for gi, group in enumerate(root.value):
        if not isinstance(group, yaml.MappingNode):
            continue
        for key, value in group.value:
            if getattr(key, "value", None) == "targets" and isinstance(value, yaml.SequenceNode):
                for ti, item in enumerate(value.value):
                    out[(gi, ti)] = item.start_mark.line + 1
    return out


def _group_targets(
    group: Any, path: str, defaults: TargetConfig | None, item_lines: dict[int, int | None]
) -> list[tuple[TargetConfig, int | None]]:
    gline = line_of(group)
    if not isinstance(group, dict):
        raise ConfigError("each entry must be a mapping {targets: [...], labels: {...}}", path, gline)
    reject_unknown_keys(group, _GROUP_KEYS, path, "key", " in a target group")
    addresses = group.get("targets")
    tline = line_of(group, "targets") or gline
    if addresses is None:
        addresses = []
    if not isinstance(addresses, list):
        raise ConfigError("'targets' must be a list of host:port strings", path, tline)
    labels = _group_labels(group.get("labels"), path, line_of(group, "labels") or gline)
    scheme = labels.pop("__scheme__", "http").lower()
    metrics_path = labels.pop("__metrics_path__", "/metrics") or "/metrics"
    lline = line_of(group.get("labels"), "__scheme__") or line_of(group, "labels") or gline
    if scheme not in _SCHEMES:
        raise ConfigError(f"__scheme__ must be http or https, not {scheme!r}", path, lline)
    if not metrics_path.startswith("/"):
        raise ConfigError(
            f"__metrics_path__ must start with '/', not {metrics_path!r}",
            path,
            line_of(group.get("labels"), "__metrics_path__") or lline,
        )
    name = labels.pop(NAME_LABEL, None)
    if name is not None and len(addresses) > 1:
        raise ConfigError(
            f"label name={name!r} names one target, but the group lists "
            f"{len(addresses)}: give each its own group",
            path,
            tline,
        )
    static = tuple(sorted((k, v) for k, v in labels.items() if not k.startswith("__")))
    out = []
    for i, address in enumerate(addresses):
        aline = item_lines.get(i) or tline
        url = _address_url(address, scheme, metrics_path, path, aline)
        target = TargetConfig(name=name or default_target_name(url), url=url, labels=static)
        out.append((_with_defaults(target, defaults), aline))
    return out


def _group_labels(value: Any, path: str, line: int | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("'labels' must be a mapping of label name: value", path, line)
    out: dict[str, str] = {}
    for key, v in value.items():
        k = str(key)
        kl = line_of(value, k) or line
        check_label_name(k, path, kl, meta_ok=True)  # __* labels steer the scrape, then drop
        if isinstance(v, (dict, list)):
            raise ConfigError(f"label {k!r}: value must be a string", path, kl)
        text = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
        if k == NAME_LABEL and not text:
            raise ConfigError("label 'name' must not be empty", path, kl)
        out[k] = text
    return out


def _address_url(address: Any, scheme: str, metrics_path: str, path: str, line: int | None) -> str:
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"target {address!r} must be a host:port string", path, line)
    addr = address.strip()
    if "/" in addr or "@" in addr or "?" in addr or "#" in addr:
        # A scheme, path or userinfo here would be silently mangled; Prometheus refuses too.
        raise ConfigError(
            f"target {addr!r} must be host:port only (use the __scheme__ and __metrics_path__ labels)",
            path,
            line,
        )
    try:
        return normalise_url(f"{scheme}://{addr}{metrics_path}")
    except ValueError as exc:
        raise ConfigError(f"target {addr!r}: {exc}", path, line) from None


def _with_defaults(target: TargetConfig, defaults: TargetConfig | None) -> TargetConfig:
    if defaults is None:
        return target
    labels = dict(defaults.labels)
    labels.update(target.labels)
    return replace(
        target,
        labels=tuple(sorted(labels.items())),
        timeout=defaults.timeout,
        bearer_token_file=defaults.bearer_token_file,
        basic_auth=defaults.basic_auth,
        tls=defaults.tls,
    )
