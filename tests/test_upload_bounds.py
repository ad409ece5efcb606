"""Issue 8, what one upload may cost the API: huge zip directories, slow bodies, many uploads.

Real HTTP against the API alone (uvicorn over an embedded Redis, no workers), so the server's
own memory can be read from /proc and bodies can be sent as slowly as an attacker would.
"""

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devstack.stack import Stack
from tests.helpers import empty_entries_zip, peak_rss_bytes, png, read_response, running_api, wait_until

pytestmark = pytest.mark.stack  # processes of their own (see tests/helpers.py)


@pytest.fixture
def api_only(tmp_path: Path) -> Iterator[Stack]:
    with running_api(tmp_path) as stack:
        yield stack


@pytest.mark.perf  # the refusal itself: tests/test_uploads.py (fast tier)
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


def _multipart(files: list[tuple[str, tuple[str, bytes]]]) -> tuple[bytes, bytes]:
    """(request head, body) of a POST /jobs, as httpx would send it."""
    request = httpx.Request("POST", "http://digitq/jobs", files=files)
    body = request.read()
    head = (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {request.headers['Content-Type']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode(), body


def _connect(stack: Stack) -> socket.socket:
    return socket.create_connection((stack.settings.api_host, stack.settings.api_port), timeout=30)


def test_a_body_sent_slowly_is_cut_off_with_408(tmp_path: Path, digits) -> None:
    """Slowloris: a byte now and then kept the connection (and an upload's buffers) forever."""
    with running_api(tmp_path, BODY_READ_TIMEOUT_SECONDS="2") as stack, _connect(stack) as sock:
        head, body = _multipart([("files", ("a.png", png(digits[0][0])))])
        sock.sendall(head + body[:100])
        for byte in body[100:200]:  # 5 bytes a second: 20 s, ten times the deadline
            if select.select([sock], [], [], 0.2)[0]:
                break
            sock.send(bytes([byte]))
        else:
            raise AssertionError("no answer while 100 bytes of the body trickled in")
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 2 seconds" in answer


def test_uploads_over_the_limit_are_503_until_one_ends(tmp_path: Path, digits) -> None:
    """Every upload was received at once, however many: a few slow clients held the API's RAM."""
    noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    image = [("files", ("a.png", png(noise)))]  # ~90 KB: an upload (small bodies are not counted)
    head, body = _multipart(image)
    with running_api(tmp_path, MAX_CONCURRENT_UPLOADS="2") as stack:
        stalled: list[socket.socket] = []

        def two_stalled_then_busy() -> httpx.Response | None:
            """Two uploads that stay half sent (and then nothing); a stalled one that was answered
            instead (a 503: a probe below held a slot when it arrived) is replaced."""
            for sock in [s for s in stalled if select.select([s], [], [], 0)[0]]:
                stalled.remove(sock)
                sock.close()
            while len(stalled) < 2:
                stalled.append(_connect(stack))
                stalled[-1].sendall(head + body[:50])
            probe = client.post("/jobs", files=image)
            return probe if probe.status_code == 503 else None

        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            busy = wait_until(two_stalled_then_busy, 20, 0.1, "a 503 while two uploads are received")
            assert busy.headers["Retry-After"] and "2 uploads are being received" in busy.json()["detail"]
            assert client.get("/health").status_code == 200  # requests without a body are not counted
            assert client.post("/admin/reload", json={"version": "v"}).status_code == 403  # nor small ones
            for sock in stalled:
                sock.close()
            wait_until(lambda: client.post("/jobs", files=image).status_code == 202, 10, 0.1, "a free slot")


@pytest.mark.perf
@pytest.mark.parametrize("kind", ["files", "fields"])
def test_many_small_parts_do_not_stay_in_memory(api_only: Stack, kind: str) -> None:
    """Starlette kept every part under 1 MiB in RAM: 120 such parts held ~110 MB per request."""
    part = b"x" * 900_000
    if kind == "files":
        request = httpx.Request(
            "POST", f"{api_only.api_url}/jobs", files=[("files", (f"{i}", part)) for i in range(120)]
        )
    else:
        request = httpx.Request(
            "POST", f"{api_only.api_url}/jobs", data={f"f{i}": part.decode() for i in range(120)}
        )
    pid = api_only.processes["api"].pid
    before = peak_rss_bytes(pid)
    with httpx.Client(timeout=60) as client:
        answer = client.send(request)
    assert answer.status_code in (400, 415), answer.text  # not an image / too many fields
    grown = peak_rss_bytes(pid) - before
    assert grown < 40 * 2**20, f"the API's peak memory grew by {grown / 2**20:.0f} MiB"
