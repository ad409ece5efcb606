"""The web page's drawing pad, recent jobs, item-keyed thumbnails, announcements and busy retries,
in Debian's headless Chromium (driven as in tests/test_browser.py).

Drawings are made with real input events: the mouse through Playwright, the pen and the finger
through Chrome's DevTools protocol (`Input.dispatchMouseEvent` with `pointerType: pen`,
`Input.dispatchTouchEvent`), so the page sees the Pointer Events a tablet would send.
"""

import os
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.config import PROJECT_ROOT
from devstack.stack import Stack
from tests import test_browser as shared
from tests.helpers import make_zip, png, running_api

pytestmark = pytest.mark.stack  # full stack, or the API alone over real HTTP (tests/helpers.py)

browser = shared.browser  # the module-scoped Chromium of tests/test_browser.py
drop, wait_succeeded = shared.drop, shared.wait_succeeded

# A clear 7 on the 280 px pad: a horizontal bar, then a diagonal down to the left (the model
# answers 7 at ~99% for it with the mouse, the pen and a finger alike: checked before writing this).
SEVEN = [((70, 60), (210, 60)), ((210, 60), (120, 235))]
STEPS = 12


def _path(box: dict, start: tuple[int, int], end: tuple[int, int]) -> list[tuple[float, float]]:
    (x0, y0), (x1, y1) = start, end
    return [
        (box["x"] + x0 + (x1 - x0) * i / STEPS, box["y"] + y0 + (y1 - y0) * i / STEPS)
        for i in range(STEPS + 1)
    ]


def _pen(cdp, event: str, x: float, y: float, buttons: int) -> None:
    pen = {"button": "left", "buttons": buttons, "clickCount": 1, "pointerType": "pen"}
    cdp.send("Input.dispatchMouseEvent", {"type": event, "x": x, "y": y, **pen})


def _stroke(page, cdp, kind: str, path: list[tuple[float, float]]) -> None:
    (x, y), rest = path[0], path[1:]
    if kind == "mouse":
        page.mouse.move(x, y)
        page.mouse.down()
        for point in rest:
            page.mouse.move(*point)
        page.mouse.up()
    elif kind == "pen":
        _pen(cdp, "mousePressed", x, y, 1)
        for point in rest:
            _pen(cdp, "mouseMoved", *point, 1)
        _pen(cdp, "mouseReleased", *path[-1], 0)
    else:  # a finger
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for px, py in rest:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": px, "y": py}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def draw(page, kind: str, strokes=SEVEN) -> None:
    cdp = page.context.new_cdp_session(page)
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    for start, end in strokes:
        _stroke(page, cdp, kind, _path(box, start, end))
    cdp.detach()


def record_announcements(page) -> None:
    """Every write to the live region, as the screen reader is told of it (one record per change
    of its text node, even when the new text equals the old)."""
    page.evaluate(
        """() => {
            window.announced = [];
            new MutationObserver((records) => {
                for (const r of records) window.announced.push(r.target.textContent);
            }).observe(document.getElementById("announce"),
                { childList: true, characterData: true, subtree: true });
        }"""
    )


def announced(page) -> list[str]:
    return page.evaluate("() => window.announced")


@pytest.mark.parametrize("kind", ["mouse", "pen", "touch"])
def test_draw_a_seven_and_get_a_seven(stack: Stack, browser, kind: str) -> None:
    context = browser.new_context(has_touch=True, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.api_url + "/")
    page.get_by_role("button", name="Recognise").click()  # nothing drawn: nothing sent
    assert page.locator("#draw-status").inner_text() == "Draw a digit first."

    draw(page, kind)
    page.get_by_role("button", name="Recognise").click()
    page.wait_for_function("() => !document.getElementById('seen').hidden", timeout=60_000)
    assert page.locator("#answer-digit").inner_text() == "7"
    confidence = page.locator("#answer-confidence").inner_text()
    assert float(confidence.split()[0]) > 50, confidence
    # The 28x28: the server's own when the API serves it (GET /jobs/{id}/items/0/image?view=model),
    # else the page's approximation, said so; either way light ink on black, MNIST-placed
    caption = page.locator("#seen-caption").inner_text()
    served = "from the server" in caption
    assert served or "in this browser" in caption, caption
    field = page.locator("#seen-image" if served else "#seen-canvas").evaluate(
        """(shown) => {
            const canvas = document.createElement("canvas");
            canvas.width = canvas.height = 28;
            const context = canvas.getContext("2d");
            context.drawImage(shown, 0, 0, 28, 28);
            const data = context.getImageData(0, 0, 28, 28).data;
            const ink = [];
            for (let i = 0; i < 28 * 28; i += 1) ink.push(data[i * 4]);
            return ink;
        }"""
    )
    seen = np.array(field, dtype=float).reshape(28, 28)
    rows, cols = np.nonzero(seen)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 == 20  # MNIST's 20 px box
    assert seen[:10].sum() > seen[18:].sum()  # the 7's bar is at the top
    centre = (seen.sum(axis=1) @ np.arange(28) / seen.sum(), seen.sum(axis=0) @ np.arange(28) / seen.sum())
    assert abs(centre[0] - 14) <= 1 and abs(centre[1] - 14) <= 1, centre
    # The /predict ran as a job of this key: the recent jobs list it
    page.wait_for_function("() => document.querySelectorAll('#recent tbody tr').length > 0")
    if kind == "mouse" and os.environ.get("DIGITQ_README_SCREENSHOT"):  # refresh docs/draw.png
        page.locator("section").first.screenshot(path=str(PROJECT_ROOT / "docs" / "draw.png"))

    page.get_by_role("button", name="Clear").click()
    assert page.locator("#answer").is_hidden() and page.locator("#seen").is_hidden()
    assert not errors, errors
    context.close()


def test_a_reload_reopens_the_job_and_the_list_opens_others(stack: Stack, browser, digits) -> None:
    X, _ = digits
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(stack.api_url + "/")
    drop(page, {"first.png": png(255 - X[0])})
    wait_succeeded(page)
    first = page.evaluate("() => location.hash").removeprefix("#job=")
    drop(page, {"second.png": png(255 - X[3000])})
    page.wait_for_function(f"() => location.hash !== '#job={first}'")
    page.wait_for_function(
        "() => document.querySelector('#results tbody td.name')?.textContent === 'second.png'"
    )
    wait_succeeded(page)
    second = page.evaluate("() => location.hash").removeprefix("#job=")
    assert len(second) == 32 and second != first

    page.reload()  # the job comes back: its status, its results, marked in the list
    wait_succeeded(page)
    assert second in page.locator("#status").inner_text()
    assert page.locator("#results tbody td.name").inner_text() == "second.png"
    current = page.locator("#recent tbody tr[aria-current='true']")
    current.wait_for()
    assert current.get_attribute("data-job") == second

    page.get_by_role("button", name=f"Open {first[:8]}: job {first}, 1 image(s)").click()
    page.wait_for_function(f"() => location.hash === '#job={first}'")
    page.wait_for_function(  # the other job's rows are replaced by this one's
        "() => document.querySelector('#results tbody td.name')?.textContent === 'first.png'"
    )
    wait_succeeded(page)
    assert first in page.locator("#status").inner_text()
    # No thumbnail of another job's file: the row's image is this job's item, from the server.
    src = page.locator("#results tbody img").first.get_attribute("src") or ""
    assert f"/jobs/{first}/items/0/image" in src, src

    other = browser.new_page()  # a link to the job opens it too
    other.goto(f"{stack.api_url}/#job={second}")
    wait_succeeded(other)
    assert other.locator("#results tbody td.name").inner_text() == "second.png"
    other.goto(f"{stack.api_url}/#job={'0' * 32}")  # unknown: said, and forgotten
    other.wait_for_function(
        "() => document.getElementById('status').textContent.includes('cannot be opened')"
    )
    assert other.evaluate("() => location.hash") == ""
    other.close()
    page.close()


def test_same_named_files_from_two_folders_each_keep_their_thumbnail(stack: Stack, browser, digits) -> None:
    """Thumbnails were keyed by name: the second "digit.png" showed in both rows."""
    X, _ = digits
    small, large = png(255 - X[0]), png(np.kron(255 - X[3500], np.ones((2, 2), dtype=np.uint8)))
    archive = make_zip({"a/digit.png": png(255 - X[100]), "b/digit.png": png(255 - X[200])})
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(stack.api_url + "/")
    # Dropped in this order: the zip first; the page sends the images first, so image k is item k
    drop(page, [("archive.zip", archive), ("digit.png", small), ("digit.png", large)])
    wait_succeeded(page)
    rows = page.locator("#results tbody tr")
    assert rows.count() == 4
    names = [rows.nth(i).locator("td.name").inner_text() for i in range(4)]
    assert names == ["digit.png", "digit.png", "a/digit.png", "b/digit.png"]
    widths = [
        rows.nth(i).locator("img").evaluate("img => img.complete ? img.naturalWidth : -1") for i in range(2)
    ]
    assert widths == [28, 56], widths  # each row its own file's thumbnail
    for i in (2, 3):  # the zip's members: their images come from the server, by index
        assert f"/items/{i}/image" in (rows.nth(i).locator("img").get_attribute("src") or "")
    page.close()


def test_status_is_announced_only_when_it_changes(tmp_path: Path, browser, digits) -> None:
    """The status line (a live region) was rewritten every 700 ms poll: read out each time."""
    X, _ = digits
    with running_api(tmp_path) as api:  # no workers: the job stays queued, polled again and again
        page = browser.new_page()
        page.goto(api.api_url + "/")
        record_announcements(page)
        drop(page, {"photo.png": png(255 - X[0])})
        page.wait_for_function("() => document.getElementById('status').textContent.includes('queued')")
        for _ in range(4):  # four more polls of the queued job
            with page.expect_request(lambda r: "/jobs/" in r.url and r.method == "GET"):
                pass
        said = announced(page)
        assert said == ["Uploading 1 file(s)…", "Job queued"], said
        assert page.locator("#status").inner_text().startswith("Job ")  # the visible line is there
        page.close()


def test_a_busy_server_is_asked_again_after_retry_after(tmp_path: Path, browser) -> None:
    """An upload refused with 503 + Retry-After (every upload slot taken) goes again by itself."""
    noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    image = png(noise)  # ~90 KB: an upload (small bodies are not counted)
    with running_api(tmp_path, MAX_CONCURRENT_UPLOADS="1") as api:
        stalled = socket.create_connection((api.settings.api_host, api.settings.api_port), timeout=30)
        head = (
            "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {10**6}\r\n\r\n--b\r\n"
        )
        stalled.sendall(head.encode())  # and then nothing: the one upload slot is taken
        page = browser.new_page()
        page.goto(api.api_url + "/")
        record_announcements(page)
        drop(page, {"noise.png": image})
        page.wait_for_function(
            "() => /^Busy, retrying in [1-5] s$/.test(document.getElementById('status').textContent)",
            timeout=30_000,
        )
        stalled.close()  # the slot frees; the page asks again after Retry-After (5 s) and gets in
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('queued')", timeout=30_000
        )
        said = announced(page)
        assert said == ["Uploading 1 file(s)…", "Busy, retrying in 5 s", "Job queued"], said
        page.close()


def test_a_drawing_over_the_quota_is_asked_again_after_retry_after(tmp_path: Path, browser, digits) -> None:
    """/predict answered 429 (the key's queued images) is sent again once Retry-After (30 s,
    run on the page's clock) has passed and the quota has room again."""
    X, _ = digits
    env = {"MAX_QUEUED_IMAGES_PER_KEY": "1", "PREDICT_TIMEOUT_SECONDS": "1"}
    with running_api(tmp_path, **env) as api, httpx.Client(base_url=api.api_url, timeout=30) as client:
        queued = client.post("/jobs", files=[("files", ("a.png", png(255 - X[0])))])  # no workers: it stays
        assert queued.status_code == 202, queued.text
        page = browser.new_page()
        page.clock.install()  # the page's timers: the test moves them on
        page.goto(api.api_url + "/")
        record_announcements(page)
        draw(page, "mouse")
        page.get_by_role("button", name="Recognise").click()
        page.wait_for_function(
            "() => document.getElementById('draw-status').textContent === 'Busy, retrying in 30 s'"
        )
        assert client.delete(f"/jobs/{queued.json()['id']}").status_code == 200  # the quota has room
        page.clock.run_for(31_000)
        # Admitted this time; with no worker it is not answered within PREDICT_TIMEOUT_SECONDS
        page.wait_for_function(
            "() => document.getElementById('draw-status').textContent"
            ".startsWith('Not recognised: Still running')",
            timeout=30_000,
        )
        assert announced(page)[:2] == ["Recognising…", "Busy, retrying in 30 s"], announced(page)
        page.close()
