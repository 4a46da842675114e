"""Reading settings files: the tools every settings reader shares, and :class:`ConfigError`.

The config file, the web config and the targets file are all read here: at most
:data:`MAX_SETTINGS_BYTES` of UTF-8 (:func:`read_text_file`), YAML through one safe loader that
records line numbers and caps nesting and aliases (:func:`load_yaml_text`), JSON under the same
caps (:func:`load_json_text`). Errors are :class:`ConfigError` carrying ``FILE:LINE`` so a user
can jump to the bad line; :func:`line_of` finds that line, :func:`reject_unknown_keys` refuses a
misspelt key, :func:`check_label_name` is the project's one rule for a static label's name, and
:func:`file_stamp` tells when a file changed (certificate and web-config reloads).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: label names the sidecar sets itself: a static label of that name is a config error
RESERVED_LABELS = {
    "target",
    "model_name",
    "engine",
    "window",
    "code",
    "severity",
    "reason",
    "version",
    "schema",
    "le",
    "quantile",
    "replica",
    "source",
    "tier",
    "mode",
    "family",
    "exposer",
    "phase",
    "finished_reason",
}


class ConfigError(ValueError):
    """A bad setting, located as precisely as we can: ``FILE:LINE: message``."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


# ---------------------------------------------------------------- YAML with line numbers


class _Map(dict[Any, Any]):
    """A dict that remembers the line of each key (1-based) and of itself."""

    line: int = 0
    key_lines: dict[str, int]


#: Caps on every settings file (config, web config, targets file): far above any real file, low
#: enough that a hostile or broken one is a clean ConfigError, never a hang, a memory blow-up or a
#: RecursionError.
MAX_SETTINGS_BYTES = 4 * 1024 * 1024
MAX_NESTING = 64  # mappings/lists inside each other (YAML and JSON)
MAX_YAML_ALIASES = 1000  # ``*name`` references in one document
MAX_YAML_NODES = 1_000_000  # nodes once every alias is expanded (the "billion laughs" bomb)


#: what PyYAML's constructors raise, besides YAMLError, for a value they cannot build
_CONSTRUCT_ERRORS = (ValueError, OverflowError, TypeError, KeyError, IndexError, AttributeError)


@lru_cache(maxsize=1)
def _loader() -> type:
    """A SafeLoader that records line numbers and enforces the caps above while composing, before
    anything recursive (construction, our readers) sees the tree. Built on first use (imports yaml)."""
    import yaml

    class _LineLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._depth = 0
            self._aliases = 0
            self._weights: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

        def compose_node(self, parent: Any, index: Any) -> Any:
            line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise ConfigError(f"more than {MAX_YAML_ALIASES} YAML aliases", line=line)
                return super().compose_node(parent, index)
            self._depth += 1
            if self._depth > MAX_NESTING:
                raise ConfigError(f"nested deeper than {MAX_NESTING} levels", line=line)
            node = super().compose_node(parent, index)
            assert node is not None  # a node event was peeked above
            self._depth -= 1
            children = (
                [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
            )
            weight = (
                1
                if isinstance(node, yaml.ScalarNode)
                else 1 + sum(self._weights.get(id(c), 1) for c in children)
            )
            if weight > MAX_YAML_NODES:
                raise ConfigError(f"YAML aliases expand to more than {MAX_YAML_NODES} nodes", line=line)
            self._weights[id(node)] = weight
            return node

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            """PyYAML's constructors let plain exceptions out for some values (``2020-13-01``,
            ``!!bool ''``, ``!!map [1]``): report them as this node's error, with its line."""
            try:
                return super().construct_object(node, deep)
            except (ConfigError, yaml.YAMLError):
                raise
            except _CONSTRUCT_ERRORS as exc:
                tag = node.tag.rpartition(":")[2]
                value = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) else ""
                raise ConfigError(f"invalid {tag}{value}: {exc}", line=node.start_mark.line + 1) from None

    def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
        loader.flatten_mapping(node)
        m = _Map()
        m.line = node.start_mark.line + 1
        m.key_lines = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # ``{[1]: 2}``, ``? {a: 1}``: valid YAML, no use as a setting's name
                raise ConfigError(
                    "a mapping key must be a plain value, not a list or mapping",
                    line=key_node.start_mark.line + 1,
                ) from None
            if key in m:
                raise ConfigError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1)
            m[key] = loader.construct_object(value_node, deep=True)
            m.key_lines[str(key)] = key_node.start_mark.line + 1
        return m

    def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _Seq:
        seq = _Seq(loader.construct_object(child, deep=True) for child in node.value)
        seq.item_lines = [child.start_mark.line + 1 for child in node.value]
        return seq

    _LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
    _LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)
    return _LineLoader


class _Seq(list[Any]):
    """A list that remembers the line of each item (scalars have no other place to keep it)."""

    item_lines: list[int]


def safe_yaml_loader() -> type:
    """The one YAML loader class for settings (safe, line-tracking, capped): for ``yaml.compose``."""
    return _loader()


def _check_size(text: str, file: str) -> None:
    if len(text) > MAX_SETTINGS_BYTES:
        raise ConfigError(f"larger than {MAX_SETTINGS_BYTES} bytes", file)


def load_yaml_text(text: str, file: str) -> Any:
    """Settings YAML -> plain data with line numbers, or ConfigError (``FILE:LINE`` where known).

    Every reader of a settings file goes through here (or :func:`load_json_text`), so the caps on
    size, nesting and aliases hold for all of them."""
    import yaml

    _check_size(text, file)
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(exc.message, file, exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", file, line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file) from None
    except _CONSTRUCT_ERRORS as exc:  # from a tagged value built after the tree (``!!omap [x]``)
        raise ConfigError(f"invalid YAML value: {exc}", file) from None


def read_text_file(path: str, what: str) -> str:
    """A settings file's text, or a :class:`ConfigError` that says why it cannot be read.

    Reads at most :data:`MAX_SETTINGS_BYTES` + 1 bytes, so a huge file (or ``/dev/zero``) is an
    error, not an out-of-memory."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SETTINGS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", path) from None
    return decode_text(raw, path)


def decode_text(raw: bytes, path: str) -> str:
    """A settings file's bytes as text: at most :data:`MAX_SETTINGS_BYTES`, UTF-8."""
    if len(raw) > MAX_SETTINGS_BYTES:
        raise ConfigError(f"larger than {MAX_SETTINGS_BYTES} bytes", path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None


def load_json_text(text: str, file: str) -> Any:
    """JSON settings -> plain data, or ConfigError; the same size and nesting caps as YAML."""
    _check_size(text, file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg} (column {exc.colno})", file, exc.lineno) from None
    except RecursionError:
        raise ConfigError(f"nested deeper than {MAX_NESTING} levels", file) from None
    stack = [(data, 1)]
    while stack:  # iterative: the check itself must not recurse
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        if children and depth >= MAX_NESTING:
            raise ConfigError(f"nested deeper than {MAX_NESTING} levels", file)
        stack.extend((c, depth + 1) for c in children)
    return data


# ---------------------------------------------------------------- locating and checking keys


def line_of(node: Any, key: str | None = None) -> int | None:
    """The 1-based line of ``key`` in a mapping read by :func:`load_yaml_text` (of the mapping
    itself without ``key`` or when the key is absent); ``None`` for data without lines (JSON,
    environment)."""
    lines: dict[str, int] | None = getattr(node, "key_lines", None)
    if key is not None and lines and key in lines:
        return lines[key]
    line: int | None = getattr(node, "line", None)
    return line


def reject_unknown_keys(
    node: Any, known: Iterable[str], file: str | None, what: str = "key", where: str = ""
) -> None:
    """A :class:`ConfigError` at the first (sorted) key of ``node`` that is not ``known``:
    ``unknown WHAT 'k'WHERE (known: ...)``, so a misspelt setting is never silently ignored."""
    known = set(known)
    unknown = sorted(set(map(str, node)) - known)
    if unknown:
        raise ConfigError(
            f"unknown {what} {unknown[0]!r}{where} (known: {', '.join(sorted(known))})",
            file,
            line_of(node, unknown[0]),
        )


def check_label_name(name: str, file: str | None, line: int | None, *, meta_ok: bool = False) -> None:
    """The one rule for the name of a static label, wherever it is set (config file,
    ``VLLM_SIDECAR_LABELS``, targets file): Prometheus' label-name syntax, no ``__`` prefix
    (Prometheus reserves it; ``meta_ok`` lets the targets file's ``__scheme__``,
    ``__metrics_path__``, ``__meta_*`` through, which never become labels) and none of
    :data:`RESERVED_LABELS`."""
    if not LABEL_NAME_RE.match(name) or (name.startswith("__") and not meta_ok):
        raise ConfigError(f"invalid label name {name!r}", file, line)
    if name in RESERVED_LABELS:
        raise ConfigError(f"label name {name!r} is reserved by the sidecar", file, line)


def file_stamp(path: str | None) -> tuple[Any, ...] | None:
    """What tells that a file changed without reading it: modification time, size and inode
    (an atomic rename or a ConfigMap symlink swap changes the inode). ``None`` without a path,
    ``("missing",)`` when it cannot be looked at."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return ("missing",)
    return (st.st_mtime_ns, st.st_size, st.st_ino)
