"""``python -m sidecar`` is the ``vllm-cache-sidecar`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
