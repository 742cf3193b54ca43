"""Configuration: the pydantic models of config.toml, validation, defaults and secrets.

Load it with `load_config(path)` (or `parse_config(text)` / `config_from_mapping(data)`). Each
returns a frozen `Config` or raises `ConfigError` that lists *every* problem at once, each with
the key path as written in the file and a fix, because a person editing a config wants the whole
list, not one error per attempt.

Secrets (chat tokens, the GitHub token, agent credentials) are `SecretStr`: repr, str, logs and
`Config.effective_toml()` show them masked. Code that must hand a secret on (an HTTP header, a
sandbox's environment) asks explicitly: `config.telegram.bot_token.get_secret_value()` or
`config.sandbox_env(agent)`.

Secrets may also come from the environment (see `SECRET_ENV_VARS`); the environment wins over the
file, and a token in the environment alone is enough to enable its section. Loading takes the
environment as an argument so that tests never touch the process environment.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Annotated, Any, Final, Literal, TypeVar, Union, cast, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from anycode_actors.errors import ConfigError, ConfigProblem

__all__ = [
    "SECRET_ENV_VARS",
    "AcpxPermissions",
    "AdminConfig",
    "AgentConfig",
    "AgentProtocol",
    "AgentsConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DatabaseConfig",
    "DockerConfig",
    "EcsConfig",
    "GithubConfig",
    "LimitsConfig",
    "LocalConfig",
    "ProviderName",
    "SandboxConfig",
    "SessionConfig",
    "SlackConfig",
    "TelegramConfig",
    "builtin_agents",
    "config_from_mapping",
    "load_config",
    "mask_secret",
    "parse_config",
]

ProviderName = Literal["docker", "ecs", "local"]
AgentProtocol = Literal["sandbox-agent", "acp", "acpx"]
AcpxPermissions = Literal["approve-all", "approve-reads", "deny-all"]

TELEGRAM_API_BASE_URL: Final = "https://api.telegram.org"
SLACK_API_BASE_URL: Final = "https://slack.com/api"
DEFAULT_AGENT: Final = "claude-code"

#: Environment variables that supply secrets: name → (section, key).
SECRET_ENV_VARS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "ANYCODE_TELEGRAM_BOT_TOKEN": ("telegram", "bot_token"),
        "ANYCODE_SLACK_APP_TOKEN": ("slack", "app_token"),
        "ANYCODE_SLACK_BOT_TOKEN": ("slack", "bot_token"),
        "ANYCODE_GITHUB_TOKEN": ("github", "token"),
    }
)

# How each agent the original knew is launched under each protocol: sandbox-agent id, ACP
# command (argv), acpx agent name. sandbox-agent and acpx have no goose, but goose speaks ACP.
_BUILTIN_LAUNCH: Final[Mapping[str, tuple[str | None, tuple[str, ...], str | None]]] = (
    MappingProxyType(
        {
            "claude-code": ("claude", ("claude-agent-acp",), "claude"),
            "codex": ("codex", ("codex-acp",), "codex"),
            "goose": (None, ("goose", "acp"), None),
        }
    )
)

# Names the daemon itself sets in the sandbox; credentials must not shadow them.
_RESERVED_ENV_PREFIX: Final = "ANYCODE_"

# Docker's default capability set minus those a coding agent has no use for (NET_RAW, MKNOD,
# SYS_CHROOT, AUDIT_WRITE, SETFCAP, SETPCAP): the sandbox drops ALL and gets these back.
_DEFAULT_CAPABILITIES: Final = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
)
# capabilities(7), plus Docker's "ALL".
_LINUX_CAPABILITIES: Final = frozenset(
    {
        *("AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF"),
        *("CHECKPOINT_RESTORE", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"),
        *("IPC_LOCK", "IPC_OWNER", "KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN"),
        *("MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW"),
        *("PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN", "SYS_BOOT"),
        *("SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO"),
        *("SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "SYSLOG", "WAKE_ALARM", "ALL"),
    }
)

# Prefixes that only name a token's kind; a masked secret may show these and nothing more.
_PUBLIC_SECRET_PREFIXES: Final = (
    "github_pat_",
    "sk-ant-",
    "sk-proj-",
    "xapp-",
    "xoxb-",
    "xoxp-",
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "ghr_",
    "sk-",
)

_TELEGRAM_TOKEN: Final = re.compile(r"[0-9]{3,20}:[A-Za-z0-9_-]{30,64}")
_TELEGRAM_BOT_ID: Final = re.compile(r"[0-9]{3,20}:")
_TELEGRAM_USER_ID: Final = re.compile(r"[0-9]{1,20}")
_SLACK_USER_ID: Final = re.compile(r"[UW][A-Z0-9]{2,}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AGENT_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_AGENT_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
_DOCKER_MEMORY: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)b?", re.IGNORECASE)
_AWS_REGION: Final = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+")
_TOML_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

# AF_UNIX paths are limited to 108 bytes including the terminating NUL on Linux.
_MAX_SOCKET_PATH_BYTES: Final = 107
_DOCKER_MIN_MEMORY_BYTES: Final = 6 * 1024 * 1024
# Someone who can reach the admin port must not be able to guess the token.
_MIN_ADMIN_TOKEN_CHARS: Final = 16
_MEMORY_UNITS: Final = MappingProxyType({"": 1, "k": 1024, "m": 1024**2, "g": 1024**3})

_PROBLEM: Final = "anycode_config"
_T = TypeVar("_T")


def _invalid(message: str, fix: str = "") -> PydanticCustomError:
    """A validation error whose message and fix survive into `ConfigProblem` unchanged."""
    return PydanticCustomError(_PROBLEM, "{message}", {"message": message, "fix": fix})


# --- secrets -----------------------------------------------------------------------------------


def mask_secret(value: str) -> str:
    """Show that a secret is set, and of which kind, without showing anything usable.

    Only a public prefix survives: a token kind (`xoxb-`, `sk-ant-`, `ghp_`) or a Telegram bot
    id (`123456789:`, the bot's public user id); the length helps spot a truncated paste.
    """
    if not value:
        return "(empty)"
    bot_id = _TELEGRAM_BOT_ID.match(value)
    if bot_id:
        prefix = bot_id.group()
    else:
        prefix = next((p for p in _PUBLIC_SECRET_PREFIXES if value.startswith(p)), "")
    return f"{prefix}…(redacted, {len(value)} chars)"


def _secret_text(secret: SecretStr, fix_empty: str) -> str:
    # Tokens never contain whitespace; a stray newline from `echo token > file` is not an error.
    value = secret.get_secret_value().strip()
    if not value:
        raise _invalid("must not be empty", fix_empty)
    return value


# --- shared field checks -----------------------------------------------------------------------


def _check_base_url(value: str, example: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(
            f"must be an http(s) URL like {example}",
            f"use {example} unless you run your own server",
        )
    if parts.query or parts.fragment:
        raise _invalid(
            "must not have a query or fragment", f"give only the server address, like {example}"
        )
    return value.strip().rstrip("/")


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _invalid("must be a TCP port between 1 and 65535")
    return value


def _non_empty_text(value: str) -> str:
    if not value.strip():
        raise _invalid("must not be empty")
    return value.strip()


def _empty_means_unset(value: object) -> object:
    # The original example documents optional ECS keys as "inferred … if empty".
    return None if isinstance(value, str) and not value.strip() else value


def _non_empty_path(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise _invalid("must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths count from the config file's folder, so the daemon's working directory
    (often `/` under systemd) does not decide where the database lands."""
    context = info.context if isinstance(info.context, Mapping) else {}
    home = context.get("home")
    if value.parts and value.parts[0] == "~" and isinstance(home, str) and home:
        value = Path(home, *value.parts[1:])
    base_dir = context.get("base_dir")
    if isinstance(base_dir, Path) and not value.is_absolute():
        value = base_dir / value
    return value


def _resolve_database_path(value: Path, info: ValidationInfo) -> Path:
    # SQLite's name for a private in-memory database is not a file path.
    return value if str(value) == ":memory:" else _resolve_path(value, info)


def _check_socket_length(value: Path) -> Path:
    if len(os.fsencode(value)) > _MAX_SOCKET_PATH_BYTES:
        raise _invalid(
            f"is longer than the {_MAX_SOCKET_PATH_BYTES} bytes a Unix socket path may have",
            "use a shorter path, e.g. /run/anycode/admin.sock",
        )
    return value


def _int_as_text(value: object) -> object:
    # Telegram ids are numbers; people write them either way and the daemon compares text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_telegram_user_id(value: str) -> str:
    if not _TELEGRAM_USER_ID.fullmatch(value.strip()):
        raise _invalid(
            f"must be a numeric Telegram user id, not {value!r}",
            "usernames can change and are not checked; @userinfobot tells you the number",
        )
    return value.strip()


def _check_slack_user_id(value: str) -> str:
    if not _SLACK_USER_ID.fullmatch(value.strip()):
        raise _invalid(
            f"must be a Slack member id like U0123ABCD, not {value!r}",
            "open the person's profile → ⋮ → Copy member ID",
        )
    return value.strip()


def _check_subnet_id(value: str) -> str:
    if not value.startswith("subnet-"):
        raise _invalid(f"{value!r} is not a subnet id", 'subnet ids look like "subnet-0abc123"')
    return value


def _check_security_group_id(value: str) -> str:
    if not value.startswith("sg-"):
        raise _invalid(f"{value!r} is not a security group id", 'ids look like "sg-0abc123"')
    return value


def _check_capability(value: str) -> str:
    name = value.strip().upper().removeprefix("CAP_")
    if name not in _LINUX_CAPABILITIES:
        close = difflib.get_close_matches(name, _LINUX_CAPABILITIES, n=1)
        raise _invalid(
            f"{value!r} is not a Linux capability",
            f"did you mean {close[0]}?" if close else "see capabilities(7)",
        )
    return name


def _check_env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise _invalid("is not a valid environment variable name", "use letters, digits and _")
    if name.startswith(_RESERVED_ENV_PREFIX):
        raise _invalid(
            f"{_RESERVED_ENV_PREFIX}* variables are set by the daemon itself", "rename it"
        )
    return name


def _check_credential(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise _invalid("must not be empty", "put the credential here, or remove the key")
    return value


def _check_argument(value: str) -> str:
    if not value:
        raise _invalid("must not be an empty argument")
    return value


TelegramUserId = Annotated[
    str, BeforeValidator(_int_as_text), AfterValidator(_check_telegram_user_id)
]
SlackUserId = Annotated[str, AfterValidator(_check_slack_user_id)]
SubnetId = Annotated[str, AfterValidator(_check_subnet_id)]
SecurityGroupId = Annotated[str, AfterValidator(_check_security_group_id)]
Capability = Annotated[str, AfterValidator(_check_capability)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
Credential = Annotated[SecretStr, AfterValidator(_check_credential)]
CommandArgument = Annotated[str, AfterValidator(_check_argument)]
ConfigPath = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_path)]
DatabasePath = Annotated[
    Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_database_path)
]
SocketPath = Annotated[
    Path,
    BeforeValidator(_non_empty_path),
    AfterValidator(_resolve_path),
    AfterValidator(_check_socket_length),
]
OptionalText = Annotated[str | None, BeforeValidator(_empty_means_unset)]


class _Section(BaseModel):
    # Frozen: one Config is shared by every actor, so nobody may change it under the others.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- chat platforms ----------------------------------------------------------------------------


class TelegramConfig(_Section):
    """`[telegram]`: a bot polled with getUpdates."""

    bot_token: SecretStr
    allowed_users: tuple[TelegramUserId, ...] = ()
    # An empty allow-list lets nobody in unless this says everyone may use the bot.
    allow_everyone: StrictBool = False
    admins: tuple[TelegramUserId, ...] = ()
    api_base_url: str = TELEGRAM_API_BASE_URL
    poll_timeout: StrictInt = 30
    # Calls the whole bot makes per second, across all chats: the Bot FAQ asks bots to stay
    # around 30 (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this).
    bot_requests_per_second: StrictFloat | StrictInt = 30

    @field_validator("bot_requests_per_second")
    @classmethod
    def _check_bot_rate(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0", "30 is what Telegram allows a bot")
        return value

    @field_validator("bot_token")
    @classmethod
    def _check_bot_token(cls, token: SecretStr) -> SecretStr:
        value = _secret_text(
            token, "paste the token @BotFather gave you, or set ANYCODE_TELEGRAM_BOT_TOKEN"
        )
        if not _TELEGRAM_TOKEN.fullmatch(value):
            raise _invalid(
                "does not look like a Telegram bot token (<bot id>:<secret>, like 123456789:AA…)",
                "copy the whole token from @BotFather (/mybots → API Token)",
            )
        return SecretStr(value)

    @field_validator("api_base_url")
    @classmethod
    def _check_api_base_url(cls, value: str) -> str:
        url = _check_base_url(value, TELEGRAM_API_BASE_URL)
        # A URL ending in /bot<token> would put the token in logs and in check-config's output.
        if re.search(r"/bot[0-9]+:", url):
            raise _invalid(
                "must not contain the bot token",
                f"give only the server address, like {TELEGRAM_API_BASE_URL}; "
                "the token goes in bot_token",
            )
        return url

    @field_validator("poll_timeout")
    @classmethod
    def _check_poll_timeout(cls, value: int) -> int:
        if not 1 <= value <= 50:
            raise _invalid(
                "must be between 1 and 50 seconds",
                "the Bot API holds a long poll for at most 50 s; 30 is a good value",
            )
        return value


class SlackConfig(_Section):
    """`[slack]`: a Socket Mode app (app-level token) that posts with its bot token."""

    app_token: SecretStr
    bot_token: SecretStr
    allowed_users: tuple[SlackUserId, ...] = ()
    allow_everyone: StrictBool = False
    admins: tuple[SlackUserId, ...] = ()
    api_base_url: str = SLACK_API_BASE_URL

    @field_validator("app_token")
    @classmethod
    def _check_app_token(cls, token: SecretStr) -> SecretStr:
        fix = "use the App-Level Token (Basic Information → App-Level Tokens, connections:write)"
        value = _secret_text(token, f"{fix}, or set ANYCODE_SLACK_APP_TOKEN")
        if value.startswith("xoxb-"):
            raise _invalid("must start with xapp- (this is the bot token)", fix)
        if not value.startswith("xapp-"):
            raise _invalid("must start with xapp-", fix)
        return SecretStr(value)

    @field_validator("bot_token")
    @classmethod
    def _check_bot_token(cls, token: SecretStr) -> SecretStr:
        fix = "use the Bot User OAuth Token (OAuth & Permissions, scope chat:write)"
        value = _secret_text(token, f"{fix}, or set ANYCODE_SLACK_BOT_TOKEN")
        if value.startswith("xapp-"):
            raise _invalid("must start with xoxb- (this is the app-level token)", fix)
        if not value.startswith("xoxb-"):
            raise _invalid("must start with xoxb-", fix)
        return SecretStr(value)

    @field_validator("api_base_url")
    @classmethod
    def _check_api_base_url(cls, value: str) -> str:
        return _check_base_url(value, SLACK_API_BASE_URL)


# --- sandboxes ---------------------------------------------------------------------------------


class SandboxConfig(_Section):
    """`[sandbox]`: where agents run and how the daemon talks to them."""

    provider: ProviderName = "docker"
    protocol: AgentProtocol = "sandbox-agent"
    acpx_permissions: AcpxPermissions = "approve-all"

    @field_validator("protocol", mode="before")
    @classmethod
    def _opencode_is_sandbox_agent(cls, value: object) -> object:
        # The original called the sandbox-agent protocol "opencode"; old configs keep working.
        return "sandbox-agent" if value == "opencode" else value


def _memory_bytes(text: str) -> int | None:
    match = _DOCKER_MEMORY.fullmatch(text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])


class DockerConfig(_Section):
    """`[docker]`: local containers, one per session, hardened and limited by default.

    The provider starts each container with `cap_drop=["ALL"]` plus `cap_add`, and applies
    `memory` (`memory_bytes`), `cpus` and `pids_limit`, where 0 means no limit. Host ports come
    from `[port_range_start, port_range_end)` and are published on 127.0.0.1 only; with both set
    to 0 (`ephemeral_ports`) Docker picks a free ephemeral port for each sandbox instead.
    """

    image: str = "anycode-sandbox:latest"
    port_range_start: StrictInt = 12000
    # Validated even when defaulted, so a start moved above the default end is caught.
    port_range_end: StrictInt = Field(default=12100, validate_default=True)
    network: str = "bridge"
    memory: str = "4g"
    cpus: StrictFloat = 2.0
    pids_limit: StrictInt = 1024
    cap_add: tuple[Capability, ...] = _DEFAULT_CAPABILITIES

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str) -> str:
        return _non_empty_text(value)

    @field_validator("port_range_start", "port_range_end")
    @classmethod
    def _check_ports(cls, value: int) -> int:
        # 0 passes here; _check_port_range accepts it only as the pair 0, 0 (Docker picks).
        return value if value == 0 else _check_port(value)

    @field_validator("network")
    @classmethod
    def _check_network(cls, value: str) -> str:
        network = _non_empty_text(value)
        if network == "host":
            raise _invalid(
                'must not be "host": every sandbox listens on 2468, so a second one would collide',
                'use "bridge" or a user-defined bridge network',
            )
        if network == "none":
            raise _invalid(
                'must not be "none": the daemon reaches the sandbox through a published port',
                'use "bridge" or a user-defined bridge network',
            )
        return network

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, value: str) -> str:
        size = _memory_bytes(value)
        if size is None:
            raise _invalid("must be a size like 4g, 512m or 0 (no limit)")
        if 0 < size < _DOCKER_MIN_MEMORY_BYTES:
            raise _invalid("must be at least 6m (Docker's minimum) or 0 (no limit)")
        return value.strip().lower()

    @field_validator("cpus")
    @classmethod
    def _check_cpus(cls, value: float) -> float:
        if value != 0 and value < 0.01:
            raise _invalid("must be 0 (no limit) or at least 0.01")
        return value

    @field_validator("pids_limit")
    @classmethod
    def _check_pids_limit(cls, value: int) -> int:
        if value < 0:
            raise _invalid("must be 0 (no limit) or a positive number of processes")
        return value

    @field_validator("port_range_end")
    @classmethod
    def _check_port_range(cls, end: int, info: ValidationInfo) -> int:
        # A field check, not a model check, so it runs even when other [docker] keys are wrong.
        start = info.data.get("port_range_start")
        if start == 0 and end == 0:
            return end
        if start == 0 or end == 0:
            raise _invalid(
                "0 (Docker picks a free port) needs both port_range_start and port_range_end = 0",
                "set both to 0, or give a range of TCP ports like 12000 and 12100",
            )
        if isinstance(start, int) and start >= end:
            raise _invalid(
                f"must be greater than port_range_start ({end} <= {start})",
                "sandboxes get host ports from port_range_start up to, not including, this",
            )
        return end

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes; 0 means no limit."""
        return _memory_bytes(self.memory) or 0

    @property
    def ephemeral_ports(self) -> bool:
        """Whether Docker picks each sandbox's host port (the range is 0, 0) instead of us."""
        return self.port_range_start == 0 and self.port_range_end == 0


class EcsConfig(_Section):
    """`[ecs]`: one Fargate task per session (only read when `sandbox.provider = "ecs"`)."""

    cluster: str = ""
    task_definition: str = ""
    subnets: tuple[SubnetId, ...] = ()
    security_groups: tuple[SecurityGroupId, ...] = ()
    # Off by default: the daemon talks to sandbox-agent over plain HTTP, which must stay inside
    # the VPC; a public IP is for a daemon outside it and is warned about.
    assign_public_ip: StrictBool = False
    container_port: StrictInt = 2468
    startup_timeout_secs: StrictInt = 120
    poll_interval_ms: StrictInt = 1000
    region: OptionalText = None
    platform_version: OptionalText = None
    container_name: OptionalText = None
    log_group: OptionalText = None
    log_stream_prefix: OptionalText = None

    @field_validator("container_port")
    @classmethod
    def _check_container_port(cls, value: int) -> int:
        return _check_port(value)

    @field_validator("startup_timeout_secs")
    @classmethod
    def _check_startup_timeout(cls, value: int) -> int:
        if value < 1:
            raise _invalid(
                "must be at least 1 second", "Fargate tasks usually need 30–90 s; 120 is safe"
            )
        return value

    @field_validator("poll_interval_ms")
    @classmethod
    def _check_poll_interval(cls, value: int) -> int:
        if value < 250:
            raise _invalid(
                "must be at least 250 ms", "DescribeTasks is rate limited; 1000 is plenty"
            )
        return value

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        if value is not None and not _AWS_REGION.fullmatch(value.strip()):
            raise _invalid(f"{value!r} is not an AWS region", 'regions look like "us-west-2"')
        return value.strip() if value is not None else None


class LocalConfig(_Section):
    """`[local]`: agents run as local processes, one work folder per session. No isolation.

    `allow_unsandboxed` must be true for `sandbox.provider = "local"`: it is the operator saying
    that agents may run as this user, with everything this user can read and change.
    """

    workdir: ConfigPath = Field(default=Path("anycode-work"), validate_default=True)
    allow_unsandboxed: StrictBool = False


# --- the rest ----------------------------------------------------------------------------------


class DatabaseConfig(_Section):
    """`[database]`: the SQLite file."""

    path: DatabasePath = Field(default=Path("anycode.db"), validate_default=True)
    # Ended sessions' events and interactions are deleted this many days after they ended.
    retention_days: StrictInt = 30

    @field_validator("retention_days")
    @classmethod
    def _check_retention(cls, value: int) -> int:
        if value < 1:
            raise _invalid(
                "must be at least 1 day", "30 keeps a month of audit trail for ended sessions"
            )
        return value


class AgentConfig(_Section):
    """One agent: its credentials and how to launch it under each protocol.

    `env` holds every credential, including those copied from the daemon's environment by
    `pass_env` at load time. A launch field left unset means the agent cannot run under that
    protocol: `sandbox_agent_id` for sandbox-agent, `acp_command` for acp, and for acpx
    `acpx_agent` (a name acpx knows) or else `acp_command` (given to acpx as a raw command).
    """

    env: dict[EnvName, Credential] = Field(default_factory=dict)
    pass_env: tuple[EnvName, ...] = ()
    sandbox_agent_id: str | None = None
    acp_command: tuple[CommandArgument, ...] = ()
    acpx_agent: str | None = None

    @field_validator("sandbox_agent_id")
    @classmethod
    def _check_sandbox_agent_id(cls, value: str | None) -> str | None:
        if value is not None and not _AGENT_ID.fullmatch(value):
            raise _invalid(
                f"{value!r} is not a sandbox-agent agent id",
                "use an id from sandbox-agent's GET /v1/agents, e.g. claude, codex, opencode, amp",
            )
        return value

    @field_validator("acpx_agent")
    @classmethod
    def _check_acpx_agent(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise _invalid(
                "must be one word, an agent name acpx knows (claude, codex, …)",
                "for a command with arguments leave acpx_agent unset and set acp_command",
            )
        return value

    def supports(self, protocol: AgentProtocol) -> bool:
        """Whether this agent can run under `protocol` with these settings."""
        if protocol == "sandbox-agent":
            return self.sandbox_agent_id is not None
        if protocol == "acp":
            return bool(self.acp_command)
        return self.acpx_agent is not None or bool(self.acp_command)

    def env_values(self) -> dict[str, str]:
        """The credentials as plain text, for injection into a sandbox. Never log the result."""
        return {name: value.get_secret_value() for name, value in self.env.items()}


def builtin_agents() -> dict[str, AgentConfig]:
    """The agents known when none is configured (the original's claude-code, codex, goose)."""
    return {name: _builtin_agent(name) for name in _BUILTIN_LAUNCH}


def _builtin_agent(name: str) -> AgentConfig:
    sandbox_agent_id, acp_command, acpx_agent = _BUILTIN_LAUNCH[name]
    return AgentConfig(
        sandbox_agent_id=sandbox_agent_id, acp_command=acp_command, acpx_agent=acpx_agent
    )


class AgentsConfig(_Section):
    """`[agents]`: the default agent and every agent `/task` accepts.

    In the file each agent is a table `[agents.<name>]` (or the original's
    `[agents.credentials.<name>] env = {...}`); `definitions` holds them all by name, with the
    built-in launch settings of claude-code, codex and goose filled in.
    """

    # definitions comes first so that default_agent's check can see it.
    definitions: dict[str, AgentConfig] = Field(default_factory=builtin_agents)
    default_agent: str = Field(default=DEFAULT_AGENT, validate_default=True)

    @field_validator("default_agent")
    @classmethod
    def _default_agent_is_known(cls, name: str, info: ValidationInfo) -> str:
        definitions = info.data.get("definitions")
        if isinstance(definitions, dict):
            known = sorted(definitions)
        else:
            # Some agent table is invalid; the loader still knows every agent's name.
            context = info.context if isinstance(info.context, Mapping) else {}
            names = context.get("agent_names")
            if not isinstance(names, tuple):
                return name
            known = sorted(names)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise _invalid(
                f"{name!r} is not a configured agent",
                f"{hint}known agents: {', '.join(known)}; or add an [agents.{name}] table",
            )
        return name

    def known(self) -> tuple[str, ...]:
        """Agent names `/task <agent> …` accepts, sorted (as the original's /agents listed them)."""
        return tuple(sorted(self.definitions))


class GithubConfig(_Section):
    """`[github]`: a token given to every sandbox as GITHUB_TOKEN (git clone, gh)."""

    token: SecretStr

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: SecretStr) -> SecretStr:
        return SecretStr(_secret_text(token, "paste a GitHub token, or set ANYCODE_GITHUB_TOKEN"))


class SessionConfig(_Section):
    """`[session]`: limits and pacing of agent sessions."""

    max_concurrent: StrictInt = 5
    # Minutes may be fractional (0.5 = 30 s), which tests and short-lived demos use.
    timeout_minutes: StrictFloat | StrictInt = 30
    debounce_ms: StrictInt = 500
    idle_minutes: StrictFloat | StrictInt = 10
    max_upload_mb: StrictInt = 20
    # Per turn, besides the per-file limit: how many files and how many MB in all.
    max_upload_files: StrictInt = 20
    max_upload_total_mb: StrictInt = 50
    # Follow-ups waiting for the agent's turn to end; past this the sender is told.
    max_queued_follow_ups: StrictInt = 10
    # A chat with no live session is forgotten (its actors stopped) after this long.
    chat_idle_minutes: StrictFloat | StrictInt = 10

    @field_validator("max_upload_files", "max_upload_total_mb", "max_queued_follow_ups")
    @classmethod
    def _check_at_least_one(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1")
        return value

    @field_validator("max_concurrent")
    @classmethod
    def _check_max_concurrent(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1", "it is the number of active sessions per chat")
        return value

    @field_validator("chat_idle_minutes")
    @classmethod
    def _check_chat_idle(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0 minutes", "10 keeps a quiet chat for a while")
        return value

    @field_validator("timeout_minutes")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0 minutes", "30 gives an agent half an hour")
        return value

    @field_validator("idle_minutes")
    @classmethod
    def _check_idle(cls, value: float) -> float:
        if value < 0:
            raise _invalid(
                "must be 0 or more minutes",
                "0 ends a session as soon as the agent's turn ends; 10 waits for a follow-up",
            )
        return value

    @field_validator("max_upload_mb")
    @classmethod
    def _check_upload(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1", "Telegram bots may upload up to 50 MB")
        return value

    @field_validator("debounce_ms")
    @classmethod
    def _check_debounce(cls, value: int) -> int:
        if value <= 0:
            raise _invalid(
                "must be greater than 0", "500 keeps edits under the chat platforms' rate limits"
            )
        return value


class LimitsConfig(_Section):
    """`[limits]`: what one person, and the daemon as a whole, may use.

    Counted from the store, so a restart does not reset them. A user is one platform's user id
    (a person on Telegram and on Slack counts twice).
    """

    max_sessions_per_user: StrictInt = 3
    max_sessions_total: StrictInt = 10
    max_tasks_per_user_per_day: StrictInt = 50
    # Commands and messages per user: a token bucket of `command_burst` refilled at this rate.
    commands_per_second: StrictFloat = 1.0
    command_burst: StrictInt = 5

    @field_validator(
        "max_sessions_per_user", "max_sessions_total", "max_tasks_per_user_per_day", "command_burst"
    )
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1")
        return value

    @field_validator("commands_per_second")
    @classmethod
    def _check_rate(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0", "1 command per second is plenty for a person")
        return value


class AdminConfig(_Section):
    """`[admin]`: where the daemon serves the live actor tree to `anycode tree`.

    Always on the local Unix `socket` (mode 0600: its file permissions are the access control).
    On a network address only when `listen` ("host:port") is set, and then every request must
    carry `token`, because a TCP port has no file permissions.
    """

    socket: SocketPath = Field(default=Path("anycode.sock"), validate_default=True)
    listen: OptionalText = None
    # Validated even when absent, so a listen without a token is caught.
    token: SecretStr | None = Field(default=None, validate_default=True)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.strip().rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        bare = host[1:-1] if bracketed else host
        if not bare or not port.isdigit() or (":" in bare) != bracketed or "[" in bare:
            raise _invalid(
                f"must be host:port, like 127.0.0.1:7070, not {value!r}",
                "write an IPv6 address in brackets: [::1]:7070; remove listen to stay local",
            )
        _check_port(int(port))
        return value.strip()

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        fix = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        if token is None:
            if info.data.get("listen") is not None:
                raise _invalid("is required when admin.listen is set", fix)
            return None
        value = _secret_text(token, fix)
        if len(value) < _MIN_ADMIN_TOKEN_CHARS:
            raise _invalid(f"must be at least {_MIN_ADMIN_TOKEN_CHARS} characters", fix)
        return SecretStr(value)


class Config(BaseModel):
    """The whole configuration. Frozen; build it with `load_config` and pass it down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    telegram: TelegramConfig | None = None
    slack: SlackConfig | None = None
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)
    ecs: EcsConfig = Field(default_factory=EcsConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    github: GithubConfig | None = None
    session: SessionConfig = Field(default_factory=SessionConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)

    @model_validator(mode="after")
    def _cross_section_rules(self) -> Config:
        problems = _cross_section_problems(
            has_platform=self.telegram is not None or self.slack is not None,
            sandbox=self.sandbox,
            ecs=self.ecs.model_dump(),
            agents=self.agents,
            local=self.local,
        )
        if problems:
            raise ConfigError(problems)
        return self

    def platforms(self) -> tuple[str, ...]:
        """The configured chat platforms, e.g. `("telegram",)`."""
        return tuple(name for name in ("telegram", "slack") if getattr(self, name) is not None)

    def access_problems(self) -> list[ConfigProblem]:
        """Why the daemon must not start as configured: a platform that would let anyone in.

        Kept out of validation so that tools (and tests) can still build such a config; `anycode
        run` and `check-config` refuse it.
        """
        problems = []
        for name in self.platforms():
            section = getattr(self, name)
            # Admins are let in too: a bot for its admins alone is not open to strangers.
            if not (section.allowed_users or section.admins or section.allow_everyone):
                problems.append(
                    ConfigProblem(
                        f"{name}.allowed_users",
                        "is empty, so anyone who finds the bot could run agents with your "
                        "credentials; the daemon refuses to start like this",
                        f"list the user ids that may use the bot in [{name}] allowed_users, or "
                        f"set allow_everyone = true in [{name}] to let anyone in on purpose",
                    )
                )
        return problems

    def known_agents(self) -> tuple[str, ...]:
        """Agent names `/task` accepts: the configured ones, or claude-code, codex, goose."""
        return self.agents.known()

    def agent(self, name: str) -> AgentConfig:
        """The settings of agent `name`; KeyError if it is not a known agent."""
        try:
            return self.agents.definitions[name]
        except KeyError:
            raise KeyError(
                f"unknown agent {name!r}; known: {', '.join(self.known_agents())}"
            ) from None

    def sandbox_env(self, agent: str) -> dict[str, str]:
        """Plain-text credentials to inject into `agent`'s sandbox: its env plus GITHUB_TOKEN.

        The agent's own GITHUB_TOKEN wins over `[github]`, as in the original. The provider adds
        the ANYCODE_* variables itself. Never log the result.
        """
        env = self.agent(agent).env_values()
        if self.github is not None:
            env.setdefault("GITHUB_TOKEN", self.github.token.get_secret_value())
        return env

    def redacted(self) -> dict[str, Any]:
        """Plain data (dicts, lists, scalars) of the whole config with every secret masked."""
        return cast(dict[str, Any], _redact(self.model_dump()))

    def effective_toml(self) -> str:
        """The effective config as TOML text: defaults filled in, secrets masked."""
        data = self.redacted()
        agents = data["agents"]
        data["agents"] = {"default_agent": agents["default_agent"], **agents["definitions"]}
        lines = ["# Effective configuration: defaults filled in, secrets redacted."]
        for section, table in data.items():
            if table is None:
                lines += ["", f"# [{section}] is not configured"]
            else:
                _emit_table((section,), table, lines)
        return "\n".join(lines) + "\n"


def _cross_section_problems(
    *,
    has_platform: bool,
    sandbox: SandboxConfig | None,
    ecs: Mapping[str, object] | None,
    agents: AgentsConfig | None,
    local: LocalConfig | None,
) -> list[ConfigProblem]:
    """Rules that span sections; each runs when the sections it reads are valid themselves.

    `ecs` is the table's values, validated or raw: a required key is missing either way.
    """
    problems = []
    if not has_platform:
        problems.append(
            ConfigProblem(
                "telegram/slack",
                "at least one messaging platform must be configured (telegram or slack)",
                "add a [telegram] section with bot_token (or set ANYCODE_TELEGRAM_BOT_TOKEN), "
                "or a [slack] section with app_token and bot_token",
            )
        )
    if sandbox is not None and sandbox.provider == "ecs":
        if sandbox.protocol in ("acp", "acpx"):
            problems.append(
                ConfigProblem(
                    "sandbox.protocol",
                    f'"{sandbox.protocol}" runs the agent through exec inside the sandbox, '
                    "which the ecs provider cannot do (ECS exec is not supported)",
                    'use protocol = "sandbox-agent" with ecs, or provider = "docker" or "local"',
                )
            )
        if ecs is not None:
            required = (
                ("cluster", "the name or ARN of the ECS cluster that runs sandboxes"),
                ("task_definition", 'family:revision or ARN, like "anycode-task:1"'),
                ("subnets", 'at least one subnet for the tasks, like ["subnet-0abc123"]'),
            )
            problems.extend(
                ConfigProblem(f"ecs.{key}", 'is required when sandbox.provider = "ecs"', fix)
                for key, fix in required
                if not ecs.get(key)
            )
    if (
        sandbox is not None
        and sandbox.provider == "local"
        and local is not None
        and not local.allow_unsandboxed
    ):
        problems.append(
            ConfigProblem(
                "local.allow_unsandboxed",
                'must be true when sandbox.provider = "local": the local provider runs agents as '
                "plain processes of this user, with no container, so an agent can read and change "
                "anything this user can (files, keys, other projects)",
                "for development and demos only, set allow_unsandboxed = true in [local]; "
                'otherwise use provider = "docker"',
            )
        )
    if sandbox is not None and agents is not None and agents.default_agent in agents.definitions:
        name = agents.default_agent
        if not agents.definitions[name].supports(sandbox.protocol):
            needs = {
                "sandbox-agent": "sandbox_agent_id",
                "acp": "acp_command",
                "acpx": "acpx_agent or acp_command",
            }[sandbox.protocol]
            problems.append(
                ConfigProblem(
                    "agents.default_agent",
                    f'{name} cannot run with sandbox.protocol = "{sandbox.protocol}" '
                    f"(it has no {needs})",
                    f"set {needs} in [agents.{name}], or pick another default_agent or protocol",
                )
            )
    return problems


# --- redaction and the effective-config dump ---------------------------------------------------


def _redact(value: object) -> object:
    if isinstance(value, SecretStr):
        return mask_secret(value.get_secret_value())
    if isinstance(value, Mapping):
        return {str(key): _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_key(key: str) -> str:
    return key if _TOML_BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _emit_table(path: tuple[str, ...], table: dict[str, Any], lines: list[str]) -> None:
    lines += ["", "[" + ".".join(_toml_key(part) for part in path) + "]"]
    subtables = []
    for key, value in table.items():
        # A table of tables (an agent definition) gets its own header; a flat one (env) is inline.
        if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            subtables.append((key, value))
        elif value is None:
            lines.append(f"# {_toml_key(key)} is not set")
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        _emit_table((*path, key), value, lines)


# --- loading -----------------------------------------------------------------------------------

_SECTIONS: Final[Mapping[str, type[BaseModel]]] = MappingProxyType(
    {
        "telegram": TelegramConfig,
        "slack": SlackConfig,
        "sandbox": SandboxConfig,
        "docker": DockerConfig,
        "ecs": EcsConfig,
        "local": LocalConfig,
        "database": DatabaseConfig,
        "agents": AgentsConfig,
        "github": GithubConfig,
        "session": SessionConfig,
        "limits": LimitsConfig,
        "admin": AdminConfig,
    }
)
_OPTIONAL_SECTIONS: Final = frozenset({"telegram", "slack", "github"})
_AGENTS_RESERVED_KEYS: Final = ("default_agent", "credentials")

_TYPE_MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "missing": "is required",
        "string_type": "must be a string (in double quotes)",
        "int_type": "must be a whole number",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "list_type": 'must be a list, like ["a", "b"]',
        "tuple_type": 'must be a list, like ["a", "b"]',
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "path_type": "must be a path (a string)",
    }
)


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate a config file. Relative paths in it count from the file's folder.

    `environ` defaults to `os.environ`; it supplies secrets (`SECRET_ENV_VARS`), the variables
    named by `pass_env` and `HOME` for `~` in paths. Raises `ConfigError` with every problem.
    """
    file = Path(path)
    source = str(file)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        fix = "copy config.example.toml to config.toml and edit it, or pass the right path"
        raise ConfigError([ConfigProblem(source, "file not found", fix)], source) from None
    except UnicodeDecodeError as exc:
        problem = ConfigProblem(
            source, f"is not UTF-8 text (byte {exc.start})", "save the file as UTF-8"
        )
        raise ConfigError([problem], source) from None
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(source, f"cannot be read: {exc.strerror}")], source
        ) from None
    return parse_config(text, environ=environ, base_dir=file.absolute().parent, source=source)


def parse_config(
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    source: str = "config",
) -> Config:
    """Validate config TOML text. Without `base_dir`, relative paths stay relative."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(exc)], source) from None
    return config_from_mapping(data, environ=environ, base_dir=base_dir, source=source)


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    source: str = "config",
) -> Config:
    """Validate already-parsed TOML data (nested dicts, as tomllib returns them)."""
    loader = _Loader(os.environ if environ is None else environ, base_dir)
    return loader.load(data, source)


def _syntax_problem(exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    # tomllib's messages name a position, never the text there (which could be a token).
    message = str(exc)
    position = _TOML_POSITION.search(message)
    where = f"line {position.group(1)}, column {position.group(2)}" if position else ""
    reason = _TOML_POSITION.sub("", message)
    return ConfigProblem(
        where,
        f"invalid TOML: {reason}",
        'check that line: strings need "double quotes", each key appears once per table',
    )


def _suggest(word: str, candidates: object) -> str | None:
    names = [str(c) for c in candidates] if isinstance(candidates, list | tuple | Mapping) else []
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return close[0] if close else None


def _sections_with_key(key: str) -> list[str]:
    found = [name for name, model in _SECTIONS.items() if key in model.model_fields]
    if key in AgentConfig.model_fields:
        found.append("agents.<name>")
    return found


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that validates the table at `loc` (for did-you-mean on unknown keys)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _unwrap_optional(field.annotation)
        elif get_origin(current) is dict:
            current = _unwrap_optional(get_args(current)[1])
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                return arg
    return annotation


def _format_path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":
            continue  # pydantic's marker for "the key itself is invalid", not a path step
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _toml_key(part)
    return text


class _Loader:
    """One load: collects problems from every stage so that all are reported together."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path | None) -> None:
        self._environ = environ
        self._base_dir = base_dir
        self._problems: list[ConfigProblem] = []
        # (section, key) → the environment variable that supplied its value.
        self._env_sources: dict[tuple[str, str], str] = {}
        # Agent name → its table's path in the file (plain or the original credentials form).
        self._agent_origins: dict[str, tuple[str, ...]] = {}

    def load(self, data: Mapping[str, Any], source: str) -> Config:
        raw = copy.deepcopy(dict(data))
        self._apply_env(raw)
        self._drop_unknown_sections(raw)
        if isinstance(raw.get("agents"), dict):
            raw["agents"] = self._normalise_agents(raw["agents"])

        context = {
            "base_dir": self._base_dir,
            "home": self._environ.get("HOME"),
            "agent_names": tuple(self._agent_origins) or tuple(_BUILTIN_LAUNCH),
        }
        sections: dict[str, BaseModel | None] = {}
        for name, model in _SECTIONS.items():
            if name not in raw and name in _OPTIONAL_SECTIONS:
                sections[name] = None
                continue
            try:
                sections[name] = model.model_validate(raw.get(name, {}), context=context)
            except ValidationError as exc:
                sections[name] = None
                self._problems.extend(self._translate(name, model, exc))

        self._problems.extend(
            _cross_section_problems(
                has_platform="telegram" in raw or "slack" in raw,
                sandbox=_as(sections["sandbox"], SandboxConfig),
                ecs=raw["ecs"] if isinstance(raw.get("ecs"), dict) else {},
                agents=_as(sections["agents"], AgentsConfig),
                local=_as(sections["local"], LocalConfig),
            )
        )
        if self._problems:
            raise ConfigError(_in_section_order(self._problems), source)
        return Config.model_validate(sections)

    def _apply_env(self, raw: dict[str, Any]) -> None:
        for variable, (section, key) in SECRET_ENV_VARS.items():
            value = self._environ.get(variable, "")
            # An empty variable counts as unset, as `VAR=` in env files usually means "no value".
            if not value:
                continue
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = value
                self._env_sources[(section, key)] = variable

    def _drop_unknown_sections(self, raw: dict[str, Any]) -> None:
        for key in [k for k in raw if k not in _SECTIONS]:
            value = raw.pop(key)
            close = _suggest(key, list(_SECTIONS))
            homes = _sections_with_key(key)
            if isinstance(value, dict):
                message = f"unknown section [{key}]" + (
                    f"; did you mean [{close}]?" if close else ""
                )
                fix = f"known sections: {', '.join(_SECTIONS)}"
            else:
                message = "unknown key at the top level"
                if homes:
                    fix = (
                        f"move it under [{homes[0]}] (keys above the first [header] are top-level)"
                    )
                else:
                    fix = f"keys belong in sections: {', '.join(_SECTIONS)}"
            self._problems.append(ConfigProblem(_format_path((key,)), message, fix))

    def _normalise_agents(self, table: dict[str, Any]) -> dict[str, Any]:
        """Turn `[agents]` as written (both forms) into AgentsConfig's shape.

        Agents named like the original's get its launch settings for keys they leave out; other
        agents default to their own name as sandbox-agent id and acpx agent name.
        """
        definitions: dict[str, Any] = {}
        credentials = table.get("credentials", {})
        if isinstance(credentials, dict):
            for name, entry in credentials.items():
                self._add_agent(definitions, name, entry, ("agents", "credentials", name))
        else:
            self._problems.append(
                ConfigProblem(
                    "agents.credentials",
                    "must be a table",
                    "write [agents.credentials.<name>] tables",
                )
            )
        for key, value in table.items():
            if key in _AGENTS_RESERVED_KEYS:
                continue
            if not isinstance(value, dict):
                close = _suggest(key, list(_AGENTS_RESERVED_KEYS))
                message = "unknown key" + (f"; did you mean {close}?" if close else "")
                fix = "agents are tables: [agents.<name>]; other keys: default_agent, credentials"
                self._problems.append(ConfigProblem(_format_path(("agents", key)), message, fix))
                continue
            if _suggest(key, ["credentials"]) and not set(value) & set(AgentConfig.model_fields):
                self._problems.append(
                    ConfigProblem(
                        _format_path(("agents", key)),
                        "unknown key; did you mean credentials?",
                        "the original form is [agents.credentials.<name>]",
                    )
                )
                continue
            if key in definitions:
                self._problems.append(
                    ConfigProblem(
                        _format_path(("agents", key)),
                        f"agent {key} is configured twice, here and in [agents.credentials.{key}]",
                        f"move env into [agents.{key}] and delete [agents.credentials.{key}]",
                    )
                )
                continue
            self._add_agent(definitions, key, value, ("agents", key))

        normalised: dict[str, Any] = {}
        if "default_agent" in table:
            normalised["default_agent"] = table["default_agent"]
        if definitions:
            normalised["definitions"] = definitions
        return normalised

    def _add_agent(
        self, definitions: dict[str, Any], name: str, entry: Any, origin: tuple[str, ...]
    ) -> None:
        if not _AGENT_NAME.fullmatch(name):
            self._problems.append(
                ConfigProblem(
                    _format_path(origin),
                    "is not a valid agent name",
                    "use up to 32 lowercase letters, digits, - and _ (it is typed after /task)",
                )
            )
            return
        self._agent_origins[name] = origin
        if not isinstance(entry, dict):
            definitions[name] = entry
            return
        launch = _BUILTIN_LAUNCH.get(name, (name, (), name))
        defaults = dict(zip(("sandbox_agent_id", "acp_command", "acpx_agent"), launch, strict=True))
        merged = {
            key: value for key, value in defaults.items() if value is not None and value != ()
        }
        merged.update(entry)
        self._pass_env(merged, origin)
        definitions[name] = merged

    def _pass_env(self, entry: dict[str, Any], origin: tuple[str, ...]) -> None:
        """Copy the daemon's variables named by `pass_env` into the agent's env."""
        names = entry.get("pass_env")
        env = entry.setdefault("env", {})
        if not isinstance(names, list) or not isinstance(env, dict):
            return
        for index, name in enumerate(names):
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                continue
            path = _format_path((*origin, "pass_env", index))
            if name in env:
                self._problems.append(
                    ConfigProblem(
                        path, f"{name} is also set in env", "keep it in one of env or pass_env"
                    )
                )
            elif not self._environ.get(name):
                self._problems.append(
                    ConfigProblem(
                        path,
                        f"{name} is not set in the daemon's environment",
                        f"export {name} before starting anycode, or remove it from pass_env",
                    )
                )
            else:
                env[name] = self._environ[name]

    def _translate(
        self, section: str, model: type[BaseModel], exc: ValidationError
    ) -> list[ConfigProblem]:
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            message, fix = self._describe(section, model, loc, error)
            path = self._user_path(section, loc)
            variable = self._env_sources.get((section, str(loc[0]))) if loc else None
            if variable is not None:
                message += f" (value from the environment variable {variable})"
            problems.append(ConfigProblem(path, message, fix))
        return problems

    def _describe(
        self, section: str, model: type[BaseModel], loc: tuple[str | int, ...], error: Any
    ) -> tuple[str, str]:
        """Message and fix for one pydantic error. Never includes the input of a secret."""
        kind = error["type"]
        context = error.get("ctx") or {}
        if kind == _PROBLEM:
            return str(context["message"]), str(context.get("fix", ""))
        if kind == "extra_forbidden":
            key = str(loc[-1])
            parent = _model_at(model, loc[:-1])
            close = _suggest(key, list(parent.model_fields)) if parent else None
            if close:
                return f"unknown key; did you mean {close}?", "correct the spelling"
            elsewhere = [s for s in _sections_with_key(key) if s != section]
            if elsewhere:
                return "unknown key", f"{key} belongs in [{elsewhere[0]}]"
            known = ", ".join(parent.model_fields) if parent else ""
            return "unknown key", f"known keys here: {known}" if known else ""
        if kind == "literal_error":
            # Only choice fields (provider, protocol, …) are literals, and none of them is secret.
            expected = context.get("expected", "")
            got = error.get("input")
            close = _suggest(str(got), re.findall(r"'([^']*)'", str(expected)))
            fix = f'did you mean "{close}"?' if close else ""
            choices = str(expected).replace("'", '"')
            return f"must be one of {choices} (got {got!r})", fix
        if kind == "missing":
            key = str(loc[-1]) if loc else section
            variable = next(
                (v for v, target in SECRET_ENV_VARS.items() if target == (section, key)), None
            )
            if variable and len(loc) == 1:
                return (
                    "is required",
                    f"set {key} in [{section}] or the environment variable {variable}",
                )
            return "is required", f"add {key} = … to this table"
        if kind in _TYPE_MESSAGES:
            if not loc and kind in ("dict_type", "model_type", "model_attributes_type"):
                return "must be a table", f"write it as a [{section}] section"
            return _TYPE_MESSAGES[kind], ""
        return str(error["msg"]), ""

    def _user_path(self, section: str, loc: tuple[str | int, ...]) -> str:
        """The key path as the user wrote it (agents live in `definitions` only internally)."""
        if section == "agents" and len(loc) >= 2 and loc[0] == "definitions":
            name = str(loc[1])
            origin = self._agent_origins.get(name, ("agents", name))
            return _format_path((*origin, *loc[2:]))
        return _format_path((section, *loc))


def _as(value: object, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) else None


def _in_section_order(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    order = {name: index for index, name in enumerate(_SECTIONS)}

    def section_index(problem: ConfigProblem) -> int:
        head = re.split(r"[./\[]", problem.path, maxsplit=1)[0]
        # Syntax errors and unknown sections first: they explain whatever follows.
        return order.get(head, -1)

    return sorted(problems, key=section_index)
