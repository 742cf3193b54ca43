"""The `anycode` command line: one function per subcommand, `main` dispatches.

A subcommand is a pair: `_add_<name>(subparsers)` registers its parser and points `handler` at
`_<name>(args, io) -> int`; listing the adder in `_SUBCOMMANDS` makes it appear in `--help`.
Handlers write through `io` (rich consoles bound at call time) and read the environment from it,
so tests call `main([...], environ={...})` and capture output without touching the process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import trio
from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text

from anycode_actors import __version__
from anycode_actors.cli_tree import add_tree
from anycode_actors.config import SECRET_ENV_VARS, Config, ConfigError, load_config
from anycode_actors.setup_wizard import add_setup

DEFAULT_CONFIG_PATH: Final = "config.toml"


@dataclass(frozen=True)
class CommandIO:
    """What a subcommand may touch: the environment and the two output streams."""

    environ: Mapping[str, str]
    out: Console
    err: Console


Handler = Callable[[argparse.Namespace, CommandIO], int]
# A string: argparse's subparsers action is generic only in the type stubs.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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


# --- check-config ------------------------------------------------------------------------------


def _add_check_config(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file and print the effective config (secrets masked)",
        description="Validate a config file. Prints the effective configuration with defaults "
        "filled in and secrets masked (exit 0), or every problem with its key path and a fix "
        "(exit 1).",
    )
    parser.add_argument(
        "path",
        nargs="?",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"the config file (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.set_defaults(handler=_check_config)


def _load_runnable(path: str, io: CommandIO) -> Config | None:
    """The config at `path` if the daemon may run with it; else print every problem, None."""
    try:
        config = load_config(path, environ=io.environ)
        problems = config.access_problems()
        if problems:
            raise ConfigError(problems, path)
    except ConfigError as exc:
        _print_problems(io.err, exc)
        return None
    return config


def _check_config(args: argparse.Namespace, io: CommandIO) -> int:
    config = _load_runnable(args.path, io)
    if config is None:
        return 1
    _print_summary(io.out, args.path, config, io.environ)
    io.out.print()
    io.out.print(Syntax(config.effective_toml(), "toml", theme="ansi_dark", word_wrap=False))
    return 0


def _print_problems(console: Console, error: ConfigError) -> None:
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


def _print_summary(console: Console, path: str, config: Config, environ: Mapping[str, str]) -> None:
    console.print(Text(f"✓ {path} is valid", style="bold green"))
    rows: list[tuple[str, str]] = []
    warnings = []
    chats = []
    for platform in config.platforms():
        section = getattr(config, platform)
        users, admins = section.allowed_users, section.admins
        who = (
            "anyone"
            if section.allow_everyone
            else f"{len(users)} allowed user" + ("" if len(users) == 1 else "s")
        )
        if admins:
            who += f", {len(admins)} admin{'' if len(admins) == 1 else 's'}"
        chats.append(f"{platform} ({who})")
        if section.allow_everyone:
            warnings.append(
                f"{platform}.allow_everyone is true: anyone who can message the bot can run "
                "agents with your credentials"
            )
    rows.append(("chat", ", ".join(chats)))
    rows.append(("sandbox", f"{config.sandbox.provider}, protocol {config.sandbox.protocol}"))
    agents = []
    for name in config.known_agents():
        label = f"{name} (default)" if name == config.agents.default_agent else name
        if not config.agent(name).supports(config.sandbox.protocol):
            label += f" (cannot run with {config.sandbox.protocol})"
        agents.append(label)
    rows.append(("agents", ", ".join(agents)))
    rows.append(("database", str(config.database.path)))
    from_env = [name for name in SECRET_ENV_VARS if environ.get(name)]
    if from_env:
        rows.append(("from env", ", ".join(from_env)))

    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        line = Text("  ")
        line.append(label.ljust(width), style="bold")
        line.append(f"  {value}")
        console.print(line)
    for warning in warnings:
        console.print(Text(f"! {warning}", style="yellow"))


# --- run -----------------------------------------------------------------------------------------


def _add_run(subparsers: Subparsers) -> None:
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
    config = _load_runnable(args.config, io)
    if config is None:
        return 1
    if args.console:
        from anycode_actors.console import run_with_console

        return run_with_console(config, log_level=args.log_level, console=io.out)
    configure_logging(args.log_level)
    from anycode_actors.daemon import run_until_signalled

    return trio.run(run_until_signalled, config)


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


# --- demo ----------------------------------------------------------------------------------------


def _add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="try it in this terminal: no token, no Docker (the terminal is the chat)",
        description="Run the whole daemon with this terminal as its chat and a small built-in "
        "agent (local processes, no Docker, no network): it streams an answer, asks a "
        "permission you answer by typing its number, and writes a file. The live actor tree is "
        "printed as it changes. /quit, Ctrl+D or Ctrl+C stop it.",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="run Claude Code in the Docker sandbox instead (needs ANTHROPIC_API_KEY, Docker and "
        "the sandbox image)",
    )
    parser.add_argument(
        "--image", default=None, metavar="IMAGE", help="the sandbox image for --real"
    )
    parser.add_argument(
        "--files",
        default="anycode-demo-files",
        metavar="DIR",
        help="where files the agent sends are saved (default: anycode-demo-files)",
    )
    parser.add_argument("--no-tree", action="store_true", help="do not print the actor tree")
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace, io: CommandIO) -> int:
    from pathlib import Path

    from anycode_actors.demo import run_demo

    options = {"image": args.image} if args.image else {}
    return run_demo(
        io.out,
        real=args.real,
        files_dir=Path(args.files),
        environ=io.environ,
        show_tree=not args.no_tree,
        log_level=args.log_level,
        **options,
    )


_SUBCOMMANDS: Final[tuple[Callable[[Subparsers], None], ...]] = (
    _add_check_config,
    _add_run,
    add_tree,
    _add_demo,
    add_setup,
)
