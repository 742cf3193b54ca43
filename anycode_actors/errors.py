"""The exceptions anycode-actors raises on purpose, drawn as one tree (as httpx does).

```
AnycodeError                 base of every error this package raises deliberately
└── ConfigError              config.toml or the environment is invalid; carries every problem
```

Catch `AnycodeError` to handle anything the daemon reports on purpose; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class AnycodeError(Exception):
    """Base class of the errors anycode-actors raises deliberately."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration: where, what, and how to fix it.

    `path` is the dotted key path as written in config.toml (`slack.app_token`,
    `agents.credentials.codex.env.OPENAI_API_KEY`, `ecs.subnets[0]`), or a file position for
    syntax errors. Messages never contain secret values.
    """

    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} (fix: {self.fix})" if self.fix else text


class ConfigError(AnycodeError):
    """The configuration is invalid. `problems` lists all of them, not just the first."""

    def __init__(self, problems: Iterable[ConfigProblem], source: str = "config") -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        self.source = source
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{source} has {count} {noun}:"]
        lines.extend(f"  - {problem}" for problem in self.problems)
        super().__init__("\n".join(lines))
