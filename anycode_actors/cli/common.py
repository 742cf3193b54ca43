"""What every `anycode` subcommand shares; imports none of the subcommand modules.

A subcommand module has `add_<name>(subparsers)`, which registers its parser and points
`handler` at a function `(args, io) -> int`; `anycode_actors.cli.app` lists the adders.
Handlers write through `io` (rich consoles bound at call time) and read the environment from
it, so tests call `main([...], environ={...})` and capture output without touching the process.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from rich.console import Console
from rich.text import Text

from anycode_actors.config import Config, ConfigError, load_config

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "CommandIO",
    "Handler",
    "Subparsers",
    "add_config_path",
    "configure_logging",
    "load_runnable",
    "print_problems",
]

DEFAULT_CONFIG_PATH: Final = "config.toml"


@dataclass(frozen=True)
class CommandIO:
    """What a subcommand may touch: the environment and the two output streams."""

    environ: Mapping[str, str]
    out: Console
    err: Console


def add_config_path(parser: argparse.ArgumentParser) -> None:
    """The optional positional PATH of the config file, as check-config and doctor take it."""
    parser.add_argument(
        "path",
        nargs="?",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"the config file (default: {DEFAULT_CONFIG_PATH})",
    )


Handler = Callable[[argparse.Namespace, CommandIO], int]
# A string: argparse's subparsers action is generic only in the type stubs.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def load_runnable(path: str, io: CommandIO) -> Config | None:
    """The config at `path` if the daemon may run with it; else print every problem, None."""
    try:
        config = load_config(path, environ=io.environ)
        problems = config.access_problems()
        if problems:
            raise ConfigError(problems, path)
    except ConfigError as exc:
        print_problems(io.err, exc)
        return None
    return config


def print_problems(console: Console, error: ConfigError) -> None:
    """Every problem of `error`, each with its key path and fix."""
    count = len(error.problems)
    noun = "problem" if count == 1 else "problems"
    console.print(Text(f"✗ {error.source} has {count} {noun}:", style="bold red"))
    for problem in error.problems:
        line = Text("  • ")
        line.append(problem.path or "(file)", style="bold")
        line.append(f": {problem.message}")
        console.print(line)
        if problem.fix:
            console.print(Text(f"      fix: {problem.fix}", style="dim"))


def configure_logging(level: str) -> None:
    """Plain log lines on stderr. Libraries that log request bodies or URLs (botocore's bodies
    carry container env with credentials; httpx's URLs carry the Telegram token) are kept
    quieter than DEBUG whatever the daemon's level."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "docker", "hypercorn"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, getattr(logging, level)))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
