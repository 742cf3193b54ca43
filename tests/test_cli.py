"""The `anycode` command line: check-config, --help, --version, exit codes, its module graph."""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from anycode_actors import __version__
from anycode_actors.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
SECRET = TOKEN.split(":")[1]
SLACK_TOKENS = 'app_token = "xapp-1-A0000-0000-abcdef"\nbot_token = "xoxb-0000_0000_abcdef"\n'
# A platform section with nobody allowed in, which `check-config` and `run` refuse.
OPEN_SECTIONS = {
    "telegram": f'[telegram]\nbot_token = "{TOKEN}"\n',
    "slack": f"[slack]\n{SLACK_TOKENS}",
}


def write_config(tmp_path: Path, text: str) -> str:
    file = tmp_path / "config.toml"
    file.write_text(text)
    return str(file)


def test_check_config_prints_the_effective_config_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f'[telegram]\nbot_token = "{TOKEN}"\nallowed_users = [1]\n')
    assert main(["check-config", path], environ={}) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"✓ {path} is valid\n")
    assert "chat      telegram (1 allowed user)" in out
    assert "agents    claude-code (default), codex, goose (cannot run with sandbox-agent)" in out
    assert 'bot_token = "123456:…(redacted, 41 chars)"' in out
    assert SECRET not in out


def test_check_config_output_contains_the_effective_config_as_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f'[telegram]\nbot_token = "{TOKEN}"\nallowed_users = [1]\n')
    assert main(["check-config", path], environ={}) == 0
    out = capsys.readouterr().out
    dumped = tomllib.loads(out[out.index("# Effective configuration") :])
    assert dumped["session"]["debounce_ms"] == 500
    assert dumped["database"]["path"] == str(tmp_path / "anycode.db")
    assert dumped["telegram"]["allow_everyone"] is False
    assert dumped["limits"]["max_sessions_per_user"] == 3


def assert_refused_for_an_empty_allow_list(err: str, path: str, platform: str) -> None:
    lines = err.splitlines()
    assert lines[0] == f"✗ {path} has 1 problem:"
    assert lines[1].startswith(f"  • {platform}.allowed_users: is empty, so anyone who finds")
    assert "refuses to start" in lines[1]
    assert lines[2].startswith("      fix: list the user ids")
    assert f"[{platform}] allowed_users" in lines[2]
    assert f"allow_everyone = true in [{platform}]" in lines[2]


@pytest.mark.parametrize("platform", ["telegram", "slack"])
def test_check_config_refuses_an_empty_allow_list_and_names_both_ways_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], platform: str
) -> None:
    path = write_config(tmp_path, OPEN_SECTIONS[platform])
    assert main(["check-config", path], environ={}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_refused_for_an_empty_allow_list(err, path, platform)
    assert SECRET not in err


def test_check_config_reports_every_platform_without_an_allow_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, OPEN_SECTIONS["telegram"] + OPEN_SECTIONS["slack"])
    assert main(["check-config", path], environ={}) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"✗ {path} has 2 problems:"
    assert "  • telegram.allowed_users: is empty" in err
    assert "  • slack.allowed_users: is empty" in err


@pytest.mark.parametrize("platform", ["telegram", "slack"])
def test_run_refuses_an_empty_allow_list_before_starting_anything(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    platform: str,
) -> None:
    import anycode_actors.cli.run as run
    import anycode_actors.daemon as daemon

    def must_not_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("the daemon was started")

    monkeypatch.setattr(daemon, "run_until_signalled", must_not_start)
    monkeypatch.setattr(run, "configure_logging", must_not_start)
    path = write_config(tmp_path, OPEN_SECTIONS[platform])
    assert main(["run", "--config", path], environ={}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_refused_for_an_empty_allow_list(err, path, platform)
    # Neither the database nor the admin socket was created next to the config.
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_run_with_console_refuses_an_empty_allow_list_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, OPEN_SECTIONS["telegram"])
    assert main(["run", "--console", "--config", path], environ={}) == 1
    assert "telegram.allowed_users: is empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


@pytest.mark.parametrize("platform", ["telegram", "slack"])
def test_check_config_with_allow_everyone_passes_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], platform: str
) -> None:
    path = write_config(tmp_path, OPEN_SECTIONS[platform] + "allow_everyone = true\n")
    assert main(["check-config", path], environ={}) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"chat      {platform} (anyone)" in out
    assert (
        f"! {platform}.allow_everyone is true: anyone who can message the bot can run agents "
        "with your credentials"
    ) in out


def test_check_config_with_an_allow_list_does_not_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, OPEN_SECTIONS["telegram"] + "allowed_users = [1, 2]\n")
    assert main(["check-config", path], environ={}) == 0
    out = capsys.readouterr().out
    assert "chat      telegram (2 allowed users)" in out
    assert "\n! " not in out


def test_check_config_shows_the_admins_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        OPEN_SECTIONS["telegram"]
        + "allowed_users = [1, 2]\nadmins = [3]\n"
        + OPEN_SECTIONS["slack"]
        + 'allow_everyone = true\nadmins = ["U0123ABCD", "W0999XYZ"]\n'
    )
    path = write_config(tmp_path, text)
    assert main(["check-config", path], environ={}) == 0
    out = capsys.readouterr().out
    assert "chat      telegram (2 allowed users, 1 admin), slack (anyone, 2 admins)" in out
    dumped = tomllib.loads(out[out.index("# Effective configuration") :])
    assert dumped["telegram"]["admins"] == ["3"]
    assert dumped["slack"]["admins"] == ["U0123ABCD", "W0999XYZ"]


def test_check_config_lists_every_problem_on_stderr_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[slack]\napp_token = "xoxb-SECRETAPP"\nbot_token = "nope"\n[session]\ndebounce_ms = 0\n'
    path = write_config(tmp_path, text)
    assert main(["check-config", path], environ={}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"✗ {path} has 3 problems:"
    assert "  • slack.app_token: must start with xapp- (this is the bot token)" in lines
    assert "  • slack.bot_token: must start with xoxb-" in lines
    assert "  • session.debounce_ms: must be greater than 0" in lines
    assert any(line.startswith("      fix: ") for line in lines)
    assert "SECRETAPP" not in err


def test_check_config_of_a_missing_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")], environ={}) == 1
    assert "file not found" in capsys.readouterr().err


def test_check_config_reports_toml_syntax_errors_with_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "[telegram\n")
    assert main(["check-config", path], environ={}) == 1
    assert "line 1, column 10: invalid TOML" in capsys.readouterr().err


def test_check_config_shows_which_secrets_came_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "[telegram]\nallowed_users = [1]\n")
    assert main(["check-config", path], environ={"ANYCODE_TELEGRAM_BOT_TOKEN": TOKEN}) == 0
    out = capsys.readouterr().out
    assert "from env  ANYCODE_TELEGRAM_BOT_TOKEN" in out
    assert SECRET not in out


def test_check_config_accepts_the_example_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)], environ={}) == 0
    assert "is valid" in capsys.readouterr().out


def test_check_config_defaults_to_config_toml_in_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, f'[telegram]\nbot_token = "{TOKEN}"\nallowed_users = [1]\n')
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"], environ={}) == 0
    assert capsys.readouterr().out.startswith("✓ config.toml is valid")


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"anycode {__version__}\n"


def test_help_lists_the_commands_and_the_secret_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "check-config" in out
    assert "ANYCODE_SLACK_APP_TOKEN" in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().err


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs_check_config_on_the_example() -> None:
    # A clean environment: the developer's own ANYCODE_* variables must not change the result.
    environ = {key: value for key, value in os.environ.items() if not key.startswith("ANYCODE_")}
    result = subprocess.run(
        [sys.executable, "-m", "anycode_actors", "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_run_refuses_to_start_beside_another_daemon_with_a_plain_message(tmp_path: Path) -> None:
    import socket

    sock_path = tmp_path / "anycode.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(sock_path))
    holder.listen(1)  # another process holds the admin socket (it never answers)
    try:
        path = write_config(
            tmp_path,
            f'[telegram]\nbot_token = "{TOKEN}"\nallowed_users = [1]\n'
            'api_base_url = "http://127.0.0.1:9"\n'
            f'[database]\npath = "{tmp_path / "anycode.db"}"\n'
            f'[admin]\nsocket = "{sock_path}"\n',
        )
        done = subprocess.run(
            [sys.executable, "-m", "anycode_actors", "run", "--config", path],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("ANYCODE_")},
        )
    finally:
        holder.close()
    assert done.returncode == 1
    assert "anycode could not start" in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr


# --- the modules of anycode_actors.cli -----------------------------------------------------------

CLI_PACKAGE = REPO / "anycode_actors" / "cli"


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """For each module of `package` (the .py files of `folder`), the modules of the package it
    imports: at the top, inside functions or under TYPE_CHECKING alike. `from package import
    name` counts as an import of the module `name` if there is one, else of `__init__`."""
    modules = {path.stem for path in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .x import y
                    base = ".".join(filter(None, [package, base]))
                # `from package import x` names a module or a name of `__init__`; `from
                # package.x import y` imports the module `x`, whatever `y` is.
                targets = [f"{base}.{alias.name}" for alias in node.names]
                if base != package:
                    targets = [base]
            else:
                continue
            for target in targets:
                if target == package:
                    imported.add("__init__")
                elif target.startswith(package + "."):
                    name = target.removeprefix(package + ".").split(".")[0]
                    imported.add(name if name in modules else "__init__")
        graph[path.stem] = imported - {path.stem}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_cli_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph(CLI_PACKAGE, "anycode_actors.cli")
    commands = {"check_config", "run", "tree", "demo", "setup"}
    assert commands | {"__init__", "app", "common", "console", "demo_agent"} <= set(graph)
    assert import_cycle(graph) is None
    # Shared helpers import no command; only the parser imports them all.
    assert not graph["common"] & commands
    assert graph["app"] >= commands


def test_the_cycle_check_finds_a_cycle_through_a_package_import(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("from pkg.cli import main\n")
    (tmp_path / "cli.py").write_text("from pkg.tree import add_tree\nmain = 1\n")
    (tmp_path / "tree.py").write_text("def add_tree():\n    from pkg import cli\n")
    (tmp_path / "common.py").write_text("from . import tree\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "__init__": {"cli"},
        "cli": {"tree"},
        "tree": {"cli"},
        "common": {"tree"},
    }
    cycle = import_cycle(graph)
    assert cycle is not None
    assert set(cycle) == {"cli", "tree"}


def test_the_demo_agent_imports_only_the_standard_library() -> None:
    """It runs as `python -m anycode_actors.cli.demo_agent` for every demo session; importing
    the package must not pull in the command line (rich, trio, pydantic)."""
    probe = (
        "import sys, anycode_actors.cli.demo_agent; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'trio', 'pydantic'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
