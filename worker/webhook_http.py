"""One webhook attempt over HTTP, bounded: a wall-clock deadline, a few KiB of answer, and only the
addresses the SSRF check let through.

- Deadline: every socket operation (connect, TLS handshake, each send, each read) gets at most the
  time left until the attempt's deadline, and none starts after it. A per-operation timeout alone
  (httpx's) lets a receiver that trickles a byte per second hold the sender for ever; this one
  cannot hold it past WEBHOOK_TIMEOUT_SECONDS (plus one scheduling tick).
- Size: the answer's status line and headers (httpcore/h11 cap them at 100 KiB) and at most
  MAX_BODY_BYTES of its body are read, in reads of at most that size; then the connection is
  closed. The body is never used: a 64 MiB answer costs a few KiB of memory.
- Pinning: httpcore connects through `PinnedBackend`, which ignores the host name and connects to
  the addresses that were checked (core/webhook_addresses.py). The URL keeps the name, so TLS
  SNI, the certificate check and the Host header are the name's. One connection per attempt, no
  pool, no proxy from the environment, no redirects.
- Errors come back as a class (`timeout`, `connect_error`, ...), never the receiver's text: what
  an attempt shows on the job must not turn the service into a port scanner.

httpcore directly rather than httpx: httpx's transport cannot take a network backend, and
sentry-sdk's httpx integration adds trace headers to calls made while a trace is active
(core/sentry.py turns that off too).
"""

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import certifi
import httpcore

from core.webhook_addresses import SlowLookup, UnsafeURL, check_url

MAX_BODY_BYTES = 4096

# Why an attempt failed, as the job shows it: a class and a fixed sentence, no remote text.
ERRORS = {
    "timeout": "no complete answer within WEBHOOK_TIMEOUT_SECONDS",
    "dns_error": "the receiver's host name does not resolve",
    "refused_address": "the receiver's host resolves to a non-public address (SSRF guard)",
    "connect_error": "could not connect to the receiver (connection or TLS handshake failed)",
    "connection_lost": "the connection broke before the receiver answered",
    "protocol_error": "the receiver's answer was not valid HTTP/1.1",
    "invalid_url": "the webhook URL is not a usable http(s) URL",
    "not_signed": "no usable signing secret on the workers (WEBHOOK_SECRET, for the open API)",
}


@dataclass(frozen=True)
class Answer:
    """An attempt's outcome: the receiver's status (if it answered) and Retry-After, or an error class."""

    status: int | None = None
    retry_after: str | None = None
    error: str = ""  # a key of ERRORS, or http_4xx/http_5xx/..., or "" when answered 2xx


def describe(error: str, status: int | None) -> str:
    """The job's `last_error` for an error class."""
    if error.startswith("http_"):
        return f"{error}: the receiver answered {status}"
    return f"{error}: {ERRORS.get(error, error)}"


class _Deadline:
    def __init__(self, at: float) -> None:
        self.at = at

    def left(self, timeout: float | None = None) -> float:
        """Seconds an operation may take now; socket.timeout once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the attempt's deadline has passed")
        return left if timeout is None else min(left, timeout)


class _Stream(httpcore.NetworkStream):
    """A socket whose every operation ends by the deadline; reads of at most MAX_BODY_BYTES."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._sock.settimeout(self._deadline.left(timeout))
            return self._sock.recv(min(max_bytes, MAX_BODY_BYTES))
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            while buffer:
                self._sock.settimeout(self._deadline.left(timeout))
                buffer = buffer[self._sock.send(buffer) :]
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        try:
            # CPython bounds the whole handshake by the socket's timeout, not each read of it.
            self._sock.settimeout(self._deadline.left(timeout))
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except TimeoutError as exc:
            self.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:  # ssl.SSLError included
            self.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return _Stream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock  # what httpcore asks of it (the ALPN protocol), an SSLSocket answers
        if info == "socket":
            return self._sock
        return None


class PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked addresses, whatever host httpcore asks for."""

    def __init__(self, addresses: tuple[str, ...], deadline: _Deadline) -> None:
        self.addresses = addresses
        self.deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        error: Exception = httpcore.ConnectError("no address to connect to")
        for address in self.addresses:  # in the resolver's order, as create_connection does
            try:
                sock = socket.create_connection((address, port), timeout=self.deadline.left(timeout))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return _Stream(sock, self.deadline)
            except TimeoutError as exc:
                raise httpcore.ConnectTimeout(str(exc)) from exc
            except OSError as exc:
                error = httpcore.ConnectError(str(exc))
        raise error

    def connect_unix_socket(self, *_: Any, **__: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks connect over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_TLS = ssl.create_default_context(cafile=certifi.where())


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, allow_private: bool) -> Answer:
    """POST `body` to `url`, the lookup included, within `timeout` seconds by the clock; never
    raises for the receiver's doing."""
    deadline = time.monotonic() + timeout
    try:
        target = check_url(url, allow_private, timeout)  # again: DNS answers change
    except UnsafeURL as exc:
        return Answer(error="invalid_url" if exc.kind == "invalid" else exc.kind)
    except SlowLookup:
        return Answer(error="timeout")
    return send(url, target.addresses, body, headers, deadline)


def send(
    url: str, addresses: tuple[str, ...], body: bytes, headers: dict[str, str], deadline: float
) -> Answer:
    """POST to `url` connecting to `addresses` only (SNI and Host from `url`), by `deadline`
    (time.monotonic())."""
    clock = _Deadline(deadline)
    pool = httpcore.ConnectionPool(ssl_context=_TLS, network_backend=PinnedBackend(addresses, clock))
    try:
        with pool, pool.stream("POST", url, headers=list(headers.items()), content=body) as response:
            answer = Answer(status=response.status, retry_after=_header(response, b"retry-after"))
            _drain(response, clock)
    except (httpcore.TimeoutException, TimeoutError):
        return Answer(error="timeout")
    except httpcore.ConnectError:
        return Answer(error="connect_error")
    except (httpcore.NetworkError, OSError):
        return Answer(error="connection_lost")
    except httpcore.ProtocolError:
        return Answer(error="protocol_error")
    if 200 <= answer.status < 300:  # type: ignore[operator]
        return answer
    return Answer(answer.status, answer.retry_after, f"http_{answer.status // 100}xx")  # type: ignore[operator]


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")[:64]
    return None


def _drain(response: httpcore.Response, deadline: _Deadline) -> None:
    """Read at most MAX_BODY_BYTES of the body while the deadline lasts, then stop: the stream's
    close drops the connection. The status is what counts; the body's fate does not."""
    seen = 0
    try:
        for chunk in response.iter_stream():
            seen += len(chunk)
            if seen >= MAX_BODY_BYTES:
                return
            deadline.left()
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, TimeoutError):
        return
