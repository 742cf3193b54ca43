"""Isolation, the bot-wide budget and idle chats, measured on the real daemon (run with
`-m bench -s`).

Each benchmark runs the whole supervision tree of `Daemon` with the real `TelegramClient` over
HTTP against the Telegram stand-in (which enforces 1 message/s per private chat, burst 3, and
30/s for the whole bot, answering 429 with retry_after when pushed). Only the far edges are
replaced: the sandbox provider is the in-memory `FakeProvider`, agents are scripted, and the
store is the real SQLite store with its calls made on the Trio thread (`InlineStore`), so the
autojump clock jumps only when everything really waits. Times are the mock clock's unless a
figure says "real": they count the waits the daemon imposes (pacing, budget, debounce), not CPU.
"""

from __future__ import annotations

import gc
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from anycode_actors import daemon as daemon_module
from anycode_actors.actors.commands import HELP_TEXT
from anycode_actors.agents import TextDelta, TurnEnded
from anycode_actors.chat.telegram import TelegramClient
from anycode_actors.config import Config, config_from_mapping
from anycode_actors.daemon import Daemon
from supervisors import Backoff, ChildEntry
from tests.actor_fakes import FakeAgent, FakeProvider, InlineStore, use_agents
from tests.fakes.telegram import ApiCall, FakeTelegram, FloodLimits, User

pytestmark = pytest.mark.bench

#: Far beyond any wait in these runs: reaching it means something never arrived.
WAIT: Final = 3600.0
STEADY: Final = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0)
#: The stand-in's limits, spelled out: 1/s per private chat (burst 3), 30/s per bot.
TELEGRAM_FLOOD: Final = FloodLimits(
    private_burst=3, private_rate=1.0, global_burst=30, global_rate=30.0
)
HELP_HEAD: Final = HELP_TEXT.split("\n", 1)[0]


# --- the rig --------------------------------------------------------------------------------------


def bench_config(
    tmp: Path,
    telegram: FakeTelegram,
    *,
    limits: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
) -> Config:
    return config_from_mapping(
        {
            "telegram": {
                "bot_token": telegram.token,
                "api_base_url": telegram.base_url,
                "allow_everyone": True,
                "poll_timeout": 30,
            },
            "database": {"path": str(tmp / "anycode.db")},
            "admin": {"socket": str(tmp / "anycode.sock")},
            "session": {"debounce_ms": 500, **(session or {})},
            "limits": limits or {},
        },
        environ={},
        base_dir=tmp,
    )


@asynccontextmanager
async def running_daemon(
    monkeypatch: pytest.MonkeyPatch, telegram: FakeTelegram, config: Config
) -> AsyncIterator[Daemon]:
    """The daemon polling `telegram`, ready once it holds its first long poll."""
    monkeypatch.setattr(daemon_module, "Store", InlineStore)
    assert config.telegram is not None
    async with TelegramClient(config.telegram, backoff=STEADY) as client:
        daemon = Daemon(config, provider=FakeProvider(), clients=[client])
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            with trio.fail_after(WAIT):
                await telegram.wait_until_polling()
            try:
                yield daemon
            finally:
                nursery.cancel_scope.cancel()


async def poll_until(condition: Callable[[], bool], every: float, within: float = WAIT) -> None:
    """Check `condition` every `every` seconds of the (mock) clock.

    Used instead of `FakeTelegram.wait_for` where thousands of calls would re-run an expensive
    predicate after every one of them."""
    with trio.fail_after(within):
        while True:
            if condition():
                return
            await trio.sleep(every)


def answered(telegram: FakeTelegram, chat_id: int, head: str = HELP_HEAD) -> list[ApiCall]:
    """The bot's successful sendMessage calls to `chat_id` whose text begins with `head`."""
    return [
        c
        for c in telegram.calls
        if c.method == "sendmessage"
        and c.status == 200
        and c.params.get("chat_id") == str(chat_id)
        and c.params.get("text", "").startswith(head)
    ]


def percentile(values: Iterable[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of all values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def rate_limited(telegram: FakeTelegram) -> list[ApiCall]:
    return [c for c in telegram.calls if c.status == 429]


def describe(calls: list[ApiCall]) -> str:
    """How many calls, and for the first few: method, chat and the start of the text."""
    shown = [
        f"{c.method} to {c.params.get('chat_id')}: {c.params.get('text', '')[:30]!r}"
        for c in calls[:3]
    ]
    return f"{len(calls)}" + (f" ({'; '.join(shown)})" if shown else "")


# --- 1. isolation: a flooded chat costs the others nothing ---------------------------------------

FLOOD: Final = 400
ASKS: Final = 20
#: Chat B asks once a second: its own limit (1 message/s per chat), so any wait it sees comes
#: from chat A, not from B outrunning its own bucket.
SPACING: Final = 1.0


async def test_bench_a_flooded_chat_does_not_delay_another(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chat A sends 400 /help at once (each answer paced at 1/s per chat by the stand-in), then
    chat B sends /help 20 times, once a second. B's latency is from the update's injection into
    the stand-in to the stand-in recording the bot's sendMessage to B, on the mock clock; the
    real (wall-clock, CPU included) latency of the same answers is printed beside it.

    Command pacing is lifted (1000/s per person) so that all 400 reach chat A's actor: with the
    default pacing the router would drop 395 of them before any chat saw them, which is another
    protection and would not test isolation. Target: B's p99 ≤ 1 s.

        python -m pytest -m bench -s tests/test_bench_isolation.py -k flooded_chat
    """
    telegram = FakeTelegram(flood_limits=TELEGRAM_FLOOD)
    await telegram.start(nursery)
    ada, bob = User(111, "Ada"), User(222, "Bob")
    config = bench_config(
        tmp_path, telegram, limits={"commands_per_second": 1000.0, "command_burst": 1000}
    )
    async with running_daemon(monkeypatch, telegram, config) as daemon:
        for _ in range(FLOOD):
            telegram.inject_message(ada.id, ada, "/help")
        start = trio.current_time()
        injected: list[float] = []
        real: list[float] = []
        for n in range(ASKS):
            await trio.sleep_until(start + n * SPACING)
            injected.append(trio.current_time())
            real_start = time.perf_counter()
            telegram.inject_message(bob.id, bob, "/help")
            with trio.fail_after(WAIT):
                await telegram.wait_for(lambda n=n: len(answered(telegram, bob.id)) > n)
            real.append(time.perf_counter() - real_start)
        answers = answered(telegram, bob.id)
        router = daemon.registry.get("root/router")
        a_answers = len(answered(telegram, ada.id))
    assert len(answers) == ASKS
    latencies = [call.at - at for call, at in zip(answers, injected, strict=True)]
    info = router.info if router is not None else {}
    print(
        f"\nisolation: chat B /help latency p50 {statistics.median(latencies):.3f} s, "
        f"p99 {percentile(latencies, 0.99):.3f} s, max {max(latencies):.3f} s "
        f"(mock clock; real p50 {statistics.median(real) * 1000:.1f} ms, "
        f"p99 {percentile(real, 0.99) * 1000:.1f} ms) over {ASKS} asks while chat A flooded "
        f"{FLOOD} /help (A answered {a_answers}, router shed {info.get('shed')}, "
        f"coalesced {info.get('coalesced')}); 429s: {describe(rate_limited(telegram))}"
    )


# --- 2. the budget: 200 streams under the bot's 30/s ---------------------------------------------

SESSIONS: Final = 200
WORDS: Final = 300
WORD_PACE: Final = 0.02  # 300 words in 6 s
WORD: Final = re.compile(r"\bw\d{3}\b")
BOT_RATE: Final = 30.0


def word(n: int) -> str:
    return f"w{n:03d}"


class WordAgent(FakeAgent):
    """Answers any prompt with `WORDS` distinct words, one every `WORD_PACE` seconds, once `go`
    is set."""

    def __init__(self, nursery: trio.Nursery, go: trio.Event) -> None:
        super().__init__()
        self._nursery = nursery
        self._go = go

    async def prompt(self, text: str) -> Any:
        turn = await super().prompt(text)  # no scripted turn: it runs until the words are out
        self._nursery.start_soon(self._speak)
        return turn

    async def _speak(self) -> None:
        await self._go.wait()
        for n in range(WORDS):
            await trio.sleep(WORD_PACE)
            self.emit(TextDelta(text=word(n) + " "))
        self.emit(TurnEnded(stop_reason="end_turn"))


def use_word_agents(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, go: trio.Event
) -> list[WordAgent]:
    """Every session's stream talks to a `WordAgent` of its own (`use_agent` shares one)."""
    agents: list[WordAgent] = []

    def word_agent() -> WordAgent:
        agent = WordAgent(nursery, go)
        agents.append(agent)
        return agent

    use_agents(monkeypatch, word_agent, agent_name="word-agent")
    return agents


def shown_words(telegram: FakeTelegram, chat_id: int) -> Counter[str]:
    return Counter(WORD.findall("\n".join(m.text for m in telegram.bot_messages(chat_id))))


def paced_calls(
    telegram: FakeTelegram, chats: set[str], after: float, until: float = math.inf
) -> list[ApiCall]:
    """sendMessage and editMessageText calls to `chats` that arrived after `after`, until
    `until` (included)."""
    return [
        c
        for c in telegram.calls
        if c.method in ("sendmessage", "editmessagetext")
        and c.params.get("chat_id") in chats
        and after < c.at <= until
    ]


async def test_bench_200_streams_share_the_bot_budget(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 people each start a session in their own private chat at once; once every chat shows
    its "Starting ..." notice, all 200 agents stream 300 words over 6 s together. Driven
    through the real daemon: router, chat actors, session actors, stream actors (each with a
    scripted agent of its own), 200 flushers drawing from the Telegram budget.

    The agents wait for the notices because the notices alone need 200 / 30 = 6.7 s of the
    bot's budget: streams that began at once would be over before their chat's first message
    could go, and each would be a single send of the finished text, which tests nothing.

    Reported: 429s (target 0); every word exactly once in each chat's final text; for the
    streaming (first word to the last chat showing its last word) and for the whole run (first
    /task to then): sendMessage + editMessageText requests, wall time on the mock clock, and
    requests / 30 per s, the least the bot's limit allows for them (target ratio ≤ 1.3).

        python -m pytest -m bench -s tests/test_bench_isolation.py -k bot_budget
    """
    telegram = FakeTelegram(flood_limits=TELEGRAM_FLOOD)
    await telegram.start(nursery)
    go = trio.Event()
    agents = use_word_agents(monkeypatch, nursery, go)
    config = bench_config(
        tmp_path,
        telegram,
        limits={"max_sessions_total": SESSIONS},
        # Sessions stay open after their turn: no "completed" notices while measuring.
        session={"idle_minutes": 60, "timeout_minutes": 600},
    )
    people = [User(10_000 + n, f"user{n}") for n in range(SESSIONS)]
    chats = {str(person.id) for person in people}
    real_start = time.perf_counter()
    async with running_daemon(monkeypatch, telegram, config):
        start = trio.current_time()
        for person in people:
            telegram.inject_message(person.id, person, "/task stream your words")
        with trio.fail_after(WAIT):
            await telegram.wait_for(
                lambda: (
                    sum(
                        c.status == 200 and c.params.get("text", "").startswith("Starting ")
                        for c in paced_calls(telegram, chats, -math.inf)
                    )
                    >= SESSIONS
                )
            )
        streaming = trio.current_time()
        go.set()
        waiting = {person.id for person in people}

        def all_shown() -> bool:
            waiting.difference_update(
                [chat for chat in waiting if shown_words(telegram, chat)[word(WORDS - 1)]]
            )
            return not waiting

        await poll_until(all_shown, every=0.5)
    real = time.perf_counter() - real_start
    last = word(WORDS - 1)
    finished = max(
        c.at
        for c in paced_calls(telegram, chats, -math.inf)
        if c.status == 200 and last in c.params.get("text", "")
    )
    expected = Counter(word(n) for n in range(WORDS))
    wrong = [p.id for p in people if shown_words(telegram, p.id) != expected]

    def figures(began: float, after: float) -> str:
        """The requests after `after` until the last word showed, and the time from `began`
        until then, against the least the bot's limit allows for them."""
        calls = paced_calls(telegram, chats, after, finished)
        edits = sum(1 for c in calls if c.method == "editmessagetext")
        wall, least = finished - began, len(calls) / BOT_RATE
        return (
            f"{len(calls)} requests ({edits} edits), wall {wall:.1f} s vs least {least:.1f} s: "
            f"ratio {wall / least:.2f}"
        )

    print(
        f"\nbudget: {SESSIONS} sessions x {WORDS} words at {BOT_RATE:g}/s per bot: "
        f"429s {describe(rate_limited(telegram))}; every word exactly once in "
        f"{SESSIONS - len(wrong)}/{SESSIONS} chats; streaming: {figures(streaming, streaming)}; "
        f"whole run: {figures(start, -math.inf)} (real time {real:.0f} s, {len(agents)} agents)"
    )
    assert wrong == [], f"chats whose text lost or repeated words: {wrong[:10]}"


# --- 3. memory: 10,000 chats that go quiet ------------------------------------------------------

CHATS: Final = 10_000
WARM_UP: Final = 100
WAVE: Final = 500
MIB: Final = 1 << 20


def vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def chat_units(entries: Iterable[ChildEntry]) -> int:
    return sum(1 for e in entries if e.parent == "root/chats" and e.id.startswith("chat:"))


def forget_stand_in_records(telegram: FakeTelegram, chat_ids: Iterable[int]) -> None:
    """Drop what the stand-in remembers of `chat_ids` (chats, messages, transcripts, users, flood
    buckets) and every recorded call, so its memory does not count as the daemon's. The stand-in
    has no public way to forget; this is the test reaching into its own fake."""
    telegram._calls.clear()
    for chat_id in chat_ids:
        telegram._chats.pop(chat_id, None)
        telegram._users.pop(chat_id, None)
        telegram._chat_buckets.pop(chat_id, None)


def pymalloc_arenas() -> tuple[int, int]:
    """(bytes in pymalloc's arenas, bytes in their live blocks), from `sys._debugmallocstats`,
    which writes to the C-level stderr: read through a temporary file."""
    with tempfile.TemporaryFile(mode="w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    arenas = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    live = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    assert arenas is not None and live is not None, "no arena figures from _debugmallocstats"
    arena_size = re.search(r"arenas \* ([\d,]+) bytes/arena", text)
    size = int(arena_size.group(1).replace(",", "")) if arena_size else 1 << 20
    return int(arenas.group(1).replace(",", "")) * size, int(live.group(1).replace(",", ""))


def settled_rss() -> tuple[int, int, Counter[str]]:
    """VmRSS (KiB), allocated blocks and live objects by type, after a full collection."""
    gc.collect()
    kinds = Counter(type(o).__name__ for o in gc.get_objects())
    return vm_rss_kib(), sys.getallocatedblocks(), kinds


async def say_help_and_wait(telegram: FakeTelegram, people: list[User]) -> None:
    """Each person sends /help, in waves of `WAVE`; returns when every one is answered. The
    stand-in forgets a chat as soon as it is answered (see `forget_stand_in_records`), so what
    it holds at any moment is one wave, not 10,000 chats' records."""
    for start in range(0, len(people), WAVE):
        wave = people[start : start + WAVE]
        for person in wave:
            telegram.inject_message(person.id, person, "/help")
        await poll_until(partial(_wave_answered, telegram, {p.id for p in wave}), every=5.0)


def _wave_answered(telegram: FakeTelegram, pending: set[int]) -> bool:
    """Whether every chat in `pending` is answered; forgets those that are, as they are."""
    answered_now = {
        int(call.params["chat_id"])
        for call in telegram._calls
        if call.method == "sendmessage" and call.status == 200
    }
    pending.difference_update(answered_now)
    forget_stand_in_records(telegram, answered_now)
    return not pending


async def test_bench_10000_quiet_chats_leave_nothing_behind(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 distinct private chats send /help once each; then session.chat_idle_minutes (10)
    pass. Reported: chat units in the actor tree (`registry.snapshot()`) when all are answered
    and after the idle period (target 0), the router's map of chats after it (0), and the growth
    of the process's VmRSS over the run (target ≤ 20 MiB). As a cross-check, the allocator's
    view: pymalloc's arenas and the bytes of live blocks in them (an arena goes back to the
    system only when every block in it is free, so RSS keeps the peak of many live chat units
    while a few survivors are spread over the arenas), allocated blocks per live chat unit and
    at the end, and live objects by type.

    How the stand-in (same process) is kept out: a warm-up of 100 chats runs first, so one-time
    allocations (connections, code paths, caches) are in the baseline; then the stand-in's
    records of the warm-up are dropped and the baseline is read after `gc.collect()`. The
    10,000 chats write in waves of 500 (the next wave as soon as the last is answered, a few
    hundred a second at most of the bot's 30 answers a second), and the stand-in forgets each
    chat (chats, messages, transcripts, users, flood buckets, recorded calls) once it is
    answered: otherwise its records of 10,000 chats, freed only at the end, leave pymalloc's
    arenas pinned by whatever the process allocated between them, and RSS measures the
    stand-in's peak, not the daemon.

        python -m pytest -m bench -s tests/test_bench_isolation.py -k quiet_chats
    """
    telegram = FakeTelegram(flood_limits=TELEGRAM_FLOOD)
    await telegram.start(nursery)
    config = bench_config(tmp_path, telegram)
    idle = float(config.session.chat_idle_minutes) * 60
    warm = [User(1_000_000 + n, f"warm{n}") for n in range(WARM_UP)]
    people = [User(2_000_000 + n, f"user{n}") for n in range(CHATS)]
    real_start = time.perf_counter()
    async with running_daemon(monkeypatch, telegram, config) as daemon:
        await say_help_and_wait(telegram, warm)
        await trio.sleep(idle + 60)
        forget_stand_in_records(telegram, [p.id for p in warm])
        rss_start, blocks_start, kinds_start = settled_rss()
        arenas_start, live_start = pymalloc_arenas()
        units_start = chat_units(daemon.registry.snapshot())

        began = trio.current_time()
        await say_help_and_wait(telegram, people)
        all_answered_after = trio.current_time() - began
        units_busy = chat_units(daemon.registry.snapshot())
        rss_busy, blocks_busy, _ = settled_rss()

        await trio.sleep(idle + 60)
        units_after = chat_units(daemon.registry.snapshot())
        router = daemon.registry.get("root/router")
        lines_after = router.info.get("chats") if router is not None else None
        _, blocks_with_stand_in, _ = settled_rss()
        forget_stand_in_records(telegram, [p.id for p in people])
        rss_end, blocks_end, kinds_end = settled_rss()
        arenas, live = pymalloc_arenas()
    real = time.perf_counter() - real_start
    stand_in_blocks = blocks_with_stand_in - blocks_end
    per_unit_blocks = (blocks_busy - blocks_start - stand_in_blocks) / CHATS
    grown = (kinds_end - kinds_start).most_common(4)
    print(
        f"\nmemory: {CHATS} chats answered in {all_answered_after:.0f} s (mock); chat units "
        f"{units_start} before, {units_busy} when all answered, {units_after} after "
        f"{idle / 60:g} min idle (router lines {lines_after}); VmRSS start "
        f"{rss_start / 1024:.1f} MiB, all answered {rss_busy / 1024:.1f} MiB (stand-in "
        f"included), end {rss_end / 1024:.1f} MiB: growth {(rss_end - rss_start) / 1024:+.1f} "
        f"MiB; pymalloc arenas {arenas_start / MIB:.1f} -> {arenas / MIB:.1f} MiB holding "
        f"live blocks of {live_start / MIB:.1f} -> {live / MIB:.1f} MiB "
        f"({(live - live_start) / MIB:+.1f} MiB); allocated blocks: {per_unit_blocks:.0f} per "
        f"live chat unit, "
        f"{blocks_end - blocks_start:+d} at the end (stand-in's {stand_in_blocks} dropped); "
        f"objects grown by type {grown} (real time {real:.0f} s)"
    )
    assert units_after == 0
    assert lines_after == 0
