"""Headless Chromium for the tests that look at Flower as a person would.

Debian's ``chromium`` package (``.ci/run`` installs it); the flags keep it
from reaching for the network it does not have.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)

#: Milliseconds of page time (scripts, AJAX) Chromium lets pass before it reads the page.
VIRTUAL_TIME_BUDGET_MS = 8000


def chromium() -> str | None:
    """The Chromium binary, or None where it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}",
         f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def rendered_dom(binary: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran."""
    done = _run(binary, profile, "--dump-dom", url)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {done.stderr[-2000:]}")
    return done.stdout


def screenshot(binary: str, url: str, path: Path, profile: Path,
               size: tuple[int, int] = (1640, 560)) -> Path:
    """A PNG of the rendered page at ``path``."""
    done = _run(binary, profile, f"--window-size={size[0]},{size[1]}",
                f"--screenshot={path}", url)
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"chromium could not take a screenshot of {url}: "
                           f"{done.stderr[-2000:]}")
    return path
