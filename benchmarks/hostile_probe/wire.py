"""The probe's wire: the routes and models it attacks, raw exchanges over a socket and
the answers read from them, the recording relay between the proxy and the emulator,
and what a case is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

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
    pieces: list[bytes | float | Callable[[], None]],
    seconds: float = 10.0,
    shut: bool = False,
    head_requests: int = 0,
) -> tuple[list[Answer], bytes, bool]:
    """Send `pieces` (bytes, a pause in seconds, or a call once what comes before it is
    sent) on one connection, read until the server closes it (or `seconds`): the
    answers, trailing bytes, and whether it closed."""
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
            if callable(piece):
                piece()
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
