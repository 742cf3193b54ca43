"""A faithful stand-in for the Telegram Bot API, served over real HTTP on loopback.

The daemon talks to it exactly as it talks to ``https://api.telegram.org``:
``/bot<token>/<method>``, GET or POST, parameters as query string, urlencoded form, JSON or
multipart. Behaviour, limits and error strings follow Telegram's documentation, cited by these
tags:

- A1 requests and answers: https://core.telegram.org/bots/api#making-requests
- A2 getUpdates: https://core.telegram.org/bots/api#getting-updates
- A3 Message, MessageEntity and User: https://core.telegram.org/bots/api#available-types
- A4 the methods: https://core.telegram.org/bots/api#available-methods
- A5 limits: https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this
  and the limits stated with each method and type
- A6 errors and retry_after: https://core.telegram.org/bots/api#responseparameters
- A7 formatting: https://core.telegram.org/bots/api#formatting-options

and, where the documentation is silent, the Bot API server's own source
(https://github.com/tdlib/telegram-bot-api @01a3679 and the TDLib commit it pins, 49b3bcb),
cited as ``Client.cpp``, ``MessageEntity.cpp`` and so on. The MarkdownV2, Markdown and HTML
parsers are ports of TDLib's and pass TDLib's own parser test vectors.

Start it in the test's nursery. It runs in the same Trio run as the test, so every wait and every
rate limit follows ``trio.current_time()``, and the ``autojump_clock`` fixture makes long polls
and ``retry_after`` waits take no real time. The fake itself never uses threads (multipart bodies
are parsed synchronously), so it never makes the mock clock jump while a request is in flight::

    fake = FakeTelegram()
    base_url = await fake.start(nursery)      # "http://127.0.0.1:<port>"
    # point the daemon at f"{base_url}/bot{fake.token}/<method>"
    fake.inject_message(111, ADA, "/task fix the build")
    reply = await fake.wait_for_message(111, containing="Starting")

The test API (``inject_*``, ``messages``, ``transcript``, ``wait_for*``, ``fail_next``...) is plain
Python on the same object; the bot side only ever sees HTTP.

Not modelled: webhooks deliver nothing (setWebhook only blocks getUpdates, as it does for real);
inline mode (every ``inline_message_id`` is invalid); automatic ``url``/``mention``/``hashtag``
entities (only ``bot_command`` entities are detected, in users' messages); the 4 MiB cut of a
getUpdates answer; methods other than the ones in ``FakeTelegram._methods``, which answer
404 "Not Found: method not found" so a test notices.

Sections: limits and strings; errors; text (UTF-16, clean-up, MarkdownV2/Markdown/HTML parsers,
links, bot commands); reply markup; flood control; test-facing data types; the fake itself (test
API, then the Bot API methods); HTTP (request parsing, ASGI app).
"""

from __future__ import annotations

import json
import math
import mimetypes
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import trio
from python_multipart.multipart import MultipartParser, parse_options_header

from tests.fakes._http import serve_asgi

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Limits and exact strings
# --------------------------------------------------------------------------------------------

#: Text and captions are counted in Unicode code points after entity parsing (A5).
MESSAGE_TEXT_MAX: Final = 4096
CAPTION_MAX: Final = 1024
#: Raw ``text`` above this many UTF-8 bytes is refused before parsing
#: (``Client.cpp get_formatted_text``).
RAW_TEXT_MAX_BYTES: Final = 1 << 15
#: ``callback_data`` must be 1-64 bytes (A5).
CALLBACK_DATA_MAX_BYTES: Final = 64
#: answerCallbackQuery ``text`` is 0-200 characters (A4).
CALLBACK_ANSWER_TEXT_MAX: Final = 200
#: getUpdates clamps, never rejects (A2).
LONG_POLL_MAX_TIMEOUT: Final = 50
GET_UPDATES_LIMIT_MAX: Final = 100
#: A woken long poll waits this long for more updates before answering (``Client.h``).
LONG_POLL_WAIT_AFTER: Final = 0.001
#: Conflicts repeating within this window are answered only after the same delay (A2).
CONFLICT_REPEAT_DELAY: Final = 3.0
#: Anti-spin: the same offset again within 3 s with timeout<3 gets timeout=3; within 0.5 s limit=1.
ANTI_SPIN_TIMEOUT_WINDOW: Final = 3.0
ANTI_SPIN_LIMIT_WINDOW: Final = 0.5
#: An offset more than this beyond the queue tail is "in the future" and ignored (``TQueue.cpp``).
OFFSET_FUTURE_SLACK: Final = 10
#: Updates "will not be kept longer than 24 hours" (A2).
UPDATE_RETENTION: Final = 24 * 3600.0
#: deleteMessage: "only messages less than 48 h old" (A4).
DELETE_WINDOW: Final = 48 * 3600.0
#: The Bot API does not document how long a callback query can be answered; clients observe
#: "a few seconds". The fake allows this long (configurable per instance).
CALLBACK_QUERY_ANSWER_WINDOW: Final = 15.0
#: setMyCommands limits (A4; TDLib ``BotCommand.cpp``).
MAX_COMMANDS: Final = 100
COMMAND_MAX: Final = 32
COMMAND_DESCRIPTION_MAX: Final = 256
#: Upload limit (A5).
UPLOAD_MAX_BYTES: Final = 50 * 1024 * 1024
#: getFile: "bots can download files of up to 20MB in size" (https://core.telegram.org/bots/api#getfile);
#: a bigger file is refused with "file is too big" (``Client.cpp``, ``process_get_file_query``).
DOWNLOAD_MAX_BYTES: Final = 20 * 1024 * 1024
#: Forum topics (https://core.telegram.org/bots/api#forumtopic): a new topic's default colour.
TOPIC_ICON_COLOR: Final = 7322096
#: Sending into a closed topic (not as an admin with can_manage_topics) and into a deleted or
#: unknown one, as the Bot API server words TDLib's errors (``Client.cpp``).
TOPIC_CLOSED: Final = "Bad Request: TOPIC_CLOSED"
THREAD_NOT_FOUND: Final = "Bad Request: message thread not found"
FILE_TOO_BIG: Final = "Bad Request: file is too big"
INVALID_FILE_ID: Final = "Bad Request: invalid file_id"
#: Unix time of trio time 0 in ``date`` fields: deterministic dates for deterministic tests.
DATE_EPOCH: Final = 1_700_000_000
FIRST_UPDATE_ID: Final = 100_000_001

DEFAULT_TOKEN: Final = "4242:fake-telegram-token-for-tests-0123456789"

CONFLICT_OTHER_GET_UPDATES: Final = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
CONFLICT_SET_WEBHOOK: Final = "Conflict: terminated by setWebhook request"
CONFLICT_WEBHOOK_ACTIVE: Final = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
MESSAGE_NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD: Final = (
    "Bad Request: query is too old and response timeout expired or query ID is invalid"
)

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class BotApiError(Exception):
    """An error answer: ``{"ok":false,"error_code":N,"description":...,"parameters":...}`` (A1).

    The HTTP status equals ``error_code``; a 429 also carries ``parameters.retry_after`` and a
    ``Retry-After`` header.
    """

    def __init__(
        self, error_code: int, description: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{error_code} {description}")
        self.error_code = error_code
        self.description = description
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _too_many_requests(retry_after: int) -> BotApiError:
    """``Query::set_retry_after_error`` (A6)."""
    return BotApiError(
        429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
    )


# Server error codes the Bot API rewrites (``Client::fail_query_with_error``).
_REWRITTEN_400: Final = {
    "MESSAGE_NOT_MODIFIED": (
        400,
        "message is not modified: specified new message content and reply markup are exactly "
        "the same as a current content and reply markup of the message",
    ),
    "QUERY_ID_INVALID": (
        400,
        "query is too old and response timeout expired or query ID is invalid",
    ),
    "MESSAGE_DELETE_FORBIDDEN": (400, "message can't be deleted"),
    "USER_IS_BLOCKED": (403, "bot was blocked by the user"),
}
_PREFIXES: Final = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}


def _fail(error_code: int, message: str) -> BotApiError:
    """Turn a TDLib/server error into the Bot API's wording, as ``fail_query_with_error`` does.

    The prefix comes from the code; the first letter is lower-cased unless the message is an
    upper-case server code such as ``BUTTON_DATA_INVALID``, which passes through unchanged (A6).
    """
    if error_code == 400 and message in _REWRITTEN_400:
        error_code, message = _REWRITTEN_400[message]
    prefix = _PREFIXES.get(error_code)
    if prefix is None:
        return BotApiError(400, f"Bad Request: {message}")
    if message.startswith(prefix):
        return BotApiError(error_code, message)
    if len(message) >= 2 and (message[1] == "_" or "A" <= message[1] <= "Z"):
        return BotApiError(error_code, f"{prefix}: {message}")
    return BotApiError(error_code, f"{prefix}: {message[0].lower()}{message[1:]}")


def _bad_request(message: str) -> BotApiError:
    return _fail(400, message)


class _ParseError(Exception):
    """A TDLib text-parsing failure; the Bot API prefixes it with "Can't parse entities: "."""


# --------------------------------------------------------------------------------------------
# Text: UTF-16 units, entities, clean-up
# --------------------------------------------------------------------------------------------


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of every entity offset and length (A3)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _utf8_first_unit(byte: int) -> bool:
    return (byte & 0xC0) != 0x80


def _utf16_units_of_lead_byte(byte: int) -> int:
    """How TDLib counts: a 4-byte UTF-8 sequence is a surrogate pair."""
    return 2 if byte >= 0xF0 else 1


# TDLib entity type names (they appear in parse errors) and their sort priority
# (``MessageEntity::get_type_priority``).
_PRIORITY: Final = {
    "BotCommand": 50,
    "Bold": 90,
    "Italic": 91,
    "Code": 20,
    "Pre": 11,
    "PreCode": 10,
    "TextUrl": 49,
    "MentionName": 49,
    "Underline": 92,
    "Strikethrough": 93,
    "BlockQuote": 0,
    "Spoiler": 94,
    "CustomEmoji": 99,
    "ExpandableBlockQuote": 0,
    "FormattedDate": 30,
}
_API_TYPE: Final = {
    "BotCommand": "bot_command",
    "Bold": "bold",
    "Italic": "italic",
    "Code": "code",
    "Pre": "pre",
    "PreCode": "pre",
    "TextUrl": "text_link",
    "MentionName": "text_mention",
    "Underline": "underline",
    "Strikethrough": "strikethrough",
    "BlockQuote": "blockquote",
    "Spoiler": "spoiler",
    "CustomEmoji": "custom_emoji",
    "ExpandableBlockQuote": "expandable_blockquote",
    "FormattedDate": "date_time",
}
# ``MessageEntity::DateFlags``
_DATE_RELATIVE, _DATE_SHORT_TIME, _DATE_LONG_TIME = 1, 2, 4
_DATE_SHORT_DATE, _DATE_LONG_DATE, _DATE_DAY_OF_WEEK = 8, 16, 32


@dataclass
class _Entity:
    """A formatting entity as TDLib holds it; offsets and lengths in UTF-16 units."""

    type: str
    offset: int
    length: int
    argument: str = ""
    user_id: int = 0
    custom_emoji_id: int = 0
    date: int = 0
    date_flags: int = 0

    def sort_key(self) -> tuple[int, int, int]:
        return (self.offset, -self.length, _PRIORITY[self.type])

    def to_api(self, users: dict[int, User]) -> dict[str, Any]:
        """``Client::JsonEntity``."""
        result: dict[str, Any] = {
            "offset": self.offset,
            "length": self.length,
            "type": _API_TYPE[self.type],
        }
        if self.type == "PreCode":
            result["language"] = self.argument
        elif self.type == "TextUrl":
            result["url"] = self.argument
        elif self.type == "MentionName":
            known = users.get(self.user_id)
            result["user"] = (
                known.to_api() if known else {"id": self.user_id, "is_bot": False, "first_name": ""}
            )
        elif self.type == "CustomEmoji":
            result["custom_emoji_id"] = str(self.custom_emoji_id)
        elif self.type == "FormattedDate":
            result["unix_time"] = self.date
            result["date_time_format"] = _date_format_string(self.date_flags)
        return result


def _date_format_string(flags: int) -> str:
    if flags & _DATE_RELATIVE:
        return "r"
    out = "w" if flags & _DATE_DAY_OF_WEEK else ""
    if flags & _DATE_LONG_DATE:
        out += "D"
    elif flags & _DATE_SHORT_DATE:
        out += "d"
    if flags & _DATE_LONG_TIME:
        out += "T"
    elif flags & _DATE_SHORT_TIME:
        out += "t"
    return out


def _date_flags(date_format: str) -> int:
    """``get_date_flags`` (MessageEntity.cpp)."""
    if date_format in ("r", "R"):
        return _DATE_RELATIVE
    flags = 0
    letters = {
        "t": _DATE_SHORT_TIME,
        "T": _DATE_LONG_TIME,
        "d": _DATE_SHORT_DATE,
        "D": _DATE_LONG_DATE,
        "w": _DATE_DAY_OF_WEEK,
        "W": _DATE_DAY_OF_WEEK,
    }
    for letter in date_format:
        if letter not in letters:
            raise _ParseError("Invalid date format used")
        flags |= letters[letter]
    return flags


def _sorted_entities(entities: list[_Entity]) -> list[_Entity]:
    return sorted(entities, key=_Entity.sort_key)


def _is_removed_char(text: str, index: int) -> bool:
    ch = text[index]
    return ch == "\r" or "\u2028" <= ch <= "\u202e" or ch in "\u0333\u033f\u030a"


def _clean_input(text: str, entities: list[_Entity]) -> tuple[str, list[_Entity]]:
    """``clean_input_string``: control characters become spaces; ``\\r``, U+2028-U+202E and some
    combining vertical lines disappear. Entity boundaries follow the removed characters."""
    out: list[str] = []
    # new UTF-16 offset for every old UTF-16 offset (one past the end included)
    remap: list[int] = []
    position = 0
    for index, ch in enumerate(text):
        units = 2 if ord(ch) > 0xFFFF else 1
        remap.extend([position] * units)
        if _is_removed_char(text, index):
            continue
        out.append(" " if ord(ch) <= 0x20 and ch != "\n" else ch)
        position += units
    remap.append(position)
    cleaned: list[_Entity] = []
    for entity in entities:
        end = entity.offset + entity.length
        if entity.offset < 0 or end >= len(remap):
            continue
        start, stop = remap[entity.offset], remap[end]
        if stop > start:
            cleaned.append(replace(entity, offset=start, length=stop - start))
    return "".join(out), cleaned


def _fix_formatted_text(text: str, entities: list[_Entity]) -> tuple[str, list[_Entity]]:
    """The parts of TDLib's ``fix_formatted_text`` a user can see: clean the string, strip trailing
    spaces/newlines and the leading ones before the first entity, reject what is left empty."""
    text, entities = _clean_input(text, entities)
    stripped = text.rstrip(" \n")
    if not stripped:
        raise _ParseError("Text must be non-empty")
    end = utf16_len(stripped)
    kept: list[_Entity] = []
    for entity in _sorted_entities(entities):
        if entity.offset >= end:
            continue
        kept.append(replace(entity, length=min(entity.length, end - entity.offset)))
    first_entity = kept[0].offset if kept else end
    lead = 0
    while lead < first_entity and stripped[lead] in " \n":
        lead += 1
    return stripped[lead:], [replace(e, offset=e.offset - lead) for e in kept]


# --------------------------------------------------------------------------------------------
# Text: links (LinkManager.cpp, HttpUrl.cpp)
# --------------------------------------------------------------------------------------------

_URL_PART_EXTRA: Final = set(".-_!$,~*'();&+=")


def _check_url_part(part: str, allow_colon: bool) -> bool:
    i = 0
    while i < len(part):
        ch = part[i]
        if (ch.isascii() and ch.isalnum()) or ch in _URL_PART_EXTRA or (allow_colon and ch == ":"):
            i += 1
            continue
        if ch == "%":
            hexdigits = part[i + 1 : i + 3]
            if len(hexdigits) == 2 and all(c in "0123456789abcdefABCDEF" for c in hexdigits):
                i += 3
                continue
            return False
        if ord(ch) >= 128:
            i += 1
            continue
        return False
    return True


def _parse_http_url(url: str) -> tuple[str, str, str, int, str] | None:
    """``parse_url``: (protocol, userinfo, host, specified_port, query) or None if invalid."""
    head_end = next((i for i, ch in enumerate(url) if ch in ":/?#@[]"), len(url))
    protocol = "http"
    rest = url
    if url[head_end : head_end + 3] == "://":
        protocol = url[:head_end].lower()
        if protocol not in ("http", "https"):
            return None
        rest = url[head_end + 3 :]
    authority_end = next((i for i, ch in enumerate(rest) if ch in "/?#"), len(rest))
    authority, query = rest[:authority_end], rest[authority_end:]
    port = 0
    colon = len(authority) - 1
    while colon > 0 and authority[colon] not in ":]@":
        colon -= 1
    host_part = authority
    if colon > 0 and authority[colon] == ":":
        digits = authority[colon + 1 :].lstrip("0") or ("0" if authority[colon + 1 :] else "")
        port = int(digits) if digits.isdigit() and int(digits) > 0 else -1
        host_part = authority[:colon]
    if port < 0 or port > 65535:
        return None
    userinfo, _, host = host_part.rpartition("@")
    if not host or host == ".":
        return None
    query = query.rstrip(" \t\r\n\v\0") or "/"
    if not query.startswith("/"):
        query = "/" + query
    query = "".join(f"%{ord(ch):02X}" if ord(ch) <= 0x20 else ch for ch in query)
    host = host.lower()
    is_ipv6 = host.startswith("[") and host.endswith("]")
    if not is_ipv6 and not (_check_url_part(host, False) and _check_url_part(userinfo, True)):
        return None
    if not is_ipv6 and "." not in host:
        return None
    return protocol, userinfo, host, port, query


def _checked_link(url: str) -> str:
    """``LinkManager::get_checked_link`` for http(s) and tg: links; "" when TDLib drops the link."""
    lowered = url.lower()
    for scheme in ("tg:", "ton:", "tonsite:"):
        if lowered.startswith(scheme):
            rest = url[len(scheme) :].removeprefix("//")
            host_end = next((i for i, ch in enumerate(rest) if ch in "/?#"), len(rest))
            host, query = rest[:host_end], rest[host_end:].rstrip(" \t\r\n\v\0") or "/"
            if not host or not all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in host):
                return ""
            if not query.startswith("/"):
                query = "/" + query
            if query[1:2] == "?":  # "tg://resolve?domain=x", not "tg://resolve/?domain=x"
                query = query[1:]
            return f"{scheme[:-1]}://{host.lower()}{query}"
    parsed = _parse_http_url(url)
    if parsed is None:
        return ""
    protocol, userinfo, host, port, query = parsed
    auth = f"{userinfo}@" if userinfo else ""
    return f"{protocol}://{auth}{host}{f':{port}' if port else ''}{query}"


def _tg_query(url: str, host: str) -> str | None:
    """``check_tg_url_host``: the query of ``tg://<host>?...``, or None."""
    lowered = url.lower()
    if not lowered.startswith("tg:"):
        return None
    url, lowered = url[3:], lowered[3:]
    if url.startswith("//"):
        url, lowered = url[2:], lowered[2:]
    if not lowered.startswith(host) or (len(url) > len(host) and url[len(host)] not in "/?#"):
        return None
    url = url[len(host) :].removeprefix("/")
    if not url.startswith("?"):
        return None
    return url[1:].split("#", 1)[0]


def _query_value(query: str, key: str) -> str | None:
    for parameter in query.split("&"):
        name, _, value = parameter.partition("=")
        if name == key:
            return value
    return None


def _int64(value: str) -> int | None:
    """``to_integer_safe<int64>``: the value must print back exactly (no "+", no leading 0)."""
    digits = value[1:] if value.startswith("-") else value
    if not digits.isdigit() or not digits.isascii() or str(int(value)) != value:
        return None
    number = int(value)
    return number if -(2**63) <= number < 2**63 else None


def _link_user_id(url: str) -> int:
    """``LinkManager::get_link_user_id``: ``tg://user?id=N`` makes a text_mention."""
    query = _tg_query(url.lower(), "user")
    value = None if query is None else _query_value(query, "id")
    user_id = None if value is None else _int64(value)
    return user_id if user_id and user_id > 0 else 0


def _custom_emoji_or_date(url: str) -> tuple[int, int, int]:
    """(custom_emoji_id, date, date_flags) for ``![..](tg://emoji?id=...)`` or ``tg://time``."""
    query = _tg_query(url, "emoji")
    if query is not None:
        value = _query_value(query, "id")
        emoji_id = None if value is None else _int64(value)
        if emoji_id:
            return emoji_id, 0, 0
    query = _tg_query(url, "time")
    if query is not None:
        unix = _query_value(query, "unix")
        date = None if unix is None else _int64(unix)
        if date is not None and 0 < date < 2**31:
            return 0, date, _date_flags(_query_value(query, "format") or "")
    raise _ParseError("Invalid tg://emoji or tg://time URL specified")


# --------------------------------------------------------------------------------------------
# Text: MarkdownV2, Markdown and HTML (ports of TDLib's parsers, MessageEntity.cpp)
# --------------------------------------------------------------------------------------------

_MARKDOWN_V2_RESERVED: Final = b"_*[]()~`>#+-=|{}.!\n"
_CODE_TYPES: Final = ("Code", "Pre", "PreCode")


@dataclass
class _OpenEntity:
    type: str
    argument: str
    utf16_offset: int
    byte_offset: int
    result_pos: int


def _is_space_byte(byte: int) -> bool:
    """``td::is_space``; NUL counts, which is how TDLib stops at the end of the string."""
    return byte in (0x20, 0x09, 0x0D, 0x0A, 0x00, 0x0B)


def parse_markdown_v2(text: str) -> tuple[str, list[_Entity]]:
    """Port of TDLib ``parse_markdown_v2`` (A7): the plain text and its entities.

    Raises ``_ParseError`` with TDLib's message, e.g. "Character '.' is reserved and must be
    escaped with the preceding '\\'" or "Can't find end of Bold entity at byte offset 15"
    (offsets in UTF-8 bytes). The loop keeps TDLib's byte-level structure on purpose, so that
    every error and offset matches the server's.
    """
    src = text.encode()
    size = len(src)

    def at(k: int) -> int:
        return src[k] if k < size else 0

    result = bytearray()
    entities: list[_Entity] = []
    nested: list[_OpenEntity] = []
    utf16 = 0
    have_blockquote = False
    can_start_blockquote = True
    i = -1
    while True:
        i += 1
        if i >= size:
            break
        c = src[i]
        if c == 0x5C and 0 < at(i + 1) <= 126:  # backslash escapes any ASCII 1..126
            i += 1
            utf16 += 1
            result.append(src[i])
            if src[i] != 0x0D:
                can_start_blockquote = src[i] == 0x0A
            continue

        in_code = bool(nested) and nested[-1].type in _CODE_TYPES
        reserved = b"`" if in_code else _MARKDOWN_V2_RESERVED
        if c not in reserved:
            if _utf8_first_unit(c):
                utf16 += _utf16_units_of_lead_byte(c)
                if c != 0x0D:
                    can_start_blockquote = False
            result.append(c)
            continue

        if not nested:
            is_end = False
        elif have_blockquote and c == 0x0A and (i + 1 == size or src[i + 1] != 0x3E):
            is_end = True
        else:
            top = nested[-1].type
            is_end = {
                "Bold": c == 0x2A,
                "Italic": c == 0x5F and at(i + 1) != 0x5F,
                "Code": c == 0x60,
                "Pre": c == 0x60 and at(i + 1) == 0x60 and at(i + 2) == 0x60,
                "PreCode": c == 0x60 and at(i + 1) == 0x60 and at(i + 2) == 0x60,
                "TextUrl": c == 0x5D,
                "Underline": c == 0x5F and at(i + 1) == 0x5F,
                "Strikethrough": c == 0x7E,
                "Spoiler": c == 0x7C and at(i + 1) == 0x7C,
                "CustomEmoji": c == 0x5D,
                "BlockQuote": False,
            }[top]

        if not is_end:
            entity_type: str | None
            argument = ""
            byte_offset = i
            reserved_error = _ParseError(
                f"Character '{chr(c)}' is reserved and must be escaped with the preceding '\\'"
            )
            if c == 0x5F:
                if at(i + 1) == 0x5F:
                    entity_type = "Underline"
                    i += 1
                else:
                    entity_type = "Italic"
            elif c == 0x2A:
                entity_type = "Bold"
            elif c == 0x7E:
                entity_type = "Strikethrough"
            elif c == 0x7C:
                if at(i + 1) != 0x7C:
                    raise reserved_error
                i += 1
                entity_type = "Spoiler"
            elif c == 0x5B:
                entity_type = "TextUrl"
            elif c == 0x60:
                if at(i + 1) == 0x60 and at(i + 2) == 0x60:
                    i += 3
                    entity_type = "Pre"
                    language_end = i
                    while not _is_space_byte(at(language_end)) and at(language_end) != 0x60:
                        language_end += 1
                    if i != language_end and language_end < size and at(language_end) != 0x60:
                        entity_type = "PreCode"
                        argument = src[i:language_end].decode(errors="replace")
                        i = language_end
                    if at(i) in (0x0A, 0x0D):  # skip one new line at the start of the block
                        if at(i + 1) in (0x0A, 0x0D) and at(i) != at(i + 1):
                            i += 2
                        else:
                            i += 1
                    i -= 1
                else:
                    entity_type = "Code"
            elif c == 0x21:
                if at(i + 1) != 0x5B:
                    raise reserved_error
                i += 1
                entity_type = "CustomEmoji"
            elif c == 0x0A:
                utf16 += 1
                result.append(0x0A)
                can_start_blockquote = True
                entity_type = None
            elif c == 0x3E:
                if not can_start_blockquote:
                    raise reserved_error
                if have_blockquote:
                    entity_type = None
                else:
                    entity_type = "BlockQuote"
                    have_blockquote = True
            else:
                raise reserved_error
            if entity_type is not None:
                nested.append(_OpenEntity(entity_type, argument, utf16, byte_offset, len(result)))
            continue

        # end of an entity
        entity_type = nested[-1].type
        if c == 0x0A and entity_type != "BlockQuote":
            top = nested[-1]
            closes_expandable = top.byte_offset == i - 2 or (
                top.byte_offset == i - 3 and result and result[-1] == 0x0D
            )
            if entity_type != "Spoiler" or not closes_expandable:
                raise _ParseError(
                    f"Can't find end of {top.type} entity at byte offset {top.byte_offset}"
                )
            nested.pop()
            if nested[-1].type != "BlockQuote":
                raise _ParseError(
                    f"Can't find end of {nested[-1].type} entity at byte offset "
                    f"{nested[-1].byte_offset}"
                )
            entity_type = "ExpandableBlockQuote"
        top = nested[-1]
        argument = top.argument
        skip = utf16 == top.utf16_offset
        user_id = custom_emoji_id = date = date_flags = 0
        if entity_type in ("Underline", "Spoiler"):
            i += 1
        elif entity_type in ("Pre", "PreCode"):
            i += 2
        elif entity_type in ("TextUrl", "CustomEmoji"):
            if entity_type == "TextUrl" and at(i + 1) != 0x28:
                url = result[top.result_pos :].decode(errors="replace")
            else:
                if at(i + 1) != 0x28:
                    raise _ParseError("The entity must contain a tg://emoji or tg://time URL")
                i += 2
                url_begin = i
                raw_url = bytearray()
                while i < size and src[i] != 0x29:
                    if src[i] == 0x5C and 0 < at(i + 1) <= 126:
                        raw_url.append(src[i + 1])
                        i += 2
                        continue
                    raw_url.append(src[i])
                    i += 1
                if at(i) != 0x29:
                    raise _ParseError(f"Can't find end of a URL at byte offset {url_begin}")
                url = raw_url.decode(errors="replace")
            if entity_type == "CustomEmoji":
                custom_emoji_id, date, date_flags = _custom_emoji_or_date(url)
                if date:
                    entity_type = "FormattedDate"
            else:
                user_id = _link_user_id(url)
                if not user_id:
                    checked = _checked_link(url)
                    if checked:
                        argument = checked
                    else:
                        skip = True
        elif entity_type in ("BlockQuote", "ExpandableBlockQuote"):
            have_blockquote = False
            result.append(src[i])
            can_start_blockquote = True
            utf16 += 1
            skip = False
        if not skip:
            length = utf16 - top.utf16_offset
            if user_id:
                entities.append(_Entity("MentionName", top.utf16_offset, length, user_id=user_id))
            else:
                entities.append(
                    _Entity(
                        entity_type,
                        top.utf16_offset,
                        length,
                        argument=argument,
                        custom_emoji_id=custom_emoji_id,
                        date=date,
                        date_flags=date_flags,
                    )
                )
        nested.pop()

    if have_blockquote:
        quote_type = "BlockQuote"
        if nested[-1].type == "Spoiler" and nested[-1].byte_offset == size - 2:
            nested.pop()
            quote_type = "ExpandableBlockQuote"
        if nested[-1].type == "BlockQuote":
            length = utf16 - nested[-1].utf16_offset
            if length:
                entities.append(_Entity(quote_type, nested[-1].utf16_offset, length))
            nested.pop()
    if nested:
        raise _ParseError(
            f"Can't find end of {nested[-1].type} entity at byte offset {nested[-1].byte_offset}"
        )
    return result.decode(errors="replace"), _sorted_entities(entities)


def parse_markdown(text: str) -> tuple[str, list[_Entity]]:
    """Port of TDLib ``parse_markdown``, the legacy ``Markdown`` parse mode."""
    src = text.encode()
    size = len(src)

    def at(k: int) -> int:
        return src[k] if k < size else 0

    result = bytearray()
    entities: list[_Entity] = []
    utf16 = 0
    i = -1
    while True:
        i += 1
        if i >= size:
            break
        c = src[i]
        if c == 0x5C and at(i + 1) in b"_*`[":
            i += 1
            result.append(src[i])
            utf16 += 1
            continue
        if c not in b"_*`[":
            if _utf8_first_unit(c):
                utf16 += _utf16_units_of_lead_byte(c)
            result.append(c)
            continue
        begin = i
        end_character = 0x5D if c == 0x5B else c
        is_pre = False
        i += 1
        language = ""
        if c == 0x60 and at(i) == 0x60 and at(i + 1) == 0x60:
            i += 2
            is_pre = True
            language_end = i
            while not _is_space_byte(at(language_end)) and at(language_end) != 0x60:
                language_end += 1
            if i != language_end and language_end < size and at(language_end) != 0x60:
                language = src[i:language_end].decode(errors="replace")
                i = language_end
            if at(i) in (0x0A, 0x0D):
                if at(i + 1) in (0x0A, 0x0D) and at(i) != at(i + 1):
                    i += 2
                else:
                    i += 1
        entity_offset = utf16
        while i < size and (
            src[i] != end_character or (is_pre and not (at(i + 1) == 0x60 and at(i + 2) == 0x60))
        ):
            if _utf8_first_unit(src[i]):
                utf16 += _utf16_units_of_lead_byte(src[i])
            result.append(src[i])
            i += 1
        if i == size:
            raise _ParseError(f"Can't find end of the entity starting at byte offset {begin}")
        if entity_offset != utf16:
            length = utf16 - entity_offset
            if c == 0x5F:
                entities.append(_Entity("Italic", entity_offset, length))
            elif c == 0x2A:
                entities.append(_Entity("Bold", entity_offset, length))
            elif c == 0x5B:
                if at(i + 1) != 0x28:
                    url = src[begin + 1 : i].decode(errors="replace")
                else:
                    i += 2
                    raw_url = bytearray()
                    while i < size and src[i] != 0x29:
                        raw_url.append(src[i])
                        i += 1
                    url = raw_url.decode(errors="replace")
                user_id = _link_user_id(url)
                if user_id:
                    entities.append(_Entity("MentionName", entity_offset, length, user_id=user_id))
                elif checked := _checked_link(url):
                    entities.append(_Entity("TextUrl", entity_offset, length, argument=checked))
            elif is_pre:
                kind = "PreCode" if language else "Pre"
                entities.append(_Entity(kind, entity_offset, length, argument=language))
            else:
                entities.append(_Entity("Code", entity_offset, length))
        if is_pre:
            i += 2
    return result.decode(errors="replace"), entities


_HTML_TAGS: Final = frozenset(
    {"a", "b", "strong", "i", "em", "s", "strike", "del", "u", "ins", "tg-spoiler", "tg-emoji"}
    | {"tg-time", "span", "pre", "code", "blockquote"}
)


def _decode_html_entity(src: bytes, pos: int) -> tuple[int, int]:
    """``decode_html_entity``: (code point or 0, position after the reference)."""
    size = len(src)

    def at(k: int) -> int:
        return src[k] if k < size else 0

    end = pos + 1
    code = 0
    if at(pos + 1) == 0x23:  # '#'
        end += 1
        if at(pos + 2) == 0x78:  # 'x'
            end += 1
            while chr(at(end)) in "0123456789abcdefABCDEF" and at(end):
                code = code * 16 + int(chr(at(end)), 16)
                end += 1
        else:
            while 0x30 <= at(end) <= 0x39:
                code = code * 10 + at(end) - 0x30
                end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return 0, pos
    else:
        while chr(at(end)).isascii() and chr(at(end)).isalpha() and at(end):
            end += 1
        code = {b"lt": 0x3C, b"gt": 0x3E, b"amp": 0x26, b"quot": 0x22}.get(src[pos + 1 : end], 0)
        if not code:
            return 0, pos
    return code, end + 1 if at(end) == 0x3B else end


def parse_html(text: str) -> tuple[str, list[_Entity]]:
    """Port of TDLib ``parse_html``, the ``HTML`` parse mode; raises ``_ParseError``."""
    src = text.encode()
    size = len(src)

    def at(k: int) -> int:
        return src[k] if k < size else 0

    result = bytearray()
    entities: list[_Entity] = []
    # (tag, argument, date, utf16 offset, result position)
    nested: list[tuple[str, str, int, int, int]] = []
    utf16 = 0
    i = -1
    while True:
        i += 1
        if i >= size:
            break
        c = src[i]
        if c == 0x26:
            code, after = _decode_html_entity(src, i)
            if code:
                utf16 += 2 if code > 0xFFFF else 1
                result.extend(chr(code).encode(errors="surrogatepass"))
                i = after - 1
                continue
        if c != 0x3C:
            if _utf8_first_unit(c):
                utf16 += _utf16_units_of_lead_byte(c)
            result.append(c)
            continue
        begin = i
        i += 1
        if at(i) != 0x2F:
            while not _is_space_byte(at(i)) and at(i) != 0x3E:
                i += 1
            if at(i) == 0:
                raise _ParseError(f"Unclosed start tag at byte offset {begin}")
            tag = src[begin + 1 : i].decode(errors="replace").lower()
            if tag not in _HTML_TAGS:
                raise _ParseError(f'Unsupported start tag "{tag}" at byte offset {begin}')
            argument = ""
            date = 0
            while at(i) != 0x3E:
                while at(i) != 0 and _is_space_byte(at(i)):
                    i += 1
                if at(i) == 0x3E:
                    break
                attribute_begin = i
                while not _is_space_byte(at(i)) and at(i) not in b"=>/\"'":
                    i += 1
                attribute = src[attribute_begin:i].decode(errors="replace")
                if not attribute:
                    raise _ParseError(
                        f'Empty attribute name in the tag "{tag}" at byte offset {begin}'
                    )
                while at(i) != 0 and _is_space_byte(at(i)):
                    i += 1
                if at(i) != 0x3D:
                    if at(i) == 0:
                        raise _ParseError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                    if tag == "blockquote" and attribute == "expandable":
                        argument = "1"
                    continue
                i += 1
                while at(i) != 0 and _is_space_byte(at(i)):
                    i += 1
                if at(i) == 0:
                    raise _ParseError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                if at(i) not in (0x27, 0x22):
                    token_begin = i
                    while chr(at(i)).isascii() and (chr(at(i)).isalnum() or at(i) in b".-"):
                        if at(i) == 0:
                            break
                        i += 1
                    value = src[token_begin:i].decode(errors="replace").lower()
                    if not _is_space_byte(at(i)) and at(i) != 0x3E:
                        raise _ParseError(
                            f"Unexpected end of name token at byte offset {token_begin}"
                        )
                else:
                    quote = at(i)
                    i += 1
                    raw = bytearray()
                    while at(i) != quote and at(i) != 0:
                        if at(i) == 0x26:
                            code, after = _decode_html_entity(src, i)
                            if code:
                                raw.extend(chr(code).encode(errors="surrogatepass"))
                                i = after
                                continue
                        raw.append(at(i))
                        i += 1
                    if at(i) == quote:
                        i += 1
                    value = raw.decode(errors="replace")
                if at(i) == 0:
                    raise _ParseError(f"Unclosed start tag at byte offset {begin}")
                if tag == "a" and attribute == "href":
                    argument = value
                elif tag == "code" and attribute == "class" and value.startswith("language-"):
                    argument = value[9:]
                elif tag == "span" and attribute == "class" and value.startswith("tg-"):
                    argument = value[3:]
                elif (tag == "tg-emoji" and attribute == "emoji-id") or (
                    tag == "tg-time" and attribute == "format"
                ):
                    argument = value
                elif tag == "blockquote" and attribute == "expandable":
                    argument = "1"
                elif tag == "tg-time" and attribute == "unix":
                    date = _int64(value) or 0
            if tag == "span" and argument != "spoiler":
                raise _ParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {begin}')
            nested.append((tag, argument, date, utf16, len(result)))
            continue

        if not nested:
            raise _ParseError(f"Unexpected end tag at byte offset {begin}")
        while not _is_space_byte(at(i)) and at(i) != 0x3E:
            i += 1
        end_tag = src[begin + 2 : i].decode(errors="replace").lower()
        while _is_space_byte(at(i)) and at(i) != 0:
            i += 1
        if at(i) != 0x3E:
            raise _ParseError(f"Unclosed end tag at byte offset {begin}")
        tag, argument, date, offset, result_pos = nested[-1]
        if end_tag and end_tag != tag:
            raise _ParseError(
                f'Unmatched end tag at byte offset {begin}, expected "</{tag}>", '
                f'found "</{end_tag}>"'
            )
        if utf16 > offset:
            length = utf16 - offset
            simple = {
                "i": "Italic",
                "em": "Italic",
                "b": "Bold",
                "strong": "Bold",
                "s": "Strikethrough",
                "strike": "Strikethrough",
                "del": "Strikethrough",
                "u": "Underline",
                "ins": "Underline",
                "tg-spoiler": "Spoiler",
                "span": "Spoiler",
            }
            last = entities[-1] if entities else None
            same_span = last is not None and (last.offset, last.length) == (offset, length)
            if tag in simple:
                entities.append(_Entity(simple[tag], offset, length))
            elif tag == "tg-emoji":
                emoji_id = _int64(argument)
                if not emoji_id:
                    raise _ParseError("Invalid custom emoji identifier specified")
                entities.append(_Entity("CustomEmoji", offset, length, custom_emoji_id=emoji_id))
            elif tag == "tg-time":
                flags = _date_flags(argument)
                if date > 0:
                    entities.append(
                        _Entity("FormattedDate", offset, length, date=date, date_flags=flags)
                    )
            elif tag == "a":
                url = argument or result[result_pos:].decode(errors="replace")
                user_id = _link_user_id(url)
                if user_id:
                    entities.append(_Entity("MentionName", offset, length, user_id=user_id))
                elif checked := _checked_link(url):
                    entities.append(_Entity("TextUrl", offset, length, argument=checked))
            elif tag == "pre":
                if last is not None and same_span and last.type == "Code" and last.argument:
                    last.type = "PreCode"
                else:
                    entities.append(_Entity("Pre", offset, length))
            elif tag == "code":
                if last is not None and same_span and last.type == "Pre" and argument:
                    last.type = "PreCode"
                    last.argument = argument
                else:
                    entities.append(_Entity("Code", offset, length, argument=argument))
            else:  # blockquote
                kind = "ExpandableBlockQuote" if argument else "BlockQuote"
                entities.append(_Entity(kind, offset, length))
        nested.pop()
    if nested:
        raise _ParseError(f'Can\'t find end tag corresponding to start tag "{nested[-1][0]}"')
    for entity in entities:
        if entity.type == "Code":
            entity.argument = ""
    try:
        decoded = result.decode()
    except UnicodeDecodeError:
        raise _ParseError(
            "Text contains invalid Unicode characters after decoding HTML entities, check for "
            "unmatched surrogate code units"
        ) from None
    return decoded, _sorted_entities(entities)


# --------------------------------------------------------------------------------------------
# Text: bot commands in user messages (``match_bot_commands``)
# --------------------------------------------------------------------------------------------


def _is_word_character(ch: str) -> bool:
    return ch == "_" or unicodedata.category(ch)[0] in ("L", "N")


def _is_command_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def bot_command_entities(text: str) -> list[dict[str, Any]]:
    """``bot_command`` entities as Telegram attaches them to a user's message (A3).

    Port of TDLib ``match_bot_commands``: ``/cmd`` of 1-64 ``[A-Za-z0-9_]``, optionally
    ``@bot`` of 3-32, not glued to a word, ``/``, ``<`` or ``>``. Offsets and lengths are in
    UTF-16 code units, so an emoji before the command counts twice.
    """
    found: list[dict[str, Any]] = []
    position = 0
    while (slash := text.find("/", position)) >= 0:
        if slash > 0 and (_is_word_character(text[slash - 1]) or text[slash - 1] in "/<>"):
            position = slash + 1
            continue
        end = slash + 1
        while end < len(text) and _is_command_char(text[end]):
            end += 1
        position = end
        if not 1 <= end - slash - 1 <= 64:
            continue
        if end < len(text) and text[end] == "@":
            mention_end = end + 1
            while mention_end < len(text) and _is_command_char(text[mention_end]):
                mention_end += 1
            position = mention_end
            if not 3 <= mention_end - end - 1 <= 32:
                continue
            end = mention_end
        if end < len(text) and (_is_word_character(text[end]) or text[end] in "/<>"):
            continue
        found.append(
            {
                "offset": utf16_len(text[:slash]),
                "length": utf16_len(text[slash:end]),
                "type": "bot_command",
            }
        )
    return found


# --------------------------------------------------------------------------------------------
# Reply markup (``Client::get_reply_markup``, TDLib ``ReplyMarkup.cpp``)
# --------------------------------------------------------------------------------------------

_OPAQUE_BUTTON_FIELDS: Final = (
    "callback_game",
    "pay",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "login_url",
    "web_app",
)


@dataclass(frozen=True)
class Button:
    """One inline button as the user sees it."""

    text: str
    callback_data: str | None = None
    url: str | None = None
    copy_text: str | None = None
    other: str | None = None  # JSON of any other button kind (web_app, login_url, ...)

    def to_api(self) -> dict[str, Any]:
        result: dict[str, Any] = {"text": self.text}
        if self.url is not None:
            result["url"] = self.url
        if self.callback_data is not None:
            result["callback_data"] = self.callback_data
        if self.copy_text is not None:
            result["copy_text"] = {"text": self.copy_text}
        if self.other is not None:
            result.update(json.loads(self.other))
        return result


@dataclass(frozen=True)
class _Markup:
    """Parsed ``reply_markup``: an inline keyboard, or a reply keyboard kept as JSON."""

    inline: tuple[tuple[Button, ...], ...] = ()
    other: str | None = None

    def to_api(self) -> dict[str, Any] | None:
        if self.inline:
            return {"inline_keyboard": [[b.to_api() for b in row] for row in self.inline]}
        return None


def _json_field_string(obj: dict[str, Any], name: str, *, required: bool) -> str | None:
    """``JsonObject::get_{required,optional}_string_field``: strings, or numbers as text."""
    if name not in obj:
        if required:
            raise _ParseError(f'Can\'t find field "{name}"')
        return None
    value = obj[name]
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    raise _ParseError(f'Field "{name}" must be of type String')


def _inline_button(raw: Any) -> Button:
    if not isinstance(raw, dict):
        raise _ParseError("InlineKeyboardButton must be an Object")
    text = _json_field_string(raw, "text", required=True)
    assert text is not None
    url = _json_field_string(raw, "url", required=False)
    if url:
        return Button(text, url=url)
    data = _json_field_string(raw, "callback_data", required=False)
    if data:
        return Button(text, callback_data=data)
    for name in _OPAQUE_BUTTON_FIELDS:
        if name in raw:
            return Button(text, other=json.dumps({name: raw[name]}))
    if "copy_text" in raw:
        copy = raw["copy_text"]
        if not isinstance(copy, dict):
            raise _ParseError('Field "copy_text" must be of type Object')
        copied = _json_field_string(copy, "text", required=True)
        return Button(text, copy_text=copied)
    raise _ParseError("Text buttons are unallowed in the inline keyboard")


def _parse_reply_markup(raw: str) -> _Markup | None:
    """Parse the ``reply_markup`` parameter; raise ``BotApiError`` with the Bot API's words."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise _bad_request("Can't parse reply keyboard markup JSON object") from None
    if not isinstance(value, dict):
        raise _bad_request("Object expected as reply markup")
    keyboard = value.get("keyboard")
    if keyboard is not None and not isinstance(keyboard, list):
        raise _bad_request('Field "keyboard" must be of type Array')
    for row in keyboard or []:
        if not isinstance(row, list):
            raise _bad_request('Field "keyboard" must be an Array of Arrays')
    inline_keyboard = value.get("inline_keyboard")
    if inline_keyboard is not None and not isinstance(inline_keyboard, list):
        raise _bad_request('Field "inline_keyboard" must be of type Array')
    rows: list[tuple[Button, ...]] = []
    for row in inline_keyboard or []:
        if not isinstance(row, list):
            raise _bad_request(
                'Field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays'
            )
        buttons = []
        for raw_button in row:
            try:
                buttons.append(_inline_button(raw_button))
            except _ParseError as error:
                raise _bad_request(f"Can't parse inline keyboard button: {error}") from None
        rows.append(tuple(buttons))
    if keyboard:
        return _Markup(other=json.dumps(value))
    if any(rows):
        return _Markup(inline=tuple(rows))
    if any(value.get(k) for k in ("remove_keyboard", "hide_keyboard", "force_reply")):
        return _Markup(other=json.dumps(value))
    return None


def _check_inline_buttons(markup: _Markup | None) -> None:
    """TDLib's checks (``get_inline_keyboard_button``) before anything reaches the server."""
    for row in markup.inline if markup else ():
        for button in row:
            if not button.text:
                raise _bad_request("Inline keyboard button text must be non-empty")
            url = button.url
            if url is not None and not _link_user_id(url) and not _checked_link(url):
                raise _bad_request(f"Inline keyboard button URL '{url}' is invalid: Wrong HTTP URL")


def _check_callback_data(markup: _Markup | None) -> None:
    """The server's check: callback_data of 1-64 bytes, else BUTTON_DATA_INVALID (A5)."""
    for row in markup.inline if markup else ():
        for button in row:
            data = button.callback_data
            if data is not None and len(data.encode()) > CALLBACK_DATA_MAX_BYTES:
                raise _bad_request("BUTTON_DATA_INVALID")


# --------------------------------------------------------------------------------------------
# Flood control (A5)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloodLimits:
    """Token buckets for sends and edits, which share one bucket per chat (A5).

    Private chats: "avoid sending more than one message per second" with short bursts tolerated.
    Groups (negative chat ids): "not more than 20 messages per minute to the same group". All
    chats together: "about 30/s". ``burst`` is the bucket size, ``rate`` the refill in messages
    per second. Telegram does not publish burst sizes; these defaults are deliberately tight so a
    client that ignores the limits is caught. Tests can pass stricter or looser limits.
    """

    private_burst: float = 3
    private_rate: float = 1.0
    group_burst: float = 3
    group_rate: float = 20 / 60
    global_burst: float = 30
    global_rate: float = 30.0


class TokenBucket:
    """Up to ``capacity`` tokens, refilled at ``rate`` per second of ``trio.current_time()``."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 if one is available now)."""
        self._refill(now)
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


def retry_after_seconds(wait: float) -> int:
    """The integer ``retry_after`` for a wait: rounded up, at least 1 (A6)."""
    return max(1, math.ceil(wait - 1e-9))


# --------------------------------------------------------------------------------------------
# Test-facing data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A Telegram user (or the bot itself) as it appears in ``from`` (A3)."""

    id: int
    first_name: str
    username: str | None = None
    last_name: str | None = None
    language_code: str | None = None
    is_bot: bool = False

    def to_api(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "id": self.id,
            "is_bot": self.is_bot,
            "first_name": self.first_name,
        }
        if self.last_name:
            result["last_name"] = self.last_name
        if self.username:
            result["username"] = self.username
        if self.language_code:
            result["language_code"] = self.language_code
        return result


@dataclass(frozen=True)
class ReceivedDocument:
    """A file the bot sent with sendDocument."""

    chat_id: int
    message_id: int
    filename: str
    content: bytes
    mime_type: str
    caption: str
    file_id: str


@dataclass(frozen=True)
class MessageView:
    """A message as the user sees it now: final text, buttons, whether it was edited."""

    chat_id: int
    message_id: int
    from_bot: bool
    sender: User
    text: str  # the caption for documents
    entities: tuple[dict[str, Any], ...]
    buttons: tuple[tuple[Button, ...], ...]
    edited: bool
    edit_count: int
    document: ReceivedDocument | None
    reply_to: int | None
    thread_id: int | None = None

    def button_data(self) -> list[str]:
        """Every callback_data on the message, row by row."""
        return [b.callback_data for row in self.buttons for b in row if b.callback_data is not None]


@dataclass(frozen=True)
class CallbackAnswer:
    """An answerCallbackQuery the bot made."""

    query_id: str
    chat_id: int
    message_id: int
    data: str
    text: str
    show_alert: bool
    url: str
    cache_time: int


@dataclass(frozen=True)
class ApiCall:
    """One HTTP request the bot made, and how the fake answered it."""

    method: str  # lower-cased, as the server matches it
    params: dict[str, str]
    files: dict[str, str]  # field -> filename
    status: int
    description: str | None
    at: float = 0.0  # trio time the request arrived
    stalled: bool = False  # carried out, but the answer was never sent (`stall_next`)


@dataclass
class _Message:
    chat_id: int
    message_id: int
    sender: User
    date: float  # trio time
    text: str | None
    entities: list[_Entity]
    caption: str = ""
    caption_entities: list[_Entity] = field(default_factory=list)
    markup: _Markup | None = None
    document: ReceivedDocument | None = None
    reply_to: int | None = None
    edit_date: float | None = None
    edit_count: int = 0
    deleted: bool = False
    raw_entities: list[dict[str, Any]] | None = None  # user messages: entities as sent
    thread_id: int | None = None  # the forum topic it is in (message_thread_id)
    media: dict[str, Any] | None = None  # a user's photo/document/voice: {key: Bot API value}


@dataclass
class _Chat:
    id: int
    type: str
    title: str | None = None
    username: str | None = None
    user: User | None = None
    next_message_id: int = 1
    messages: dict[int, _Message] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)
    blocked: bool = False
    bot_is_admin: bool = False
    is_forum: bool = False
    topics: dict[int, _Topic] = field(default_factory=dict)  # by message_thread_id

    def to_api(self) -> dict[str, Any]:
        result: dict[str, Any] = {"id": self.id}
        if self.type == "private" and self.user is not None:
            result["first_name"] = self.user.first_name
            if self.user.last_name:
                result["last_name"] = self.user.last_name
            if self.user.username:
                result["username"] = self.user.username
        else:
            result["title"] = self.title or ""
            if self.username:
                result["username"] = self.username
        result["type"] = self.type
        if self.is_forum:
            result["is_forum"] = True
        return result


@dataclass
class _Topic:
    """A forum topic (https://core.telegram.org/bots/api#forumtopic): its id is the id of the
    service message that created it."""

    thread_id: int
    name: str
    closed: bool = False
    deleted: bool = False


@dataclass
class _StoredFile:
    """A file a user sent, as getFile and the download path serve it."""

    file_id: str
    file_unique_id: str
    file_path: str
    content: bytes


@dataclass
class _QueuedUpdate:
    update_id: int
    kind: str
    payload: dict[str, Any]
    created: float


@dataclass
class _CallbackQuery:
    query_id: str
    chat_id: int
    message_id: int
    data: str
    user: User
    created: float
    answered: bool = False


@dataclass
class _HeldPoll:
    offset: int
    limit: int
    wake: trio.Event = field(default_factory=trio.Event)
    conflict: str | None = None
    conflict_delay: float = 0.0


@dataclass
class _InjectedFailure:
    method: str
    remaining: int
    error: BotApiError
    after: bool = False  # the call takes effect, then the error is the answer


@dataclass
class _FloodStorm:
    """`FakeTelegram.flood_storm` on one chat: the waits still to come, the current one's end."""

    waits: list[int]
    passes: int
    until: float = -math.inf
    passed: int = 0


@dataclass
class _Request:
    method: str
    args: list[tuple[str, str]]
    files: dict[str, tuple[str, str, bytes]]  # field -> (filename, content type, bytes)

    def arg(self, name: str) -> str:
        """``Query::arg``: the first value given, query string before body; "" if absent."""
        for key, value in self.args:
            if key == name:
                return value
        return ""

    def has_arg(self, name: str) -> bool:
        return any(key == name for key, _ in self.args)


def _to_int(value: str) -> int:
    """``td::to_integer``: optional sign then digits; anything else stops the number."""
    value = value.strip()
    sign = -1 if value.startswith("-") else 1
    digits = ""
    for ch in value[1:] if value[:1] in "+-" else value:
        if not ("0" <= ch <= "9"):
            break
        digits += ch
    return sign * int(digits) if digits else 0


def _to_bool(value: str) -> bool:
    """``Client::to_bool``."""
    return value.strip().lower() in ("true", "yes", "1")


def _int_arg(request: _Request, name: str, default: int, low: int, high: int) -> int:
    """``Client::get_integer_arg``: out-of-range values are clamped, not rejected (A2)."""
    raw = request.arg(name)
    value = _to_int(raw) if raw else default
    return min(max(value, low), high)


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------

_Handler = Callable[[_Request], Awaitable[Any]]
_DEFAULT_ALLOWED_UPDATES: Final = frozenset(
    {"message", "edited_message", "callback_query", "channel_post", "edited_channel_post"}
)


class FakeTelegram:
    """A Telegram Bot API server for one bot, plus a test API to play its users.

    All state lives here; the HTTP side (``asgi``) and the test API mutate it without awaiting in
    between, so every change is atomic with respect to other tasks.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "anycode_test_bot",
        bot_name: str = "anycode",
        flood_limits: FloodLimits | None = None,
        callback_query_answer_window: float = CALLBACK_QUERY_ANSWER_WINDOW,
        anti_spin: bool = True,
        first_update_id: int = FIRST_UPDATE_ID,
    ) -> None:
        bot_id = _to_int(token.partition(":")[0])
        self.token = token
        self.bot = User(bot_id, bot_name, username=bot_username, is_bot=True)
        self.flood_limits = flood_limits or FloodLimits()
        self.callback_query_answer_window = callback_query_answer_window
        self.anti_spin = anti_spin
        self.base_url: str | None = None

        self._revoked = False
        self._chats: dict[int, _Chat] = {}
        self._users: dict[int, User] = {bot_id: self.bot}
        self._queue: list[_QueuedUpdate] = []
        self._next_update_id = first_update_id
        self._allowed_updates: frozenset[str] = _DEFAULT_ALLOWED_UPDATES
        self._held: _HeldPoll | None = None
        self._next_conflict_time = -math.inf
        self._previous_offset = -1
        self._previous_poll_time = -math.inf
        self._webhook_url = ""
        self._callback_queries: dict[str, _CallbackQuery] = {}
        self._next_callback_query = 1
        self._callback_answers: list[CallbackAnswer] = []
        self._documents: list[ReceivedDocument] = []
        self._files: dict[str, _StoredFile] = {}
        self._file_sizes: dict[str, int] = {}
        self._downloads: list[str] = []
        self._commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        self._calls: list[ApiCall] = []
        self._failures: list[_InjectedFailure] = []
        self._storms: dict[int, _FloodStorm] = {}
        self._stalls: dict[str, int] = {}
        self._chat_buckets: dict[int, TokenBucket] = {}
        self._global_bucket: TokenBucket | None = None
        self._changed = trio.Event()
        self._methods: dict[str, _Handler] = {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "senddocument": self._send_document,
            "getfile": self._get_file,
            "createforumtopic": self._create_forum_topic,
            "closeforumtopic": self._close_forum_topic,
            "reopenforumtopic": self._reopen_forum_topic,
            "deleteforumtopic": self._delete_forum_topic,
            "deletemessage": self._delete_message,
            "answercallbackquery": self._answer_callback_query,
            "sendchataction": self._send_chat_action,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
        }

    # ---- starting ---------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve on 127.0.0.1, port 0, inside ``nursery``; return and remember the base URL."""
        served = await nursery.start(serve_asgi, self.asgi)
        self.base_url = served.base_url
        return served.base_url

    def method_url(self, method: str, token: str | None = None) -> str:
        """``<base_url>/bot<token>/<method>``, as a client builds it."""
        if self.base_url is None:
            raise RuntimeError("FakeTelegram.start() has not been called")
        return f"{self.base_url}/bot{token or self.token}/{method}"

    # ---- test API: users act -----------------------------------------------------------------

    def add_chat(
        self,
        chat_id: int,
        chat_type: str = "private",
        *,
        title: str | None = None,
        username: str | None = None,
        user: User | None = None,
        bot_is_admin: bool = False,
        is_forum: bool = False,
    ) -> None:
        """Make a chat known to the bot (a user started it, or the bot was added to a group).

        `is_forum`: a supergroup with topics enabled (https://core.telegram.org/bots/api#chat)."""
        if is_forum and chat_type != "supergroup":
            raise ValueError("only supergroups can be forums")
        if chat_type not in ("private", "group", "supergroup", "channel"):
            raise ValueError(f"unknown chat type {chat_type!r}")
        if (chat_type == "private") != (chat_id > 0):
            raise ValueError("private chats have positive ids, groups and channels negative ones")
        if chat_type == "private" and user is not None and user.id != chat_id:
            raise ValueError("for a private chat, chat.id == from.id (A3)")
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = _Chat(
                chat_id, chat_type, title=title or (None if chat_id > 0 else f"Group {-chat_id}")
            )
            self._chats[chat_id] = chat
        elif chat.type != chat_type:
            raise ValueError(f"chat {chat_id} is a {chat.type}, not a {chat_type}")
        chat.username = username or chat.username
        chat.bot_is_admin = chat.bot_is_admin or bot_is_admin
        chat.is_forum = chat.is_forum or is_forum
        if user is not None:
            chat.user = user
            self._users[user.id] = user

    def inject_message(
        self,
        chat_id: int,
        user: User,
        text: str,
        chat_type: str = "private",
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> MessageView:
        """A user sends ``text``; the bot receives a ``message`` update (A3).

        Commands anywhere in the text get ``bot_command`` entities with UTF-16 offsets.
        `thread_id` posts it in that forum topic (``message_thread_id``, ``is_topic_message``).
        """
        self.add_chat(chat_id, chat_type, user=user if chat_type == "private" else None)
        self._users[user.id] = user
        chat = self._chats[chat_id]
        if reply_to is not None and self._visible(chat, reply_to) is None:
            raise LookupError(f"no message {reply_to} in chat {chat_id} to reply to")
        self._user_topic(chat, thread_id)
        entities = bot_command_entities(text)
        message = self._store(
            chat,
            _Message(
                chat_id,
                0,
                user,
                trio.current_time(),
                text,
                [],
                reply_to=reply_to,
                raw_entities=entities,
                thread_id=thread_id,
            ),
        )
        self._log(
            chat, f"#{message.message_id} {self._topic_tag(thread_id)}{self._name(user)}: {text}"
        )
        self._enqueue("message", {"message": self._message_api(message)})
        return self._view(message)

    def inject_file(
        self,
        chat_id: int,
        user: User,
        kind: str,
        content: bytes,
        *,
        filename: str = "",
        mime_type: str = "",
        caption: str = "",
        chat_type: str = "private",
        thread_id: int | None = None,
        size: int | None = None,
    ) -> MessageView:
        """A user sends a photo, document or voice note (`kind`), optionally with a caption;
        the bot receives a ``message`` update whose ``photo`` (sizes, largest last),
        ``document`` or ``voice`` names a file the bot can fetch with getFile (A3,
        https://core.telegram.org/bots/api#photosize). A command in the caption gets
        ``caption_entities``. `size` overrides the reported ``file_size`` (and what getFile
        checks), to play a file over the download limit without allocating it."""
        if kind not in ("photo", "document", "voice"):
            raise ValueError(f"unknown file kind {kind!r}")
        self.add_chat(chat_id, chat_type, user=user if chat_type == "private" else None)
        self._users[user.id] = user
        chat = self._chats[chat_id]
        self._user_topic(chat, thread_id)
        number = len(self._files) + 1
        unique = f"AgAD{number:04d}fake"
        stored = _StoredFile(
            file_id=f"AgACAgIAAxkBAAI{number:06d}{kind}fake",
            file_unique_id=unique,
            file_path=f"{'photos' if kind == 'photo' else kind + 's'}/file_{number}"
            + (mimetypes.guess_extension(mime_type or "") or "" if kind != "photo" else ".jpg"),
            content=content,
        )
        self._files[stored.file_id] = stored
        self._file_sizes[stored.file_id] = len(content) if size is None else size
        reported = self._file_sizes[stored.file_id]
        media: dict[str, Any]
        if kind == "photo":
            thumb = {
                "file_id": stored.file_id + "s",
                "file_unique_id": unique + "s",
                "width": 90,
                "height": 90,
                "file_size": min(reported, 1000),
            }
            self._files[thumb["file_id"]] = replace(
                stored, file_id=thumb["file_id"], file_path=stored.file_path + ".thumb.jpg"
            )
            self._file_sizes[thumb["file_id"]] = thumb["file_size"]
            media = {
                "photo": [
                    thumb,
                    {
                        "file_id": stored.file_id,
                        "file_unique_id": unique,
                        "width": 1280,
                        "height": 960,
                        "file_size": reported,
                    },
                ]
            }
        elif kind == "document":
            media = {
                "document": {
                    "file_id": stored.file_id,
                    "file_unique_id": unique,
                    "file_name": filename or f"file_{number}",
                    "mime_type": mime_type or "application/octet-stream",
                    "file_size": reported,
                }
            }
        else:
            media = {
                "voice": {
                    "file_id": stored.file_id,
                    "file_unique_id": unique,
                    "duration": 3,
                    "mime_type": mime_type or "audio/ogg",
                    "file_size": reported,
                }
            }
        message = self._store(
            chat,
            _Message(
                chat_id,
                0,
                user,
                trio.current_time(),
                None,
                [],
                caption=caption,
                raw_entities=bot_command_entities(caption) if caption else None,
                thread_id=thread_id,
                media=media,
            ),
        )
        shown = f" {caption}" if caption else ""
        self._log(
            chat,
            f"#{message.message_id} {self._topic_tag(thread_id)}{self._name(user)} sent a "
            f"{kind}{shown}",
        )
        self._enqueue("message", {"message": self._message_api(message)})
        return self._view(message)

    # ---- test API: forum topics --------------------------------------------------------------

    def create_topic(self, chat_id: int, name: str) -> int:
        """A member creates a forum topic; returns its ``message_thread_id``."""
        return self._new_topic(self._chat(chat_id), name).thread_id

    def close_topic(self, chat_id: int, thread_id: int) -> None:
        """Someone closes the topic: only admins may post in it now."""
        self._topic(self._chat(chat_id), thread_id).closed = True

    def reopen_topic(self, chat_id: int, thread_id: int) -> None:
        self._topic(self._chat(chat_id), thread_id).closed = False

    def delete_topic(self, chat_id: int, thread_id: int) -> None:
        """Someone deletes the topic, and with it every message in it."""
        chat = self._chat(chat_id)
        topic = self._topic(chat, thread_id)
        topic.deleted = True
        for message in chat.messages.values():
            if message.thread_id == thread_id or message.message_id == thread_id:
                message.deleted = True
        self._log(chat, f"topic {thread_id} deleted")

    def topic_messages(self, chat_id: int, thread_id: int | None) -> list[MessageView]:
        """The visible messages of one topic (None: those outside every topic), without the
        service message that opened it."""
        return [
            m
            for m in self.messages(chat_id)
            if m.thread_id == thread_id and m.message_id != thread_id
        ]

    @property
    def downloads(self) -> list[str]:
        """The file paths downloaded from ``/file/bot<token>/<file_path>``, in order."""
        return list(self._downloads)

    def _new_topic(self, chat: _Chat, name: str) -> _Topic:
        if not chat.is_forum:
            raise _bad_request("the chat is not a forum")
        service = self._store(chat, _Message(chat.id, 0, self.bot, trio.current_time(), None, []))
        service.media = {"forum_topic_created": {"name": name, "icon_color": TOPIC_ICON_COLOR}}
        topic = _Topic(service.message_id, name)
        service.thread_id = topic.thread_id
        chat.topics[topic.thread_id] = topic
        self._log(chat, f"topic {topic.thread_id} created: {name}")
        return topic

    @staticmethod
    def _topic(chat: _Chat, thread_id: int) -> _Topic:
        topic = chat.topics.get(thread_id)
        if topic is None or topic.deleted:
            raise LookupError(f"no topic {thread_id} in chat {chat.id}")
        return topic

    def _user_topic(self, chat: _Chat, thread_id: int | None) -> None:
        if thread_id is None:
            return
        if not chat.is_forum:
            raise ValueError(f"chat {chat.id} is not a forum")
        self._topic(chat, thread_id)

    @staticmethod
    def _topic_tag(thread_id: int | None) -> str:
        return f"[topic {thread_id}] " if thread_id is not None else ""

    def _thread_of(self, request: _Request, chat: _Chat) -> int | None:
        """``message_thread_id`` of a send: in a forum, a deleted or unknown topic is "message
        thread not found", a closed one "TOPIC_CLOSED" unless the bot is an admin (who may
        still post there, https://core.telegram.org/bots/api#closeforumtopic). Elsewhere it is
        kept only as the reply thread it names."""
        thread_id = _to_int(request.arg("message_thread_id"))
        if thread_id <= 0 or not chat.is_forum:
            return None
        topic = chat.topics.get(thread_id)
        if topic is None or topic.deleted:
            raise BotApiError(400, THREAD_NOT_FOUND)
        if topic.closed and not chat.bot_is_admin:
            raise BotApiError(400, TOPIC_CLOSED)
        return thread_id

    def inject_callback(self, chat_id: int, user: User, message_id: int, data: str) -> str:
        """A user presses the button carrying ``data`` on a bot message; returns the query id.

        The button must be on the message now: a user can only press what they see.
        """
        chat = self._chat(chat_id)
        message = self._visible(chat, message_id)
        if message is None:
            raise LookupError(f"no message {message_id} in chat {chat_id}")
        button = next(
            (
                b
                for row in (message.markup.inline if message.markup else ())
                for b in row
                if b.callback_data == data
            ),
            None,
        )
        if button is None:
            raise LookupError(f"message {message_id} has no button with callback_data {data!r}")
        self._users[user.id] = user
        query_id = str(4_382_000_000_000_000 + self._next_callback_query)
        self._next_callback_query += 1
        self._callback_queries[query_id] = _CallbackQuery(
            query_id, chat_id, message_id, data, user, trio.current_time()
        )
        self._log(chat, f"#{message_id} {self._name(user)} pressed [{button.text}]")
        self._enqueue(
            "callback_query",
            {
                "callback_query": {
                    "id": query_id,
                    "from": user.to_api(),
                    "message": self._message_api(message),
                    "chat_instance": str(-8_473_628_736 - abs(chat_id)),
                    "data": data,
                }
            },
        )
        return query_id

    def press(self, chat_id: int, user: User, message_id: int, label: str) -> str:
        """Press the button labelled ``label``; returns the callback query id."""
        view = self.message(chat_id, message_id)
        for row in view.buttons:
            for button in row:
                if button.text == label and button.callback_data is not None:
                    return self.inject_callback(chat_id, user, message_id, button.callback_data)
        raise LookupError(f"message {message_id} has no callback button labelled {label!r}")

    def delete(self, chat_id: int, message_id: int) -> None:
        """Someone deletes a message in the app; the bot is not told (no update is sent)."""
        chat = self._chat(chat_id)
        message = self._visible(chat, message_id)
        if message is None:
            raise LookupError(f"no message {message_id} in chat {chat_id}")
        message.deleted = True
        self._log(chat, f"#{message_id} deleted")

    def block(self, chat_id: int) -> None:
        """The user blocks the bot: sends fail with 403 (A6)."""
        self._chat(chat_id).blocked = True

    def revoke_token(self) -> None:
        """The token is revoked: every call now gets 401 ``Unauthorized`` (A1)."""
        self._revoked = True

    def fail_next(
        self,
        method: str,
        *,
        times: int = 1,
        error_code: int = 429,
        retry_after: int | None = None,
        description: str | None = None,
        after: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``method`` ("*" for any) fail with ``error_code``.

        Defaults: 429 needs ``retry_after`` and says "Too Many Requests: retry after N"; 401
        "Unauthorized"; 403 "Forbidden: bot was blocked by the user"; 409 the getUpdates
        conflict; 500 "Internal Server Error"; 502 "Bad Gateway"; 504 "Gateway Timeout". Other
        codes need a description.

        With ``after`` the call is carried out first and the error is only its answer: a
        gateway that gave up (502/504) on a Bot API server that did finish the work.
        """
        defaults = {
            401: "Unauthorized",
            403: "Forbidden: bot was blocked by the user",
            409: CONFLICT_OTHER_GET_UPDATES,
            500: "Internal Server Error",
            502: "Bad Gateway",
            504: "Gateway Timeout",
        }
        if error_code == 429:
            if retry_after is None:
                raise ValueError("a 429 needs retry_after")
            error = _too_many_requests(retry_after)
            if description is not None:
                error = BotApiError(429, description, retry_after=retry_after)
        else:
            text = description or defaults.get(error_code)
            if text is None:
                raise ValueError(f"give a description for error_code {error_code}")
            error = BotApiError(error_code, text)
        self._failures.append(_InjectedFailure(method.lower(), times, error, after))

    def flood_storm(self, chat_id: int, retry_afters: list[int], *, passes: int = 0) -> None:
        """A 429 storm on one chat, harsher than the fake's token buckets (A5, A6).

        The next send or edit for the chat is refused with ``retry_after`` =
        ``retry_afters[0]`` and the chat is under flood wait that long: every request for it
        meanwhile is refused again with the seconds still left ("Too Many Requests: retry after
        N", N rounded up), as Telegram answers a bot that does not wait. Once a wait is over,
        ``passes`` requests go through before the next ``retry_after`` hits; after the last
        wait only the ordinary buckets apply. Each refusal is in ``calls`` with its ``at``, so a
        test can check that nothing was sent to the chat before ``retry_after`` had passed.
        """
        if any(wait < 1 for wait in retry_afters):
            raise ValueError("retry_after is at least 1 second")
        self._storms[chat_id] = _FloodStorm(list(retry_afters), passes)

    def stall_next(self, method: str, *, times: int = 1) -> None:
        """Carry out the next ``times`` calls of ``method`` but never answer them.

        The call takes effect (a sent message is in the chat, updates returned by getUpdates
        count as sent but stay unconfirmed) and the HTTP answer is withheld until the client
        hangs up: the network broke after Telegram acted and before the bot heard. The client
        sees its read timeout, or a reset if the connection runs through a ``TcpProxy`` that is
        cut. Stalled calls are in ``calls`` with ``stalled=True``.
        """
        self._stalls[method.lower()] = self._stalls.get(method.lower(), 0) + times

    # ---- test API: what the user sees ---------------------------------------------------------

    def messages(self, chat_id: int) -> list[MessageView]:
        """Every message still in the chat, oldest first, as the user sees it now."""
        chat = self._chat(chat_id)
        return [self._view(m) for m in chat.messages.values() if not m.deleted]

    def bot_messages(self, chat_id: int) -> list[MessageView]:
        return [m for m in self.messages(chat_id) if m.from_bot]

    def message(self, chat_id: int, message_id: int) -> MessageView:
        message = self._visible(self._chat(chat_id), message_id)
        if message is None:
            raise LookupError(f"no message {message_id} in chat {chat_id}")
        return self._view(message)

    def transcript(self, chat_id: int) -> list[str]:
        """Everything that happened in the chat, one line per event, in order."""
        return list(self._chat(chat_id).transcript)

    def documents(self, chat_id: int) -> list[ReceivedDocument]:
        return [d for d in self._documents if d.chat_id == chat_id]

    @property
    def callback_answers(self) -> list[CallbackAnswer]:
        return list(self._callback_answers)

    @property
    def calls(self) -> list[ApiCall]:
        return list(self._calls)

    def calls_to(self, method: str) -> list[ApiCall]:
        return [c for c in self._calls if c.method == method.lower()]

    @property
    def commands(self) -> dict[tuple[str, str], list[dict[str, str]]]:
        """setMyCommands results by (scope type, language_code)."""
        return {k: list(v) for k, v in self._commands.items()}

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by an offset."""
        return [{"update_id": u.update_id, **u.payload} for u in self._queue]

    @property
    def is_polling(self) -> bool:
        """Whether a getUpdates is being held right now."""
        return self._held is not None

    # ---- test API: waiting ---------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], T | None]) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        Re-checked after every change of state (an API call, an injected update); no polling.
        Wrap in ``trio.fail_after`` to bound the wait.
        """
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value
            await changed.wait()

    async def wait_for_message(
        self,
        chat_id: int,
        containing: str = "",
        *,
        from_bot: bool = True,
        topic: int | None = None,
    ) -> MessageView:
        """The first visible message (by default from the bot) whose text has ``containing``;
        with `topic`, only in that forum topic."""

        def find() -> MessageView | None:
            if chat_id not in self._chats:
                return None
            return next(
                (
                    m
                    for m in self.messages(chat_id)
                    if m.from_bot == from_bot
                    and containing in m.text
                    and (topic is None or m.thread_id == topic)
                ),
                None,
            )

        return await self.wait_for(find)

    async def wait_for_callback_answer(self, query_id: str) -> CallbackAnswer:
        return await self.wait_for(
            lambda: next((a for a in self._callback_answers if a.query_id == query_id), None)
        )

    async def wait_for_document(
        self, chat_id: int, filename: str | None = None
    ) -> ReceivedDocument:
        return await self.wait_for(
            lambda: next(
                (d for d in self.documents(chat_id) if filename in (None, d.filename)), None
            )
        )

    async def wait_until_polling(self) -> None:
        """Until the bot holds a getUpdates long poll (it is ready to receive)."""
        await self.wait_for(lambda: self._held is not None)

    # ---- internals: state ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _chat(self, chat_id: int) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            raise LookupError(f"chat {chat_id} is unknown to the fake")
        return chat

    @staticmethod
    def _visible(chat: _Chat, message_id: int) -> _Message | None:
        message = chat.messages.get(message_id)
        return None if message is None or message.deleted else message

    @staticmethod
    def _name(user: User) -> str:
        return "bot" if user.is_bot else user.first_name

    def _log(self, chat: _Chat, line: str) -> None:
        chat.transcript.append(line)
        self._notify()

    def _store(self, chat: _Chat, message: _Message) -> _Message:
        message.message_id = chat.next_message_id
        chat.next_message_id += 1
        chat.messages[message.message_id] = message
        return message

    def _enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue an update unless ``allowed_updates`` excludes its kind (A2)."""
        if kind not in self._allowed_updates:
            return
        self._queue.append(_QueuedUpdate(self._next_update_id, kind, payload, trio.current_time()))
        self._next_update_id += 1
        if self._held is not None:
            self._held.wake.set()
        self._notify()

    def _date(self, moment: float) -> int:
        return DATE_EPOCH + int(moment)

    def _message_api(self, message: _Message, *, with_reply: bool = True) -> dict[str, Any]:
        """The ``Message`` object (A3, A4)."""
        chat = self._chats[message.chat_id]
        result: dict[str, Any] = {
            "message_id": message.message_id,
            "from": message.sender.to_api(),
            "chat": chat.to_api(),
            "date": self._date(message.date),
        }
        if message.edit_date is not None:
            result["edit_date"] = self._date(message.edit_date)
        if message.thread_id is not None:
            result["message_thread_id"] = message.thread_id
            result["is_topic_message"] = True
        if message.media is not None:
            result.update(message.media)
            if message.caption:
                result["caption"] = message.caption
            if message.raw_entities:
                result["caption_entities"] = message.raw_entities
        # In a topic, a message that replies to nothing replies to the topic's first message.
        reply_to = message.reply_to
        if reply_to is None and message.thread_id not in (None, message.message_id):
            reply_to = message.thread_id
        if with_reply and reply_to is not None:
            replied = chat.messages.get(reply_to)
            if replied is not None and not replied.deleted:
                result["reply_to_message"] = self._message_api(replied, with_reply=False)
        if message.text is not None:
            result["text"] = message.text
            if message.raw_entities:
                result["entities"] = message.raw_entities
            elif message.entities:
                result["entities"] = [e.to_api(self._users) for e in message.entities]
        if message.document is not None:
            document = message.document
            result["document"] = {
                "file_name": document.filename,
                "mime_type": document.mime_type,
                "file_id": document.file_id,
                "file_unique_id": document.file_id[-16:],
                "file_size": len(document.content),
            }
            if message.caption:
                result["caption"] = message.caption
                if message.caption_entities:
                    result["caption_entities"] = [
                        e.to_api(self._users) for e in message.caption_entities
                    ]
        markup = message.markup.to_api() if message.markup else None
        if markup is not None:
            result["reply_markup"] = markup
        return result

    def _view(self, message: _Message) -> MessageView:
        if message.raw_entities is not None:
            entities = tuple(message.raw_entities)
        else:
            source = message.entities if message.document is None else message.caption_entities
            entities = tuple(e.to_api(self._users) for e in source)
        return MessageView(
            chat_id=message.chat_id,
            message_id=message.message_id,
            from_bot=message.sender.is_bot,
            sender=message.sender,
            text=message.text if message.text is not None else message.caption,
            entities=entities,
            buttons=message.markup.inline if message.markup else (),
            edited=message.edit_count > 0,
            edit_count=message.edit_count,
            document=message.document,
            reply_to=message.reply_to,
            thread_id=message.thread_id,
        )

    # ---- internals: checks shared by the methods ----------------------------------------------

    def _formatted(
        self, text: str, parse_mode: str, entities_json: str
    ) -> tuple[str, list[_Entity]]:
        """``Client::get_formatted_text``: parse by ``parse_mode`` or take explicit entities."""
        if len(text.encode()) > RAW_TEXT_MAX_BYTES:
            raise _bad_request("Text is too long")
        mode = parse_mode.lower()
        if text and mode and mode != "none":
            parser = {
                "markdownv2": parse_markdown_v2,
                "markdown": parse_markdown,
                "html": parse_html,
            }.get(mode)
            if parser is None:
                raise _bad_request("Unsupported parse_mode")
            try:
                return parser(text)
            except _ParseError as error:
                raise _bad_request(f"Can't parse entities: {error}") from None
        return text, self._explicit_entities(entities_json)

    @staticmethod
    def _explicit_entities(raw: str) -> list[_Entity]:
        """``entities`` / ``caption_entities`` given as JSON (``Client::get_text_entity``)."""
        if not raw:
            return []
        try:
            value = json.loads(raw)
        except ValueError:
            return []
        if not isinstance(value, list):
            return []
        kinds = {v: k for k, v in _API_TYPE.items() if k not in ("PreCode", "BotCommand")}
        result = []
        for item in value:
            try:
                if not isinstance(item, dict):
                    raise _ParseError("expected an Object")
                numbers = {}
                for name in ("offset", "length"):
                    if name not in item:
                        raise _ParseError(f'Can\'t find field "{name}"')
                    number = item[name]
                    if isinstance(number, str) and _int64(number) is not None:
                        number = int(number)
                    if not isinstance(number, int) or isinstance(number, bool):
                        raise _ParseError(f'Field "{name}" must be a Number')
                    numbers[name] = number
                kind = _json_field_string(item, "type", required=True)
                if not kind:
                    raise _ParseError("Type is not specified")
            except _ParseError as error:
                raise _bad_request(f"Can't parse MessageEntity: {error}") from None
            if kind not in kinds:
                continue  # auto-detected kinds (url, mention, ...) are ignored on input
            entity = _Entity(kinds[kind], numbers["offset"], numbers["length"])
            if kind == "pre" and item.get("language"):
                entity = replace(entity, type="PreCode", argument=str(item["language"]))
            elif kind == "text_link":
                entity.argument = str(item.get("url", ""))
            elif kind == "text_mention":
                entity.user_id = _to_int(str((item.get("user") or {}).get("id", 0)))
            elif kind == "custom_emoji":
                entity.custom_emoji_id = _to_int(str(item.get("custom_emoji_id", 0)))
            elif kind == "date_time":
                entity.date = _to_int(str(item.get("unix_time", 0)))
                entity.date_flags = _date_flags(str(item.get("date_time_format", "")))
            result.append(entity)
        return result

    def _input_text(self, request: _Request) -> tuple[str, list[_Entity]]:
        """``Client::get_input_message_text``: empty text first, then parsing."""
        text = request.arg("text")
        if not text:
            raise _bad_request("Message text is empty")
        return self._formatted(text, request.arg("parse_mode"), request.arg("entities"))

    def _fixed(self, text: str, entities: list[_Entity]) -> tuple[str, list[_Entity]]:
        try:
            return _fix_formatted_text(text, entities)
        except _ParseError as error:
            raise _bad_request(str(error)) from None

    def _resolve_chat(self, request: _Request) -> _Chat:
        """``Client::check_chat``: "chat_id is empty", then lookup by id or ``@username``."""
        raw = request.arg("chat_id")
        if not raw:
            raise _bad_request("chat_id is empty")
        if raw.startswith("@"):
            name = raw[1:].lower()
            chat = next(
                (c for c in self._chats.values() if c.username and c.username.lower() == name),
                None,
            )
        else:
            chat = self._chats.get(_to_int(raw))
        if chat is None:
            raise _bad_request("chat not found")
        return chat

    def _message_to(self, request: _Request, chat: _Chat, purpose: str) -> _Message:
        """``Client::check_message``: "<purpose> not found" for a bad or missing id."""
        message_id = _to_int(request.arg("message_id"))
        message = self._visible(chat, message_id) if message_id > 0 else None
        if message is None:
            raise _fail(400, f"{purpose} not found")
        return message

    @staticmethod
    def _reply_parameters(request: _Request) -> tuple[int, bool]:
        """``Client::get_reply_parameters``: (message id or 0, allow_sending_without_reply).

        Parsed before the chat is looked up; whether the message exists is checked after.
        """
        if not request.has_arg("reply_parameters"):
            return (
                _to_int(request.arg("reply_to_message_id")),
                _to_bool(request.arg("allow_sending_without_reply")),
            )
        raw = request.arg("reply_parameters")
        if not raw:
            return 0, False
        try:
            value = json.loads(raw)
        except ValueError:
            raise _bad_request("Can't parse reply parameters JSON object") from None
        if not isinstance(value, dict):
            raise _bad_request("Object expected as reply parameters")
        if not value:
            return 0, False
        if "message_id" not in value:
            raise _bad_request('Can\'t find field "message_id"')
        message_id = value["message_id"]
        if isinstance(message_id, str) and _int64(message_id) is not None:
            message_id = int(message_id)
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            raise _bad_request('Field "message_id" must be a Number')
        return message_id, bool(value.get("allow_sending_without_reply", False))

    def _reply_target(self, chat: _Chat, reply: tuple[int, bool]) -> int | None:
        """The replied message id, "message to be replied not found", or None (A6)."""
        message_id, allow_without = reply
        if message_id <= 0:
            return None
        if self._visible(chat, message_id) is None:
            if allow_without:
                return None
            raise _bad_request("message to be replied not found")
        return message_id

    def _check_flood(self, chat: _Chat) -> None:
        """Sends and edits share one bucket per chat, plus a global one (A5)."""
        now = trio.current_time()
        self._check_storm(chat, now)
        limits = self.flood_limits
        bucket = self._chat_buckets.get(chat.id)
        if bucket is None:
            if chat.id < 0:
                bucket = TokenBucket(limits.group_burst, limits.group_rate, now)
            else:
                bucket = TokenBucket(limits.private_burst, limits.private_rate, now)
            self._chat_buckets[chat.id] = bucket
        if self._global_bucket is None:
            self._global_bucket = TokenBucket(limits.global_burst, limits.global_rate, now)
        wait = max(bucket.wait_time(now), self._global_bucket.wait_time(now))
        if wait > 0:
            raise _too_many_requests(retry_after_seconds(wait))
        bucket.take(now)
        self._global_bucket.take(now)

    def _check_storm(self, chat: _Chat, now: float) -> None:
        """``flood_storm``: refuse while a wait lasts; start the next wait when one is due."""
        storm = self._storms.get(chat.id)
        if storm is None:
            return
        if now < storm.until:
            raise _too_many_requests(retry_after_seconds(storm.until - now))
        if storm.until > -math.inf and storm.passed < storm.passes:
            storm.passed += 1
            return
        if not storm.waits:
            del self._storms[chat.id]
            return
        wait = storm.waits.pop(0)
        storm.until, storm.passed = now + wait, 0
        raise _too_many_requests(wait)

    def _check_blocked(self, chat: _Chat) -> None:
        if chat.blocked:
            raise _fail(400, "USER_IS_BLOCKED")

    # ---- Bot API methods ------------------------------------------------------------------------

    async def _get_me(self, request: _Request) -> Any:
        """getMe (A4)."""
        return {
            **self.bot.to_api(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _collect(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """``Client::do_get_updates`` without the waiting: confirm by offset, then read (A2)."""
        now = trio.current_time()
        self._queue = [u for u in self._queue if now - u.created <= UPDATE_RETENTION]
        if offset < 0:
            self._queue = self._queue[len(self._queue) - min(len(self._queue), -offset) :]
        head = self._queue[0].update_id if self._queue else self._next_update_id
        start = head
        if offset > 0 and offset <= self._next_update_id + OFFSET_FUTURE_SLACK:
            self._queue = [u for u in self._queue if u.update_id >= offset]
            start = offset
        updates = [u for u in self._queue if u.update_id >= start][:limit]
        return [{"update_id": u.update_id, **u.payload} for u in updates]

    def _abort_long_poll(self, message: str) -> None:
        """``Client::abort_long_poll`` + ``fail_query_conflict``: repeats within 3 s wait 3 s."""
        held = self._held
        if held is None:
            return
        self._held = None
        now = trio.current_time()
        held.conflict = message
        if now >= self._next_conflict_time:
            self._next_conflict_time = now + CONFLICT_REPEAT_DELAY
        else:
            held.conflict_delay = CONFLICT_REPEAT_DELAY
        held.wake.set()

    async def _get_updates(self, request: _Request) -> Any:
        """getUpdates (A2): offset confirms, limit and timeout are clamped, the poll is held
        until an update arrives or the timeout expires, and a newer poll displaces it (409)."""
        if self._webhook_url:
            raise BotApiError(409, CONFLICT_WEBHOOK_ACTIVE)
        offset = _int_arg(request, "offset", 0, -(2**31), 2**31 - 1)
        limit = _int_arg(request, "limit", GET_UPDATES_LIMIT_MAX, 1, GET_UPDATES_LIMIT_MAX)
        timeout = _int_arg(request, "timeout", 0, 0, LONG_POLL_MAX_TIMEOUT)
        self._update_allowed_updates(request.arg("allowed_updates"))

        now = trio.current_time()
        if self.anti_spin and offset == self._previous_offset:
            if timeout < 3 and now < self._previous_poll_time + ANTI_SPIN_TIMEOUT_WINDOW:
                timeout = 3
            if now < self._previous_poll_time + ANTI_SPIN_LIMIT_WINDOW:
                limit = 1
        self._previous_offset = offset
        self._previous_poll_time = now

        updates = self._collect(offset, limit)
        if updates or timeout == 0:
            return updates
        self._abort_long_poll(CONFLICT_OTHER_GET_UPDATES)
        held = _HeldPoll(offset, limit)
        self._held = held
        self._notify()
        try:
            with trio.move_on_after(timeout):
                await held.wake.wait()
        finally:
            if self._held is held:
                self._held = None
                self._notify()
        if held.conflict is not None:
            await trio.sleep(held.conflict_delay)
            raise BotApiError(409, held.conflict)
        if held.wake.is_set():
            await trio.sleep(LONG_POLL_WAIT_AFTER)  # let a burst of updates arrive together
        return self._collect(held.offset, held.limit)

    def _update_allowed_updates(self, raw: str) -> None:
        """``get_allowed_update_types``: an empty or unknown-only list means the default."""
        if not raw:
            return
        try:
            value = json.loads(raw)
        except ValueError:
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return
        known = {v.lower() for v in value} & (
            _DEFAULT_ALLOWED_UPDATES
            | {"chat_member", "message_reaction", "message_reaction_count", "my_chat_member"}
        )
        self._allowed_updates = frozenset(known) if known else _DEFAULT_ALLOWED_UPDATES

    async def _set_webhook(self, request: _Request) -> Any:
        """setWebhook: only its effect on getUpdates is modelled (no deliveries)."""
        url = request.arg("url")
        if url:
            self._abort_long_poll(CONFLICT_SET_WEBHOOK)
        self._webhook_url = url
        if _to_bool(request.arg("drop_pending_updates")):
            self._queue.clear()
        return True

    async def _delete_webhook(self, request: _Request) -> Any:
        self._webhook_url = ""
        if _to_bool(request.arg("drop_pending_updates")):
            self._queue.clear()
        return True

    async def _get_webhook_info(self, request: _Request) -> Any:
        return {
            "url": self._webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._queue),
        }

    def _check_length(self, text: str, limit: int, error: str) -> None:
        """Length in code points after parsing (A5)."""
        if len(text) > limit:
            raise _bad_request(error)

    async def _send_message(self, request: _Request) -> Any:
        """sendMessage (A4): text checks, markup, chat, then flood control and server checks."""
        text, entities = self._input_text(request)
        reply = self._reply_parameters(request)
        markup = _parse_reply_markup(request.arg("reply_markup"))
        chat = self._resolve_chat(request)
        reply_to = self._reply_target(chat, reply)
        self._check_blocked(chat)
        thread_id = self._thread_of(request, chat)
        text, entities = self._fixed(text, entities)
        self._check_length(text, MESSAGE_TEXT_MAX, "Message is too long")
        _check_inline_buttons(markup)
        self._check_flood(chat)
        _check_callback_data(markup)
        message = self._store(
            chat,
            _Message(
                chat.id,
                0,
                self.bot,
                trio.current_time(),
                text,
                entities,
                markup=markup,
                reply_to=reply_to,
                thread_id=thread_id,
            ),
        )
        self._log(
            chat,
            f"#{message.message_id} {self._topic_tag(thread_id)}bot: {text}"
            f"{self._buttons_suffix(markup)}",
        )
        return self._message_api(message)

    @staticmethod
    def _buttons_suffix(markup: _Markup | None) -> str:
        if markup is None or not markup.inline:
            return ""
        labels = " ".join(f"[{b.text}]" for row in markup.inline for b in row)
        return f" {labels}"

    def _editable(self, request: _Request, chat: _Chat) -> _Message:
        """TDLib ``can_edit_message``: only the bot's own messages without a reply keyboard."""
        message = self._message_to(request, chat, "message to edit")
        has_reply_keyboard = message.markup is not None and message.markup.other is not None
        if not message.sender.is_bot or has_reply_keyboard:
            raise _bad_request("Message can't be edited")
        return message

    def _edit_target(self, request: _Request) -> _Chat:
        """Chat of an edit; without chat_id and message_id it would be an inline message."""
        if not request.arg("chat_id") and _to_int(request.arg("message_id")) <= 0:
            if not request.arg("inline_message_id"):
                raise _bad_request("Message identifier is not specified")
            raise _bad_request("Invalid inline message identifier specified")
        return self._resolve_chat(request)

    @staticmethod
    def _inline_only(markup: _Markup | None) -> _Markup | None:
        if markup is not None and markup.other is not None:
            raise _bad_request("Inline keyboard expected")
        return markup

    async def _edit_message_text(self, request: _Request) -> Any:
        """editMessageText (A4, A6). Without ``reply_markup`` the inline keyboard is removed.

        Over-long text is a server-side check here, so it is the server's
        ``MESSAGE_TOO_LONG``, not sendMessage's "message is too long" (TDLib checks length
        only when sending).
        """
        text, entities = self._input_text(request)
        markup = _parse_reply_markup(request.arg("reply_markup"))
        chat = self._edit_target(request)
        message = self._editable(request, chat)
        if message.text is None:
            raise _bad_request("There is no text in the message to edit")
        markup = self._inline_only(markup)
        text, entities = self._fixed(text, entities)
        _check_inline_buttons(markup)
        self._check_flood(chat)
        if len(text) > MESSAGE_TEXT_MAX:
            raise _bad_request("MESSAGE_TOO_LONG")
        _check_callback_data(markup)
        if (text, entities, markup) == (message.text, message.entities, message.markup):
            raise _bad_request("MESSAGE_NOT_MODIFIED")
        message.text, message.entities, message.markup = text, entities, markup
        self._mark_edited(chat, message, f"edited: {text}{self._buttons_suffix(markup)}")
        return self._message_api(message)

    async def _edit_message_reply_markup(self, request: _Request) -> Any:
        """editMessageReplyMarkup: same chat/message checks; identical markup is "not modified"."""
        markup = _parse_reply_markup(request.arg("reply_markup"))
        chat = self._edit_target(request)
        message = self._editable(request, chat)
        markup = self._inline_only(markup)
        _check_inline_buttons(markup)
        self._check_flood(chat)
        _check_callback_data(markup)
        if markup == message.markup:
            raise _bad_request("MESSAGE_NOT_MODIFIED")
        message.markup = markup
        suffix = self._buttons_suffix(markup) or " (no buttons)"
        self._mark_edited(chat, message, f"edited buttons:{suffix}")
        return self._message_api(message)

    def _mark_edited(self, chat: _Chat, message: _Message, what: str) -> None:
        message.edit_date = trio.current_time()
        message.edit_count += 1
        self._log(chat, f"#{message.message_id} bot {what}")

    async def _send_document(self, request: _Request) -> Any:
        """sendDocument (A4): a multipart file part with a filename, or a known file_id."""
        document = self._input_document(request)
        caption, caption_entities = self._formatted(
            request.arg("caption"), request.arg("parse_mode"), request.arg("caption_entities")
        )
        reply = self._reply_parameters(request)
        markup = _parse_reply_markup(request.arg("reply_markup"))
        chat = self._resolve_chat(request)
        reply_to = self._reply_target(chat, reply)
        self._check_blocked(chat)
        thread_id = self._thread_of(request, chat)
        if caption.strip(" \n"):
            caption, caption_entities = self._fixed(caption, caption_entities)
        else:
            caption, caption_entities = "", []
        self._check_length(caption, CAPTION_MAX, "Message caption is too long")
        _check_inline_buttons(markup)
        self._check_flood(chat)
        _check_callback_data(markup)
        filename, mime_type, content = document
        message = self._store(
            chat,
            _Message(
                chat.id,
                0,
                self.bot,
                trio.current_time(),
                None,
                [],
                caption=caption,
                caption_entities=caption_entities,
                markup=markup,
                reply_to=reply_to,
                thread_id=thread_id,
            ),
        )
        received = ReceivedDocument(
            chat.id,
            message.message_id,
            filename,
            content,
            mime_type,
            caption,
            file_id=f"BQACAgIAAxkBAAI{len(self._documents) + 1:06d}{chat.id & 0xFFFFFF:06x}fake",
        )
        message.document = received
        self._documents.append(received)
        shown = f" {caption}" if caption else ""
        self._log(
            chat,
            f"#{message.message_id} {self._topic_tag(thread_id)}bot sent {filename} "
            f"({len(content)} bytes){shown}",
        )
        return self._message_api(message)

    async def _get_file(self, request: _Request) -> Any:
        """getFile (https://core.telegram.org/bots/api#getfile): the File with its
        ``file_path``, valid for an hour; files over 20 MB are refused."""
        file_id = request.arg("file_id")
        if not file_id:
            raise _bad_request("file_id not specified")
        stored = self._files.get(file_id)
        if stored is None:
            raise BotApiError(400, INVALID_FILE_ID)
        size = self._file_sizes[file_id]
        if size > DOWNLOAD_MAX_BYTES:
            raise BotApiError(400, FILE_TOO_BIG)
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": size,
            "file_path": stored.file_path,
        }

    def _forum(self, request: _Request) -> _Chat:
        chat = self._resolve_chat(request)
        if not chat.is_forum:
            raise _bad_request("the chat is not a forum")
        return chat

    def _managed_topic(self, request: _Request) -> tuple[_Chat, _Topic]:
        chat = self._forum(request)
        topic = chat.topics.get(_to_int(request.arg("message_thread_id")))
        if topic is None or topic.deleted:
            raise BotApiError(400, THREAD_NOT_FOUND)
        return chat, topic

    async def _create_forum_topic(self, request: _Request) -> Any:
        """createForumTopic (https://core.telegram.org/bots/api#createforumtopic): name 1-128."""
        chat = self._forum(request)
        name = request.arg("name")
        if not 1 <= len(name) <= 128:
            raise _bad_request("invalid forum topic name specified")
        topic = self._new_topic(chat, name)
        return {
            "message_thread_id": topic.thread_id,
            "name": topic.name,
            "icon_color": TOPIC_ICON_COLOR,
        }

    async def _close_forum_topic(self, request: _Request) -> Any:
        _, topic = self._managed_topic(request)
        topic.closed = True
        return True

    async def _reopen_forum_topic(self, request: _Request) -> Any:
        _, topic = self._managed_topic(request)
        topic.closed = False
        return True

    async def _delete_forum_topic(self, request: _Request) -> Any:
        chat, topic = self._managed_topic(request)
        self.delete_topic(chat.id, topic.thread_id)
        return True

    def _input_document(self, request: _Request) -> tuple[str, str, bytes]:
        """``Client::get_input_file``: ``attach://name``, a file part, or a file_id string."""
        value = request.arg("document")
        part_name = "document"
        if value.startswith("attach://"):
            part_name = value.removeprefix("attach://")
            value = ""
        if value:
            known = next((d for d in self._documents if d.file_id == value), None)
            if known is None:
                raise _bad_request("Wrong file identifier/HTTP URL specified")
            return known.filename, known.mime_type, known.content
        part = request.files.get(part_name)
        if part is None:
            raise _bad_request("There is no document in the request")
        filename, content_type, content = part
        mime = mimetypes.guess_type(filename)[0] or content_type or "application/octet-stream"
        return filename, mime, content

    async def _delete_message(self, request: _Request) -> Any:
        """deleteMessage (A4): within 48 h; others' messages in groups need admin rights."""
        if not request.arg("chat_id"):
            raise _bad_request("Chat identifier is not specified")
        if _to_int(request.arg("message_id")) <= 0:
            raise _bad_request("Message identifier is not specified")
        chat = self._resolve_chat(request)
        message = self._message_to(request, chat, "message to delete")
        too_old = trio.current_time() - message.date >= DELETE_WINDOW
        others_in_group = chat.type != "private" and not message.sender.is_bot
        if too_old or (others_in_group and not chat.bot_is_admin):
            raise _fail(400, "MESSAGE_DELETE_FORBIDDEN")
        message.deleted = True
        self._log(chat, f"#{message.message_id} deleted by bot")
        return True

    async def _answer_callback_query(self, request: _Request) -> Any:
        """answerCallbackQuery (A3, A4): once per query, within the answer window."""
        query_id = str(_to_int(request.arg("callback_query_id")))
        text = request.arg("text")
        query = self._callback_queries.get(query_id)
        expired = (
            query is None
            or query.answered
            or trio.current_time() - query.created > self.callback_query_answer_window
        )
        if expired:
            raise _fail(400, "QUERY_ID_INVALID")
        assert query is not None
        if len(text) > CALLBACK_ANSWER_TEXT_MAX:
            raise _bad_request("MESSAGE_TOO_LONG")
        query.answered = True
        answer = CallbackAnswer(
            query_id,
            query.chat_id,
            query.message_id,
            query.data,
            text,
            _to_bool(request.arg("show_alert")),
            request.arg("url"),
            _int_arg(request, "cache_time", 0, 0, 24 * 30 * 60 * 60),
        )
        self._callback_answers.append(answer)
        shown = f": {text}" if text else ""
        self._log(
            self._chats[query.chat_id], f"bot answered {self._name(query.user)}'s press{shown}"
        )
        return True

    async def _send_chat_action(self, request: _Request) -> Any:
        chat = self._resolve_chat(request)
        self._check_blocked(chat)
        if not request.arg("action"):
            raise _bad_request('Parameter "action" is required')
        return True

    def _scope_key(self, request: _Request) -> tuple[str, str]:
        raw = request.arg("scope")
        scope = "default"
        if raw:
            try:
                value = json.loads(raw)
            except ValueError:
                raise _bad_request("Can't parse BotCommandScope JSON object") from None
            if not isinstance(value, dict):
                raise _bad_request("Object expected as BotCommandScope")
            scope = str(value.get("type", "default"))
        return scope, request.arg("language_code")

    async def _set_my_commands(self, request: _Request) -> Any:
        """setMyCommands (A4; TDLib ``BotCommand.cpp`` and the server's codes)."""
        raw = request.arg("commands")
        commands: list[dict[str, str]] = []
        if raw:
            try:
                value = json.loads(raw)
            except ValueError:
                raise _bad_request("Can't parse commands JSON object") from None
            if not isinstance(value, list):
                raise _bad_request("Expected an Array of BotCommand")
            for item in value:
                try:
                    if not isinstance(item, dict):
                        raise _ParseError("expected an Object")
                    command = _json_field_string(item, "command", required=True) or ""
                    description = _json_field_string(item, "description", required=True) or ""
                except _ParseError as error:
                    raise _bad_request(f"Can't parse BotCommand: {error}") from None
                commands.append({"command": command, "description": description})
        key = self._scope_key(request)
        cleaned = []
        for item in commands:
            command = item["command"].strip().removeprefix("/")
            description = item["description"].strip()
            if not command:
                raise _bad_request("Command must be non-empty")
            if len(command) > COMMAND_MAX:
                raise _bad_request(f"Command length must not exceed {COMMAND_MAX}")
            if not description:
                raise _bad_request("Command description must be non-empty")
            if len(description) > COMMAND_DESCRIPTION_MAX:
                raise _bad_request(
                    f"Command description length must not exceed {COMMAND_DESCRIPTION_MAX}"
                )
            cleaned.append({"command": command, "description": description})
        if len(cleaned) > MAX_COMMANDS:
            raise _bad_request("BOT_COMMANDS_TOO_MUCH")
        for item in cleaned:
            if not all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_" for ch in item["command"]):
                raise _bad_request("BOT_COMMAND_INVALID")
        self._commands[key] = cleaned
        self._notify()
        return True

    async def _get_my_commands(self, request: _Request) -> Any:
        return self._commands.get(self._scope_key(request), [])

    async def _delete_my_commands(self, request: _Request) -> Any:
        self._commands.pop(self._scope_key(request), None)
        self._notify()
        return True

    # ---- HTTP -----------------------------------------------------------------------------------

    async def _dispatch(self, path: str, request_args: list[tuple[str, str]], files: Any) -> Any:
        """Route ``/bot<token>/<method>`` as ``HttpConnection`` and ``ClientManager`` do (A1)."""
        if not path.startswith("/bot"):
            raise BotApiError(404, "Not Found")
        token, slash, method = path[4:].partition("/")
        if method.startswith("test/"):
            method = method[5:]
        if not slash:
            raise BotApiError(404, "Not Found")
        user_part = token.partition(":")[0]
        user_id = _int64(user_part)
        if (
            not token
            or token[0] == "0"
            or len(token) > 80
            or ":" not in token
            or user_id is None
            or not 0 < user_id < 2**54
        ):
            raise BotApiError(401, "Unauthorized: invalid token specified")
        if token != self.token or self._revoked:
            raise BotApiError(401, "Unauthorized")
        request = _Request(method, request_args, files)
        if not request.method:
            request.method = request.arg("method")
        request.method = request.method.lower()
        failure = next(
            (f for f in self._failures if f.remaining > 0 and f.method in ("*", request.method)),
            None,
        )
        if failure is not None:
            failure.remaining -= 1
            if not failure.after:
                raise failure.error
        handler = self._methods.get(request.method)
        if handler is None:
            raise BotApiError(404, "Not Found: method not found")
        result = await handler(request)
        if failure is not None:
            raise failure.error
        return result

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI application; give it to ``serve_asgi``."""
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            body.extend(event.get("body", b""))
            if not event.get("more_body"):
                break
        arrived = trio.current_time()
        if scope["path"].startswith("/file/bot"):
            await self._serve_file(scope["path"], send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method_name = scope["path"].rpartition("/")[2].lower()
        args: list[tuple[str, str]] = []
        files: dict[str, tuple[str, str, bytes]] = {}
        status, retry_after = 200, None
        try:
            if len(body) > UPLOAD_MAX_BYTES:
                raise BotApiError(413, "Request Entity Too Large")
            args, files = _parse_request(scope["query_string"], headers, bytes(body))
            result = await self._dispatch(scope["path"], args, files)
            payload: dict[str, Any] = {"ok": True, "result": result}
            description = None
        except BotApiError as error:
            payload = error.body()
            status, retry_after, description = (
                error.error_code,
                error.retry_after,
                error.description,
            )
        stalled = self._stalls.get(method_name, 0) > 0
        if stalled:
            self._stalls[method_name] -= 1
        self._calls.append(
            ApiCall(
                method_name,
                dict(reversed(args)),
                {name: part[0] for name, part in files.items()},
                status,
                description,
                at=arrived,
                stalled=stalled,
            )
        )
        self._notify()
        if stalled:
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(encoded)).encode()),
        ]
        if retry_after is not None:
            response_headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": encoded})

    async def _serve_file(self, path: str, send: Any) -> None:
        """``GET /file/bot<token>/<file_path>`` (https://core.telegram.org/bots/api#file): the
        bytes of a file getFile described; anything else is 404 (a wrong token 401)."""
        token, _, file_path = path.removeprefix("/file/bot").partition("/")
        status, body = 404, b'{"ok":false,"error_code":404,"description":"Not Found"}'
        content_type = b"application/json"
        if token != self.token or self._revoked:
            status = 401
            body = b'{"ok":false,"error_code":401,"description":"Unauthorized"}'
        else:
            stored = next((f for f in self._files.values() if f.file_path == file_path), None)
            if stored is not None and self._file_sizes[stored.file_id] <= DOWNLOAD_MAX_BYTES:
                status, body = 200, stored.content
                content_type = b"application/octet-stream"
                self._downloads.append(file_path)
                self._notify()
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _json_arg(value: Any) -> str:
    """JSON body values become arguments as their JSON text, strings as themselves (HttpReader)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _parse_request(
    query_string: bytes, headers: dict[str, str], body: bytes
) -> tuple[list[tuple[str, str]], dict[str, tuple[str, str, bytes]]]:
    """Arguments from the query string, then the body: urlencoded, JSON or multipart (A1).

    Malformed bodies are ignored, as the real server only logs them; the request then simply
    lacks those arguments.
    """
    args = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    files: dict[str, tuple[str, str, bytes]] = {}
    content_type = headers.get("content-type", "").lower()
    if "multipart/form-data" in content_type:
        fields, files = _parse_multipart(headers["content-type"], body)
        args.extend(fields)
    elif "application/x-www-form-urlencoded" in content_type:
        args.extend(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    elif "application/json" in content_type and body.strip():
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if isinstance(value, dict):
            args.extend((key, _json_arg(v)) for key, v in value.items())
        elif isinstance(value, str):
            args.append(("content", value))
    return args, files


def _parse_multipart(
    content_type: str, body: bytes
) -> tuple[list[tuple[str, str]], dict[str, tuple[str, str, bytes]]]:
    """Fields and file parts of a multipart body; a part with a filename is a file (HttpReader)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BotApiError(400, "Bad Request: boundary too big or empty")
    parts: list[tuple[dict[str, str], bytearray]] = []
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1][0][header_name.decode("latin-1").lower()] = header_value.decode(
            "utf-8", "replace"
        )
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    parser.write(body)
    parser.finalize()
    fields: list[tuple[str, str]] = []
    files: dict[str, tuple[str, str, bytes]] = {}
    for part_headers, data in parts:
        _, disposition = parse_options_header(part_headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None:
            part_type = part_headers.get("content-type", "application/octet-stream")
            files[name] = (filename.decode("utf-8", "replace"), part_type, bytes(data))
        else:
            fields.append((name, data.decode("utf-8", "replace")))
    return fields, files
