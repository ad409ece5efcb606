"""Issue 26 over real HTTP (uvicorn over an embedded Redis, no workers): stalled keyless uploads,
the event loop while a zip is listed, idle and trickling connections (api/gate.py,
api/routes/predict.py, api/http_guard.py)."""

import select
import socket

import httpx
import numpy as np
import pytest

from devstack.stack import Stack
from tests.helpers import cpu_seconds, empty_entries_zip, png, read_response, running_api, wait_until

pytestmark = pytest.mark.stack  # processes of their own (see tests/helpers.py)


def _connect(stack: Stack) -> socket.socket:
    return socket.create_connection((stack.settings.api_host, stack.settings.api_port), timeout=60)


def _request(route: str, files: list, headers: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """(head, body) of a multipart POST as httpx would send it."""
    request = httpx.Request("POST", f"http://127.0.0.1{route}", files=files, headers=headers)
    body = request.read()
    lines = [f"POST {route} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in ("host", "content-length")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (what it sent before, if anything, is read and dropped)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_stalled_keyless_uploads_get_401_at_once_and_hold_no_upload_slot(tmp_path) -> None:
    """8 stalled keyless uploads made every keyed client's upload get 503 (issue 26, 1): the key
    was checked after the body, up to BODY_READ_TIMEOUT_SECONDS later."""
    noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    image = [("files", ("a.png", png(noise)))]  # ~90 KB: an upload (small bodies take no slot)
    with running_api(tmp_path, API_KEYS="k1", MAX_CONCURRENT_UPLOADS="2") as stack:
        head, body = _request("/jobs", image)
        stalled = [_connect(stack) for _ in range(4)]
        for sock in stalled:
            sock.sendall(head + body[:50])  # and then nothing
        for sock in stalled:  # answered while most of the body was never sent
            answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
            assert b"send a valid API key" in answer
        with httpx.Client(base_url=stack.api_url, timeout=30, headers={"X-API-Key": "k1"}) as client:
            for _ in range(3):  # more than the slots: none is held by the stalled clients
                accepted = client.post("/jobs", files=image)
                assert accepted.status_code == 202, accepted.text
        for sock in stalled:
            sock.close()


def test_the_event_loop_answers_while_predict_batch_lists_a_zip(tmp_path) -> None:
    """/predict_batch listed zips inside `async def`: /health stalled for the whole listing
    (10.9 s for 600,000 entries). The flood is sent whole, then, once the API has spent CPU on
    it (the listing has begun), /health must be answered before the flood is."""
    flood = empty_entries_zip(150_000)  # under /jobs' entry budget: listed, then 413 (> 1,000 images)
    with running_api(tmp_path) as stack, _connect(stack) as sock:
        pid = stack.processes["api"].pid
        head, body = _request("/predict_batch", [("files", ("flood.zip", flood))])
        sock.sendall(head + body)
        spent = cpu_seconds(pid)
        wait_until(lambda: cpu_seconds(pid) > spent + 0.5, 120, 0.01, "the API to work on the zip")
        health = httpx.get(f"{stack.api_url}/health", timeout=120)
        assert health.status_code == 200
        assert not select.select([sock], [], [], 0)[0], "/health was answered only after the listing"
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


@pytest.mark.parametrize("trickle", [False, True], ids=["idle", "trickled-headers"])
def test_a_connection_without_complete_headers_is_closed(tmp_path, trickle: bool) -> None:
    """Idle connections and headers sent a byte at a time were held for ever (issue 26, 5)."""
    with running_api(tmp_path, HEADER_TIMEOUT_SECONDS="1") as stack, _connect(stack) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 10_000
        sent = 0

        def closed() -> bool:
            nonlocal sent
            if trickle and sent < len(request):
                try:
                    sent += sock.send(request[sent : sent + 1])
                except (BrokenPipeError, ConnectionResetError):
                    return True
            return _closed(sock)

        wait_until(closed, 60, 0.05, "the server to close the connection")
        assert sent < len(request)  # it was still sending its headers


def test_a_keep_alive_connection_is_closed_once_idle_but_not_while_answered(tmp_path) -> None:
    """After an answer, the next request's headers are due within the timeout too; a request
    that takes longer (Prefer: wait, /predict) is not cut."""
    with running_api(tmp_path, HEADER_TIMEOUT_SECONDS="1", BODY_READ_TIMEOUT_SECONDS="60") as stack:
        with _connect(stack) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            wait_until(lambda: _closed(sock), 60, 0.05, "the idle keep-alive connection to close")
        with _connect(stack) as sock, _connect(stack) as idle:  # headers in, body slow: its own timeout
            head, body = _request("/jobs", [("files", ("a.png", png(np.zeros((28, 28)))))])
            sock.sendall(head)
            wait_until(lambda: _closed(idle), 60, 0.05, "a header timeout to pass (the idle one closed)")
            assert not _closed(sock)
            sock.sendall(body)
            assert sock.recv(65536).startswith(b"HTTP/1.1 202")


def test_connections_beyond_the_cap_are_refused(tmp_path) -> None:
    with running_api(tmp_path, MAX_CONNECTIONS="3", HEADER_TIMEOUT_SECONDS="60") as stack:
        held = [_connect(stack) for _ in range(3)]
        wait_until(lambda: httpx.get(f"{stack.api_url}/health").status_code == 503, 30, 0.1, "a 503")
        refused = httpx.get(f"{stack.api_url}/health")
        assert refused.headers["Retry-After"] and refused.json()["title"] == "Too many connections"
        for sock in held:
            sock.close()
        wait_until(lambda: httpx.get(f"{stack.api_url}/health").status_code == 200, 30, 0.1, "room again")
