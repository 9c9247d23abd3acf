"""Request limits beyond the body size: header bytes, number of messages, prompt length,
and the client's silence while it sends a body.

Each refusal is a 4xx in Ollama's shape (`{"error": "..."}`, OpenAI's on `/v1/...`)
that names the limit; header bytes get the plain-text 431 Go's net/http sends. The
checks read what the handler already has (raw headers, the parsed body): no extra
parsing, no I/O.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import Transport
from itertools import chain
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from proxy import expect, go_json
from proxy.aiohttp_internals import client_transport, state_get, wait_drained, writing_paused
from proxy.config_serving import Limits
from proxy.errors import SERVER_BUSY, error_response
from proxy.outcome import Served
from selector_model import request_body

HEAD_TOO_LARGE_BODY = b"431 Request Header Fields Too Large"


# A body this small is read whatever else is held: ordinary requests are never refused
# for the bodies of others.
HELD_FREELY = 1024 * 1024


class Busy(Exception):
    """Request bodies held at once would exceed `limits.max_held_body_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{SERVER_BUSY}. request bodies held at once would exceed {limit} bytes")


class HeldBodies:
    """The bytes of request bodies read into memory and not yet let go, all requests
    together: each request body is held whole, with what is parsed from it, until the
    request is over, and a few clients sending bodies near `max_body_bytes` at once
    would otherwise run the proxy out of memory, and every request in it with it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, request: web.Request, size: int) -> None:
        """Count `size` bytes, all that `request`'s body has brought so far (`Busy` when
        they do not fit), until `let_go` when the request is over. Only bytes that
        arrived count, not the length a head declares: a client that declares long
        bodies and sends nothing (or a byte now and then) holds no memory, and so
        keeps no other client's body out."""
        if self.limit <= 0 or size <= HELD_FREELY:
            return
        counted = state_get(request, _HELD) or 0
        if self.held - counted + size > self.limit:
            raise Busy(self.limit)
        self.held += size - counted
        request[_HELD] = size

    def check(self, size: int) -> None:
        """`Busy` when a body of `size` bytes would not fit now (none is taken): for a
        client that waits to be invited before it sends its body."""
        if 0 < self.limit < self.held + size and size > HELD_FREELY:
            raise Busy(self.limit)


HELD_BODIES = web.AppKey("held_bodies", HeldBodies)
_HELD = web.RequestKey("autoroute_held_body_bytes", int)


def let_go(request: web.Request) -> None:
    """The request is over: its body (`HeldBodies.take`) no longer counts."""
    size = state_get(request, _HELD)
    if size:
        del request[_HELD]
        request.config_dict[HELD_BODIES].held -= size


# A piece of a body arriving that is kept as it came (`read_body`); shorter ones are
# gathered into buffers of at least this length.
_PIECE = 4096
# A body at least this long is joined from its pieces in a thread (`_joined`): CPython
# copies a join this long without the GIL, so the loop serves other clients meanwhile;
# a shorter one it copies holding the GIL, which a thread would only delay.
_JOINED_APART = 1024 * 1024


class BodyTimeout(Exception):
    """The client stopped sending its request body (`timeouts.client_body_idle_seconds`)."""

    def __init__(self, idle_seconds: float) -> None:
        super().__init__(f"request body stalled: no bytes received for {idle_seconds:g}s")


class BodyTooLarge(web.HTTPRequestEntityTooLarge):
    """A body longer than `limit` bytes, a limit of the route's own (the app's is
    aiohttp's own 413, `limits.max_body_bytes`): its 413 names this one."""

    def __init__(self, limit: int, actual: int) -> None:
        super().__init__(max_size=limit, actual_size=actual)
        self.limit = limit


async def read_body(request: web.Request, idle_seconds: float, limit: int = 0) -> bytes:
    """`request.read()` (the app's body limit, or a lower `limit` of the route's own: 413
    above it) with a bound on the client's silence: a body that stops arriving for
    `idle_seconds` raises `BodyTimeout`, so a client that sends a head and then dribbles
    its body ("slowloris" on the body) cannot hold a handler forever. What has arrived
    counts against `limits.max_held_body_bytes` as it arrives (`HeldBodies.take`). The
    usual body came with its head and is complete: that costs one check, no task and no
    timer."""
    length = request.content_length
    if not 0 < limit < request.client_max_size:
        limit = request.client_max_size
    if expect.unread(request) and length is not None and 0 < limit < length:
        # Declared longer than the limit, from a client that waits for `100 Continue`
        # before it sends a byte: refused now (the connection then closes, the body
        # never sent), not invited only to be read up to the limit and refused.
        raise BodyTooLarge(limit, length)
    held = request.config_dict.get(HELD_BODIES)
    if held is not None and length is not None and expect.unread(request):
        # A client that waits for `100 Continue` is told now that its body would not
        # fit, not invited to send it only to be refused on the way.
        held.check(min(length, limit) if limit > 0 else length)
    await expect.before_reading(request)
    content = request.content
    if content.is_eof():
        # The usual body came with its head and is complete: one read, no timer.
        body = await request.read()
        if held is not None:
            held.take(request, len(body))
        if 0 < limit < len(body):
            raise BodyTooLarge(limit, len(body))
        return body
    # Read as it comes, each piece counted as held once it is here. A body longer than
    # the limit is read up to it, then refused: it never holds more (a declared
    # terabyte is the limit's 413, not a busy 503). The pieces are kept as they came and
    # joined once, at the end (a long body in a thread, `_joined`): copied into a buffer
    # as they come, the body's bytes would be copied in the loop every other request
    # waits for, and copied again at the end.
    # Pieces shorter than `_PIECE` are gathered into one buffer up to that length: kept
    # apart, a body sent a byte at a time would hold an object of tens of bytes for each
    # byte it counts against `max_held_body_bytes`.
    pieces: list[bytes | bytearray] = []
    received = 0
    while True:
        try:
            async with asyncio.timeout(idle_seconds if idle_seconds > 0 else None):
                piece = await content.readany()
        except TimeoutError:
            raise BodyTimeout(idle_seconds) from None
        if not piece:
            if received < _JOINED_APART:
                return b"".join(pieces)
            return await asyncio.to_thread(_joined, pieces)
        if len(piece) >= _PIECE:
            pieces.append(piece)
        elif pieces and isinstance(pieces[-1], bytearray) and len(pieces[-1]) < _PIECE:
            pieces[-1] += piece
        else:
            pieces.append(bytearray(piece))
        received += len(piece)
        if 0 < limit < received:
            raise BodyTooLarge(limit, received)
        if held is not None:
            held.take(request, received)


def _joined(pieces: list[bytes | bytearray]) -> bytes:
    """The pieces of a long body joined, in a thread (`_JOINED_APART`). CPython lets the
    GIL go for the copy only where every piece is a `bytes`: the short pieces gathered
    into a bytearray are made `bytes` first, one at a time, each a short hold."""
    return b"".join([bytes(piece) if type(piece) is bytearray else piece for piece in pieces])


def write_stalled(idle_seconds: float) -> str:
    """Why a client that took in nothing of its answer was let go."""
    return f"client read nothing for {idle_seconds:g}s"


async def client_took(request: web.Request, idle_seconds: float, served: Served) -> bool:
    """Wait until the client has taken in enough of what was written to it (its
    transport back under the low-water mark): at once when it is. False when it left,
    or when it took nothing for `idle_seconds` (0: no bound): its connection is then
    aborted and `served` says why."""
    if not writing_paused(request.protocol):
        return True
    return await drained_within(request.writer, client_transport(request), idle_seconds, served)


async def drained_within(
    writer: AbstractStreamWriter, transport: Transport, idle_seconds: float, served: Served
) -> bool:
    """`client_took`'s wait, for a writer already paused (the relay's client leg waits
    so): False when the client left, or when it took nothing for `idle_seconds` (0: no
    bound): `transport` is then aborted and `served` says why."""
    try:
        async with asyncio.timeout(idle_seconds or None):
            await wait_drained(writer)
    except TimeoutError:
        served.error = write_stalled(idle_seconds)
        transport.abort()
        return False
    except ConnectionError:
        return False
    return True


async def read_chunk(request: web.Request, size: int, idle_seconds: float) -> bytes:
    """Up to `size` bytes of a body read as a stream (b"" at its end), with the same
    bound on the client's silence as `read_body`."""
    await expect.before_reading(request)
    try:
        async with asyncio.timeout(idle_seconds or None):
            return await request.content.read(size)
    except TimeoutError:
        raise BodyTimeout(idle_seconds) from None


def header_bytes(request: web.Request) -> int:
    """The size of the header lines as sent (`name: value\\r\\n`)."""
    headers = request.raw_headers
    # Names and values summed by `map`, with no Python frame per header.
    return sum(map(len, chain.from_iterable(headers))) + 4 * len(headers)


def check_headers(request: web.Request, limits: Limits) -> web.Response | None:
    """Header lines over the limit: 431 exactly as Go's net/http (so Ollama) answers a
    head over its own limit, plain text rather than `{"error": ...}`, since Ollama's
    JSON errors come from its handlers and Go refuses such a head before any handler
    runs. The same answer as for a head refused while it arrives (proxy/connection.py).
    """
    limit = limits.max_header_bytes
    if limit and header_bytes(request) > limit:
        response = web.Response(
            status=431,
            body=HEAD_TOO_LARGE_BODY,
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        response.force_close()  # Connection: close, as Go
        return response
    return None


def prompt_chars(doc: dict[str, Any], budget: int, into: list[str] | None = None) -> int:
    """Characters of prompt text (`request_body.texts`: images are not text), counted
    until `budget` is exceeded; `into`, when given, receives each text counted."""
    total = 0
    for text in request_body.texts(doc):
        if into is not None:
            into.append(text)
        total += len(text)
        if total > budget:
            break
    return total


async def check_body(
    path: str, doc: dict[str, Any], limits: Limits, texts: list[str], size: int
) -> web.Response | None:
    """The number of messages and the prompt's length of a parsed inference body of
    `size` bytes. `texts` receives the prompt's texts, every one of them when the body
    passes. They are counted text by text, a Python call each: a large body's in a
    reader thread (`go_json.off_loop`), so that hundreds of thousands of tiny texts
    hold no other client."""
    refused = await go_json.off_loop(size, body_refusal, doc, limits, texts)
    return None if refused is None else error_response(path, *refused)


def body_refusal(doc: dict[str, Any], limits: Limits, texts: list[str]) -> tuple[int, str] | None:
    """`check_body`'s refusal (status and message), None for a body that passes."""
    messages = request_body.entry_count(doc)
    if limits.max_messages and messages is not None and messages > limits.max_messages:
        return 400, f"too many messages: {messages} (limit {limits.max_messages})"
    limit = limits.max_prompt_chars
    budget = limit or sys.maxsize  # 0: no limit, but the texts are still read
    if prompt_chars(doc, budget, texts) > budget:
        return 413, f"prompt too long (limit {limit} characters)"
    return None
