"""Loading config.toml: defaults, the example files, syntax errors, unknown keys, paths."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import get_args

import pydantic
import pytest
from pydantic import BaseModel

from anycode_actors.config import (
    AgentConfig,
    AgentsConfig,
    Config,
    ConfigError,
    ConfigProblem,
    DockerConfig,
    EcsConfig,
    SessionConfig,
    TelegramConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
TELEGRAM = f'[telegram]\nbot_token = "{TOKEN}"\n'

# A whole file in the legacy config format (`protocol = "opencode"`, agents under
# `[agents.credentials.<name>]`, every [ecs] key), with well-formed tokens: the token format check
# rejects placeholders such as "YOUR_BOT_TOKEN".
LEGACY_EXAMPLE = f"""
[telegram]
bot_token = "{TOKEN}"
allowed_users = []

[slack]
app_token = "xapp-1-A0000-0000-abcdef"
bot_token = "xoxb-0000_0000_abcdef"
allowed_users = []

[sandbox]
provider = "docker"
protocol = "opencode"

[docker]
image = "anycode-sandbox:latest"
port_range_start = 12000
port_range_end = 12100
network = "bridge"

[ecs]
cluster = "anycode-cluster"
task_definition = "anycode-task:1"
subnets = ["subnet-abc123"]
security_groups = ["sg-abc123"]
assign_public_ip = true
container_port = 2468
startup_timeout_secs = 120
poll_interval_ms = 1000
region = "us-west-2"
platform_version = "LATEST"
container_name = "anycode-sandbox"
log_group = "/ecs/anycode"
log_stream_prefix = "anycode"

[database]
path = "anycode.db"

[agents]
default_agent = "claude-code"

[agents.credentials.claude-code]
env = {{ ANTHROPIC_API_KEY = "sk-ant-..." }}

[agents.credentials.codex]
env = {{ OPENAI_API_KEY = "sk-..." }}

[agents.credentials.goose]
env = {{ OPENAI_API_KEY = "sk-..." }}

[github]
token = "ghp_..."

[session]
max_concurrent = 5
timeout_minutes = 30
debounce_ms = 500
"""


def parse(text: str) -> Config:
    return parse_config(text, environ={})


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return list(caught.value.problems)


def problem_at(text: str, path: str) -> ConfigProblem:
    found = [p for p in problems_of(text) if p.path == path]
    assert found, f"no problem at {path}"
    return found[0]


# --- defaults ----------------------------------------------------------------------------------


def test_defaults_equal_the_legacy_defaults() -> None:
    config = parse(TELEGRAM)
    assert config.telegram is not None
    assert config.telegram.allowed_users == ()
    assert config.slack is None
    assert config.github is None
    assert (config.sandbox.provider, config.sandbox.protocol) == ("docker", "sandbox-agent")
    docker = config.docker
    assert (docker.image, docker.port_range_start, docker.port_range_end, docker.network) == (
        "anycode-sandbox:latest",
        12000,
        12100,
        "bridge",
    )
    ecs = config.ecs
    assert (ecs.cluster, ecs.task_definition, ecs.subnets, ecs.security_groups) == ("", "", (), ())
    # The one default changed on purpose: sandbox-agent speaks plain HTTP, kept inside the VPC.
    assert ecs.assign_public_ip is False
    assert (ecs.container_port, ecs.startup_timeout_secs, ecs.poll_interval_ms) == (2468, 120, 1000)
    assert (ecs.region, ecs.platform_version, ecs.container_name) == (None, None, None)
    assert (ecs.log_group, ecs.log_stream_prefix) == (None, None)
    assert config.database.path == Path("anycode.db")
    assert config.agents.default_agent == "claude-code"
    session = config.session
    assert (session.max_concurrent, session.timeout_minutes, session.debounce_ms) == (5, 30, 500)


def test_defaults_of_the_new_keys() -> None:
    config = parse(TELEGRAM)
    assert config.telegram is not None
    assert config.telegram.api_base_url == "https://api.telegram.org"
    assert config.telegram.poll_timeout == 30
    assert config.sandbox.acpx_permissions == "approve-all"
    assert (config.docker.memory, config.docker.cpus, config.docker.pids_limit) == ("4g", 2.0, 1024)
    assert config.docker.memory_bytes == 4 * 1024**3
    assert "NET_RAW" not in config.docker.cap_add
    assert config.local.workdir == Path("anycode-work")
    assert config.admin.socket == Path("anycode.sock")
    assert (config.telegram.allow_everyone, config.telegram.admins) == (False, ())
    assert config.database.retention_days == 30
    assert config.limits.max_sessions_per_user == 3


def test_sections_built_in_code_carry_the_same_defaults() -> None:
    assert DockerConfig().port_range_end == 12100
    assert EcsConfig().container_port == 2468
    assert SessionConfig().debounce_ms == 500
    assert AgentsConfig().known() == ("claude-code", "codex", "goose")


def test_config_is_frozen() -> None:
    config = parse(TELEGRAM)
    with pytest.raises(pydantic.ValidationError):
        config.session = SessionConfig()
    with pytest.raises(pydantic.ValidationError):
        config.docker.image = "other"


# --- the example files -------------------------------------------------------------------------


def test_example_file_loads_clean() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.platforms() == ("telegram",)
    assert config.known_agents() == ("claude-code", "codex", "goose")
    assert config.ecs.cluster == "anycode-cluster"
    # The example is one `anycode run` accepts: it lists who may use the bot.
    assert config.telegram is not None
    assert config.telegram.allowed_users == ("123456789",)
    assert config.access_problems() == []


def section_models() -> dict[str, type[BaseModel]]:
    models = {}
    for name, field in Config.model_fields.items():
        args = [arg for arg in get_args(field.annotation) if arg is not type(None)]
        model = args[0] if args else field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        models[name] = model
    return models


def test_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = {"default_agent"} | set(AgentConfig.model_fields)
    for section, model in section_models().items():
        assert re.search(rf"^#? ?\[{section}\]", text, re.MULTILINE), f"[{section}] missing"
        if model is not AgentsConfig:
            keys |= set(model.model_fields)
    for key in keys:
        assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE), f"{key} is not documented"


def test_every_key_in_the_example_has_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for previous, line in zip(["", *lines], lines, strict=False):
        if re.match(r"#? ?[a-z_]+ = ", line):
            commented = "#" in line.lstrip("# ") or previous.startswith("#")
            assert commented, f"undocumented: {line}"


def test_legacy_example_loads() -> None:
    config = parse(LEGACY_EXAMPLE)
    assert config.platforms() == ("telegram", "slack")
    assert config.sandbox.protocol == "sandbox-agent"
    assert config.known_agents() == ("claude-code", "codex", "goose")
    assert config.agent("codex").env["OPENAI_API_KEY"].get_secret_value() == "sk-..."


# --- syntax and files --------------------------------------------------------------------------


def test_toml_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[telegram]\nbot_token = \n", environ={}, source="config.toml")
    (problem,) = caught.value.problems
    assert problem.path == "line 2, column 13"
    assert problem.message.startswith("invalid TOML: ")
    assert "(at line" not in problem.message
    assert str(caught.value).startswith("config.toml has 1 problem:")


def test_duplicate_key_is_a_syntax_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(TELEGRAM + "poll_timeout = 10\npoll_timeout = 20\n")
    assert caught.value.problems[0].path == "line 4, column 18"


def test_missing_file_is_reported_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.toml", environ={})
    (problem,) = caught.value.problems
    assert problem.message == "file not found"
    assert "config.example.toml" in problem.fix


def test_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_bytes(TELEGRAM.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert "UTF-8" in caught.value.problems[0].message


# --- unknown keys ------------------------------------------------------------------------------


def test_unknown_key_suggests_the_right_spelling() -> None:
    problem = problem_at(TELEGRAM + "[docker]\nimgae = 'x'\n", "docker.imgae")
    assert problem.message == "unknown key; did you mean image?"


def test_unknown_key_without_a_close_match_lists_the_known_ones() -> None:
    problem = problem_at(TELEGRAM + "[session]\nfoo = 1\n", "session.foo")
    assert problem.message == "unknown key"
    assert "max_concurrent" in problem.fix


def test_key_in_the_wrong_section_names_its_section() -> None:
    problem = problem_at(TELEGRAM + "[sandbox]\nimage = 'x'\n", "sandbox.image")
    assert problem.fix == "image belongs in [docker]"


def test_unknown_section_suggests_the_right_one() -> None:
    problem = problem_at(TELEGRAM + "[sesion]\nmax_concurrent = 1\n", "sesion")
    assert problem.message == "unknown section [sesion]; did you mean [session]?"


def test_key_above_every_section_header_is_pointed_to_its_section() -> None:
    problem = problem_at('provider = "docker"\n' + TELEGRAM, "provider")
    assert problem.message == "unknown key at the top level"
    assert problem.fix.startswith("move it under [sandbox]")


def test_unknown_agent_key_suggests_the_right_spelling() -> None:
    text = TELEGRAM + "[agents.codex]\nsandbox_agnet_id = 'codex'\n"
    assert problem_at(text, "agents.codex.sandbox_agnet_id").message == (
        "unknown key; did you mean sandbox_agent_id?"
    )


# --- all problems at once ----------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_key_path() -> None:
    text = """
[telegram]
bot_token = "nope"
[slack]
app_token = "xoxp-1"
bot_token = "xoxb-1"
[docker]
port_range_start = 12100
port_range_end = 12000
memory = "lots"
[ecs]
container_port = 0
[session]
debounce_ms = 0
"""
    paths = [p.path for p in problems_of(text)]
    assert paths == [
        "telegram.bot_token",
        "slack.app_token",
        "docker.port_range_end",
        "docker.memory",
        "ecs.container_port",
        "session.debounce_ms",
    ]


def test_config_error_text_lists_each_problem_with_its_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "[slack]\napp_token = 'x'\nbot_token = 'xoxb-1'\n", environ={}, source="c.toml"
        )
    text = str(caught.value)
    assert text.splitlines()[0] == "c.toml has 1 problem:"
    assert "  - slack.app_token: must start with xapp- (fix: use the App-Level Token" in text


def test_cross_section_rules_run_even_when_other_sections_are_invalid() -> None:
    text = TELEGRAM + '[sandbox]\nprovider = "ecs"\n[session]\nmax_concurrent = 0\n'
    paths = {p.path for p in problems_of(text)}
    assert {"ecs.cluster", "ecs.task_definition", "ecs.subnets", "session.max_concurrent"} <= paths


def test_wrong_types_are_named_in_plain_words() -> None:
    text = (
        TELEGRAM
        + '[docker]\nport_range_start = "12000"\nnetwork = 5\n[ecs]\nassign_public_ip = "yes"\n'
    )
    messages = {p.path: p.message for p in problems_of(text)}
    assert messages["docker.port_range_start"] == "must be a whole number"
    assert messages["docker.network"] == "must be a string (in double quotes)"
    assert messages["ecs.assign_public_ip"] == "must be true or false"


def test_section_that_is_not_a_table_is_reported() -> None:
    problem = problem_at(TELEGRAM.replace("[telegram]\n", "") + "session = 5\n", "session")
    assert problem.message == "must be a table"


def test_direct_construction_enforces_cross_section_rules() -> None:
    with pytest.raises(ConfigError) as caught:
        Config()
    assert caught.value.problems[0].path == "telegram/slack"


# --- paths -------------------------------------------------------------------------------------


def test_relative_paths_count_from_the_config_files_folder(tmp_path: Path) -> None:
    file = tmp_path / "conf" / "config.toml"
    file.parent.mkdir()
    file.write_text(TELEGRAM + "[database]\npath = 'data/anycode.db'\n")
    config = load_config(file, environ={})
    assert config.database.path == file.parent / "data" / "anycode.db"
    assert config.local.workdir == file.parent / "anycode-work"
    assert config.admin.socket == file.parent / "anycode.sock"


def test_absolute_paths_stay_as_written(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(TELEGRAM + "[database]\npath = '/var/lib/anycode/anycode.db'\n")
    assert load_config(file, environ={}).database.path == Path("/var/lib/anycode/anycode.db")


def test_tilde_in_paths_uses_home_from_the_given_environment() -> None:
    config = parse_config(TELEGRAM + "[database]\npath = '~/anycode.db'\n", environ={"HOME": "/h"})
    assert config.database.path == Path("/h/anycode.db")


def test_sqlite_memory_database_is_not_a_path(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(TELEGRAM + "[database]\npath = ':memory:'\n")
    assert str(load_config(file, environ={}).database.path) == ":memory:"


# --- the effective config ----------------------------------------------------------------------


def test_effective_toml_is_valid_toml_with_every_section() -> None:
    config = parse(LEGACY_EXAMPLE + '\n[gitlab]\ntoken = "glpat-0123456789abcdefghij"\n')
    dumped = tomllib.loads(config.effective_toml())
    assert set(dumped) == set(Config.model_fields)
    assert dumped["agents"]["default_agent"] == "claude-code"
    assert dumped["agents"]["claude-code"]["sandbox_agent_id"] == "claude"
    assert dumped["docker"]["port_range_start"] == 12000


def test_effective_toml_marks_unset_values_and_sections() -> None:
    text = parse(TELEGRAM).effective_toml()
    assert "# [slack] is not configured" in text
    assert "# region is not set" in text


def test_telegram_section_alone_validates() -> None:
    assert TelegramConfig(bot_token=TOKEN).poll_timeout == 30  # type: ignore[arg-type]
