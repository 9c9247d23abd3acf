"""Servers for the tests: emulators and the proxy, each in a thread with its own loop, so
that the official clients (sync and async) reach them over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy import event_loop
from proxy.app import create_app as create_proxy
from proxy.config import Config
from proxy.config_services import Usage
from proxy.config_serving import Backend, Listen, Timeouts
from proxy.connection import ollama_runner
from proxy.connection import runner as proxy_runner
from proxy.emulator import STATE_KEY, EmulatorSettings, EmulatorState
from proxy.emulator import create_app as create_emulator
from proxy.protocol import HOP_BY_HOP

T = TypeVar("T")

# What the proxy adds to /api/tags and /v1/models with the default profiles.
AUTO_NAMES = ("auto", "auto:balanced", "auto:fast", "auto:best")
# The last Ollama release whose /api/tags lists no capabilities (0.30 added them), as
# an Ollama-compatible server without /api/show lists none: the emulator of such a
# server reports it, so that its models are described from the catalogue alone.
UNLISTED_CAPABILITIES_VERSION = "0.24.0"
# A 1x1 PNG, base64 as Ollama's `images` carry it: what a vision request sends.
PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="  # noqa: E501
# A usage event's keys in the order the proxy has always written them (`prompt` and
# `response` only where prompts are logged); listed here rather than read from the code,
# so that a change to the stored format fails the tests.
USAGE_EVENT_KEYS = (
    "request_id",
    "client_request_id",
    "ts",
    "endpoint",
    "method",
    "client",
    "requested_model",
    "served_model",
    "backend",
    "decision",
    "features",
    "candidate",
    "prompt_sha256",
    "outcome",
    "provider",
    "rating",
    "cache",
)
# A tool in the shape the Ollama and OpenAI clients send one.
WEATHER_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        },
    }
]


def without_auto(body: bytes) -> bytes:
    """A model list as the backend sent it: the proxy's `auto` entries removed."""
    doc = orjson.loads(body)
    key = "models" if "models" in doc else "data"
    doc[key] = [m for m in doc[key] if (m.get("name") or m.get("id")) not in AUTO_NAMES]
    return orjson.dumps(doc)


def nested_properties(levels: int, innermost: bytes) -> bytes:
    """A tool's `properties`, each property's own `properties` `levels` deep, the
    innermost property `innermost`."""
    return b'{"a": {"properties": ' * (levels - 1) + b'{"a": ' + innermost + b"}" * (2 * levels - 1)


def on_a_loop() -> bool:
    """Whether the calling thread runs an event loop (a worker thread does not)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def where_called(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[bool]:
    """`owner.name` replaced, for the test, by itself recording where each call ran:
    the list it appends to, True for a call on the event loop (`on_a_loop`), False for
    one in a worker thread."""
    calls: list[bool] = []
    original = getattr(owner, name)

    def watched(*args: Any, **kwargs: Any) -> Any:
        calls.append(on_a_loop())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, watched)
    return calls


def error_text(path: str, doc: Any) -> str:
    """The message of an error answer: OpenAI's `{"error": {"message"}}` on /v1,
    Ollama's `{"error"}` elsewhere."""
    return str(doc["error"]["message"] if path.startswith("/v1/") else doc["error"])


def file_usage(tmp_path: Path, **settings: Any) -> Usage:
    """Usage events in a JSONL file under `tmp_path`, flushed within 20 ms; `settings`
    add to or change that."""
    return Usage(
        file_path=str(tmp_path / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.02,
        **settings,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_send_buffers(proxy: Proxy) -> None:
    """Small socket buffers on the proxy's side of each client connection (an accepted
    socket takes the listening one's), so that an answer of a few hundred kB fills
    them."""
    assert proxy.runner is not None
    for site in proxy.runner.sites:
        for listening in site._server.sockets:  # type: ignore[attr-defined]
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


def slow_reader(port: int, path: str, body: bytes) -> socket.socket:
    """A socket with a small receive buffer (a few answer chunks fill it) that has sent
    `POST path` with `body` to 127.0.0.1:`port` and read nothing yet: a client that
    reads slowly, or never."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"POST %b HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b"
        % (path.encode(), len(body), body)
    )
    return sock


async def wait_until(predicate: Callable[[], object], seconds: float = 10.0) -> bool:
    """Whether `predicate` holds within `seconds`, asked every 20 ms."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


class ServerThread:
    """An event loop in a thread serving aiohttp applications until `close()`."""

    def __init__(self) -> None:
        self.loop = event_loop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(factory(), self.loop)
        return future.result(timeout)

    def serve(
        self,
        app_factory: Callable[[], web.Application],
        port: int,
        make_runner: Callable[[web.Application], web.AppRunner] | None = None,
    ) -> web.AppRunner:
        async def start() -> web.AppRunner:
            app = app_factory()
            runner = (
                make_runner(app)
                if make_runner is not None
                else web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
            )
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner

        return self.call(start)

    def stop(self, runner: web.AppRunner) -> None:
        self.call(runner.cleanup)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def _ollama(app: web.Application) -> web.AppRunner:
    """The emulator's connections as `autoroute emulate` serves them (Ollama's own
    limits), with a short shutdown for tests."""
    return ollama_runner(app, shutdown_timeout=1)


class Emulator:
    def __init__(self, thread: ServerThread, settings: EmulatorSettings) -> None:
        self.thread = thread
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_emulator(settings)
        self.state: EmulatorState = self.app[STATE_KEY]
        self.runner: web.AppRunner | None = thread.serve(lambda: self.app, self.port, _ollama)

    def stop(self) -> None:
        if self.runner is not None:
            self.thread.stop(self.runner)
            self.runner = None

    def restart(self) -> None:
        """Listen again on the same port after `stop()`, with the same state."""
        if self.runner is None:
            self.runner = self.thread.serve(lambda: self.app, self.port, _ollama)


class EmulatorFront:
    """An Ollama stand-in: `emulator` behind a front of its own, which forwards every
    request to it but `/api/tags` and `/api/show`, answered as a subclass makes them
    (`_tags`, `_show`: the emulator's own unless overridden)."""

    def __init__(self, servers: ServerThread, emulator: Emulator) -> None:
        self.servers = servers
        self.emulator = emulator
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.session: aiohttp.ClientSession | None = None
        self.runner = servers.serve(self._app, self.port)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/show", self._show)
        app.router.add_route("*", "/{path:.*}", self._forward)
        return app

    async def _ask(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        """The emulator's status, body and content type for this request."""
        if self.session is None:
            self.session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"} if body else {}
        async with self.session.request(
            method, self.emulator.url + path, data=body, headers=headers
        ) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "")

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        status, body, content_type = await self._ask(
            request.method, request.path_qs, await request.read()
        )
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request)

    async def _show(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request)

    def stop(self) -> None:
        async def close() -> None:
            if self.session is not None:
                await self.session.close()

        self.servers.call(close)
        self.servers.stop(self.runner)
        self.emulator.stop()


class Proxy:
    def __init__(
        self, thread: ServerThread, backends: list[str] | list[Backend], **sections: Any
    ) -> None:
        self.thread = thread
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Usage events and what the proxy learns from them stay in a directory of the
        # proxy's own unless the test says where.
        self._scratch: str | None = None
        if "usage" not in sections:
            self._scratch = tempfile.mkdtemp(prefix="autoroute-proxy-")
            sections["usage"] = Usage(
                file_path=f"{self._scratch}/events.jsonl", spool_dir=f"{self._scratch}/spool"
            )
        # A test's `listen` keeps its other settings; the port is the free one.
        listen = dataclasses.replace(sections.pop("listen", Listen()), port=self.port)
        # Stopping waits at most a second for requests in flight (the runner's
        # shutdown_timeout below, and the proxy's own deadline).
        timeouts = sections.pop("timeouts", Timeouts())
        sections["timeouts"] = dataclasses.replace(
            timeouts, shutdown_seconds=min(timeouts.shutdown_seconds, 1)
        )
        self.config = Config(
            listen=listen,
            backends=tuple(u if isinstance(u, Backend) else Backend(url=u) for u in backends),
            **sections,
        ).check()
        self.app = web.Application()  # the proxy's, once `serve` has built it

        def build() -> web.Application:
            # In the server thread's loop, which the proxy's connection pools bind to.
            self.app = create_proxy(self.config)
            return self.app

        # The runner `autoroute serve` uses (client timeouts, header limits).
        self.runner: web.AppRunner | None = thread.serve(
            build, self.port, lambda app: proxy_runner(app, self.config, shutdown_timeout=1)
        )

    def stop(self) -> None:
        if self.runner is not None:
            self.thread.stop(self.runner)
            self.runner = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


async def raw_request(
    port: int, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict[str, bytes], bytes]:
    """One request with header bytes exactly as given (what an HTTP client library
    would refuse to send), on its own connection: (status, headers by lower-cased
    name, body with any chunked framing removed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        if body:
            head.append(b"Content-Length: %d\r\n" % len(body))
        writer.write(b"".join(head) + b"\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower().decode()] = value.strip()
    if fields.get("transfer-encoding") == b"chunked":
        chunks = []
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2 :]
        rest = b"".join(chunks)
    return status, fields, rest


async def pass_on(request: web.Request, target: str, body: bytes) -> web.Response:
    """`request` sent on to `target` with `body` (its hop-by-hop headers left out), and
    the answer's status, body and Content-Type: a test's front for the emulator that
    looks at what it forwards."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    async with (
        aiohttp.ClientSession() as http,
        http.request(request.method, target + request.path_qs, data=body, headers=headers) as resp,
    ):
        return web.Response(
            status=resp.status,
            body=await resp.read(),
            headers={"Content-Type": resp.headers.get("Content-Type", "")},
        )


async def health_circuit(url: str, backend: str) -> str:
    """The circuit state the proxy at `url` reports for `backend` (its health endpoint)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/api/autoroute/health") as resp,
    ):
        doc = await resp.json()
    (entry,) = [b for b in doc["backends"] if b["url"] == backend]
    return str(entry["circuit"])


def bearer(key: str) -> dict[str, str]:
    """The header that sends an API key."""
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def running_stream(url: str, key: str, body: object) -> AsyncIterator[aiohttp.ClientResponse]:
    """A `/api/generate` stream of `key`'s at the proxy `url`, answered and running (its
    first line read) for the block: it holds one of the key's stream slots until the
    block ends (or reads it to its end)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/api/generate", json=body, headers=bearer(key)) as stream,
    ):
        assert stream.status == 200
        await stream.content.readline()
        yield stream


def proxy_process(
    backend_port: int,
    tmp_path: Path,
    settings: dict[str, str],
    stderr: int = subprocess.PIPE,
    preexec_fn: Callable[[], Any] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """`autoroute serve` in a process of its own, in front of the backend on
    `backend_port`, with no config file, its usage file and spool under `tmp_path`, and
    `settings` (environment overrides) on top: the process and its port, listening."""
    port = free_port()
    env = {
        **os.environ,
        "AUTOROUTE_CONFIG": os.devnull,
        "AUTOROUTE_LISTEN__PORT": str(port),
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{backend_port}",
        "AUTOROUTE_USAGE__FILE_PATH": str(tmp_path / "events.jsonl"),
        "AUTOROUTE_USAGE__SPOOL_DIR": str(tmp_path / "spool"),
        "AUTOROUTE_SELECTOR__RELOAD_CHECK_SECONDS": "0",
        **settings,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=preexec_fn,
    )
    wait_listening(port, proc)
    return proc, port


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until something listens on `port` (30 s at most), `proc` still running."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


class RawBackend:
    """A backend on a raw socket, answering each connection with `_serve`."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
