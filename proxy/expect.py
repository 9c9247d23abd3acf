"""`Expect` as Go's net/http (so Ollama) treats it, before any handler.

Go's server (src/net/http/server.go, conn.serve) sends `100 Continue` to an HTTP/1.1
request with a body whose `Expect` holds the token `100-continue` (ASCII
case-insensitive, bounded by space, tab or comma: its hasToken); any other non-empty
`Expect`, whatever the request's version, gets `417 Expectation Failed` with an empty
body and the connection closed (its sendExpectationFailed). aiohttp's own handler
answers 417 with the text "Unknown Expect: …" before the proxy's handler runs, so
without the proxy's id; and only to HTTP/1.1.

So the route's expect handler (`expect_handler`) only sends the `100 Continue`, and the
proxy's handler refuses the rest (`refusal`), as it answers everything else: with its
`X-Request-Id`, in its log and metrics.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web

_CONTINUE = re.compile(r"(?:^|[ ,\t])100-continue(?:$|[ ,\t])", re.IGNORECASE | re.ASCII)


def expects_continue(value: str) -> bool:
    """Go's expectsContinue: the token `100-continue` in the header's value."""
    return _CONTINUE.search(value) is not None


async def expect_handler(request: web.Request) -> None:
    """The route's expect handler: `100 Continue` where Go sends one; never an answer.
    Go sends none for a request without a body (its ContentLength 0: `Content-Length: 0`,
    or neither it nor chunked framing): nothing is left to continue with."""
    if (
        request.version >= (1, 1)
        and request.can_read_body
        and expects_continue(request.headers.get(hdrs.EXPECT, ""))
    ):
        # aiohttp's documented way: the interim head goes out through the writer,
        # whose byte count then starts again for the answer.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def refusal(request: web.BaseRequest) -> web.Response | None:
    """Go's 417 for an `Expect` other than `100-continue`; None otherwise."""
    value = request.headers.get(hdrs.EXPECT)
    if not value or expects_continue(value):
        return None
    # No body: Content-Length 0, as Go. Go sets `Connection: close` itself, so it is
    # there for an HTTP/1.0 client too (aiohttp leaves it out of an HTTP/1.0 answer).
    response = web.Response(status=417, headers={hdrs.CONNECTION: "close"})
    response.force_close()
    return response
