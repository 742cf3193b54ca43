"""Each validation rule, one test each: the key path, the message and (where useful) the fix."""

from __future__ import annotations

import pytest

from anycode_actors.config import Config, ConfigError, ConfigProblem, parse_config

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
TELEGRAM = f'[telegram]\nbot_token = "{TOKEN}"\n'
SLACK_APP = "xapp-1-A0000-0000-abcdef"
SLACK_BOT = "xoxb-0000_0000_abcdef"


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


def slack(app: str = SLACK_APP, bot: str = SLACK_BOT, extra: str = "") -> str:
    return f'[slack]\napp_token = "{app}"\nbot_token = "{bot}"\n{extra}'


# --- messaging platforms -----------------------------------------------------------------------


def test_config_without_any_messaging_platform_is_rejected() -> None:
    problem = problem_at("[session]\nmax_concurrent = 2\n", "telegram/slack")
    assert (
        problem.message
        == "at least one messaging platform must be configured (telegram, slack or api)"
    )
    assert "ANYCODE_TELEGRAM_BOT_TOKEN" in problem.fix


def test_slack_alone_is_enough() -> None:
    assert parse(slack()).platforms() == ("slack",)


def test_telegram_bot_token_is_required_in_its_section() -> None:
    problem = problem_at("[telegram]\nallowed_users = []\n", "telegram.bot_token")
    assert problem.message == "is required"
    assert "ANYCODE_TELEGRAM_BOT_TOKEN" in problem.fix


def test_telegram_bot_token_must_not_be_empty() -> None:
    assert problem_at('[telegram]\nbot_token = ""\n', "telegram.bot_token").message == (
        "must not be empty"
    )


def test_telegram_bot_token_must_look_like_a_botfather_token() -> None:
    for bad in ("123456:ABC-DEF...", "AAExampleExampleExampleExampleExample0", "12:short"):
        problem = problem_at(f'[telegram]\nbot_token = "{bad}"\n', "telegram.bot_token")
        assert problem.message.startswith("does not look like a Telegram bot token")


def test_telegram_allowed_users_accept_numbers_and_numeric_strings() -> None:
    config = parse(TELEGRAM + 'allowed_users = [111, "222"]\n')
    assert config.telegram is not None
    assert config.telegram.allowed_users == ("111", "222")


def test_telegram_allowed_users_must_be_numeric_ids() -> None:
    problem = problem_at(TELEGRAM + 'allowed_users = [111, "@ada"]\n', "telegram.allowed_users[1]")
    assert problem.message == "must be a numeric Telegram user id, not '@ada'"


def test_telegram_poll_timeout_must_be_between_1_and_50() -> None:
    for bad in (0, 51):
        problem = problem_at(TELEGRAM + f"poll_timeout = {bad}\n", "telegram.poll_timeout")
        assert problem.message == "must be between 1 and 50 seconds"


def test_telegram_api_base_url_must_be_an_http_url() -> None:
    problem = problem_at(TELEGRAM + 'api_base_url = "api.telegram.org"\n', "telegram.api_base_url")
    assert problem.message == "must be an http(s) URL like https://api.telegram.org"


def test_telegram_api_base_url_loses_its_trailing_slash() -> None:
    config = parse(TELEGRAM + 'api_base_url = "http://127.0.0.1:8081/"\n')
    assert config.telegram is not None
    assert config.telegram.api_base_url == "http://127.0.0.1:8081"


def test_telegram_api_base_url_must_not_contain_the_token() -> None:
    text = TELEGRAM + f'api_base_url = "https://api.telegram.org/bot{TOKEN}"\n'
    problem = problem_at(text, "telegram.api_base_url")
    assert problem.message == "must not contain the bot token"
    assert TOKEN.split(":")[1] not in str(problem)


def test_slack_app_token_must_start_with_xapp() -> None:
    problem = problem_at(slack(app="xoxp-123"), "slack.app_token")
    assert problem.message == "must start with xapp-"
    assert "App-Level Token" in problem.fix


def test_slack_bot_token_must_start_with_xoxb() -> None:
    problem = problem_at(slack(bot="xoxp-123"), "slack.bot_token")
    assert problem.message == "must start with xoxb-"
    assert "Bot User OAuth Token" in problem.fix


def test_swapped_slack_tokens_are_recognised() -> None:
    messages = {p.path: p.message for p in problems_of(slack(app=SLACK_BOT, bot=SLACK_APP))}
    assert messages == {
        "slack.app_token": "must start with xapp- (this is the bot token)",
        "slack.bot_token": "must start with xoxb- (this is the app-level token)",
    }


def test_slack_tokens_must_not_be_empty() -> None:
    paths = {p.path: p.message for p in problems_of(slack(app="", bot=" "))}
    assert paths == {"slack.app_token": "must not be empty", "slack.bot_token": "must not be empty"}


def test_slack_needs_both_tokens() -> None:
    problem = problem_at(f'[slack]\napp_token = "{SLACK_APP}"\n', "slack.bot_token")
    assert problem.message == "is required"
    assert "ANYCODE_SLACK_BOT_TOKEN" in problem.fix


def test_slack_allowed_users_must_be_member_ids() -> None:
    problem = problem_at(
        slack(extra='allowed_users = ["U012AB", "bob"]\n'), "slack.allowed_users[1]"
    )
    assert problem.message.startswith("must be a Slack member id")


def test_slack_api_base_url_must_be_an_http_url() -> None:
    problem = problem_at(slack(extra='api_base_url = "ws://x"\n'), "slack.api_base_url")
    assert problem.message == "must be an http(s) URL like https://slack.com/api"


# --- sandbox -----------------------------------------------------------------------------------


def test_unknown_provider_is_rejected_with_a_suggestion() -> None:
    problem = problem_at(TELEGRAM + '[sandbox]\nprovider = "dokcer"\n', "sandbox.provider")
    assert problem.message == 'must be one of "docker", "ecs" or "local" (got \'dokcer\')'
    assert problem.fix == 'did you mean "docker"?'


def test_unknown_protocol_is_rejected() -> None:
    problem = problem_at(TELEGRAM + '[sandbox]\nprotocol = "rest"\n', "sandbox.protocol")
    assert problem.message.startswith('must be one of "sandbox-agent", "acp" or "acpx"')


def test_opencode_protocol_is_an_alias_of_sandbox_agent() -> None:
    assert (
        parse(TELEGRAM + '[sandbox]\nprotocol = "opencode"\n').sandbox.protocol == "sandbox-agent"
    )


@pytest.mark.parametrize("protocol", ["acpx", "acp"])
def test_exec_protocols_are_rejected_with_ecs(protocol: str) -> None:
    text = TELEGRAM + f'[sandbox]\nprovider = "ecs"\nprotocol = "{protocol}"\n'
    text += '[ecs]\ncluster = "c"\ntask_definition = "t:1"\nsubnets = ["subnet-1"]\n'
    problem = problem_at(text, "sandbox.protocol")
    assert "ECS exec is not supported" in problem.message


@pytest.mark.parametrize("provider", ["docker", "local"])
def test_acpx_runs_with_docker_and_local(provider: str) -> None:
    text = TELEGRAM + f'[sandbox]\nprovider = "{provider}"\nprotocol = "acpx"\n'
    config = parse(text + "[local]\nallow_unsandboxed = true\n")
    assert config.sandbox.protocol == "acpx"


def test_local_provider_needs_allow_unsandboxed_and_says_why() -> None:
    problem = problem_at(TELEGRAM + '[sandbox]\nprovider = "local"\n', "local.allow_unsandboxed")
    assert problem.message.startswith('must be true when sandbox.provider = "local"')
    assert "no container" in problem.message
    assert "allow_unsandboxed = true" in problem.fix


def test_local_provider_runs_when_unsandboxed_is_allowed() -> None:
    text = TELEGRAM + '[sandbox]\nprovider = "local"\n[local]\nallow_unsandboxed = true\n'
    assert parse(text).local.allow_unsandboxed is True


def test_allow_unsandboxed_is_off_by_default_and_irrelevant_for_docker() -> None:
    config = parse(TELEGRAM)
    assert (config.sandbox.provider, config.local.allow_unsandboxed) == ("docker", False)


def test_acpx_permissions_must_be_a_known_policy() -> None:
    problem = problem_at(
        TELEGRAM + '[sandbox]\nacpx_permissions = "approve"\n', "sandbox.acpx_permissions"
    )
    assert problem.message.startswith('must be one of "approve-all", "approve-reads" or "deny-all"')


def test_docker_port_range_start_must_be_below_end() -> None:
    text = TELEGRAM + "[docker]\nport_range_start = 12100\nport_range_end = 12100\n"
    problem = problem_at(text, "docker.port_range_end")
    assert problem.message == "must be greater than port_range_start (12100 <= 12100)"


def test_docker_port_range_start_above_the_default_end_is_caught() -> None:
    assert problem_at(TELEGRAM + "[docker]\nport_range_start = 13000\n", "docker.port_range_end")


def test_docker_ports_must_be_tcp_ports() -> None:
    text = TELEGRAM + "[docker]\nport_range_start = -1\nport_range_end = 70000\n"
    messages = {p.path: p.message for p in problems_of(text)}
    assert messages == {
        "docker.port_range_start": "must be a TCP port between 1 and 65535",
        "docker.port_range_end": "must be a TCP port between 1 and 65535",
    }


def test_docker_port_range_of_zeros_lets_docker_pick() -> None:
    docker = parse(TELEGRAM + "[docker]\nport_range_start = 0\nport_range_end = 0\n").docker
    assert docker.ephemeral_ports
    assert not parse(TELEGRAM).docker.ephemeral_ports


@pytest.mark.parametrize(("start", "end"), [(0, 12100), (12000, 0)])
def test_docker_port_range_zero_must_be_both_ends(start: int, end: int) -> None:
    text = TELEGRAM + f"[docker]\nport_range_start = {start}\nport_range_end = {end}\n"
    problem = problem_at(text, "docker.port_range_end")
    assert problem.message.startswith("0 (Docker picks a free port) needs both")


@pytest.mark.parametrize("network", ["host", "none"])
def test_docker_network_must_let_the_daemon_reach_the_sandbox(network: str) -> None:
    problem = problem_at(TELEGRAM + f'[docker]\nnetwork = "{network}"\n', "docker.network")
    assert problem.message.startswith(f'must not be "{network}"')


def test_docker_memory_must_be_a_size() -> None:
    problem = problem_at(TELEGRAM + '[docker]\nmemory = "lots"\n', "docker.memory")
    assert problem.message == "must be a size like 4g, 512m or 0 (no limit)"


def test_docker_memory_must_reach_dockers_minimum() -> None:
    problem = problem_at(TELEGRAM + '[docker]\nmemory = "1m"\n', "docker.memory")
    assert problem.message.startswith("must be at least 6m")


def test_docker_memory_zero_means_no_limit() -> None:
    assert parse(TELEGRAM + '[docker]\nmemory = "0"\n').docker.memory_bytes == 0
    assert parse(TELEGRAM + '[docker]\nmemory = "512M"\n').docker.memory_bytes == 512 * 1024**2


def test_docker_cpus_and_pids_limit_must_not_be_negative() -> None:
    text = TELEGRAM + "[docker]\ncpus = -1\npids_limit = -1\n"
    assert {p.path for p in problems_of(text)} == {"docker.cpus", "docker.pids_limit"}


def test_docker_cap_add_must_name_linux_capabilities() -> None:
    problem = problem_at(
        TELEGRAM + '[docker]\ncap_add = ["CHOWN", "NET_ADMN"]\n', "docker.cap_add[1]"
    )
    assert problem.message == "'NET_ADMN' is not a Linux capability"
    assert problem.fix == "did you mean NET_ADMIN?"


def test_docker_cap_add_accepts_any_case_and_the_cap_prefix() -> None:
    config = parse(TELEGRAM + '[docker]\ncap_add = ["cap_sys_ptrace", "kill"]\n')
    assert config.docker.cap_add == ("SYS_PTRACE", "KILL")


def test_docker_image_must_not_be_empty() -> None:
    assert (
        problem_at(TELEGRAM + '[docker]\nimage = " "\n', "docker.image").message
        == "must not be empty"
    )


def test_ecs_provider_requires_cluster_task_definition_and_subnets() -> None:
    problems = problems_of(TELEGRAM + '[sandbox]\nprovider = "ecs"\n')
    assert [(p.path, p.message) for p in problems] == [
        ("ecs.cluster", 'is required when sandbox.provider = "ecs"'),
        ("ecs.task_definition", 'is required when sandbox.provider = "ecs"'),
        ("ecs.subnets", 'is required when sandbox.provider = "ecs"'),
    ]


def test_ecs_keys_are_optional_with_other_providers() -> None:
    assert parse(TELEGRAM + '[ecs]\ncluster = ""\n').ecs.cluster == ""


def test_ecs_container_port_must_be_a_tcp_port() -> None:
    problem = problem_at(TELEGRAM + "[ecs]\ncontainer_port = 0\n", "ecs.container_port")
    assert problem.message == "must be a TCP port between 1 and 65535"


def test_ecs_subnets_and_security_groups_must_be_aws_ids() -> None:
    text = TELEGRAM + '[ecs]\nsubnets = ["subnet-1", "abc"]\nsecurity_groups = ["default"]\n'
    messages = {p.path: p.message for p in problems_of(text)}
    assert messages == {
        "ecs.subnets[1]": "'abc' is not a subnet id",
        "ecs.security_groups[0]": "'default' is not a security group id",
    }


def test_ecs_poll_interval_must_be_at_least_250_ms() -> None:
    problem = problem_at(TELEGRAM + "[ecs]\npoll_interval_ms = 100\n", "ecs.poll_interval_ms")
    assert problem.message == "must be at least 250 ms"


def test_ecs_startup_timeout_must_be_positive() -> None:
    assert problem_at(TELEGRAM + "[ecs]\nstartup_timeout_secs = 0\n", "ecs.startup_timeout_secs")


def test_ecs_region_must_look_like_an_aws_region() -> None:
    problem = problem_at(TELEGRAM + '[ecs]\nregion = "us-west2"\n', "ecs.region")
    assert problem.message == "'us-west2' is not an AWS region"


def test_ecs_empty_optional_strings_mean_unset() -> None:
    config = parse(TELEGRAM + '[ecs]\ncontainer_name = ""\nregion = ""\n')
    assert (config.ecs.container_name, config.ecs.region) == (None, None)


# --- agents, session, the rest -----------------------------------------------------------------


def test_default_agent_must_be_a_known_agent() -> None:
    problem = problem_at(
        TELEGRAM + '[agents]\ndefault_agent = "cluade-code"\n', "agents.default_agent"
    )
    assert problem.message == "'cluade-code' is not a configured agent"
    assert problem.fix.startswith(
        "did you mean claude-code? known agents: claude-code, codex, goose"
    )


def test_default_agent_is_checked_against_the_configured_agents() -> None:
    text = TELEGRAM + "[agents.codex]\nenv = { OPENAI_API_KEY = 'sk-1' }\n"
    problem = problem_at(text, "agents.default_agent")
    assert problem.message == "'claude-code' is not a configured agent"


def test_default_agent_is_checked_even_when_an_agent_table_is_invalid() -> None:
    text = TELEGRAM + '[agents]\ndefault_agent = "nobody"\n[agents.codex]\nenv = { "A-B" = "x" }\n'
    assert {p.path for p in problems_of(text)} == {"agents.default_agent", "agents.codex.env.A-B"}


def test_default_agent_must_run_with_the_protocol() -> None:
    problem = problem_at(TELEGRAM + '[agents]\ndefault_agent = "goose"\n', "agents.default_agent")
    assert (
        problem.message
        == 'goose cannot run with sandbox.protocol = "sandbox-agent" (it has no sandbox_agent_id)'
    )


def test_agent_names_must_be_lowercase_words() -> None:
    problem = problem_at(TELEGRAM + "[agents.Claude]\n", "agents.Claude")
    assert problem.message == "is not a valid agent name"


def test_agent_env_names_must_be_environment_variable_names() -> None:
    text = TELEGRAM + "[agents.claude-code]\nenv = { 'API-KEY' = 'x' }\n"
    assert problem_at(text, "agents.claude-code.env.API-KEY").message == (
        "is not a valid environment variable name"
    )


def test_agent_env_must_not_set_the_daemons_own_variables() -> None:
    text = TELEGRAM + "[agents.claude-code]\nenv = { ANYCODE_AGENT = 'x' }\n"
    assert problem_at(text, "agents.claude-code.env.ANYCODE_AGENT").message == (
        "ANYCODE_* variables are set by the daemon itself"
    )


def test_agent_credentials_must_not_be_empty() -> None:
    text = TELEGRAM + "[agents.claude-code]\nenv = { ANTHROPIC_API_KEY = '' }\n"
    assert (
        problem_at(text, "agents.claude-code.env.ANTHROPIC_API_KEY").message == "must not be empty"
    )


def test_agent_acp_command_must_not_contain_empty_arguments() -> None:
    text = TELEGRAM + "[agents.claude-code]\nacp_command = ['claude-agent-acp', '']\n"
    assert problem_at(text, "agents.claude-code.acp_command[1]")


def test_agent_acpx_agent_must_be_one_word() -> None:
    text = TELEGRAM + "[agents.claude-code]\nacpx_agent = 'goose acp'\n"
    assert problem_at(text, "agents.claude-code.acpx_agent").message.startswith("must be one word")


def test_agent_sandbox_agent_id_must_be_an_id() -> None:
    text = TELEGRAM + "[agents.claude-code]\nsandbox_agent_id = 'Claude Code'\n"
    assert problem_at(text, "agents.claude-code.sandbox_agent_id")


def test_github_token_must_not_be_empty() -> None:
    assert (
        problem_at(TELEGRAM + '[github]\ntoken = ""\n', "github.token").message
        == "must not be empty"
    )


@pytest.mark.parametrize("key", ["max_concurrent", "timeout_minutes", "debounce_ms"])
def test_session_numbers_must_be_positive(key: str) -> None:
    problem = problem_at(TELEGRAM + f"[session]\n{key} = 0\n", f"session.{key}")
    assert problem.message.startswith("must be")


def test_session_debounce_ms_must_be_greater_than_zero() -> None:
    problem = problem_at(TELEGRAM + "[session]\ndebounce_ms = -5\n", "session.debounce_ms")
    assert problem.message == "must be greater than 0"


def test_database_path_must_not_be_empty() -> None:
    assert (
        problem_at(TELEGRAM + '[database]\npath = ""\n', "database.path").message
        == "must not be empty"
    )


def test_admin_socket_path_must_fit_a_unix_socket() -> None:
    text = TELEGRAM + f'[admin]\nsocket = "/tmp/{"s" * 120}.sock"\n'
    assert "Unix socket path" in problem_at(text, "admin.socket").message


def test_session_idle_minutes_must_not_be_negative() -> None:
    problem = problem_at(TELEGRAM + "[session]\nidle_minutes = -1\n", "session.idle_minutes")
    assert problem.message == "must be 0 or more minutes"


def test_session_max_upload_mb_must_be_at_least_one() -> None:
    problem = problem_at(TELEGRAM + "[session]\nmax_upload_mb = 0\n", "session.max_upload_mb")
    assert problem.message == "must be at least 1"


def test_session_timeout_may_be_a_fraction_of_a_minute() -> None:
    config = parse_config(TELEGRAM + "[session]\ntimeout_minutes = 0.5\n", environ={})
    assert config.session.timeout_minutes == 0.5


def test_admin_listens_only_on_the_unix_socket_by_default() -> None:
    admin = parse(TELEGRAM).admin
    assert admin.listen is None
    assert admin.token is None


def test_admin_listen_requires_a_token() -> None:
    problem = problem_at(TELEGRAM + '[admin]\nlisten = "127.0.0.1:7070"\n', "admin.token")
    assert problem.message == "is required when admin.listen is set"
    assert "secrets.token_urlsafe" in problem.fix


def test_admin_token_must_be_long_enough_and_is_masked() -> None:
    text = TELEGRAM + '[admin]\nlisten = "127.0.0.1:7070"\ntoken = "short"\n'
    assert problem_at(text, "admin.token").message == "must be at least 16 characters"
    secret = "a-long-enough-admin-token"
    config = parse(TELEGRAM + f'[admin]\nlisten = "[::1]:7070"\ntoken = "{secret}"\n')
    assert config.admin.listen == "[::1]:7070"
    assert config.admin.token is not None
    assert config.admin.token.get_secret_value() == secret
    assert secret not in config.effective_toml()


@pytest.mark.parametrize("listen", ["7070", "127.0.0.1", ":7070", "::1:7070", "host:http"])
def test_admin_listen_must_be_host_and_port(listen: str) -> None:
    text = TELEGRAM + f'[admin]\nlisten = "{listen}"\ntoken = "a-long-enough-admin-token"\n'
    assert problem_at(text, "admin.listen").message.startswith("must be host:port")


def test_admin_listen_port_must_be_a_tcp_port() -> None:
    text = TELEGRAM + '[admin]\nlisten = "127.0.0.1:70000"\ntoken = "a-long-enough-admin-token"\n'
    assert problem_at(text, "admin.listen").message == "must be a TCP port between 1 and 65535"
