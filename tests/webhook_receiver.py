"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 that checks every signature
with standardwebhooks' own verifier and records every call (headers and raw body too, to verify
with other secrets). Hostile answers on chosen paths: `trickle` (the answer's head one byte at a
time, for so many seconds) and `huge` (a 64 MiB body)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

HUGE_BYTES = 64 * 1024 * 1024


def verifies(call: dict, secret: str) -> bool:
    """A recorded call's signature checks with `secret` (standardwebhooks' own verifier)."""
    try:
        Webhook(secret).verify(call["body"], call["headers"])
        return True
    except WebhookVerificationError:
        return False


class Receiver:
    """An HTTP server recording every webhook call; `plan[path]` lists the answers to give in turn
    (then 200), `hold` paths keep their first request waiting until `release` is set, `trickle`
    paths send their answer's head a byte every 0.1 s for that many seconds, `huge` paths answer
    200 with a 64 MiB body. Each call records `sent` (answer bytes written) and `ended`; `peak`
    is the most calls a path had in flight at once."""

    def __init__(self, secret: str | None) -> None:
        self.verifier = Webhook(secret) if secret else None
        self.calls: list[dict] = []
        self.plan: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.hold: set[str] = set()
        self.trickle: dict[str, float] = {}
        self.huge: set[str] = set()
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.arrived, self.release, self.closed = threading.Event(), threading.Event(), threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    assert receiver.verifier is not None
                    receiver.verifier.verify(body, dict(self.headers))
                    verified = True
                except Exception:
                    verified = False
                call = {
                    "path": self.path,
                    "id": self.headers["webhook-id"],
                    "verified": verified,
                    "payload": json.loads(body),
                    "body": body,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "at": time.monotonic(),
                    "sent": 0,
                    "ended": False,
                }
                with receiver.lock:
                    receiver.calls.append(call)
                    first = sum(c["path"] == self.path for c in receiver.calls) == 1
                    steps = receiver.plan.get(self.path) or []
                    status, headers = steps.pop(0) if steps else (200, {})
                    receiver.active[self.path] = receiver.active.get(self.path, 0) + 1
                    now_active = receiver.active[self.path]
                    receiver.peak[self.path] = max(receiver.peak.get(self.path, 0), now_active)
                if self.path in receiver.hold and first:
                    receiver.arrived.set()
                    receiver.release.wait(30)
                try:
                    if self.path in receiver.trickle:
                        self._trickle(call, receiver.trickle[self.path])
                    elif self.path in receiver.huge:
                        self._huge(call)
                    else:
                        self.send_response(status)
                        for name, value in headers.items():
                            self.send_header(name, value)
                        self.send_header("content-length", "0")
                        self.end_headers()
                except OSError:
                    pass  # the sender that asked is gone, or cut the connection
                finally:
                    with receiver.lock:
                        call["ended"] = True
                        receiver.active[self.path] -= 1

            def _write(self, call: dict, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()
                call["sent"] += len(data)

            def _trickle(self, call: dict, seconds: float) -> None:
                """A valid answer's head, a byte every 0.1 s: each read gets something in time."""
                head = b"HTTP/1.1 200 OK\r\n"
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    if receiver.closed.is_set():
                        raise ConnectionAbortedError("the receiver is closing")
                    self._write(call, head[:1])
                    head = head[1:] or b"x-pad: " + b"a" * 40 + b"\r\n"
                    time.sleep(0.1)
                self._write(call, head + b"content-length: 0\r\n\r\n")

            def _huge(self, call: dict) -> None:
                self._write(call, b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % HUGE_BYTES)
                block = b"x" * 65536
                for _ in range(HUGE_BYTES // len(block)):
                    self._write(call, block)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def close(self) -> None:
        self.closed.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
