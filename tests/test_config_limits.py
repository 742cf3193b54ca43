"""The safe-by-default keys: who may use the bot (allow_everyone, admins), [limits], and the new
[session] and [database] bounds. One rule per test: the key path, the message, the fix."""

from __future__ import annotations

import tomllib

import pytest

from anycode_actors.config import (
    Config,
    ConfigError,
    ConfigProblem,
    DatabaseConfig,
    LimitsConfig,
    SessionConfig,
    parse_config,
)

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
TELEGRAM = f'[telegram]\nbot_token = "{TOKEN}"\n'
SLACK = '[slack]\napp_token = "xapp-1-A0000-0000-abcdef"\nbot_token = "xoxb-0000_0000_abcdef"\n'
LIMITS_AT_LEAST_ONE = (
    "max_sessions_per_user",
    "max_sessions_total",
    "max_tasks_per_user_per_day",
    "command_burst",
)
SESSION_AT_LEAST_ONE = ("max_upload_files", "max_upload_total_mb", "max_queued_follow_ups")


def parse(text: str) -> Config:
    return parse_config(text, environ={})


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return list(caught.value.problems)


def problem_at(text: str, path: str) -> ConfigProblem:
    found = [p for p in problems_of(text) if p.path == path]
    assert found, f"no problem at {path}: {problems_of(text)}"
    return found[0]


# --- defaults ----------------------------------------------------------------------------------


def test_limits_default_to_a_small_shared_daemon() -> None:
    limits = parse(TELEGRAM).limits
    assert (limits.max_sessions_per_user, limits.max_sessions_total) == (3, 10)
    assert limits.max_tasks_per_user_per_day == 50
    assert (limits.commands_per_second, limits.command_burst) == (1.0, 5)
    assert LimitsConfig() == limits


def test_new_session_and_database_keys_have_their_defaults() -> None:
    config = parse(TELEGRAM)
    session = config.session
    assert (session.max_upload_files, session.max_upload_total_mb) == (20, 50)
    assert session.max_queued_follow_ups == 10
    assert config.database.retention_days == 30
    assert SessionConfig().max_queued_follow_ups == 10
    assert DatabaseConfig().retention_days == 30


def test_nobody_is_let_in_or_an_admin_by_default() -> None:
    config = parse(TELEGRAM + SLACK)
    for section in (config.telegram, config.slack):
        assert section is not None
        assert (section.allowed_users, section.allow_everyone, section.admins) == ((), False, ())


def test_limits_can_be_set() -> None:
    config = parse(
        TELEGRAM
        + "[limits]\nmax_sessions_per_user = 1\nmax_sessions_total = 1\n"
        + "max_tasks_per_user_per_day = 1\ncommands_per_second = 0.2\ncommand_burst = 1\n"
    )
    limits = config.limits
    assert (limits.max_sessions_per_user, limits.max_sessions_total) == (1, 1)
    assert (limits.max_tasks_per_user_per_day, limits.command_burst) == (1, 1)
    assert limits.commands_per_second == 0.2


def test_effective_toml_shows_limits_and_the_access_keys() -> None:
    dumped = tomllib.loads(parse(TELEGRAM + "allowed_users = [1]\nadmins = [2]\n").effective_toml())
    assert dumped["limits"]["commands_per_second"] == 1.0
    assert dumped["telegram"]["allow_everyone"] is False
    assert dumped["telegram"]["admins"] == ["2"]
    assert dumped["database"]["retention_days"] == 30
    assert dumped["session"]["max_queued_follow_ups"] == 10


# --- [limits] ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", LIMITS_AT_LEAST_ONE)
@pytest.mark.parametrize("bad", [0, -1])
def test_limits_must_be_at_least_1(key: str, bad: int) -> None:
    problem = problem_at(TELEGRAM + f"[limits]\n{key} = {bad}\n", f"limits.{key}")
    assert problem.message == "must be at least 1"


@pytest.mark.parametrize("bad", ["0", "0.0", "-1", "-0.5"])
def test_commands_per_second_must_be_greater_than_0(bad: str) -> None:
    text = TELEGRAM + f"[limits]\ncommands_per_second = {bad}\n"
    problem = problem_at(text, "limits.commands_per_second")
    assert problem.message == "must be greater than 0"
    assert problem.fix


def test_commands_per_second_accepts_a_whole_number() -> None:
    assert parse(TELEGRAM + "[limits]\ncommands_per_second = 2\n").limits.commands_per_second == 2


def test_limits_must_be_whole_numbers() -> None:
    problem = problem_at(TELEGRAM + "[limits]\ncommand_burst = 1.5\n", "limits.command_burst")
    assert problem.message == "must be a whole number"


def test_misspelt_limit_suggests_the_right_key() -> None:
    text = TELEGRAM + "[limits]\nmax_session_per_user = 2\n"
    problem = problem_at(text, "limits.max_session_per_user")
    assert problem.message == "unknown key; did you mean max_sessions_per_user?"


def test_every_bad_limit_is_reported_at_once() -> None:
    text = TELEGRAM + "[limits]\nmax_sessions_total = 0\ncommands_per_second = 0\n"
    paths = [p.path for p in problems_of(text)]
    assert paths == ["limits.max_sessions_total", "limits.commands_per_second"]


# --- [session] and [database] ------------------------------------------------------------------


@pytest.mark.parametrize("key", SESSION_AT_LEAST_ONE)
def test_session_upload_and_queue_bounds_must_be_at_least_1(key: str) -> None:
    problem = problem_at(TELEGRAM + f"[session]\n{key} = 0\n", f"session.{key}")
    assert problem.message == "must be at least 1"


@pytest.mark.parametrize("key", SESSION_AT_LEAST_ONE)
def test_session_upload_and_queue_bounds_of_1_are_accepted(key: str) -> None:
    assert getattr(parse(TELEGRAM + f"[session]\n{key} = 1\n").session, key) == 1


@pytest.mark.parametrize("bad", [0, -30])
def test_retention_days_must_be_at_least_1(bad: int) -> None:
    text = TELEGRAM + f"[database]\nretention_days = {bad}\n"
    problem = problem_at(text, "database.retention_days")
    assert problem.message == "must be at least 1 day"
    assert "30" in problem.fix


def test_retention_of_1_day_is_accepted() -> None:
    assert parse(TELEGRAM + "[database]\nretention_days = 1\n").database.retention_days == 1


def test_retention_days_must_be_a_whole_number() -> None:
    text = TELEGRAM + '[database]\nretention_days = "30"\n'
    assert problem_at(text, "database.retention_days").message == "must be a whole number"


# --- allow_everyone and admins -----------------------------------------------------------------


def test_telegram_admins_accept_numbers_and_numeric_strings() -> None:
    config = parse(TELEGRAM + 'admins = [111, "222"]\n')
    assert config.telegram is not None
    assert config.telegram.admins == ("111", "222")


def test_telegram_admins_must_be_numeric_user_ids() -> None:
    problem = problem_at(TELEGRAM + 'admins = [111, "@boss"]\n', "telegram.admins[1]")
    assert problem.message == "must be a numeric Telegram user id, not '@boss'"
    assert "@userinfobot" in problem.fix


def test_slack_admins_must_be_member_ids() -> None:
    problem = problem_at(SLACK + 'admins = ["U0123ABCD", "bob"]\n', "slack.admins[1]")
    assert problem.message == "must be a Slack member id like U0123ABCD, not 'bob'"
    assert "Copy member ID" in problem.fix


def test_slack_admins_are_kept() -> None:
    config = parse(SLACK + 'admins = ["U0123ABCD", "W0999XYZ"]\n')
    assert config.slack is not None
    assert config.slack.admins == ("U0123ABCD", "W0999XYZ")


def test_admins_must_be_a_list() -> None:
    assert problem_at(TELEGRAM + "admins = 111\n", "telegram.admins").message.startswith(
        "must be a list"
    )


@pytest.mark.parametrize("platform", ["telegram", "slack"])
def test_allow_everyone_must_be_true_or_false(platform: str) -> None:
    text = (TELEGRAM if platform == "telegram" else SLACK) + 'allow_everyone = "yes"\n'
    problem = problem_at(text, f"{platform}.allow_everyone")
    assert problem.message == "must be true or false"


# --- who may run the daemon --------------------------------------------------------------------


def test_an_empty_allow_list_loads_but_is_an_access_problem() -> None:
    # Loading stays possible (tools and tests build such configs); run and check-config refuse.
    (problem,) = parse(TELEGRAM).access_problems()
    assert problem.path == "telegram.allowed_users"
    assert "anyone who finds the bot" in problem.message
    assert "refuses to start" in problem.message
    assert "allowed_users" in problem.fix
    assert "allow_everyone = true" in problem.fix


def test_an_empty_allow_list_is_a_problem_on_each_platform() -> None:
    paths = [p.path for p in parse(TELEGRAM + SLACK).access_problems()]
    assert paths == ["telegram.allowed_users", "slack.allowed_users"]


@pytest.mark.parametrize(
    "extra",
    ["allowed_users = [1]\n", "allow_everyone = true\n", "allowed_users = [1]\nadmins = [2]\n"],
)
def test_a_listed_user_or_allow_everyone_is_no_access_problem(extra: str) -> None:
    assert parse(TELEGRAM + extra).access_problems() == []


def test_only_the_platform_without_a_list_is_a_problem() -> None:
    config = parse(TELEGRAM + "allowed_users = [1]\n" + SLACK)
    assert [p.path for p in config.access_problems()] == ["slack.allowed_users"]


def test_allow_everyone_false_with_an_empty_list_is_still_a_problem() -> None:
    assert len(parse(TELEGRAM + "allow_everyone = false\n").access_problems()) == 1


def test_a_bot_for_its_admins_alone_may_start() -> None:
    config = parse_config(f'[telegram]\nbot_token = "{TOKEN}"\nadmins = [7]\n', environ={})
    assert config.access_problems() == []
