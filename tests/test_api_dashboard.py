"""The web dashboard in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium), against a running daemon serving the HTTP API (tests/api_rig.py): sign in, start a
task, watch its text stream in, press Allow, see the file; then the same page at a phone's
width. Screenshots are saved under the test's tmp dir and copied to /tmp/anycode-dashboard.png
(and -phone.png)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from anycode_actors.agents import TextDelta, TurnEnded
from tests.actor_fakes import FakeAgent, asks
from tests.api_rig import TOKENS, Api, running_api
from tests.docker_support import require_or_skip

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOT = Path("/tmp/anycode-dashboard.png")
PHONE_SHOT = Path("/tmp/anycode-dashboard-phone.png")
WAIT = 30


def streaming_agent() -> FakeAgent:
    return FakeAgent(
        [
            [
                TextDelta(text="Hello from the agent. "),
                TextDelta(text="I will write hello.md.\n"),
                asks(title="Write hello.md", command="tee outbox/hello.md"),
                TextDelta(text="Wrote hello.md."),
                TurnEnded(stop_reason="end_turn"),
            ]
        ]
    )


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        require_or_skip(
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], Any]) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition)


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def drive(driver: Any, api: Api, shots: Path) -> dict[str, Any]:
    """The whole visit, in the browser's own (blocking) terms; returns what was seen."""
    from selenium.webdriver.common.by import By

    seen: dict[str, Any] = {}
    driver.get(api.url + "/")
    driver.find_element(By.ID, "token").send_keys(TOKENS["ada"])
    driver.find_element(By.ID, "save-token").click()
    wait_for(driver, lambda d: text_of(d, "who") == "signed in")
    seen["token_kept"] = driver.execute_script("return sessionStorage.getItem('anycode_token')")
    seen["token_form_shown"] = driver.find_element(By.ID, "token-form").is_displayed()
    driver.find_element(By.ID, "prompt").send_keys("write hello.md")
    driver.find_element(By.ID, "start").click()

    wait_for(driver, lambda d: "I will write hello.md." in text_of(d, "output"))
    seen["before_allow"] = text_of(driver, "output")
    allow = wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#permissions button[data-kind=allow_once]"),
    )[0]
    seen["prompt"] = text_of(driver, "permissions")
    allow.click()

    wait_for(driver, lambda d: "Wrote hello.md." in text_of(d, "output"))
    wait_for(driver, lambda d: text_of(d, "status").startswith("completed"))
    link = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#files a.file"))[0]
    seen["file_link"] = link.text
    link.click()
    wait_for(driver, lambda d: "# hello" in text_of(d, "files"))
    wait_for(
        driver,
        lambda d: "completed" in text_of(d, "sessions") and "router" in text_of(d, "tree"),
    )
    seen["sessions"] = text_of(driver, "sessions")
    seen["tree"] = text_of(driver, "tree")
    seen["output"] = text_of(driver, "output")
    driver.save_screenshot(str(shots / "dashboard.png"))

    driver.set_window_size(390, 844)  # a phone
    seen["phone_overflow"] = driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    driver.save_screenshot(str(shots / "dashboard-phone.png"))
    return seen


async def test_dashboard_starts_a_task_streams_it_and_answers_its_permission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Any
) -> None:
    async with running_api(tmp_path, monkeypatch, streaming_agent) as api:
        api.provider.outbox["hello.md"] = b"# hello\n"
        seen = await trio.to_thread.run_sync(drive, browser, api, tmp_path)

    assert seen["token_kept"] == TOKENS["ada"]
    assert not seen["token_form_shown"]
    assert "Hello from the agent. I will write hello.md." in seen["before_allow"]
    assert "Wrote hello.md." not in seen["before_allow"]
    assert "Permission requested: Write hello.md" in seen["prompt"]
    assert "tee outbox/hello.md" in seen["prompt"]
    assert seen["output"].endswith("Wrote hello.md.")
    assert "hello.md (8 bytes)" in seen["file_link"]
    assert "ada" in seen["sessions"] and "completed" in seen["sessions"]
    assert "router" in seen["tree"]
    assert seen["phone_overflow"] <= 0
    assert api.agents[0].responses == [("0", "allow")]
    for name, copy in (("dashboard.png", SHOT), ("dashboard-phone.png", PHONE_SHOT)):
        shot = tmp_path / name
        assert shot.read_bytes().startswith(b"\x89PNG")
        shutil.copyfile(shot, copy)
