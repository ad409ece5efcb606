"""What a request body may cost the API: its size, how long it may take to arrive, how many are
received at once, and how much of it stays in memory. (An upload without a valid key, or over
its caller's budgets, never gets here: api/gate.py answers it from its headers.)

- Size: refused while it streams in, not after it filled the disk. (FastAPI's own
  `max_body_size` answers a declared oversize body in text/plain; this keeps every error a
  problem-details JSON.)
- Time: the whole body must arrive within BODY_READ_TIMEOUT_SECONDS (408), so a client sending
  a byte now and then (slowloris) cannot hold a connection, its buffers and an upload slot.
- Concurrency: at most MAX_CONCURRENT_UPLOADS uploads (bodies over SMALL_BODY, or of unknown
  length) are received (and handled) at once per API process; one more is answered 503 +
  Retry-After before its body is read. Small bodies (a reload's JSON) are not counted.
- Memory: multipart files are spooled to disk past SPOOL_BYTES (Starlette keeps up to 1 MiB of
  each in RAM: 1,000 parts of 1 MiB were 1 GB per request), and form fields are few and small
  (MAX_FORM_FIELDS of MAX_FORM_FIELD_BYTES), so a request holds at most ~17 MB of RAM, whatever it sends.
"""

import asyncio

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem

SPOOL_BYTES = 16 * 1024  # a 28x28 PNG is ~300 B: small images still skip the disk
# Non-file fields: metadata, webhook, webhook_events (and a few spare), each at most 64 KiB.
MAX_FORM_FIELDS = 16
MAX_FORM_FIELD_BYTES = 64 * 1024
MultiPartParser.spool_max_size = SPOOL_BYTES  # Starlette's documented knob (a class attribute)


SMALL_BODY = 64 * 1024  # a body declared this small (JSON to /admin) holds little: not an upload


def _has_body(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    return headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers


def _is_upload(scope: Scope) -> bool:
    """A body over SMALL_BODY, or of unknown length (chunked)."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    return not declared.isdigit() or int(declared) > SMALL_BODY


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float, max_concurrent: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.max_concurrent = max_concurrent
        self.receiving = 0  # uploads in this process (one event loop: no lock needed)
        self.detail = f"the request body exceeds {max_bytes} bytes; split the upload into several jobs"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await problem(413, "Upload too large", self.detail)(scope, receive, send)
            return
        if not _is_upload(scope):
            await self.app(scope, self._limited(receive), send)
            return
        if self.receiving >= self.max_concurrent:
            busy = f"{self.max_concurrent} uploads are being received; retry in a few seconds"
            response = problem(503, "Too many uploads", busy)
            response.headers["Retry-After"] = "5"
            await response(scope, receive, send)
            return
        self.receiving += 1
        try:
            await self.app(scope, self._limited(receive), send)
        finally:
            self.receiving -= 1

    def _limited(self, receive: Receive) -> Receive:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        seen = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in: later receives wait for a disconnect, for as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                # FastAPI re-raises HTTPExceptions from body parsing; the problem handler answers.
                detail = f"the request body did not arrive within {self.read_timeout:g} seconds"
                raise HTTPException(408, detail) from None
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self.detail)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return limited_receive
