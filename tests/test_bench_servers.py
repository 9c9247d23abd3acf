"""The benchmarks' server starter refuses busy ports and measures only its own servers."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest
from aiohttp import web

from benchmarks import servers as starter
from tests.support import ServerThread, free_port


@pytest.fixture(autouse=True)
def _logs_removed() -> Iterator[None]:
    """A failure keeps the run's logs for reading; here the run is the test's, so they
    are removed at exit like any other."""
    yield
    starter._KEEP_LOGS = False


def test_a_busy_port_is_refused_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(starter.PortBusy) as caught:
            starter.ensure_free(free_port(), port)
    assert caught.value.port == port
    assert f"port {port} is already in use" in str(caught.value)
    assert caught.value.code != 0
    with pytest.raises(starter.PortBusy):  # start() refuses too, before starting anything
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            starter.start([sys.executable, "-c", "pass"], port=sock.getsockname()[1])
    starter.ensure_free(port)  # free again once the listener is gone


def test_a_server_that_exits_is_reported_with_its_output() -> None:
    port = free_port()
    proc = starter.start(
        [sys.executable, "-c", "print('cannot bind: port taken', flush=True); exit(3)"],
        port=port,
    )
    try:
        with pytest.raises(starter.BenchmarkError) as caught:
            starter.wait_ready(port)
    finally:
        proc.kill()
        proc.wait()
    message = str(caught.value)
    assert "exited with status 3" in message and "cannot bind: port taken" in message


def test_an_answer_from_another_process_is_refused(servers: ServerThread) -> None:
    """The started process does not listen; something else answers on its port."""
    port = free_port()
    proc = starter.start([sys.executable, "-c", "import time; time.sleep(60)"], port=port)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0"})

    def app() -> web.Application:
        application = web.Application()
        application.router.add_get("/api/version", version)
        return application

    impostor = servers.serve(app, port)
    try:
        with pytest.raises(starter.BenchmarkError) as caught:
            starter.wait_ready(port)
        assert f"from a process other than pid {proc.pid}" in str(caught.value)
    finally:
        servers.stop(impostor)
        proc.kill()
        proc.wait()


def test_its_own_server_is_accepted() -> None:
    port = free_port()
    proc = starter.start([sys.executable, "-m", "proxy.emulator", "--port", str(port)], port=port)
    try:
        starter.wait_ready(port)
        assert starter.listens_on(proc.pid, port)
        starter.check_alive(port)
    finally:
        proc.terminate()
        proc.wait(10)
