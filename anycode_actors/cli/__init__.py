"""The `anycode` command line (`anycode_actors.cli:main`, also `python -m anycode_actors`).

- `app`: the parser and `main`, which dispatches to a subcommand.
- `common`: what the subcommands share (`CommandIO`, loading a runnable config, logging).
- `check_config`, `run`, `tree`, `demo`, `setup`: one module per subcommand; `client`: `task`,
  `sessions` and `cancel`, the terminal client of the HTTP API.
- `console`: the rich view of the live actor tree (`anycode tree`, `anycode run --console`).
- `demo_agent`: the scripted ACP agent `anycode demo` runs as a subprocess.

No module here imports another in a cycle: `common` imports none of the subcommands, and only
`app` imports them all (tests/test_cli.py checks this).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run `anycode` with `argv` (default: the process arguments); return the exit status.

    The parser is imported here rather than at the top so that `python -m
    anycode_actors.cli.demo_agent`, which imports this package first, stays standard library
    only.
    """
    from anycode_actors.cli.app import main as run

    return run(argv, environ=environ)
