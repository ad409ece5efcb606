"""Refuse oversized request bodies while they stream in, not after they filled the disk.

(FastAPI's own `max_body_size` answers a declared oversize body in text/plain; this keeps
every error a problem-details JSON.)
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"the request body exceeds {max_bytes} bytes; split the upload into several jobs"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await problem(413, "Upload too large", self.detail)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # FastAPI re-raises HTTPExceptions from body parsing; the problem handler answers.
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counting_receive, send)
