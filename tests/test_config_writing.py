"""The TOML writer of `anycode setup` and `check-config`: what it writes, `tomllib` reads back.

Strings follow the basic-string rules of TOML 1.0 (https://toml.io/en/v1.0.0#string): a
backslash, a double quote and the control characters U+0000 to U+001F and U+007F are escaped.
"""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycode_actors.config import dump_toml, parse_config
from anycode_actors.config.writing import toml_key, toml_string

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
CONTROL_CHARACTERS = "".join(chr(code) for code in range(0x20)) + "\x7f"
TRICKY = {
    "quotes": "say \"hi\" and 'bye'",
    "backslashes": "C:\\path\\to\\file and \\u0041 and a trailing \\",
    "newlines": "one\ntwo\r\nthree\r",
    "tabs": "a\tb\t",
    "unicode": "é ✓ 日本語 🎉 \u00a0 \u0301",
    "controls": CONTROL_CHARACTERS,
    "terminal escape": "\x1b[31mred\x1b[0m",
    "format characters": "\u202eevil\u202c \u200b \ufeff \u2028 \u2029",
    "above the BMP": "\U000e0001 \U0001f600 \U0010ffff",
    "empty": "",
}


def read_back(value: str) -> Any:
    return tomllib.loads(f"v = {toml_string(value)}\n")["v"]


def has_raw_control_character(text: str) -> bool:
    return any(char in CONTROL_CHARACTERS for char in text)


@pytest.mark.parametrize("value", TRICKY.values(), ids=TRICKY.keys())
def test_tricky_strings_round_trip_as_values_and_keys(value: str) -> None:
    assert read_back(value) == value
    data = {"table": {value: value, "list": [value, value], "nested": {"inline": value}}}
    text = dump_toml(data)
    assert tomllib.loads(text) == data


@pytest.mark.parametrize("value", TRICKY.values(), ids=TRICKY.keys())
def test_a_written_string_holds_no_raw_control_character(value: str) -> None:
    assert not has_raw_control_character(toml_string(value))
    assert not has_raw_control_character(toml_key(value))


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('"', '"\\""'),
        ("\\", '"\\\\"'),
        ("\b\t\n\f\r", '"\\b\\t\\n\\f\\r"'),
        ("\x00", '"\\u0000"'),
        ("\x1f", '"\\u001f"'),
        ("\x7f", '"\\u007f"'),
        ("\u202e", '"\\u202e"'),
        ("\U000e0001", '"\\U000e0001"'),
        ("é✓🎉", '"é✓🎉"'),
    ],
)
def test_strings_use_the_escapes_of_the_spec(value: str, written: str) -> None:
    assert toml_string(value) == written


def test_keys_are_bare_only_when_toml_allows_it() -> None:
    assert toml_key("claude-code_2") == "claude-code_2"
    assert toml_key("odd key.name") == '"odd key.name"'
    assert toml_key("") == '""'
    assert toml_key("é") == '"é"'


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        toml_string("a\ud800b")


@given(st.text())
def test_any_string_round_trips(value: str) -> None:
    assert read_back(value) == value
    assert not has_raw_control_character(toml_string(value))


def test_none_is_written_as_a_comment() -> None:
    text = dump_toml({"absent": None, "present": {"a": 1, "b": None}})
    assert "# [absent] is not configured" in text
    assert "# b is not set" in text
    assert tomllib.loads(text) == {"present": {"a": 1}}


def test_the_effective_config_round_trips_tricky_values() -> None:
    argument = 'a"b\\c\td\x1be\u202ef✓\U000e0001'
    config = parse_config(
        f'[telegram]\nbot_token = "{TOKEN}"\nallowed_users = [1]\n'
        '[agents]\ndefault_agent = "x"\n'
        f"[agents.x]\nacp_command = [{toml_string(argument)}]\n",
        environ={},
    )
    text = config.effective_toml()
    assert not has_raw_control_character(text.replace("\n", ""))
    assert "\u202e" not in text
    assert tomllib.loads(text)["agents"]["x"]["acp_command"] == [argument]


def test_dump_toml_round_trips_the_values_a_config_has() -> None:
    data: dict[str, Any] = {
        "telegram": {"bot_token": 'a"b\\c\n\t\x01\x7fé✓', "allowed_users": [1, 2], "x": True},
        "docker": {"cpus": 2.5, "cap_add": ["CHOWN"], "empty": []},
        "agents": {
            "default_agent": "claude-code",
            "claude-code": {"env": {"ANTHROPIC_API_KEY": "sk"}, "pass_env": []},
            "goose": {},
            "odd key.name": {"acpx_agent": "x"},
        },
    }
    text = dump_toml(data, header="first\nsecond")
    assert text.startswith("# first\n# second\n")
    assert tomllib.loads(text) == data
    assert 'env = { ANTHROPIC_API_KEY = "sk" }' in text
    assert "[agents.goose]" in text


_keys = st.text(min_size=0, max_size=8)
_scalars = (
    st.text(max_size=20)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
)
_values = st.recursive(
    _scalars | st.lists(_scalars, max_size=4),
    lambda inner: st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=5))
def test_dump_toml_round_trips_any_nested_tables(data: dict[str, Any]) -> None:
    assert tomllib.loads(dump_toml(data)) == data


def test_floats_keep_their_value_and_sign() -> None:
    data = {"t": {"a": -0.0, "b": math.inf, "c": 1e300, "d": 5e-324}}
    loaded_back = tomllib.loads(dump_toml(data))
    assert loaded_back == data
    assert math.copysign(1, loaded_back["t"]["a"]) == -1
