"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 that checks every signature
with standardwebhooks' own verifier and records every call."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


class Receiver:
    """An HTTP server recording every webhook call; `plan[path]` lists the answers to give in turn
    (then 200), `hold` paths keep their first request waiting until `release` is set."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.calls: list[dict] = []
        self.plan: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.hold: set[str] = set()
        self.arrived, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    receiver.verifier.verify(body, dict(self.headers))
                    verified = True
                except Exception:
                    verified = False
                with receiver.lock:
                    receiver.calls.append(
                        {
                            "path": self.path,
                            "id": self.headers["webhook-id"],
                            "verified": verified,
                            "payload": json.loads(body),
                            "at": time.monotonic(),
                        }
                    )
                    first = sum(c["path"] == self.path for c in receiver.calls) == 1
                    steps = receiver.plan.get(self.path) or []
                    status, headers = steps.pop(0) if steps else (200, {})
                if self.path in receiver.hold and first:
                    receiver.arrived.set()
                    receiver.release.wait(30)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the worker that asked is dead

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
