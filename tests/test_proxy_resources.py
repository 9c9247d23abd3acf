"""The proxy's own resources running out (open files): the proxy's state, which one
client with enough connections brings about, never a backend's failure. A real
`python -m proxy.cli serve` process with a low limit on open files, in front of a real
emulator process."""

from __future__ import annotations

import asyncio
import resource
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import proxy_process

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llama3.1:8b"
# Enough for the proxy to start and serve some streams, far fewer than the streams below
# need (two descriptors each: the client's connection and the backend's).
OPEN_FILES = 128
STREAMS = 200


def _few_open_files() -> None:
    """In the proxy's process before it starts: a low limit on its open files, the hard
    one too (the proxy raises its soft limit to the hard one)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


@pytest.fixture
def cramped_proxy(emulator_process: int, tmp_path: Path) -> Iterator[int]:
    # No health check during the test: only requests count against the backend. Its
    # errors are many, and go unread.
    settings = {"AUTOROUTE_HEALTH__INTERVAL_SECONDS": "3600"}
    proc, port = proxy_process(
        emulator_process, tmp_path, settings, subprocess.DEVNULL, _few_open_files
    )
    yield port
    proc.kill()
    proc.wait()


async def test_a_proxy_out_of_open_files_opens_no_backends_circuit(cramped_proxy: int) -> None:
    """One client opens more streams at once than the proxy has descriptors for: the
    requests it cannot connect upstream fail (503, the proxy's error), but the backend
    did not fail, so its circuit never opens: no request is refused as "circuit open",
    and once the flood is over the proxy serves as before."""
    url = f"http://127.0.0.1:{cramped_proxy}"
    body = {"model": MODEL, "prompt": "x", "options": {"num_predict": 40}}
    answers: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def stream() -> None:
            try:
                async with session.post(url + "/api/generate", json=body) as resp:
                    text = await resp.text()
            except aiohttp.ClientError:
                answers["not accepted"] += 1  # the proxy could not take the connection
                return
            if resp.status == 503 and text.startswith('{"error":"server busy'):
                answers["busy"] += 1  # the proxy's own state, said as Ollama says it
            elif resp.status != 200:
                answers["circuit open" if "circuit open" in text else str(resp.status)] += 1
            else:
                answers["200"] += 1

        await asyncio.gather(*(stream() for _ in range(STREAMS)))
        assert answers["busy"] > 0, answers  # the flood did exhaust the proxy
        assert set(answers) <= {"busy", "200", "not accepted"}, answers
        async with session.post(url + "/api/generate", json={**body, "stream": False}) as resp:
            assert resp.status == 200
