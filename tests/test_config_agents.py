"""Agents: known agents, both table forms, built-in launch settings, pass_env, sandbox env."""

from __future__ import annotations

import pytest

from anycode_actors.config import (
    AgentConfig,
    Config,
    ConfigError,
    ConfigProblem,
    builtin_agents,
    parse_config,
)

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
TELEGRAM = f'[telegram]\nbot_token = "{TOKEN}"\n'


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, environ=environ or {})


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse(text, environ)
    return list(caught.value.problems)


def test_known_agents_default_to_claude_code_codex_goose() -> None:
    assert parse(TELEGRAM).known_agents() == ("claude-code", "codex", "goose")


def test_known_agents_are_the_configured_ones_sorted() -> None:
    text = TELEGRAM + '[agents]\ndefault_agent = "codex"\n[agents.codex]\n[agents.amp]\n'
    assert parse(text).known_agents() == ("amp", "codex")


def test_legacy_credentials_form_loads() -> None:
    text = TELEGRAM + "[agents.credentials.claude-code]\nenv = { ANTHROPIC_API_KEY = 'sk-ant-1' }\n"
    config = parse(text)
    assert config.known_agents() == ("claude-code",)
    assert config.agent("claude-code").env_values() == {"ANTHROPIC_API_KEY": "sk-ant-1"}


def test_both_forms_can_be_mixed_for_different_agents() -> None:
    text = (
        TELEGRAM
        + "[agents.credentials.claude-code]\nenv = { A = '1' }\n[agents.codex]\nenv = { B = '2' }\n"
    )
    assert parse(text).known_agents() == ("claude-code", "codex")


def test_problems_in_the_credentials_form_point_at_the_credentials_table() -> None:
    text = TELEGRAM + "[agents.credentials.claude-code]\nenv = { 'BAD-NAME' = 'x' }\n"
    assert [p.path for p in problems_of(text)] == ["agents.credentials.claude-code.env.BAD-NAME"]


def test_an_agent_configured_in_both_forms_is_rejected() -> None:
    text = TELEGRAM + '[agents]\ndefault_agent = "codex"\n'
    text += "[agents.credentials.codex]\nenv = { A = '1' }\n[agents.codex]\nenv = { B = '2' }\n"
    (problem,) = problems_of(text)
    assert problem.path == "agents.codex"
    assert (
        problem.message == "agent codex is configured twice, here and in [agents.credentials.codex]"
    )


def test_misspelt_credentials_table_is_caught() -> None:
    text = TELEGRAM + "[agents.credential.codex]\nenv = { A = '1' }\n"
    (problem,) = problems_of(text)
    assert (problem.path, problem.message) == (
        "agents.credential",
        "unknown key; did you mean credentials?",
    )


def test_unknown_plain_key_in_agents_suggests_default_agent() -> None:
    (problem,) = problems_of(TELEGRAM + '[agents]\ndefault_agnet = "codex"\n')
    assert (problem.path, problem.message) == (
        "agents.default_agnet",
        "unknown key; did you mean default_agent?",
    )


def test_known_agents_get_the_built_in_launch_settings() -> None:
    config = parse(TELEGRAM + "[agents.credentials.claude-code]\nenv = { A = '1' }\n")
    agent = config.agent("claude-code")
    assert (agent.sandbox_agent_id, agent.acp_command, agent.acpx_agent) == (
        "claude",
        ("claude-agent-acp",),
        "claude",
    )


def test_built_in_launch_settings_match_the_agent_stacks() -> None:
    agents = builtin_agents()
    assert agents["codex"].sandbox_agent_id == "codex"
    assert agents["codex"].acp_command == ("codex-acp",)
    # Neither sandbox-agent nor acpx ships goose; goose speaks ACP itself.
    assert agents["goose"].sandbox_agent_id is None
    assert agents["goose"].acp_command == ("goose", "acp")


def test_settings_in_the_file_win_over_the_built_in_ones() -> None:
    text = TELEGRAM + "[agents.claude-code]\nacp_command = ['claude-code-acp', '--debug']\n"
    agent = parse(text).agent("claude-code")
    assert agent.acp_command == ("claude-code-acp", "--debug")
    assert agent.sandbox_agent_id == "claude"


def test_other_agents_default_to_their_own_name() -> None:
    text = TELEGRAM + '[agents]\ndefault_agent = "amp"\n[agents.amp]\n'
    agent = parse(text).agent("amp")
    assert (agent.sandbox_agent_id, agent.acp_command, agent.acpx_agent) == ("amp", (), "amp")


def test_an_agent_supports_a_protocol_when_it_has_its_launch_setting() -> None:
    goose = builtin_agents()["goose"]
    assert not goose.supports("sandbox-agent")
    assert goose.supports("acp")
    assert goose.supports("acpx")  # acpx runs its ACP command
    assert not AgentConfig().supports("acpx")


def test_a_default_agent_that_cannot_run_with_the_protocol_is_accepted_with_another() -> None:
    text = TELEGRAM + '[sandbox]\nprotocol = "acp"\n[agents]\ndefault_agent = "goose"\n'
    assert parse(text).agents.default_agent == "goose"


def test_unknown_agent_is_a_key_error_that_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: claude-code, codex, goose"):
        parse(TELEGRAM).agent("aider")


def test_pass_env_copies_the_daemons_variables_into_the_agent_env() -> None:
    text = TELEGRAM + "[agents.claude-code]\npass_env = ['ANTHROPIC_API_KEY']\n"
    config = parse(text, {"ANTHROPIC_API_KEY": "sk-ant-from-env"})
    assert config.agent("claude-code").env_values() == {"ANTHROPIC_API_KEY": "sk-ant-from-env"}
    assert config.agent("claude-code").pass_env == ("ANTHROPIC_API_KEY",)


def test_pass_env_of_an_unset_variable_is_a_problem() -> None:
    text = TELEGRAM + "[agents.claude-code]\npass_env = ['ANTHROPIC_API_KEY']\n"
    (problem,) = problems_of(text)
    assert problem.path == "agents.claude-code.pass_env[0]"
    assert problem.message == "ANTHROPIC_API_KEY is not set in the daemon's environment"


def test_pass_env_of_a_variable_also_in_env_is_a_problem() -> None:
    text = (
        TELEGRAM + "[agents.codex]\nenv = { OPENAI_API_KEY = 'a' }\npass_env = ['OPENAI_API_KEY']\n"
    )
    text += '[agents]\ndefault_agent = "codex"\n'
    (problem,) = problems_of(text, {"OPENAI_API_KEY": "b"})
    assert problem.message == "OPENAI_API_KEY is also set in env"


def test_sandbox_env_is_the_agent_env_plus_the_github_token_with_agent_token() -> None:
    text = (
        TELEGRAM
        + "[github]\ntoken = 'ghp_abc'\nagent_token = true\n"
        + "[agents.claude-code]\nenv = { ANTHROPIC_API_KEY = 'k' }\n"
    )
    config = parse(text)
    assert config.sandbox_env("claude-code") == {
        "ANTHROPIC_API_KEY": "k",
        "GITHUB_TOKEN": "ghp_abc",
    }
    without = parse(text.replace("agent_token = true", "agent_token = false"))
    assert without.sandbox_env("claude-code") == {"ANTHROPIC_API_KEY": "k"}


def test_an_agents_own_github_token_wins_over_the_github_section() -> None:
    text = TELEGRAM + "[github]\ntoken = 'ghp_global'\nagent_token = true\n"
    text += "[agents.claude-code]\nenv = { GITHUB_TOKEN = 'ghp_own' }\n"
    assert parse(text).sandbox_env("claude-code") == {"GITHUB_TOKEN": "ghp_own"}


def test_sandbox_env_is_a_fresh_dict_each_time() -> None:
    config = parse(TELEGRAM)
    config.sandbox_env("codex")["X"] = "y"
    assert config.sandbox_env("codex") == {}
