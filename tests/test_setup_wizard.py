"""`anycode setup`: the wizard driven by scripted answers, and once in a real terminal."""

from __future__ import annotations

import io
import os
import signal
import stat
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

from anycode_actors.cli import main
from anycode_actors.cli.setup import DockerSdkProbe, SetupWizard, build_image, write_private_file
from anycode_actors.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
TELEGRAM_TOKEN = "123456789:ABHsecretTELEGRAMsecret0123456789xyz"
SLACK_APP = "xapp-1-A0SECRETAPP-0000-abcdef"
SLACK_BOT = "xoxb-0000_SECRETBOT_abcdef"
ANTHROPIC = "sk-ant-api03.SECRETANTHROPIC"
OPENAI = "sk-proj-SECRETOPENAI"
GITHUB = "ghp_SECRETGITHUB0123456789"
SECRET_PARTS = (
    TELEGRAM_TOKEN.split(":")[1],
    "SECRETAPP",
    "SECRETBOT",
    "SECRETANTHROPIC",
    "SECRETOPENAI",
    "SECRETGITHUB",
)
CTRL_C = "\x03"
EOF = "\x04"

# The telegram-only docker setup: (a fragment of the prompt expected, the answer typed).
TELEGRAM_DOCKER = [
    ("Chat platforms", "telegram"),
    ("Telegram bot token", TELEGRAM_TOKEN),
    ("Allowed Telegram user ids", "12345, 67890"),
    ("Telegram admins", ""),
    ("Sandbox provider", ""),
    ("Docker image", ""),
    ("First host port", "13000"),
    ("End of the port range", "13050"),
    ("Docker network", ""),
    ("Protocol", ""),
    ("Agents, comma-separated", "claude-code, codex"),
    ("Default agent", "codex"),
    ("ANTHROPIC_API_KEY (for claude-code)", "enter"),
    ("ANTHROPIC_API_KEY:", ANTHROPIC),
    ("OPENAI_API_KEY (for codex)", "env"),
    ("GitHub token", GITHUB),
    ("Keep these session settings?", "n"),
    ("Max active sessions per chat", "3"),
    ("Session timeout in minutes", "45"),
    ("debounce", ""),
    ("follow-up", "0.5"),
    ("Write this config to", ""),
]


class ScriptedInput:
    """An `InputBackend` that checks each prompt against the script and types the answer."""

    def __init__(self, console: Console, dialogue: Sequence[tuple[str, str]]) -> None:
        self._console = console
        self._dialogue = list(dialogue)
        self.asked: list[tuple[str, bool]] = []

    def __call__(self, prompt: Text, *, password: bool) -> str:
        self._console.print(prompt, end="")
        self.asked.append((prompt.plain, password))
        if not self._dialogue:
            raise AssertionError(f"the wizard asked {prompt.plain!r} after the script ended")
        expected, answer = self._dialogue.pop(0)
        assert expected in prompt.plain, f"expected a prompt with {expected!r}: {prompt.plain!r}"
        if answer == CTRL_C:
            raise KeyboardInterrupt
        if answer == EOF:
            raise EOFError
        self._console.print("" if password else answer)
        return answer

    @property
    def unused(self) -> list[tuple[str, str]]:
        return self._dialogue


@dataclass
class FakeDocker:
    error: str | None = None
    images: set[str] = field(default_factory=lambda: {"anycode-sandbox:latest"})

    def ping(self) -> str | None:
        return self.error

    def image_exists(self, image: str) -> bool | None:
        return image in self.images


@dataclass
class Run:
    code: int
    output: str
    script: ScriptedInput
    path: Path


def run_wizard(
    tmp_path: Path,
    dialogue: Sequence[tuple[str, str]],
    *,
    docker: FakeDocker | None = None,
    environ: Mapping[str, str] | None = None,
    build_script: Path | None = None,
    python_version: tuple[int, int, int] = (3, 11, 9),
) -> Run:
    file = io.StringIO()
    console = Console(file=file, width=120, soft_wrap=True, color_system=None, highlight=False)
    script = ScriptedInput(console, dialogue)
    wizard = SetupWizard(
        console,
        script,
        environ={"HOME": str(tmp_path)} if environ is None else environ,
        docker=docker or FakeDocker(),
        build_script=build_script,
        python_version=python_version,
    )
    path = tmp_path / "config.toml"
    code = wizard.run(path)
    assert script.unused == [], "the wizard ended before the script did"
    return Run(code, file.getvalue(), script, path)


def replace_answer(
    dialogue: Sequence[tuple[str, str]], fragment: str, *answers: tuple[str, str]
) -> list[tuple[str, str]]:
    """`dialogue` with the step whose prompt has `fragment` replaced by `answers`."""
    index = next(i for i, (prompt, _) in enumerate(dialogue) if fragment in prompt)
    return [*dialogue[:index], *answers, *dialogue[index + 1 :]]


def loaded(run: Run, environ: Mapping[str, str] | None = None) -> Config:
    return load_config(run.path, environ={"OPENAI_API_KEY": OPENAI, **(environ or {})})


def assert_no_secret(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text


# --- the whole dialogue ------------------------------------------------------------------------


def test_telegram_docker_setup_writes_a_private_config_the_loader_accepts(
    tmp_path: Path,
) -> None:
    run = run_wizard(tmp_path, TELEGRAM_DOCKER)
    assert run.code == 0
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o600
    config = loaded(run)
    assert config.telegram is not None
    assert config.telegram.bot_token.get_secret_value() == TELEGRAM_TOKEN
    assert config.telegram.allowed_users == ("12345", "67890")
    assert config.slack is None
    assert (config.docker.port_range_start, config.docker.port_range_end) == (13000, 13050)
    assert config.known_agents() == ("claude-code", "codex")
    assert config.agents.default_agent == "codex"
    assert config.agent("claude-code").env_values() == {"ANTHROPIC_API_KEY": ANTHROPIC}
    assert config.agent("codex").pass_env == ("OPENAI_API_KEY",)
    # The GitHub token is the daemon's: sandboxes get it only with agent_token = true.
    assert config.github is not None and config.github.token.get_secret_value() == GITHUB
    assert config.sandbox_env("codex") == {"OPENAI_API_KEY": OPENAI}
    session = config.session
    assert (session.max_concurrent, session.timeout_minutes) == (3, 45)
    assert (session.debounce_ms, session.idle_minutes) == (500, 0.5)
    # The file states the protocol even though it is the default.
    raw = tomllib.loads(run.path.read_text())
    assert raw["sandbox"] == {"provider": "docker", "protocol": "sandbox-agent"}
    assert raw["telegram"]["allowed_users"] == [12345, 67890]
    assert "allow_everyone" not in raw["telegram"]
    assert "admins" not in raw["telegram"]
    assert "OPENAI" not in raw["agents"]["codex"].get("env", {})
    assert config.access_problems() == []  # `anycode run` accepts it
    assert "telegram: may be used by 12345, 67890\n" in run.output


def test_answers_with_quotes_backslashes_and_control_characters_are_written_exactly(
    tmp_path: Path,
) -> None:
    image = 'registry.example/a"b\\c\td\x1be\u202ef:✓'
    dialogue = replace_answer(TELEGRAM_DOCKER, "Docker image", ("Docker image", image))
    run = run_wizard(tmp_path, dialogue, docker=FakeDocker(images={image}))
    assert run.code == 0
    assert loaded(run).docker.image == image
    text = run.path.read_text()
    assert "\x1b" not in text
    assert "\u202e" not in text


def test_secrets_are_asked_masked_and_never_shown(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Chat platforms",
        ("Chat platforms", "both"),
    )
    dialogue = replace_answer(
        dialogue,
        "Sandbox provider",
        ("Slack app-level token", SLACK_APP),
        ("Slack bot token", SLACK_BOT),
        ("Allowed Slack member ids", "U0123ABCD"),
        ("Slack admins", ""),
        ("Sandbox provider", ""),
    )
    dialogue = replace_answer(
        dialogue,
        "OPENAI_API_KEY (for codex)",
        ("OPENAI_API_KEY (for codex)", "enter"),
        ("OPENAI_API_KEY:", OPENAI),
    )
    run = run_wizard(tmp_path, dialogue, environ={})
    assert run.code == 0
    assert_no_secret(run.output)
    assert "# Effective configuration" in run.output
    assert "xapp-…(redacted" in run.output
    assert "sk-ant-…(redacted" in run.output
    secret_prompts = [prompt for prompt, password in run.script.asked if password]
    assert len(secret_prompts) == 6  # telegram, two slack, two API keys, GitHub
    for fragment in ("Telegram bot token", "Slack app-level", "Slack bot", "GitHub token"):
        assert any(fragment in prompt for prompt in secret_prompts)
    config = loaded(run)
    assert config.slack is not None
    assert config.slack.app_token.get_secret_value() == SLACK_APP
    assert config.slack.allowed_users == ("U0123ABCD",)
    assert config.agent("codex").env_values() == {"OPENAI_API_KEY": OPENAI}


def test_a_wrong_telegram_token_is_asked_again_with_the_loaders_message(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Telegram bot token",
        ("Telegram bot token", "123:ABC"),
        ("Telegram bot token", ""),
        ("Telegram bot token", TELEGRAM_TOKEN),
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert (
        "✗ telegram.bot_token: does not look like a Telegram bot token "
        "(<bot id>:<secret>, like 123456789:AA…)\n"
        "  fix: copy the whole token from @BotFather (/mybots → API Token)\n"
    ) in run.output
    assert "✗ telegram.bot_token: must not be empty\n" in run.output
    assert "123:ABC" not in run.output


def test_wrong_slack_tokens_are_asked_again_with_the_loaders_messages(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Chat platforms",
        ("Chat platforms", "slack"),
        ("Slack app-level token", SLACK_BOT),
        ("Slack app-level token", "nonsense"),
        ("Slack app-level token", SLACK_APP),
        ("Slack bot token", SLACK_APP),
        ("Slack bot token", "xoxp-user_token"),
        ("Slack bot token", SLACK_BOT),
        ("Allowed Slack member ids", "someone"),
        ("Allowed Slack member ids", "U0123ABCD, W0999XYZ"),
        ("Slack admins", ""),
    )
    dialogue = [step for step in dialogue if not step[0].startswith(("Telegram", "Allowed Tel"))]
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    for message in (
        "✗ slack.app_token: must start with xapp- (this is the bot token)\n",
        "✗ slack.app_token: must start with xapp-\n",
        "✗ slack.bot_token: must start with xoxb- (this is the app-level token)\n",
        "✗ slack.bot_token: must start with xoxb-\n",
        "✗ slack.allowed_users[0]: must be a Slack member id like U0123ABCD, not 'someone'\n",
    ):
        assert message in run.output
    assert_no_secret(run.output)
    config = loaded(run)
    assert config.telegram is None
    assert config.slack is not None
    assert config.slack.allowed_users == ("U0123ABCD", "W0999XYZ")


EMPTY_LIST_WARNING = (
    "! With no allowed users, anyone who finds the {} bot can run agents with your "
    "credentials and your API keys."
)


def test_no_allowed_users_warns_and_needs_a_yes_which_writes_allow_everyone(
    tmp_path: Path,
) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Allowed Telegram user ids",
        ("Allowed Telegram user ids", ""),
        ("Let everyone use the bot (allow_everyone = true)? [y/n] (n)", ""),
        ("Allowed Telegram user ids", "@me"),
        ("Allowed Telegram user ids", ""),
        ("Let everyone use the bot", "y"),
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert run.output.count(EMPTY_LIST_WARNING.format("telegram")) == 2
    assert "✗ telegram.allowed_users[0]: must be a numeric Telegram user id, not '@me'" in (
        run.output
    )
    raw = tomllib.loads(run.path.read_text())
    assert raw["telegram"]["allowed_users"] == []
    assert raw["telegram"]["allow_everyone"] is True
    config = loaded(run)
    assert config.telegram is not None
    assert config.telegram.allowed_users == ()
    assert config.telegram.allow_everyone is True
    assert config.access_problems() == []  # `anycode run` accepts it
    assert main(["check-config", str(run.path)], environ={"OPENAI_API_KEY": OPENAI}) == 0
    assert "! telegram: allow_everyone = true, so anyone who can message the bot" in run.output


def test_answering_no_to_everyone_asks_for_users_again(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Allowed Telegram user ids",
        ("Allowed Telegram user ids", ""),
        ("Let everyone use the bot", "n"),
        ("Allowed Telegram user ids", ""),
        ("Let everyone use the bot", "no"),
        ("Allowed Telegram user ids", "424242"),
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert run.output.count("Then list at least one user who may use it.") == 2
    raw = tomllib.loads(run.path.read_text())
    assert raw["telegram"]["allowed_users"] == [424242]
    assert "allow_everyone" not in raw["telegram"]
    config = loaded(run)
    assert config.telegram is not None
    assert config.telegram.allowed_users == ("424242",)
    assert config.telegram.allow_everyone is False
    assert config.access_problems() == []
    assert main(["check-config", str(run.path)], environ={"OPENAI_API_KEY": OPENAI}) == 0


def test_slack_with_no_allowed_users_asks_about_everyone_too(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Chat platforms",
        ("Chat platforms", "slack"),
        ("Slack app-level token", SLACK_APP),
        ("Slack bot token", SLACK_BOT),
        ("Allowed Slack member ids", ""),
        ("Let everyone use the bot", ""),
        ("Allowed Slack member ids", ""),
        ("Let everyone use the bot", "yes"),
        ("Slack admins", ""),
    )
    dialogue = [step for step in dialogue if not step[0].startswith(("Telegram", "Allowed Tel"))]
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert run.output.count(EMPTY_LIST_WARNING.format("slack")) == 2
    config = loaded(run)
    assert config.slack is not None
    assert (config.slack.allowed_users, config.slack.allow_everyone) == ((), True)
    assert config.access_problems() == []


def test_admins_are_asked_checked_and_written_for_each_platform(tmp_path: Path) -> None:
    dialogue = replace_answer(TELEGRAM_DOCKER, "Chat platforms", ("Chat platforms", "both"))
    dialogue = replace_answer(
        dialogue,
        "Telegram admins",
        ("Telegram admins, comma-separated user ids (optional; Enter for none)", "@boss"),
        ("Telegram admins", "111, 222"),
    )
    dialogue = replace_answer(
        dialogue,
        "Sandbox provider",
        ("Slack app-level token", SLACK_APP),
        ("Slack bot token", SLACK_BOT),
        ("Allowed Slack member ids", "U0123ABCD"),
        ("Slack admins", "boss"),
        ("Slack admins", "W0999XYZ"),
        ("Sandbox provider", ""),
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert "✗ telegram.admins[0]: must be a numeric Telegram user id, not '@boss'" in run.output
    assert "✗ slack.admins[0]: must be a Slack member id like U0123ABCD, not 'boss'" in run.output
    assert "Admins may use the bot too, and may cancel anyone's session" in run.output
    raw = tomllib.loads(run.path.read_text())
    assert raw["telegram"]["admins"] == [111, 222]
    assert raw["slack"]["admins"] == ["W0999XYZ"]
    config = loaded(run)
    assert config.telegram is not None
    assert config.slack is not None
    assert config.telegram.admins == ("111", "222")
    assert config.slack.admins == ("W0999XYZ",)
    assert "telegram: admins 111, 222\n" in run.output
    assert "slack: admins W0999XYZ\n" in run.output


def test_wrong_numbers_are_asked_again_with_the_loaders_messages(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "End of the port range",
        ("End of the port range", "12000"),
        ("End of the port range", "lots"),
        ("End of the port range", "13050"),
    )
    dialogue = replace_answer(
        dialogue,
        "Max active sessions per chat",
        ("Max active sessions per chat", "0"),
        ("Max active sessions per chat", "3"),
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert "✗ docker.port_range_end: must be greater than port_range_start (12000 <= 13000)" in (
        run.output
    )
    assert "✗ docker.port_range_end: must be a whole number" in run.output
    assert "✗ session.max_concurrent: must be at least 1" in run.output


# --- overwriting -------------------------------------------------------------------------------


def test_an_existing_file_is_kept_when_the_answer_is_no(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    dialogue = replace_answer(
        TELEGRAM_DOCKER, "Write this config", ("already exists. Overwrite it?", "")
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert path.read_text() == "# mine\n"
    assert f"Kept the existing {path}; nothing was written." in run.output
    assert "[y/n] (n)" in run.script.asked[-1][0]


def test_overwriting_replaces_a_readable_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    path.chmod(0o644)
    dialogue = replace_answer(
        TELEGRAM_DOCKER, "Write this config", ("already exists. Overwrite it?", "y")
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert loaded(run).agents.default_agent == "codex"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary file left


# --- sandbox providers -------------------------------------------------------------------------


def test_the_local_provider_needs_the_typed_confirmation(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Sandbox provider",
        ("Sandbox provider", "local"),
        ("I understand this is unsandboxed", "yes"),
        ("Sandbox provider", "local"),
        ("I understand this is unsandboxed", "I understand this is unsandboxed"),
        ("Work folder for sessions", "work"),
    )
    dialogue = [step for step in dialogue if not step[0].startswith(("Docker", "First", "End"))]
    dialogue = replace_answer(dialogue, "Protocol", ("Protocol", "acp"))
    dialogue = replace_answer(
        dialogue, "Agents, comma-separated", ("Agents, comma-separated", "claude-code, codex")
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert "Not using the local provider; choose another." in run.output
    assert "can read and change anything you can" in run.output
    config = loaded(run)
    assert config.sandbox.provider == "local"
    assert config.local.allow_unsandboxed is True
    assert config.local.workdir == tmp_path / "work"
    assert config.sandbox.protocol == "acp"


def test_without_docker_the_wizard_says_how_to_start_it_and_ecs_works(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Sandbox provider",
        ("Sandbox provider", "ecs"),
        ("ECS cluster", "anycode"),
        ("Task definition", "anycode-task:3"),
        ("Subnets", ""),
        ("Subnets", "abc"),
        ("Subnets", "subnet-0aaa, subnet-0bbb"),
        ("Security groups", "sg-0ccc"),
        ("AWS region", "eu-west-1"),
        ("public IP", "n"),
    )
    # ECS cannot exec, so the protocol is not asked.
    dialogue = [
        step for step in dialogue if not step[0].startswith(("Docker", "First", "End", "Protocol"))
    ]
    docker = FakeDocker(error="Error while fetching server API version")
    run = run_wizard(tmp_path, dialogue, docker=docker)
    assert run.code == 0
    assert "! Docker engine not reachable: Error while fetching server API version" in run.output
    assert "sudo dockerd" in run.output
    assert "Docker Desktop" in run.output
    assert '✗ ecs.subnets: is required when sandbox.provider = "ecs"' in run.output
    assert "✗ ecs.subnets[0]: 'abc' is not a subnet id" in run.output
    config = loaded(run)
    assert config.sandbox.provider == "ecs"
    assert config.sandbox.protocol == "sandbox-agent"
    assert config.ecs.cluster == "anycode"
    assert config.ecs.subnets == ("subnet-0aaa", "subnet-0bbb")
    assert config.ecs.security_groups == ("sg-0ccc",)
    assert config.ecs.region == "eu-west-1"
    assert config.ecs.assign_public_ip is False
    assert "Start Docker" not in run.output  # only a docker config needs it


def test_only_agents_that_support_the_protocol_are_offered(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Agents, comma-separated",
        ("Agents, comma-separated (claude-code,codex)", "claude-code, goose"),
        ("Agents, comma-separated", "claude-code, codex"),
    )
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert "With protocol sandbox-agent, goose cannot run." in run.output
    assert "✗ goose: not available; choose from claude-code, codex" in run.output


def test_acpx_asks_its_permission_policy_and_offers_goose(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "Protocol",
        ("Protocol", "acpx"),
        ("acpx permission policy", "deny-all"),
    )
    dialogue = replace_answer(
        dialogue,
        "Agents, comma-separated",
        ("Agents, comma-separated (claude-code,codex,goose)", "goose"),
    )
    dialogue = [step for step in dialogue if "ANTHROPIC" not in step[0]]
    dialogue = replace_answer(dialogue, "Default agent", ("OPENAI_API_KEY (for goose)", "skip"))
    dialogue = [step for step in dialogue if "for codex" not in step[0]]
    run = run_wizard(tmp_path, dialogue)
    assert run.code == 0
    assert "Default agent: goose" in run.output
    config = loaded(run)
    assert config.sandbox.protocol == "acpx"
    assert config.sandbox.acpx_permissions == "deny-all"
    assert config.known_agents() == ("goose",)
    assert config.agent("goose").env == {}


def test_too_old_a_python_stops_before_any_question(tmp_path: Path) -> None:
    run = run_wizard(tmp_path, [], python_version=(3, 10, 12))
    assert run.code == 1
    assert "✗ Python 3.10.12: anycode needs Python 3.11 or newer" in run.output
    assert not run.path.exists()


# --- cancelling --------------------------------------------------------------------------------


def image_missing_dialogue() -> list[tuple[str, str]]:
    return [*TELEGRAM_DOCKER, ("Build the sandbox image", "y")]


@pytest.mark.parametrize("stop_at", range(len(TELEGRAM_DOCKER) + 1))
def test_ctrl_c_at_any_prompt_exits_130_and_writes_nothing(tmp_path: Path, stop_at: int) -> None:
    dialogue = image_missing_dialogue()
    prompt, _ = dialogue[stop_at]
    build = tmp_path / "build.sh"
    build.write_text("touch built\n")
    run = run_wizard(
        tmp_path,
        [*dialogue[:stop_at], (prompt, CTRL_C)],
        docker=FakeDocker(images=set()),
        build_script=build,
    )
    assert run.code == 130
    assert "Setup cancelled; nothing was written." in run.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.sh"]


def test_end_of_input_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    run = run_wizard(tmp_path, [*TELEGRAM_DOCKER[:6], ("First host port", EOF)])
    assert run.code == 1
    assert "Input ended before setup finished; nothing was written." in run.output
    assert not run.path.exists()


# --- the sandbox image -------------------------------------------------------------------------


def write_build_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "build-image.sh"
    script.write_text("set -e\n" + body)
    return script


def test_the_image_build_runs_the_script_after_writing_the_config(tmp_path: Path) -> None:
    script = write_build_script(
        tmp_path,
        f"""
echo "[build-image] [0 s] building $IMAGE (goose: ${{INSTALL_GOOSE:-no}})"
echo "Step 1/9 : FROM debian"
test -f {tmp_path / "config.toml"} && echo "[build-image] [1 s] config already written"
echo "[build-image] [2 s] built $IMAGE"
""",
    )
    dialogue = replace_answer(TELEGRAM_DOCKER, "Docker image", ("Docker image", "mine:dev"))
    dialogue = [*dialogue, ("Build the sandbox image mine:dev now", "")]
    docker = FakeDocker(images=set())
    run = run_wizard(tmp_path, dialogue, docker=docker, build_script=script)
    assert run.code == 0
    assert "! sandbox image mine:dev is not built yet; you can build it at the end" in run.output
    assert "[build-image] [0 s] building mine:dev (goose: no)" in run.output
    assert "[build-image] [1 s] config already written" in run.output
    assert "Step 1/9" not in run.output  # only the script's progress lines are shown
    assert "✓ built mine:dev in " in run.output
    assert "may be missing" not in run.output


def test_a_failed_image_build_shows_the_last_lines(tmp_path: Path) -> None:
    script = write_build_script(
        tmp_path,
        """
echo "[build-image] [0 s] building $IMAGE (goose: ${INSTALL_GOOSE:-no})"
echo "npm ERR! network timeout"
echo "[build-image] ERROR: docker build failed (exit 1)" >&2
exit 3
""",
    )
    dialogue = replace_answer(TELEGRAM_DOCKER, "Protocol", ("Protocol", "acp"))
    dialogue = replace_answer(
        dialogue,
        "Agents, comma-separated",
        ("Agents, comma-separated (claude-code,codex,goose)", "codex, goose"),
    )
    dialogue = [step for step in dialogue if "ANTHROPIC" not in step[0]]
    dialogue = replace_answer(
        dialogue, "OPENAI_API_KEY (for codex)", ("OPENAI_API_KEY (for codex, goose)", "env")
    )
    dialogue = [*dialogue, ("Build the sandbox image", "y")]
    run = run_wizard(tmp_path, dialogue, docker=FakeDocker(images=set()), build_script=script)
    assert run.code == 1
    assert "[build-image] [0 s] building anycode-sandbox:latest (goose: true)" in run.output
    assert "✗ the image build failed (exit 3); its last lines:" in run.output
    assert "  npm ERR! network timeout\n" in run.output
    assert "  [build-image] ERROR: docker build failed (exit 1)\n" in run.output
    assert f"IMAGE=anycode-sandbox:latest bash {script}" in run.output
    assert loaded(run).agent("goose").pass_env == ("OPENAI_API_KEY",)


def test_without_the_build_script_it_says_how_to_build(tmp_path: Path) -> None:
    run = run_wizard(tmp_path, TELEGRAM_DOCKER, docker=FakeDocker(images=set()))
    assert run.code == 0
    assert not any("Build the sandbox image" in prompt for prompt, _ in run.script.asked)
    assert "the build script is not installed with the package" in run.output
    assert "IMAGE=anycode-sandbox:latest bash docker/build-image.sh" in run.output


def test_the_build_status_line_shows_the_latest_progress_line(tmp_path: Path) -> None:
    file = io.StringIO()
    console = Console(file=file, width=120, force_terminal=True, color_system=None)
    command = ["bash", "-c", 'echo "[build-image] [0 s] one"; sleep 0.3; echo "tail only"']
    result = build_image(command, console=console, env=dict(os.environ))
    assert result.returncode == 0
    assert result.tail == ("[build-image] [0 s] one", "tail only")
    # The live line (spinner, latest progress line, elapsed time) was drawn on the terminal.
    assert "[build-image] [0 s] one 0:00:0" in file.getvalue()


# --- pieces ------------------------------------------------------------------------------------


def test_the_real_docker_probe_reports_an_engine_that_does_not_answer(tmp_path: Path) -> None:
    probe = DockerSdkProbe({"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    reason = probe.ping()
    assert reason
    assert probe.image_exists("anycode-sandbox:latest") is None


def test_write_private_file_creates_it_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    old = os.umask(0)
    try:
        write_private_file(path, "a = 1\n")
    finally:
        os.umask(old)
    assert path.read_text() == "a = 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- in a real terminal ------------------------------------------------------------------------


def pexpect_module() -> Any:
    """pexpect, or a skip: the terminal tests are the only ones that need it."""
    return pytest.importorskip("pexpect")


def spawn_setup(tmp_path: Path) -> Any:
    pexpect = pexpect_module()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TERM": "xterm",
        "NO_COLOR": "1",
        # No engine answers here, so the run is the same with or without Docker on this machine.
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }
    command = [sys.executable, "-m", "anycode_actors", "setup", "--config", "config.toml"]
    return pexpect.spawn(
        command[0],
        command[1:],
        cwd=str(tmp_path),
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 200),
        preexec_fn=_interruptible,
    )


def _interruptible() -> None:
    """In the forked child, before exec: SIGINT at its default and unblocked, as in a shell.

    An ignored or blocked signal stays so across exec, and Python leaves an ignored SIGINT
    ignored (https://docs.python.org/3/library/signal.html#execution-of-python-signal-handlers):
    in full CI runs the child inherited one from the test process, so Ctrl+C did nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_setup_in_a_real_terminal_writes_the_telegram_config(tmp_path: Path) -> None:
    child = spawn_setup(tmp_path)
    child.expect("Docker engine not reachable")
    steps = [
        ("Chat platforms", "telegram"),
        ("Telegram bot token", TELEGRAM_TOKEN),
        ("Allowed Telegram user ids", "12345"),
        ("Telegram admins", ""),
        ("Sandbox provider", ""),
        ("Docker image", ""),
        ("First host port", ""),
        ("End of the port range", ""),
        ("Docker network", ""),
        ("Protocol", ""),
        ("Agents, comma-separated", "claude-code"),
        ("ANTHROPIC_API_KEY", "enter"),
        ("ANTHROPIC_API_KEY:", ANTHROPIC),
        ("GitHub token", ""),
        ("Keep these session settings", ""),
        ("Write this config to", "y"),
    ]
    for prompt, answer in steps:
        child.expect_exact(prompt)
        child.sendline(answer)
    child.expect_exact("wrote config.toml")
    child.expect_exact("Next: anycode check-config config.toml")
    child.expect(pexpect_module().EOF)
    child.close()
    assert child.exitstatus == 0
    transcript = child.before or ""
    assert_no_secret(transcript)
    path = tmp_path / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load_config(path, environ={})
    assert config.telegram is not None
    assert config.telegram.bot_token.get_secret_value() == TELEGRAM_TOKEN
    assert config.agent("claude-code").env_values() == {"ANTHROPIC_API_KEY": ANTHROPIC}


def test_ctrl_c_in_a_real_terminal_exits_130(tmp_path: Path) -> None:
    child = spawn_setup(tmp_path)
    child.expect_exact("Chat platforms")
    child.sendline("telegram")
    child.expect_exact("Telegram bot token")
    # The token prompt is getpass, which switches echo off with TCSAFLUSH: a ^C typed before
    # that (it reaches the line discipline through a deferred flip buffer) can be flushed away
    # before it becomes SIGINT. A person sees the prompt first; so does the test.
    assert child.waitnoecho(timeout=30)
    child.sendintr()
    child.expect_exact("Setup cancelled; nothing was written.")
    child.expect(pexpect_module().EOF)
    child.close()
    assert child.exitstatus == 130
    assert not (tmp_path / "config.toml").exists()


def test_a_key_already_in_the_environment_is_taken_from_it_by_default(tmp_path: Path) -> None:
    dialogue = replace_answer(
        TELEGRAM_DOCKER,
        "ANTHROPIC_API_KEY (for claude-code)",
        ("ANTHROPIC_API_KEY (for claude-code) [enter/env/skip] (env)", ""),
    )
    dialogue = [step for step in dialogue if step[0] != "ANTHROPIC_API_KEY:"]
    environ = {"ANTHROPIC_API_KEY": ANTHROPIC}
    run = run_wizard(tmp_path, dialogue, environ=environ)
    assert run.code == 0
    raw = tomllib.loads(run.path.read_text())
    assert raw["agents"]["claude-code"] == {"pass_env": ["ANTHROPIC_API_KEY"]}
    config = loaded(run, environ)
    assert config.agent("claude-code").pass_env == ("ANTHROPIC_API_KEY",)
    assert config.agent("claude-code").env_values() == {"ANTHROPIC_API_KEY": ANTHROPIC}
    # Set here, so the review shows its (masked) value; OPENAI_API_KEY is not, and is explained.
    assert "sk-ant-…(redacted, 28 chars)" in run.output
    assert "! OPENAI_API_KEY is not set here" in run.output
    assert "! ANTHROPIC_API_KEY is not set here" not in run.output
    assert_no_secret(run.output)
