"""The real daemon against the chat stand-ins, without Docker: what every chat-fault test shares.

A rig is the whole supervision tree of `anycode_actors.daemon.Daemon` (router, chat actors,
flushers, session actors, the real `TelegramClient` or `SlackClient` over real HTTP and
WebSockets on loopback), with only the far edges replaced: the sandbox provider is the in-memory
`FakeProvider`, the agent is the scripted `FakeAgent` (`use_agent`), and the store is the real
SQLite store with its calls made on the Trio thread (`InlineStore`), so the `autojump_clock`
jumps only when everything really waits. A 30-second `retry_after` costs microseconds.

The conversation every fault test plays is the same: the person starts ``/task start``, then sends
numbered follow-ups (``note 1``, ``note 2``, ...) while the fault happens. The agent answers each
prompt with words that name it (`answer_for`), so at the end:

- `Conversation.prompts_seen` (what the agent was asked, in order) shows updates or envelopes
  lost (a note missing) or handled twice (a note twice);
- `Conversation.shown` (the text of every bot message, as the person sees it now) shows words lost
  (an answer missing) or repeated (an answer twice).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio

from anycode_actors import daemon as daemon_module
from anycode_actors.agents import AgentEvent, TextDelta, TurnEnded
from anycode_actors.chat.slack import SlackClient
from anycode_actors.chat.telegram import TelegramClient
from anycode_actors.config import Config, config_from_mapping
from anycode_actors.daemon import Daemon
from supervisors import Backoff
from tests.actor_fakes import FakeAgent, FakeProvider, InlineStore, use_agent
from tests.fakes.slack import ACK_DEADLINE, FakeSlack
from tests.fakes.telegram import ApiCall, FakeTelegram
from tests.fakes.telegram import User as TgUser

ADA: Final = TgUser(111, "Ada", username="ada")
SLACK_ADA: Final = "U0ADA"
#: Seconds between the words of an answer: a 13-word answer takes about 4 s to stream.
WORD_PACE: Final = 0.3
#: Generous bounds on the mock clock: waits end long before, or the test has failed.
WAIT: Final = 600.0
#: No jitter: every wait in a test is the same on every run.
STEADY: Final = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0)


def note(number: int) -> str:
    return f"note {number}"


def answer_for(prompt: str) -> str:
    """The agent's whole answer to `prompt`: words that say which prompt they answer."""
    return f"Answer to «{prompt}»: alpha bravo charlie delta echo foxtrot. Done with «{prompt}»."


def answer_turn(prompt: str) -> list[AgentEvent]:
    """The turn that answers `prompt`, streamed in small pieces as a real agent does."""
    words = answer_for(prompt).split(" ")
    chunks = [word + " " for word in words[:-1]] + [words[-1]]
    return [*(TextDelta(text=chunk) for chunk in chunks), TurnEnded(stop_reason="end_turn")]


class EchoAgent(FakeAgent):
    """A scripted agent that answers each prompt (`answer_turn`), one word every `pace`
    seconds, so the daemon streams it as a message that is sent and then edited a few times."""

    def __init__(self, nursery: trio.Nursery, pace: float = WORD_PACE) -> None:
        super().__init__()
        self._nursery = nursery
        self._pace = pace

    async def prompt(self, text: str) -> Any:
        turn = await super().prompt(text)  # no scripted turn: it runs until the words are out
        self._nursery.start_soon(self._answer, text)
        return turn

    async def _answer(self, text: str) -> None:
        for event in answer_turn(text):
            await trio.sleep(self._pace)
            self.emit(event)


def fault_config(tmp: Path, platform: dict[str, Any]) -> Config:
    """The daemon's configuration for a fault test: `platform` is the [telegram] or [slack]
    table. Sessions stay open between notes (idle 60 min), nobody is paced by the router
    (its pacing drops messages on purpose, which is not the fault under test), debounce 500 ms.
    """
    return config_from_mapping(
        {
            **platform,
            "database": {"path": str(tmp / "anycode.db")},
            "admin": {"socket": str(tmp / "anycode.sock")},
            "session": {"debounce_ms": 500, "idle_minutes": 60, "timeout_minutes": 600},
            "limits": {"commands_per_second": 100.0, "command_burst": 100},
        },
        environ={},
        base_dir=tmp,
    )


@dataclass
class Conversation(ABC):
    """What the agent was asked and what the person sees; the same for both platforms."""

    agent: EchoAgent
    provider: FakeProvider
    daemon: Daemon
    notes_sent: list[str] = field(default_factory=list)

    @property
    def prompts_seen(self) -> list[str]:
        return list(self.agent.prompts)

    @abstractmethod
    def shown(self) -> str:
        """Everything the person sees in the chat, as one text (each platform's rig says)."""

    async def wait_for_prompts(self, count: int) -> None:
        await self.agent.wait_for_prompts(count, within=WAIT)

    def answers_shown(self) -> dict[str, int]:
        """For the start prompt and each note sent: how often its answer is visible in full."""
        shown = self.shown()
        return {prompt: shown.count(answer_for(prompt)) for prompt in ["start", *self.notes_sent]}

    def assert_every_answer_shown_once(self) -> None:
        counts = self.answers_shown()
        assert counts == dict.fromkeys(counts, 1), f"answers shown {counts}:\n{self.shown()}"

    def assert_every_note_asked_once(self, *, in_order: bool = True) -> None:
        """The agent got the start prompt and every note exactly once (in the order sent,
        unless `in_order` is false: Slack's redeliveries come after newer events)."""
        expected = ["start", *self.notes_sent]
        if in_order:
            assert self.prompts_seen == expected
        else:
            assert sorted(self.prompts_seen) == sorted(expected), self.prompts_seen


@contextmanager
def _patched(monkeypatch: pytest.MonkeyPatch, agent: EchoAgent) -> Iterator[None]:
    use_agent(monkeypatch, agent)
    monkeypatch.setattr(daemon_module, "Store", InlineStore)
    yield


@asynccontextmanager
async def _running(daemon: Daemon) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


# --- Telegram -------------------------------------------------------------------------------------


@dataclass
class TelegramConversation(Conversation):
    telegram: FakeTelegram = field(default_factory=FakeTelegram)
    client: TelegramClient | None = None

    def shown(self) -> str:
        return "\n".join(m.text for m in self.telegram.bot_messages(ADA.id))

    async def say(self, text: str) -> None:
        """Ada sends `text` in her private chat with the bot."""
        self.telegram.inject_message(ADA.id, ADA, text)
        await trio.lowlevel.checkpoint()

    async def send_note(self, number: int) -> None:
        self.notes_sent.append(note(number))
        await self.say(note(number))

    async def wait_for_shown(self, fragment: str) -> None:
        with trio.fail_after(WAIT):
            await self.telegram.wait_for(lambda: fragment in self.shown())

    def chat_calls(self) -> list[ApiCall]:
        """Every request the stand-in got that names Ada's chat, in order."""
        return [c for c in self.telegram.calls if c.params.get("chat_id") == str(ADA.id)]


def retry_after_of(call: ApiCall) -> int:
    """The seconds a 429 answer asked the bot to wait ("Too Many Requests: retry after N")."""
    assert call.status == 429 and call.description is not None
    return int(call.description.rsplit(" ", 1)[1])


def too_early(calls: list[ApiCall]) -> list[tuple[ApiCall, ApiCall]]:
    """(429, request) pairs where `request` came before the 429's retry_after had passed."""
    early = []
    for index, refused in enumerate(calls):
        if refused.status == 429:
            until = refused.at + retry_after_of(refused)
            early += [(refused, later) for later in calls[index + 1 :] if later.at < until]
    return early


def telegram_table(telegram: FakeTelegram, base_url: str | None = None) -> dict[str, Any]:
    return {
        "telegram": {
            "bot_token": telegram.token,
            "api_base_url": base_url or telegram.base_url,
            "allow_everyone": True,
            "poll_timeout": 30,
        }
    }


@asynccontextmanager
async def telegram_conversation(
    nursery: trio.Nursery,
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    telegram: FakeTelegram | None = None,
    base_url: str | None = None,
    http: httpx.AsyncClient | None = None,
) -> AsyncIterator[TelegramConversation]:
    """The daemon polling `telegram` (started here unless it already serves), through
    `base_url` if given (a proxy); ready once it holds its first long poll. `/task start` is
    not sent yet."""
    telegram = telegram or FakeTelegram()
    if telegram.base_url is None:
        await telegram.start(nursery)
    agent = EchoAgent(nursery)
    provider = FakeProvider()
    config = fault_config(tmp, telegram_table(telegram, base_url))
    assert config.telegram is not None
    with _patched(monkeypatch, agent):
        async with TelegramClient(config.telegram, http=http, backoff=STEADY) as client:
            daemon = Daemon(config, provider=provider, clients=[client])
            talk = TelegramConversation(agent, provider, daemon, telegram=telegram, client=client)
            async with _running(daemon):
                with trio.fail_after(WAIT):
                    await telegram.wait_until_polling()
                yield talk


async def start_telegram_task(talk: TelegramConversation) -> None:
    """Ada starts the session and sees the answer to its first prompt."""
    await talk.say("/task start")
    await talk.wait_for_prompts(1)
    await talk.wait_for_shown(answer_for("start"))


# --- Slack ----------------------------------------------------------------------------------------


@dataclass
class SlackConversation(Conversation):
    slack: FakeSlack = field(default_factory=FakeSlack)
    channel: str = ""

    def shown(self) -> str:
        return "\n".join(m.visible_text for m in self.slack.bot_messages(self.channel))

    async def say(self, text: str) -> None:
        """Ada writes `text` in her direct message with the bot."""
        await self.slack.user_message(self.channel, SLACK_ADA, text)

    async def send_note(self, number: int) -> None:
        self.notes_sent.append(note(number))
        await self.say(note(number))

    async def wait_for_shown(self, fragment: str) -> None:
        with trio.fail_after(WAIT):
            await self.slack.wait_for(lambda: fragment in self.shown())


def slack_table(slack: FakeSlack) -> dict[str, Any]:
    return {
        "slack": {
            "app_token": slack.app_token,
            "bot_token": slack.bot_token,
            "api_base_url": slack.api_url,
            "allow_everyone": True,
            # The notes are plain messages in the DM itself, so the session stays there too
            # (with threads on it would run in a thread under its acknowledgement).
            "threads": False,
        }
    }


@asynccontextmanager
async def slack_conversation(
    nursery: trio.Nursery,
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    slack: FakeSlack | None = None,
) -> AsyncIterator[SlackConversation]:
    """The daemon connected to `slack` over Socket Mode; Ada's DM with the bot is open."""
    slack = slack or FakeSlack()
    await slack.start(nursery)
    slack.add_user("ada", id=SLACK_ADA)
    channel = slack.add_channel("ada-dm", kind="im", user=SLACK_ADA)
    agent = EchoAgent(nursery)
    provider = FakeProvider()
    config = fault_config(tmp, slack_table(slack))
    assert config.slack is not None
    with _patched(monkeypatch, agent):
        client = SlackClient(config.slack, backoff=STEADY)
        try:
            daemon = Daemon(config, provider=provider, clients=[client])
            talk = SlackConversation(agent, provider, daemon, slack=slack, channel=channel)
            async with _running(daemon):
                with trio.fail_after(WAIT):
                    await slack.wait_until_connected()
                yield talk
        finally:
            await client.aclose()


async def start_slack_task(talk: SlackConversation) -> None:
    await talk.say("/task start")
    await talk.wait_for_prompts(1)
    await talk.wait_for_shown(answer_for("start"))


async def assert_acked_in_time(slack: FakeSlack) -> None:
    """Every envelope the app received was acked within Slack's 3 s, and every event was
    settled in the end (acked, possibly on a redelivery): none was given up on.

    Waits until Slack has settled every delivery (at most 3 retries of 3 s each)."""
    with trio.fail_after(WAIT):
        await slack.wait_for(lambda: all(d.state != "pending" for d in slack.deliveries))
    assert [a for a in slack.acks if not a.on_time] == []
    for delivery in slack.deliveries:
        for attempt in delivery.attempts:
            if attempt.acked_at is not None:
                assert attempt.acked_at - attempt.sent_at <= ACK_DEADLINE
    assert {d.state for d in slack.deliveries if d.kind == "events_api"} == {"acked"}


def redelivered(slack: FakeSlack, text: str) -> list[int]:
    """The retry_attempt of every send of the person's message `text`."""
    [delivery] = [
        d
        for d in slack.deliveries
        if d.kind == "events_api" and d.payload["event"].get("text") == text
    ]
    return [attempt.retry_attempt for attempt in delivery.attempts]


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the operator saw in the log: every warning and error, any logger."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
