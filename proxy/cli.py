"""`autoroute`: a proxy that speaks Ollama's API in front of your Ollama servers, and
chooses among their models for `auto`; its commands below."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import gc
import importlib
import importlib.metadata
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from proxy import config_loading, dir_slots, event_loop, keys_cli, logs
from proxy.config import ENV_PREFIX, Config, ConfigError
from proxy.config_serving import Backend, Logging
from proxy.state_dir import state_dir

log = logging.getLogger("autoroute")

# The demo's two emulated backends: a small fast model, a coder, a large model and a
# vision model, so that `auto` visibly picks differently per prompt and per profile.
# Each listens on a port the system gives unless `--backend-ports` names one, so that
# a port in use elsewhere, or another demo, does not keep it from starting.
DEMO_BACKENDS = (
    ("gpu-a", ("llama3.2:3b", "qwen2.5-coder:7b", "nomic-embed-text:latest")),
    ("gpu-b", ("llama3.3:70b", "llava:7b")),
)
# Demos that may run at once, each recording usage in a directory of its own.
DEMO_SLOTS = 16


class PortInUse(Exception):
    """A server cannot listen: something else already has its address."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port} is already in use")
        self.host = host
        self.port = port


class CannotListen(Exception):
    """A server cannot listen on its address for another reason: a host that does not
    resolve or is no address of this machine, a port it may not bind."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


async def start_site(
    app: web.Application, host: str, port: int, config: Config | None = None
) -> web.AppRunner:
    # handler_cancellation: a client that disconnects cancels its handler, which is how
    # the relay learns to abort the upstream request (the GPU stops generating).
    # With the proxy's config: its shutdown deadline, client timeouts and header limits;
    # without, Ollama's own (proxy/connection.py).
    from proxy.connection import ollama_runner, raise_open_files_limit
    from proxy.connection import runner as proxy_runner

    raise_open_files_limit()
    runner = proxy_runner(app, config) if config is not None else ollama_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from exc
        raise CannotListen(host, port, exc.strerror or str(exc)) from exc
    return runner


async def _serve_forever(
    runners: list[web.AppRunner], ready: Callable[[], None] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # `ready` runs once Ctrl-C stops the servers cleanly (the demo's banner says so).
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        # cleanup(): stop listening, wait up to the runner's shutdown_timeout for
        # requests in flight (streams included), cancel the rest, then the app's
        # on_cleanup (the proxy flushes its usage events there).
        log.info("stopping: no new connections; waiting for requests in flight")
        for runner in reversed(runners):
            await runner.cleanup()
        log.info("stopped")


def _warn_if_exposed(config: Config) -> None:
    if config.listen.host not in ("127.0.0.1", "localhost", "::1") and not config.auth.enabled:
        log.warning(
            "listening on %s without API keys (auth.keys): anyone who can reach this "
            "address can use every backend",
            config.listen.host,
        )


async def serve(config: Config) -> None:
    # Imported here: the server pulls in onnxruntime and the selector, which
    # `autoroute emulate` has no use for (it would triple the emulator's memory).
    from proxy.app import APP_KEY, create_app

    app = create_app(config)
    runner = await start_site(app, config.listen.host, config.listen.port, config)
    _warn_if_exposed(config)
    # SIGHUP reloads the selector artifact (a bad one keeps the current).
    proxy = app[APP_KEY]
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, proxy.auto.scorer.reload)
    log.info(
        "proxy listening",
        extra={
            "fields": {
                "address": f"http://{config.listen.host}:{config.listen.port}",
                "backends": [b.shown_url for b in config.backends],
            }
        },
    )
    freeze_loaded()
    await _serve_forever([runner])


def freeze_loaded() -> None:
    """Everything loaded by now (modules, onnxruntime, the artifact) lives as long as
    the process: frozen, it is left out of the collector's full scans, which would
    otherwise walk all of it each time (a pause for every stream in flight)."""
    gc.collect()
    gc.freeze()


async def emulate(
    host: str, port: int, models: tuple[str, ...] | None, chunk_ms: float | None
) -> None:
    from proxy.emulator import STATE_KEY, EmulatorSettings
    from proxy.emulator import create_app as create_emulator
    from proxy.emulator.state import InvalidModelName

    settings = EmulatorSettings(models=models, chunk_delay_ms=chunk_ms, listen_host=host)
    try:
        app = create_emulator(settings)
    except InvalidModelName as exc:
        raise ConfigError(f"--models: {exc}") from None
    synthesized = app[STATE_KEY].synthesized
    if synthesized:
        log.info(
            "models not in the emulator's table, described as Ollama would list them: %s",
            ", ".join(str(s) for s in synthesized),
            extra={"fields": {"synthesized": [s.spec.name for s in synthesized]}},
        )
    await serve_emulator(app, host, port)


async def serve_emulator(app: web.Application, host: str, port: int) -> None:
    """Serve an emulator's app as Ollama's server serves (`start_site` without a
    config: Go's head limit, request bodies read as sent) until SIGINT or SIGTERM."""
    runner = await start_site(app, host, port)
    log.info("emulator listening", extra={"fields": {"address": f"http://{host}:{port}"}})
    await _serve_forever([runner])


def demo_logging(config: Config, terminal: bool) -> Logging:
    """The demo's logging: on a terminal (`terminal`), readable text instead of JSON
    lines."""
    return dataclasses.replace(config.logging, json=config.logging.json and not terminal)


def demo_usage() -> tuple[Path, BinaryIO]:
    """The directory this demo records usage in (its events, spool and what it learns),
    one of `DEMO_SLOTS` under `$XDG_STATE_HOME/autoroute-demo/` that no other running
    demo holds (`dir_slots`), and the lock that holds it while open: two demos at once
    never write one file."""
    base = state_dir("autoroute-demo")
    claimed = dir_slots.claim(base, "usage", DEMO_SLOTS)
    if claimed is None:
        raise OSError(
            f"{DEMO_SLOTS} demos are running, each recording usage in a directory of its "
            f"own under {base}: stop one"
        )
    return claimed


def demo_config(
    config: Config, ports: Sequence[int], terminal: bool = False, usage_dir: Path | None = None
) -> Config:
    """The demo's configuration: its emulated backends (`DEMO_BACKENDS`, listening on
    `ports`), its logging (`demo_logging`), and usage events in `usage_dir` (the one
    `demo_usage` holds; by default the first of them, under its own name,
    `$XDG_STATE_HOME/autoroute-demo/`), never into the file (or the databases) that
    `serve` records real traffic in and training reads."""
    own = usage_dir or state_dir("autoroute-demo") / "usage"
    usage = dataclasses.replace(
        config.usage,
        file_path=str(own / "events.jsonl"),
        spool_dir=str(own / "spool"),
        postgres_dsn=None,
        kafka_bootstrap=None,
    )
    backends = tuple(
        Backend(url=f"http://127.0.0.1:{port}", name=name)
        for (name, _), port in zip(DEMO_BACKENDS, ports, strict=True)
    )
    return dataclasses.replace(
        config, backends=backends, usage=usage, logging=demo_logging(config, terminal)
    ).check()


# Prompts on which the demo's `auto` chooses differently (see DEMO_BACKENDS).
DEMO_CODE_PROMPT = "Fix this Python function: def add(a, b): return a - b"
DEMO_GENERAL_PROMPT = "Summarize the history of the Roman Empire in three sentences."


def _chat_body(model: str, prompt: str) -> str:
    doc = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False}
    # json, not orjson: its default separators (", ", ": ") read as people write JSON.
    return json.dumps(doc)


def demo_banner(config: Config) -> str:
    """What the demo prints once it listens (`config`, a `demo_config`): where, which
    models, what to try."""
    address = f"http://{config.listen.host}:{config.listen.port}"
    width = max(len(name) for name, _ in DEMO_BACKENDS)
    backends = "\n".join(
        f"  {name:<{width}}  {backend.url}  {', '.join(models)}"
        for (name, models), backend in zip(DEMO_BACKENDS, config.backends, strict=True)
    )
    large = DEMO_BACKENDS[1][1][0]
    return (
        f"\nautoroute demo: the proxy is on {address}, in front of two emulated Ollama\n"
        f"backends (no GPU; the answers are made-up text):\n{backends}\n"
        f"\n"
        f"Let auto choose; the X-Autoroute-Model header names the model it chose:\n"
        f"  curl -i {address}/api/chat -d '{_chat_body('auto', DEMO_CODE_PROMPT)}'\n"
        f"See why, without generating anything (the whole ranking; try another prompt,\n"
        f"auto:fast or auto:best, or an image):\n"
        f"  curl {address}/api/autoroute/explain -d "
        f"'{_chat_body('auto', DEMO_GENERAL_PROMPT)}'\n"
        f"Name a model yourself, as with Ollama:\n"
        f"  curl {address}/api/chat -d '{_chat_body(large, 'hello')}'\n"
        f"  OLLAMA_HOST={address} ollama list\n"
        f"\n"
        f"Status page (backends, traffic, auto's choices): {address}/api/autoroute/dashboard\n"
        f"Usage events: {config.usage.file_path}\n"
        f"Ctrl-C to stop.\n"
    )


async def demo(
    config: Config, ports: Sequence[int] = (0,) * len(DEMO_BACKENDS), terminal: bool = False
) -> None:
    """The demo's emulated backends, on `ports` (0: one the system gives), and the
    proxy in front of them, configured as `demo_config` makes `config` (its logging,
    `demo_logging`, set up by the caller), recording usage in the directory
    `demo_usage` holds for it while it runs."""
    from proxy.app import create_app
    from proxy.emulator import EmulatorSettings
    from proxy.emulator import create_app as create_emulator

    usage, held = demo_usage()
    with held:
        runners: list[web.AppRunner] = []
        try:
            for (_, models), port in zip(DEMO_BACKENDS, ports, strict=True):
                app = create_emulator(EmulatorSettings(models=models, speed_by_size=True))
                runners.append(await start_site(app, "127.0.0.1", port))
            listening = [runner.addresses[0][1] for runner in runners]
            config = demo_config(config, listening, terminal, usage)
            for (name, models), backend in zip(DEMO_BACKENDS, config.backends, strict=True):
                log.info("emulated backend %s on %s with %s", name, backend.url, ", ".join(models))
            app = create_app(config)
            runners.append(await start_site(app, config.listen.host, config.listen.port, config))
        except BaseException:
            # The demo cannot start (its proxy's port taken, a setting refused): the
            # backends it started stop with it, listening for no one until the process
            # is gone.
            for runner in reversed(runners):
                await runner.cleanup()
            raise
        await _serve_forever(runners, lambda: print(demo_banner(config), flush=True))


def _training_cli() -> ModuleType | None:
    """training.cli, when the training extra (xgboost, onnxmltools) is installed."""
    try:
        return importlib.import_module("training.cli")
    except ImportError:
        return None


async def _experiment_report(config: Config, name: str, since: str) -> None:
    from proxy import experiments

    if name not in config.selector.experiments:
        raise ConfigError(f"selector.experiments has no experiment '{name}'")
    events = await experiments.load_events(config.usage, since)
    report = experiments.configured_report(events, name, config.selector.experiments[name])
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


def _profile(config: Config, args: argparse.Namespace) -> int:
    from proxy import profiler
    from selector_model.profiling.suite import SuiteError

    try:
        event_loop.run(
            profiler.run_cli(
                config,
                args.model,
                backend=args.backend,
                areas=tuple(args.areas) if args.areas else None,
                store_path=args.store or config.selector.profiles_path,
                num_predict=args.num_predict or profiler.DEFAULT_NUM_PREDICT,
                echo=print,
            )
        )
    except (profiler.ProfileError, SuiteError) as exc:
        print(f"autoroute profile: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoroute profile: interrupted; nothing stored", file=sys.stderr)
        return 130
    return 0


TRAIN_EXTRA = (
    "the training extra (xgboost, onnxmltools, matplotlib) is not installed; "
    "from a clone of the repository: pip install -e '.[train]'"
)


def _version() -> str:
    try:
        return importlib.metadata.version("ollama-autoroute")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run from a clone without pip install -e .)"


def environment_help() -> str:
    """The `AUTOROUTE_*` variables most people set, with their defaults (as `ollama
    serve --help` lists OLLAMA_*); any other setting follows the same pattern."""
    defaults = Config()
    rows = (
        ("CONFIG", "config file", "./config.yaml if present"),
        ("BACKENDS", "comma-separated backend URLs", ",".join(b.url for b in defaults.backends)),
        ("LISTEN__HOST", "address the proxy listens on", defaults.listen.host),
        ("LISTEN__PORT", "port the proxy listens on", str(defaults.listen.port)),
        ("LOGGING__LEVEL", "DEBUG, INFO, WARNING, ERROR, CRITICAL", defaults.logging.level),
        ("LOGGING__JSON", "log lines as JSON", str(defaults.logging.json).lower()),
        ("USAGE__FILE_PATH", "usage events file", defaults.usage.file_path),
    )
    lines = ["environment variables (a flag wins over a variable, a variable over the file):"]
    for name, what, default in rows:
        lines.append(f"  {ENV_PREFIX + name:<28}{what} (default: {default})")
    lines.append(f"  {ENV_PREFIX + '<SECTION>__<KEY>':<28}any other setting of config.yaml,")
    lines.append(f"  {'':<28}e.g. {ENV_PREFIX}TIMEOUTS__IDLE_READ_SECONDS=300")
    return "\n".join(lines)


def _port(text: str) -> int:
    """A --port: a number from 1 to 65535 (the system would take 70000 as 4464)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def _ports(count: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: `count` comma-separated ports (`_port`)."""

    def ports(text: str) -> tuple[int, ...]:
        given = tuple(_port(word.strip()) for word in text.split(","))
        if len(given) != count:
            raise argparse.ArgumentTypeError(f"{text!r} is not {count} comma-separated ports")
        return given

    return ports


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of `low` or more (the training flags use it too)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not {low} or more")
        return value

    return count


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// URL")
    return text


def _since(text: str) -> str:
    """A --since that `parse_since` reads (24h, 7d, an ISO date), checked here so that
    a typo is a usage error rather than a traceback."""
    from proxy.usage.export import parse_since

    try:
        parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _command(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with the environment variables."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help,
        description=help,
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _config_flag(parser: argparse.ArgumentParser) -> None:
    # Also accepted after the subcommand; SUPPRESS keeps a --config given before it.
    parser.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="FILE", help="config.yaml to read"
    )


def _command_word(words: list[str]) -> str | None:
    """The subcommand in `words` (skipping `--config FILE` before it)."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(training_cli: ModuleType | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoroute",
        description=__doc__,
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autoroute {_version()}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config.yaml to read (default: $AUTOROUTE_CONFIG, else ./config.yaml if present)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = _command(commands, "serve", "run the proxy")
    _config_flag(serve_parser)
    serve_parser.add_argument("--host", help="address to listen on (listen.host)")
    serve_parser.add_argument("--port", type=_port, help="port to listen on (listen.port)")
    serve_parser.add_argument(
        "--backend",
        action="append",
        metavar="URL",
        help="an Ollama backend, e.g. http://127.0.0.1:11434; repeat for several "
        "(replaces `backends`)",
    )
    hash_key = "print a new random API key and the sha256 for auth.keys"
    commands.add_parser("hash-key", help=hash_key, description=hash_key)
    demo_parser = _command(commands, "demo", "run emulated backends and the proxy in front of them")
    _config_flag(demo_parser)
    demo_parser.add_argument("--port", type=_port, help="port the proxy listens on (listen.port)")
    demo_parser.add_argument(
        "--backend-ports",
        type=_ports(len(DEMO_BACKENDS)),
        default=(0,) * len(DEMO_BACKENDS),
        metavar=",".join(name.upper() for name, _ in DEMO_BACKENDS),
        help="ports of the emulated backends (default: free ones, which the demo prints)",
    )
    emulated = "run an Ollama emulator (a stand-in GPU backend)"
    em = commands.add_parser("emulate", help=emulated, description=emulated)
    em.add_argument("--host", default="127.0.0.1")
    em.add_argument("--port", type=_port, default=11434)
    em.add_argument(
        "--models",
        help="comma-separated Ollama model names, any (default: the emulator's table); one "
        "the table does not list is described from the selector's catalogue or its name",
    )
    em.add_argument("--chunk-ms", type=float, default=None, help="fixed delay between chunks")
    usage = commands.add_parser(
        "usage", help="usage events", description="usage events"
    ).add_subparsers(dest="usage_command", required=True)
    exp = _command(usage, "export", "write usage events (PostgreSQL, else the file)")
    _config_flag(exp)
    exp.add_argument("--since", type=_since, default="24h", help="24h, 7d, 30m or an ISO date/time")
    exp.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    exp.add_argument("--output", "-o", help="file to write (default: standard output)")
    train = _command(commands, "train", "train a selector artifact (needs the train extra)")
    evaluate = _command(
        commands, "evaluate", "evaluate an artifact on the test split (needs the train extra)"
    )
    if training_cli is not None:
        training_cli.add_train_arguments(train)
        training_cli.add_evaluate_arguments(evaluate)
    experiments = commands.add_parser(
        "experiments", help="A/B experiments", description="A/B experiments"
    ).add_subparsers(dest="experiments_command", required=True)
    report = _command(experiments, "report", "per-variant results with significance")
    _config_flag(report)
    report.add_argument("name")
    report.add_argument("--since", type=_since, default="90d", help="90d, 24h or an ISO date/time")
    keys_cli.add_parser(commands)
    prof = _command(
        commands, "profile", "measure a model's per-area ability on its backend (spends GPU time)"
    )
    prof.add_argument("model")
    prof.add_argument(
        "--backend",
        type=_http_url,
        help="backend URL (default: the first configured that has it)",
    )
    _config_flag(prof)
    prof.add_argument("--areas", nargs="+", help="areas to profile (default: all)")
    prof.add_argument("--store", help="profile store file (default: selector.profiles_path)")
    prof.add_argument(
        "--num-predict", type=at_least(1), default=None, help="token budget per answer"
    )
    return parser


def _with_flags(config: Config, args: argparse.Namespace) -> Config:
    """The flags of `serve` and `demo` over the loaded configuration."""
    host = getattr(args, "host", None)
    port = getattr(args, "port", None)
    backends = getattr(args, "backend", None)
    if host is None and port is None and not backends:
        return config
    listen = dataclasses.replace(
        config.listen,
        host=config.listen.host if host is None else host,
        port=config.listen.port if port is None else port,
    )
    return dataclasses.replace(
        config,
        listen=listen,
        backends=tuple(Backend(url=url) for url in backends) if backends else config.backends,
    ).check()


def port_in_use_message(exc: PortInUse, command: str, config: Config) -> str:
    """Which port, what moves it, and for the demo that another demo may hold it."""
    if command == "emulate":
        return f"autoroute emulate: port {exc.port} on {exc.host} is already in use; use --port"
    if exc.port == config.listen.port:
        moves = f"--port, listen.port in the config file or {ENV_PREFIX}LISTEN__PORT"
        message = (
            f"autoroute {command}: port {exc.port} on {exc.host} is already in use; "
            f"choose another with {moves}"
        )
    else:
        message = (
            f"autoroute {command}: port {exc.port} on {exc.host} (an emulated backend's, "
            "--backend-ports) is already in use"
        )
    if command == "demo":
        message += "; another `autoroute demo` may be running"
    return message


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    # xgboost, onnxmltools and matplotlib load only for the commands that use them:
    # they would add ~150 MB to every `serve` and `emulate` process.
    command = _command_word(words)
    training_cli = _training_cli() if command in ("train", "evaluate") else None
    if command in ("train", "evaluate") and training_cli is None:
        # Before parsing: without the extra the commands have no arguments to parse,
        # and `train --help` would print an empty help.
        print(f"autoroute {command}: {TRAIN_EXTRA}", file=sys.stderr)
        return 2
    args = build_parser(training_cli).parse_args(words)
    if args.command in ("train", "evaluate"):
        assert training_cli is not None
        run = training_cli.run_train if args.command == "train" else training_cli.run_evaluate
        return int(run(args))

    if args.command == "hash-key":
        from proxy.auth import new_key

        key, digest = new_key()
        print(f"key:    {key}\nsha256: {digest}")
        return 0

    try:
        # What reading it logs (a variable it ignores) waits for the logging it sets up.
        with logs.held() as held:
            config = config_loading.load(args.config)
        if args.command in ("serve", "demo"):
            # `profile --backend` names where to profile, not the proxy's backends.
            config = _with_flags(config, args)
    except ConfigError as exc:
        print(f"autoroute: configuration error: {exc}", file=sys.stderr)
        return 2
    terminal = sys.stderr.isatty()
    logging_ = demo_logging(config, terminal) if args.command == "demo" else config.logging
    logs.setup(logging_.level, logging_.json)
    logs.replay(held)

    if args.command == "keys":
        return keys_cli.run(config, args)
    if args.command == "profile":
        return _profile(config, args)
    if args.command == "experiments":
        main_coro = _experiment_report(config, args.name, args.since)
    elif args.command == "usage":
        from proxy.usage.export import export

        main_coro = export(config.usage, args.since, args.format, args.output)
    elif args.command == "serve":
        main_coro = serve(config)
    elif args.command == "demo":
        main_coro = demo(config, args.backend_ports, terminal)
    else:
        models = tuple(m.strip() for m in (args.models or "").split(",") if m.strip()) or None
        main_coro = emulate(args.host, args.port, models, args.chunk_ms)
    try:
        event_loop.run(main_coro)
    except ConfigError as exc:
        # A setting checked as the proxy starts (its catalogue read, its spool made).
        print(
            f"autoroute: configuration error: {config_loading.named(exc, args.config)}",
            file=sys.stderr,
        )
        return 2
    except PortInUse as exc:
        print(port_in_use_message(exc, args.command, config), file=sys.stderr)
        return 2
    except CannotListen as exc:
        settings = " (listen.host, listen.port)" if args.command == "serve" else ""
        print(
            f"autoroute {args.command}: cannot listen on {exc.host}:{exc.port}{settings}: "
            f"{exc.reason}",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"autoroute: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
