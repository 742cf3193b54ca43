"""`anycode demo`: the scripted ACP agent, the terminal chat, and the whole demo under a pty.

The agent is driven by the daemon's real ACP client over a real subprocess; the terminal chat
reads a real pipe; the end-to-end tests type into the real program in a terminal (tmux).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio
from rich.console import Console

from anycode_actors.agents import (
    AcpClient,
    AcpSession,
    AgentEvent,
    PermissionRequested,
    TextDelta,
    ToolCall,
    TurnEnded,
    open_local_stdio_client,
)
from anycode_actors.chat.base import Button, ButtonPress, ChatEvent, Command, Message
from anycode_actors.chat.console import CONSOLE_CHAT, CONSOLE_USER, ConsoleChat
from anycode_actors.cli import main
from anycode_actors.cli.demo import _logs_into, demo_config, real_config
from anycode_actors.cli.demo_agent import AGENT_NAME, workspace_of
from anycode_actors.config import Config, ConfigError
from tests.docker_support import docker_client, require_or_skip

AGENT_ARGV = [sys.executable, "-m", "anycode_actors.cli.demo_agent", "--delay", "0.005"]
EVENT_TIMEOUT = 20.0


# --- the demo agent, through the daemon's ACP client ----------------------------------------------


@asynccontextmanager
async def demo_session(workspace: Path) -> AsyncIterator[tuple[AcpClient, AcpSession]]:
    async with open_local_stdio_client(AGENT_ARGV, cwd=workspace) as client:
        await client.initialize()
        session = await client.new_session(str(workspace))
        yield client, session


async def events_until(session: AcpSession, stop: Callable[[AgentEvent], bool]) -> list[AgentEvent]:
    seen: list[AgentEvent] = []
    with trio.fail_after(EVENT_TIMEOUT):
        async for event in session.events:
            seen.append(event)
            if stop(event):
                return seen
    raise AssertionError(f"the event stream ended early: {seen}")


def text_of(events: list[AgentEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def is_permission(event: AgentEvent) -> bool:
    return isinstance(event, PermissionRequested)


def is_turn_end(event: AgentEvent) -> bool:
    return isinstance(event, TurnEnded)


async def test_the_agent_introduces_itself_and_opens_a_session(tmp_path: Path) -> None:
    async with open_local_stdio_client(AGENT_ARGV, cwd=tmp_path) as client:
        info = await client.initialize()
        session = await client.new_session(str(tmp_path))
    assert info.protocol_version == 1
    assert info.agent_name == AGENT_NAME
    assert session.session_id.startswith("demo-")


async def test_a_prompt_streams_text_then_asks_one_permission_with_three_options(
    tmp_path: Path,
) -> None:
    async with demo_session(tmp_path) as (_, session):
        await session.prompt("hello")
        events = await events_until(session, is_permission)
    deltas = [event for event in events if isinstance(event, TextDelta)]
    assert len(deltas) > 5, "the answer arrives in several chunks"
    assert "demo agent" in text_of(events)
    assert "You asked: “hello”" in text_of(events)
    calls = [event for event in events if isinstance(event, ToolCall)]
    assert [(c.phase, c.title, c.kind) for c in calls] == [
        ("started", "Write outbox/hello.md", "edit")
    ]
    request = events[-1]
    assert isinstance(request, PermissionRequested)
    assert request.title == "Write outbox/hello.md"
    assert request.tool_call_id == calls[0].tool_call_id
    assert [(o.option_id, o.kind) for o in request.options] == [
        ("allow", "allow_once"),
        ("allow_always", "allow_always"),
        ("reject", "reject_once"),
    ]
    assert not (tmp_path / "outbox").exists(), "nothing is written before the answer"


async def test_allowing_writes_the_report_into_the_outbox_and_ends_the_turn(
    tmp_path: Path,
) -> None:
    async with demo_session(tmp_path) as (_, session):
        await session.prompt("make a report")
        request = (await events_until(session, is_permission))[-1]
        assert isinstance(request, PermissionRequested)
        await session.respond_permission(request.key, "allow")
        events = await events_until(session, is_turn_end)
    report = tmp_path / "outbox" / "hello.md"
    assert "You asked: make a report" in report.read_text()
    completed = [e for e in events if isinstance(e, ToolCall) and e.phase == "completed"]
    assert [(c.status, c.failed) for c in completed] == [("completed", False)]
    assert "outbox/hello.md is written" in text_of(events)
    ended = events[-1]
    assert isinstance(ended, TurnEnded)
    assert ended.stop_reason == "end_turn"


async def test_rejecting_writes_nothing_and_says_so(tmp_path: Path) -> None:
    async with demo_session(tmp_path) as (_, session):
        await session.prompt("hello")
        request = (await events_until(session, is_permission))[-1]
        assert isinstance(request, PermissionRequested)
        await session.respond_permission(request.key, "reject")
        events = await events_until(session, is_turn_end)
    assert not (tmp_path / "outbox").exists()
    completed = [e for e in events if isinstance(e, ToolCall) and e.phase == "completed"]
    assert [c.failed for c in completed] == [True]
    assert "did not write the file" in text_of(events)
    ended = events[-1]
    assert isinstance(ended, TurnEnded)
    assert ended.stop_reason == "end_turn"


async def test_cancel_while_the_permission_waits_ends_the_turn_cancelled(tmp_path: Path) -> None:
    async with demo_session(tmp_path) as (_, session):
        await session.prompt("hello")
        await events_until(session, is_permission)
        await session.cancel()
        events = await events_until(session, is_turn_end)
        ended = events[-1]
        assert isinstance(ended, TurnEnded)
        assert ended.stop_reason == "cancelled"
        assert not (tmp_path / "outbox").exists()
        # The agent is ready for the next prompt, and asks again.
        await session.prompt("again")
        events = await events_until(session, is_permission)
    assert "You asked: “again”" in text_of(events)


async def test_cancel_while_streaming_stops_the_answer(tmp_path: Path) -> None:
    slow = [sys.executable, "-m", "anycode_actors.cli.demo_agent", "--delay", "0.5"]
    async with open_local_stdio_client(slow, cwd=tmp_path) as client:
        await client.initialize()
        session = await client.new_session(str(tmp_path))
        await session.prompt("hello")
        await events_until(session, lambda event: isinstance(event, TextDelta))
        await session.cancel()
        events = await events_until(session, is_turn_end)
    ended = events[-1]
    assert isinstance(ended, TurnEnded)
    assert ended.stop_reason == "cancelled"
    assert not any(isinstance(e, PermissionRequested) for e in events)


async def test_allow_for_the_session_is_not_asked_again(tmp_path: Path) -> None:
    async with demo_session(tmp_path) as (_, session):
        await session.prompt("first")
        request = (await events_until(session, is_permission))[-1]
        assert isinstance(request, PermissionRequested)
        await session.respond_permission(request.key, "allow_always")
        await events_until(session, is_turn_end)
        await session.prompt("second")
        events = await events_until(session, is_turn_end)
    assert not any(isinstance(e, PermissionRequested) for e in events)
    assert "You asked: second" in (tmp_path / "outbox" / "hello.md").read_text()


def test_the_workspace_of_a_cloned_repository_is_the_folder_above(tmp_path: Path) -> None:
    (tmp_path / ".anycode").mkdir()
    (tmp_path / "repo").mkdir()
    assert workspace_of(tmp_path / "repo") == tmp_path
    assert workspace_of(tmp_path) == tmp_path
    assert workspace_of(tmp_path / "elsewhere" / "repo") == tmp_path / "elsewhere" / "repo"


# --- the terminal chat ---------------------------------------------------------------------------


def plain_console() -> tuple[Console, io.StringIO]:
    output = io.StringIO()
    console = Console(file=output, width=120, color_system=None, highlight=False, soft_wrap=True)
    return console, output


@asynccontextmanager
async def typed_into(
    chat: ConsoleChat,
) -> AsyncIterator[tuple[Callable[[str], None], trio.MemoryReceiveChannel[ChatEvent]]]:
    """Run `chat` on a pipe; yields a function that types a line, and the events it makes."""
    read_end, write_end = os.pipe()
    chat._fd = read_end
    send, receive = trio.open_memory_channel[ChatEvent](16)

    def type_line(text: str) -> None:
        os.write(write_end, (text + "\n").encode())

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(chat.run, send)
            yield type_line, receive
            nursery.cancel_scope.cancel()
    finally:
        os.close(write_end)
        os.close(read_end)


async def next_event(events: trio.MemoryReceiveChannel[ChatEvent]) -> ChatEvent:
    with trio.fail_after(5):
        return await events.receive()


async def test_typed_lines_become_commands_and_messages() -> None:
    console, _ = plain_console()
    chat = ConsoleChat(console)
    async with typed_into(chat) as (type_line, events):
        type_line("/task hello world")
        type_line("")
        type_line("/STATUS@anycode_bot")
        type_line("please also add tests")
        type_line("2")  # no buttons on screen: just text
        task = await next_event(events)
        status = await next_event(events)
        text = await next_event(events)
        number = await next_event(events)
    assert isinstance(task, Command)
    assert (task.chat, task.user, task.name, task.args) == (
        CONSOLE_CHAT,
        CONSOLE_USER,
        "task",
        "hello world",
    )
    assert isinstance(status, Command)
    assert (status.name, status.args) == ("status", "")
    assert isinstance(text, Message)
    assert text.text == "please also add tests"
    assert isinstance(number, Message)
    assert number.text == "2"
    assert CONSOLE_CHAT.key == "console:local"


async def test_a_number_presses_the_numbered_button_while_buttons_are_shown() -> None:
    console, output = plain_console()
    chat = ConsoleChat(console)
    rows = [
        [Button("Allow", "i1:0"), Button("Allow for this session", "i1:1")],
        [Button("Deny", "i1:2")],
    ]
    async with typed_into(chat) as (type_line, events):
        message_id = await chat.send(CONSOLE_CHAT, "Permission requested: Write x", buttons=rows)
        assert "[1] Allow  [2] Allow for this session  [3] Deny" in output.getvalue()
        type_line("4")  # no such button: nothing is sent, the user is told
        type_line("3")
        press = await next_event(events)
        assert isinstance(press, ButtonPress)
        assert (press.message_id, press.data, press.user) == (message_id, "i1:2", CONSOLE_USER)
        assert "There is no button 4; type one of 1, 2, 3." in output.getvalue()
        await chat.answer_press(press, "Deny")
        assert "↳ Deny" in output.getvalue()
        # The answer replaces the buttons: a number is plain text again.
        await chat.edit(CONSOLE_CHAT, message_id, "Permission requested: Write x\n\n🚫 Deny")
        assert chat.pending_buttons == {}
        type_line("1")
        after = await next_event(events)
    assert isinstance(after, Message)
    assert after.text == "1"


async def test_buttons_of_two_prompts_get_distinct_numbers() -> None:
    console, output = plain_console()
    chat = ConsoleChat(console)
    first = await chat.send(
        CONSOLE_CHAT, "one", buttons=[[Button("Allow", "a:0"), Button("Deny", "a:1")]]
    )
    await chat.send(CONSOLE_CHAT, "two", buttons=[[Button("Allow", "b:0"), Button("Deny", "b:1")]])
    assert chat.pending_buttons == {1: "Allow", 2: "Deny", 3: "Allow", 4: "Deny"}
    assert "[3] Allow  [4] Deny" in output.getvalue()
    await chat.edit(CONSOLE_CHAT, first, "one\n\n✅ Allow")
    assert chat.pending_buttons == {3: "Allow", 4: "Deny"}


async def test_quit_ends_the_chat_and_local_commands_run_here() -> None:
    console, _ = plain_console()
    asked: list[str] = []

    async def tree(args: str) -> None:
        asked.append(args)

    chat = ConsoleChat(console, local_commands={"tree": tree})
    async with typed_into(chat) as (type_line, events):
        type_line("/tree deep")
        type_line("/quit")
        with trio.fail_after(5):
            await chat.finished.wait()
        assert asked == ["deep"]
        assert events.statistics().current_buffer_used == 0, "neither reaches the daemon"


async def test_end_of_input_ends_the_chat() -> None:
    console, _ = plain_console()
    chat = ConsoleChat(console)
    read_end, write_end = os.pipe()
    os.write(write_end, b"/task hi")  # the last line has no line break
    os.close(write_end)
    chat._fd = read_end
    send, receive = trio.open_memory_channel[ChatEvent](4)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(chat.run, send)
            task = await next_event(receive)
            with trio.fail_after(5):
                await chat.finished.wait()
            nursery.cancel_scope.cancel()
    finally:
        os.close(read_end)
    assert isinstance(task, Command)
    assert task.args == "hi"


async def test_a_stream_of_edits_prints_each_piece_once_on_one_line() -> None:
    console, output = plain_console()
    chat = ConsoleChat(console)
    message_id = await chat.send(CONSOLE_CHAT, "Hello ")
    await chat.edit(CONSOLE_CHAT, message_id, "Hello there, ")
    await chat.edit(CONSOLE_CHAT, message_id, "Hello there, I am streaming.\n")
    await chat.edit(CONSOLE_CHAT, message_id, "Hello there, I am streaming.\n▸ Write x\n")
    await chat.send(CONSOLE_CHAT, "Next message")
    assert output.getvalue() == (
        "bot › Hello there, I am streaming.\n      ▸ Write x\nbot › Next message"
    )


async def test_edits_of_a_message_further_up_print_only_what_was_added() -> None:
    console, output = plain_console()
    chat = ConsoleChat(console)
    stream = await chat.send(CONSOLE_CHAT, "Working on")
    await chat.send(CONSOLE_CHAT, "A notice")
    await chat.edit(CONSOLE_CHAT, stream, "Working on it now.")
    await chat.edit(CONSOLE_CHAT, stream, "Working on it now. Done.")
    await chat.send(CONSOLE_CHAT, "Elsewhere")
    await chat.edit(CONSOLE_CHAT, stream, "Something else entirely")
    assert output.getvalue().splitlines() == [
        "bot › Working on",
        "bot › A notice",
        "bot › … it now. Done.",
        "bot › Elsewhere",
        "bot (edited) › Something else entirely",
    ]


async def test_uploads_are_saved_without_overwriting_and_listed(tmp_path: Path) -> None:
    console, output = plain_console()
    chat = ConsoleChat(console, files_dir=tmp_path / "files")
    await chat.upload(CONSOLE_CHAT, "hello.md", b"# one\n")
    await chat.upload(CONSOLE_CHAT, "hello.md", b"# two\n")
    assert (tmp_path / "files" / "hello.md").read_bytes() == b"# one\n"
    assert (tmp_path / "files" / "hello-2.md").read_bytes() == b"# two\n"
    shown = output.getvalue()
    assert f"📎 hello.md (6 bytes) → {tmp_path / 'files' / 'hello.md'}" in shown
    assert f"📎 hello.md (6 bytes) → {tmp_path / 'files' / 'hello-2.md'}" in shown
    assert "│ # two" in shown


async def test_log_records_appear_in_the_chat_from_any_thread() -> None:
    console, output = plain_console()
    chat = ConsoleChat(console)
    logger = logging.getLogger("anycode_actors.test_demo")
    with _logs_into(chat):
        logger.warning("from the trio thread")
        await trio.to_thread.run_sync(logger.error, "from a worker thread")
        await trio.sleep(0.05)  # the worker's record is printed by the Trio thread, soon
    logger.warning("after the demo")
    assert output.getvalue().splitlines() == [
        "! WARNING anycode_actors.test_demo: from the trio thread",
        "! ERROR anycode_actors.test_demo: from a worker thread",
    ]


# --- the configurations -----------------------------------------------------------------------


@pytest.mark.parametrize("make", ["demo", "real"])
def test_the_demo_configs_break_no_rule_but_the_one_about_chat_platforms(
    make: str, tmp_path: Path
) -> None:
    if make == "demo":
        config = demo_config(tmp_path)
        assert (config.sandbox.provider, config.sandbox.protocol) == ("local", "acp")
        assert config.local.allow_unsandboxed
        assert config.agent(config.agents.default_agent).acp_command[0] == sys.executable
    else:
        config = real_config(tmp_path, "sk-ant-placeholder.not.a.key", "some-image:1")
        assert (config.sandbox.provider, config.sandbox.protocol) == ("docker", "sandbox-agent")
        assert config.sandbox_env("claude-code") == {
            "ANTHROPIC_API_KEY": "sk-ant-placeholder.not.a.key"
        }
        assert "placeholder" not in repr(config)
    assert config.database.path.parent == tmp_path
    # The demo brings its own chat client; everything else passes full validation.
    with pytest.raises(ConfigError) as refused:
        Config.model_validate(config.model_dump())
    assert [problem.path for problem in refused.value.problems] == ["telegram/slack"]


# --- --real refuses what it cannot do -------------------------------------------------------------


def test_real_without_an_api_key_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--real"], environ={"PATH": os.environ.get("PATH", "")}) == 1
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().out


def test_real_without_a_docker_engine_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {
        "ANTHROPIC_API_KEY": "sk-ant-placeholder.not.a.key",
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }
    assert main(["demo", "--real"], environ=environ) == 1
    out = capsys.readouterr().out
    assert "needs a Docker engine" in out
    assert "sk-ant-placeholder" not in out


@pytest.mark.docker
def test_real_without_the_sandbox_image_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    docker_client()
    environ = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-placeholder.not.a.key"}
    image = "anycode-no-such-image:never"
    assert main(["demo", "--real", "--image", image], environ=environ) == 1
    assert f"needs the sandbox image {image}" in capsys.readouterr().out


# --- the whole demo in a terminal ---------------------------------------------------------------
#
# tmux is the terminal: the demo runs in a real pty, keys are typed into it, and what is asserted
# is the screen as a terminal draws it (the console moves the cursor to continue a streamed
# message, so the raw output bytes are not what a user reads).

STEP_TIMEOUT = 30.0


class Terminal:
    """A program in a detached tmux session of its own (a private tmux server)."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("tmux") is None:
            require_or_skip("tmux is not installed; the end-to-end demo test types into it")
        self.socket = folder / "tmux.sock"
        self.mark = 0
        self.screen = ""

    def tmux(self, *args: str) -> str:
        # The terminal's own size must count, not sizes the test run inherited.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        done = subprocess.run(
            ["tmux", "-f", os.devnull, "-S", str(self.socket), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
        )
        return done.stdout

    def start(self, cwd: Path, *argv: str, width: int = 120) -> None:
        # A small shell runs the demo and writes its exit status to a file: tmux itself may
        # take a long while to reap a process whose terminal has already closed. The shell
        # survives Ctrl+C (its trap is a handler, which the demo does not inherit).
        self.status_file = cwd / "exit-status"
        script = 'trap : INT TERM; "$@"; echo $? > "$0"'
        self.tmux(
            *("new-session", "-d", "-x", str(width), "-y", "50", "-s", "demo", "-c", str(cwd)),
            *("sh", "-c", script, str(self.status_file), *argv),
            *(";", "set-option", "-w", "-t", "demo", "remain-on-exit", "on"),
        )

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-t", "demo", "-l", line)
        self.tmux("send-keys", "-t", "demo", "Enter")

    def press(self, key: str) -> None:
        self.tmux("send-keys", "-t", "demo", key)

    def read(self) -> str:
        """Everything on the screen and in its scrollback, wrapped lines joined."""
        self.screen = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "demo")
        return self.screen

    def expect(self, pattern: str, timeout: float = STEP_TIMEOUT) -> re.Match[str]:
        """Wait for `pattern` after the end of the previous match."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = compiled.search(self.read(), self.mark)
            if found is not None:
                self.mark = found.end()
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} did not appear within {timeout:g} s; the screen after the last "
                    f"match:\n{self.screen[self.mark :]}"
                )
            time.sleep(0.1)

    def pid(self) -> int:
        """The demo's process id (a child of the shell in the pane)."""
        shell = int(self.tmux("display", "-p", "-t", "demo", "#{pane_pid}"))
        (pid,) = children(shell, b"anycode_actors")
        return pid

    def exit_status(self, timeout: float) -> int | None:
        """The demo's exit status; None if it still runs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.status_file.exists():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        time.sleep(0.1)  # the shell may not have finished writing
        return int(self.status_file.read_text())

    def close(self) -> None:
        with suppress(subprocess.SubprocessError, OSError):
            self.tmux("kill-server")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    terminal = Terminal(tmp_path)
    terminal.start(tmp_path, sys.executable, "-m", "anycode_actors", "demo")
    yield terminal
    terminal.close()


STREAM_SCRIPT = """
import sys, trio
from rich.console import Console
from anycode_actors.chat.console import CONSOLE_CHAT, ConsoleChat

async def main(pieces):
    chat = ConsoleChat(Console(highlight=False))
    text, message = "", None
    for piece in pieces:
        text += piece
        if message is None:
            message = await chat.send(CONSOLE_CHAT, text)
        else:
            await chat.edit(CONSOLE_CHAT, message, text)
    chat.show("END")

trio.run(main, sys.argv[1:])
"""


def test_a_streamed_message_reads_as_written_on_a_terminal_even_at_the_edge(
    tmp_path: Path,
) -> None:
    # 40 columns; "bot › " takes 6. The second piece ends exactly at the right edge, the fourth
    # exactly at the edge of the next row: the text after each must wrap as if printed at once.
    pieces = ["aaaa", "b" * 30, " and more", "c" * 31, " tail", "\nsecond line", " end"]
    terminal = Terminal(tmp_path)
    try:
        terminal.start(tmp_path, sys.executable, "-c", STREAM_SCRIPT, *pieces, width=40)
        screen = terminal.expect(r"END").string
        assert terminal.exit_status(timeout=10) == 0
    finally:
        terminal.close()
    lines = screen[: screen.index("END")].splitlines()
    assert lines == [
        "bot › aaaa" + "b" * 30 + " and more" + "c" * 31 + " tail",
        "      second line end",
    ]


def children(parent: int, marker: bytes) -> dict[int, str]:
    """The processes `parent` started whose command line mentions `marker`: pid → their
    working folder."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and marker in cmdline:
            found[int(entry.name)] = cwd
    return found


def agent_processes(demo: int) -> dict[int, str]:
    """The demo agents the demo started: pid → their working folder (the sandbox's workspace)."""
    return children(demo, b"anycode_actors.cli.demo_agent")


def gone(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"  # a zombie holds nothing; its parent was the demo, which has exited


def test_the_demo_streams_asks_writes_a_file_and_quits_cleanly(
    terminal: Terminal, tmp_path: Path
) -> None:
    terminal.expect(r"/quit to leave")
    terminal.type("/task hello")
    terminal.expect(r"Starting demo session `[0-9a-f]{8}`")
    # The streamed answer reads as one message, however many edits it took.
    terminal.expect(
        r"bot › Hello! I am the anycode demo agent, a tiny ACP agent that runs without a "
        r"model\. You asked: “hello”\. I stream this answer a few words at a time"
    )
    terminal.expect(r"\[1\] Allow +\[2\] Allow for this session +\[3\] Deny")
    agents = agent_processes(terminal.pid())
    assert len(agents) == 1, "one session, one agent process"
    (workspace,) = agents.values()
    terminal.type("1")
    terminal.expect(r"✅ Allow \(by you\)")
    terminal.expect(r"outbox/hello\.md is written")
    terminal.expect(r"📎 hello\.md \(\d+ bytes\) → anycode-demo-files/hello\.md")
    assert "You asked: hello" in (tmp_path / "anycode-demo-files" / "hello.md").read_text()
    terminal.type("/status")
    # The session idles for a follow-up, or has just completed: either is right.
    terminal.expect(r"Active sessions:\s+- `[0-9a-f]{8}` \| demo \| running|No active sessions\.")
    terminal.type("/tree")
    terminal.expect(r"chat:console:local +supervisor +running")
    stream = terminal.expect(r"stream:[0-9a-f]{8} [^\n]*\n([^\n]*)\n")
    assert "turn_running" not in stream.group(1), "the turn has ended; the tree says so"
    terminal.type("/quit")
    terminal.expect(r"Bye\.", timeout=15)
    assert terminal.exit_status(timeout=10) == 0
    assert all(gone(pid) for pid in agents), "the agent processes are stopped"
    assert not Path(workspace).exists(), "the sandbox folder is removed"
    assert "Traceback" not in terminal.read()


def test_ctrl_c_during_a_permission_prompt_cancels_the_session_and_exits(
    terminal: Terminal,
) -> None:
    terminal.expect(r"/quit to leave")
    terminal.type("/task hello")
    terminal.expect(r"\[1\] Allow +\[2\] Allow for this session +\[3\] Deny")
    agents = agent_processes(terminal.pid())
    assert agents
    terminal.press("C-c")
    terminal.expect(r"Session `[0-9a-f]{8}` cancelled \(the daemon is shutting down\)\.", 15)
    terminal.expect(r"Bye\.", timeout=15)
    assert terminal.exit_status(timeout=10) == 0
    assert all(gone(pid) for pid in agents)
    assert "Traceback" not in terminal.read()
