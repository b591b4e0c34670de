"""Headless Chromium (Debian's `chromium`, driven by Playwright) with no network beyond loopback."""
from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import TinyM2NetError
from .io import atomic_file

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Every request goes to a proxy where nothing listens and no name resolves; loopback is reached directly.
NO_NETWORK = ["--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
VIEWPORT = {"width": 1400, "height": 900}
IDLE_S = 5  # at most this long for the network to go quiet after the page rendered (UIs that poll never do)


class BrowserError(TinyM2NetError):
    """Headless Chromium is missing, or a page did not render."""


@dataclass
class Page:
    """What a page logged: console errors and uncaught exceptions, and console warnings, in order."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def console(self, message) -> None:
        if message.type == "error":
            self.errors.append(message.text)
        elif message.type == "warning":
            self.warnings.append(message.text)


def chromium_path() -> str:
    """The Chromium executable on PATH."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    raise BrowserError("headless Chromium not found on PATH: install Debian's `chromium` "
                       "(`make test` does: apt-get install chromium)")


@contextlib.contextmanager
def open_page(url: str, wait_for: str | None = None, timeout_s: float = 60,
              local_storage: dict[str, str] | None = None) -> Iterator[tuple]:
    """Open `url` in a fresh headless Chromium without network; yield (playwright page, Page log).

    `wait_for` is a JavaScript expression the page must make truthy (e.g. a selector test) before
    the block runs; on timeout the block still runs, so callers can report what is missing. Then it
    waits (at most IDLE_S) for the network to go quiet. `local_storage` is set before the page loads
    (UI preferences such as closed panels).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    log = Page()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=NO_NETWORK)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            if local_storage:
                page.add_init_script(f"Object.entries({json.dumps(local_storage)})"
                                     ".forEach(([k, v]) => localStorage.setItem(k, v));")
            page.on("console", log.console)
            page.on("pageerror", lambda exc: log.errors.append(str(exc)))
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            with contextlib.suppress(PlaywrightTimeout):
                if wait_for:
                    page.wait_for_function(wait_for, timeout=timeout_s * 1000)
            with contextlib.suppress(PlaywrightTimeout):
                page.wait_for_load_state("networkidle", timeout=IDLE_S * 1000)
            yield page, log
        finally:
            browser.close()


def screenshot(url: str, path: Path, wait_for: str = "document.body.innerText.trim().length > 0",
               timeout_s: float = 60, local_storage: dict[str, str] | None = None) -> Page:
    """Save a full-page PNG of `url` once the JavaScript expression `wait_for` holds; BrowserError if it never does."""
    with open_page(url, wait_for=wait_for, timeout_s=timeout_s, local_storage=local_storage) as (page, log):
        if not page.evaluate(f"() => Boolean({wait_for})"):
            raise BrowserError(f"{url} did not render within {timeout_s:.0f} s (waited for: {wait_for})")
        png = page.screenshot(full_page=True)
    with atomic_file(path, "wb") as fh:
        fh.write(png)
    return log


def vega_targets(html: str) -> list[str]:
    """The element ids a DVC plots page hands to vegaEmbed, one per Vega plot."""
    return re.findall(r"vegaEmbed\('#([^']+)'", html)


@dataclass
class Plot:
    """What one Vega plot drew (from its SVG's accessibility labels, which Vega-Lite writes per mark item)."""
    titles: list[str]
    axes: dict[str, list[str]]  # axis title -> its tick labels, in drawing order
    marks: list[tuple[str, dict]]  # (mark type, {field title: value}) per mark item


@dataclass
class PlotsPage(Page):
    """A rendered `dvc plots show` page: its Vega plots by element id, and the images that loaded."""
    targets: list[str] = field(default_factory=list)
    plots: dict[str, Plot] = field(default_factory=dict)
    images: int = 0


# per drawn plot: titles, axes (aria-label, tick labels) and mark items (type, aria-label)
PLOTS_JS = """ids => Object.fromEntries(ids.map(id => [id, document.getElementById(id)])
  .filter(([id, el]) => el && el.querySelector('svg.marks, canvas'))
  .map(([id, el]) => [id, {
    titles: [...el.querySelectorAll('g.role-title text')].map(t => t.textContent),
    axes: [...el.querySelectorAll('g.role-axis[aria-label]')].map(a => [a.getAttribute('aria-label'),
      [...a.querySelectorAll('g.role-axis-label text')].map(t => t.textContent)]),
    marks: [...el.querySelectorAll('g.role-mark [role=graphics-symbol][aria-label]')].map(m =>
      [m.getAttribute('aria-roledescription'), m.getAttribute('aria-label')]),
  }]))"""


def _fields(label: str) -> dict:
    return dict(part.split(": ", 1) for part in label.split("; ") if ": " in part)


def render_plots(index: Path, save_png: Path | None = None, timeout_s: float = 60) -> PlotsPage:
    """Render a `dvc plots show` page without network; read back what each plot drew, optionally save a PNG."""
    index = Path(index).resolve()
    result = PlotsPage(targets=vega_targets(index.read_text(encoding="utf-8")))
    wait = f"Object.keys(({PLOTS_JS})({json.dumps(result.targets)})).length === {len(result.targets)}"
    with open_page(index.as_uri(), wait_for=wait, timeout_s=timeout_s) as (page, log):
        for plot_id, raw in page.evaluate(PLOTS_JS, result.targets).items():
            axes = {re.sub(r"^.*?titled '(.*?)'.*$", r"\1", label): ticks for label, ticks in raw["axes"]}
            result.plots[plot_id] = Plot(raw["titles"], axes, [(kind, _fields(label)) for kind, label in raw["marks"]])
        result.images = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        png = page.screenshot(full_page=True) if save_png else None
    if png:
        with atomic_file(save_png, "wb") as fh:
            fh.write(png)
    result.errors, result.warnings = log.errors, log.warnings
    return result
