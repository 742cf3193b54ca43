"""Telegram faults against the whole daemon (issue 11): what is lost, what is doubled, what the
person sees.

Each test runs the real daemon with the real `TelegramClient` against the Telegram stand-in over
loopback HTTP (tests/faults/support.py), plays one conversation (``/task start``, then numbered
notes, each answered by the scripted agent) while one fault happens, and states in its docstring
what it found:

- updates lost / handled twice: notes the agent never got, or got twice;
- words lost / repeated: answers missing from the chat, or visible more than once;
- what the user saw.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import pytest
import trio

from anycode_actors.chat.base import ChatEvent, Message
from anycode_actors.chat.telegram import POLL_READ_MARGIN, RETRY_AFTER_MARGIN, TelegramClient
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram
from tests.faults.support import (
    ADA,
    STEADY,
    WAIT,
    answer_for,
    note,
    retry_after_of,
    start_telegram_task,
    telegram_conversation,
    too_early,
    warnings_from,
)


async def test_a_429_storm_on_the_chat_is_waited_out_and_every_word_arrives_once(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the answer to note 1 streams, Telegram puts the chat under flood wait five times
    running (retry_after 30, 7, 30, 1 and 18 s, one call let through after each wait); Ada
    goes on sending a note every 10 s (notes 2-8).

    Updates lost: none. Handled twice: none. Words lost: none. Repeated: none.
    No request for the chat came before the retry_after of a 429 had passed (request times as
    the stand-in recorded them), so the storm never grew: exactly five 429s.
    The user saw the answer to note 1 stop mid-sentence for 30 s and then complete; the
    answers to notes 2-8 each appeared whole, in one message, never edited; the last one
    about 20 s later than without the storm.
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        await talk.send_note(1)
        await talk.wait_for_shown("«note 1»")
        talk.telegram.flood_storm(ADA.id, [30, 7, 30, 1, 18], passes=1)
        for number in range(2, 9):
            await trio.sleep(10)
            await talk.send_note(number)
        await talk.wait_for_shown(answer_for(note(8)))
        calls = talk.chat_calls()
        refused = [c for c in calls if c.status == 429]
        assert [retry_after_of(c) for c in refused] == [30, 7, 30, 1, 18]
        assert too_early(calls) == []
        answers = talk.telegram.bot_messages(ADA.id)[2:]
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()
    assert [m.text for m in answers] == [answer_for(p) for p in ("note 1", *talk.notes_sent[1:])]
    first_refusal = refused[0]
    assert first_refusal.method == "editmessagetext"
    assert [c.at for c in calls if c.method == "editmessagetext" and c.status == 200][-1] >= (
        first_refusal.at + 30
    )
    assert [m.edit_count for m in answers[1:]] == [0] * 7


async def test_the_storm_refuses_an_impatient_bot_and_the_check_catches_it(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    """The control for the test above: a client that does not wait is refused again with the
    seconds still left (Telegram's "retry after N" counts down), and `too_early` names exactly
    the requests that came before retry_after had passed."""
    telegram = FakeTelegram()
    await telegram.start(nursery)
    telegram.add_chat(ADA.id, user=ADA)
    telegram.flood_storm(ADA.id, [30, 7], passes=1)
    async with httpx.AsyncClient() as http:
        for wait in (0, 10, 20, 0, 7, 0):
            await trio.sleep(wait)
            await http.post(
                telegram.method_url("sendMessage"), json={"chat_id": ADA.id, "text": "hi"}
            )
    calls = telegram.calls_to("sendMessage")
    assert [(c.at, c.status) for c in calls] == [
        (0, 429),
        (10, 429),
        (30, 200),
        (30, 429),
        (37, 200),
        (37, 200),
    ]
    assert [retry_after_of(c) for c in calls if c.status == 429] == [30, 20, 7]
    assert too_early(calls) == [(calls[0], calls[1])]


async def test_429_on_get_updates_up_to_30_s_delays_updates_but_loses_none(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """getUpdates answers 429 three times running (retry_after 30, 12, 30 s) while the person
    sends three notes.

    Updates lost: none. Handled twice: none. Words lost: none. Repeated: none.
    No getUpdates came before retry_after (+0.5 s margin) had passed.
    The user saw note 1 answered at once, notes 2 and 3 only after the three waits (73.5 s
    from the first 429), about a minute late, note 3 first acknowledged as "Queued".
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        for retry_after in (30, 12, 30):
            talk.telegram.fail_next("getUpdates", retry_after=retry_after)
        for number in (1, 2, 3):
            await talk.send_note(number)
            await trio.sleep(5)
        await talk.wait_for_shown(answer_for(note(3)))
        polls = talk.telegram.calls_to("getUpdates")
        assert [retry_after_of(c) for c in polls if c.status == 429] == [30, 12, 30]
        assert too_early(polls) == []
        for refused, after in itertools.pairwise(sorted(polls, key=lambda c: c.at)):
            if refused.status == 429:
                gap = after.at - refused.at
                assert gap == pytest.approx(retry_after_of(refused) + RETRY_AFTER_MARGIN)
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()


async def test_502_and_504_bursts_before_telegram_acts_cost_time_not_words(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bursts of 502 Bad Gateway and 504 Gateway Timeout that never reached the Bot API: five
    on getUpdates, two on sendMessage, three on editMessageText.

    Updates lost: none. Handled twice: none. Words lost: none. Repeated: none.
    The user saw every answer once; notes 2 and 3 about 25 s late (the poll backs off 1, 2,
    4, 8, 16 s), and the flusher's retries (1, 2, 4 s) only delayed what it was sending.
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        telegram = talk.telegram
        telegram.fail_next("getUpdates", error_code=502, times=3)
        telegram.fail_next("getUpdates", error_code=504, times=2)
        await talk.send_note(1)
        await trio.sleep(10)
        telegram.fail_next("sendMessage", error_code=502, times=2)
        telegram.fail_next("editMessageText", error_code=504, times=3)
        await talk.send_note(2)
        await trio.sleep(10)
        await talk.send_note(3)
        await talk.wait_for_shown(answer_for(note(3)))
        failed = [c for c in telegram.calls if c.status in (502, 504)]
        assert len(failed) == 10
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()


async def test_a_504_after_telegram_sent_the_message_shows_its_start_twice(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway answers 504 for a sendMessage that the Bot API did carry out (and 502 for an
    editMessageText that it carried out too).

    Updates lost: none. Handled twice: none.
    Words lost: none. Repeated: yes, inherent: Telegram has no idempotency key, so the flusher
    sends the stream's first message again; the first copy stays behind with the words it had
    then ("Answer to «note"), and the answer continues, complete, in the second. The failed edit
    costs nothing: it had taken effect, and the next edit carries the newer text anyway.
    The user saw a stray fragment of the answer above the full answer.
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        talk.telegram.fail_next("sendMessage", error_code=504, after=True)
        talk.telegram.fail_next("editMessageText", error_code=502, after=True)
        await talk.send_note(1)
        await talk.wait_for_shown(answer_for(note(1)))
        await trio.sleep(10)
        await talk.send_note(2)
        await talk.wait_for_shown(answer_for(note(2)))
        answers = [m.text for m in talk.telegram.bot_messages(ADA.id)[2:]]
        failed = [(c.method, c.status) for c in talk.chat_calls() if c.status >= 500]
    assert failed == [("sendmessage", 504), ("editmessagetext", 502)]
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()
    stray, *rest = answers
    assert answer_for(note(1)).startswith(stray) and stray != answer_for(note(1))
    assert rest == [answer_for(note(1)), answer_for(note(2))]


async def test_a_connection_reset_mid_request_loses_no_update_and_repeats_a_sent_message(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon reaches Telegram through a TCP proxy that resets every connection (RST) at
    three moments: while a getUpdates that already took a note waits for its answer, while a
    sendMessage that Telegram carried out waits for its answer, and while an editMessageText
    that Telegram carried out waits for its answer.

    Updates lost: none (the note was not confirmed, so the next poll fetches it again).
    Handled twice: none. Words lost: none.
    Repeated: the reset sendMessage, as with a 504 after the fact: a stray first fragment of
    the answer stays above the full answer. The reset edit costs nothing (the next edit
    carries the newer text).
    The user saw each answer once in full, one of them under a stray fragment.
    """
    telegram = FakeTelegram()
    await telegram.start(nursery)
    assert telegram.base_url is not None
    proxy = TcpProxy("127.0.0.1", int(telegram.base_url.rsplit(":", 1)[1]))
    await nursery.start(proxy.serve)
    async with telegram_conversation(
        nursery, tmp_path, monkeypatch, telegram=telegram, base_url=proxy.url
    ) as talk:
        await start_telegram_task(talk)

        async def cut_when_stalled(method: str) -> None:
            with trio.fail_after(WAIT):
                await telegram.wait_for(lambda: any(c.stalled for c in telegram.calls_to(method)))
            assert proxy.cut_all() >= 1

        telegram.stall_next("getUpdates")
        await talk.send_note(1)
        await cut_when_stalled("getUpdates")
        await talk.wait_for_shown(answer_for(note(1)))
        await trio.sleep(10)

        telegram.stall_next("sendMessage")
        await talk.send_note(2)
        await cut_when_stalled("sendMessage")
        await talk.wait_for_shown(answer_for(note(2)))
        await trio.sleep(10)

        telegram.stall_next("editMessageText")
        await talk.send_note(3)
        await cut_when_stalled("editMessageText")
        await talk.wait_for_shown(answer_for(note(3)))
        answers = [m.text for m in telegram.bot_messages(ADA.id)[2:]]
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()
    first, stray, *rest = answers
    assert first == answer_for(note(1))
    assert answer_for(note(2)).startswith(stray) and stray != answer_for(note(2))
    assert rest == [answer_for(note(2)), answer_for(note(3))]


async def test_a_get_updates_that_never_answers_times_out_and_its_update_comes_again(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long poll takes a note and its answer never arrives (a proxy swallowed it): the
    client's read timeout (poll 30 s + 15 s) ends it, and it polls again from the same offset.

    Updates lost: none. Handled twice: none. Words lost: none. Repeated: none.
    The user saw note 1 answered about 42 s late (the read timeout, 45 s after the poll began,
    plus 1 s of backoff); nothing else.
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        talk.telegram.stall_next("getUpdates")
        await talk.send_note(1)
        await talk.wait_for_shown(answer_for(note(1)))
        polls = talk.telegram.calls_to("getUpdates")
        stalled = next(i for i, c in enumerate(polls) if c.stalled)
        again = polls[stalled + 1]
        assert again.params["offset"] == polls[stalled].params["offset"]
        assert again.at - polls[stalled].at >= 30 + POLL_READ_MARGIN
        await talk.send_note(2)
        await talk.wait_for_shown(answer_for(note(2)))
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()


async def test_a_stray_poller_causes_409s_but_takes_no_update_away(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """For 40 s someone else long-polls getUpdates with the bot's token but never confirms
    anything (a debugging script or curl without offset): each of its polls ends the daemon's
    held poll with 409 Conflict, and the daemon's next poll ends the stray's. Six notes arrive
    meanwhile; some are answered to the stray first.

    Updates lost: none (the stray confirms nothing, so the daemon still fetches every note).
    Handled twice: none. Words lost: none. Repeated: none.
    The user saw every answer once, some seconds late (the daemon backs off after each 409);
    the operator saw warnings naming the conflict and its fix.
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        taken_by_stray: list[str] = []

        async def stray() -> None:
            async with httpx.AsyncClient(timeout=60) as http:
                with trio.move_on_after(40):
                    while True:
                        answer = await http.post(
                            talk.telegram.method_url("getUpdates"), json={"timeout": 10}
                        )
                        for update in answer.json().get("result", []):
                            taken_by_stray.append(update["message"]["text"])
                        await trio.sleep(1)

        nursery.start_soon(stray)
        for number in range(1, 7):
            await trio.sleep(7)
            await talk.send_note(number)
        await talk.wait_for_shown(answer_for(note(6)))
        daemon_conflicts = [
            c
            for c in talk.telegram.calls_to("getUpdates")
            if c.status == 409 and "offset" in c.params
        ]
    assert taken_by_stray and set(taken_by_stray) <= set(talk.notes_sent)
    assert daemon_conflicts
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()
    conflicts = [m for m in warnings_from(caplog) if "another instance is polling" in m]
    assert conflicts and "terminated by other getUpdates request" in conflicts[0]


async def test_a_second_instance_polling_the_same_bot_takes_each_update_or_leaves_it(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second instance of the bot (another `TelegramClient` with the same token: a deploy
    that overlaps the old daemon) polls for 40 s, then stops. The two displace each other's
    long polls with 409 Conflict; eight notes arrive meanwhile and after.

    Updates lost: none, handled twice: none, across the two instances: every note was handed
    on by exactly one of them (each confirms what it handed on with its next offset). The
    notes the other instance took never reached this daemon's session.
    Words lost / repeated: none in what this daemon answered.
    The user saw answers only to the notes this daemon got; the others went to the other
    instance (which, being a bare client here, answers nothing).
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        assert talk.daemon.config.telegram is not None
        other: list[ChatEvent] = []

        async def second_instance() -> None:
            config = talk.daemon.config.telegram
            assert config is not None
            send, receive = trio.open_memory_channel[ChatEvent](100)
            async with TelegramClient(config, backoff=STEADY) as client:
                with trio.move_on_after(40):
                    async with trio.open_nursery() as inner:
                        await inner.start(client.run, send)
                        async for event in receive:
                            other.append(event)

        nursery.start_soon(second_instance)
        for number in range(1, 9):
            await trio.sleep(7)
            await talk.send_note(number)
        await trio.sleep(60)
        conflicts = [c for c in talk.telegram.calls_to("getUpdates") if c.status == 409]
    taken = [event.text for event in other if isinstance(event, Message)]
    here = talk.prompts_seen[1:]
    assert taken and here and conflicts
    assert sorted(taken + here) == sorted(talk.notes_sent)  # each note once, in one instance
    assert here == [n for n in talk.notes_sent if n in here]  # in order
    shown = talk.answers_shown()
    assert {prompt: shown[prompt] for prompt in ("start", *here)} == dict.fromkeys(
        ("start", *here), 1
    )
    assert all(shown[prompt] == 0 for prompt in taken)
