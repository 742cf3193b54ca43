"""`anycode demo`: the whole daemon, with the terminal as its chat and a scripted agent.

No token, no Docker, no network. The supervisor tree is the one `anycode run` builds; only the
edges differ: the chat platform is `ConsoleChat` (lines typed here, messages printed here), the
sandbox provider is the local one (a folder per session in a temporary directory), and the agent
is `anycode_actors.cli.demo_agent`, which speaks ACP over stdio, streams a scripted answer, asks one
permission and writes a file into the outbox. A newcomer sees streaming, buttons, file output and
the live actor tree in one terminal, and can read the agent's source as an example of ACP.

`anycode demo --real` runs Claude Code in the real Docker sandbox instead: it needs
ANTHROPIC_API_KEY, a reachable Docker engine and the sandbox image, and says which one is missing
otherwise.

The actor tree (`anycode_actors.cli.console.TreeView`, the view of `anycode tree`) is printed
whenever its shape changes (an actor starts or stops, a session changes status) once the chat
has been quiet for a moment, and on `/tree`. Printing it rather than drawing a live panel keeps
the demo usable in any terminal, over ssh and under a pseudo-terminal in tests: what the user
types is echoed on the same screen, and a panel redrawn under it would tear it apart.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import trio
from pydantic import SecretStr
from rich.console import Console
from rich.text import Text

from anycode_actors.actors.admin import TreeSnapshot
from anycode_actors.chat.console import ConsoleChat
from anycode_actors.cli.common import CommandIO, Subparsers
from anycode_actors.cli.console import TreeView
from anycode_actors.config import (
    AdminConfig,
    AgentConfig,
    AgentsConfig,
    Config,
    DatabaseConfig,
    DockerConfig,
    LocalConfig,
    SandboxConfig,
    SessionConfig,
)
from anycode_actors.daemon import Daemon
from supervisors import ChildEntry

__all__ = [
    "DEMO_AGENT",
    "REAL_AGENT",
    "WELCOME",
    "add_demo",
    "demo_config",
    "real_config",
    "real_refusal",
    "run_demo",
]

DEMO_AGENT: Final = "demo"
REAL_AGENT: Final = "claude-code"
WELCOME: Final = (
    "Type /task hello to start; /help for commands; /tree for the actors; /quit to leave."
)
#: A finished demo session ends this soon after its last turn (a follow-up within it continues).
DEMO_IDLE_MINUTES: Final = 0.5
REAL_IDLE_MINUTES: Final = 5
DEMO_DEBOUNCE_MS: Final = 150
#: How often the tree's shape is compared, and how long the chat must have been quiet before a
#: changed tree is printed (so it never cuts through a streamed answer).
TREE_POLL: Final = 0.25
TREE_QUIET: Final = 0.8


def add_demo(subparsers: Subparsers) -> None:
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
    parser.set_defaults(handler=_demo_command)


def _demo_command(args: argparse.Namespace, io: CommandIO) -> int:
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


def demo_config(folder: Path) -> Config:
    """The demo's configuration: everything under `folder`, the local provider, the demo agent.

    Built from its sections in code. `Config`'s own validation insists on a Telegram or Slack
    section, which `anycode run` needs; the demo brings its own chat client instead, so the
    sections are validated one by one and put together without that rule.
    """
    agent = AgentConfig(acp_command=(sys.executable, "-m", "anycode_actors.cli.demo_agent"))
    return _assemble(
        folder,
        sandbox=SandboxConfig(provider="local", protocol="acp"),
        local=LocalConfig(workdir=folder / "sandboxes", allow_unsandboxed=True),
        agents=AgentsConfig(definitions={DEMO_AGENT: agent}, default_agent=DEMO_AGENT),
        session=SessionConfig(idle_minutes=DEMO_IDLE_MINUTES, debounce_ms=DEMO_DEBOUNCE_MS),
    )


def real_config(folder: Path, api_key: str, image: str) -> Config:
    """Claude Code through sandbox-agent in the Docker sandbox, with the caller's API key."""
    agent = AgentConfig(
        sandbox_agent_id="claude",
        acp_command=("claude-agent-acp",),
        acpx_agent="claude",
        env={"ANTHROPIC_API_KEY": SecretStr(api_key)},
    )
    return _assemble(
        folder,
        sandbox=SandboxConfig(provider="docker", protocol="sandbox-agent"),
        docker=DockerConfig(image=image),
        agents=AgentsConfig(definitions={REAL_AGENT: agent}, default_agent=REAL_AGENT),
        session=SessionConfig(idle_minutes=REAL_IDLE_MINUTES, debounce_ms=500),
    )


def _assemble(folder: Path, **sections: Any) -> Config:
    return Config.model_construct(
        database=DatabaseConfig(path=folder / "anycode.db"),
        admin=AdminConfig(socket=folder / "anycode.sock"),
        **sections,
    )


def real_refusal(environ: Mapping[str, str], image: str) -> str | None:
    """Why `--real` cannot run here (no API key, no Docker engine, no image), or None."""
    if not environ.get("ANTHROPIC_API_KEY"):
        return (
            "anycode demo --real runs Claude Code, which needs an Anthropic API key: "
            "export ANTHROPIC_API_KEY=… and try again (or run `anycode demo` without --real)."
        )
    from docker.client import from_env

    try:
        client = from_env(environment=dict(environ), timeout=10)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types when no engine answers
        return (
            f"anycode demo --real needs a Docker engine, and none answers ({type(exc).__name__}). "
            "Start Docker (or set DOCKER_HOST) and try again."
        )
    try:
        try:
            client.images.get(image)
        except Exception:
            return (
                f"anycode demo --real needs the sandbox image {image}, which this Docker engine "
                "does not have. Build it with docker/build-image.sh."
            )
    finally:
        client.close()
    return None


def run_demo(
    console: Console,
    *,
    real: bool = False,
    files_dir: Path = Path("anycode-demo-files"),
    environ: Mapping[str, str],
    image: str = DockerConfig().image,
    show_tree: bool = True,
    log_level: str = "WARNING",
) -> int:
    """Run the demo in this terminal until /quit, end of input, SIGINT or SIGTERM; 0 when it
    stopped cleanly, 1 when `--real` cannot run here (the reason printed first)."""
    if real:
        refusal = real_refusal(environ, image)
        if refusal is not None:
            console.print(Text(f"✗ {refusal}", style="bold red"))
            return 1
    with tempfile.TemporaryDirectory(prefix="anycode-demo-") as tmp:
        folder = Path(tmp)
        if real:
            config = real_config(folder, environ["ANTHROPIC_API_KEY"], image)
        else:
            config = demo_config(folder)
        logging.getLogger().setLevel(log_level)
        return trio.run(_demo, config, console, files_dir, show_tree)


async def _demo(config: Config, console: Console, files_dir: Path, show_tree: bool) -> int:
    async def tree(_: str) -> None:
        chat.show(TreeView(daemon.admin.snapshot()))

    chat = ConsoleChat(console, files_dir=files_dir, local_commands={"tree": tree})
    daemon = Daemon(config, clients=[chat])
    with _logs_into(chat):
        return await _run(daemon, chat, show_tree)


async def _run(daemon: Daemon, chat: ConsoleChat, show_tree: bool) -> int:
    config = daemon.config
    agent = config.agents.default_agent
    where = "the real Docker sandbox" if config.sandbox.provider == "docker" else "a local folder"
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            chat.show(
                Text.assemble(
                    ("anycode demo", "bold"),
                    f": the daemon runs with this terminal as its chat; agent {agent!r} runs in "
                    f"{where}.\n",
                    (WELCOME, "bold green"),
                )
            )
            if show_tree:
                nursery.start_soon(_print_tree_on_change, chat, daemon.admin.snapshot)
            nursery.start_soon(_wait_for_signal, signals, chat)
            await chat.finished.wait()
            chat.show(Text("Stopping: every session ends and its sandbox is removed…", style="dim"))
            nursery.cancel_scope.cancel()
    chat.show(Text("Bye.", style="bold"))
    return 0


@contextmanager
def _logs_into(chat: ConsoleChat) -> Iterator[None]:
    """Log records (warnings and worse, unless --log-level says otherwise) appear in the chat,
    between the messages, instead of tearing through them on stderr."""
    handler = _ChatLogHandler(chat, trio.lowlevel.current_trio_token())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


class _ChatLogHandler(logging.Handler):
    def __init__(self, chat: ConsoleChat, token: trio.lowlevel.TrioToken) -> None:
        super().__init__()
        self._chat = chat
        self._token = token

    def emit(self, record: logging.LogRecord) -> None:
        line = Text(f"! {self.format(record)}", style="red" if record.levelno >= 40 else "yellow")
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread: print from the Trio thread, in order
            try:
                self._token.run_sync_soon(self._chat.show, line)
            except trio.RunFinishedError:
                print(line.plain, file=sys.stderr)
        else:
            self._chat.show(line)


async def _wait_for_signal(signals: AsyncIterator[int], chat: ConsoleChat) -> None:
    async for _ in signals:
        chat.finished.set()


async def _print_tree_on_change(chat: ConsoleChat, snapshot: Callable[[], TreeSnapshot]) -> None:
    shown: tuple[tuple[str, ...], ...] | None = None
    while True:
        await trio.sleep(TREE_POLL)
        tree = snapshot()
        shape = _shape(tree.entries)
        if shape == shown or trio.current_time() - chat.last_output < TREE_QUIET:
            continue
        shown = shape
        chat.show(TreeView(tree))


def _shape(entries: Sequence[ChildEntry]) -> tuple[tuple[str, ...], ...]:
    """What makes a tree worth printing again: its actors, their states, sessions' statuses
    (not inbox depths or uptimes, which change all the time)."""
    return tuple((e.path, str(e.state), str(e.info.get("status", ""))) for e in entries)
