"""The terminal as a chat platform: one conversation, one user, for `anycode demo`.

`ConsoleChat` is a `ChatClient` like the Telegram and Slack clients, so the whole daemon runs
unchanged behind it. Inbound, it reads lines from a file descriptor (the terminal):

- `/task hello` becomes a `Command`, any other text a `Message`;
- while buttons are on screen, a bare number presses the button with that number;
- `/quit`, `/exit`, end of input (Ctrl+D) set `finished`, and the program stops the daemon;
- commands registered in `local_commands` (the demo's `/tree`) are run here, not sent on.

Outbound, messages are printed with rich. A terminal cannot edit what it printed, so streaming
works by appending: while the newest message is the last thing on the screen, an edit that only
adds text to it prints just the new part, right after it (the cursor moves back up to its end and
down again, so what the user types always starts on a fresh line). Every other edit prints the
addition (or the whole new text) as a new block. Buttons are printed numbered:

    bot › Permission requested: Write outbox/hello.md
          [1] Allow  [2] Allow for this session  [3] Deny

Uploads are written into `files_dir` and listed with their size and path.

Nothing here refuses a call, so the console raises none of the `ChatError`s (an edit of a message
it never printed, or no longer remembers, prints the text as a new block). It is one conversation
with one person, never a group.

Input is read with `trio.lowlevel.wait_readable` on the descriptor, then `os.read`: cancellable,
no thread, and the descriptor stays blocking (making a terminal's stdin non-blocking would make
its stdout non-blocking too, as both share one open file). Files and /dev/null, which epoll
refuses, are read in a worker thread; reading them never blocks for long.
"""

from __future__ import annotations

import codecs
import itertools
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.control import Control
from rich.text import Text

from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import (
    Attachment,
    Button,
    ButtonPress,
    ChatError,
    ChatEvent,
    ChatLimits,
    ChatRef,
    Command,
    Message,
    RateLane,
    User,
)

__all__ = [
    "CONSOLE_CHAT",
    "CONSOLE_LIMITS",
    "CONSOLE_USER",
    "PLATFORM",
    "ConsoleChat",
    "LocalCommand",
]

log = logging.getLogger(__name__)

PLATFORM: Final = "console"
CONSOLE_CHAT: Final = ChatRef(PLATFORM, "local")
CONSOLE_USER: Final = User("you", "you")
#: Nothing to protect on a terminal: generous numbers keep the demo snappy.
CONSOLE_LIMITS: Final = ChatLimits(
    max_text_length=4000,
    max_button_data_bytes=64,
    max_buttons_per_row=8,
    per_second=50.0,
    burst=50,
)
QUIT_COMMANDS: Final = frozenset({"quit", "exit"})
READ_SIZE: Final = 4096
#: Messages whose text is kept, to print only what an edit adds.
REMEMBERED_MESSAGES: Final = 256
#: Lines of an uploaded text file shown under its name.
PREVIEW_LINES: Final = 8

_BLANK_LINES: Final = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")

BOT_PREFIX: Final = "bot › "
INDENT: Final = " " * len(BOT_PREFIX)
BOT_STYLE: Final = "bold cyan"

#: A command handled by the console itself; it gets the arguments typed after it.
LocalCommand = Callable[[str], Awaitable[None]]


@dataclass
class _Shown:
    """What the terminal shows of one message."""

    text: str
    numbers: tuple[int, ...] = ()  # the numbers of its buttons still on screen


class ConsoleChat:
    """A `ChatClient` on a terminal. See the module docstring."""

    platform = PLATFORM
    limits = CONSOLE_LIMITS
    # The one person at the terminal runs the daemon; nobody else can type here.
    access = AccessPolicy.open()
    rate_lanes: Mapping[str, RateLane] = {}  # a terminal has no rate limit
    task_threads = False

    def __init__(
        self,
        console: Console | None = None,
        *,
        input_fd: int = 0,
        files_dir: Path = Path("anycode-demo-files"),
        local_commands: Mapping[str, LocalCommand] | None = None,
    ) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.files_dir = files_dir
        self.finished = trio.Event()
        """Set when the user typed /quit or the input ended."""
        self.last_output = -math.inf
        """When (trio time) something was last printed."""
        self._fd = input_fd
        self._pollable = True
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._eof = False
        self._local = dict(local_commands or {})
        self._ids = itertools.count(1)
        self._shown: OrderedDict[str, _Shown] = OrderedDict()
        self._buttons: dict[int, tuple[str, Button]] = {}  # number → (message id, button)
        # On a terminal every message ends with a line break, and text added to the last one
        # is printed after moving the cursor back up to its end (`_tail` cells into its last
        # line, whose last character is `_last`), so what the user types always starts on a
        # fresh line. Elsewhere (a pipe, a
        # file) the last line is left open instead (`_line_open`) and the text simply follows.
        self._rewind = self.console.is_terminal
        self._line_open = False
        self._tail = 0
        self._last = " "
        # The message an edit may extend in place (its text is the last thing printed), and
        # whitespace at its end not printed yet (platforms do not show it either).
        self._open: str | None = None
        self._held = ""

    # --- inbound --------------------------------------------------------------------------------

    async def run(
        self,
        events: trio.MemorySendChannel[ChatEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read lines and send what they mean into `events` until /quit or end of input; then
        wait to be cancelled (returning would make a supervisor start the client again)."""
        task_status.started()
        while not self.finished.is_set():
            line = await self._next_line()
            if line is None:
                self.finished.set()
                break
            # The user pressed Enter: what was printed last is no longer just above the cursor.
            self._line_open, self._open, self._held = False, None, ""
            event = await self._interpret(line)
            if event is not None:
                await events.send(event)
        await trio.sleep_forever()

    async def _interpret(self, line: str) -> ChatEvent | None:
        """The event a typed line stands for; None for what the console handles itself."""
        text = line.strip()
        if not text:
            return None
        if text.isdigit() and self._buttons:
            return self._press(int(text))
        if text.startswith("/") and len(text) > 1:
            word, _, args = text[1:].partition(" ")
            name = word.partition("@")[0].lower()
            if name in QUIT_COMMANDS:
                self.finished.set()
                return None
            local = self._local.get(name)
            if local is not None:
                self._close_line()
                await local(args.strip())
                return None
            return Command(CONSOLE_CHAT, CONSOLE_USER, name, args.strip(), self._next_id())
        return Message(CONSOLE_CHAT, CONSOLE_USER, text, self._next_id())

    def _press(self, number: int) -> ButtonPress | None:
        found = self._buttons.get(number)
        if found is None:
            choices = ", ".join(str(n) for n in sorted(self._buttons))
            self._note(f"There is no button {number}; type one of {choices}.")
            return None
        message_id, button = found
        return ButtonPress(
            CONSOLE_CHAT, CONSOLE_USER, message_id, button.data, press_id=self._next_id()
        )

    async def _next_line(self) -> str | None:
        """The next line typed (without its line break), or None at the end of input."""
        while "\n" not in self._buffer:
            if self._eof:
                rest, self._buffer = self._buffer, ""
                return rest if rest.strip() else None
            chunk = await self._read()
            self._eof = not chunk
            self._buffer += self._decoder.decode(chunk, final=self._eof)
        line, _, self._buffer = self._buffer.partition("\n")
        return line.rstrip("\r")

    async def _read(self) -> bytes:
        """The next bytes typed; b"" at the end of input, or when the input cannot be read."""
        try:
            if self._pollable:
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                except OSError:
                    self._pollable = False  # a regular file or /dev/null
                else:
                    return os.read(self._fd, READ_SIZE)
            return await trio.to_thread.run_sync(
                os.read, self._fd, READ_SIZE, abandon_on_cancel=True
            )
        except OSError as exc:
            log.warning("cannot read the terminal: %s", exc.strerror or exc)
            return b""

    def is_group(self, chat: ChatRef) -> bool:
        """Never: the terminal is one person's conversation."""
        return False

    # --- outbound -------------------------------------------------------------------------------

    async def send(
        self,
        chat: ChatRef,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        reply_to: str | None = None,
    ) -> str:
        message_id = self._next_id()
        self._print_block(text.strip())
        self._remember(message_id, text)
        self._show_buttons(message_id, buttons)
        if not self._shown[message_id].numbers:
            # It may be the start of a stream: keep it open for the edits that extend it.
            self._keep_open(message_id, text)
        return message_id

    async def edit(
        self,
        chat: ChatRef,
        message_id: str,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] | None = None,
    ) -> None:
        shown = self._shown.get(message_id)
        rows = [row for row in buttons or () if row]
        if shown is None:
            self._print_block(text.strip(), edited=True)
            self._remember(message_id, text)
            self._show_buttons(message_id, rows)
            return
        old, shown.text = shown.text, text
        extends = text.startswith(old)
        added = text[len(old) :] if extends else ""
        if extends and self._open == message_id and not rows and not shown.numbers:
            self._append(added)
            return
        self._forget_buttons(shown)
        printed = True
        if not extends:
            self._print_block(text.strip(), edited=True)
        elif added.strip():
            # An addition to a message further up: shown on its own, marked when it continues a
            # line ("…written.") rather than starting one.
            continues = (
                old.strip()
                and not old.rstrip(" \t").endswith("\n")
                and not added.lstrip(" \t").startswith("\n")
            )
            self._print_block("…" + added.rstrip() if continues else added.strip())
        else:
            printed = False
        if rows:
            self._show_buttons(message_id, rows)
        elif printed:
            self._keep_open(message_id, text)

    async def answer_press(self, press: ButtonPress, text: str = "") -> None:
        if text:
            self._note(f"↳ {text}")

    async def refuse(self, event: ChatEvent, text: str) -> None:
        """The terminal has one reader, so a refusal is printed like any other message."""
        await self.send(event.chat, text)

    async def upload(self, chat: ChatRef, filename: str, data: bytes, caption: str = "") -> str:
        path = await trio.to_thread.run_sync(_save, self.files_dir, filename, data)
        self._close_line()
        line = Text("📎 ", style=BOT_STYLE)
        line.append(filename, style="bold")
        line.append(f" ({len(data)} bytes) → {path}")
        if caption:
            line.append(f"  {caption}", style="dim")
        self._print(line)
        for preview in _preview(data):
            self._print(Text(f"{INDENT}│ {preview}", style="dim"))
        return self._next_id()

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Nobody can send a file from the terminal, so there is never one to fetch."""
        raise ChatError(f"the console has no file {attachment.name!r}", code="no_files")

    # --- for the program around it --------------------------------------------------------------

    def show(self, renderable: RenderableType) -> None:
        """Print something of the program's own (a tree, a welcome) between the messages,
        wrapped to the terminal's width."""
        self._close_line()
        self._print(renderable, soft_wrap=False)

    @property
    def pending_buttons(self) -> dict[int, str]:
        """The numbered buttons on screen now: number → label."""
        return {number: button.label for number, (_, button) in sorted(self._buttons.items())}

    # --- printing -------------------------------------------------------------------------------

    def _print_block(self, text: str, *, edited: bool = False) -> None:
        """A message on lines of its own."""
        self._close_line()
        head = Text("bot (edited) › " if edited else BOT_PREFIX, style=BOT_STYLE)
        indent = " " * len(head.plain)
        head.append(_indented(text, indent))
        self._print(head, end="\n" if self._rewind else "")
        self._line_open = not self._rewind
        self._tail = cell_len(head.plain.rpartition("\n")[2])
        self._last = head.plain[-1]

    def _keep_open(self, message_id: str, text: str) -> None:
        """Let edits that extend `message_id` continue it in place; hold back its trailing
        whitespace until text follows it."""
        self._open, self._held = message_id, _trailing_space(text)

    def _append(self, added: str) -> None:
        text = self._held + added
        body = text.rstrip()
        self._held = text[len(body) :]
        if not body:
            return
        piece = _indented(body, INDENT)
        if self._rewind:
            # Back onto the message's last character, which is printed again: had its line
            # filled the screen's width exactly, the terminal continues the text by wrapping,
            # as if it had been printed in one go.
            width = max(1, self.console.width)
            column = (self._tail % width or width) - cell_len(self._last)
            self.console.control(Control.move_to_column(max(0, column), -1))
            self._print(Text(self._last + piece))
        else:
            self._print(Text(piece), end="")
        _, newline, last = piece.rpartition("\n")
        self._tail = cell_len(last) if newline else self._tail + cell_len(piece)
        self._last = piece[-1]

    def _show_buttons(self, message_id: str, rows: Sequence[Sequence[Button]]) -> None:
        buttons = [button for row in rows for button in row]
        if not buttons:
            return
        first = max(self._buttons, default=0) + 1
        numbers = tuple(range(first, first + len(buttons)))
        line = Text(INDENT)
        for number, button in zip(numbers, buttons, strict=True):
            self._buttons[number] = (message_id, button)
            line.append(f"[{number}]", style="bold magenta")
            line.append(f" {button.label}  ")
        line.rstrip()
        self._close_line()
        self._print(line)
        self._note("Type a number to answer.")
        self._shown[message_id].numbers = numbers

    def _remember(self, message_id: str, text: str) -> None:
        self._shown[message_id] = _Shown(text)
        while len(self._shown) > REMEMBERED_MESSAGES:
            _, oldest = self._shown.popitem(last=False)
            self._forget_buttons(oldest)

    def _forget_buttons(self, shown: _Shown) -> None:
        for number in shown.numbers:
            self._buttons.pop(number, None)
        shown.numbers = ()

    def _note(self, text: str) -> None:
        self._close_line()
        self._print(Text(f"{INDENT}{text}", style="dim"))

    def _close_line(self) -> None:
        if self._line_open:
            self._print()
        self._line_open, self._open, self._held = False, None, ""

    def _print(
        self, renderable: RenderableType = "", *, end: str = "\n", soft_wrap: bool = True
    ) -> None:
        # Messages are never wrapped by rich: text added to a message could not be.
        self.console.print(renderable, end=end, soft_wrap=soft_wrap)
        self.last_output = trio.current_time()

    def _next_id(self) -> str:
        return str(next(self._ids))


def _indented(text: str, indent: str) -> str:
    """`text` with its lines after the first indented, and no more than one blank line in a row
    (an agent's paragraph break after a tool line would otherwise leave a hole)."""
    return _BLANK_LINES.sub("\n\n", text).replace("\n", "\n" + indent)


def _trailing_space(text: str) -> str:
    return text[len(text.rstrip()) :]


def _save(folder: Path, filename: str, data: bytes) -> Path:
    """Write `data` to `folder`/`filename` without overwriting: hello.md, hello-2.md, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(filename).name or "file"
    stem, suffix = Path(name).stem, Path(name).suffix
    for attempt in itertools.count(1):
        path = folder / (name if attempt == 1 else f"{stem}-{attempt}{suffix}")
        try:
            with path.open("xb") as file:
                file.write(data)
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def _preview(data: bytes) -> list[str]:
    """The first lines of a text file; nothing for binary data."""
    if b"\0" in data[:1024]:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    lines = text.splitlines()
    shown = lines[:PREVIEW_LINES]
    if len(lines) > PREVIEW_LINES:
        shown.append(f"… {len(lines) - PREVIEW_LINES} more lines")
    return shown
