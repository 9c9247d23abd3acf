"""Ollama's DNS-rebinding check (proxy/hosts.py): while the proxy listens on loopback,
a request naming a host that is not local gets 403; local names and addresses pass."""

from __future__ import annotations

import asyncio
import socket

import pytest

from proxy.hosts import HostCheck, split_host_port
from tests.support import Emulator, Proxy

EVENTUALLY = 60.0


async def answer(port: int, method: str, host: bytes | None) -> tuple[bytes, list[bytes], bytes]:
    """Status line, header lines and body of the answer to a request naming `host`
    (no Host line for None, as HTTP/1.0 allows)."""
    version, named = (b"1.0", b"") if host is None else (b"1.1", b"Host: " + host + b"\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"%b /api/version HTTP/%b\r\n%bConnection: close\r\n\r\n"
            % (method.encode(), version, named)
        )
        data = await asyncio.wait_for(reader.read(), EVENTUALLY)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, lines, body


@pytest.mark.parametrize(
    "host",
    [
        b"evil.example",
        b"evil.example:11435",
        b"localhost.evil.example",
        b"8.8.8.8",
        b"[2001:4860::8888]:80",
        b"[::1]",  # no port: Go's SplitHostPort fails, and "[::1]" is no address
        b"a:b:c",
    ],
)
async def test_a_host_that_is_not_local_gets_403(
    proxy: Proxy, emulator: Emulator, host: bytes
) -> None:
    """From the proxy, and from the emulator, which stands in for Ollama in front of it."""
    for port in (proxy.port, emulator.port):
        status, lines, body = await answer(port, "GET", host)
        assert status == b"HTTP/1.1 403 Forbidden", port
        assert body == b""
        assert b"Content-Length: 0" in lines
    _, lines, _ = await answer(proxy.port, "GET", host)
    assert any(line.startswith(b"X-Request-Id: ") for line in lines)


@pytest.mark.parametrize(
    "host",
    [
        b"localhost",
        b"LOCALHOST:11435",
        b"127.0.0.1:11435",
        b"[::1]:11435",
        b"0.0.0.0",
        b"10.1.2.3:80",
        b"192.168.1.20",
        b"172.16.0.9",
        b"[fd00::1]:1",
        b"[::ffff:127.0.0.1]:1",
        b"ollama.internal",
        b"box.local:11435",
        b"app.localhost",
        b"",
        socket.gethostname().encode(),
        None,
    ],
)
async def test_local_hosts_pass(proxy: Proxy, emulator: Emulator, host: bytes | None) -> None:
    for port in (proxy.port, emulator.port):
        status, _, body = await answer(port, "GET", host)
        assert status.endswith(b" 200 OK"), (port, status, body)


@pytest.mark.parametrize(("host", "code"), [(b"localhost", b"204"), (b"127.0.0.1", b"405")])
async def test_options_for_a_local_name_is_answered_there(
    proxy: Proxy, emulator: Emulator, host: bytes, code: bytes
) -> None:
    """Ollama's quirk: OPTIONS naming an allowed host name (not an address) is 204
    before any route; naming an address it goes on to the route (405 there)."""
    for port in (proxy.port, emulator.port):
        status, _, _ = await answer(port, "OPTIONS", host)
        assert status.split(b" ")[1] == code, port


def test_the_check_is_on_only_while_listening_on_loopback() -> None:
    assert HostCheck("127.0.0.1").active
    assert HostCheck("::1").active
    assert HostCheck("localhost").active
    assert not HostCheck("0.0.0.0").active
    assert not HostCheck("").active


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("a:1", "a"),
        ("a:", "a"),
        ("[::1]:1", "::1"),
        ("a", None),
        ("[::1]", None),
        ("::1", None),
        ("[::1]x:1", None),
        ("[a]:1]", None),
        ("a]:1", None),
        ("a[:1", None),
    ],
)
def test_host_and_port_split_as_go_splits_them(value: str, host: str | None) -> None:
    assert split_host_port(value) == host


@pytest.mark.parametrize(
    ("target", "host", "refused"),
    [
        # Go reads the host from an absolute target and ignores the Host line.
        (b"http://evil.example/api/version", b"localhost", True),
        (b"http://user@evil.example:80/api/version", b"127.0.0.1", True),
        (b"http://localhost:11435/api/version", b"evil.example", False),
        (b"http://[::1]:11435/api/version", b"evil.example", False),
    ],
)
async def test_an_absolute_target_names_the_host_as_go_reads_it(
    proxy: Proxy, target: bytes, host: bytes, refused: bool
) -> None:
    """Go's net/http takes an absolute request target's host as the request's Host
    (the Host line is ignored), and that is what Ollama's check reads."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % (target, host))
        data = await asyncio.wait_for(reader.read(), EVENTUALLY)
    finally:
        writer.close()
    status = data.partition(b"\r\n")[0]
    assert status == (b"HTTP/1.1 403 Forbidden" if refused else b"HTTP/1.1 200 OK"), data[:300]
