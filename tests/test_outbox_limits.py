"""What a turn sends from the outbox: at most `max_upload_files` files and `max_upload_total_mb`
in all, each file once however many hard links it has, under a clean name, and one message
saying what stayed behind and why."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from anycode_actors.actors.session_api import FollowUp
from anycode_actors.store import Store
from tests.actor_fakes import ADA, FakeAgent, FakeProvider, memory_store, said
from tests.session_rig import Rig, config_with, start

MB = 1024 * 1024
KB = 1024


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


async def run_one_turn(
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    outbox: dict[str, bytes],
    links: dict[str, str] | None = None,
    **limits: int,
) -> Rig:
    """A session whose only turn leaves `outbox` behind; returned once it has ended."""
    provider = FakeProvider()
    provider.outbox = outbox
    provider.links = links or {}
    agent = FakeAgent([said("Done.")])
    rig = await start(nursery, store, monkeypatch, agent, config_with(**limits), provider)
    await rig.wait_closed()
    return rig


def not_sent_messages(rig: Rig) -> list[str]:
    return [text for text in rig.client.texts() if "not sent" in text]


async def test_a_turn_sends_at_most_max_upload_files_and_names_the_rest_in_one_message(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outbox = {f"file-{i}.txt": f"{i}".encode() * 2000 for i in range(5)}
    rig = await run_one_turn(nursery, store, monkeypatch, outbox, max_upload_files=3)
    assert [name for name, _, _ in rig.client.uploads] == ["file-0.txt", "file-1.txt", "file-2.txt"]
    assert not_sent_messages(rig) == [
        "file-3.txt (2 KB) is over the limit of 3 files per turn; not sent.\n"
        "file-4.txt (2 KB) is over the limit of 3 files per turn; not sent."
    ]


async def test_a_turn_sends_at_most_max_upload_total_mb_and_a_smaller_file_still_fits(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outbox = {"a.bin": b"a" * (600 * KB), "b.bin": b"b" * (600 * KB), "c.bin": b"c" * (300 * KB)}
    rig = await run_one_turn(nursery, store, monkeypatch, outbox, max_upload_total_mb=1)
    assert [name for name, _, _ in rig.client.uploads] == ["a.bin", "c.bin"]
    assert not_sent_messages(rig) == [
        "b.bin (600 KB) would take this turn's uploads over 1 MB; not sent."
    ]


async def test_every_file_left_behind_is_in_one_message_with_its_reason(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outbox = {
        "1-big.iso": b"i" * (3 * MB),
        "2-half.bin": b"h" * (MB // 2),
        "3-more.bin": b"m" * (MB // 2 + 1),
        "4-small.txt": b"s",
        "5-tiny.txt": b"t",
    }
    rig = await run_one_turn(
        nursery,
        store,
        monkeypatch,
        outbox,
        max_upload_mb=2,
        max_upload_files=2,
        max_upload_total_mb=1,
    )
    assert [name for name, _, _ in rig.client.uploads] == ["2-half.bin", "4-small.txt"]
    assert not_sent_messages(rig) == [
        "1-big.iso (3.0 MB) is over the 2 MB upload limit; not sent.\n"
        "3-more.bin (512 KB) would take this turn's uploads over 1 MB; not sent.\n"
        "5-tiny.txt (1 byte) is over the limit of 2 files per turn; not sent."
    ]


async def test_a_long_list_of_files_left_behind_stays_one_short_message(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outbox = {f"{i:03}-" + "n" * 300: b"x" for i in range(40)}
    rig = await run_one_turn(nursery, store, monkeypatch, outbox, max_upload_files=1)
    [message] = not_sent_messages(rig)
    lines = message.split("\n")
    assert len(lines) == 11
    assert (
        lines[0] == "001-" + "n" * 95 + "… (1 byte) is over the limit of 1 file per turn; not sent."
    )
    assert lines[-1] == "…and 29 more files not sent."
    assert len(rig.client.uploads) == 1


async def test_hard_links_to_one_file_are_sent_once_and_not_counted_or_reported(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report, dump = b"# Report\n", b"d" * (2 * MB)
    outbox = {
        "a-report.md": report,
        "b-same-report.md": report,
        "c-report-again.md": report,
        "dump.bin": dump,
        "dump-link.bin": dump,
        "z-other.md": b"other",
    }
    links = {"b-same-report.md": "a-report.md", "c-report-again.md": "a-report.md"}
    links["dump.bin"] = "dump-link.bin"
    rig = await run_one_turn(
        nursery, store, monkeypatch, outbox, links, max_upload_mb=1, max_upload_files=2
    )
    assert rig.client.uploads == [("a-report.md", report, ""), ("z-other.md", b"other", "")]
    assert not_sent_messages(rig) == [
        "dump-link.bin (2.0 MB) is over the 1 MB upload limit; not sent."
    ]


async def test_file_names_reach_the_chat_without_bidi_or_control_characters(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outbox = {
        "report\u202efdp.exe": b"MZ",
        "sub/\u2066notes\u2069\n.txt": b"n",
        "\u200f\u202e": b"?",
        "big\u202egpj.exe": b"b" * (2 * MB),
    }
    rig = await run_one_turn(nursery, store, monkeypatch, outbox, max_upload_mb=1)
    assert sorted(name for name, _, _ in rig.client.uploads) == [
        "file",
        "reportfdp.exe",
        "sub_notes .txt",
    ]
    assert not_sent_messages(rig) == [
        "biggpj.exe (2.0 MB) is over the 1 MB upload limit; not sent."
    ]


async def test_files_handled_in_one_turn_are_not_sent_or_reported_again(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = FakeProvider()
    provider.outbox = {"a.txt": b"a", "b.txt": b"b"}
    agent = FakeAgent([said("First."), said("Second.")])
    config = config_with(idle_minutes=1, max_upload_files=1)
    rig = await start(nursery, store, monkeypatch, agent, config, provider)
    await rig.client.wait_until(lambda: not_sent_messages(rig))
    provider.outbox["c.txt"] = b"c"
    await rig.actor.send(FollowUp("and now?", ADA))
    await rig.client.wait_for_text("Second.")
    await rig.client.wait_until(lambda: len(rig.client.uploads) == 2)
    await rig.wait_closed()
    assert [name for name, _, _ in rig.client.uploads] == ["a.txt", "c.txt"]
    assert not_sent_messages(rig) == [
        "b.txt (1 byte) is over the limit of 1 file per turn; not sent."
    ]
