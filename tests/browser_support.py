"""What the browser tests (tests/test_browser*.py, the feedback page test) share: a live server in a thread, headless Chromium, and a page
opened on the server. The `browser` and `server_url` fixtures (tests/conftest.py) are built from these.

Needs Debian's chromium (`apt-get install chromium`) and Python Playwright: skipped without them on a
developer's machine, failed without them in CI (CI set), where a skip would pass with no browser coverage.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
TIMEOUT_MS = 15_000


@contextmanager
def served(run_or_app):
    """A real uvicorn server for a run's path (or an app made by create_app), on a free loopback port, in a
    thread: its URL."""
    import uvicorn

    from digitlab.serving import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(run_or_app) if isinstance(run_or_app, (str, Path)) else run_or_app
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def missing(what: str, ci: bool):
    """Without a browser the test can't run: in CI that fails the run, elsewhere it is a skip."""
    message = f"{what}; the browser tests need it (bash scripts/setup.sh installs both)"
    if ci:
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


@contextmanager
def chromium(ci: bool):
    """Headless Chromium, launched by Playwright."""
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)", ci)
    try:
        from playwright import sync_api
    except ImportError:
        missing("Python Playwright is not installed (pip install playwright)", ci)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url, **context_args):
    """The page at url, loaded: (context, page, outside), outside the URLs it fetched from other hosts."""
    # Playwright evaluates its wait conditions as strings, which the page's CSP (no eval) would refuse;
    # the request listener below still checks that nothing is fetched from elsewhere.
    context = browser.new_context(bypass_csp=True, **context_args)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside = []
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
    page.goto(url + "/")
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('test accuracy')")
    return context, page, outside


def strokes_on(page, selector, strokes, steps: int):
    """Draw strokes with the mouse on the element: each a list of points in its units (0..1 of its width and
    height) joined by lines, each line in `steps` mouse moves."""
    box = page.locator(selector).bounding_box()
    for points in strokes:
        xy = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in points]
        page.mouse.move(*xy[0])
        page.mouse.down()
        for x, y in xy[1:]:
            page.mouse.move(x, y, steps=steps)
        page.mouse.up()
