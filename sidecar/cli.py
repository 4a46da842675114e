"""``vllm-cache-sidecar run | doctor | check-config``: a thin layer of flags over the modules."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import _version
from .config.files import ConfigError
from .config.settings import TargetConfig, load_config, parse_target_spec

log = logging.getLogger("sidecar")


class _VersionAction(argparse.Action):
    """``--version``, with the version looked up only when asked (not at every start)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        default: Any = argparse.SUPPRESS,
        help: str = "show the version and exit",
    ):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _target_arg(value: str) -> TargetConfig:
    try:
        return parse_target_spec(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="scrape vLLM targets and serve /metrics (the service)",
        description="Scrape every vLLM target and serve the derived series. "
        "Every flag also has a VLLM_SIDECAR_<SETTING> variable.",
    )
    p.add_argument("--config", help="YAML config file (env VLLM_SIDECAR_CONFIG)")
    p.add_argument(
        "--target",
        action="append",
        type=_target_arg,
        metavar="[NAME=]URL",
        help="a vLLM /metrics URL (repeatable; default http://127.0.0.1:8000/metrics as 'local')",
    )
    p.add_argument("--targets-file", help="Prometheus file_sd JSON/YAML, watched and reloaded")
    p.add_argument("--listen", help="HOST:PORT to serve on (default 0.0.0.0:9490)")
    p.add_argument("--interval", help="seconds between scrapes of a target (default 5)")
    p.add_argument("--windows", help="look-back windows, comma-separated (default 1m,5m)")
    p.add_argument("--max-body-bytes", type=int, help="cap on a /metrics body (default 16 MiB)")
    p.add_argument("--web-config", help="exporter-toolkit web config: TLS and basic auth")
    p.add_argument("--log-level", help="debug, info, warning, error (default info)")
    p.add_argument("--log-format", choices=("text", "json"), help="log format (default text)")
    p.add_argument(
        "--scrape-filter",
        choices=("auto", "off"),
        help="ask vLLM only for the samples the sidecar reads (auto, the default) "
        "or always for the full /metrics (off)",
    )


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for key in (
        "listen",
        "interval",
        "windows",
        "max_body_bytes",
        "web_config",
        "targets_file",
        "log_level",
        "log_format",
        "scrape_filter",
    ):
        v = getattr(ns, key, None)
        if v is not None:
            out[key] = v
    if getattr(ns, "target", None):
        out["targets"] = list(ns.target)
    return out


def cmd_run(ns: argparse.Namespace) -> int:
    from . import logs
    from .service import run

    try:
        config = load_config(ns.config, _flags(ns))
    except ConfigError as exc:
        print(f"vllm-cache-sidecar: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level, config.log_format)
    flags = _flags(ns)
    try:
        asyncio.run(run(config, reload_config=lambda: load_config(ns.config, flags)))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


def cmd_check_config(ns: argparse.Namespace) -> int:
    try:
        config = load_config(ns.file, {})
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if config.targets_file:
        try:
            from .config.targets import load_targets_file

            extra = load_targets_file(config.targets_file)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        doc = config.redacted()
        doc["targets_file_targets"] = [t.redacted() for t in extra]
    else:
        doc = config.redacted()
    import yaml

    yaml.safe_dump(doc, sys.stdout, sort_keys=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-cache-sidecar", description="Is vLLM's prefix caching working, and if not, why?"
    )
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    d = sub.add_parser(
        "doctor",
        help="diagnose vLLM targets once and exit 0/1/2",
        description="Scrape each target at least twice over the duration and "
        "explain its prefix caching. Exit 0 healthy, 1 warning, "
        "2 critical or unreachable.",
    )
    d.add_argument("--target", action="append", type=_target_arg, metavar="[NAME=]URL")
    d.add_argument("--duration", type=float, default=10.0, help="seconds to observe (default 10)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--config", help="take targets from this config file")
    d.add_argument(
        "--scrape-filter",
        choices=("auto", "off"),
        help="as for run (default auto: the doctor reports the mode it got)",
    )
    c = sub.add_parser("check-config", help="validate a config file and print the effective config")
    c.add_argument("file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "run":
        return cmd_run(ns)
    if ns.command == "check-config":
        return cmd_check_config(ns)
    from .doctor import main as doctor_main

    return doctor_main(ns)


if __name__ == "__main__":
    sys.exit(main())
