"""The web page at `/` in a real browser: Debian's headless Chromium driven by Playwright.

`make test` installs chromium when it is missing (apt, as root). When it still is not there the
test fails, saying how to install it: a browser test that skips would pass without testing.
"""

import base64
import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.config import PROJECT_ROOT
from devstack.stack import Stack
from tests.helpers import make_zip, png

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
INSTALL = "install it with `apt-get update && apt-get install -y chromium` (as root), or run `make test`"
ZIP_IMAGES = 60  # more than one page of 50 rows


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.fail(f"the browser test needs Debian's chromium at {CHROMIUM}: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright's Python package: run `make install`")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def upload(digits: tuple[np.ndarray, np.ndarray]) -> dict[str, bytes]:
    X, y = digits
    picked = [n * 80 for n in range(ZIP_IMAGES)]  # the digits come sorted by label
    archive = make_zip({f"digits/{n:03d}-label{y[i]}.png": png(255 - X[i]) for n, i in enumerate(picked)})
    # A name that would run as script if the page wrote names as HTML
    evil = make_zip({'<img src=x onerror="document.title=`pwned`">.png': png(255 - X[7])})
    return {"digits.zip": archive, "photo.png": png(255 - X[3000]), "evil.zip": evil}


def drop(page, files: dict[str, bytes] | list[tuple[str, bytes]]) -> None:
    """A real drop event on the drop zone, carrying File objects made in the page (a list of
    pairs may name two files alike, as two folders' files)."""
    pairs = files.items() if isinstance(files, dict) else files
    encoded = [[name, base64.b64encode(data).decode()] for name, data in pairs]
    page.evaluate(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, b64] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const type = name.endsWith(".zip") ? "application/zip" : "image/png";
                transfer.items.add(new File([bytes], name, { type }));
            }
            const zone = document.getElementById("drop");
            zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }""",
        encoded,
    )


def wait_succeeded(page) -> None:
    # Functions, not expressions: the page's CSP forbids eval, which Playwright uses for strings
    page.wait_for_function(
        """() => document.getElementById("results").dataset.status === "succeeded"
            && document.getElementById("status").textContent.includes("succeeded")
            && document.querySelectorAll("#results tbody tr").length > 0
            && ![...document.querySelectorAll("td.digit")].some(td => td.textContent === "…")""",
        timeout=120_000,
    )


def test_drop_a_zip_and_read_the_results(stack: Stack, browser, upload, tmp_path: Path) -> None:
    page = browser.new_page(accept_downloads=True, viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.api_url + "/")
    assert page.get_by_label("Choose files").is_visible()  # labelled controls

    drop(page, {"photo.png": upload["photo.png"], "digits.zip": upload["digits.zip"]})
    wait_succeeded(page)

    total = ZIP_IMAGES + 1
    status = page.locator("#status").inner_text()
    assert f"{total} of {total} done" in status, status
    assert page.locator("#upload-progress").evaluate("bar => bar.value === bar.max && bar.max > 1")
    rows = page.locator("#results tbody tr")
    assert rows.count() == 50  # paged, not every row at once
    first = rows.nth(0)
    assert first.locator("td").nth(2).inner_text() == "photo.png"
    assert first.locator("img").count() == 1  # the dropped image's thumbnail
    assert first.locator("td.digit").inner_text() in "0123456789"
    assert page.locator("#page-info").inner_text() == f"Page 1 of 2 ({total} images)"
    if os.environ.get("DIGITQ_README_SCREENSHOT"):  # refresh docs/page.png for the README
        page.evaluate("() => document.querySelector('[aria-labelledby=upload-title]').scrollIntoView()")
        page.screenshot(path=str(PROJECT_ROOT / "docs" / "page.png"))

    page.get_by_role("button", name="Next page").click()  # keyboard-operable buttons
    page.wait_for_function("() => document.querySelectorAll('#results tbody tr').length === 11")
    assert page.locator("#results tbody tr").nth(0).locator("td").nth(1).inner_text() == "50"

    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    rows_csv = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows_csv) == total and rows_csv[0]["name"] == "photo.png"
    assert sum(r["status"] == "done" for r in rows_csv) == total
    with page.expect_download() as download:
        page.get_by_role("link", name="Download JSON Lines").click()
    lines = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(total)) and lines[0]["name"] == "photo.png"
    assert download.value.suggested_filename.endswith(".jsonl")

    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_names_are_text_never_markup(stack: Stack, browser, upload) -> None:
    page = browser.new_page()
    page.goto(stack.api_url + "/")
    drop(page, {"evil.zip": upload["evil.zip"]})
    wait_succeeded(page)
    name = page.locator("#results tbody tr td.name").nth(0)
    assert name.inner_text().startswith("<img src=x")
    assert name.locator("img").count() == 0 and page.title() != "pwned"
    page.close()


def test_asks_for_the_api_key_and_keeps_it_in_the_tab(keyed_stack: Stack, browser, upload) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(keyed_stack.api_url + "/")  # the page itself needs no key
    drop(page, {"photo.png": upload["photo.png"]})
    key_field = page.get_by_label("API key")
    key_field.wait_for(state="visible")
    key_field.fill("page-key")
    key_field.press("Enter")  # the upload goes again, with the key
    wait_succeeded(page)
    assert page.evaluate("sessionStorage.getItem('digitq-api-key')") == "page-key"
    assert context.cookies() == []  # a header, never a cookie: nothing for CSRF to ride on
    context.close()


def test_keyboard_only_upload(stack: Stack, browser, upload, tmp_path: Path) -> None:
    """Tab to the drop zone, Enter opens the file chooser; the rest follows without a mouse."""
    image = tmp_path / "photo.png"
    image.write_bytes(upload["photo.png"])
    page = browser.new_page()
    page.goto(stack.api_url + "/")
    for _ in range(3):  # after the drawing pad's two buttons
        page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "drop"
    # Enter opens the picker: the test sees the picker's click (Chromium's native chooser event
    # proved flaky under load), then picks the file as the chooser would.
    page.evaluate(
        """() => document.getElementById("files").addEventListener("click", (event) => {
            window.pickerOpened = true;
            event.preventDefault();
        })"""
    )
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.pickerOpened === true", timeout=10_000)
    page.get_by_label("Choose files").set_input_files(str(image))
    wait_succeeded(page)
    assert page.locator("#results tbody tr td.name").inner_text() == "photo.png"
    page.close()
