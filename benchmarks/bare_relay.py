"""The proxy's relay behind a bare aiohttp handler: what the proxy costs without itself.

The same runner, `Relay`, upstream protocol and client leg as `autoroute serve`, behind
a handler that reads the body and forwards it to the one backend: no admission, no
limits, no JSON parse, no routing by model, no metrics, access log or usage event.
`stream_bench` runs it beside the proxy: the difference between the two is what the
proxy's own work costs; the difference between it and `aiohttp_floor` or `tcp_relay`
is what relaying through aiohttp costs.

    python -m benchmarks.bare_relay --port 18439 --backend http://127.0.0.1:18434
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

from proxy.backends import BackendPool
from proxy.cli import freeze_loaded, start_site
from proxy.config import Config
from proxy.config_serving import Backend
from proxy.outcome import Served
from proxy.relay import Relay

RELAY = web.AppKey("relay", Relay)


def create_app(config: Config) -> web.Application:
    async def start(app: web.Application) -> None:
        backends = BackendPool(config)
        await backends.start()
        app[RELAY] = Relay(config, backends)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return await request.app[RELAY].forward(request, Served("bare"), body, None)

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(port: int, backend: str) -> None:
    config = Config(backends=(Backend(url=backend),))
    await start_site(create_app(config), "127.0.0.1", port, config)
    freeze_loaded()  # as `autoroute serve` does
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="http://host:port")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.backend))


if __name__ == "__main__":
    main()
