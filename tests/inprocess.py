"""Run a CLI command in this process, without ``main``'s logging set-up (which would bind the
root logger to pytest's captured streams and break later tests' log capture)."""

from __future__ import annotations

from orchestrator.cli import build_parser


def run_cli(*argv: str) -> int:
    """The command's exit status; bad arguments raise ``SystemExit(2)`` as argparse does."""
    args = build_parser().parse_args(list(argv))
    try:
        return int(args.func(args))
    except SystemExit as exited:  # _load exits on a bad bots.yaml, _with_store on a missing database
        return int(exited.code or 0)
