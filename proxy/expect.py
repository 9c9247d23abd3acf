"""`Expect` as Go's net/http (so Ollama) treats it, before any handler.

Go's server (src/net/http/server.go, conn.serve) wraps the body of an HTTP/1.1
request with a body whose `Expect` holds the token `100-continue` (ASCII
case-insensitive, bounded by space, tab or comma: its hasToken) in an
expectContinueReader: `100 Continue` goes out when a handler first reads the body, and
an answer given without reading it closes the connection after it (the client may
never send the body, or send it late, where the next request would be read). Any
other non-empty `Expect`, whatever the request's version, gets `417 Expectation
Failed` with an empty body and the connection closed (its sendExpectationFailed).
aiohttp's own expect handler answers `100 Continue` before any handler runs (so to a
request the proxy then refuses, inviting a body it never reads) and 417 with the text
"Unknown Expect: …", without the proxy's id and only to HTTP/1.1.

So the route's expect handler (`expect_handler`) only notes that a `100 Continue` is
owed; the one reader of request bodies (`proxy.limits`) sends it before its first
read (`before_reading`); the proxy's handler closes the connection after an answer
that never read the body (`unread`) and refuses the other expectations (`refusal`),
as it answers everything else: with its `X-Request-Id`, in its log and metrics.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web

from proxy.aiohttp_internals import state_get

_CONTINUE = re.compile(r"(?:^|[ ,\t])100-continue(?:$|[ ,\t])", re.IGNORECASE | re.ASCII)


def expects_continue(value: str) -> bool:
    """Go's expectsContinue: the token `100-continue` in the header's value."""
    return _CONTINUE.search(value) is not None


# The request's client waits for `100 Continue` before it sends its body.
OWES_CONTINUE = web.RequestKey("autoroute_owes_continue", bool)


async def expect_handler(request: web.Request) -> None:
    """The route's expect handler: notes a `100 Continue` where Go would send one at the
    body's first read; never an answer. Go owes none to a request without a body (its
    ContentLength 0: `Content-Length: 0`, or neither it nor chunked framing): nothing
    is left to continue with."""
    if (
        request.version >= (1, 1)
        and request.can_read_body
        and expects_continue(request.headers.get(hdrs.EXPECT, ""))
    ):
        request[OWES_CONTINUE] = True


async def before_reading(request: web.Request) -> None:
    """The owed `100 Continue`, once, before the body's first read."""
    if state_get(request, OWES_CONTINUE):
        request[OWES_CONTINUE] = False
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client left (its connection's loss may not have cancelled the
            # handler yet): nothing to write, and the read that follows finds it gone,
            # as any read of a body whose client left.
            return
        # aiohttp's documented way: the interim head goes out through the writer,
        # whose byte count then starts again for the answer.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def unread(request: web.Request) -> bool:
    """Whether the client still waits for `100 Continue`: its body was never read, and
    the connection closes after the answer, as Go closes it."""
    return state_get(request, OWES_CONTINUE) is True


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
