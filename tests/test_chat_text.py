"""Names from outside (people's, files') reach the chat without controls or bidi tricks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from anycode_actors.actors.session_api import PermissionAnswer
from anycode_actors.agents import TurnEnded
from anycode_actors.chat.base import ButtonPress, User
from anycode_actors.chat.text import clean_display_text
from anycode_actors.store import Store
from tests.actor_fakes import CHAT, FakeAgent, asks, memory_store
from tests.session_rig import config_with, start

RLO = "\u202e"  # right-to-left override


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        (f"report{RLO}fdp.exe", "reportfdp.exe"),
        # Embeddings and overrides (U+202A-U+202E), isolates (U+2066-U+2069), marks.
        ("\u202aa\u202bb\u202cc\u202dd\u202ee", "abcde"),
        ("\u2066a\u2067b\u2068c\u2069", "abc"),
        ("\u200eAda\u200f \u061cLovelace", "Ada Lovelace"),
        # Other invisible format characters: zero-width space, BOM, soft hyphen, tag letters.
        ("a\u200bb\ufeffc\u00add\U000e0041", "abcd"),
        # Controls: whitespace ones become a space, the rest go; separators break no line.
        ("Ada\nLovelace\tthe\u2028first", "Ada Lovelace the first"),
        ("bell\x07\x1b[31mred\x7f", "bell[31mred"),
        ("  padded \n", "padded"),
        # Ordinary text of every kind stays as it is, joiners in emoji and Persian included.
        ("Zoë Ångström", "Zoë Ångström"),
        ("أحمد", "أحمد"),
        ("שלום", "שלום"),
        ("漢字かな", "漢字かな"),
        ("👩\u200d💻 dev", "👩\u200d💻 dev"),
        ("می\u200cخواهم", "می\u200cخواهم"),
        ("\U0001f1eb\U0001f1f7", "\U0001f1eb\U0001f1f7"),
        # Nothing left.
        (f"{RLO}\u200f\n", ""),
    ],
)
def test_clean_display_text_drops_controls_and_bidi_characters_only(text: str, clean: str) -> None:
    assert clean_display_text(text) == clean


def test_a_lone_surrogate_from_an_undecodable_file_name_is_dropped() -> None:
    name = b"caf\xe9.txt".decode("utf-8", errors="surrogateescape")
    assert clean_display_text(name) == "caf.txt"


def test_a_mention_shows_the_clean_name_or_else_the_user_id() -> None:
    assert User("42", "\u200f\u202bأحمد\u202c").mention == "أحمد"
    assert User("42", f"@ada{RLO}nimda").mention == "@adanimda"
    assert User("42", f"{RLO}\u200f ").mention == "42"
    assert User("42").mention == "42"


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


async def test_answered_by_shows_the_approvers_name_without_rtl_marks(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[asks("0")]])
    rig = await start(nursery, store, monkeypatch, agent, config_with())
    prompt_id = await rig.client.wait_for_text("Permission requested")
    [interaction] = await store.unresolved_interactions(rig.session.id)
    approver = User("111", f"\u200f@ada{RLO}nimda\u200f")
    press = ButtonPress(CHAT, approver, prompt_id, f"{interaction.id}:0", press_id="q")
    await rig.actor.send(PermissionAnswer(interaction.id, 0, press))
    await agent.wait_until(lambda: bool(agent.responses))
    await rig.client.wait_until(lambda: "(by" in rig.client.text_of(prompt_id))
    assert rig.client.text_of(prompt_id).endswith("✅ Allow (by @adanimda)")
    resolved = await store.get_interaction(interaction.id)
    assert resolved is not None and resolved.resolved_by == "@adanimda"
    agent.emit(TurnEnded(stop_reason="end_turn"))
    await rig.wait_closed()
