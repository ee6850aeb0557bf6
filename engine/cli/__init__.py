"""``approxft``: the command line, the top layer over both packages' APIs (``ingest`` for
``prepare``, ``collect``, ``serve``, ``finetune`` and ``ingest``; ``engine`` for the rest).

One module per command: it declares its options, calls one library function and prints the
result (``output``); option groups several commands share live in ``options``. Data goes to
stdout, progress and logs to stderr. Exit status: 0 success, 1 error (one line on stderr naming
the file, line or field), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ingest import IngestError
from ingest.errors import one_line
from ingest.store import StoreError

from . import (
    calibrate_cmd,
    collect_cmd,
    demo_cmd,
    eval_cmd,
    finetune_cmd,
    generate_cmd,
    ingest_cmd,
    prepare_cmd,
    serve_cmd,
    tune_cmd,
)

__all__ = ["main", "build_parser"]

COMMANDS = (ingest_cmd, calibrate_cmd, eval_cmd, tune_cmd, demo_cmd, prepare_cmd, collect_cmd, serve_cmd, finetune_cmd, generate_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="approxft",
        description="Blend a big model with a small tuned/untuned pair from stored top-k logprobs, "
        "and evaluate the blend offline.",
        epilog="Example: approxft demo",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (IngestError, StoreError, ValueError, OSError) as err:
        # One line, whatever a library below wrote (SQLAlchemy, for one, appends a second).
        print(f"approxft {args.command}: error: {one_line(err, limit=None)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"approxft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
