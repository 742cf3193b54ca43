"""Configuration: the pydantic models of config.toml, loading with validation, and writing TOML.

- `models`: one frozen model per section, `Config` for the whole, secrets as `SecretStr`.
- `loading`: `load_config`, `parse_config`, `config_from_mapping`, the legacy config format.
- `problems`: how validation errors become `ConfigProblem`s with key paths and fixes.
- `writing`: `dump_toml`, the TOML writer of `anycode setup` and `Config.effective_toml()`.

Import the public names from here: `from anycode_actors.config import Config, load_config`.
"""

from anycode_actors.config.loading import config_from_mapping, load_config, parse_config
from anycode_actors.config.models import (
    SECRET_ENV_VARS,
    AcpxPermissions,
    AdminConfig,
    AgentConfig,
    AgentProtocol,
    AgentsConfig,
    ApiConfig,
    ApiUserConfig,
    Config,
    DatabaseConfig,
    DockerConfig,
    EcsConfig,
    GithubConfig,
    GitlabConfig,
    LimitsConfig,
    LocalConfig,
    PoolConfig,
    ProviderName,
    SandboxConfig,
    SessionConfig,
    SlackConfig,
    TelegramConfig,
    builtin_agents,
    mask_secret,
)
from anycode_actors.config.writing import dump_toml
from anycode_actors.errors import ConfigError, ConfigProblem

__all__ = [
    "SECRET_ENV_VARS",
    "AcpxPermissions",
    "AdminConfig",
    "AgentConfig",
    "AgentProtocol",
    "AgentsConfig",
    "ApiConfig",
    "ApiUserConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DatabaseConfig",
    "DockerConfig",
    "EcsConfig",
    "GithubConfig",
    "GitlabConfig",
    "LimitsConfig",
    "LocalConfig",
    "PoolConfig",
    "ProviderName",
    "SandboxConfig",
    "SessionConfig",
    "SlackConfig",
    "TelegramConfig",
    "builtin_agents",
    "config_from_mapping",
    "dump_toml",
    "load_config",
    "mask_secret",
    "parse_config",
]
