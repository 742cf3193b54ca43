"""`anycode setup`: an interactive wizard that writes a valid config.toml.

The steps: prerequisites, messaging (tokens, who may use the bot, an explicit opt-in before a
bot with no allowed users lets everyone in, the admins), sandbox (provider, the local provider's
explicit opt-in, protocol, acpx permission policy), agents (their keys, the GitHub token, the
session settings), review, write, build. Every answer is checked by the real config
loader as it is given (the error shown is the loader's own message), and the whole file is
loaded once more before it is written, so the wizard cannot write a config that `anycode run`
would refuse.

All input goes through an `InputBackend` and all output through a rich `Console`, so tests drive
the wizard with scripted answers. Ctrl+C at any prompt exits with 130 and writes nothing: every
question, including whether to build the image, is asked before the file is written.
"""

from __future__ import annotations

import argparse
import copy
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Protocol

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.syntax import Syntax
from rich.text import Text

from anycode_actors.cli.common import DEFAULT_CONFIG_PATH, CommandIO, Subparsers
from anycode_actors.config import (
    SECRET_ENV_VARS,
    AgentProtocol,
    Config,
    ConfigError,
    ConfigProblem,
    builtin_agents,
    config_from_mapping,
    dump_toml,
    parse_config,
)

__all__ = [
    "BuildResult",
    "ConsoleInput",
    "DockerProbe",
    "DockerSdkProbe",
    "InputBackend",
    "SetupWizard",
    "add_setup",
    "build_image",
    "find_build_script",
    "run_setup",
    "write_private_file",
]

EXIT_INTERRUPTED: Final = 130
MIN_PYTHON: Final = (3, 11)
DOCKER_PING_TIMEOUT: Final = 3
DEFAULT_IMAGE: Final = "anycode-sandbox:latest"
UNSANDBOXED_PHRASE: Final = "I understand this is unsandboxed"
BUILD_TAIL_LINES: Final = 15
BUILD_STOP_GRACE: Final = 5.0
STEPS: Final = 7

# The API key each built-in agent needs; codex and goose share OPENAI_API_KEY.
_AGENT_KEY_VARS: Final[Mapping[str, str]] = {
    "claude-code": "ANTHROPIC_API_KEY",
    "codex": "OPENAI_API_KEY",
    "goose": "OPENAI_API_KEY",
}
# Stands in for a pass_env variable that is only set where the daemon will run.
_RUNTIME_VALUE: Final = "set-in-the-daemon-environment"
_INT64_MAX: Final = 2**63 - 1


def add_setup(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "setup",
        help="write a config file interactively (checks prerequisites, can build the image)",
        description="Check the prerequisites (Python, Docker, the sandbox image), ask for the "
        "chat tokens, sandbox, protocol, agents and their keys, show the result with secrets "
        "masked, and write it with mode 0600 (asking before overwriting). Offers to build the "
        "sandbox image when it is missing. Ctrl+C quits without writing anything.",
    )
    parser.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"the config file to write (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.set_defaults(handler=_setup)


def _setup(args: argparse.Namespace, io: CommandIO) -> int:
    return run_setup(args.config, console=io.out, environ=io.environ)


# --- input and Docker, injectable ----------------------------------------------------------------


class InputBackend(Protocol):
    """Shows `prompt` and returns the line typed (without echo when `password`).

    Raises KeyboardInterrupt on Ctrl+C and EOFError when input ends.
    """

    def __call__(self, prompt: Text, *, password: bool) -> str: ...


@dataclass(frozen=True)
class ConsoleInput:
    """The terminal: rich's `Console.input` (getpass for secrets, so nothing is echoed)."""

    console: Console

    def __call__(self, prompt: Text, *, password: bool) -> str:
        return self.console.input(prompt, password=password)


class DockerProbe(Protocol):
    """What the wizard asks the Docker engine."""

    def ping(self) -> str | None:
        """None when an engine answers, else why it does not."""
        ...

    def image_exists(self, image: str) -> bool | None:
        """Whether `image` is present locally; None when that cannot be told."""
        ...


class DockerSdkProbe:
    """A `DockerProbe` over the docker SDK, configured from `environ` (DOCKER_HOST and so on)."""

    def __init__(self, environ: Mapping[str, str], timeout: int = DOCKER_PING_TIMEOUT) -> None:
        self._environ = dict(environ)
        self._timeout = timeout
        self._client: Any = None

    def ping(self) -> str | None:
        from docker.client import from_env

        try:
            client = from_env(environment=self._environ, timeout=self._timeout)
            client.ping()
        except Exception as exc:  # the SDK raises several unrelated types when no engine answers
            return _short_reason(exc)
        self._client = client
        return None

    def image_exists(self, image: str) -> bool | None:
        if self._client is None:
            return None
        from docker.errors import ImageNotFound

        try:
            self._client.images.get(image)
        except ImageNotFound:
            return False
        except Exception:
            return None
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _short_reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def find_build_script() -> Path | None:
    """docker/build-image.sh of a source checkout: the repo root is the package's parent.

    None when the package was installed from a wheel, which does not ship the docker folder.
    """
    script = Path(__file__).resolve().parents[2] / "docker" / "build-image.sh"
    return script if script.is_file() else None


def run_setup(
    path: str | os.PathLike[str],
    *,
    console: Console,
    environ: Mapping[str, str],
    read: InputBackend | None = None,
) -> int:
    """Run the wizard on the terminal behind `console`; return the exit status."""
    probe = DockerSdkProbe(environ)
    try:
        wizard = SetupWizard(
            console,
            read or ConsoleInput(console),
            environ=environ,
            docker=probe,
            build_script=find_build_script(),
        )
        return wizard.run(Path(path))
    finally:
        probe.close()


# --- the wizard --------------------------------------------------------------------------------


class SetupWizard:
    """One run of the setup dialogue. Answers accumulate in a mapping shaped like config.toml."""

    def __init__(
        self,
        console: Console,
        read: InputBackend,
        *,
        environ: Mapping[str, str],
        docker: DockerProbe,
        build_script: Path | None,
        python_version: Sequence[int] = tuple(sys.version_info[:3]),
    ) -> None:
        self._console = console
        self._read = read
        self._environ = environ
        self._docker = docker
        self._build_script = build_script
        self._python_version = tuple(python_version)
        self._data: dict[str, Any] = {}
        self._docker_error: str | None = None
        self._image_present: bool | None = None

    def run(self, path: Path) -> int:
        try:
            return self._run(path)
        except KeyboardInterrupt:
            self._console.print()
            self._say("Setup cancelled; nothing was written.", "yellow")
            return EXIT_INTERRUPTED
        except EOFError:
            self._console.print()
            self._say("Input ended before setup finished; nothing was written.", "yellow")
            return 1

    def _run(self, path: Path) -> int:
        self._console.print(Text("anycode setup", style="bold"))
        self._say(
            f"Writes {path}. Press Enter to take the value in (parentheses); "
            "Ctrl+C quits without writing anything."
        )
        if path.is_dir():
            self._say(f"✗ {path} is a folder; give a file path with --config", "red")
            return 1
        if path.exists():
            self._say(f"! {path} exists; you will be asked before it is overwritten.", "yellow")

        if not self._prerequisites():
            return 1
        self._messaging()
        self._sandbox()
        self._agents()
        text = self._review(path)
        if text is None:
            return 1
        self._step(6, "Write")
        if not self._confirm_write(path):
            return 0
        build = self._ask_build()
        try:
            write_private_file(path, text)
        except OSError as exc:
            self._say(f"✗ cannot write {path}: {exc.strerror or exc}", "red")
            return 1
        self._say(f"✓ wrote {path} (readable only by you, mode 0600)", "green")
        status = self._build(path) if build else 0
        self._next_steps(path)
        return status

    # --- steps ---------------------------------------------------------------------------------

    def _prerequisites(self) -> bool:
        self._step(1, "Prerequisites")
        version = ".".join(str(part) for part in self._python_version)
        if self._python_version[:2] < MIN_PYTHON:
            needed = ".".join(str(part) for part in MIN_PYTHON)
            self._say(f"✗ Python {version}: anycode needs Python {needed} or newer", "red")
            return False
        self._say(f"✓ Python {version}", "green")

        self._docker_error = self._docker.ping()
        if self._docker_error is None:
            self._say("✓ Docker engine reachable", "green")
            self._check_image(DEFAULT_IMAGE)
        else:
            self._say(f"! Docker engine not reachable: {self._docker_error}", "yellow")
            self._say(
                "  Start it: on Linux `sudo dockerd` (or `sudo systemctl start docker`), on macOS "
                "and Windows start Docker Desktop. You can continue: the ecs and local providers "
                "do not need Docker here, and a docker config works once Docker runs."
            )
        return True

    def _check_image(self, image: str) -> None:
        if self._docker_error is not None:
            self._image_present = None
            return
        self._image_present = self._docker.image_exists(image)
        if self._image_present:
            self._say(f"✓ sandbox image {image} is present", "green")
        elif self._image_present is False:
            self._say(f"! sandbox image {image} is not built yet; you can build it at the end")
        else:
            self._say(f"! could not tell whether the sandbox image {image} is present")

    def _messaging(self) -> None:
        self._step(2, "Messaging")
        platforms = self._choose("Chat platforms", ["telegram", "slack", "both"], "telegram")
        if platforms in ("telegram", "both"):
            self._say("Telegram: create a bot with @BotFather (/newbot) and copy its token.")
            self._ask_valid("Telegram bot token", ("telegram", "bot_token"), password=True)
            self._ask_access(
                "telegram",
                "Allowed Telegram user ids, comma-separated (@userinfobot tells you yours)",
                "Telegram admins, comma-separated user ids (optional; Enter for none)",
                _telegram_ids,
            )
        if platforms in ("slack", "both"):
            self._say(
                "Slack: the app needs Socket Mode; the app-level token (xapp-) needs "
                "connections:write, the bot token (xoxb-) chat:write and files:write."
            )
            self._ask_valid("Slack app-level token", ("slack", "app_token"), password=True)
            self._ask_valid("Slack bot token", ("slack", "bot_token"), password=True)
            self._ask_access(
                "slack",
                "Allowed Slack member ids, comma-separated (like U0123ABCD)",
                "Slack admins, comma-separated member ids (optional; Enter for none)",
                _items,
            )

    def _ask_access(
        self, platform: str, label: str, admins_label: str, convert: Callable[[str], list[Any]]
    ) -> None:
        """Who may use the bot, then its admins. An empty list needs an explicit yes, which is
        written as allow_everyone = true: `anycode run` refuses an empty list without it."""
        while True:
            users = self._ask_valid(label, (platform, "allowed_users"), convert=convert)
            if users:
                break
            self._say(
                f"! With no allowed users, anyone who finds the {platform} bot can run agents "
                "with your credentials and your API keys.",
                "bold yellow",
            )
            if self._confirm("Let everyone use the bot (allow_everyone = true)?", default=False):
                self._set((platform, "allow_everyone"), True)
                break
            self._say("Then list at least one user who may use it.")
        self._say(
            "Admins may use the bot too, and may cancel anyone's session and answer anyone's "
            "buttons in the chats they can see."
        )
        self._ask_valid(
            admins_label,
            (platform, "admins"),
            default="",
            # Nothing typed writes no admins key at all.
            convert=lambda answer: convert(answer) or None,
        )

    def _sandbox(self) -> None:
        self._step(3, "Sandbox")
        self._say(
            "docker: a container per session on this machine; ecs: an AWS Fargate task per "
            "session; local: plain processes on this machine, with no isolation."
        )
        while True:
            provider = self._choose("Sandbox provider", ["docker", "ecs", "local"], "docker")
            if provider != "local" or self._confirm_unsandboxed():
                break
            self._say("Not using the local provider; choose another.")
        self._set(("sandbox", "provider"), provider)

        if provider == "docker":
            image = self._ask_valid("Docker image", ("docker", "image"), default=DEFAULT_IMAGE)
            if image != DEFAULT_IMAGE:
                self._check_image(image)
            self._ask_valid(
                "First host port for sandboxes",
                ("docker", "port_range_start"),
                default="12000",
                convert=_number,
            )
            self._ask_valid(
                "End of the port range (exclusive)",
                ("docker", "port_range_end"),
                default="12100",
                convert=_number,
            )
            self._ask_valid("Docker network", ("docker", "network"), default="bridge")
        elif provider == "ecs":
            self._ask_ecs()
        else:
            self._set(("local", "allow_unsandboxed"), True)
            self._ask_valid(
                "Work folder for sessions (relative to the config file)",
                ("local", "workdir"),
                default="anycode-work",
            )

        if provider == "ecs":
            # ECS has no exec, so acp and acpx (which run the agent through exec) cannot work.
            self._say("Protocol: sandbox-agent (the only one the ecs provider supports).")
            protocol = "sandbox-agent"
        else:
            self._say(
                "sandbox-agent: REST + SSE to sandbox-agent in the sandbox; acp: the agent's "
                "own ACP server over stdio; acpx: the headless acpx client."
            )
            protocol = self._choose("Protocol", ["sandbox-agent", "acp", "acpx"], "sandbox-agent")
        self._set(("sandbox", "protocol"), protocol)
        if protocol == "acpx":
            self._say(
                "acpx permissions: approve-all lets the agent edit and run anything in the "
                "sandbox; approve-reads only lets it read; deny-all refuses every request."
            )
            permissions = self._choose(
                "acpx permission policy",
                ["approve-all", "approve-reads", "deny-all"],
                "approve-all",
            )
            self._set(("sandbox", "acpx_permissions"), permissions)

    def _confirm_unsandboxed(self) -> bool:
        self._say(
            "! The local provider runs agents as plain processes of this user, with no "
            "container: an agent can read and change anything you can (files, SSH keys, other "
            "projects). Use it only for development and demos.",
            "bold red",
        )
        answer = self._ask(f'Type "{UNSANDBOXED_PHRASE}" to use it (anything else goes back)')
        return answer.strip().rstrip(".").lower() == UNSANDBOXED_PHRASE.lower()

    def _ask_ecs(self) -> None:
        self._ask_valid("ECS cluster (name or ARN)", ("ecs", "cluster"))
        self._ask_valid("Task definition (family:revision or ARN)", ("ecs", "task_definition"))
        self._ask_valid("Subnets, comma-separated (subnet-…)", ("ecs", "subnets"), convert=_items)
        self._ask_valid(
            "Security groups, comma-separated (sg-…; Enter for none)",
            ("ecs", "security_groups"),
            default="",
            convert=_items,
        )
        region = self._environ.get("AWS_REGION") or self._environ.get("AWS_DEFAULT_REGION") or ""
        self._ask_valid(
            "AWS region (Enter for the AWS SDK's default)",
            ("ecs", "region"),
            default=region,
            convert=_optional_text,
        )
        # Off by default: the daemon speaks plain HTTP to the task, which must stay in the VPC.
        public_ip = self._confirm(
            "Give tasks a public IP (only for a daemon outside the VPC; traffic is unencrypted)?",
            False,
        )
        self._set(("ecs", "assign_public_ip"), public_ip)

    def _agents(self) -> None:
        self._step(4, "Agents")
        protocol: AgentProtocol = self._data["sandbox"]["protocol"]
        supported = [name for name, agent in builtin_agents().items() if agent.supports(protocol)]
        names = self._ask_agent_names(supported, protocol)
        if len(names) == 1:
            default = names[0]
            self._say(f"Default agent: {default}")
        else:
            default = self._choose("Default agent (used when /task names none)", names, names[0])
        agents: dict[str, Any] = {"default_agent": default}
        agents.update({name: {} for name in names})
        self._data["agents"] = agents
        if "goose" in names and self._data["sandbox"]["provider"] == "docker":
            self._say(
                "goose is in the sandbox image only when it is built with INSTALL_GOOSE=true "
                "(the build offered at the end does that)."
            )
        self._ask_api_keys(names)
        self._ask_github_token()
        self._ask_session()

    def _ask_agent_names(self, supported: list[str], protocol: str) -> list[str]:
        others = [name for name in _AGENT_KEY_VARS if name not in supported]
        if others:
            self._say(f"With protocol {protocol}, {', '.join(others)} cannot run.")
        while True:
            answer = self._ask("Agents, comma-separated", default=",".join(supported))
            names = list(dict.fromkeys(_items(answer.lower())))
            wrong = [name for name in names if name not in supported]
            if names and not wrong:
                return names
            reason = f"{', '.join(wrong)}: not available" if wrong else "choose at least one"
            self._say(f"✗ {reason}; choose from {', '.join(supported)}", "red")

    def _ask_api_keys(self, names: list[str]) -> None:
        by_variable: dict[str, list[str]] = {}
        for name in names:
            by_variable.setdefault(_AGENT_KEY_VARS[name], []).append(name)
        self._say(
            "API keys: enter = type it now (stored in the config file, mode 0600); env = copy it "
            "from the daemon's environment when it starts (pass_env; keeps it out of the file); "
            "skip = no key."
        )
        for variable, agents in by_variable.items():
            present = bool(self._environ.get(variable))
            how = self._choose(
                f"{variable} (for {', '.join(agents)})",
                ["enter", "env", "skip"],
                "env" if present else "enter",
            )
            if how == "enter":
                key = self._ask_valid(
                    variable, ("agents", agents[0], "env", variable), password=True
                )
                for agent in agents[1:]:
                    self._set(("agents", agent, "env", variable), key)
            elif how == "env":
                for agent in agents:
                    self._set(("agents", agent, "pass_env"), [variable])
                if not present:
                    self._say(
                        f"! {variable} is not set in this shell: export it before "
                        "`anycode run`, which refuses to start without it.",
                        "yellow",
                    )
            else:
                self._say(f"! {', '.join(agents)} will run without {variable}.", "yellow")

    def _ask_github_token(self) -> None:
        self._say(
            "GitHub: the daemon clones, pushes and opens pull requests with this token; "
            "sandboxes never see it (unless [github] agent_token = true)."
        )
        while True:
            token = self._ask("GitHub token (optional; Enter to skip)", password=True)
            if not token:
                return
            problems = self._problems_at(_with_value(self._data, ("github", "token"), token))
            problems = _under(problems, "github.token")
            if not problems:
                self._set(("github", "token"), token)
                return
            self._show_problems(problems)

    def _ask_session(self) -> None:
        self._say(
            "Sessions: at most 5 at a time per chat, ended after 30 minutes, chat edits at most "
            "every 500 ms, and 10 minutes to wait for a follow-up after the agent's turn."
        )
        defaults = {
            "max_concurrent": 5,
            "timeout_minutes": 30,
            "debounce_ms": 500,
            "idle_minutes": 10,
        }
        if self._confirm("Keep these session settings?", default=True):
            self._data["session"] = defaults
            return
        labels = {
            "max_concurrent": "Max active sessions per chat",
            "timeout_minutes": "Session timeout in minutes",
            "debounce_ms": "Chat edit interval in ms (debounce)",
            "idle_minutes": "Minutes to wait for a follow-up (0 = end at once)",
        }
        for key, label in labels.items():
            self._ask_valid(label, ("session", key), default=str(defaults[key]), convert=_number)

    def _review(self, path: Path) -> str | None:
        """The file's text, once the real loader accepts it; None (after saying why) if not."""
        self._step(5, "Review")
        text = dump_toml(self._data, header=_FILE_HEADER)
        try:
            config = parse_config(
                text,
                environ=self._validation_environ(),
                base_dir=path.absolute().parent,
                source=str(path),
            )
            problems = config.access_problems()
            if problems:
                # The questions rule this out; checked anyway, as `anycode run` would refuse it.
                raise ConfigError(problems, str(path))
        except ConfigError as exc:
            self._say(f"✗ the answers do not make a valid config ({len(exc.problems)}):", "red")
            self._show_problems(exc.problems)
            self._say("Nothing was written.")
            return None
        self._console.print(Syntax(config.effective_toml(), "toml", theme="ansi_dark"))
        self._review_notes(config)
        return text

    def _review_notes(self, config: Config) -> None:
        for platform in config.platforms():
            section = getattr(config, platform)
            if section.allow_everyone:
                self._say(
                    f"! {platform}: allow_everyone = true, so anyone who can message the bot can "
                    "run agents with your credentials",
                    "yellow",
                )
            else:
                self._say(f"{platform}: may be used by {', '.join(section.allowed_users)}")
            if section.admins:
                self._say(f"{platform}: admins {', '.join(section.admins)}")
        for variable in self._pass_env_names():
            if not self._environ.get(variable):
                self._say(
                    f"! {variable} is not set here: the value shown above stands in for the one "
                    "`anycode run` takes from its environment; export it before starting",
                    "yellow",
                )
        for variable, (section, key) in SECRET_ENV_VARS.items():
            if self._environ.get(variable):
                self._say(
                    f"! {variable} is set in this environment; at run time it wins over "
                    f"{section}.{key} in the file",
                    "yellow",
                )

    def _confirm_write(self, path: Path) -> bool:
        if path.exists():
            if self._confirm(f"{path} already exists. Overwrite it?", default=False):
                return True
            self._say(f"Kept the existing {path}; nothing was written.")
            return False
        if self._confirm(f"Write this config to {path}?", default=True):
            return True
        self._say("Nothing was written.")
        return False

    def _ask_build(self) -> bool:
        """Whether to build the image after writing; asked now so that Ctrl+C writes nothing."""
        if self._data["sandbox"]["provider"] != "docker" or self._image_present is not False:
            return False
        image = self._data["docker"]["image"]
        if self._build_script is None:
            return False
        return self._confirm(
            f"Build the sandbox image {image} now (several minutes)?", default=True
        )

    def _build(self, path: Path) -> int:
        assert self._build_script is not None
        self._step(7, "Sandbox image")
        image = self._data["docker"]["image"]
        env = dict(self._environ)
        env["IMAGE"] = image
        if "goose" in self._data["agents"]:
            env["INSTALL_GOOSE"] = "true"
        command = ["bash", str(self._build_script)]
        try:
            result = build_image(command, console=self._console, env=env)
        except KeyboardInterrupt:
            self._say(
                f"Build interrupted. {path} was written; build later with: "
                f"IMAGE={image} bash {self._build_script}",
                "yellow",
            )
            return EXIT_INTERRUPTED
        if result.returncode == 0:
            self._image_present = True
            self._say(f"✓ built {image} in {_duration(result.elapsed)}", "green")
            return 0
        self._say(f"✗ the image build failed (exit {result.returncode}); its last lines:", "red")
        for line in result.tail:
            self._say(f"  {line}", "dim")
        return 1

    def _next_steps(self, path: Path) -> None:
        provider = self._data["sandbox"]["provider"]
        if provider == "docker" and self._image_present is not True:
            image = self._data["docker"]["image"]
            if self._docker_error is not None:
                self._say("! Start Docker before `anycode run`.", "yellow")
            if self._build_script is not None:
                how = f"IMAGE={image} bash {self._build_script}"
            else:
                how = (
                    "the build script is not installed with the package; from a checkout of "
                    f"anycode-actors run IMAGE={image} bash docker/build-image.sh"
                )
            self._say(f"! The sandbox image {image} may be missing: {how}", "yellow")
        self._say(f"Next: anycode check-config {path}, then anycode run --config {path}")

    # --- prompts ---------------------------------------------------------------------------------

    def _ask(self, label: str, *, default: str | None = None, password: bool = False) -> str:
        prompt = Text(label, style="bold")
        if default and not password:
            prompt.append(f" ({default})", style="cyan")
        prompt.append(": ")
        answer = self._read(prompt, password=password).strip()
        return answer if answer or default is None else default

    def _choose(self, label: str, choices: Sequence[str], default: str) -> str:
        prompt = Text(label, style="bold")
        prompt.append(f" [{'/'.join(choices)}]", style="magenta")
        prompt.append(f" ({default})", style="cyan")
        prompt.append(": ")
        while True:
            answer = self._read(prompt, password=False).strip().lower() or default
            if answer in choices:
                return answer
            self._say(f"✗ choose one of: {', '.join(choices)}", "red")

    def _confirm(self, label: str, default: bool) -> bool:
        prompt = Text(label, style="bold")
        prompt.append(" [y/n]", style="magenta")
        prompt.append(f" ({'y' if default else 'n'})", style="cyan")
        prompt.append(": ")
        while True:
            answer = self._read(prompt, password=False).strip().lower()
            if not answer:
                return default
            if answer in ("y", "yes"):
                return True
            if answer in ("n", "no"):
                return False
            self._say("✗ answer y or n", "red")

    def _ask_valid(
        self,
        label: str,
        key_path: tuple[str, ...],
        *,
        default: str | None = None,
        password: bool = False,
        convert: Callable[[str], Any] = str,
    ) -> Any:
        """Ask until the config loader accepts the answer at `key_path`; store and return it."""
        while True:
            value = convert(self._ask(label, default=default, password=password))
            candidate = _with_value(self._data, key_path, value)
            problems = _under(self._problems_at(candidate), ".".join(key_path))
            if not problems:
                self._data = candidate
                return value
            self._show_problems(problems)

    # --- helpers ---------------------------------------------------------------------------------

    def _problems_at(self, data: Mapping[str, Any]) -> list[ConfigProblem]:
        """Every problem the real loader finds in `data` (answers given so far)."""
        try:
            config_from_mapping(data, environ=self._validation_environ())
        except ConfigError as exc:
            return list(exc.problems)
        return []

    def _validation_environ(self) -> dict[str, str]:
        """The environment to check the file with: the file alone decides, except that the
        variables it takes from the environment (pass_env) are there, as they must be at run
        time. ANYCODE_* secrets are left out so that they cannot hide a wrong token."""
        environ = {
            name: self._environ.get(name) or _RUNTIME_VALUE for name in self._pass_env_names()
        }
        if self._environ.get("HOME"):
            environ["HOME"] = self._environ["HOME"]
        return environ

    def _pass_env_names(self) -> list[str]:
        agents = self._data.get("agents", {})
        names = (
            name
            for table in agents.values()
            if isinstance(table, dict)
            for name in table.get("pass_env", ())
        )
        return list(dict.fromkeys(names))

    def _set(self, key_path: tuple[str, ...], value: Any) -> None:
        self._data = _with_value(self._data, key_path, value)

    def _step(self, number: int, title: str) -> None:
        self._console.print()
        self._console.print(Rule(Text(f"{number}/{STEPS} {title}", style="bold"), align="left"))

    def _say(self, message: str, style: str = "") -> None:
        self._console.print(Text(message, style=style))

    def _show_problems(self, problems: Iterable[ConfigProblem]) -> None:
        for problem in problems:
            self._say(f"✗ {problem.path}: {problem.message}", "red")
            if problem.fix:
                self._say(f"  fix: {problem.fix}", "dim")


_FILE_HEADER: Final = (
    "Written by `anycode setup`. Every key is described in config.example.toml.\n"
    "Check it with: anycode check-config <this file>"
)


def _under(problems: Iterable[ConfigProblem], key_path: str) -> list[ConfigProblem]:
    """The problems at `key_path` or inside it (`ecs.subnets[0]` is inside `ecs.subnets`)."""
    return [
        problem
        for problem in problems
        if problem.path == key_path or problem.path.startswith((key_path + ".", key_path + "["))
    ]


def _with_value(data: Mapping[str, Any], key_path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` at `key_path`; None removes the key."""
    result = copy.deepcopy(dict(data))
    table = result
    for key in key_path[:-1]:
        table = table.setdefault(key, {})
    if value is None:
        table.pop(key_path[-1], None)
    else:
        table[key_path[-1]] = value
    return result


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _items(answer: str) -> list[str]:
    return [item.strip() for item in answer.split(",") if item.strip()]


def _telegram_ids(answer: str) -> list[int | str]:
    # Numbers, as people write them in the file; anything else goes to the loader to explain.
    return [
        int(item) if item.isascii() and item.isdigit() and int(item) <= _INT64_MAX else item
        for item in _items(answer)
    ]


def _number(answer: str) -> int | float | str:
    # Text that is no number goes to the loader as is, which says what the key needs.
    for kind in (int, float):
        try:
            return kind(answer)
        except ValueError:
            pass
    return answer


def _optional_text(answer: str) -> str | None:
    return answer or None


# --- writing -----------------------------------------------------------------------------------


def write_private_file(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable only by its owner from the first byte.

    The file is created with mode 0600 (never chmod-ed afterwards, so no other user can open it
    in between) under a temporary name and renamed over `path`, so a crash leaves either the old
    file or the new one, and an existing file's looser mode is not inherited.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- building the image ------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    returncode: int
    elapsed: float
    #: The last lines of output (stdout and stderr together), for the report of a failure.
    tail: tuple[str, ...]


def build_image(command: Sequence[str], *, console: Console, env: Mapping[str, str]) -> BuildResult:
    """Run the image build `command`, showing a spinner with its latest progress line.

    `[build-image]` lines are the script's progress: each is printed, and the latest one stays in
    the status line with the elapsed time. Ctrl+C stops the build (its whole process group, so
    `docker build` stops too) and re-raises KeyboardInterrupt.
    """
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        text=True,
        errors="replace",
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    tail: deque[str] = deque(maxlen=BUILD_TAIL_LINES)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("starting the build", total=None)
            while (line := lines.get()) is not None:
                tail.append(line)
                if line.startswith("[build-image]"):
                    progress.console.print(Text(line, style="dim"))
                    progress.update(task, description=line)
            returncode = process.wait()
    except KeyboardInterrupt:
        _stop(process)
        raise
    finally:
        # Once the build's processes are gone the pipe is at its end and the reader is done.
        reader.join(timeout=BUILD_STOP_GRACE)
        process.stdout.close()
    return BuildResult(returncode, time.monotonic() - started, tuple(tail))


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line.rstrip("\n"))
    except (ValueError, OSError):
        pass  # the stream was closed under the reader; the build is being stopped
    finally:
        lines.put(None)


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM the build's process group, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=BUILD_STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue
