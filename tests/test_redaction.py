"""Credentials a sandbox was given never reach the event log or the chat: the redactor alone,
then the session actor with an agent that prints them."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import pytest
import trio

from anycode_actors.actors.redaction import REDACTED, OutputRedactor, redact_event
from anycode_actors.actors.session_api import PermissionAnswer
from anycode_actors.agents import (
    AgentEvent,
    ErrorEvent,
    PermissionOption,
    PermissionRequested,
    Raw,
    TextDelta,
    ThoughtDelta,
    ToolCall,
    TurnEnded,
)
from anycode_actors.agents.events import to_record
from anycode_actors.chat.base import ButtonPress
from anycode_actors.store import Store
from tests.actor_fakes import ADA, ALLOW_ONCE, CHAT, FakeAgent, asks, memory_store
from tests.session_rig import config_with, start

# Placeholders shaped like nothing real, long enough to count as secrets.
KEY = "placeholder-anthropic-Q7x9Zt2LmN4wR8"
GITHUB = "placeholder-github-Vb3Kp8Hs6Jd1"
# The fake provider's sandbox-agent token.
SANDBOX_TOKEN = "not-a-secret"


def texts(events: list[AgentEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta | ThoughtDelta))


def feed_all(redactor: OutputRedactor, events: list[AgentEvent]) -> list[AgentEvent]:
    released: list[AgentEvent] = []
    for event in events:
        released += redactor.feed(event)
    return released


def deltas(*pieces: str, first_seq: int = 1) -> list[AgentEvent]:
    return [TextDelta(seq=first_seq + i, text=piece) for i, piece in enumerate(pieces)]


# --- one event ----------------------------------------------------------------------------------


def test_every_text_of_an_event_is_redacted_and_its_identifiers_are_kept() -> None:
    tool = ToolCall(
        seq=3,
        cursor="c-3",
        tool_call_id="t1",
        phase="completed",
        title=f"curl -H 'x-api-key: {KEY}'",
        input_summary=f"GITHUB_TOKEN={GITHUB} gh pr list",
        output_summary=f"ANTHROPIC_API_KEY={KEY}\nGITHUB_TOKEN={GITHUB}",
    )
    assert redact_event(tool, [KEY, GITHUB]) == ToolCall(
        seq=3,
        cursor="c-3",
        tool_call_id="t1",
        phase="completed",
        title=f"curl -H 'x-api-key: {REDACTED}'",
        input_summary=f"GITHUB_TOKEN={REDACTED} gh pr list",
        output_summary=f"ANTHROPIC_API_KEY={REDACTED}\nGITHUB_TOKEN={REDACTED}",
    )
    request = PermissionRequested(
        key='"k-1"',
        request_id="k-1",
        tool_call_id="t2",
        title=f"Run echo {KEY}",
        input_summary=f"echo {KEY}",
        options=(PermissionOption(option_id="allow", name=f"Allow {KEY}", kind="allow_once"),),
    )
    redacted = redact_event(request, [KEY])
    assert (redacted.title, redacted.input_summary) == (
        f"Run echo {REDACTED}",
        f"echo {REDACTED}",
    )
    assert redacted.options == (
        PermissionOption(option_id="allow", name=f"Allow {REDACTED}", kind="allow_once"),
    )
    assert (redacted.key, redacted.request_id, redacted.tool_call_id) == ('"k-1"', "k-1", "t2")
    error = ErrorEvent(message=f"401 for key {KEY}", details=f"token {GITHUB}")
    assert redact_event(error, [KEY, GITHUB]) == ErrorEvent(
        message=f"401 for key {REDACTED}", details=f"token {REDACTED}"
    )
    turn = TurnEnded(stop_reason="error", message=f"bad key {KEY}")
    assert redact_event(turn, [KEY]).message == f"bad key {REDACTED}"
    raw = Raw(kind="session/update:plan", payload={"entries": [{"content": f"use {KEY}"}], "n": 1})
    assert redact_event(raw, [KEY]).payload == {"entries": [{"content": f"use {REDACTED}"}], "n": 1}


def test_values_shorter_than_eight_characters_are_not_secrets() -> None:
    event = TextDelta(text="answer: 1234567 and 12345678")
    assert redact_event(event, ["1234567"]) == event
    assert redact_event(event, ["12345678"]).text == f"answer: 1234567 and {REDACTED}"


def test_a_secret_containing_another_is_replaced_whole() -> None:
    event = TextDelta(text=f"{KEY}-suffix and {KEY}")
    redacted = redact_event(event, [KEY, f"{KEY}-suffix"])
    assert redacted.text == f"{REDACTED} and {REDACTED}"


def test_a_summary_cut_off_inside_a_secret_loses_the_secrets_beginning_too() -> None:
    # summarize() shortens a tool's output to 500 characters and ends it with "…".
    tool = ToolCall(tool_call_id="t1", phase="completed", output_summary=f"KEY={KEY[:12]}…")
    assert redact_event(tool, [KEY]).output_summary == f"KEY={REDACTED}…"


# --- streamed text ------------------------------------------------------------------------------


def test_without_secrets_every_event_passes_at_once_unchanged() -> None:
    redactor = OutputRedactor(["short"])
    event = TextDelta(seq=1, text="s")
    assert redactor.feed(event) == [event]
    assert redactor.feed(event) == [event]  # repeats are the store's business, as before


def test_a_secret_split_over_three_deltas_is_redacted_whole_in_the_last_of_them() -> None:
    redactor = OutputRedactor([KEY])
    pieces = deltas("The key is ", KEY[:3], KEY[3:20], KEY[20:] + ". Done.")
    assert redactor.feed(pieces[0]) == [pieces[0]]
    # "pla" and "placeholder-anthrop" could be a secret's beginning: held back.
    assert redactor.feed(pieces[1]) == []
    assert redactor.feed(pieces[2]) == [TextDelta(seq=2, text="")]
    released = redactor.feed(pieces[3])
    assert released == [TextDelta(seq=3, text=""), TextDelta(seq=4, text=f"{REDACTED}. Done.")]


def test_held_text_that_was_no_secret_goes_with_the_next_event() -> None:
    redactor = OutputRedactor([KEY])
    first, second = deltas("Please p", "ress save.")
    assert redactor.feed(first) == []
    assert redactor.feed(second) == [first, second]


def test_held_text_is_released_before_any_other_kind_of_event() -> None:
    redactor = OutputRedactor([KEY])
    text = TextDelta(seq=1, text="Half a key: placeholder-")
    thought = ThoughtDelta(seq=2, text="pla")
    ended = TurnEnded(seq=3, stop_reason="end_turn")
    assert redactor.feed(text) == []
    assert redactor.feed(thought) == [text]
    assert redactor.feed(ended) == [thought, ended]


def test_repeats_and_events_stored_by_an_earlier_run_are_dropped() -> None:
    redactor = OutputRedactor([KEY], last_seq=3)
    assert redactor.feed(TextDelta(seq=3, text="old")) == []
    held = TextDelta(seq=4, text="new p")
    assert redactor.feed(held) == []
    assert redactor.feed(held) == []  # delivered again while held: not doubled
    assert redactor.feed(TurnEnded(seq=5, stop_reason="end_turn")) == [
        held,
        TurnEnded(seq=5, stop_reason="end_turn"),
    ]


def test_however_the_text_is_cut_no_piece_of_a_secret_is_released() -> None:
    secrets = [KEY, GITHUB, SANDBOX_TOKEN]
    text = (
        f"env:\nANTHROPIC_API_KEY={KEY}\nGITHUB_TOKEN={GITHUB}\nTOKEN={SANDBOX_TOKEN}"
        f"{KEY}{GITHUB} place pla not-a end"  # beginnings of secrets, too short to matter
    )
    expected = redact_event(TextDelta(text=text), secrets).text
    assert KEY not in expected and expected.count(REDACTED) == 5
    chance = random.Random(10)
    for _ in range(300):
        cuts = sorted(chance.sample(range(1, len(text)), chance.randint(1, 40)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        redactor = OutputRedactor(secrets)
        released = feed_all(redactor, deltas(*pieces))
        released += redactor.feed(TurnEnded(seq=len(pieces) + 1, stop_reason="end_turn"))
        assert texts(released) == expected, pieces
        # In order, each event once, every seq delivered.
        assert [e.seq for e in released] == list(range(1, len(pieces) + 2))
        for event in released:
            if isinstance(event, TextDelta):
                for secret in secrets:
                    # Not even a piece of a secret long enough to mean anything.
                    assert not any(
                        secret[i : i + 6] in event.text for i in range(len(secret) - 5)
                    ), (event.text, pieces)


# --- the session actor --------------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


async def test_an_agent_that_prints_its_environment_leaks_no_credential_into_chat_or_log(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env_output = f"ANTHROPIC_API_KEY={KEY}\nGITHUB_TOKEN={GITHUB}\nSANDBOX_TOKEN={SANDBOX_TOKEN}"
    agent = FakeAgent(
        [
            [
                TextDelta(text="Here is the environment:\nANTHROPIC_API_KEY=" + KEY[:7]),
                TextDelta(text=KEY[7:] + "\nGITHUB_TOKEN=" + GITHUB[:-4]),
                TextDelta(text=GITHUB[-4:] + f"\nand the token {SANDBOX_TOKEN}.\n"),
                ToolCall(
                    tool_call_id="t1",
                    phase="started",
                    title=f"env | grep {KEY}",
                    output_summary=env_output,
                ),
                ErrorEvent(message=f"the key {KEY} was refused"),
                TurnEnded(stop_reason="end_turn"),
            ]
        ]
    )
    config = config_with({"ANTHROPIC_API_KEY": KEY, "GITHUB_TOKEN": GITHUB})
    rig = await start(nursery, store, monkeypatch, agent, config)
    await rig.wait_closed()
    chat = "\n".join(rig.client.texts())
    assert "Here is the environment:\nANTHROPIC_API_KEY=[redacted]\nGITHUB_TOKEN=[redacted]" in chat
    assert f"and the token {REDACTED}." in chat
    assert f"▸ env | grep {REDACTED}" in chat
    assert f"Agent error: the key {REDACTED} was refused" in chat
    stored = json.dumps([to_record(e.event)[1] for e in await store.events(rig.session.id)])
    assert stored.count(REDACTED) == 8  # 3 streamed, 1 title, 3 output, 1 error
    for secret in (KEY, GITHUB, SANDBOX_TOKEN):
        for place in (chat, stored):
            assert secret not in place
            assert secret[:7] not in place  # nor the piece streamed on its own


async def test_a_permission_prompt_shows_no_credential_and_can_still_be_answered(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    curl = f"curl -H 'x-api-key: {KEY}' https://api.example.invalid"
    agent = FakeAgent([[asks("0", title=f"Run {curl}", command=curl, options=[ALLOW_ONCE])]])
    rig = await start(nursery, store, monkeypatch, agent, config_with({"ANTHROPIC_API_KEY": KEY}))
    prompt_id = await rig.client.wait_for_text("Permission requested")
    shown = f"curl -H 'x-api-key: {REDACTED}' https://api.example.invalid"
    assert rig.client.text_of(prompt_id) == (f"Permission requested: Run {shown}\nCommand: {shown}")
    [interaction] = await store.unresolved_interactions(rig.session.id)
    press = ButtonPress(CHAT, ADA, prompt_id, f"{interaction.id}:0", press_id="q")
    await rig.actor.send(PermissionAnswer(interaction.id, 0, press))
    await agent.wait_until(lambda: bool(agent.responses))
    assert agent.responses == [("0", "allow")]
    agent.emit(TurnEnded(stop_reason="end_turn"))
    await rig.wait_closed()
