"""Secrets: from the environment, and never shown in repr, str, dumps or error messages."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anycode_actors.config import (
    Config,
    ConfigError,
    mask_secret,
    parse_config,
)

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
TELEGRAM = f'[telegram]\nbot_token = "{TOKEN}"\n'
SLACK_APP = "xapp-1-A0SECRETAPP-0000-abcdef"
SLACK_BOT = "xoxb-0000_SECRETBOT_abcdef"
ANTHROPIC = "sk-ant-api03.SECRETANTHROPIC"
GITHUB = "ghp_SECRETGITHUB0123456789"

FULL = f"""
[telegram]
bot_token = "{TOKEN}"
[slack]
app_token = "{SLACK_APP}"
bot_token = "{SLACK_BOT}"
[github]
token = "{GITHUB}"
[agents.claude-code]
env = {{ ANTHROPIC_API_KEY = "{ANTHROPIC}" }}
"""
SECRET_PARTS = [TOKEN.split(":")[1], "SECRETAPP", "SECRETBOT", "SECRETANTHROPIC", "SECRETGITHUB"]


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, environ=environ or {})


def assert_no_secret(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text


# --- environment variables ---------------------------------------------------------------------


def test_environment_token_wins_over_the_file() -> None:
    other = "987654321:BBExampleExampleExampleExampleExample1"
    config = parse(TELEGRAM, {"ANYCODE_TELEGRAM_BOT_TOKEN": other})
    assert config.telegram is not None
    assert config.telegram.bot_token.get_secret_value() == other


def test_environment_token_alone_enables_telegram() -> None:
    config = parse("", {"ANYCODE_TELEGRAM_BOT_TOKEN": TOKEN})
    assert config.platforms() == ("telegram",)


def test_environment_tokens_alone_enable_slack() -> None:
    environ = {"ANYCODE_SLACK_APP_TOKEN": SLACK_APP, "ANYCODE_SLACK_BOT_TOKEN": SLACK_BOT}
    config = parse("", environ)
    assert config.slack is not None
    assert config.slack.bot_token.get_secret_value() == SLACK_BOT


def test_environment_github_token_enables_github() -> None:
    config = parse(TELEGRAM, {"ANYCODE_GITHUB_TOKEN": GITHUB})
    assert config.github is not None
    assert config.github.token.get_secret_value() == GITHUB
    assert config.sandbox_env("claude-code") == {}  # the daemon's alone: agent_token is false
    shared = parse(TELEGRAM + "[github]\nagent_token = true\n", {"ANYCODE_GITHUB_TOKEN": GITHUB})
    assert shared.sandbox_env("claude-code") == {"GITHUB_TOKEN": GITHUB}


def test_one_slack_token_in_the_environment_asks_for_the_other() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("", {"ANYCODE_SLACK_APP_TOKEN": SLACK_APP})
    (problem,) = caught.value.problems
    assert (problem.path, problem.message) == ("slack.bot_token", "is required")
    assert "ANYCODE_SLACK_BOT_TOKEN" in problem.fix


def test_empty_environment_variable_counts_as_unset() -> None:
    config = parse(TELEGRAM, {"ANYCODE_TELEGRAM_BOT_TOKEN": ""})
    assert config.telegram is not None
    assert config.telegram.bot_token.get_secret_value() == TOKEN


def test_bad_environment_token_names_the_variable_but_not_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(
            "", {"ANYCODE_SLACK_APP_TOKEN": "xoxp-SECRETAPP", "ANYCODE_SLACK_BOT_TOKEN": SLACK_BOT}
        )
    (problem,) = caught.value.problems
    assert problem.message == (
        "must start with xapp- (value from the environment variable ANYCODE_SLACK_APP_TOKEN)"
    )
    assert_no_secret(str(caught.value))


def test_surrounding_whitespace_of_a_token_is_dropped() -> None:
    config = parse("", {"ANYCODE_TELEGRAM_BOT_TOKEN": f" {TOKEN}\n"})
    assert config.telegram is not None
    assert config.telegram.bot_token.get_secret_value() == TOKEN


def test_loading_never_reads_the_process_environment_when_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "ANYCODE_TELEGRAM_BOT_TOKEN", "987654321:BBExampleExampleExampleExampleExample1"
    )
    config = parse(TELEGRAM, {})
    assert config.telegram is not None
    assert config.telegram.bot_token.get_secret_value() == TOKEN


# --- redaction ---------------------------------------------------------------------------------


def test_secrets_are_not_in_repr_or_str() -> None:
    config = parse(FULL)
    for text in (repr(config), str(config), repr(config.slack), str(config.agent("claude-code"))):
        assert_no_secret(text)


def test_secrets_are_not_in_the_effective_config() -> None:
    config = parse(FULL)
    assert_no_secret(config.effective_toml())
    assert_no_secret(repr(config.redacted()))
    assert_no_secret(config.model_dump_json())


def test_effective_config_shows_only_the_kind_of_each_secret() -> None:
    text = parse(FULL).effective_toml()
    assert 'bot_token = "123456:…(redacted, 41 chars)"' in text
    assert f'app_token = "xapp-…(redacted, {len(SLACK_APP)} chars)"' in text
    assert f'token = "ghp_…(redacted, {len(GITHUB)} chars)"' in text
    assert f'env = {{ ANTHROPIC_API_KEY = "sk-ant-…(redacted, {len(ANTHROPIC)} chars)" }}' in text


def test_secret_values_are_still_available_on_request() -> None:
    config = parse(FULL)
    assert config.slack is not None
    assert config.slack.app_token.get_secret_value() == SLACK_APP
    assert config.github is not None
    assert config.github.token.get_secret_value() == GITHUB
    assert config.sandbox_env("claude-code") == {"ANTHROPIC_API_KEY": ANTHROPIC}


def test_mask_keeps_only_a_public_prefix() -> None:
    assert mask_secret("xoxb-123_456_abc") == "xoxb-…(redacted, 16 chars)"
    assert mask_secret("hunter2hunter2") == "…(redacted, 14 chars)"
    assert mask_secret("") == "(empty)"


def test_invalid_secrets_are_not_echoed_in_problems() -> None:
    text = f"""
[telegram]
bot_token = "SECRETAPP-not-a-token"
[slack]
app_token = "{SLACK_BOT}"
bot_token = "{SLACK_APP}"
[github]
token = 5
[agents.claude-code]
env = {{ ANTHROPIC_API_KEY = 42, "SECRETANTHROPIC" = "x" }}
"""
    with pytest.raises(ConfigError) as caught:
        parse(text)
    for problem in caught.value.problems:
        assert_no_secret(problem.message + problem.fix)


def test_toml_syntax_errors_do_not_quote_the_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse('[slack]\napp_token = "xapp-SECRETAPP\n')
    assert_no_secret(str(caught.value))


SECRET_BODY = st.text(alphabet=string.ascii_letters + string.digits, min_size=16, max_size=40)


@settings(max_examples=60, deadline=None)
@given(body=SECRET_BODY, prefix=st.sampled_from(["", "xapp-", "xoxb-", "sk-", "12:", "xoxp-"]))
def test_no_secret_field_ever_shows_its_value(body: str, prefix: str) -> None:
    secret = prefix + body
    text = f"""
[telegram]
bot_token = "{secret}"
[slack]
app_token = "{secret}"
bot_token = "{secret}"
[github]
token = "{secret}"
[agents.claude-code]
env = {{ KEY = "{secret}" }}
[session]
debounce_ms = 0
"""
    with pytest.raises(ConfigError) as caught:
        parse(text)
    config_error_text = str(caught.value)
    assert body not in config_error_text
    # Whatever part happens to be valid is still never printed in full.
    valid = parse(f'[telegram]\nbot_token = "123456789:{body}AAAAAAAAAAAAAAAAAAAA"\n')
    assert body not in repr(valid) + valid.effective_toml()
