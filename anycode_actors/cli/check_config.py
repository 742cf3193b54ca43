"""`anycode check-config`: validate a config file and print the effective configuration."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text

from anycode_actors.cli.common import CommandIO, Subparsers, add_config_path, load_runnable
from anycode_actors.config import SECRET_ENV_VARS, Config

__all__ = ["add_check_config"]


def add_check_config(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file and print the effective config (secrets masked)",
        description="Validate a config file. Prints the effective configuration with defaults "
        "filled in and secrets masked (exit 0), or every problem with its key path and a fix "
        "(exit 1).",
    )
    add_config_path(parser)
    parser.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace, io: CommandIO) -> int:
    config = load_runnable(args.path, io)
    if config is None:
        return 1
    _print_summary(io.out, args.path, config, io.environ)
    io.out.print()
    io.out.print(Syntax(config.effective_toml(), "toml", theme="ansi_dark", word_wrap=False))
    return 0


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
    if config.api is not None:
        users, admins = len(config.api.users), len(config.api.admins)
        chats.append(
            f"api on {config.api.listen} ({users} user{'' if users == 1 else 's'}"
            + (f", {admins} admin{'' if admins == 1 else 's'})" if admins else ")")
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
