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

from pathlib import Path

import pytest
import trio

from anycode_actors.chat.telegram import POLL_READ_MARGIN, RETRY_AFTER_MARGIN
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram
from tests.faults.support import (
    ADA,
    WAIT,
    answer_for,
    note,
    retry_after_of,
    start_telegram_task,
    telegram_conversation,
    too_early,
)


async def test_a_429_storm_on_the_chat_is_waited_out_and_every_word_arrives_once(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Telegram refuses the chat's sends and edits five times with 429 (retry_after 30, 7, 30,
    1 and 18 s, one call let through after each wait) while three answers stream.

    Updates lost: none. Handled twice: none. Words lost: none. Repeated: none.
    No request for the chat came before the retry_after of a 429 had passed (request times as
    the stand-in recorded them), so the storm never grew: exactly five 429s.
    The user saw every answer once, in full, about 86 s late, in fewer edits.
    """
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        talk.telegram.flood_storm(ADA.id, [30, 7, 30, 1, 18], passes=1)
        for number in (1, 2, 3):
            await talk.send_note(number)
            await trio.sleep(10)
        await talk.wait_for_shown(answer_for(note(3)))
        refused = [c for c in talk.chat_calls() if c.status == 429]
        assert [retry_after_of(c) for c in refused] == [30, 7, 30, 1, 18]
        assert too_early(talk.chat_calls()) == []
        # The answers streamed from the agent in ~35 s; the chat was paused 86 s.
        assert refused[-1].at - refused[0].at >= 30 + 7 + 30 + 1
    talk.assert_every_note_asked_once()
    talk.assert_every_answer_shown_once()


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
    The user saw the notes answered in one go, about 73 s after the first.
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
        for refused, after in zip(polls, polls[1:], strict=False):
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
    The user saw every answer once, delayed by the backoff (1, 2, 4 ... s).
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
    is repeated harmlessly (Telegram's "message is not modified" counts as done).
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
    the answer stays above the full answer. The reset edit is repeated harmlessly.
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
    The user saw the answer about 46 s late; nothing else.
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
