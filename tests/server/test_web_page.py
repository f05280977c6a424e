"""The browser page at GET /, driven in a real headless Chromium (Debian's, via Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-page.png"


def chromium_path() -> str:
    """Debian's chromium; under CI a missing browser fails the test instead of skipping it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def drive_page(url: str, executable: str) -> dict[str, Any]:
    """Speak, stream as an LLM, then cancel a long text; return what the page showed."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.goto(url)
            page.wait_for_function("document.querySelectorAll('#voice option').length > 1")
            page.click("#speak")
            page.wait_for_function("window.voxtrio.status.startsWith('complete')", timeout=20000)
            seen["speak"] = page.evaluate("({...window.voxtrio})")
            seen["ttfa_text"] = page.inner_text("#ttfa")
            seen["connection"] = page.inner_text("#connection")
            page.screenshot(path=str(SCREENSHOT))

            page.click("#stream")
            page.wait_for_function("window.voxtrio.status.startsWith('complete')", timeout=20000)
            seen["stream"] = page.evaluate("({...window.voxtrio})")

            page.fill("#text", "A long text that takes a while to speak. " * 40)
            page.click("#speak")
            page.wait_for_function("window.voxtrio.frames >= 2", timeout=20000)
            page.click("#cancel")
            page.wait_for_function("window.voxtrio.status === 'cancelled'", timeout=20000)
            seen["cancel"] = page.evaluate("({...window.voxtrio})")
        finally:
            browser.close()
    return seen


async def test_page_speaks_streams_and_cancels_in_chromium(
    start_server: Callable[..., Any],
) -> None:
    """The page connects, plays streamed frames, shows time to first audio, and cancels."""
    executable = chromium_path()
    server: ServerHandle = await start_server(lambda: SyntheticEngine(rtf=0.2))
    seen = await trio.to_thread.run_sync(drive_page, f"http://127.0.0.1:{server.port}/", executable)
    speak = seen["speak"]
    assert speak["frames"] >= 3
    assert speak["firstAudioMs"] is not None
    assert speak["audioSeconds"] > 0.3
    assert seen["ttfa_text"].endswith(" ms")
    assert seen["connection"] == "connected"
    assert seen["stream"]["frames"] >= 3
    assert seen["cancel"]["status"] == "cancelled"
    assert seen["cancel"]["audioSeconds"] < 20  # far less than the whole long text
    assert SCREENSHOT.stat().st_size > 10_000


async def test_page_can_be_turned_off(start_server: Callable[..., Any]) -> None:
    """web_page=False: GET / is a 404 (the OpenAI API stays)."""
    server: ServerHandle = await start_server(web_page=False)
    async with httpx.AsyncClient() as client:
        page = await client.get(f"http://127.0.0.1:{server.port}/")
        models = await client.get(f"http://127.0.0.1:{server.port}/v1/models")
    assert page.status_code == 404
    assert models.status_code == 200


def test_page_is_on_by_default_only_on_loopback() -> None:
    """web_page auto: on for a loopback host, off beyond it unless set to true."""
    from voxtrio._config import Settings

    assert Settings(host="127.0.0.1").web_page_enabled
    assert not Settings(host="0.0.0.0").web_page_enabled
    assert Settings(host="0.0.0.0", web_page=True).web_page_enabled
