"""A client that leaves cancels the upstream request: the GPU stops generating."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.app import APP_KEY
from proxy.config_serving import Timeouts
from proxy.emulator import EmulatorSettings
from proxy.upstream import UpstreamConnection, dechunk
from tests.support import Emulator, Proxy, ServerThread, slow_reader, small_send_buffers

LONG = {"model": "qwen2.5:7b", "prompt": "Tell me everything.", "options": {"num_predict": 100_000}}


async def wait_for(predicate: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_streaming_client_disconnect_cancels_upstream(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    state = own_emulator.state
    cancelled, completed = state.cancelled, state.completed
    session = aiohttp.ClientSession()
    resp = await session.post(own_proxy.url + "/api/generate", json=LONG)
    first = await resp.content.readline()
    assert orjson.loads(first)["done"] is False
    left_at = time.monotonic()
    resp.close()  # drop the connection mid-stream
    await session.close()
    # 100k tokens at 1 ms each would take minutes: a cancel seen now can only come from
    # the proxy aborting the upstream request when the client left.
    assert await wait_for(lambda: state.cancelled > cancelled)
    assert state.completed == completed
    assert state.cancel_times[-1] >= left_at
    assert state.active_streams == 0


async def test_non_streaming_client_disconnect_cancels_upstream(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    state = own_emulator.state
    cancelled, completed = state.cancelled, state.completed
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(
            session.post(
                own_proxy.url + "/api/chat",
                json={
                    "model": "qwen2.5:7b",
                    "stream": False,
                    "options": {"num_predict": 100_000},
                    "messages": [{"role": "user", "content": "Tell me everything."}],
                },
            )
        )
        assert await wait_for(lambda: state.active_streams > 0)
        task.cancel()
    assert await wait_for(lambda: state.cancelled > cancelled)
    assert state.completed == completed


async def test_proxy_serves_after_many_disconnects(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    state = own_emulator.state
    cancelled = state.cancelled
    for _ in range(20):
        async with aiohttp.ClientSession() as session:
            resp = await session.post(own_proxy.url + "/api/generate", json=LONG)
            await resp.content.readline()
            resp.close()
    assert await wait_for(lambda: state.cancelled >= cancelled + 20)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            own_proxy.url + "/api/generate",
            json={"model": "qwen2.5:7b", "prompt": "hi", "stream": False},
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["done"] is True


async def test_slow_reader_pauses_the_backend_and_gets_every_byte(
    servers: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops reading: the proxy stops reading the backend instead of
    buffering the stream, and once the client reads again the stream ends intact."""
    paused = threading.Event()
    pause_reading = UpstreamConnection.pause_reading

    def pause_and_tell(conn: UpstreamConnection) -> None:
        pause_reading(conn)
        paused.set()

    monkeypatch.setattr(UpstreamConnection, "pause_reading", pause_and_tell)
    emulator = Emulator(servers, EmulatorSettings(frozen_clock=True, chunk_delay_ms=0.0))
    proxy = Proxy(servers, [emulator.url])
    seen: list[dict[str, object]] = []
    server = proxy.app[APP_KEY]
    server.access.enabled = True
    server.access.record = seen.append  # type: ignore[method-assign]
    try:
        body = orjson.dumps(
            {"model": "qwen2.5:7b", "prompt": "go", "options": {"num_predict": 30000}}
        )
        sock = slow_reader(proxy.port, "/api/generate", body)
        # Not reading until the proxy has paused the backend (~3 MB are coming, more
        # than the socket buffers hold); how long that takes depends on the machine.
        await asyncio.to_thread(paused.wait, 60)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        received = bytearray()
        while not received.endswith(b"0\r\n\r\n"):
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "connection closed before the end of the stream"
            received += chunk
        sock.close()
    finally:
        proxy.stop()
        emulator.stop()
    head, _, framed = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    lines = dechunk(framed).splitlines()
    assert len(lines) == 30001 and orjson.loads(lines[-1])["done"] is True
    (record,) = [r for r in seen if r["path"] == "/api/generate"]
    assert record["client_paused"] is True


async def test_a_client_that_stops_reading_is_cut_off_and_frees_the_backend(
    servers: ServerThread,
) -> None:
    """A client that takes in nothing of its stream for `client_write_idle_seconds` is
    disconnected, and its backend request cancelled: it cannot hold a generation slot
    for as long as it keeps its connection open."""
    emulator = Emulator(servers, EmulatorSettings(frozen_clock=True, chunk_delay_ms=0.0))
    proxy = Proxy(servers, [emulator.url], timeouts=Timeouts(client_write_idle_seconds=0.3))
    state = emulator.state
    cancelled = state.cancelled
    try:
        # Far more than the socket buffers between the three can hold, however large the
        # kernel lets them grow (tcp_rmem's maximum is 32 MiB on some machines): 1.3M
        # tokens, about 120 MB, so the backend is still generating when the client stops.
        options = {"num_predict": 2_000_000, "num_ctx": 131072}
        body = orjson.dumps({"model": "llama3.1:8b", "prompt": "go", "options": options})
        sock = slow_reader(proxy.port, "/api/generate", body)
        # Never reading: the proxy pauses the backend, then gives up on the client.
        assert await wait_for(lambda: state.cancelled > cancelled, 60)
        assert await wait_for(lambda: state.active_streams == 0)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        received = bytearray()
        while chunk := await loop.sock_recv(sock, 65536):
            received += chunk
        sock.close()
    finally:
        proxy.stop()
        emulator.stop()
    # What was sent before the cut arrives, then the connection ends: no end of stream.
    assert received.startswith(b"HTTP/1.1 200")
    assert not received.endswith(b"0\r\n\r\n")


async def test_answers_pipelined_to_a_client_that_does_not_read_them_do_not_pile_up(
    servers: ServerThread,
) -> None:
    """Short answers to requests pipelined by a client that reads none of them stop
    once its socket is full, and the client is disconnected after
    `client_write_idle_seconds`: they do not pile up in the proxy's memory for as long
    as it sends requests."""
    emulator = Emulator(servers, EmulatorSettings(frozen_clock=True))
    proxy = Proxy(servers, [emulator.url], timeouts=Timeouts(client_write_idle_seconds=0.3))
    # Small socket buffers on both sides, so that a few answers fill them: the requests
    # sent after those wait in them.
    small_send_buffers(proxy)
    count = 5_000
    one = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", proxy.port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        # Never reading: the proxy stops reading the requests, then gives up on the client.
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(loop.sock_sendall(sock, one * count), 60)
        sock.close()
    finally:
        proxy.stop()
        emulator.stop()
    assert emulator.state.requests["/api/version"] < count
