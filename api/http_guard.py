"""Connection limits in front of the app: a header-read timeout and a connection cap.

`uvicorn api.main:app --http api.http_guard:GuardedHTTPProtocol` (make run and compose do).

Why a protocol class and not uvicorn's settings or an ASGI middleware:
- an ASGI middleware sees a request only once its headers are complete: an idle connection,
  or one whose headers trickle in a byte at a time, never reaches it;
- uvicorn (0.54, httptools) arms `--timeout-keep-alive` only after a response: a new connection
  that sends nothing, or trickles its headers, is held for ever; it has no header timeout;
- `--limit-concurrency` answers 503 to a request beyond the limit, but only once its headers
  have arrived: idle connections are never refused, so ~1,000 of them exhaust the descriptors;
- `h11_max_incomplete_event_size` bounds the headers' size, not their time (and applies to h11
  only; uvicorn[standard] runs httptools).

So this subclass of uvicorn's httptools protocol (its documented `--http` import string) adds:
- HEADER_TIMEOUT_SECONDS: a connection must complete a request's headers within this time of
  opening, and of its previous response ending; otherwise it is closed. A request whose headers
  are in (its body then has BODY_READ_TIMEOUT_SECONDS, api/limits.py) is never cut here;
- MAX_CONNECTIONS: a connection beyond this many open ones is answered 503 and closed at once.
It hooks uvicorn's protocol at `connection_made`, `on_response_complete` and `connection_lost`,
and reads `cycle` (the request being answered): uvicorn is pinned (constraints.txt), and
tests/test_gate_http.py fails if those change meaning.
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.config import get_settings

_BUSY_BODY = b'{"type":"about:blank","title":"Too many connections","status":503,"detail":"retry shortly"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 5\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class GuardedHTTPProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.header_timeout_seconds
        self.max_connections = settings.max_connections
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._expect_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _expect_headers(self) -> None:
        """The next request's headers are due within header_timeout (none is being answered)."""
        self._cancel()
        if self.cycle is None or self.cycle.response_complete:
            self.header_timer = self.loop.call_later(self.header_timeout, self._overdue, self.cycle)

    def _overdue(self, answered: object) -> None:
        # The same cycle as when armed: no request's headers completed since.
        if self.cycle is answered and not self.transport.is_closing():
            self.transport.close()

    def _cancel(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
