"""The Review view in a real browser (Debian's chromium, as tests/test_browser.py drives it):
zip members' images in the results, corrections typed with the keyboard alone, read back
through the API."""

import os

import httpx

from core.config import PROJECT_ROOT
from devstack.stack import Stack
from tests.test_browser import ZIP_IMAGES, browser, drop, upload, wait_succeeded  # noqa: F401

__all__ = ["browser", "upload"]  # fixtures, shared with tests/test_browser.py


def test_review_with_the_keyboard(stack: Stack, browser, upload, api: httpx.Client) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.api_url + "/")
    drop(page, {"digits.zip": upload["digits.zip"], "broken.png": b"\x89PNG\r\n\x1a\nbroken"})
    wait_succeeded(page)

    # The page sends images before zips: broken.png is item 0 (its thumbnail is the dropped file),
    # the zip's members follow and come from the server.
    member = page.locator("#results tbody tr.done").nth(0)
    index = member.locator("td").nth(1).inner_text()
    first = member.locator("img")
    assert first.get_attribute("loading") == "lazy"
    assert f"/items/{index}/image" in (first.get_attribute("src") or "")
    page.wait_for_function("() => document.querySelector('#results tbody tr.done img').naturalWidth > 0")

    job_id = page.evaluate("() => state.job.id")
    items = [i for i in api.get(f"/jobs/{job_id}/results?limit=100").json()["items"] if i["status"] == "done"]
    order = sorted(items, key=lambda i: (not i["low_confidence"], i["confidence"]))
    flagged = sum(i["low_confidence"] for i in items)
    page.locator("#review").wait_for(state="visible")
    assert page.locator("#review-progress").inner_text() == f"0 of {ZIP_IMAGES} reviewed"
    assert page.locator("#review-need").inner_text().startswith(f"{flagged} item(s) need a look")
    assert page.locator("#review-name").inner_text() == f"#{order[0]['index']} {order[0]['name']}"
    assert page.locator("#review-failed-title").inner_text() == "1 failed item(s)"
    assert page.locator("#review-failed li").inner_text() == "broken.png: not a readable image"

    page.get_by_role("button", name="Start reviewing").press("Enter")  # keyboard only from here
    page.keyboard.press("3")
    page.wait_for_function(
        f"() => document.getElementById('review-progress').textContent === '1 of {ZIP_IMAGES} reviewed'"
    )
    page.keyboard.press("Enter")  # accept the model's digit
    page.wait_for_function(
        f"() => document.getElementById('review-progress').textContent === '2 of {ZIP_IMAGES} reviewed'"
    )
    page.keyboard.press("7")
    page.wait_for_function(
        f"() => document.getElementById('review-progress').textContent === '3 of {ZIP_IMAGES} reviewed'"
    )
    page.wait_for_function("() => document.getElementById('review-model').naturalWidth === 28")

    labels = {i["index"]: i["label"] for i in api.get(f"/jobs/{job_id}/results?limit=100").json()["items"]}
    assert labels[order[0]["index"]] == 3
    assert labels[order[1]["index"]] == order[1]["digit"]
    assert labels[order[2]["index"]] == 7
    assert sum(label is not None for label in labels.values()) == 3
    if os.environ.get("DIGITQ_README_SCREENSHOT"):  # refresh docs/review.png for the README
        page.locator("#review").screenshot(path=str(PROJECT_ROOT / "docs" / "review.png"))
    assert not errors, errors
    page.close()
