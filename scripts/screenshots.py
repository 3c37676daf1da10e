"""Regenerate the README's screenshots of the Dagster UI in headless Chromium.

    .venv/bin/python scripts/screenshots.py

starts a throwaway `pg-to-bq demo` (in a temporary directory, on a free loopback port),
loads `public.orders` once so the pages show a materialization, and writes

    docs/screenshots/asset-graph.png   the asset graph: each PostgreSQL table → its loaded table
    docs/screenshots/asset-page.png    one loaded table: description, column schema, metadata

then stops the demo with Ctrl-C (SIGINT). `--url http://127.0.0.1:3000` photographs a demo
you already run instead; `--out DIR` writes elsewhere. It needs Debian's `chromium`
(`apt-get install chromium fonts-noto-cjk`); Playwright's own browser downloads are not used.

`pg_to_bq_tests/browser/test_ui.py` drives the same functions, asserts what they show and
saves its screenshots in its temporary directory (and here too with
PG_TO_BQ_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
GRAPH_FILE = "asset-graph.png"
ASSET_PAGE_FILE = "asset-page.png"
DEFAULT_TABLE = ("duckdb", "shop_raw", "orders")

CHROMIUM = "/usr/bin/chromium"
# Playwright adds a fresh --user-data-dir of its own to every launch.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Tall enough that the demo's seven tables fit the graph at Dagster's smallest auto-fit zoom.
GRAPH_VIEWPORT = {"width": 1440, "height": 1750}
ASSET_PAGE_VIEWPORT = {"width": 1440, "height": 1200}
TIMEOUT_MS = 60_000

# Dagster keeps UI preferences in localStorage. `communityNux`: don't show the "Join the
# Dagster community" dialog, which it pops up on http://127.0.0.1 until dismissed.
# `asset-graph-direction`: the default (left to right), pinned so screenshots stay alike.
_UI_PREFERENCES = """
window.localStorage.setItem('communityNux', '"1"');
window.localStorage.setItem('asset-graph-direction', '"horizontal"');
"""
_SPINNERS = "[class*='Spinner_spinner']:not([class*='Spinner_stopped'])"


@contextmanager
def chromium(executable: str = CHROMIUM) -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright."""
    if not Path(executable).exists():
        raise FileNotFoundError(
            f"{executable} not found: install Debian's chromium (apt-get install chromium "
            "fonts-noto-cjk), or deselect these tests with -m 'not browser'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser: Browser, viewport: dict[str, int]) -> Iterator[Page]:
    """A page in a fresh browser context (own storage) with the UI preferences above."""
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    context.add_init_script(_UI_PREFERENCES)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def settle(page: Page) -> None:
    """Wait until Dagster has filled in the page: no spinners, no 'Loading...' placeholders."""
    page.wait_for_function(
        """sel => !document.body.innerText.includes('Loading...') &&
                  ![...document.querySelectorAll(sel)].some(e => e.offsetParent !== null)""",
        arg=_SPINNERS, timeout=TIMEOUT_MS)


def show_asset_graph(page: Page, base_url: str) -> None:
    """Open the global asset lineage graph, hide the asset list beside it and fit the graph."""
    page.goto(f"{base_url}/asset-groups")
    viewport = page.locator("[data-svg-viewport]")
    viewport.wait_for()
    settle(page)
    # Beyond two groups (sources, loaded tables, the catalog) Dagster shows each group
    # collapsed; expand them all (⌥E) so every table is a node.
    page.keyboard.press("Alt+e")
    page.wait_for_timeout(1000)  # the expansion is animated
    settle(page)
    # The list beside the graph repeats every table twice (source and loaded table); the
    # graph says the same with lineage, so give it the room.
    page.get_by_role("button", name="panel_show_right", exact=True).click()
    # A double click on the canvas re-centres the graph in the widened viewport.
    viewport.dispatch_event("dblclick")
    page.wait_for_timeout(1000)  # the re-centring is animated
    settle(page)


def show_asset_page(page: Page, base_url: str, key: Sequence[str]) -> None:
    """Open one asset's overview page and wait for its column schema."""
    page.goto(f"{base_url}/assets/{'/'.join(quote(part, safe='') for part in key)}")
    page.get_by_text("Column name", exact=True).wait_for()
    settle(page)


def screenshot(page: Page, path: Path) -> Path:
    """Save the page. Dagster scrolls inside its own panes, so the viewport is the page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def capture(browser: Browser, base_url: str, out_dir: Path,
            table: Sequence[str] = DEFAULT_TABLE) -> list[Path]:
    """Both README screenshots of the demo served at `base_url`, written into `out_dir`."""
    with new_page(browser, GRAPH_VIEWPORT) as page:
        show_asset_graph(page, base_url)
        graph = screenshot(page, out_dir / GRAPH_FILE)
    with new_page(browser, ASSET_PAGE_VIEWPORT) as page:
        show_asset_page(page, base_url, table)
        asset_page = screenshot(page, out_dir / ASSET_PAGE_FILE)
    return [graph, asset_page]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running Dagster webserver of `pg-to-bq demo` "
                        "(default: start a throwaway demo)")
    parser.add_argument("--out", type=Path, default=DOCS_SCREENSHOTS,
                        help=f"where to write the PNGs (default: {DOCS_SCREENSHOTS})")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"default: {CHROMIUM}")
    args = parser.parse_args(argv)
    if args.url:
        with chromium(args.chromium) as browser:
            paths = capture(browser, args.url.rstrip("/"), args.out)
        print("\n".join(str(p) for p in paths))
        return 0

    sys.path.insert(0, str(ROOT))  # run as a file, the tests' package is not importable
    from pg_to_bq_tests.browser.demo_stack import DemoStack

    with tempfile.TemporaryDirectory(prefix="pg_to_bq_screenshots_") as tmp:
        began = time.monotonic()
        print("starting `pg-to-bq demo` …", flush=True)
        stack = DemoStack.start(Path(tmp) / "demo")
        try:
            print(f"  serving {stack.url} after {stack.started_in_s:.0f}s; loading "
                  f"{'/'.join(DEFAULT_TABLE)} …", flush=True)
            run_id = stack.launch_materialization(DEFAULT_TABLE)
            run = stack.wait_for_run(run_id)
            if run["status"] != "SUCCESS":
                print(f"run {run_id} ended {run['status']}:\n{stack.run_errors(run_id)}",
                      file=sys.stderr)
                return 1
            with chromium(args.chromium) as browser:
                paths = capture(browser, stack.url, args.out)
        finally:
            stopped = stack.stop()
        print("\n".join(str(p) for p in paths))
        print(f"done in {time.monotonic() - began:.0f}s")
        if stopped.leftovers:
            print("processes left after Ctrl-C (killed):\n"
                  + "\n".join(str(p) for p in stopped.leftovers), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
