"""Isolation between requests that share the proxy's upstream connections: every
client gets exactly its own answer, whatever a client sends (`Expect`, header bytes
that are not Latin-1) and whatever a backend sends first (interim 1xx heads); a
connection belongs to one request until that request's bookkeeping is done; and a
failure after the first relayed byte ends the stream as Ollama does and is an error.

The clients here are raw sockets: they see every byte the proxy writes, interim heads
and anything written after an answer included."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import final_chunk
from proxy.app import APP_KEY
from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth
from proxy.config_serving import Health
from proxy.outcome import Served
from proxy.relay import ClientLeg
from proxy.upstream import dechunk
from tests.support import Emulator, Proxy, RawBackend, ServerThread, file_usage
from tests.test_backends import scrape_failures
from tests.usage_services import read_bytes, wait_for

MODEL = "qwen2.5:7b"
ECHO_MODEL = "echo:latest"
BUSY = "make the backend answer 503"
# A hang here is a failure (a client waiting for an answer that went to someone else).
HANG = 30.0


class EchoBackend(RawBackend):
    """A raw HTTP/1.1 backend whose answer to a POST is the request's own prompt, so
    that an answer shows whose request it belongs to. To `Expect: 100-continue` it
    answers as Go's net/http does (a `100 Continue` once the handler reads the body);
    with `interim` it also sends unsolicited 1xx heads before every answer. An upload
    (`/api/blobs/...`) it refuses at once, unread, and closes, as Go's net/http does
    when a handler answers without reading a large body."""

    def __init__(self, interim: bool = False) -> None:
        super().__init__()
        self.interim = interim
        self.heads: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                method, path, headers = _request_head(head)
                if self.interim:
                    writer.write(
                        b"HTTP/1.1 100 Continue\r\n\r\n"
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                    )
                if path.startswith("/api/blobs/"):
                    refusal = b'{"error":"digest mismatch"}'
                    writer.write(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%b"
                        % (len(refusal), refusal)
                    )
                    await writer.drain()
                    return
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(reader, headers)
                writer.write(_echo(method, path, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _request_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """A request head's method, path and headers (names lowercased)."""
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            out += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return bytes(out)
    return await reader.readexactly(int(headers.get("content-length") or 0))


def _echo(method: str, path: str, body: bytes) -> bytes:
    if path == "/api/tags":
        doc: dict[str, Any] = {"models": [{"name": ECHO_MODEL, "model": ECHO_MODEL}]}
    elif path == "/api/ps":
        doc = {"models": []}
    elif method == "POST" and orjson.loads(body).get("prompt") == BUSY:
        # Ollama's answer when its queue is full (ErrMaxQueue, handleScheduleError).
        refusal = orjson.dumps(
            {"error": "server busy, please try again.  maximum pending requests exceeded"}
        )
        return (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(refusal), refusal)
        )
    elif method == "POST":
        request = orjson.loads(body)
        doc = {"model": request.get("model"), "echo": request.get("prompt"), "done": True}
    else:
        doc = {"version": "0.13.0"}
    payload = orjson.dumps(doc)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )


@dataclasses.dataclass
class Answer:
    interim: list[int]
    status: int
    headers: dict[str, str]
    framed: bytes  # the body as it came, chunk framing included

    @property
    def body(self) -> bytes:
        return dechunk(self.framed) if self.headers.get("transfer-encoding") else self.framed

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.body.splitlines()]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response: its interim heads, then the final head and body."""
    interim: list[int] = []
    async with asyncio.timeout(HANG):
        while True:
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if not 100 <= status < 200:
                break
            interim.append(status)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            framed = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                framed += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    framed += await reader.readuntil(b"\r\n")
                    break
                framed += await reader.readexactly(size + 2)
            return Answer(interim, status, headers, bytes(framed))
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        return Answer(interim, status, headers, body)


def request_bytes(
    method: str, path: str, body: bytes = b"", extra: bytes = b"", key: str | None = None
) -> bytes:
    head = b"%b %b HTTP/1.1\r\nHost: localhost\r\n" % (method.encode(), path.encode())
    if key is not None:
        head += b"Authorization: Bearer %b\r\n" % key.encode()
    if body or method == "POST":
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


async def exchange(port: int, raw: bytes) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await read_answer(reader)
    finally:
        writer.close()


@pytest.fixture
def echo(servers: ServerThread) -> Iterator[EchoBackend]:
    backend = EchoBackend()
    servers.call(backend.start)
    yield backend
    servers.call(backend.stop)


def unprobed_proxy(
    servers: ServerThread, url: str, tmp_path: Path, auth: Auth | None = None, **health: Any
) -> Proxy:
    """A proxy in front of `url` whose health checks never run during a test (only
    the requests it sends reach the backend), its usage events with their prompts in a
    file under `tmp_path`; `health` adds circuit settings."""
    return Proxy(
        servers,
        [url],
        auth=auth or Auth(),
        usage=file_usage(tmp_path, log_prompts=True),
        health=Health(interval_seconds=3600, **health),
    )


KEY_A, KEY_B = "k-client-a", "k-client-b"


async def test_expect_100_continue_never_reaches_the_backend_nor_crosses_answers(
    servers: ServerThread, echo: EchoBackend, tmp_path: Path
) -> None:
    """curl sends `Expect: 100-continue` with a body over 1 MiB and its body after the
    proxy's `100 Continue`. The client gets exactly one final answer, its own; the next
    client (another key) gets its own; the backend never sees `Expect`."""
    auth = Auth(keys=(ApiKey(sha256=hash_key(KEY_A), name="a"), ApiKey(sha256=hash_key(KEY_B))))
    proxy = unprobed_proxy(servers, echo.url, tmp_path, auth=auth)
    try:
        big = orjson.dumps(
            {"model": "echo", "prompt": "SECRET-OF-A", "system": "x" * (1 << 20) + "y" * 4096}
        )
        raw = request_bytes("POST", "/api/generate", big, b"Expect: 100-continue\r\n", KEY_A)
        head, body = raw[: -len(big)], raw[-len(big) :]
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(head)
            async with asyncio.timeout(HANG):
                continued = await reader.readuntil(b"\r\n\r\n")
            assert continued.startswith(b"HTTP/1.1 100 ")
            writer.write(body)
            answer_a = await read_answer(reader)
            assert answer_a.interim == []  # no second 100: the backend was never asked
            assert answer_a.status == 200
            assert orjson.loads(answer_a.body)["echo"] == "SECRET-OF-A"

            answer_b = await exchange(
                proxy.port,
                request_bytes(
                    "POST",
                    "/api/generate",
                    orjson.dumps({"model": "echo", "prompt": "SECRET-OF-B"}),
                    key=KEY_B,
                ),
            )
            assert answer_b.status == 200
            assert orjson.loads(answer_b.body)["echo"] == "SECRET-OF-B"
            assert b"SECRET-OF-A" not in answer_b.framed

            # Nothing else was written on A's connection: its next request gets its own
            # next answer.
            writer.write(
                request_bytes(
                    "POST",
                    "/api/generate",
                    orjson.dumps({"model": "echo", "prompt": "NEXT-OF-A"}),
                    key=KEY_A,
                )
            )
            again = await read_answer(reader)
            assert (again.interim, again.status) == ([], 200)
            assert orjson.loads(again.body)["echo"] == "NEXT-OF-A"
        finally:
            writer.close()
        assert echo.heads and not any(b"expect:" in h.lower() for h in echo.heads)
    finally:
        proxy.stop()


async def test_interim_heads_from_the_backend_are_skipped_on_the_same_connection(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A backend may send 1xx heads before any answer (HTTP/1.1 allows it unasked):
    they are not the answer, and the connection is reused only after the real one."""
    backend = EchoBackend(interim=True)
    servers.call(backend.start)
    proxy = unprobed_proxy(servers, backend.url, tmp_path)
    try:

        async def ask(prompt: str) -> Answer:
            body = orjson.dumps({"model": "echo", "prompt": prompt})
            return await exchange(proxy.port, request_bytes("POST", "/api/generate", body))

        for round_ in range(3):
            prompts = [f"client-{n}-round-{round_}" for n in range(4)]
            answers = await asyncio.gather(*(ask(p) for p in prompts))
            for prompt, answer in zip(prompts, answers, strict=True):
                assert (answer.interim, answer.status) == ([], 200)
                assert orjson.loads(answer.body)["echo"] == prompt
        version = await exchange(proxy.port, request_bytes("GET", "/api/version"))
        assert version.status == 200 and orjson.loads(version.body) == {"version": "0.13.0"}
    finally:
        proxy.stop()
        servers.call(backend.stop)


@pytest.mark.parametrize(
    ("method", "target", "sent"),
    [
        ("POST", "http://localhost/api/generate", "/api/generate"),
        ("POST", "http://user:secret@localhost:11434/api/generate?q=1", "/api/generate?q=1"),
        ("GET", "HTTP://127.0.0.1/api/version", "/api/version"),
        ("POST", "http://localhost/api/gen%65rate", "/api/gen%65rate"),
        ("GET", "http://localhost/api/version#x?y", "/api/version#x?y"),
    ],
)
async def test_an_absolute_target_reaches_the_backend_in_origin_form(
    servers: ServerThread, echo: EchoBackend, tmp_path: Path, method: str, target: str, sent: str
) -> None:
    """A client may name the proxy in the absolute form (`POST http://host/path`), as
    to a forward proxy. The backend is an origin server: it gets the path and query
    alone (RFC 9112, 3.2.1), as sent, never the client's authority, which it would take
    over the proxy's `Host` (Go's net/http does, and Ollama checks that host), nor the
    client's userinfo."""
    proxy = unprobed_proxy(servers, echo.url, tmp_path)
    try:
        body = orjson.dumps({"model": "echo", "prompt": "hi"}) if method == "POST" else b""
        answer = await exchange(proxy.port, request_bytes(method, target, body))
        assert answer.status == 200, answer.framed
        line = echo.heads[-1].split(b"\r\n", 1)[0]
        assert line == f"{method} {sent} HTTP/1.1".encode()
    finally:
        proxy.stop()


async def test_header_bytes_a_client_sends_never_fail_a_backend(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """Header values that are not Latin-1 text (UTF-8 `中`, invalid UTF-8) in the
    request id or any header: served, and no circuit counts them as failures."""
    proxy = unprobed_proxy(
        servers, own_emulator.url, tmp_path, failure_threshold=2, open_seconds=3600
    )
    try:
        odd_headers = [
            "X-Request-Id: 中\r\n".encode(),
            b"X-Request-Id: \xff\xfe\r\n",
            b"X-Request-Id: ok\r\nX-Trace: \xc3\x28 \xff\r\n",
            "User-Agent: клиент/1.0\r\nX-Request-Id: 中\r\n".encode(),
        ]
        generate = orjson.dumps({"model": MODEL, "prompt": "hi", "stream": False})
        for extra in odd_headers:
            version = await exchange(proxy.port, request_bytes("GET", "/api/version", b"", extra))
            assert version.status == 200, version.framed
            answer = await exchange(
                proxy.port, request_bytes("POST", "/api/generate", generate, extra)
            )
            assert answer.status == 200, answer.framed
            assert orjson.loads(answer.body)["done"] is True
        assert await scrape_failures(proxy.url, own_emulator.url) == (0, "closed")
        answer = await exchange(proxy.port, request_bytes("POST", "/api/generate", generate))
        assert answer.status == 200
    finally:
        proxy.stop()


def _stream_request(prompt: str) -> bytes:
    body = orjson.dumps({"model": MODEL, "prompt": prompt, "options": {"num_predict": 12}})
    return request_bytes("POST", "/api/generate", body)


async def test_each_stream_keeps_its_own_byte_count_when_its_connection_is_reused_at_once(
    servers: ServerThread,
    own_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """16 concurrent streams; the moment each one's last chunk arrives, another user
    of the pool (a health check) asks for a connection. Each stream's usage event has
    the bytes its client received, and the other user is served."""
    proxy = unprobed_proxy(servers, own_emulator.url, tmp_path)
    pool = proxy.app[APP_KEY].backends
    neighbours: list[asyncio.Task[Any]] = []
    sink = ClientLeg.on_body

    def sink_then_ask(leg: ClientLeg, data: bytes) -> None:
        sink(leg, data)
        if data.endswith(b"0\r\n\r\n"):
            loop = asyncio.get_running_loop()
            neighbours.append(loop.create_task(pool.get_json(pool.states[0], "/api/ps")))

    monkeypatch.setattr(ClientLeg, "on_body", sink_then_ask)
    try:
        prompts = [f"stream {n} " + "word " * n for n in range(16)]
        answers = await asyncio.gather(*(exchange(proxy.port, _stream_request(p)) for p in prompts))
        received = {}
        for prompt, answer in zip(prompts, answers, strict=True):
            assert answer.status == 200 and answer.lines()[-1]["done"] is True
            received[prompt] = len(answer.framed)

        async def settled() -> list[Any]:
            return await asyncio.gather(*neighbours, return_exceptions=True)

        results = await asyncio.to_thread(servers.call, settled)
        assert len(results) == 16
        assert all(isinstance(r, dict) and "models" in r for r in results), results

        path = tmp_path / "events.jsonl"

        async def all_written() -> bool:
            return len((await read_bytes(path)).splitlines()) == 16

        await wait_for(all_written, what="16 usage events")
        events = [orjson.loads(line) for line in (await read_bytes(path)).splitlines()]
        counted = {e["prompt"]: e["outcome"]["bytes"] for e in events}
        assert counted == received
        assert all(n > 0 for n in counted.values())
    finally:
        proxy.stop()


async def test_a_cancel_racing_the_end_of_a_stream_leaves_the_next_user_alone(
    servers: ServerThread,
    own_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client leaves (its handler is cancelled) just as its stream's last chunk
    arrives, and another user of the pool asks for a connection at that moment: the
    cancelled request's cleanup must not close a connection now serving that user."""
    proxy = unprobed_proxy(servers, own_emulator.url, tmp_path)
    pool = proxy.app[APP_KEY].backends
    handlers: dict[int, asyncio.Task[Any]] = {}
    neighbours: list[asyncio.Task[Any]] = []
    init, sink = ClientLeg.__init__, ClientLeg.on_body

    def init_and_note(
        leg: ClientLeg, request: Any, outcome: Served, *rest: Any, **named: Any
    ) -> None:
        init(leg, request, outcome, *rest, **named)
        task = asyncio.current_task()
        assert task is not None
        handlers[id(leg)] = task

    def sink_then_leave(leg: ClientLeg, data: bytes) -> None:
        sink(leg, data)
        if data.endswith(b"0\r\n\r\n") and not neighbours:
            loop = asyncio.get_running_loop()
            neighbours.append(loop.create_task(pool.get_json(pool.states[0], "/api/ps")))
            handlers[id(leg)].cancel()

    monkeypatch.setattr(ClientLeg, "__init__", init_and_note)
    monkeypatch.setattr(ClientLeg, "on_body", sink_then_leave)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(_stream_request("leaving"))
        try:
            await read_answer(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the proxy may close what it considers a cancelled exchange
        writer.close()

        async def settled() -> list[Any]:
            await wait_for(_true_when(lambda: bool(neighbours)), what="the other user")
            return await asyncio.gather(*neighbours, return_exceptions=True)

        (result,) = await asyncio.to_thread(servers.call, settled)
        assert isinstance(result, dict) and "models" in result, result
        after = await exchange(proxy.port, _stream_request("after"))
        assert after.status == 200 and after.lines()[-1]["done"] is True
    finally:
        proxy.stop()


def _true_when(predicate: Any) -> Any:
    async def check() -> bool:
        return bool(predicate())

    return check


@pytest.fixture
def recorded(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> Iterator[tuple[Proxy, list[dict[str, Any]]]]:
    """A proxy whose backend opens its circuit at the first failure, and the access
    records of its requests."""
    proxy = unprobed_proxy(
        servers, own_emulator.url, tmp_path, failure_threshold=1, open_seconds=3600
    )
    seen: list[dict[str, Any]] = []
    server = proxy.app[APP_KEY]
    server.access.enabled = True
    server.access.record = seen.append  # type: ignore[method-assign]
    yield proxy, seen
    proxy.stop()


async def test_a_proxy_failure_mid_stream_ends_it_with_an_error_line_and_is_an_error(
    recorded: tuple[Proxy, list[dict[str, Any]]],
    own_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After some chunks went out, relaying fails inside the proxy: the stream ends
    with Ollama's error line, the request is an error (not a cancellation), the
    backend is not blamed, and the connection carries on with the next request."""
    proxy, seen = recorded
    calls: dict[int, int] = {}
    sink = ClientLeg.on_body

    def failing_sink(leg: ClientLeg, data: bytes) -> None:
        sink(leg, data)
        calls[id(leg)] = calls.get(id(leg), 0) + 1
        if calls[id(leg)] == 3 and not data.endswith(b"0\r\n\r\n"):
            raise RuntimeError("injected relay failure")

    monkeypatch.setattr(ClientLeg, "on_body", failing_sink)
    body = orjson.dumps({"model": MODEL, "prompt": "x", "options": {"num_predict": 40}})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request_bytes("POST", "/api/generate", body))
        failed = await read_answer(reader)
        monkeypatch.setattr(ClientLeg, "on_body", sink)
        writer.write(request_bytes("POST", "/api/generate", body))
        after = await read_answer(reader)
    finally:
        writer.close()
    assert failed.status == 200
    lines = failed.lines()
    assert lines[0]["done"] is False
    assert set(lines[-1]) == {"error"} and "injected relay failure" in lines[-1]["error"]
    assert after.status == 200 and after.lines()[-1]["done"] is True
    assert await scrape_failures(proxy.url, own_emulator.url) == (0, "closed")
    first = next(r for r in seen if r["path"] == "/api/generate")
    assert first["error"] and "injected relay failure" in first["error"]
    assert not first["cancelled"]


async def test_a_failure_after_the_whole_stream_writes_nothing_more(
    recorded: tuple[Proxy, list[dict[str, Any]]],
    own_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bookkeeping after a relayed stream fails: the client already has its whole
    answer and gets nothing after it (no 500 of aiohttp's own); the request is
    recorded as an error, not a cancellation, and the backend is not blamed."""
    proxy, seen = recorded

    def broken(data: bytes) -> dict[str, int | str]:
        raise ValueError("injected final chunk failure")

    monkeypatch.setattr(final_chunk, "parse", broken)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for _ in range(2):
            writer.write(_stream_request("whole"))
            answer = await read_answer(reader)
            assert answer.status == 200 and answer.lines()[-1]["done"] is True
    finally:
        writer.close()
    assert await scrape_failures(proxy.url, own_emulator.url) == (0, "closed")
    # The record follows the answer's last byte: it may trail the client a little.
    await wait_for(_true_when(lambda: len(_streams(seen)) == 2), what="both records")
    streams = _streams(seen)
    for record in streams:
        assert "injected final chunk failure" in record["error"]
        assert not record["cancelled"] and record["status"] == 200


def _streams(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["path"] == "/api/generate"]


async def test_an_upload_the_backend_refuses_early_gets_that_answer_alone(
    servers: ServerThread, echo: EchoBackend, tmp_path: Path
) -> None:
    """The backend answers an upload before reading it and closes: the client gets that
    answer and nothing of the proxy's own after it; the backend is not blamed."""
    proxy = unprobed_proxy(servers, echo.url, tmp_path, failure_threshold=1, open_seconds=3600)
    try:
        size = 4 << 20
        head = (
            b"POST /api/blobs/sha256:%b HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: %d\r\n\r\n" % (b"0" * 64, size)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(head + b"x" * (256 << 10))
            refused = await read_answer(reader)
            assert refused.status == 400
            assert orjson.loads(refused.body) == {"error": "digest mismatch"}
            # The rest of the body, then another request on the same connection: what
            # comes next is that request's answer, or the end of the connection.
            writer.write(b"x" * (size - (256 << 10)) + request_bytes("GET", "/api/version"))
            try:
                following = await read_answer(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            else:
                assert following.status == 200, following.framed
                assert orjson.loads(following.body) == {"version": "0.13.0"}
        finally:
            writer.close()
        assert await scrape_failures(proxy.url, echo.url) == (0, "closed")
    finally:
        proxy.stop()


async def test_a_full_queue_is_relayed_and_opens_no_circuit(
    servers: ServerThread, echo: EchoBackend, tmp_path: Path
) -> None:
    """A 503 (Ollama's full queue) is what one client gets by sending enough requests at
    once: each client that meets it gets it as it came, and the circuit stays closed,
    so the others are served as Ollama drains its queue rather than refused."""
    proxy = unprobed_proxy(servers, echo.url, tmp_path, failure_threshold=2, open_seconds=3600)
    try:
        busy = request_bytes(
            "POST", "/api/generate", orjson.dumps({"model": "echo", "prompt": BUSY})
        )
        for _ in range(3):
            answer = await exchange(proxy.port, busy)
            assert answer.status == 503 and "server busy" in orjson.loads(answer.body)["error"]
        assert await scrape_failures(proxy.url, echo.url) == (0, "closed")
        served = request_bytes(
            "POST", "/api/generate", orjson.dumps({"model": "echo", "prompt": "hi"})
        )
        assert (await exchange(proxy.port, served)).status == 200
    finally:
        proxy.stop()


async def test_a_client_leg_that_cannot_be_made_leaves_nothing_in_flight(
    recorded: tuple[Proxy, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making the client's side of an exchange fails before anything is sent (the
    client's connection gone as the request reaches the relay, when the cancellation
    that says so was lost): the backend is not left counting a request in flight, which
    routing reads as its load for as long as the proxy runs."""
    proxy, _ = recorded
    init = ClientLeg.__init__

    def failing_init(leg: ClientLeg, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected failure making the client leg")

    monkeypatch.setattr(ClientLeg, "__init__", failing_init)
    failed = await exchange(proxy.port, _stream_request("no leg"))
    assert failed.status == 500
    monkeypatch.setattr(ClientLeg, "__init__", init)
    states = proxy.app[APP_KEY].backends.states

    async def counts() -> list[int]:
        return [state.in_flight for state in states]

    assert await asyncio.to_thread(proxy.thread.call, counts) == [0]
    after = await exchange(proxy.port, _stream_request("after"))
    assert after.status == 200 and after.lines()[-1]["done"] is True


class OverrunningBackend(RawBackend):
    """A broken backend whose answer runs past its Content-Length: the rest of it comes
    on the same connection once the next request has (so, deterministically, where the
    next answer's head should be)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rest = b""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(rest)  # the last answer's end, where this one's belongs
                rest = b""
                method, path, headers = _request_head(head)
                answer = _echo(method, path, await _read_body(reader, headers))
                if path == "/api/generate":
                    head_end = answer.index(b"\r\n\r\n") + 4
                    body = answer[head_end:]
                    answer = answer[:head_end].replace(
                        b"Content-Length: %d" % len(body), b"Content-Length: 10"
                    )
                    answer, rest = answer + body[:10], body[10:]
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_an_answer_that_ran_past_its_end_is_not_quoted_to_the_next_client(
    servers: ServerThread, tmp_path: Path
) -> None:
    """A broken backend's answer runs past its Content-Length and the rest comes where
    the next request's answer should, on the pooled connection: the next client gets
    an error, and nothing of the earlier answer in it (the bytes before an answer's
    head on a reused connection may be another client's)."""
    backend = OverrunningBackend()
    servers.call(backend.start)
    proxy = unprobed_proxy(servers, backend.url, tmp_path)
    try:
        first = orjson.dumps({"model": "echo", "prompt": "SECRET-OF-A"})
        answer_a = await exchange(proxy.port, request_bytes("POST", "/api/generate", first))
        assert answer_a.status == 200
        second = orjson.dumps({"model": "echo", "prompt": "question of B"})
        answer_b = await exchange(proxy.port, request_bytes("POST", "/api/generate", second))
        assert answer_b.status == 502
        assert b"SECRET-OF-A" not in answer_b.framed, answer_b.framed
    finally:
        proxy.stop()
        servers.call(backend.stop)
