"""``make fuzz``: a campaign of every target (or those named), one after the other.

    python -m fuzz.run --runs 1000000 [--out .artifacts/fuzz] [parser pipeline config]

Each target starts from its committed seeds (fuzz/corpus/<target>) and writes the inputs it adds
to <out>/corpus/<target> (the committed corpus is never modified), its libFuzzer log to
<out>/<target>.log and any crashing input to <out>/crashes/<target>/. A summary (executions,
seconds, exec/s, crashes per target) is printed and written to <out>/summary.txt; the exit status
is 1 when any target crashed. ``FUZZ_INVARIANTS`` is passed through to the pipeline target.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TARGETS = ("parser", "pipeline", "config")
#: libFuzzer dictionary of each target (tokens it would take long to guess)
DICTS = {"parser": "exposition.dict", "pipeline": "exposition.dict", "config": "settings.dict"}
#: longest input libFuzzer may make (it defaults to the longest seed: 292 bytes for config)
MAX_LEN = {"parser": 65536, "pipeline": 65536, "config": 8192}
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Result:
    target: str
    executions: int
    seconds: float
    crashes: int
    exit_code: int

    @property
    def line(self) -> str:
        rate = self.executions / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.target:<10} {self.executions:>10} {self.seconds:>9.0f} {rate:>8.0f} "
            f"{self.crashes:>7} {self.exit_code:>4}"
        )


def fuzz_args(target: str, runs: int, found: Path) -> list[str]:
    """The libFuzzer arguments shared by ``make fuzz`` and the short CI runs: new inputs go to
    ``found``; the committed seeds are read, never written."""
    return [
        f"-atheris_runs={runs}",
        f"-dict={HERE / DICTS[target]}",
        f"-max_len={MAX_LEN[target]}",
        str(found),
        str(HERE / "corpus" / target),
    ]


def command(target: str, runs: int, out: Path, extra: list[str]) -> list[str]:
    crashes = out / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    found = out / "corpus" / target
    found.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        f"fuzz.{target}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *extra,
        *fuzz_args(target, runs, found),
    ]


def executions(log: str) -> int:
    """libFuzzer's own count: ``Done N in S second(s)``, else the last ``#N`` status line."""
    done = re.findall(r"^Done (\d+) in", log, re.M)
    if done:
        return int(done[-1])
    status = re.findall(r"^#(\d+)\s", log, re.M)
    return int(status[-1]) if status else 0


def run_target(target: str, runs: int, out: Path, extra: list[str]) -> Result:
    log_path = out / f"{target}.log"
    t0 = time.monotonic()
    with log_path.open("w") as log:
        code = subprocess.call(
            command(target, runs, out, extra), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    seconds = time.monotonic() - t0
    text = log_path.read_text(errors="replace")
    crashes = sum(1 for p in (out / "crashes" / target).iterdir() if p.is_file())
    return Result(target, executions(text), seconds, crashes, code)


def crash_of(target: str, data: bytes) -> str | None:
    """The exception ``data`` raises in ``target`` (type and first line), or None."""
    import importlib

    try:
        importlib.import_module(f"fuzz.{target}").test_one_input(data)
    except Exception as exc:  # noqa: BLE001 - any exception is what a crash is
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def minimize(target: str, data: bytes) -> bytes:
    """The shortest input found that raises the same exception type as ``data`` (chunks removed
    greedily, halving the chunk size). libFuzzer's ``-minimize_crash`` needs an executable
    ``argv[0]``, which ``python -m`` does not give it."""
    kind = (crash_of(target, data) or "").split(":")[0]
    if not kind:
        raise SystemExit("that input does not crash the target")
    size = max(1, len(data) // 2)
    while True:
        i = 0
        while i < len(data):
            candidate = data[:i] + data[i + size :]
            if (crash_of(target, candidate) or "").split(":")[0] == kind:
                data = candidate
            else:
                i += size
        if size == 1:
            return data
        size //= 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000, help="executions per target")
    ap.add_argument("--out", type=Path, default=REPO / ".artifacts" / "fuzz")
    ap.add_argument(
        "--libfuzzer",
        default="",
        help="extra libFuzzer flags, space-separated: --libfuzzer='-len_control=0 -seed=1'",
    )
    ap.add_argument("targets", nargs="*", help=f"default: {' '.join(TARGETS)}")
    ap.add_argument(
        "--minimize",
        metavar="CRASHFILE",
        type=Path,
        help="shrink a crashing input of the one target named; prints it, writes FILE.min",
    )
    args = ap.parse_args(argv)
    if args.minimize:
        if len(args.targets) != 1:
            ap.error("--minimize needs exactly one target")
        small = minimize(args.targets[0], args.minimize.read_bytes())
        args.minimize.with_suffix(".min").write_bytes(small)
        print(f"{len(small)} bytes: {small!r}\n{crash_of(args.targets[0], small)}")
        return 0
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown target(s) {sorted(unknown)}; known: {', '.join(TARGETS)}")
    args.targets = args.targets or list(TARGETS)
    args.out.mkdir(parents=True, exist_ok=True)
    header = f"{'target':<10} {'executions':>10} {'seconds':>9} {'exec/s':>8} {'crashes':>7} {'exit':>4}"
    results = []
    for target in args.targets:
        print(f"fuzzing {target}: {args.runs} executions, log {args.out / (target + '.log')}", flush=True)
        results.append(run_target(target, args.runs, args.out, args.libfuzzer.split()))
        print(results[-1].line, flush=True)
    summary = "\n".join([header, *(r.line for r in results)]) + "\n"
    (args.out / "summary.txt").write_text(summary)
    print(summary, end="")
    return 1 if any(r.crashes or r.exit_code for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
