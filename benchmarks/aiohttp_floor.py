"""The floor for the proxy's server side: aiohttp answering the stream by itself.

An aiohttp server (the proxy's runner settings, uvloop) whose handler reads the body
and writes an answer shaped like the emulator's (the first token after `--first-ms`,
the next ones 5 ms apart, then the final chunk) from timer callbacks straight to the
transport, as the proxy's relay writes, then returns the proxy's `RelayedResponse`.
Paced like the emulator, it serves streams at the proxy's rate, which matters: CPU per
request depends on the rate here (caches are colder between sparser requests).

It has no upstream leg, parses nothing, logs nothing: whatever it costs per stream,
aiohttp's request handling and the client socket cost the proxy too, before it relays
a byte. `stream_bench` runs it beside the proxy so that the proxy's CPU can be read
against it in the same run.

    python -m benchmarks.aiohttp_floor --port 18438 --first-ms 16
"""

from __future__ import annotations

import argparse
import asyncio
import functools

import orjson
import uvloop
from aiohttp import web

from proxy.cli import start_site
from proxy.config import Config
from proxy.relayed_response import RelayedResponse

CHUNK_SECONDS = 0.005
TOKENS = 20  # the emulator's default answer length
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _chunk(doc: dict[str, object]) -> bytes:
    line = orjson.dumps(doc) + b"\n"
    return b"%x\r\n%b\r\n" % (len(line), line)


TOKEN = _chunk(
    {
        "model": "qwen2.5:7b",
        "created_at": "2026-11-26T14:01:15.966022519Z",
        "response": " token",
        "done": False,
    }
)
FINAL = (
    _chunk(
        {
            "model": "qwen2.5:7b",
            "created_at": "2026-11-26T14:01:15.976940230Z",
            "response": "",
            "done": True,
            "done_reason": "length",
            "total_duration": 23321036,
            "eval_count": TOKENS,
        }
    )
    + b"0\r\n\r\n"
)


def tokens_asked(body: bytes) -> int:
    """`options.num_predict`, as the load generator sends it, else the default."""
    try:
        asked = orjson.loads(body).get("options", {}).get("num_predict")
    except (orjson.JSONDecodeError, AttributeError):
        return TOKENS
    return asked if isinstance(asked, int) and asked > 0 else TOKENS


async def answer(request: web.Request, first_seconds: float) -> web.StreamResponse:
    tokens = tokens_asked(await request.read())
    transport = request.transport
    assert transport is not None
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sent = 0

    def tick() -> None:
        nonlocal sent
        sent += 1
        if transport.is_closing():
            done.set_result(None)
            return
        if sent < tokens:
            transport.write(HEAD + TOKEN if sent == 1 else TOKEN)
            loop.call_later(CHUNK_SECONDS, tick)
        else:  # the emulator too writes the last token and the final chunk apart
            transport.write(TOKEN)
            transport.write(FINAL)
            done.set_result(None)

    loop.call_later(first_seconds, tick)
    await done
    return RelayedResponse(200, keep_alive=True)


async def serve(port: int, first_seconds: float) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", functools.partial(answer, first_seconds=first_seconds))
    await start_site(app, "127.0.0.1", port, Config())
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-ms", type=float, default=CHUNK_SECONDS * 1000)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.first_ms / 1000))


if __name__ == "__main__":
    main()
