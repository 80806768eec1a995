"""``python -m conveyor.execution RUN_DIR``: run the job in RUN_DIR, exit 0, 1 or 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from conveyor._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the job and return its exit code (0, 1 or 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m conveyor.execution",
        description=(
            "Run the jobflow job described by RUN_DIR/job.json and write "
            "RUN_DIR/output.json. Exit code 0: the job succeeded; 1: it raised (the "
            "error is in output.json); 2: job.json is missing or unreadable."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the job's run dir")
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from conveyor.execution.run import execute

    return execute(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
