"""`anycode doctor` and the one versions file (anycode_actors/agents/stack.txt): parsing it, reading
what an image holds, comparing; and the real sandbox image read by the real command."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from rich.console import Console

from anycode_actors.agents.stack import (
    StackError,
    StackPackage,
    check_stack,
    parse_probe,
    parse_stack,
    parse_version,
)
from anycode_actors.agents.stack import tested_stack as release_stack
from anycode_actors.cli import main
from anycode_actors.cli.doctor import ImageProbe, report_stack
from tests import agent_stack
from tests.docker_support import SANDBOX_IMAGE, docker_client, require_or_skip

REPO = Path(__file__).resolve().parent.parent
TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"


def config_file(tmp_path: Path, image: str, provider: str = "docker") -> str:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[telegram]\nbot_token = "{TOKEN}"\nallow_everyone = true\n'
        f'[sandbox]\nprovider = "{provider}"\n'
        f'[docker]\nimage = "{image}"\n'
        + ("[local]\nallow_unsandboxed = true\n" if provider == "local" else "")
    )
    return str(path)


def consoles() -> tuple[Console, io.StringIO, Console, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return (
        Console(file=out, width=200, highlight=False),
        out,
        Console(file=err, width=200, highlight=False),
        err,
    )


def probe_answering(output: str) -> ImageProbe:
    def probe(image: str, environ: Mapping[str, str]) -> str:
        return output

    return probe


# --- stack.txt ----------------------------------------------------------------------------------


def test_the_stack_file_names_the_current_packages() -> None:
    stack = release_stack()
    assert list(stack) == [
        "NODE",
        "SANDBOX_AGENT",
        "CLAUDE_CODE",
        "CLAUDE_AGENT_ACP",
        "ACPX",
        "CODEX",
        "CODEX_ACP",
    ]
    assert stack["CLAUDE_AGENT_ACP"].package == "@agentclientprotocol/claude-agent-acp"
    assert stack["CODEX_ACP"].package == "@agentclientprotocol/codex-acp"
    assert stack["CLAUDE_CODE"].spec.startswith("@anthropic-ai/claude-code@")


def test_the_tests_install_the_versions_of_the_stack_file() -> None:
    stack = release_stack()
    for name in ("SANDBOX_AGENT", "CLAUDE_CODE", "CLAUDE_AGENT_ACP", "ACPX"):
        assert agent_stack.PACKAGES[stack[name].package] == stack[name].version
    assert stack["NODE"].version in agent_stack.PACKAGES.values()


def test_no_other_file_pins_a_version_of_the_stack() -> None:
    """The image takes its versions from stack.txt through build-image.sh, not from defaults."""
    dockerfile = (REPO / "docker" / "Dockerfile.agent").read_text()
    for name in release_stack():
        assert f"ARG {name}_VERSION=" not in dockerfile
    assert "ARG AGENT_PACKAGES\n" in dockerfile
    assert "anycode_actors/agents/stack.txt" in (REPO / "docker" / "build-image.sh").read_text()


def test_a_malformed_stack_line_is_refused_with_its_line_number() -> None:
    with pytest.raises(StackError, match="line 2"):
        parse_stack("# comment\nNODE node\n")
    with pytest.raises(StackError, match="line 2"):
        parse_stack("NODE node 22.1.0\nNODE node 22.2.0\n")
    with pytest.raises(StackError, match="line 1"):
        parse_stack("NODE node latest\n")


def test_versions_compare_as_numbers() -> None:
    assert parse_version("2.1.332 (Claude Code)") == (2, 1, 332)
    assert parse_version("codex-cli 0.166.0") == (0, 166, 0)
    assert parse_version("v22.23.3") == (22, 23, 3)
    assert parse_version("none") is None
    stack = {"A": StackPackage("A", "a", "2.1.40"), "B": StackPackage("B", "b", "1.0.0")}
    checks = check_stack({"A": "2.1.332", "B": "0.9.9"}, stack)
    assert [c.status for c in checks] == ["newer", "older"]
    assert [c.status for c in check_stack({"A": None}, stack)] == ["missing", "missing"]


def test_the_probe_output_is_read_by_name() -> None:
    assert parse_probe("NODE 22.23.3\nACPX -\nnoise line here\n") == {
        "NODE": "22.23.3",
        "ACPX": None,
    }


# --- the report ---------------------------------------------------------------------------------


def test_an_image_with_the_tested_stack_gets_no_warning() -> None:
    output = "".join(f"{p.name} {p.version}\n" for p in release_stack().values())
    out, text, err, _ = consoles()
    assert report_stack(out, err, "img:1", {}, probe_answering(output)) == 0
    assert "!" not in text.getvalue()
    assert "nothing older than the tested stack" in text.getvalue()


def test_an_old_image_is_warned_about_package_by_package() -> None:
    stack = release_stack()
    lines = [f"{p.name} {p.version}" for p in stack.values() if p.name != "CLAUDE_AGENT_ACP"]
    lines = [line if not line.startswith("ACPX ") else "ACPX 0.1.15" for line in lines]
    out, text, err, _ = consoles()
    probe = probe_answering("\n".join(lines))
    assert report_stack(out, err, "img:old", {}, probe) == 0
    shown = text.getvalue()
    assert f"! acpx 0.1.15 is older than {stack['ACPX'].version}" in shown
    assert f"! {stack['CLAUDE_AGENT_ACP'].package} is not in the image" in shown
    assert "rebuild the image: bash docker/build-image.sh" in shown
    assert shown.count("!") == 2


def test_an_image_that_cannot_be_read_exits_1_with_the_reason() -> None:
    def broken(image: str, environ: Mapping[str, str]) -> str:
        raise RuntimeError(f"the Docker engine has no image {image}")

    out, text, err, err_text = consoles()
    assert report_stack(out, err, "img:none", {}, broken) == 1
    assert "no image img:none" in err_text.getvalue()
    assert text.getvalue() == ""


def test_doctor_with_another_provider_says_there_is_nothing_to_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", config_file(tmp_path, "unused", provider="local")], environ={}) == 0
    assert "reads docker images only" in capsys.readouterr().out


# --- the real image -----------------------------------------------------------------------------


@pytest.mark.docker
def test_doctor_reads_the_stack_of_the_real_sandbox_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = docker_client()
    try:
        client.images.get(SANDBOX_IMAGE)
    except Exception:
        require_or_skip(f"{SANDBOX_IMAGE} is not built (docker/build-image.sh)")
    status = main(["doctor", config_file(tmp_path, SANDBOX_IMAGE)], environ=dict(os.environ))
    shown = capsys.readouterr().out
    assert status == 0, shown
    for package in release_stack().values():
        assert f"{package.package} " in shown
    # An image built from this tree holds exactly the tested stack.
    assert "nothing older than the tested stack" in shown, (
        f"{SANDBOX_IMAGE} is older than anycode_actors/agents/stack.txt; rebuild it with "
        f"docker/build-image.sh:\n{shown}"
    )
    assert shown.count(" ok\n") == len(release_stack()), shown
