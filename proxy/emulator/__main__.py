"""`python -m proxy.emulator --port 11434`: run the emulator as its own process."""

from __future__ import annotations

import argparse
import sys

from proxy import event_loop
from proxy.cli import serve_emulator

from . import STATE_KEY, EmulatorSettings, create_app
from .state import InvalidModelName


def main() -> None:
    parser = argparse.ArgumentParser(description="Ollama emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", help="comma-separated model names (default: the table)")
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--tokens-per-second", type=float, default=60.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=None)
    parser.add_argument("--default-tokens", type=int, default=20)
    parser.add_argument("--frozen-clock", action="store_true")
    args = parser.parse_args()
    settings = EmulatorSettings(
        models=tuple(m for m in args.models.split(",") if m) if args.models else None,
        load_seconds=args.load_seconds,
        tokens_per_second=args.tokens_per_second,
        chunk_delay_ms=args.chunk_delay_ms,
        default_tokens=args.default_tokens,
        frozen_clock=args.frozen_clock,
    )
    try:
        app = create_app(settings)
    except InvalidModelName as exc:
        parser.error(f"--models: {exc}")
    for made in app[STATE_KEY].synthesized:
        print(f"not in the emulator's table: {made}", file=sys.stderr)
    # Served as `autoroute emulate` serves it, never by aiohttp's defaults, which would
    # decode a body's Content-Encoding (inflating a gzip bomb) and refuse a target over
    # 8190 bytes with texts of their own, where Ollama reads both as sent.
    event_loop.run(serve_emulator(app, args.host, args.port))


if __name__ == "__main__":
    main()
