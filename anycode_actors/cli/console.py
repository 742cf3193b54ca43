"""The rich view of the live actor tree, for `anycode tree` and `anycode run --console`.

`TreeView(snapshot)` draws one `TreeSnapshot`: a title line, a header, then one line per
supervisor or actor (tree guides + id, kind, state, uptime, restarts, inbox depth/capacity),
each followed, when there is something to say, by detail lines: the last error in red, then for
a session its status, events so far, agent, sandbox id and chat, or for any other child what it
reported (`key value · key value`).

Every line is cut to the console's width (with an ellipsis) rather than wrapped, so the view
stays a tree at 80 columns or any other width; `--json` has every field in full.

The live views redraw about four times a second from a trio task (no refresh thread):
`watch_daemon` polls the admin socket, `watch_tree` reads the registry of this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import trio
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from anycode_actors.actors.admin import (
    AdminAddress,
    AdminError,
    DaemonUnreachable,
    TreeSnapshot,
    fetch_snapshot,
)
from anycode_actors.cli.common import configure_logging
from anycode_actors.config import Config
from supervisors import ChildEntry, ChildState, JsonValue

log = logging.getLogger(__name__)

REFRESH_INTERVAL: Final = 0.25
"""Seconds between two redraws of a live view (and two snapshot requests)."""
LOG_FILE_NAME: Final = "anycode.log"
"""Where `anycode run --console` writes its logs, next to the database."""

# Fixed columns right of the tree: kind, state, uptime, restarts, inbox (one space before each).
_KIND_WIDTH: Final = 10
_STATE_WIDTH: Final = 10
_UPTIME_WIDTH: Final = 6
_RESTARTS_WIDTH: Final = 3
_INBOX_WIDTH: Final = 7
_COLUMNS_WIDTH: Final = (
    _KIND_WIDTH + _STATE_WIDTH + _UPTIME_WIDTH + _RESTARTS_WIDTH + _INBOX_WIDTH + 5
)
_MIN_NAME_WIDTH: Final = 12

_STATE_STYLES: Final = {
    ChildState.RUNNING: "green",
    ChildState.STARTING: "cyan",
    ChildState.RESTARTING: "yellow",
    ChildState.STOPPING: "yellow",
    ChildState.STOPPED: "dim",
    ChildState.FAILED: "bold red",
}
# A session's own status (store.SessionStatus values) in the same palette.
_STATUS_STYLES: Final = {
    "pending": "cyan",
    "starting": "cyan",
    "running": "green",
    "completed": "dim",
    "cancelled": "yellow",
    "failed": "red",
}
_SESSION_KEYS: Final = ("session", "chat", "agent", "status", "sandbox", "events")


def format_duration(seconds: float) -> str:
    """At most six characters: 42s, 12m03s, 3h04m, 2d03h."""
    total = max(0, int(seconds))
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def uptime_of(entry: ChildEntry, now: str) -> str:
    """How long the current incarnation has run, or "-" when it is not running."""
    if entry.started_at is None or entry.state not in (ChildState.RUNNING, ChildState.STOPPING):
        return "-"
    try:
        elapsed = datetime.fromisoformat(now) - datetime.fromisoformat(entry.started_at)
    except ValueError:
        return "?"
    return format_duration(elapsed.total_seconds())


def _inbox_text(entry: ChildEntry) -> Text:
    if entry.inbox_depth is None:
        return Text("-", style="dim")
    capacity = "∞" if entry.inbox_capacity is None else str(entry.inbox_capacity)
    style = ""
    if entry.inbox_capacity:
        if entry.inbox_depth >= entry.inbox_capacity:
            style = "bold red"
        elif entry.inbox_depth * 4 >= entry.inbox_capacity * 3:
            style = "yellow"
    return Text(f"{entry.inbox_depth}/{capacity}", style=style)


def _value_text(value: JsonValue) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def is_session(entry: ChildEntry) -> bool:
    return "session" in entry.info and "agent" in entry.info


def _detail_lines(entry: ChildEntry, now: str = "") -> list[Text]:
    """What goes under the entry's own line: its last error, then what it reported (the warm
    pool's sandboxes one a line, with their age at `now`)."""
    lines = []
    if entry.last_error:
        lines.append(Text(f"✗ {entry.last_error}", style="red"))
    info = entry.info
    if is_session(entry):
        # Most telling first. A line cut at the screen's edge loses the chat first, which the
        # tree shows anyway as chat:<key> (and --json has everything).
        status = _value_text(info.get("status"))
        line = Text(status, style=_STATUS_STYLES.get(status, "dim"))
        parts = [
            f"{_value_text(info.get('events', 0))} events",
            _value_text(info.get("agent")),
            f"sandbox {_value_text(info.get('sandbox') or '-')}",
        ]
        if info.get("chat") is not None:
            parts.append(_value_text(info["chat"]))
        extra = _pairs({k: v for k, v in info.items() if k not in _SESSION_KEYS})
        if extra:
            parts.append(extra)
        line.append("".join(f" · {part}" for part in parts), style="dim")
        lines.append(line)
    elif info:
        pooled = info.get("pooled")
        text = _pairs({k: v for k, v in info.items() if k != "pooled"})
        if text:
            lines.append(Text(text, style="dim"))
        if isinstance(pooled, list):
            lines.extend(_pooled_line(item, now) for item in pooled if isinstance(item, dict))
    return lines


def _pooled_line(item: dict[str, JsonValue], now: str) -> Text:
    """One sandbox of the warm pool: its agent, state, age and sandbox id."""
    state = _value_text(item.get("state"))
    line = Text(state, style="green" if state == "ready" else "cyan")
    age = "?"
    since = item.get("since")
    if isinstance(since, str) and now:
        with contextlib.suppress(ValueError):
            age = format_duration(
                (datetime.fromisoformat(now) - datetime.fromisoformat(since)).total_seconds()
            )
    parts = [_value_text(item.get("agent")), f"age {age}", f"sandbox {item.get('sandbox') or '-'}"]
    line.append("".join(f" · {part}" for part in parts), style="dim")
    return line


def _pairs(info: dict[str, JsonValue]) -> str:
    parts = []
    for key, value in info.items():
        if value is None or value is False or value in ("", [], {}):
            continue
        parts.append(key if value is True else f"{key} {_value_text(value)}")
    return " · ".join(parts)


@dataclass(frozen=True)
class _Node:
    entry: ChildEntry
    guide: str
    """Tree guides before the id: ancestors' verticals plus this node's own branch."""
    below: str
    """Guides before this node's detail lines: the verticals on to its siblings and children."""


def _layout(entries: Sequence[ChildEntry]) -> Iterator[_Node]:
    """Entries in tree order with their guide strings. Parents come before their children in
    a registry snapshot; an entry whose parent is missing is drawn as a root."""
    paths = {entry.path for entry in entries}
    children: dict[str | None, list[ChildEntry]] = {}
    for entry in entries:
        parent = entry.parent if entry.parent in paths else None
        children.setdefault(parent, []).append(entry)

    def walk(parent: str | None, above: str, is_root: bool) -> Iterator[_Node]:
        siblings = children.get(parent, [])
        for index, entry in enumerate(siblings):
            last = index == len(siblings) - 1
            if is_root:
                guide, continuation = "", ""
            else:
                guide = above + ("└─ " if last else "├─ ")
                continuation = above + ("   " if last else "│  ")
            has_children = bool(children.get(entry.path))
            below = continuation + ("│ " if has_children else "  ")
            yield _Node(entry, guide, below)
            yield from walk(entry.path, continuation, False)

    yield from walk(None, "", True)


class TreeView:
    """One snapshot as lines no wider than the console (see the module docstring)."""

    def __init__(self, snapshot: TreeSnapshot) -> None:
        self.snapshot = snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        name_width = max(_MIN_NAME_WIDTH, width - _COLUMNS_WIDTH)
        yield _fit(self._title(), width)
        header = Text(style="bold")
        header.append("ACTOR".ljust(name_width))
        header.append(
            f" {'KIND':<{_KIND_WIDTH}} {'STATE':<{_STATE_WIDTH}} {'UP':>{_UPTIME_WIDTH}}"
            f" {'RST':>{_RESTARTS_WIDTH}} {'INBOX':>{_INBOX_WIDTH}}"
        )
        yield _fit(header, width)
        for node in _layout(self.snapshot.entries):
            yield _fit(self._row(node, name_width), width)
            for detail in _detail_lines(node.entry, self.snapshot.now):
                line = Text()
                line.append(node.below, style="dim")
                line.append_text(detail)
                yield _fit(line, width)

    def _title(self) -> Text:
        daemon = self.snapshot.daemon
        entries = self.snapshot.entries
        sessions = sum(1 for entry in entries if is_session(entry))
        title = Text()
        title.append(f"anycode {daemon.id}", style="bold")
        title.append(
            f" · {daemon.version} · pid {daemon.pid} · up {format_duration(daemon.uptime)}"
            f" · {len(entries)} children · {sessions} session{'' if sessions == 1 else 's'}",
            style="dim",
        )
        return title

    def _row(self, node: _Node, name_width: int) -> Text:
        entry = node.entry
        name = Text(node.guide, style="dim")
        name.append(entry.id, style="bold" if entry.kind == "supervisor" else "")
        name.truncate(name_width, overflow="ellipsis", pad=True)
        row = Text()
        row.append_text(name)
        row.append(" ")
        row.append(_cell(entry.kind, _KIND_WIDTH), style="blue")
        row.append(" ")
        row.append(_cell(str(entry.state), _STATE_WIDTH), style=_STATE_STYLES.get(entry.state, ""))
        row.append(" ")
        row.append(uptime_of(entry, self.snapshot.now).rjust(_UPTIME_WIDTH))
        row.append(" ")
        restarts = str(entry.restarts).rjust(_RESTARTS_WIDTH)
        row.append(restarts, style="yellow" if entry.restarts else "dim")
        row.append(" ")
        inbox = _inbox_text(entry)
        inbox.truncate(_INBOX_WIDTH, overflow="ellipsis")
        inbox.pad_left(_INBOX_WIDTH - inbox.cell_len)
        row.append_text(inbox)
        return row


def _cell(text: str, width: int) -> str:
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def _fit(line: Text, width: int) -> Text:
    line.no_wrap = True
    line.overflow = "ellipsis"
    line.truncate(width, overflow="ellipsis")
    line.rstrip()
    return line


def snapshot_json(snapshot: TreeSnapshot) -> str:
    """The snapshot exactly as the admin socket serves it, indented for people and scripts."""
    return json.dumps(snapshot.to_json(), indent=2)


class _LiveFrame:
    """What a live view shows: the latest snapshot (if any) and a status line."""

    def __init__(self, snapshot: TreeSnapshot | None, status: Text) -> None:
        self.snapshot = snapshot
        self.status = status

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.snapshot is not None:
            yield TreeView(self.snapshot)
        yield _fit(self.status, options.max_width)


def _status(text: str, style: str) -> Text:
    stamp = datetime.now().strftime("%H:%M:%S")
    return Text(f"{stamp} {text}", style=style)


async def _show(
    console: Console,
    next_frame: Callable[[], Awaitable[_LiveFrame]],
) -> None:
    """Redraw `next_frame()` every REFRESH_INTERVAL until cancelled."""
    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        while True:
            live.update(await next_frame(), refresh=True)
            await trio.sleep(REFRESH_INTERVAL)


async def watch_daemon(
    address: AdminAddress, console: Console, first: TreeSnapshot | None = None
) -> None:
    """The live view of the daemon at `address`, until cancelled.

    When the daemon stops answering the last tree stays on screen under a warning, and the
    view keeps asking until it answers again.
    """
    last = first

    async def next_frame() -> _LiveFrame:
        nonlocal last
        try:
            last = await fetch_snapshot(address)
        except DaemonUnreachable:
            return _LiveFrame(
                last, _status(f"daemon not reachable at {address}, retrying", "bold yellow")
            )
        except AdminError as exc:
            return _LiveFrame(last, _status(f"{address}: {exc}; retrying", "bold red"))
        return _LiveFrame(last, _status(f"live from {address} · Ctrl+C to quit", "dim"))

    await _show(console, next_frame)


async def watch_tree(snapshot: Callable[[], TreeSnapshot], console: Console, note: str) -> None:
    """The live view of a tree in this process (`snapshot` reads its registry), until
    cancelled."""

    async def next_frame() -> _LiveFrame:
        return _LiveFrame(snapshot(), _status(note, "dim"))

    await _show(console, next_frame)


async def until_signalled(main: Callable[[], Awaitable[object]]) -> None:
    """Run `main` until it returns or SIGINT/SIGTERM arrives (then cancel it and return)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_main() -> None:
                await main()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_main)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


# --- anycode run --console ----------------------------------------------------------------------


def log_file_for(config: Config) -> Path:
    """anycode.log next to the database (next to the admin socket for an in-memory one)."""
    database = config.database.path
    folder = config.admin.socket.parent if str(database) == ":memory:" else database.parent
    return folder / LOG_FILE_NAME


def run_with_console(config: Config, *, log_level: str, console: Console) -> int:
    """`anycode run --console`: the daemon with its live tree in the foreground.

    The terminal belongs to the view, so logs go to `log_file_for(config)`. SIGINT or SIGTERM
    shuts the daemon down in order as `anycode run` does, and the view keeps drawing until
    the last child has stopped.
    """
    log_file = log_file_for(config)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(getattr(logging, log_level))
    configure_logging(log_level)  # basicConfig is a no-op now; this quietens noisy libraries
    console.print(Text(f"logs go to {log_file}", style="dim"))
    try:
        return trio.run(_run_daemon_with_view, config, console)
    finally:
        root.removeHandler(handler)
        handler.close()


async def _run_daemon_with_view(config: Config, console: Console) -> int:
    from anycode_actors.daemon import Daemon

    daemon = Daemon(config)
    note = f"Ctrl+C stops the daemon · logs in {log_file_for(config)}"
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(watch_tree, daemon.admin.snapshot, console, note)
            async with trio.open_nursery() as inner:
                await inner.start(daemon.run)
                log.info("anycode is running (daemon id %s)", daemon.daemon_id)
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    break
                inner.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    log.info("stopped")
    return 0
