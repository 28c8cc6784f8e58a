"""The `llmsim` command (console script and `python -m llmsim`).

gevent's monkey-patching happens here, in the entry point, before the CLI is
imported: importing any llmsim module never patches the caller's process.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Patch the process for gevent, then run the CLI; returns the exit code."""
    from gevent import monkey

    monkey.patch_all()
    from llmsim.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
