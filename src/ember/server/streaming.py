"""Server-sent events, and a streaming response that notices a client leaving at once."""

from __future__ import annotations

import json

import anyio
from starlette.responses import StreamingResponse

DONE = "data: [DONE]\n\n"


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class CancellableSSEResponse(StreamingResponse):
    """Streams ``text/event-stream``. Starlette, under ASGI 2.4 servers, only notices a gone client
    at the next write, which may be long while a request waits in the queue; here a disconnect
    cancels the body generator right away, and the generator is always closed, so its ``finally``
    aborts the request in the engine and frees its KV blocks."""

    def __init__(self, content):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tasks:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away mid-write
                        pass
                    tasks.cancel_scope.cancel()

                tasks.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tasks.cancel_scope.cancel()
        finally:
            await self.body_iterator.aclose()
