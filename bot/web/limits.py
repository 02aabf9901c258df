"""Reading request bodies with a size cap, before anything else looks at them: a webhook
from anyone on the internet must not be able to make the server hold a huge body."""

from __future__ import annotations

from fastapi import Request, Response

DEFAULT_MAX_BODY_BYTES = 1_000_000


async def read_body(request: Request, limit: int = DEFAULT_MAX_BODY_BYTES) -> bytes | Response:
    """The body, or a 413 response when it is (or says it is) larger than ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        return Response("request too large", status_code=413)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            return Response("request too large", status_code=413)
    return bytes(body)
