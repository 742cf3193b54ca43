"""The `anycode` command line: the parser of every subcommand, and `main`, which dispatches.

Each subcommand lives in its own module with an `add_<name>(subparsers)` function; listing the
adder in `_SUBCOMMANDS` makes it appear in `--help`. What they share is in
`anycode_actors.cli.common`, which imports none of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from rich.console import Console

from anycode_actors import __version__
from anycode_actors.cli.check_config import add_check_config
from anycode_actors.cli.client import add_client_commands
from anycode_actors.cli.common import CommandIO, Handler, Subparsers
from anycode_actors.cli.demo import add_demo
from anycode_actors.cli.doctor import add_doctor
from anycode_actors.cli.run import add_run
from anycode_actors.cli.setup import add_setup
from anycode_actors.cli.tree import add_tree
from anycode_actors.config import SECRET_ENV_VARS

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run `anycode` with `argv` (default: the process arguments); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # --help, --version and usage errors; return their status instead of exiting.
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    io = CommandIO(
        environ=os.environ if environ is None else environ,
        out=Console(file=sys.stdout, highlight=False, soft_wrap=True),
        err=Console(file=sys.stderr, highlight=False, soft_wrap=True),
    )
    return handler(args, io)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anycode",
        description="Run coding agents (Claude Code, Codex, any ACP agent) in sandboxes, "
        "driven from Telegram and Slack.",
        epilog="Secrets may come from the environment instead of the config file: "
        + ", ".join(SECRET_ENV_VARS)
        + ".",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


_SUBCOMMANDS: Final[tuple[Callable[[Subparsers], None], ...]] = (
    add_check_config,
    add_doctor,
    add_run,
    add_tree,
    add_demo,
    add_setup,
    add_client_commands,
)
