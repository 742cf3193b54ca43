"""`anycode run`: the daemon, until SIGINT or SIGTERM; with `--console`, its live tree too."""

from __future__ import annotations

import argparse

import trio

from anycode_actors.cli.common import (
    DEFAULT_CONFIG_PATH,
    CommandIO,
    Subparsers,
    configure_logging,
    load_runnable,
)

__all__ = ["add_run"]


def add_run(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the daemon (the supervisor process) until SIGINT or SIGTERM",
        description="Run the daemon: connect to the configured chat platforms and run agent "
        "sessions in sandboxes. SIGINT or SIGTERM stops intake, tells every chat with a live "
        "session, removes every sandbox and exits 0.",
    )
    parser.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"the config file (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="show the live actor tree in the foreground (logs then go to anycode.log next to "
        "the database)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace, io: CommandIO) -> int:
    config = load_runnable(args.config, io)
    if config is None:
        return 1
    # The daemon's modules are imported only by the commands that run it.
    if args.console:
        from anycode_actors.cli.console import run_with_console

        return run_with_console(config, log_level=args.log_level, console=io.out)
    configure_logging(args.log_level)
    from anycode_actors.daemon import run_until_signalled

    return trio.run(run_until_signalled, config)
