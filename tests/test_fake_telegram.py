"""Tests of the Telegram stand-in itself, driven over HTTP with plain httpx as a bot would.

Time: the fake runs in the test's Trio run and measures everything with ``trio.current_time()``,
so tests that involve waiting use the ``autojump_clock`` fixture. The client and the server talk
over loopback inside the same process: a request's bytes are readable by the server as soon as
the client has written them, so the run loop always finds I/O ready and the mock clock only jumps
when every task is genuinely waiting on a timeout. The rate-limit arithmetic is also tested
directly on ``TokenBucket``. Tags such as (A2) name the Telegram documentation listed at the top of
``tests/fakes/telegram.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from tests.fakes.telegram import (
    CONFLICT_OTHER_GET_UPDATES,
    MESSAGE_NOT_MODIFIED,
    QUERY_TOO_OLD,
    FakeTelegram,
    FloodLimits,
    TokenBucket,
    User,
    bot_command_entities,
    parse_markdown_v2,
    retry_after_seconds,
    utf16_len,
)

ADA = User(111, "Ada", username="ada")
BOB = User(222, "Bob")
GROUP = -1001234567890
KEYBOARD = {"inline_keyboard": [[{"text": "Approve", "callback_data": "approve:42"}]]}


@pytest.fixture
async def telegram(nursery: trio.Nursery) -> FakeTelegram:
    fake = FakeTelegram()
    await fake.start(nursery)
    return fake


@pytest.fixture
async def bot(telegram: FakeTelegram) -> AsyncIterator[httpx.AsyncClient]:
    # The read timeout must exceed the long-poll timeout (A2, client practice).
    base = f"{telegram.base_url}/bot{telegram.token}/"
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120)) as client:
        yield client


async def call(client: httpx.AsyncClient, method: str, **params: Any) -> httpx.Response:
    """POST a JSON body, as many clients do."""
    return await client.post(method, json=params)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    return body["result"]


def error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["ok"] is False
    assert body["error_code"] == response.status_code
    return response.status_code, body["description"]


# ---- transport and routing (A1) --------------------------------------------------------------


async def test_get_me_answers_the_bot_user(telegram: FakeTelegram, bot: httpx.AsyncClient) -> None:
    me = ok(await bot.get("getMe"))
    assert me["id"] == 4242
    assert me["is_bot"] is True
    assert me["username"] == "anycode_test_bot"
    assert {"can_join_groups", "can_read_all_group_messages", "supports_inline_queries"} <= set(me)


async def test_method_names_are_case_insensitive(bot: httpx.AsyncClient) -> None:
    assert ok(await bot.post("GETME"))["is_bot"] is True


async def test_wrong_token_is_401_unauthorized(telegram: FakeTelegram) -> None:
    async with httpx.AsyncClient(base_url=telegram.base_url or "") as client:
        wrong = await client.get("/bot4242:somebody-elses-token-xxxxxxxxxxxxxxxxxxx/getMe")
        assert wrong.status_code == 401
        assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        assert wrong.headers["content-type"] == "application/json"

        malformed = await client.get("/botnot-a-token/getMe")
        assert error(malformed) == (401, "Unauthorized: invalid token specified")


async def test_a_revoked_token_is_401(telegram: FakeTelegram, bot: httpx.AsyncClient) -> None:
    ok(await bot.get("getMe"))
    telegram.revoke_token()
    assert error(await bot.get("getMe")) == (401, "Unauthorized")


async def test_bad_path_and_unknown_method_are_404(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=telegram.base_url or "") as client:
        assert error(await client.get("/getMe")) == (404, "Not Found")
    assert error(await bot.get("sendTelepathy")) == (404, "Not Found: method not found")


async def test_parameters_arrive_as_query_form_json_or_multipart(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    ok(await bot.get("sendMessage", params={"chat_id": ADA.id, "text": "query"}))
    # Form fields carry objects as JSON strings (A1: how PTB and aiogram send them).
    form = {"chat_id": str(ADA.id), "text": "form", "reply_markup": json.dumps(KEYBOARD)}
    ok(await bot.post("sendMessage", data=form))
    ok(await call(bot, "sendMessage", chat_id=ADA.id, text="json", reply_markup=KEYBOARD))
    await trio.sleep(1)  # one chat takes about one message a second
    multipart = await bot.post(
        "sendMessage",
        data={"chat_id": str(ADA.id), "text": "multipart"},
        files={"unused": ("x.bin", b"\x00", "application/octet-stream")},
    )
    ok(multipart)
    views = telegram.messages(ADA.id)
    assert [v.text for v in views] == ["query", "form", "json", "multipart"]
    assert [v.button_data() for v in views] == [[], ["approve:42"], ["approve:42"], []]


# ---- getUpdates (A2) ---------------------------------------------------------------------------


async def test_long_poll_holds_then_returns_an_injected_update(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    responses: list[httpx.Response] = []

    async def poll() -> None:
        responses.append(await call(bot, "getUpdates", timeout=30))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await telegram.wait_until_polling()
        await trio.sleep(10)
        assert responses == []  # still held after 10 s
        telegram.inject_message(ADA.id, ADA, "hello")
    updates = ok(responses[0])
    assert trio.current_time() - start == pytest.approx(10, abs=0.01)
    assert len(updates) == 1
    message = updates[0]["message"]
    assert message["text"] == "hello"
    assert message["from"] == {"id": 111, "is_bot": False, "first_name": "Ada", "username": "ada"}
    assert message["chat"] == {"id": 111, "first_name": "Ada", "username": "ada", "type": "private"}


async def test_long_poll_times_out_empty_and_timeout_is_clamped_to_50(
    autojump_clock: trio.abc.Clock, bot: httpx.AsyncClient
) -> None:
    start = trio.current_time()
    assert ok(await call(bot, "getUpdates", timeout=5)) == []
    assert trio.current_time() - start == pytest.approx(5, abs=0.01)

    start = trio.current_time()
    assert ok(await call(bot, "getUpdates", offset=1, timeout=600)) == []
    assert trio.current_time() - start == pytest.approx(50, abs=0.01)


async def test_offset_confirms_earlier_updates_and_limit_caps_the_batch(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    for text in ("one", "two", "three"):
        telegram.inject_message(ADA.id, ADA, text)
    first = ok(await call(bot, "getUpdates", limit=2))
    assert [u["message"]["text"] for u in first] == ["one", "two"]
    ids = [u["update_id"] for u in first]
    assert ids[1] == ids[0] + 1

    # Unconfirmed updates come again; offset = id confirms everything before it.
    again = ok(await call(bot, "getUpdates", offset=ids[1]))
    assert [u["message"]["text"] for u in again] == ["two", "three"]
    assert [u["update_id"] for u in telegram.pending_updates] == [ids[1], ids[1] + 1]

    last_id = again[-1]["update_id"]
    assert ok(await call(bot, "getUpdates", offset=last_id + 1)) == []
    assert telegram.pending_updates == []


async def test_negative_offset_keeps_only_the_last_updates(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    for text in ("a", "b", "c"):
        telegram.inject_message(ADA.id, ADA, text)
    last = ok(await call(bot, "getUpdates", offset=-1))
    assert [u["message"]["text"] for u in last] == ["c"]
    assert len(telegram.pending_updates) == 1


async def test_a_second_poll_displaces_the_held_one_with_409(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    first: list[httpx.Response] = []

    async def poll() -> None:
        first.append(await call(bot, "getUpdates", timeout=30))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await telegram.wait_until_polling()
        start = trio.current_time()
        second = await call(bot, "getUpdates", timeout=5)
    assert error(first[0]) == (409, CONFLICT_OTHER_GET_UPDATES)
    assert CONFLICT_OTHER_GET_UPDATES == (
        "Conflict: terminated by other getUpdates request; "
        "make sure that only one bot instance is running"
    )
    assert ok(second) == []  # the newer poll is the one that stays, until its own timeout
    assert trio.current_time() - start == pytest.approx(5, abs=0.01)


async def test_conflicts_repeating_within_3_seconds_are_answered_after_3_seconds(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    answered_at: dict[str, float] = {}
    first_answered = trio.Event()

    async def poll(name: str, offset: int) -> None:
        response = await call(bot, "getUpdates", offset=offset, timeout=20)
        assert error(response) == (409, CONFLICT_OTHER_GET_UPDATES)
        answered_at[name] = trio.current_time()
        if name == "first":
            first_answered.set()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll, "first", 1)
        await telegram.wait_until_polling()
        nursery.start_soon(poll, "second", 2)  # displaces "first"
        await first_answered.wait()
        await telegram.wait_until_polling()  # "second" is held now
        ok(await call(bot, "getUpdates", offset=3, timeout=1))  # displaces "second"
    assert answered_at["first"] - start == pytest.approx(0, abs=0.01)
    assert answered_at["second"] - start == pytest.approx(3, abs=0.01)


async def test_same_offset_again_within_3_seconds_is_held_3_seconds(
    autojump_clock: trio.abc.Clock, bot: httpx.AsyncClient
) -> None:
    ok(await call(bot, "getUpdates", offset=5, timeout=0))
    start = trio.current_time()
    assert ok(await call(bot, "getUpdates", offset=5, timeout=0)) == []
    assert trio.current_time() - start == pytest.approx(3, abs=0.01)


async def test_allowed_updates_filters_updates_created_after_the_call(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.inject_message(ADA.id, ADA, "before")
    ok(await call(bot, "getUpdates", allowed_updates=["callback_query"]))
    telegram.inject_message(ADA.id, ADA, "after")
    kinds = [next(k for k in u if k != "update_id") for u in telegram.pending_updates]
    assert kinds == ["message"]  # only "before"; "after" was never queued


# ---- sendMessage limits and errors (A4-A6) -----------------------------------------------------


async def test_text_limit_is_4096_code_points(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    # 4096 astral characters are 8192 UTF-16 units and 16384 bytes, and still allowed.
    exactly = "🐛" * 4096
    sent = ok(await call(bot, "sendMessage", chat_id=ADA.id, text=exactly))
    assert sent["text"] == exactly
    too_long = await call(bot, "sendMessage", chat_id=ADA.id, text="x" * 4097)
    assert error(too_long) == (400, "Bad Request: message is too long")
    # An edit is checked by the server, which answers with its own code.
    edit = await call(
        bot, "editMessageText", chat_id=ADA.id, message_id=sent["message_id"], text="y" * 4097
    )
    assert error(edit) == (400, "Bad Request: MESSAGE_TOO_LONG")


async def test_empty_and_blank_text_are_rejected(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    empty = await call(bot, "sendMessage", chat_id=ADA.id, text="")
    assert error(empty) == (400, "Bad Request: message text is empty")
    blank = await call(bot, "sendMessage", chat_id=ADA.id, text=" \n ")
    assert error(blank) == (400, "Bad Request: text must be non-empty")


async def test_unknown_chat_and_missing_chat_id(bot: httpx.AsyncClient) -> None:
    unknown = await call(bot, "sendMessage", chat_id=999, text="hi")
    assert error(unknown) == (400, "Bad Request: chat not found")
    missing = await call(bot, "sendMessage", text="hi")
    assert error(missing) == (400, "Bad Request: chat_id is empty")


async def test_callback_data_over_64_bytes_is_button_data_invalid(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)

    def keyboard(data: str) -> dict[str, Any]:
        return {"inline_keyboard": [[{"text": "Go", "callback_data": data}]]}

    # 32 two-byte characters: 32 characters but 64 bytes, the most allowed.
    ok(await call(bot, "sendMessage", chat_id=ADA.id, text="a", reply_markup=keyboard("é" * 32)))
    too_big = await call(
        bot, "sendMessage", chat_id=ADA.id, text="b", reply_markup=keyboard("x" * 65)
    )
    assert error(too_big) == (400, "Bad Request: BUTTON_DATA_INVALID")
    empty = await call(bot, "sendMessage", chat_id=ADA.id, text="c", reply_markup=keyboard(""))
    assert error(empty) == (
        400,
        "Bad Request: can't parse inline keyboard button: "
        "Text buttons are unallowed in the inline keyboard",
    )


async def test_markdown_v2_errors_use_the_servers_words(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    dot = await call(
        bot, "sendMessage", chat_id=ADA.id, text="Version 1.0", parse_mode="MarkdownV2"
    )
    assert dot.status_code == 400
    assert dot.json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: can't parse entities: Character '.' is reserved and must "
        "be escaped with the preceding '\\'",
    }
    unclosed = await call(
        bot, "sendMessage", chat_id=ADA.id, text="🏟 🏟_abac * asd ", parse_mode="MarkdownV2"
    )
    assert error(unclosed) == (
        400,
        "Bad Request: can't parse entities: Can't find end of Bold entity at byte offset 15",
    )
    # Markup is parsed before the chat is looked up.
    elsewhere = await call(bot, "sendMessage", chat_id=999, text="1.0", parse_mode="MarkdownV2")
    assert "Character '.' is reserved" in error(elsewhere)[1]


async def test_markdown_v2_entities_come_back_in_utf16_units(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    sent = ok(
        await call(
            bot,
            "sendMessage",
            chat_id=ADA.id,
            text="🚀 *done* in `1\\.2s` [log](https://example.com/l)",
            parse_mode="MarkdownV2",
        )
    )
    assert sent["text"] == "🚀 done in 1.2s log"
    assert sent["entities"] == [
        {"offset": 3, "length": 4, "type": "bold"},
        {"offset": 11, "length": 4, "type": "code"},
        {"offset": 16, "length": 3, "type": "text_link", "url": "https://example.com/l"},
    ]


def test_reserved_characters_must_be_escaped() -> None:
    """A7's list: the characters that cannot start an entity fail alone, and pass escaped."""
    for character in "]()#+-=|{}.!":
        with pytest.raises(Exception, match=f"Character '\\{character}' is reserved"):
            parse_markdown_v2(f"a{character}b")
        assert parse_markdown_v2(f"a\\{character}b")[0] == f"a{character}b"
    assert parse_markdown_v2("\\_\\*\\[\\~\\`\\>")[0] == "_*[~`>"


# ---- editing (A6) ------------------------------------------------------------------------------


async def test_identical_edit_is_message_not_modified(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    sent = ok(
        await call(bot, "sendMessage", chat_id=ADA.id, text="Working…", reply_markup=KEYBOARD)
    )
    target = {"chat_id": ADA.id, "message_id": sent["message_id"]}
    same = await call(bot, "editMessageText", **target, text="Working…", reply_markup=KEYBOARD)
    assert error(same) == (400, MESSAGE_NOT_MODIFIED)
    assert MESSAGE_NOT_MODIFIED == (
        "Bad Request: message is not modified: specified new message content and reply markup "
        "are exactly the same as a current content and reply markup of the message"
    )
    # Parsed content is compared: the same text through MarkdownV2 is still the same.
    markdown = await call(
        bot,
        "editMessageText",
        **target,
        text="Working…",
        parse_mode="MarkdownV2",
        reply_markup=KEYBOARD,
    )
    assert error(markdown) == (400, MESSAGE_NOT_MODIFIED)
    # Refused edits still reached the server and count against the chat's bucket.
    await trio.sleep(3)
    # Leaving reply_markup out removes the keyboard, which is a change.
    ok(await call(bot, "editMessageText", **target, text="Working…"))
    view = telegram.message(ADA.id, sent["message_id"])
    assert (view.text, view.buttons, view.edited) == ("Working…", (), True)
    same_markup = await call(bot, "editMessageReplyMarkup", **target)
    assert error(same_markup) == (400, MESSAGE_NOT_MODIFIED)


async def test_edit_and_delete_of_missing_or_foreign_messages(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    user_message = telegram.inject_message(GROUP, ADA, "hi all", chat_type="supergroup")
    missing = await call(bot, "editMessageText", chat_id=GROUP, message_id=999, text="x")
    assert error(missing) == (400, "Bad Request: message to edit not found")
    foreign = await call(
        bot, "editMessageText", chat_id=GROUP, message_id=user_message.message_id, text="x"
    )
    assert error(foreign) == (400, "Bad Request: message can't be edited")
    not_admin = await call(bot, "deleteMessage", chat_id=GROUP, message_id=user_message.message_id)
    assert error(not_admin) == (400, "Bad Request: message can't be deleted")

    sent = ok(await call(bot, "sendMessage", chat_id=GROUP, text="bye"))
    assert ok(await call(bot, "deleteMessage", chat_id=GROUP, message_id=sent["message_id"]))
    gone = await call(bot, "deleteMessage", chat_id=GROUP, message_id=sent["message_id"])
    assert error(gone) == (400, "Bad Request: message to delete not found")
    assert [m.text for m in telegram.messages(GROUP)] == ["hi all"]


# ---- flood control (A5) --------------------------------------------------------------------------


async def test_a_burst_gets_429_with_retry_after_and_edits_share_the_bucket(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    sent = [ok(await call(bot, "sendMessage", chat_id=ADA.id, text=f"m{i}")) for i in range(3)]
    limited = await call(bot, "sendMessage", chat_id=ADA.id, text="m3")
    assert limited.status_code == 429
    assert limited.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
    assert limited.headers["retry-after"] == "1"
    edit = await call(
        bot, "editMessageText", chat_id=ADA.id, message_id=sent[0]["message_id"], text="e"
    )
    assert edit.status_code == 429
    await trio.sleep(1)
    ok(await call(bot, "sendMessage", chat_id=ADA.id, text="m3"))
    assert len(telegram.bot_messages(ADA.id)) == 4


async def test_groups_get_about_20_messages_a_minute(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    fake = FakeTelegram(flood_limits=FloodLimits(group_burst=20, group_rate=20 / 60))
    await fake.start(nursery)
    fake.add_chat(GROUP, "supergroup", title="Ops")
    async with httpx.AsyncClient(base_url=fake.method_url("")) as client:
        for i in range(20):
            ok(await call(client, "sendMessage", chat_id=GROUP, text=str(i)))
        limited = await call(client, "sendMessage", chat_id=GROUP, text="20")
        assert limited.json()["parameters"] == {"retry_after": 3}
        # Another chat has its own bucket.
        fake.add_chat(ADA.id, user=ADA)
        ok(await call(client, "sendMessage", chat_id=ADA.id, text="private"))


def test_token_bucket_arithmetic() -> None:
    bucket = TokenBucket(capacity=2, rate=0.5, now=100.0)
    assert bucket.wait_time(100.0) == 0
    bucket.take(100.0)
    bucket.take(100.0)
    assert bucket.wait_time(100.0) == pytest.approx(2.0)
    assert bucket.wait_time(101.0) == pytest.approx(1.0)
    assert bucket.wait_time(102.0) == 0
    assert bucket.wait_time(1000.0) == 0 and bucket.tokens == 2  # never above capacity
    assert [retry_after_seconds(w) for w in (0.01, 1.0, 1.2, 2.9)] == [1, 1, 2, 3]


async def test_fail_next_injects_errors_for_one_method(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    telegram.fail_next("sendMessage", retry_after=7)
    telegram.fail_next("getUpdates", times=2, error_code=502)
    limited = await call(bot, "sendMessage", chat_id=ADA.id, text="x")
    assert limited.json()["description"] == "Too Many Requests: retry after 7"
    assert limited.headers["retry-after"] == "7"
    ok(await call(bot, "sendMessage", chat_id=ADA.id, text="x"))
    for _ in range(2):
        assert error(await call(bot, "getUpdates")) == (502, "Bad Gateway")
    assert ok(await call(bot, "getUpdates")) == []


# ---- documents -----------------------------------------------------------------------------------


async def test_multipart_document_is_received_with_filename_and_bytes(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    content = b"line 1\nline 2\n\x00\xff"
    sent = ok(
        await bot.post(
            "sendDocument",
            data={"chat_id": str(ADA.id), "caption": "*build* log", "parse_mode": "MarkdownV2"},
            files={"document": ("build.log", content, "application/octet-stream")},
        )
    )
    assert sent["document"]["file_name"] == "build.log"
    assert sent["document"]["file_size"] == len(content)
    assert sent["caption"] == "build log"
    assert sent["caption_entities"] == [{"offset": 0, "length": 5, "type": "bold"}]
    [received] = telegram.documents(ADA.id)
    assert (received.filename, received.content, received.caption) == (
        "build.log",
        content,
        "build log",
    )
    # The returned file_id can be sent again; an unknown one cannot.
    again = ok(
        await call(bot, "sendDocument", chat_id=ADA.id, document=sent["document"]["file_id"])
    )
    assert again["document"]["file_name"] == "build.log"
    unknown = await call(bot, "sendDocument", chat_id=ADA.id, document="nope")
    assert error(unknown) == (400, "Bad Request: wrong file identifier/HTTP URL specified")
    missing = await bot.post("sendDocument", data={"chat_id": str(ADA.id)})
    assert error(missing) == (400, "Bad Request: there is no document in the request")


# ---- users: commands, buttons, views -------------------------------------------------------------


def test_bot_command_offsets_are_utf16_units() -> None:
    assert bot_command_entities("/task 🐛 fix it") == [
        {"offset": 0, "length": 5, "type": "bot_command"}
    ]
    # "🚀" is one code point but two UTF-16 units, so the command starts at 3, not 2.
    assert bot_command_entities("🚀 /task@anycode_test_bot fix 🐛 /help") == [
        {"offset": 3, "length": 22, "type": "bot_command"},
        {"offset": 33, "length": 5, "type": "bot_command"},
    ]
    assert utf16_len("🚀 /task@anycode_test_bot fix 🐛 ") == 33
    assert bot_command_entities("a/b and http://x/y and /x@ab") == []


async def test_injected_command_reaches_the_bot_with_entities(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.inject_message(GROUP, ADA, "🚀 /task@anycode_test_bot fix 🐛", chat_type="supergroup")
    [update] = ok(await call(bot, "getUpdates"))
    message = update["message"]
    assert message["chat"] == {"id": GROUP, "title": "Group 1001234567890", "type": "supergroup"}
    assert message["entities"] == [{"offset": 3, "length": 22, "type": "bot_command"}]


async def test_button_press_round_trip_and_views(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    asked = telegram.inject_message(ADA.id, ADA, "/task fix the build")
    sent = ok(
        await call(
            bot,
            "sendMessage",
            chat_id=ADA.id,
            text="Approve the plan?",
            reply_markup=KEYBOARD,
            reply_parameters={"message_id": asked.message_id},
        )
    )
    query_id = telegram.press(ADA.id, ADA, sent["message_id"], "Approve")
    updates = ok(await call(bot, "getUpdates"))
    callback = updates[-1]["callback_query"]
    assert callback["id"] == query_id
    assert callback["data"] == "approve:42"
    assert callback["message"]["message_id"] == sent["message_id"]
    assert callback["chat_instance"]

    ok(await call(bot, "answerCallbackQuery", callback_query_id=query_id, text="Approved"))
    twice = await call(bot, "answerCallbackQuery", callback_query_id=query_id)
    assert error(twice) == (400, QUERY_TOO_OLD)
    ok(
        await call(
            bot,
            "editMessageText",
            chat_id=ADA.id,
            message_id=sent["message_id"],
            text="Plan approved",
        )
    )

    [answer] = telegram.callback_answers
    assert (answer.query_id, answer.data, answer.text) == (query_id, "approve:42", "Approved")
    [user_view, bot_view] = telegram.messages(ADA.id)
    assert (user_view.from_bot, user_view.text) == (False, "/task fix the build")
    assert user_view.entities == ({"offset": 0, "length": 5, "type": "bot_command"},)
    assert (bot_view.text, bot_view.buttons, bot_view.edited) == ("Plan approved", (), True)
    assert bot_view.reply_to == asked.message_id
    assert telegram.transcript(ADA.id) == [
        "#1 Ada: /task fix the build",
        "#2 bot: Approve the plan? [Approve]",
        "#2 Ada pressed [Approve]",
        "bot answered Ada's press: Approved",
        "#2 bot edited: Plan approved",
    ]
    with pytest.raises(LookupError):
        telegram.press(ADA.id, ADA, sent["message_id"], "Approve")  # the button is gone


async def test_callback_queries_expire(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    sent = ok(await call(bot, "sendMessage", chat_id=ADA.id, text="?", reply_markup=KEYBOARD))
    query_id = telegram.inject_callback(ADA.id, ADA, sent["message_id"], "approve:42")
    long_text = await call(bot, "answerCallbackQuery", callback_query_id=query_id, text="x" * 201)
    assert error(long_text) == (400, "Bad Request: MESSAGE_TOO_LONG")
    await trio.sleep(telegram.callback_query_answer_window + 1)
    late = await call(bot, "answerCallbackQuery", callback_query_id=query_id)
    assert error(late) == (400, QUERY_TOO_OLD)
    assert telegram.callback_answers == []


async def test_wait_for_message_wakes_when_the_bot_sends(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)

    async def bot_works() -> None:
        await trio.sleep(2)
        ok(await call(bot, "sendMessage", chat_id=ADA.id, text="step 1"))
        await trio.sleep(2)
        ok(await call(bot, "sendMessage", chat_id=ADA.id, text="all done"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bot_works)
        with trio.fail_after(10):
            done = await telegram.wait_for_message(ADA.id, containing="done")
    assert done.text == "all done"
    assert trio.current_time() == pytest.approx(4, abs=0.01)


async def test_commands_are_validated_and_stored(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    commands = [{"command": "task", "description": "Start a task"}]
    ok(await call(bot, "setMyCommands", commands=commands))
    assert telegram.commands == {("default", ""): commands}
    assert ok(await call(bot, "getMyCommands")) == commands
    bad = await call(bot, "setMyCommands", commands=[{"command": "Task-1", "description": "x"}])
    assert error(bad) == (400, "Bad Request: BOT_COMMAND_INVALID")
    too_many = [{"command": f"c{i}", "description": "x"} for i in range(101)]
    assert error(await call(bot, "setMyCommands", commands=too_many)) == (
        400,
        "Bad Request: BOT_COMMANDS_TOO_MUCH",
    )


async def test_a_webhook_blocks_get_updates_until_deleted(bot: httpx.AsyncClient) -> None:
    ok(await call(bot, "setWebhook", url="https://example.com/hook"))
    assert error(await call(bot, "getUpdates")) == (
        409,
        "Conflict: can't use getUpdates method while webhook is active; "
        "use deleteWebhook to delete the webhook first",
    )
    ok(await call(bot, "deleteWebhook"))
    assert ok(await call(bot, "getUpdates")) == []


async def test_a_blocked_user_is_403(telegram: FakeTelegram, bot: httpx.AsyncClient) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    telegram.block(ADA.id)
    blocked = await call(bot, "sendMessage", chat_id=ADA.id, text="hi")
    assert error(blocked) == (403, "Forbidden: bot was blocked by the user")


async def test_replying_to_a_missing_message(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    missing = await call(
        bot, "sendMessage", chat_id=ADA.id, text="re", reply_parameters={"message_id": 77}
    )
    assert error(missing) == (400, "Bad Request: message to be replied not found")
    allowed = {"message_id": 77, "allow_sending_without_reply": True}
    sent = ok(await call(bot, "sendMessage", chat_id=ADA.id, text="re", reply_parameters=allowed))
    assert "reply_to_message" not in sent


async def test_html_parse_mode(telegram: FakeTelegram, bot: httpx.AsyncClient) -> None:
    telegram.add_chat(ADA.id, user=ADA)
    sent = ok(
        await call(bot, "sendMessage", chat_id=ADA.id, text="<b>1 &lt; 2</b>", parse_mode="HTML")
    )
    assert (sent["text"], sent["entities"]) == (
        "1 < 2",
        [{"offset": 0, "length": 5, "type": "bold"}],
    )
    bad = await call(bot, "sendMessage", chat_id=ADA.id, text="a <div>b</div>", parse_mode="HTML")
    assert error(bad) == (
        400,
        'Bad Request: can\'t parse entities: Unsupported start tag "div" at byte offset 2',
    )


# ---- forum topics and files (A3, A4) ----------------------------------------------------------


async def test_topic_messages_carry_their_thread_and_sends_land_in_it(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(GROUP, "supergroup", is_forum=True)
    topic = telegram.create_topic(GROUP, "bugs")
    telegram.inject_message(GROUP, ADA, "/task fix it", "supergroup", thread_id=topic)
    telegram.inject_message(GROUP, ADA, "outside", "supergroup")
    first, second = (u["message"] for u in ok(await call(bot, "getUpdates")))
    assert first["chat"]["is_forum"] is True
    assert (first["message_thread_id"], first["is_topic_message"]) == (topic, True)
    # Not a reply of its own: it "replies" to the topic's first message, as in Telegram.
    assert first["reply_to_message"]["message_id"] == topic
    assert first["reply_to_message"]["forum_topic_created"]["name"] == "bugs"
    assert "message_thread_id" not in second and "reply_to_message" not in second

    sent = ok(await call(bot, "sendMessage", chat_id=GROUP, text="on it", message_thread_id=topic))
    assert sent["message_thread_id"] == topic
    assert [m.text for m in telegram.topic_messages(GROUP, topic) if m.from_bot] == ["on it"]
    assert (await telegram.wait_for_message(GROUP, "on it", topic=topic)).thread_id == topic


async def test_closed_and_deleted_topics_refuse_sends_with_the_servers_words(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(GROUP, "supergroup", is_forum=True)
    topic = ok(await call(bot, "createForumTopic", chat_id=GROUP, name="deploys"))
    thread = topic["message_thread_id"]
    sent = ok(await call(bot, "sendMessage", chat_id=GROUP, text="one", message_thread_id=thread))
    assert ok(await call(bot, "closeForumTopic", chat_id=GROUP, message_thread_id=thread)) is True
    closed = await call(bot, "sendMessage", chat_id=GROUP, text="two", message_thread_id=thread)
    assert error(closed) == (400, "Bad Request: TOPIC_CLOSED")
    document = await bot.post(
        "sendDocument",
        data={"chat_id": str(GROUP), "message_thread_id": str(thread)},
        files={"document": ("a.txt", b"x", "text/plain")},
    )
    assert error(document) == (400, "Bad Request: TOPIC_CLOSED")
    ok(await call(bot, "reopenForumTopic", chat_id=GROUP, message_thread_id=thread))
    ok(await call(bot, "sendMessage", chat_id=GROUP, text="two", message_thread_id=thread))

    assert ok(await call(bot, "deleteForumTopic", chat_id=GROUP, message_thread_id=thread))
    gone = await call(bot, "sendMessage", chat_id=GROUP, text="3", message_thread_id=thread)
    assert error(gone) == (400, "Bad Request: message thread not found")
    # Its messages went with it.
    edit = await call(
        bot, "editMessageText", chat_id=GROUP, message_id=sent["message_id"], text="1!"
    )
    assert error(edit) == (400, "Bad Request: message to edit not found")
    # The main chat still takes messages.
    ok(await call(bot, "sendMessage", chat_id=GROUP, text="here"))
    plain = await call(bot, "createForumTopic", chat_id=-100999, name="x")
    assert error(plain)[0] == 400


async def test_files_users_send_are_fetched_with_get_file_and_the_download_path(
    telegram: FakeTelegram, bot: httpx.AsyncClient
) -> None:
    telegram.add_chat(GROUP, "supergroup", is_forum=True)
    topic = telegram.create_topic(GROUP, "bugs")
    telegram.inject_file(
        GROUP,
        ADA,
        "photo",
        b"\xff\xd8jpeg",
        caption="/task look",
        chat_type="supergroup",
        thread_id=topic,
    )
    telegram.inject_file(
        ADA.id, ADA, "document", b"notes", filename="n.txt", mime_type="text/plain"
    )
    telegram.inject_file(ADA.id, ADA, "voice", b"OggS")
    telegram.inject_file(ADA.id, ADA, "document", b"x", filename="big.bin", size=21 * 1024 * 1024)
    photo, document, voice, big = (u["message"] for u in ok(await call(bot, "getUpdates")))
    assert photo["caption"] == "/task look" and photo["message_thread_id"] == topic
    assert photo["caption_entities"] == [{"type": "bot_command", "offset": 0, "length": 5}]
    assert "text" not in photo
    largest = photo["photo"][-1]
    assert largest["width"] > photo["photo"][0]["width"]
    assert document["document"]["file_name"] == "n.txt"
    assert voice["voice"]["mime_type"] == "audio/ogg"

    described = ok(await call(bot, "getFile", file_id=largest["file_id"]))
    assert described["file_size"] == 6
    async with httpx.AsyncClient() as plain:
        url = f"{telegram.base_url}/file/bot{telegram.token}/{described['file_path']}"
        downloaded = await plain.get(url)
        assert (downloaded.status_code, downloaded.content) == (200, b"\xff\xd8jpeg")
        wrong = await plain.get(f"{telegram.base_url}/file/bot{telegram.token}/photos/nope.jpg")
        assert wrong.status_code == 404
        other = await plain.get(f"{telegram.base_url}/file/bot1:other/{described['file_path']}")
        assert other.status_code == 401
    assert telegram.downloads == [described["file_path"]]
    too_big = await call(bot, "getFile", file_id=big["document"]["file_id"])
    assert error(too_big) == (400, "Bad Request: file is too big")
    unknown = await call(bot, "getFile", file_id="nope")
    assert error(unknown) == (400, "Bad Request: invalid file_id")
