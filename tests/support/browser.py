"""Debian's Chromium, headless, driven by Selenium through the system `chromedriver`; tests that need
it are skipped (with one line saying how to get it) where either is missing."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
MISSING = (
    "browser tests skipped: no chromium/chromedriver on PATH "
    "(apt-get install -y chromium chromium-driver; .ci/run does it)"
)
PAGE_LOAD_TIMEOUT_S = 30
SCRIPT_TIMEOUT_S = 30
WINDOW = (1400, 1100)


def _which(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when either is missing."""
    browser, driver = _which(CHROMIUM_NAMES), _which(DRIVER_NAMES)
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    """The executables, or skip the test with the one line that says how to install them."""
    found = chromium_paths()
    if found is None:
        pytest.skip(MISSING)
    return found


@contextmanager
def chromium(downloads: Path | None = None) -> Iterator[webdriver.Chrome]:
    """A headless Chromium session (a `selenium.webdriver.Chrome`), its console log readable with
    `console(driver)`; quit at the end."""
    browser, driver_path = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads is not None:
        options.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        session.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        session.set_script_timeout(SCRIPT_TIMEOUT_S)
        yield session
    finally:
        session.quit()


def console(driver: Any) -> list[str]:
    """The page's console lines since the last call."""
    return [str(entry.get("message", "")) for entry in driver.get_log("browser")]


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout_s: float, what: str) -> Any:
    """The first truthy `condition(driver)` within `timeout_s`, else fail naming `what` and the console."""
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)
    except TimeoutException:
        pytest.fail(f"{what} did not happen within {timeout_s} s; console: {console(driver)}")


def screenshot(driver: Any, path: Path) -> Path:
    """A PNG of the whole page (the window grown to the document's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WINDOW[0], max(WINDOW[1], min(int(height) + 160, 4000)))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(*WINDOW)
    return path
