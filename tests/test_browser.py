"""The drawing page in a real browser: headless Chromium draws digits with the mouse on a live server.

    pytest -m browser tests/test_browser.py

Needs Debian's chromium and Python Playwright (tests/browser_support.py): skipped without them on a
developer's machine, failed without them in CI (CI set), where a skip would pass with no browser coverage.
Screenshots of the page (desktop and phone-sized) go to /tmp/digitlab-page-*.png.
"""
from __future__ import annotations

import io
import math

import pytest
from browser_support import open_page, strokes_on

pytestmark = pytest.mark.browser

SCREENSHOTS = {"desktop": "/tmp/digitlab-page-desktop.png", "phone": "/tmp/digitlab-page-phone.png"}

# Strokes in canvas units (0..1 of its width and height), each a list of points joined by lines.
ELLIPSE = [(0.5 + 0.22 * math.sin(2 * math.pi * k / 40), 0.5 - 0.33 * math.cos(2 * math.pi * k / 40))
           for k in range(41)]
DIGITS = {
    "1": [[(0.5, 0.15), (0.5, 0.85)]],
    "7": [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]],
    "0": [ELLIPSE],
}


def draw(page, strokes):
    """Draw strokes with the mouse and wait for the final answer; returns the digit the page shows."""
    answers = int(page.evaluate("document.body.dataset.answers || 0"))
    strokes_on(page, "#canvas", strokes, steps=4)
    page.wait_for_function(f"document.body.dataset.busy === 'false' && +document.body.dataset.answers > {answers}")
    return page.locator("#digit").get_attribute("data-digit")


def check_readout(page, digit):
    bars = page.locator("#bars li")
    assert bars.count() == 10
    assert page.locator("#bars li.winner").get_attribute("data-digit") == digit
    # The probabilities the bars carry, and the area each bar really fills on screen, once the bars'
    # 0.12 s transitions have finished (a running CSS transition is one of the element's animations).
    page.wait_for_function("[...document.querySelectorAll('#bars .fill')].every(e => e.getAnimations().length === 0)")
    bars = page.evaluate("""[...document.querySelectorAll('#bars li')].map(li => {
        const r = li.querySelector('.fill').getBoundingClientRect();
        return [parseFloat(li.style.getPropertyValue('--p')), r.width * r.height]; })""")
    probabilities, areas = zip(*bars)
    assert sum(probabilities) == pytest.approx(1, abs=0.01)
    assert max(areas) == areas[int(digit)] > 0
    seen = page.evaluate("(() => { const i = document.querySelector('#seen'); "
                         "return [i.src.slice(0, 22), i.naturalWidth, i.naturalHeight, i.complete]; })()")
    assert seen == ["data:image/png;base64,", 28, 28, True]


def test_drawn_digits_are_read(browser, server_url):
    context, page, outside = open_page(browser, server_url, viewport={"width": 1200, "height": 900})
    read = {}
    for digit, strokes in DIGITS.items():
        page.keyboard.press("Escape")
        read[digit] = draw(page, strokes)
        if read[digit] == digit:
            check_readout(page, digit)
    assert read == {d: d for d in DIGITS}, f"drawn -> read: {read}"
    page.screenshot(path=SCREENSHOTS["desktop"], full_page=True)

    # A thin pen on the big pad: the server's normalisation must still find and read the strokes.
    page.locator("#brush").fill("4")
    thin = {}
    for digit in ("1", "7"):
        page.keyboard.press("Escape")
        thin[digit] = draw(page, DIGITS[digit])
    assert thin == {"1": "1", "7": "7"}, f"thin strokes drawn -> read: {thin}"
    page.locator("#brush").fill("20")

    # Undo (Ctrl+Z) takes the last stroke back off; C clears the pad and the answer.
    page.keyboard.press("Escape")
    draw(page, DIGITS["1"])
    draw(page, DIGITS["0"])
    page.keyboard.press("Control+z")
    page.wait_for_function("document.body.dataset.busy === 'false' && document.querySelector('#digit').dataset.digit === '1'")
    page.keyboard.press("c")
    assert page.locator("#digit").text_content() == "?"
    assert page.evaluate("getComputedStyle(document.querySelector('#canvas')).touchAction") == "none"
    assert outside == [], f"the page fetched from elsewhere: {outside}"
    context.close()


def test_upload_sample_and_errors(browser, server_url):
    from PIL import Image, ImageDraw
    context, page, outside = open_page(browser, server_url, viewport={"width": 1200, "height": 900})

    im = Image.new("L", (200, 240), 255)
    ImageDraw.Draw(im).line([(100, 30), (100, 210)], fill=0, width=18)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    answers = int(page.evaluate("document.body.dataset.answers || 0"))
    page.locator("#file").set_input_files(files=[{"name": "one.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function(f"+document.body.dataset.answers > {answers}")
    assert page.locator("#digit").get_attribute("data-digit") == "1"
    check_readout(page, "1")

    # Dropped on the pad: the same path as an upload.
    page.keyboard.press("Escape")
    answers = int(page.evaluate("document.body.dataset.answers || 0"))
    page.evaluate("""async (bytes) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", list(buf.getvalue()))
    page.wait_for_function(f"+document.body.dataset.answers > {answers}")
    assert page.locator("#digit").get_attribute("data-digit") == "1"

    answers += 1
    page.locator("#file").set_input_files(files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}])
    page.wait_for_function(f"+document.body.dataset.answers > {answers}")
    assert "not an image" in page.locator("#status").text_content()
    assert page.locator("#status").get_attribute("class") == "error"

    page.locator("#sample").click()
    page.wait_for_selector("#status[data-sample]")
    info = page.locator("#status").text_content()
    assert "true label" in info and "the model says" in info
    check_readout(page, page.locator("#digit").get_attribute("data-digit"))

    phone, ppage, _ = open_page(browser, server_url, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                is_mobile=True, has_touch=True)
    before = ppage.locator("#canvas").bounding_box()
    assert draw(ppage, DIGITS["7"]) == "7"
    check_readout(ppage, "7")
    # Answers arriving mid-stroke must not move the pad under the finger (the layout keeps its size).
    assert ppage.locator("#canvas").bounding_box() == before
    # On a phone the answer sits above the pad, in sight while drawing.
    assert ppage.locator("#digit").bounding_box()["y"] < ppage.locator("#canvas").bounding_box()["y"]
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert ppage.evaluate("document.documentElement.scrollWidth") <= 390
    ppage.screenshot(path=SCREENSHOTS["phone"], full_page=True)
    assert outside == []
    phone.close()
    context.close()
