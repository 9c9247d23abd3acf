"""Blob uploads stream through the proxy without being held in memory."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import ollama

from proxy.config_serving import Health, Limits, Timeouts
from tests.support import Emulator, Proxy, ServerThread

BLOCK = bytes(range(256)) * 4096  # 1 MiB
BLOCKS = 48


async def body() -> AsyncIterator[bytes]:
    for _ in range(BLOCKS):
        yield BLOCK


def digest() -> str:
    h = hashlib.sha256()
    for _ in range(BLOCKS):
        h.update(BLOCK)
    return "sha256:" + h.hexdigest()


async def test_large_blob_streams_through_without_being_buffered(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    url = f"{own_proxy.url}/api/blobs/{digest()}"
    async with aiohttp.ClientSession() as session:
        async with session.head(url) as resp:
            assert resp.status == 404
        tracemalloc.start()
        try:
            async with session.post(url, data=body()) as resp:
                assert resp.status == 201
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        async with session.head(url) as resp:
            assert resp.status == 200
    # 48 MiB went through (client, proxy and emulator share this process): the peak of
    # everything allocated meanwhile stays a small fraction of it.
    assert peak < 8 * 1024 * 1024, peak
    assert digest() in own_emulator.state.blobs


async def test_an_upload_longer_than_the_idle_timeout_goes_through(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """The backend owes no answer before it has the whole body: an upload that takes
    longer than `idle_read_seconds` (each piece well within it) is no silent backend,
    and neither fails nor counts against its circuit."""
    prx = Proxy(
        servers,
        [own_emulator.url],
        timeouts=Timeouts(idle_read_seconds=0.5),
        health=Health(interval_seconds=3600),
    )
    pieces = [BLOCK[:1024]] * 6

    async def slowly() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(0.2)
            yield piece

    blob = "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{prx.url}/api/blobs/{blob}", data=slowly()) as resp,
        ):
            assert resp.status == 201, await resp.read()
        assert blob in own_emulator.state.blobs
        async with (
            aiohttp.ClientSession() as session,
            session.get(prx.url + "/api/autoroute/health") as resp,
        ):
            [backend] = (await resp.json())["backends"]
        assert (backend["circuit"], backend["error"]) == ("closed", None)
    finally:
        prx.stop()


async def test_digest_mismatch_is_the_backends_400(
    own_emulator: Emulator, own_proxy: Proxy
) -> None:
    wrong = "sha256:" + "ab" * 32
    answers = []
    for base in (own_emulator.url, own_proxy.url):
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/api/blobs/{wrong}", data=b"hello") as resp:
                answers.append((resp.status, await resp.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400 and "digest mismatch" in answers[0][1]["error"]


def test_ollama_client_creates_a_model_from_an_uploaded_blob(
    own_emulator: Emulator, own_proxy: Proxy, tmp_path: Path
) -> None:
    client = ollama.Client(host=own_proxy.url)
    data = b"GGUF" + b"\0" * 4096
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    blob = client.create_blob(path)
    assert blob == "sha256:" + hashlib.sha256(data).hexdigest()
    progress = [
        p.status
        for p in client.create(model="custom:latest", files={"model.gguf": blob}, stream=True)
    ]
    assert progress[-1] == "success"
    assert "custom:latest" in own_emulator.state.models


async def test_an_upload_over_its_limit_is_a_413_naming_that_limit(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    """An upload longer than `limits.max_upload_bytes` is refused in Ollama's shape with
    that limit, the one it went over, not the limit of the bodies the proxy reads."""
    limit = 4 * len(BLOCK)
    prx = Proxy(servers, [own_emulator.url], limits=Limits(max_upload_bytes=limit))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{prx.url}/api/blobs/{digest()}", data=body()) as resp,
        ):
            status, doc = resp.status, await resp.json()
    finally:
        prx.stop()
    assert (status, doc) == (413, {"error": f"request body too large (limit {limit} bytes)"})
    assert digest() not in own_emulator.state.blobs
