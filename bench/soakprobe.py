"""``python -m bench.soakprobe run ...``: the sidecar's own command line, plus a task counter.

The service exposes no count of its asyncio tasks, and the soak must not change the service to
get one. This wrapper calls the unchanged :func:`sidecar.cli.main` in the same way
``python -m sidecar`` does, after installing one signal handler: on ``SIGUSR1`` it writes the
number of live asyncio tasks of the running loop (and how many of them are per-target scrape
loops, named ``scrape:<target>``) to the file named by ``$SOAK_TASKS_FILE``. The handler runs
in the loop's own thread between two bytecodes, so it reads the task set without racing the
loop; it costs nothing until signalled (once a minute).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sidecar.cli import main

ENV = "SOAK_TASKS_FILE"


def count_tasks() -> tuple[int, int]:
    """(all live tasks, scrape-loop tasks) of the running loop; (-1, -1) outside a loop."""
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        return -1, -1
    return len(tasks), sum(1 for t in tasks if t.get_name().startswith("scrape:"))


def _on_usr1(signum: int, frame: object) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    total, scrape = count_tasks()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{total} {scrape}\n")
    os.replace(tmp, path)  # the reader never sees half a line


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _on_usr1)
    sys.exit(main())
