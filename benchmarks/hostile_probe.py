"""A hostile-input probe: what an outside security tester sends the proxy, at the HTTP
level and the JSON level, on every route, for a named model and for `auto`.

Runs `autoroute serve` in front of the emulator with a recording relay between them
(every request the proxy sends upstream is parsed and kept), sends each case over a raw
socket and checks every answer:

- no 5xx made by the proxy: a 5xx passes only where the emulator (which answers as
  Ollama does), sent the same bytes, answers the same status (for `auto`, the same
  bytes naming the model `auto` served);
- a refusal in the route's error shape (Ollama's `{"error": "..."}`, OpenAI's on /v1,
  Anthropic's on /v1/messages), or exactly the emulator's own answer for those bytes
  (Go's plain-text refusals of heads it cannot read);
- an `X-Request-Id` on every answer, no header a client smuggled in (`X-Injected`) on
  any answer or any upstream request, no request upstream that the client did not
  send (`/smuggled`), no CR, LF or NUL in any header upstream;
- the proxy alive and answering after each category;
- every served request on an inference route exactly one usage event, and no answer
  more than one.

Then resource exhaustion: idle connections, slow heads, slow bodies, many large bodies
at once, streams whose client never reads, compressed bombs, each while a well-behaved
client keeps sending requests; its latencies are printed as ratios against the same
client with no attack, measured in the same run.

    .venv/bin/python -m benchmarks.hostile_probe [--port 19100] [--no-exhaustion]

`tests/test_hostile_probe.py` runs the first part (every case but the exhaustion ones)
against an in-process proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

MODEL = "llama3.1:8b"
AUTO = "auto"
SMUGGLED = b"/smuggled"
INJECTED = b"x-injected"
# Where a request naming `auto` is checked against the emulator: the model it served.
SERVED_MODEL_HEADER = "x-autoroute-model"
INFERENCE = (
    "/v1/audio/transcriptions",
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)
OTHER_POSTS = ("/api/show", "/api/autoroute/explain", "/api/autoroute/feedback")
READS = ("/", "/api/version", "/api/tags", "/api/ps", "/v1/models", "/v1/models/" + MODEL)
ADMIN = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
BLOB = "/api/blobs/sha256:" + "a" * 64


def minimal(path: str, model: str) -> dict[str, object]:
    """A small valid request for `path` naming `model`."""
    chat = [{"role": "user", "content": "hi"}]
    docs: dict[str, dict[str, object]] = {
        "/api/generate": {"prompt": "hi", "options": {"num_predict": 3}},
        "/api/chat": {"messages": chat, "options": {"num_predict": 3}},
        "/api/embed": {"input": "hi"},
        "/api/embeddings": {"prompt": "hi"},
        "/v1/chat/completions": {"messages": chat, "max_tokens": 3},
        "/v1/completions": {"prompt": "hi", "max_tokens": 3},
        "/v1/embeddings": {"input": "hi"},
        "/v1/responses": {"input": "hi", "max_output_tokens": 3},
        "/v1/messages": {"messages": chat, "max_tokens": 3},
        "/api/show": {},
        "/api/autoroute/explain": {"messages": chat},
        "/api/autoroute/feedback": {"request_id": "x", "rating": 1},
    }
    doc = {"model": model, "stream": False, **docs.get(path, {})}
    if path == "/api/autoroute/feedback":
        del doc["model"], doc["stream"]
    return doc


# Answers ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.encode():
                return value
        return None


def parse_answers(data: bytes, head_requests: int = 0) -> tuple[list[Answer], bytes]:
    """The answers in `data` (a connection's bytes, read to its close), interim ones
    left out, and what follows the last one that parsed; the first `head_requests`
    answers have no body."""
    answers: list[Answer] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0 or not data.startswith(b"HTTP/"):
            break
        lines = data[:end].split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            break
        headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(b":") for ln in lines[1:])]
        rest = data[end + 4 :]
        if 100 <= status < 200:
            data = rest
            continue
        answer = Answer(status, headers, b"")
        length = answer.header("content-length")
        if len(answers) < head_requests or status in (204, 304):
            data = rest
        elif (answer.header("transfer-encoding") or b"").lower() == b"chunked":
            body = bytearray()
            while True:
                line_end = rest.find(b"\r\n")
                if line_end < 0:
                    rest = b""
                    break
                size = int(rest[:line_end].split(b";")[0], 16)
                body += rest[line_end + 2 : line_end + 2 + size]
                rest = rest[line_end + 2 + size + 2 :]
                if size == 0:
                    break
            answer.body = bytes(body)
            data = rest
        elif length is not None:
            answer.body = rest[: int(length)]
            data = rest[int(length) :]
        else:
            answer.body, data = rest, b""
        answers.append(answer)
    return answers, data


async def exchange(
    port: int,
    pieces: list[bytes | float],
    seconds: float = 10.0,
    shut: bool = False,
    head_requests: int = 0,
) -> tuple[list[Answer], bytes, bool]:
    """Send `pieces` (bytes, or a pause in seconds) on one connection, read until the
    server closes it (or `seconds`): the answers, trailing bytes, and whether it
    closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    received = bytearray()
    closed = False

    async def read() -> None:
        nonlocal closed
        while chunk := await reader.read(1 << 20):
            received.extend(chunk)
        closed = True

    reading = asyncio.ensure_future(read())
    try:
        for piece in pieces:
            if isinstance(piece, float):
                await asyncio.sleep(piece)
                continue
            writer.write(piece)
            await writer.drain()
        if shut and writer.can_write_eof():
            writer.write_eof()
        await asyncio.wait_for(asyncio.shield(reading), seconds)
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        reading.cancel()
        writer.close()
    answers, rest = parse_answers(bytes(received), head_requests)
    return answers, rest, closed


# The upstream recorder ----------------------------------------------------------------


@dataclass
class Upstream:
    """A request the proxy sent a backend, as the recorder read it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]


class Recorder:
    """A TCP relay between the proxy and the emulator that reads every request going
    upstream with a strict HTTP/1.1 parser and keeps its head; anything it cannot read
    as one request after another is kept in `unreadable`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.requests: list[Upstream] = []
        self.unreadable: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        parser = _RequestReader(self)

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, seen: _RequestReader | None
        ) -> None:
            try:
                while data := await src.read(1 << 16):
                    if seen is not None:
                        seen.feed(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(client_r, up_w, parser), pump(up_r, client_w, None))


class _RequestReader:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = b""
        self.body_left = 0
        self.chunked = False
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buffer += data
        while self.buffer and not self.broken:
            if self.body_left:
                take = min(self.body_left, len(self.buffer))
                self.buffer = self.buffer[take:]
                self.body_left -= take
                continue
            if self.chunked:
                if not self._chunk():
                    return
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head(self.buffer[:end])
            self.buffer = self.buffer[end + 4 :]

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        headers = [(k, v.strip(b" \t")) for k, _, v in (ln.partition(b":") for ln in lines[1:])]
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._break(head)
            return
        self.recorder.requests.append(Upstream(parts[0], parts[1], headers))
        lengths = [v for k, v in headers if k.lower() == b"content-length"]
        codings = [v for k, v in headers if k.lower() == b"transfer-encoding"]
        if (codings and (lengths or codings != [b"chunked"])) or len(lengths) > 1:
            self._break(head)
        elif codings:
            self.chunked = True
        elif lengths:
            self.body_left = int(lengths[0])

    def _chunk(self) -> bool:
        line_end = self.buffer.find(b"\r\n")
        if line_end < 0:
            return False
        try:
            size = int(self.buffer[:line_end].split(b";")[0], 16)
        except ValueError:
            self._break(self.buffer[:200])
            return False
        if size == 0:
            end = self.buffer.find(b"\r\n\r\n", line_end)
            if end < 0:
                return False
            self.buffer = self.buffer[end + 4 :]
            self.chunked = False
            return True
        if len(self.buffer) < line_end + 2 + size + 2:
            return False
        self.buffer = self.buffer[line_end + 2 + size + 2 :]
        return True

    def _break(self, what: bytes) -> None:
        self.broken = True
        self.recorder.unreadable.append(what[:300])


# Cases --------------------------------------------------------------------------------


@dataclass
class Case:
    category: str
    name: str
    path: str
    pieces: list[bytes | float]
    # The same bytes for the emulator (for `auto`, with the served model named in its
    # place), None where the case has no direct counterpart.
    direct: Callable[[str], list[bytes | float]] | None = None
    seconds: float = 10.0
    shut: bool = False
    head_requests: int = 0
    # An answer is owed (every case but the ones cut short on purpose).
    answered: bool = True
    # The path each answer is to, where the answers are to more than one.
    paths: tuple[str, ...] = ()

    def path_of(self, index: int) -> str:
        return self.paths[index] if index < len(self.paths) else self.path


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[bytes] | None = None,
    version: bytes = b"HTTP/1.1",
    length: bool = True,
    close: bool = True,
) -> bytes:
    lines = [method.encode() + b" " + path.encode("latin-1") + b" " + version, b"Host: localhost"]
    lines += headers or []
    if length and body:
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# `auto` is written with spaces after it (JSON allows them), as many as the served
# model's name may need: the emulator gets the same bytes with that name in its place,
# the body's length, so its framing, unchanged.
_PAD = 40
_AUTO = b'"model":"auto"'


def dumps(doc: object) -> bytes:
    return orjson.dumps(doc).replace(_AUTO, _AUTO + b" " * _PAD)


def body_of(path: str, model: str, **fields: object) -> bytes:
    doc = minimal(path, model)
    doc.update(fields)
    return dumps(doc)


def _same(raw: bytes) -> Callable[[str], list[bytes | float]]:
    def direct(model: str) -> list[bytes | float]:
        named = b'"model":"%s"' % model.encode()
        return [raw.replace(_AUTO + b" " * _PAD, named + b" " * (len(_AUTO) + _PAD - len(named)))]

    return direct


def simple(category: str, name: str, path: str, raw: bytes, **more: object) -> Case:
    return Case(category, name, path, [raw], _same(raw), **more)  # type: ignore[arg-type]


def framing_cases() -> Iterator[Case]:
    cat = "framing"
    for path in ("/api/chat", "/v1/chat/completions", "/api/generate"):
        for model in (MODEL, AUTO):
            body = body_of(path, model)
            n = len(body)
            chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (n, body)
            head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".encode()

            def h(*lines: bytes, head: bytes = head) -> bytes:
                return head + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n"

            variants: list[tuple[str, bytes]] = [
                ("cl+te", h(b"Content-Length: %d" % n, b"Transfer-Encoding: chunked") + chunked),
                ("te+cl", h(b"Transfer-Encoding: chunked", b"Content-Length: 4") + chunked),
                ("two equal cl", h(b"Content-Length: %d" % n, b"Content-Length: %d" % n) + body),
                ("two cl", h(b"Content-Length: %d" % n, b"Content-Length: %d" % (n - 1)) + body),
                ("cl list", h(b"Content-Length: %d, %d" % (n, n)) + body),
                ("cl plus", h(b"Content-Length: +%d" % n) + body),
                ("cl negative", h(b"Content-Length: -1") + body),
                ("cl hex", h(b"Content-Length: 0x%x" % n) + body),
                ("cl beyond int64", h(b"Content-Length: 99999999999999999999999") + body),
                ("cl space", h(b"Content-Length : %d" % n) + body),
                ("te chunked,identity", h(b"Transfer-Encoding: chunked, identity") + chunked),
                ("te gzip,chunked", h(b"Transfer-Encoding: gzip, chunked") + chunked),
                ("te identity", h(b"Transfer-Encoding: identity") + body),
                ("te Chunked", h(b"Transfer-Encoding: Chunked") + chunked),
                (
                    "te twice",
                    h(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + chunked,
                ),
                (
                    "te xchunked",
                    h(b"Transfer-Encoding: xchunked", b"Content-Length: %d" % n) + body,
                ),
                ("te vtab", h(b"Transfer-Encoding:\x0bchunked") + chunked),
                ("te folded", h(b"Transfer-Encoding:", b" chunked") + chunked),
                ("cl folded", h(b"Content-Length:", b" %d" % n) + body),
                ("obs-fold other", h(b"Content-Length: %d" % n, b"X-A: b", b" c") + body),
                ("chunk size zz", h(b"Transfer-Encoding: chunked") + b"zz\r\n" + body),
                ("chunk size -1", h(b"Transfer-Encoding: chunked") + b"-1\r\n" + body),
                ("chunk size 0x", h(b"Transfer-Encoding: chunked") + b"0x%x\r\n" % n + body),
                ("chunk size huge", h(b"Transfer-Encoding: chunked") + b"f" * 20 + b"\r\nab"),
                ("chunk size 2^63", h(b"Transfer-Encoding: chunked") + b"8000000000000000\r\nx"),
                ("chunk size 2^64-1", h(b"Transfer-Encoding: chunked") + b"f" * 16 + b"\r\nx"),
                (
                    "chunk ext",
                    h(b"Transfer-Encoding: chunked")
                    + b'%x;a=b;c="d"\r\n%b\r\n0\r\n\r\n' % (n, body),
                ),
                (
                    "chunk ext space",
                    h(b"Transfer-Encoding: chunked") + b"%x ;a\r\n%b\r\n0\r\n\r\n" % (n, body),
                ),
                (
                    "chunk ext cr",
                    h(b"Transfer-Encoding: chunked") + b"%x;a\rb\r\n%b\r\n0\r\n\r\n" % (n, body),
                ),
                (
                    "chunk ext long",
                    h(b"Transfer-Encoding: chunked")
                    + b"%x;%b\r\n%b\r\n0\r\n\r\n" % (n, b"a" * 70000, body),
                ),
                (
                    "chunk data long",
                    h(b"Transfer-Encoding: chunked") + b"%x\r\n%bXX\r\n0\r\n\r\n" % (n, body),
                ),
                (
                    "chunk no crlf",
                    h(b"Transfer-Encoding: chunked") + b"%x\r\n%b0\r\n\r\n" % (n, body),
                ),
                ("chunk bare lf", h(b"Transfer-Encoding: chunked") + b"%x\n%b\n0\n\n" % (n, body)),
                (
                    "chunk many 1b",
                    h(b"Transfer-Encoding: chunked")
                    + b"".join(b"1\r\n%c\r\n" % c for c in body)
                    + b"0\r\n\r\n",
                ),
                (
                    "trailer smuggle",
                    h(b"Transfer-Encoding: chunked")
                    + b"%x\r\n%b\r\n0\r\nX-Injected: 1\r\nContent-Length: 5\r\n\r\n" % (n, body),
                ),
                ("nul in header", h(b"Content-Length: %d" % n, b"X-A: a\x00b") + body),
                ("cr in header", h(b"Content-Length: %d" % n, b"X-A: a\rX-Injected: 1") + body),
                ("lf in header", h(b"Content-Length: %d" % n, b"X-A: a\nX-Injected: 1") + body),
                ("del in header", h(b"Content-Length: %d" % n, b"X-A: a\x7fb") + body),
                ("long header 8k", h(b"Content-Length: %d" % n, b"X-A: " + b"a" * 8000) + body),
                (
                    "long header 1m",
                    h(b"Content-Length: %d" % n, b"X-A: " + b"a" * 1_100_000) + body,
                ),
                (
                    "many headers",
                    h(b"Content-Length: %d" % n, *[b"X-H%d: v" % i for i in range(2000)]) + body,
                ),
                ("space before colon", h(b"Content-Length: %d" % n, b"X-A : b") + body),
                ("no colon", h(b"Content-Length: %d" % n, b"X-A b") + body),
                ("empty name", h(b"Content-Length: %d" % n, b": b") + body),
                ("expect 100", h(b"Content-Length: %d" % n, b"Expect: 100-continue") + body),
                ("expect 100 mixed", h(b"Content-Length: %d" % n, b"Expect: 100-Continue") + body),
                ("expect list", h(b"Content-Length: %d" % n, b"Expect: 100-continue, x") + body),
                ("expect other", h(b"Content-Length: %d" % n, b"Expect: 200-ok") + body),
                (
                    "expect twice",
                    h(b"Content-Length: %d" % n, b"Expect: 100-continue", b"Expect: 100-continue")
                    + body,
                ),
                (
                    "expect chunked",
                    h(b"Transfer-Encoding: chunked", b"Expect: 100-continue") + chunked,
                ),
                ("expect cl0", h(b"Content-Length: 0", b"Expect: 100-continue")),
                (
                    "upgrade h2c",
                    h(
                        b"Content-Length: %d" % n,
                        b"Upgrade: h2c",
                        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                    )
                    + body,
                ),
                (
                    "upgrade websocket",
                    h(b"Content-Length: %d" % n, b"Upgrade: websocket", b"Connection: Upgrade")
                    + body,
                ),
            ]
            for name, raw in variants:
                # A chunk Go reads the size of: it waits for the chunk's bytes, which
                # never come (the proxy's body deadline answers, later).
                waits = name.startswith("chunk size 2^6")
                yield simple(
                    cat,
                    f"{name} {path} {model}",
                    path,
                    raw,
                    answered=not waits,
                    seconds=2.0 if waits else 10.0,
                )
            # Pipelined: a second request behind the first, in one write.
            second = request("POST", path, body)
            first = request("POST", path, body, close=False)
            yield Case(
                cat, f"pipelined {path} {model}", path, [first + second], _pipelined(first, second)
            )
            # Request smuggling: a Content-Length body that holds a whole request.
            hidden = request("GET", "/smuggled", close=False)
            yield simple(
                cat,
                f"cl hides request {path} {model}",
                path,
                h(b"Content-Length: %d" % (n + len(hidden))) + body + hidden,
            )
            yield simple(
                cat,
                f"te hides request {path} {model}",
                path,
                h(b"Transfer-Encoding: chunked", b"Content-Length: 4")
                + b"%x\r\n%b\r\n0\r\n\r\n" % (n, body)
                + hidden,
            )
            # HTTP/1.0, and versions that are not HTTP/1.x.
            for version in (b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x"):
                yield simple(
                    cat,
                    f"{version.decode()} {path} {model}",
                    path,
                    request("POST", path, body, version=version),
                )
            yield simple(
                cat,
                f"HTTP/1.0 chunked {path} {model}",
                path,
                request(
                    "POST",
                    path,
                    chunked,
                    [b"Transfer-Encoding: chunked"],
                    version=b"HTTP/1.0",
                    length=False,
                ),
            )
            # Early close mid-body.
            cut = request("POST", path, body)[: -n // 2]
            yield Case(
                cat,
                f"close mid-body {path} {model}",
                path,
                [cut],
                None,
                seconds=3.0,
                shut=True,
                answered=False,
            )
    # A request hidden in the body of one answered without its body being read (a
    # refusal, or a route that reads none), a last request closing the connection:
    # the hidden one must be read as body, never served or sent upstream.
    hidden = request("GET", "/smuggled", close=False)
    last = request("GET", "/api/version")
    for method, target, extra in (
        ("POST", "/api/autoroute/health", b""),
        ("POST", "/api/autoroute/nope", b""),
        ("POST", "/api/version", b""),
        ("CONNECT", "/api/chat", b""),
        ("GET", "/api/tags", b""),
        ("HEAD", "/api/tags", b""),
        ("GET", "/api/autoroute/health", b""),
        ("GET", "/metrics", b""),
        (
            "OPTIONS",
            "/api/chat",
            b"Origin: http://localhost\r\nAccess-Control-Request-Method: POST",
        ),
        ("OPTIONS", "/api/chat", b"Origin: http://evil.com\r\nAccess-Control-Request-Method: POST"),
        ("POST", "/api/chat", b"Origin: http://evil.com"),
        ("POST", "/api//chat", b""),
        ("POST", "/api/chat", b"Expect: nope"),
        ("POST", "/api/chat", b"Content-Type: multipart/form-data"),
    ):
        head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n".encode()
        head += extra + b"\r\n" if extra else b""
        raw = head + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden + last
        yield simple(
            cat,
            f"request hidden in {method} {target} {extra[:20]!r}",
            target,
            raw,
            head_requests=1 if method == "HEAD" else 0,
            paths=(target, "/api/version"),
        )
    for target in (
        "/api/chat\x00",
        "/api/ch\rat",
        "/api/ch\nat",
        "/api/ch at",
        "/api/%00",
        "/api/%0d%0a",
        "/" + "a" * 9000,
        "/api/tags?" + "a" * 70000,
        "/" + "a/" * 40000,
        "*",
        "http://x/api/tags",
        "//api/tags",
        "/api/../api/tags",
        "/api/./tags",
        "api/tags",
        "/api/tags#frag",
    ):
        yield simple(
            cat,
            f"target {target[:20]!r}",
            "/api/tags",
            b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n",
        )
    for name, raw in (
        ("http/0.9", b"GET /\r\n\r\n"),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("tls hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40),
        ("lf only", b"GET /api/tags HTTP/1.1\nHost: x\nConnection: close\n\n"),
        ("no host 1.1", b"GET /api/tags HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ("two hosts", b"GET /api/tags HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
        (
            "host injected",
            b"GET /api/tags HTTP/1.1\r\nHost: a\rX-Injected: 1\r\nConnection: close\r\n\r\n",
        ),
        ("leading crlf", b"\r\n\r\nGET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("method lower", b"get /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("method long", b"A" * 10000 + b" /api/tags HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("get with body", request("GET", "/api/tags", b"{}" * 100)),
        ("head with body", request("HEAD", "/api/tags", b"{}" * 100)),
        ("connect", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"),
        ("trace", b"TRACE / HTTP/1.1\r\nHost: x\r\nX-Injected: 1\r\nConnection: close\r\n\r\n"),
    ):
        yield simple(cat, name, "/", raw)


def _pipelined(first: bytes, second: bytes) -> Callable[[str], list[bytes | float]]:
    return lambda model: _same(first + second)(model)


def injection_cases() -> Iterator[Case]:
    cat = "injection"
    crlf = "\r\nX-Injected: 1"
    names = [
        "llama3.1:8b" + crlf,
        "llama3.1:8b%0d%0aX-Injected:%201",
        "llama3.1:8b\u2028X-Injected",
        "llama3.1:8b\u0085X-Injected",
        "llama3.1:8b\x00",
        "llama3.1:8b\x1b[31m",
        "\ud7ff",
        "../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "llama3.1:8b/../../api/delete",
        "auto" + crlf,
        "auto:" + crlf,
        "auto:../../x",
        "a" * 70000,
        "",
        " ",
        "AUTO",
        "Auto:FAST",
        "llama3.1:8b ",
        "llama3.1:8b\t",
        "llama3.1:8b\u200b",
    ]
    for path in (*INFERENCE, "/api/show", "/api/autoroute/explain"):
        for name in names:
            yield simple(
                cat, f"model {name[:24]!r} {path}", path, request("POST", path, body_of(path, name))
            )
    for rid in (
        b"abc\rX-Injected: 1",
        b"a\x00b",
        b"a\x01b",
        b"a\x7fb",
        b"\xff\xfe",
        b"a" * 70000,
        b"%0d%0aX-Injected:1",
        b"a b",
        b"a\tb",
        b"",
        b"\xe2\x80\xa8",
    ):
        for path in ("/api/chat", "/v1/chat/completions", "/api/tags"):
            raw = request(
                "POST" if path != "/api/tags" else "GET",
                path,
                body_of(path, MODEL) if path != "/api/tags" else b"",
                [b"X-Request-Id: " + rid],
            )
            yield simple(cat, f"x-request-id {rid[:16]!r} {path}", path, raw)
    for name, value in (
        (b"X-Autoroute-User", b"u\rX-Injected: 1"),
        (b"Authorization", b"Bearer \x00x"),
        (b"Origin", b"http://x\rX-Injected: 1"),
        (b"Origin", b"null"),
        (b"User-Agent", b"\xff" * 5000),
        (b"Accept-Encoding", b"gzip;q=\x00"),
        (b"Cookie", b"a=" + b"b" * 9000),
        (b"Access-Control-Request-Headers", b"X-Injected"),
    ):
        raw = request("POST", "/api/chat", body_of("/api/chat", MODEL), [name + b": " + value])
        yield simple(cat, f"header {name.decode()} {value[:12]!r}", "/api/chat", raw)
    for target in (
        "/api/chat?x=%0d%0aX-Injected:%201",
        "/api/chat?\r\nX-Injected: 1",
        "/api/tags?a=%00",
        "/api/tags/%0d%0aX-Injected",
        "/api/%0d%0aX-Injected:1/tags",
        "/v1/models/..%2f..%2fapi%2fdelete",
        "/v1/models/%0d%0aX-Injected:%201",
        "/v1/models/" + "a" * 5000,
        "/api/blobs/sha256:../../../etc/passwd",
        "/api/blobs/..%2f..%2fetc%2fpasswd",
        "/api/blobs/sha256:" + "a" * 64 + "/../../x",
        "/api/blobs/sha256:%0d%0aX-Injected:1",
        "/api/blobs/",
        "/api/blobs/%2e%2e",
        "/api/autoroute/experiments/..%2f..%2fhealth",
        "/api/autoroute/experiments/%0d%0a",
    ):
        for method in ("GET", "HEAD", "POST"):
            raw = request(method, target, b"{}")
            yield simple(
                cat,
                f"{method} {target[:40]!r}",
                target.split("?")[0],
                raw,
                head_requests=1 if method == "HEAD" else 0,
            )


def json_cases() -> Iterator[Case]:
    cat = "json"
    wrong: list[object] = [None, True, 1, -1, 1.5, "x", [], [1], {}, {"a": 1}, "", [None]]
    fields = [
        "options",
        "messages",
        "images",
        "tools",
        "format",
        "keep_alive",
        "think",
        "stream",
        "prompt",
        "input",
        "system",
        "template",
        "context",
        "raw",
        "suffix",
        "truncate",
        "dimensions",
        "max_tokens",
        "response_format",
        "stream_options",
        "tool_choice",
        "temperature",
        "stop",
        "seed",
        "reasoning_effort",
        "metadata",
        "model",
    ]
    for path in INFERENCE:
        for model in (MODEL, AUTO):
            base = minimal(path, model)
            for field_name in fields:
                for value in wrong:
                    doc = {**base, field_name: value}
                    yield simple(
                        cat,
                        f"{field_name}={value!r} {path} {model}",
                        path,
                        request("POST", path, dumps(doc)),
                    )
            text = dumps(base)
            inner = text[:-1]
            raws: list[tuple[str, bytes]] = [
                ("empty", b""),
                ("null", b"null"),
                ("array", b"[]"),
                ("number", b"1"),
                ("string", b'"s"'),
                ("spaces", b"   "),
                ("bom", b"\xef\xbb\xbf" + text),
                ("trailing", text + b"garbage"),
                ("two values", text + text),
                ("invalid utf8", inner + b',"prompt":"\xff\xfe","system":"\xc3"}'),
                ("invalid utf8 model", text.replace(model.encode(), model.encode() + b"\xff")),
                ("lone surrogate", inner + b',"system":"\\ud800"}'),
                ("lone low surrogate", inner + b',"system":"\\udc00x"}'),
                ("nan", inner + b',"temperature":NaN}'),
                ("infinity", inner + b',"options":{"temperature":Infinity}}'),
                ("-infinity", inner + b',"seed":-Infinity}'),
                ("1e400", inner + b',"options":{"temperature":1e400}}'),
                ("2^64", inner + b',"options":{"num_predict":18446744073709551616}}'),
                ("-2^63-1", inner + b',"options":{"seed":-9223372036854775809}}'),
                ("big int 300 digits", inner + b',"options":{"seed":' + b"9" * 300 + b"}}"),
                ("1e-400", inner + b',"options":{"temperature":1e-400}}'),
                ("dup model", inner + b',"model":"no-such:1b"}'),
                ("case model", inner + b',"Model":"no-such:1b"}'),
                ("case MODEL first", b'{"MODEL":"no-such:1b",' + text[1:]),
                ("case STREAM", inner + b',"STREAM":true}'),
                ("dup options", inner + b',"options":{"num_predict":1},"options":[]}'),
                ("deep 20000", inner + b',"metadata":' + b"[" * 20000 + b"]" * 20000 + b"}"),
                ("deep 10001 obj", inner + b',"options":' + b'{"a":' * 10001 + b"1" + b"}" * 10002),
                ("huge array", inner + b',"context":[' + b"1," * 500_000 + b"1]}"),
                ("huge string", inner + b',"system":"' + b"a" * 3_000_000 + b'"}'),
                (
                    "many keys",
                    inner + b"," + b",".join(b'"k%d":1' % i for i in range(100_000)) + b"}",
                ),
                ("escaped model", text.replace(b'"model"', b'"\\u006dodel"')),
                ("unterminated", inner),
                ("unterminated string", inner + b',"x":"abc'),
                ("control in string", inner + b',"system":"a\x01b"}'),
                ("nul in string", inner + b',"system":"a\x00b"}'),
                ("bad escape", inner + b',"system":"\\x41"}'),
                ("single quotes", text.replace(b'"', b"'")),
                ("comment", b"/*c*/" + text),
                ("utf16", text.decode().encode("utf-16")),
            ]
            for name, raw_body in raws:
                raw = request("POST", path, raw_body, [b"Content-Type: application/json"])
                # num_predict 2^64 is -2^63 once Go converts it to an int: no limit, as
                # in Ollama, and an answer not streamed ends only with the client.
                endless = name == "2^64" and path in ("/api/generate", "/api/chat")
                yield simple(
                    cat,
                    f"{name} {path} {model}",
                    path,
                    raw,
                    answered=not endless,
                    seconds=2.0 if endless else 10.0,
                )
    for path in OTHER_POSTS + ADMIN + (BLOB,):
        for name, raw_body in (
            ("empty", b""),
            ("null", b"null"),
            ("invalid utf8", b'{"model":"\xff"}'),
            ("deep", b"[" * 20000 + b"]" * 20000),
            ("nan", b'{"model":NaN}'),
            (
                "wrong types",
                b'{"model":1,"source":[],"destination":{},"rating":"x",'
                b'"request_id":[],"insecure":"x","stream":"x"}',
            ),
        ):
            yield simple(cat, f"{name} {path}", path, request("POST", path, raw_body))


AUDIO_PATH = "/v1/audio/transcriptions"
# A tiny WAV: a RIFF head and a few samples.
WAV = b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00" + bytes(28)


def form(parts: list[tuple[bytes, bytes]], boundary: bytes = b"B0undary") -> bytes:
    """A multipart body of `parts` (part headers, part body), closed."""
    out = b"".join(b"--%b\r\n%b\r\n\r\n%b\r\n" % (boundary, h, v) for h, v in parts)
    return out + b"--%b--\r\n" % boundary


def field_part(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="%b"' % name, value


FILE = (b'Content-Disposition: form-data; name="file"; filename="a.wav"', WAV)


def form_cases() -> Iterator[Case]:
    """`/v1/audio/transcriptions`: its multipart form, hostile at every level."""
    cat = "form"
    multipart = b"Content-Type: multipart/form-data; boundary=B0undary"
    for model in (MODEL.encode(), AUTO.encode()):
        m = model.decode()
        bodies: list[tuple[str, list[bytes], bytes]] = [
            ("valid", [multipart], form([field_part(b"model", model), FILE])),
            ("no type", [], form([field_part(b"model", model), FILE])),
            ("json type", [b"Content-Type: application/json"], b'{"model":"%b"}' % model),
            ("no boundary", [b"Content-Type: multipart/form-data"], form([FILE])),
            ("empty boundary", [b'Content-Type: multipart/form-data; boundary=""'], b"--\r\n"),
            (
                "long boundary",
                [b"Content-Type: multipart/form-data; boundary=" + b"b" * 200],
                form([field_part(b"model", model), FILE], b"b" * 200),
            ),
            ("unclosed", [multipart], form([field_part(b"model", model), FILE])[:-12]),
            ("header unended", [multipart], b"--B0undary\r\nContent-Disposition: form-data"),
            (
                "2000 parts",
                [multipart],
                form([field_part(b"x%d" % i, b"v") for i in range(2000)] + [FILE]),
            ),
            (
                "long part header",
                [multipart],
                form([(b"X-A: " + b"a" * 100_000, b"v"), field_part(b"model", model), FILE]),
            ),
            (
                "model crlf",
                [multipart],
                form([field_part(b"model", model + b"\r\nX-Injected: 1"), FILE]),
            ),
            (
                "model invalid utf8",
                [multipart],
                form([field_part(b"model", model + b"\xff"), FILE]),
            ),
            (
                "model twice",
                [multipart],
                form([field_part(b"model", b"no-such:1b"), field_part(b"model", model), FILE]),
            ),
            ("no file", [multipart], form([field_part(b"model", model)])),
            ("empty file", [multipart], form([field_part(b"model", model), (FILE[0], b"")])),
            (
                "quoted-printable bad",
                [multipart],
                form(
                    [
                        (
                            b'Content-Disposition: form-data; name="model"\r\n'
                            b"Content-Transfer-Encoding: quoted-printable",
                            model + b"=ZZ",
                        ),
                        FILE,
                    ]
                ),
            ),
            (
                "nested multipart",
                [multipart],
                form(
                    [
                        (
                            b'Content-Disposition: form-data; name="model"\r\n'
                            b"Content-Type: multipart/mixed; boundary=X",
                            form([FILE], b"X"),
                        ),
                        FILE,
                    ]
                ),
            ),
            (
                "name unquoted",
                [multipart],
                form([(b"Content-Disposition: form-data; name=model", model), FILE]),
            ),
            (
                "value 40 MB",
                [multipart],
                form([field_part(b"model", model), field_part(b"prompt", b"a" * (40 << 20)), FILE]),
            ),
        ]
        for name, headers, body in bodies:
            raw = request("POST", AUDIO_PATH, body, headers)
            yield simple(cat, f"{name} {m}", AUDIO_PATH, raw)
        query = form([FILE])
        yield simple(
            cat,
            f"model in query {m}",
            AUDIO_PATH,
            request("POST", f"{AUDIO_PATH}?model={m}", query, [multipart]),
        )
        yield simple(
            cat,
            f"bad query {m}",
            AUDIO_PATH,
            request("POST", f"{AUDIO_PATH}?model=%zz", query, [multipart]),
        )


def _bomb(wbits: int, megabytes: int = 128) -> bytes:
    """`megabytes` MiB of zeros, gzip (wbits 31) or zlib (15) compressed: about a
    thousandth of that on the wire, past the body limit once inflated."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


def encoding_cases() -> Iterator[Case]:
    cat = "encoding"
    bombs: dict[str, bytes] = {"gzip": _bomb(31), "deflate": _bomb(15), "x-gzip": _bomb(31)}
    try:
        import zstandard

        packer = zstandard.ZstdCompressor(level=3).compressobj()
        zeros = bytes(1 << 20)
        bombs["zstd"] = b"".join(packer.compress(zeros) for _ in range(128)) + packer.flush()
        bombs["zstd valid"] = zstandard.ZstdCompressor().compress(body_of("/api/chat", MODEL))
    except ImportError:
        pass
    bombs["br"] = b"\x1b\xff\xff\xff"
    bombs["gzip, zstd"] = bombs["gzip"]
    for path in ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/messages", BLOB):
        for coding, data in bombs.items():
            name = coding.split()[0]
            raw = request("POST", path, data, [b"Content-Encoding: " + name.encode()])
            yield simple(cat, f"{coding} {path}", path, raw)


def all_cases() -> list[Case]:
    return [
        *framing_cases(),
        *injection_cases(),
        *json_cases(),
        *encoding_cases(),
        *form_cases(),
    ]


# Checking -----------------------------------------------------------------------------


@dataclass
class Report:
    sent: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    served: list[tuple[str, str]] = field(default_factory=list)  # (request id, case)
    ids: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)  # cases answered after 1.5 s or more

    def problem(self, case: Case, what: str) -> None:
        self.problems.append(f"[{case.category}] {case.name}: {what}")


def shape_ok(path: str, answer: Answer) -> bool:
    """Whether a refusal is in the error shape of its route."""
    try:
        doc = orjson.loads(answer.body.splitlines()[0] if answer.body else b"")
    except (orjson.JSONDecodeError, IndexError):
        return False
    if not isinstance(doc, dict):
        return False
    if path == "/v1/messages":
        return doc.get("type") == "error" and isinstance(doc.get("error"), dict)
    if path.startswith("/v1/"):
        error = doc.get("error")
        return isinstance(error, dict) and isinstance(error.get("message"), str)
    return isinstance(doc.get("error"), str)


def go_plain(answer: Answer) -> bool:
    """Whether a refusal is one of Go's net/http plain-text ones (`431 Request Header
    Fields Too Large`, `400 Bad Request...`), which Ollama answers a head it cannot
    read with before any of its handlers runs."""
    kind = answer.header("content-type") or b""
    return kind.startswith(b"text/plain") and answer.body.startswith(b"%d " % answer.status)


async def check(case: Case, proxy_port: int, emulator_port: int, report: Report) -> None:
    answers, rest, closed = await exchange(
        proxy_port, case.pieces, case.seconds, case.shut, case.head_requests
    )
    report.sent[case.category] += 1
    statuses = report.statuses.setdefault(case.category, Counter())
    if not answers:
        statuses[0] += 1
        if case.answered:
            report.problem(case, f"no answer (closed={closed}, bytes {rest[:80]!r})")
        return
    direct: list[Answer] | None = None
    for index, answer in enumerate(answers):
        path = case.path_of(index)
        statuses[answer.status] += 1
        rid = answer.header("x-request-id")
        if not rid:
            report.problem(case, f"{answer.status} without X-Request-Id")
        else:
            report.ids.append(rid.decode("latin-1"))
        for key, value in answer.headers:
            if INJECTED in key.lower() or b"\x00" in value or b"\r" in value:
                report.problem(case, f"answer header {key!r}: {value[:60]!r}")
        if b"Traceback" in answer.body:
            report.problem(case, "a traceback in the answer")
        served_path = path in INFERENCE and answer.status == 200
        if served_path and rid:
            report.served.append((rid.decode("latin-1"), case.name))
        if answer.status < 400:
            continue
        if case.head_requests and not answer.body:
            continue  # an answer to HEAD: no body to check the shape of
        if (
            case.category == "encoding"
            and case.name.startswith("zstd")
            and (answer.body.startswith(b'{"error":"'))
        ):
            # Ollama decodes zstd on /v1 in cloudPassthroughMiddleware, which answers
            # in its own shape (server/cloud_proxy.go); the emulator decodes none.
            continue
        if direct is None and case.direct is not None:
            model = (answer.header(SERVED_MODEL_HEADER) or MODEL.encode()).decode()
            direct, _, _ = await exchange(
                emulator_port, case.direct(model), case.seconds, case.shut, case.head_requests
            )
        same = [d for d in direct or [] if d.status == answer.status]
        if answer.status >= 500 and not same:
            report.problem(
                case,
                f"proxy {answer.status} {answer.body[:160]!r}; emulator "
                f"{[d.status for d in direct or []]}",
            )
        elif not (shape_ok(path, answer) or go_plain(answer)) and not any(
            d.body == answer.body for d in same
        ):
            report.problem(
                case,
                f"{answer.status} not in the route's error shape: {answer.body[:160]!r}; "
                f"emulator {[(d.status, d.body[:80]) for d in direct or []]}",
            )


async def alive(proxy_port: int) -> bool:
    answers, _, _ = await exchange(proxy_port, [request("GET", "/api/version")], 10)
    return bool(answers) and answers[0].status == 200


def check_upstream(recorder: Recorder, report: Report) -> None:
    for up in recorder.requests:
        if SMUGGLED in up.target:
            report.problems.append(f"[upstream] a smuggled request reached the backend: {up}")
        for key, value in up.headers:
            if INJECTED in key.lower() or any(c in value for c in (b"\r", b"\n", b"\x00")):
                report.problems.append(f"[upstream] header {key!r}: {value[:80]!r}")
    for what in recorder.unreadable:
        report.problems.append(f"[upstream] bytes no HTTP/1.1 reader takes: {what[:120]!r}")


def usage_ids(events: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    if events.exists():
        for line in events.read_bytes().splitlines():
            event = orjson.loads(line)
            if "feedback_id" in event:
                continue
            for key in ("request_id", "client_request_id"):
                if event.get(key):
                    found[event[key]] += 1
    return found


async def check_usage(events: Path, report: Report) -> None:
    deadline = time.monotonic() + 10
    wanted = Counter(rid for rid, _ in report.served)
    while time.monotonic() < deadline:
        counts = usage_ids(events)
        if all(counts[rid] >= n for rid, n in wanted.items()):
            break
        await asyncio.sleep(0.1)
    counts = usage_ids(events)
    await asyncio.sleep(0.3)
    print(
        f"usage: {len(report.served)} served inference requests, "
        f"{sum(1 for rid, _ in report.served if counts[rid] == wanted[rid])} with exactly "
        f"one usage event each; {len(set(report.ids))} answer ids"
    )
    for rid, name in report.served:
        if counts[rid] != wanted[rid]:
            report.problems.append(f"[usage] {name}: {counts[rid]} usage events, not 1")
    for rid in set(report.ids):
        if counts[rid] > report.ids.count(rid):
            report.problems.append(f"[usage] id {rid}: {counts[rid]} events")


async def probe(
    proxy_port: int,
    emulator_port: int,
    recorder: Recorder,
    events: Path,
    cases: list[Case],
    report: Report,
) -> None:
    by_category: dict[str, list[Case]] = {}
    for case in cases:
        by_category.setdefault(case.category, []).append(case)
    for category, group in by_category.items():
        began = time.monotonic()
        for case in group:
            one = time.monotonic()
            await check(case, proxy_port, emulator_port, report)
            if time.monotonic() - one > 1.5 and case.answered:
                report.slow.append(f"{case.name} {time.monotonic() - one:.1f} s")
        if not await alive(proxy_port):
            report.problems.append(f"[{category}] the proxy does not answer afterwards")
        print(
            f"{category}: {report.sent[category]} cases in {time.monotonic() - began:.1f} s; "
            f"statuses {dict(sorted(report.statuses[category].items()))}",
            flush=True,
        )
    check_upstream(recorder, report)
    await check_usage(events, report)


# Resource exhaustion ------------------------------------------------------------------


async def victim_once(port: int) -> float:
    """One well-behaved streamed chat, start to final chunk: seconds (inf on failure)."""
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 8},
        }
    )
    began = time.perf_counter()
    answers, _, _ = await exchange(port, [request("POST", "/api/chat", body)], 30)
    if not answers or answers[0].status != 200 or b'"done":true' not in answers[0].body:
        return float("inf")
    return time.perf_counter() - began


async def victim(port: int, rounds: int) -> list[float]:
    return [await victim_once(port) for _ in range(rounds)]


@dataclass
class Tally:
    """The answers the attacks read (request id, status), and the streams they sent
    whole and never read: each of them is a request the proxy took, one usage event."""

    answered: list[tuple[str, int]] = field(default_factory=list)
    unread: int = 0

    def add(self, answers: list[Answer]) -> None:
        for answer in answers:
            rid = answer.header("x-request-id")
            self.answered.append((rid.decode("latin-1") if rid else "", answer.status))


TALLY = Tally()


async def in_flight(port: int) -> bool:
    """A stream of some seconds, started before an attack and read to its end while it
    runs: whether it ended with its final chunk and no error."""
    body = orjson.dumps({"model": MODEL, "prompt": "story", "options": {"num_predict": 1500}})
    answers, _, _ = await exchange(port, [request("POST", "/api/generate", body)], 120)
    TALLY.add(answers)
    return (
        bool(answers)
        and answers[0].status == 200
        and answers[0].body.rstrip().endswith(b"}")
        and b'"done":true' in answers[0].body.splitlines()[-1]
        and b'"error"' not in answers[0].body
    )


async def idle_connections(port: int, n: int, stop: asyncio.Event) -> None:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    await stop.wait()
    for _, w in conns:
        w.close()


async def slow_heads(port: int, n: int, stop: asyncio.Event) -> None:
    async def one() -> None:
        _, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")
            while not stop.is_set():
                w.write(b"X-A: b\r\n")
                await w.drain()
                await asyncio.sleep(0.5)
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    await asyncio.gather(*(one() for _ in range(n)))


async def slow_bodies(port: int, n: int, stop: asyncio.Event) -> None:
    async def one() -> None:
        _, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(request("POST", "/api/chat", b"", [b"Content-Length: 1000000"], close=True))
            w.write(b'{"model":"auto","messages":[{"role":"user","content":"')
            while not stop.is_set():
                w.write(b"a" * 100)
                await w.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    await asyncio.gather(*(one() for _ in range(n)))


async def large_bodies(port: int, n: int, stop: asyncio.Event) -> None:
    big = orjson.dumps(
        {
            "model": AUTO,
            "messages": [{"role": "user", "content": "a " * (4 << 20)}],
            "options": {"num_predict": 2},
            "stream": False,
        }
    )
    raw = request("POST", "/api/chat", big)
    while not stop.is_set():
        for answers, _, _ in await asyncio.gather(*(exchange(port, [raw], 60) for _ in range(n))):
            TALLY.add(answers)


async def held_bodies(port: int, n: int, stop: asyncio.Event) -> None:
    """Bodies of 8 MB sent but their last bytes: together past what the proxy holds at
    once (`limits.max_held_body_bytes`), so later ones are refused, never the victim's."""
    size = 8 << 20
    head = request("POST", "/api/chat", b"", [b"Content-Length: %d" % size])

    async def one() -> None:
        try:
            answers, _, _ = await exchange(port, [head, b" " * (size - 10), 600.0], 600)
        except (ConnectionError, OSError):
            return
        TALLY.add(answers)

    held = [asyncio.ensure_future(one()) for _ in range(n)]
    await stop.wait()
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def unread_streams(port: int, n: int, stop: asyncio.Event) -> None:
    body = orjson.dumps({"model": MODEL, "prompt": "story", "options": {"num_predict": 100000}})
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        sock.send(request("POST", "/api/generate", body))
        socks.append(sock)
    TALLY.unread += n
    await stop.wait()
    for sock in socks:
        sock.close()


async def bombs(port: int, n: int, stop: asyncio.Event) -> None:
    raw = request("POST", "/api/chat", _bomb(31), [b"Content-Encoding: gzip"])
    while not stop.is_set():
        for answers, _, _ in await asyncio.gather(*(exchange(port, [raw], 30) for _ in range(n))):
            TALLY.add(answers)


ATTACKS: list[tuple[str, Callable[[int, int, asyncio.Event], Awaitable[None]], int]] = [
    ("idle connections", idle_connections, 500),
    ("slow heads", slow_heads, 200),
    ("slow bodies", slow_bodies, 100),
    ("large bodies (8 MB)", large_bodies, 8),
    ("held bodies (8 MB)", held_bodies, 40),
    ("unread streams", unread_streams, 100),
    ("gzip bombs", bombs, 8),
]


@dataclass
class Watched:
    """The processes an attack may load: the proxy's pid and the emulator's."""

    proxy: int
    emulator: int


async def exhaustion(
    port: int, emulator_port: int, pids: Watched, only: list[str], rounds: int = 15
) -> list[str]:
    """Each attack in turn while the victim chats through the proxy, then straight to
    the emulator (what the machine and the backend alone do to it); ratios against the
    victim with no attack, CPU of each process over the attack, the proxy's RSS."""
    from benchmarks.servers import cpu_seconds, rss_kib

    problems: list[str] = []
    await victim(port, 3)  # warm
    base = statistics.median(await victim(port, rounds))
    direct_base = statistics.median(await victim(emulator_port, rounds))
    print(
        f"exhaustion: victim alone: median {base * 1000:.1f} ms through the proxy, "
        f"{direct_base * 1000:.1f} ms straight to the emulator, over {rounds} chats"
    )
    for name, attack, n in ATTACKS:
        if only and not any(word in name for word in only):
            continue
        stop = asyncio.Event()
        flight = asyncio.ensure_future(in_flight(port))
        await asyncio.sleep(0.2)
        running = asyncio.ensure_future(attack(port, n, stop))
        await asyncio.sleep(1.0)
        rss_before = rss_kib(pids.proxy)
        cpu = cpu_seconds(pids.proxy), cpu_seconds(pids.emulator), time.monotonic()
        during = await victim(port, rounds)
        direct = await victim(emulator_port, rounds)
        spent = (
            (cpu_seconds(pids.proxy) - cpu[0]) / (time.monotonic() - cpu[2]),
            (cpu_seconds(pids.emulator) - cpu[1]) / (time.monotonic() - cpu[2]),
        )
        stop.set()
        try:
            await asyncio.wait_for(running, 60)
        except (TimeoutError, OSError) as exc:
            problems.append(f"[exhaustion] {name}: attack did not end ({exc!r})")
        failed = sum(1 for t in during if t == float("inf"))
        ok = [t for t in during if t != float("inf")]
        ratio = statistics.median(ok) / base if ok else float("inf")
        print(
            f"exhaustion: {name} x{n}: victim through the proxy median {ratio:.2f}x alone "
            f"(worst {max(ok, default=0) / base:.2f}x, {failed} of {rounds} failed), "
            f"straight to the emulator {statistics.median(direct) / direct_base:.2f}x; "
            f"CPU proxy {spent[0]:.0%} emulator {spent[1]:.0%}; "
            f"proxy RSS {rss_before // 1024} -> {rss_kib(pids.proxy) // 1024} MiB",
            flush=True,
        )
        if failed:
            problems.append(f"[exhaustion] {name}: {failed} of {rounds} victim requests failed")
        if not await flight:
            problems.append(f"[exhaustion] {name}: the stream in flight did not end whole")
        if not await alive(port):
            problems.append(f"[exhaustion] {name}: the proxy does not answer afterwards")
    return problems


async def check_attack_usage(events: Path) -> list[str]:
    """One usage event for each answer the attacks read that the proxy served, none
    more than one for any, and one for each stream sent whole and never read."""
    served = [rid for rid, status in TALLY.answered if status == 200]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        counts = usage_ids(events)
        streams = _unread_events(events)
        if all(counts[rid] for rid in served) and streams >= TALLY.unread:
            break
        await asyncio.sleep(0.2)
    counts, streams = usage_ids(events), _unread_events(events)
    problems = [
        f"[exhaustion usage] {rid}: {counts[rid]} events" for rid in served if counts[rid] != 1
    ]
    problems += [
        f"[exhaustion usage] {rid}: {counts[rid]} events"
        for rid, _ in TALLY.answered
        if counts[rid] > 1
    ]
    if streams != TALLY.unread:
        problems.append(f"[exhaustion usage] {streams} events for {TALLY.unread} unread streams")
    print(
        f"exhaustion usage: {len(TALLY.answered)} answers read ({len(served)} served), "
        f"{TALLY.unread} streams never read: {streams} events for those"
    )
    return problems


def _unread_events(events: Path) -> int:
    """Events of the unread streams: /api/generate streams cancelled by their client
    (the streams in flight are read to their end)."""
    if not events.exists():
        return 0
    found = 0
    for line in events.read_bytes().splitlines():
        event = orjson.loads(line)
        if event.get("endpoint") == "/api/generate" and event["outcome"].get("cancelled"):
            found += 1
    return found


# Running ------------------------------------------------------------------------------


def main() -> int:
    from benchmarks import servers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--port", type=int, default=19100, help="proxy; +1 emulator, +2 relay, +3 attacked"
    )
    parser.add_argument("--no-exhaustion", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated categories")
    parser.add_argument("--attacks", default="", help="comma-separated words of attack names")
    args = parser.parse_args()
    attacks = [word for word in args.attacks.split(",") if word]
    proxy_port, emulator_port, relay_port = args.port, args.port + 1, args.port + 2
    work = Path(tempfile.mkdtemp(prefix="hostile-probe-"))
    events = work / "events.jsonl"
    servers.ensure_free(proxy_port, emulator_port, relay_port, args.port + 3)
    emulator = servers.emulator(emulator_port, "--chunk-ms", "1")
    servers.wait_ready(emulator_port)
    loop = asyncio.new_event_loop()
    recorder = Recorder(emulator_port)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(recorder.start(relay_port), loop).result()
    env = {
        "AUTOROUTE_CONFIG": os.devnull,
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{relay_port}",
        "AUTOROUTE_USAGE__FILE_PATH": str(events),
        "AUTOROUTE_USAGE__SPOOL_DIR": str(work / "spool"),
        "AUTOROUTE_USAGE__FLUSH_INTERVAL_SECONDS": "0.05",
        "AUTOROUTE_LOGGING__ACCESS": "false",
    }
    proxy = servers.proxy(proxy_port, env)
    servers.wait_ready(proxy_port)
    # The exhaustion attacks go to a proxy of their own, in front of the emulator with
    # no relay: the relay is Python in this process, which the victim is timed in.
    plain_port = args.port + 3
    plain = servers.proxy(
        plain_port,
        {
            **env,
            "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{emulator_port}",
            "AUTOROUTE_USAGE__FILE_PATH": str(work / "plain.jsonl"),
        },
    )
    servers.wait_ready(plain_port)
    report = Report()
    cases = all_cases()
    if args.only:
        cases = [c for c in cases if c.category in args.only.split(",")]
    try:
        asyncio.run_coroutine_threadsafe(
            probe(proxy_port, emulator_port, recorder, events, cases, report), loop
        ).result()
        if not args.no_exhaustion:
            report.problems += asyncio.run_coroutine_threadsafe(
                exhaustion(plain_port, emulator_port, Watched(plain.pid, emulator.pid), attacks),
                loop,
            ).result()
            report.problems += asyncio.run_coroutine_threadsafe(
                check_attack_usage(work / "plain.jsonl"), loop
            ).result()
        servers.check_alive()
    finally:
        servers.stop([proxy, plain, emulator])
    logged = servers.log_file(proxy_port).read_text(errors="replace").splitlines()
    bad = [ln for ln in logged if "Traceback" in ln or '"level": "error"' in ln]
    print(f"sent: {dict(report.sent)}; total {sum(report.sent.values())}")
    print(f"upstream requests recorded: {len(recorder.requests)}")
    print(f"proxy log: {len(logged)} lines, {len(bad)} tracebacks or ERROR lines")
    for line in bad[:10]:
        print("  " + line[:300])
    print(f"answered after 1.5 s or more: {len(report.slow)} {report.slow[:20]}")
    print(f"problems: {len(report.problems)}")
    for problem in report.problems:
        print("  " + problem[:400])
    return 1 if report.problems or bad else 0


if __name__ == "__main__":
    sys.exit(main())
