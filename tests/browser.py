"""Headless Chromium for end-to-end tests: Debian's `chromium` driven by Playwright (no browser download).

`.ci/run` installs the package when it is missing; elsewhere a test that needs a browser skips when
there is none, and under CI it fails instead, as the service tests do.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import pytest

# Without the background-networking flags Chromium keeps trying Google's hosts, which a closed
# network refuses many times a second; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("PUSHPLAN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium on PATH (install Debian's chromium package to run this test)")
    return path


@dataclass
class RenderedPage:
    status: int
    title: str
    text: str  # what a reader sees: the rendered body's inner text
    svg_charts: int  # charts drawn with a non-zero size
    screenshot: bytes


def render(url: str, headers: dict[str, str] | None = None) -> RenderedPage:
    """Open `url` in headless Chromium and return what rendered."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(extra_http_headers=headers or {})
            page = context.new_page()
            response = page.goto(url, wait_until="load")
            assert response is not None, f"no response from {url}"
            drawn = page.eval_on_selector_all(
                "svg",
                "nodes => nodes.filter(n => n.getBoundingClientRect().width > 50"
                " && n.getBoundingClientRect().height > 50).length",
            )
            return RenderedPage(
                status=response.status,
                title=page.title(),
                text=page.inner_text("body"),
                svg_charts=int(drawn),
                screenshot=page.screenshot(full_page=True),
            )
        finally:
            browser.close()
