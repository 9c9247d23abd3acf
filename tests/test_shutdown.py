"""SIGTERM: the proxy (a real `python -m proxy.cli serve` process) stops accepting,
lets streams in flight finish up to `timeouts.shutdown_seconds`, flushes usage events,
then exits 0."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import free_port, proxy_process

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llama3.1:8b"


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def start_proxy(
    emulator_process: int, tmp_path: Path, shutdown_seconds: float
) -> tuple[subprocess.Popen[bytes], int]:
    settings = {
        "AUTOROUTE_TIMEOUTS__SHUTDOWN_SECONDS": str(shutdown_seconds),
        # A long flush interval: the event can only be in the file if shutdown flushed it.
        "AUTOROUTE_USAGE__FLUSH_INTERVAL_SECONDS": "3600",
    }
    return proxy_process(emulator_process, tmp_path, settings)


def start_stream(port: int, tokens: int) -> tuple[http.client.HTTPResponse, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": MODEL, "prompt": "tell me a story", "options": {"num_predict": tokens}}
    conn.request("POST", "/api/generate", orjson.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    first = orjson.loads(response.readline())
    assert first["done"] is False
    return response, response.headers["X-Request-Id"]


def stopped(proc: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + 30
    while not refuses(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def events(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "events.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_sigterm_lets_the_stream_finish_flushes_usage_and_exits_0(
    emulator_process: int, tmp_path: Path
) -> None:
    proc, port = start_proxy(emulator_process, tmp_path, shutdown_seconds=60)
    try:
        response, request_id = start_stream(port, tokens=60)  # ~1.2 s at 20 ms a chunk
        proc.send_signal(signal.SIGTERM)
        assert stopped(proc, port), "still accepting connections after SIGTERM"
        lines = [orjson.loads(line) for line in response.read().splitlines()]
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "length"
        assert len(lines) == 60  # the first was read before the signal
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "stopped" in stderr
    (event,) = events(tmp_path)
    assert event["request_id"] == request_id
    assert event["outcome"]["status"] == 200 and event["outcome"]["cancelled"] is False  # type: ignore[index]


def test_streams_past_the_deadline_are_cut_and_still_leave_their_event(
    emulator_process: int, tmp_path: Path
) -> None:
    proc, port = start_proxy(emulator_process, tmp_path, shutdown_seconds=0.5)
    try:
        response, request_id = start_stream(port, tokens=100_000)  # would take half an hour
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        rest = response.read() if not response.isclosed() else b""
        assert b'"done":true' not in rest
    except http.client.IncompleteRead as exc:
        assert b'"done":true' not in exc.partial
    finally:
        if proc.poll() is None:
            proc.kill()
    (event,) = events(tmp_path)
    assert event["request_id"] == request_id
    assert event["outcome"]["cancelled"] is True  # type: ignore[index]


async def test_the_deadline_cuts_streams_before_aiohttp_waits_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp waits its `shutdown_timeout` for a request, then cancels only its body
    read (which a relayed stream never notices) and waits as long again: a stream past
    the deadline ran for twice `timeouts.shutdown_seconds` (60 s by default, past a
    30 s grace period before SIGKILL, with its usage event not yet written). The proxy
    cuts it at the deadline itself, so aiohttp's connections have no request left
    when their shutdown starts."""
    import dataclasses

    import aiohttp
    from aiohttp import web_protocol

    from proxy.app import create_app
    from proxy.cli import start_site
    from proxy.config import Config
    from proxy.config_services import Usage
    from proxy.config_serving import Backend, Timeouts
    from proxy.emulator import EmulatorSettings
    from proxy.emulator import create_app as create_emulator

    in_progress: list[bool] = []
    shutdown = web_protocol.RequestHandler.shutdown

    async def spy(self: web_protocol.RequestHandler, *args: Any) -> None:
        in_progress.append(self._request_in_progress)
        await shutdown(self, *args)

    monkeypatch.setattr(web_protocol.RequestHandler, "shutdown", spy)
    backend_port, port = free_port(), free_port()
    settings = EmulatorSettings(models=(MODEL,), chunk_delay_ms=20)
    backend = await start_site(create_emulator(settings), "127.0.0.1", backend_port)
    config = Config(
        backends=(Backend(url=f"http://127.0.0.1:{backend_port}"),),
        timeouts=Timeouts(shutdown_seconds=0.2),
        usage=Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "s")),
    )
    config = dataclasses.replace(config, listen=dataclasses.replace(config.listen, port=port))
    proxy = await start_site(create_app(config.check()), "127.0.0.1", port, config)
    try:
        body = {"model": MODEL, "prompt": "a story", "options": {"num_predict": 100_000}}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/api/generate", json=body) as resp:
                assert resp.status == 200
                await resp.content.readline()
                await proxy.cleanup()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
    finally:
        await backend.cleanup()
    assert in_progress == [False]
    (event,) = events(tmp_path)
    assert event["outcome"]["cancelled"] is True  # type: ignore[index]
