"""Answering a hit: the kept answer's bytes as first sent, behind a head with this
request's own headers (X-Request-Id, X-Autoroute-*) and `X-Autoroute-Cache: hit`.

A stream goes out as the same chunks (NDJSON lines or SSE events, the final one with
its counters), as fast as the client takes them: it is all there, but written at once
it would sit in the proxy's memory for as long as a client that does not read keeps
its connection. An HTTP/1.0 client, which cannot read chunked framing, gets the body
whole, as the relay gives it.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import web

from proxy import final_chunk
from proxy.aiohttp_internals import client_transport
from proxy.cache.store import Entry
from proxy.continuations import answered_ending
from proxy.http11 import dechunk
from proxy.limits import client_took
from proxy.origins import CORS_HEADERS
from proxy.outcome import Served
from proxy.protocol import REQUEST_ID_HEADER
from proxy.relayed_response import RelayedResponse

CACHE_HEADER = "X-Autoroute-Cache"
# Enough of the end of the answer to hold its final chunk's counters and the end of
# the context it returns.
_TAIL_BYTES = 16 * 1024
# Written to the client's transport at a time, each after the client took the last.
_SLICE_BYTES = 64 * 1024


def _wire(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _dated(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The kept headers with the backend's `Date` (where it sent one) made now."""
    now = formatdate(usegmt=True)
    return [(n, now if n.lower() == "date" else v) for n, v in headers]


async def replay(
    request: web.Request, served: Served, entry: Entry, write_idle: float
) -> web.StreamResponse:
    """`write_idle`: how long the client may take nothing before it is let go
    (`timeouts.client_write_idle_seconds`)."""
    served.extra[CACHE_HEADER] = "hit"
    served.status = entry.status
    # The answer's last bytes, read as the relay reads a backend's: its counters, and
    # the context it returns, which `auto` remembers the model of for the
    # conversation's next turn (the entry may have been kept for a request that named
    # the model, or by another proxy).
    tail = entry.body[-_TAIL_BYTES:]
    served.stats = final_chunk.parse(tail)
    served.context_ending = answered_ending(tail)
    own = [
        (REQUEST_ID_HEADER, served.request_id),
        *served.extra.items(),
        *request.get(CORS_HEADERS, ()),
    ]
    if request.version < (1, 1):
        body = dechunk(entry.body) if entry.chunked else entry.body
        response = web.Response(status=entry.status, reason=entry.reason, body=body)
        for name, value in (*_dated(entry.headers), *own):
            response.headers.add(name, value)
        served.body_bytes = len(body)
        served.first_byte_at = time.perf_counter()
        return response
    out = bytearray(b"HTTP/1.1 %d %b\r\n" % (entry.status, entry.reason.encode("latin-1")))
    for name, value in _dated(entry.headers):
        out += b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
    for name, value in own:
        out += b"%b: %b\r\n" % (_wire(name), _wire(value))
    if entry.chunked:
        out += b"Transfer-Encoding: chunked\r\n"
    else:
        out += b"Content-Length: %d\r\n" % len(entry.body)
    keep_alive = request.keep_alive
    if not keep_alive:
        out += b"Connection: close\r\n"
    out += b"\r\n"
    transport = client_transport(request)
    served.first_byte_at = time.perf_counter()
    served.body_bytes = len(entry.body)
    whole = memoryview(bytes(out) + entry.body)
    for start in range(0, len(whole), _SLICE_BYTES):
        transport.write(whole[start : start + _SLICE_BYTES])
        if not await client_took(request, write_idle, served):
            served.cancelled = True
            return RelayedResponse(entry.status, False)
    return RelayedResponse(entry.status, keep_alive)
