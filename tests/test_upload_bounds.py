"""Issue 8, what one upload may cost the API: huge zip directories, slow bodies, many uploads.

Real HTTP against the API alone (uvicorn over an embedded Redis, no workers), so the server's
own memory can be read from /proc and bodies can be sent as slowly as an attacker would.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.stack import Stack
from tests.helpers import empty_entries_zip, peak_rss_bytes, running_api

pytestmark = pytest.mark.stack  # processes of their own (see tests/helpers.py)


@pytest.fixture
def api_only(tmp_path: Path) -> Iterator[Stack]:
    with running_api(tmp_path) as stack:
        yield stack


@pytest.mark.parametrize("declared", [None, 1], ids=["honest", "end-record-lies"])
def test_a_zip_of_a_million_entries_is_413_before_it_is_listed(api_only: Stack, declared: int | None) -> None:
    """zipfile turned the whole central directory into objects before MAX_ITEMS_PER_JOB was
    checked: 1,000,000 empty entries (88 MB) cost the API ~560 MB and seconds of CPU."""
    archive = empty_entries_zip(1_000_000, declared)
    pid = api_only.processes["api"].pid
    before = peak_rss_bytes(pid)
    started = time.monotonic()
    answer = httpx.post(f"{api_only.api_url}/jobs", files=[("files", ("huge.zip", archive))], timeout=120)
    elapsed = time.monotonic() - started
    assert answer.status_code == 413, answer.text
    grown = peak_rss_bytes(pid) - before
    assert grown < 100 * 2**20, f"the API's peak memory grew by {grown / 2**20:.0f} MiB"
    assert "zip entries; a job takes at most 100000 images" in answer.json()["detail"]
    assert elapsed < 30, f"{elapsed:.1f}s"  # loose: the upload itself is most of it
