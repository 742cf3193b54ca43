"""`anycode tree`: attach to a running daemon's admin socket and show its actor tree."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Final

import trio
from rich.text import Text

from anycode_actors.actors.admin import (
    AdminAddress,
    AdminError,
    DaemonUnreachable,
    TreeSnapshot,
    fetch_snapshot,
)
from anycode_actors.cli.common import DEFAULT_CONFIG_PATH, CommandIO, Subparsers
from anycode_actors.cli.console import TreeView, snapshot_json, until_signalled, watch_daemon
from anycode_actors.config import ConfigError, load_config

__all__ = ["add_tree"]

DEFAULT_SOCKET: Final = "anycode.sock"
TOKEN_ENV_VAR: Final = "ANYCODE_ADMIN_TOKEN"


def add_tree(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "tree",
        help="show the live actor tree of a running daemon",
        description="Attach to a running daemon's admin socket and show its supervision tree, "
        "refreshed a few times a second: every supervisor and actor with its kind, state, "
        "uptime, restarts, inbox and last error, and each session's chat, agent, status, "
        "events and sandbox. Ctrl+C quits (the daemon keeps running). Without a terminal it "
        "prints one snapshot, as --once does.",
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help=f"the daemon's config file, for admin.socket (default: {DEFAULT_CONFIG_PATH}; "
        f"without one, ./{DEFAULT_SOCKET})",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--socket", metavar="PATH", help="the admin socket (overrides the config)")
    target.add_argument(
        "--connect",
        metavar="HOST:PORT",
        help=f"a daemon serving the tree over TCP (admin.listen); the token comes from "
        f"{TOKEN_ENV_VAR} or admin.token in the config",
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument(
        "--json", action="store_true", help="print one snapshot as JSON (implies --once)"
    )
    parser.set_defaults(handler=_tree)


def _tree(args: argparse.Namespace, io: CommandIO) -> int:
    address = _address(args, io)
    if address is None:
        return 1
    try:
        snapshot: TreeSnapshot = trio.run(fetch_snapshot, address)
    except DaemonUnreachable as exc:
        message = f"No anycode daemon is listening on {address}. Start one with `anycode run`."
        io.err.print(Text(message, style="bold red"))
        io.err.print(Text(f"  ({exc})", style="dim"))
        return 1
    except AdminError as exc:
        io.err.print(Text(f"{address}: {exc}", style="bold red"))
        return 1
    if args.json:
        io.out.out(snapshot_json(snapshot), highlight=False)
        return 0
    if args.once or not io.out.is_terminal:
        io.out.print(TreeView(snapshot), soft_wrap=False)
        return 0
    trio.run(until_signalled, functools.partial(watch_daemon, address, io.out, snapshot))
    return 0


def _address(args: argparse.Namespace, io: CommandIO) -> AdminAddress | None:
    """Where to ask, from --socket, --connect or the config; None after printing why not."""
    if args.socket:
        return AdminAddress.unix(args.socket)
    config_path = args.config or DEFAULT_CONFIG_PATH
    config = None
    if args.config or Path(config_path).exists():
        try:
            config = load_config(config_path, environ=io.environ)
        except ConfigError as exc:
            io.err.print(Text(str(exc), style="red"))
            return None
    if args.connect:
        token = io.environ.get(TOKEN_ENV_VAR) or (
            config.admin.token.get_secret_value()
            if config is not None and config.admin.token is not None
            else None
        )
        if not token:
            io.err.print(
                Text(
                    f"--connect needs the admin token: set {TOKEN_ENV_VAR}, or pass the "
                    "daemon's config with --config (admin.token)",
                    style="bold red",
                )
            )
            return None
        try:
            return AdminAddress.tcp(args.connect, token)
        except ValueError:
            io.err.print(Text(f"--connect wants HOST:PORT, not {args.connect!r}", style="bold red"))
            return None
    if config is not None:
        return AdminAddress.unix(config.admin.socket)
    return AdminAddress.unix(DEFAULT_SOCKET)
