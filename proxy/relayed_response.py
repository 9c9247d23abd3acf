"""The response a handler returns when the answer is on the wire already."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest


class RelayedResponse(web.StreamResponse):
    """What the handler returns once the relay has written the whole answer to the
    transport itself: aiohttp must neither write a head nor an end of its own."""

    def __init__(self, status: int, keep_alive: bool) -> None:
        super().__init__(status=status)
        self._relayed_keep_alive = keep_alive

    @property
    def keep_alive(self) -> bool:
        return self._relayed_keep_alive

    @property
    def prepared(self) -> bool:
        return True

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
