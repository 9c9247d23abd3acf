"""`autoroute demo`: backends whose models make `auto` visibly choose, a banner that
shows `auto` first, and readable logs on a terminal."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.cli import (
    DEMO_BACKENDS,
    DEMO_CODE_PROMPT,
    DEMO_GENERAL_PROMPT,
    PortInUse,
    demo,
    demo_banner,
    demo_config,
    demo_logging,
)
from proxy.config import Config
from proxy.config_serving import Listen
from proxy.emulator import EmulatorSettings
from proxy.emulator.catalog import REGISTRY
from proxy.logs import AccessLog
from tests.support import PIXEL_PNG, Emulator, Proxy, ServerThread, free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODELS = [m for _, models in DEMO_BACKENDS for m in models]


def params_b(model: str) -> float:
    return REGISTRY[model].parameter_count / 1e9


def test_the_demo_backends_hold_a_small_a_large_a_coder_and_a_vision_model() -> None:
    assert all(m in REGISTRY for m in DEMO_MODELS), DEMO_MODELS
    chat = [m for m in DEMO_MODELS if REGISTRY[m].has("completion")]
    assert min(params_b(m) for m in chat) < 4  # small and fast
    assert max(params_b(m) for m in chat) > 30  # large
    assert any(REGISTRY[m].has("insert") and dict(REGISTRY[m].skills)["code"] >= 0.8 for m in chat)
    assert any(REGISTRY[m].has("vision") for m in chat)
    # Each backend serves something the other does not.
    first, second = (set(models) for _, models in DEMO_BACKENDS)
    assert first - second and second - first


def chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "user", "content": prompt, **extra}
    return {"model": model, "messages": [message], "stream": False}


async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


async def explain(url: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, doc = await post(url + "/api/autoroute/explain", body)
    assert status == 200, doc
    return doc


@pytest.fixture
def demo_proxy(servers: ServerThread, tmp_path: Path) -> Iterator[Proxy]:
    """The demo's backends (as emulators on free ports) behind a proxy with the demo's
    configuration."""
    emulators = [Emulator(servers, EmulatorSettings(models=m)) for _, m in DEMO_BACKENDS]
    demo = demo_config(Config(listen=Listen(port=free_port())), [e.port for e in emulators])
    proxy = Proxy(servers, [e.url for e in emulators], selector=demo.selector)
    try:
        yield proxy
    finally:
        proxy.stop()
        for emu in emulators:
            emu.stop()


async def test_auto_chooses_differently_per_prompt_and_profile_on_the_demo(
    demo_proxy: Proxy,
) -> None:
    url = demo_proxy.url
    # Until the health checks have found every demo model.
    for _ in range(600):
        doc = await explain(url, chat("auto:best", "hello"))
        ranked = {r["model"] for r in doc["ranking"]} | set(doc["filtered"])
        if {m for m in DEMO_MODELS if REGISTRY[m].has("completion")} <= ranked:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the demo's models never all reached auto: {doc}")

    code = await explain(url, chat("auto", DEMO_CODE_PROMPT))
    general = await explain(url, chat("auto", DEMO_GENERAL_PROMPT))
    image = await explain(url, chat("auto", "What is in this picture?", images=[PIXEL_PNG]))
    assert code["model"] != general["model"], (code["ranking"], general["ranking"])
    assert REGISTRY[image["model"]].has("vision")
    assert not REGISTRY[code["model"]].has("vision")
    # Code asked for in plain English, in a language without a column of its own or
    # named by an everyday word, reads as code, as the Python fix does, and goes to a
    # model no smaller than the fix's: the 3B general model is what a poem gets.
    assert code["kind"] == "code"
    for asked in ("Write a quicksort in Go", "Implement binary search in Kotlin"):
        other = await explain(url, chat("auto", asked))
        assert other["kind"] == "code", (asked, other)
        assert params_b(other["model"]) >= params_b(code["model"]), (asked, other["ranking"])
    # A function in biology is not code: the question goes where a question of fact goes.
    liver = await explain(url, chat("auto", "What is the main function of the liver?"))
    assert liver["kind"] == "knowledge", liver
    assert liver["model"] != code["model"], liver["ranking"]
    fast = await explain(url, chat("auto:fast", DEMO_GENERAL_PROMPT))
    best = await explain(url, chat("auto:best", DEMO_GENERAL_PROMPT))
    assert params_b(fast["model"]) < params_b(best["model"]), (fast["model"], best["model"])
    # explain says what the answer's headers mean.
    assert {"X-Autoroute-Reason", "X-Autoroute-Score"} <= set(code["legend"])
    assert "cost_weight" in code["legend"]["X-Autoroute-Score"]

    # The banner's auto example, answered: the headers name the model explain ranked first.
    status, headers, answer = await post(url + "/api/chat", chat("auto", DEMO_CODE_PROMPT))
    assert status == 200 and answer["model"] == code["model"]
    assert headers["X-Autoroute-Model"] == code["model"]
    assert headers["X-Autoroute-Reason"] == code["reason"]
    chosen_utility = next(r["utility"] for r in code["ranking"] if r["model"] == code["model"])
    assert float(headers["X-Autoroute-Score"]) == pytest.approx(chosen_utility, abs=1e-3)
    # The status page the banner names shows that choice.
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/api/autoroute/dashboard.json") as resp,
    ):
        page = orjson.loads(await resp.read())
    chosen = {(c["profile"], c["model"]) for c in page["auto"]["choices"]}
    assert (code["profile"], code["model"]) in chosen, page["auto"]["choices"]

    # The coder, answered, stays loaded (the README's walkthrough): auto:fast takes it
    # for code, where it is rated near the best, and not for the summary, where it is
    # rated more than fast's max_loss below the best-rated model.
    for _ in range(600):
        fast_code = await explain(url, chat("auto:fast", DEMO_CODE_PROMPT))
        if fast_code["model"] == code["model"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"auto:fast never took the loaded coder: {fast_code['ranking']}")
    summary = await explain(url, chat("auto:fast", DEMO_GENERAL_PROMPT))
    coder = next(r for r in summary["ranking"] if r["model"] == code["model"])
    assert summary["model"] != code["model"], summary["ranking"]
    assert coder["beyond_max_loss"] is True, summary["ranking"]


def test_the_banner_shows_auto_first_the_models_and_how_to_stop() -> None:
    config = demo_config(Config(listen=Listen(port=18123)), [18124, 18125])
    banner = demo_banner(config)
    address = "http://127.0.0.1:18123"
    assert address in banner
    for (name, models), port in zip(DEMO_BACKENDS, (18124, 18125), strict=True):
        line = next(x for x in banner.splitlines() if x.strip().startswith(name))
        assert f"http://127.0.0.1:{port}" in line and ", ".join(models) in line
    curls = [x.strip() for x in banner.splitlines() if x.strip().startswith("curl")]
    assert '"model": "auto"' in curls[0]  # auto comes first
    assert any(f"{address}/api/autoroute/explain" in c for c in curls)
    assert any(f'"model": "{DEMO_BACKENDS[1][1][0]}"' in c for c in curls)
    assert f"{address}/api/autoroute/dashboard" in banner
    assert banner.rstrip().endswith("Ctrl-C to stop.")


def test_autoroute_demo_prints_the_banner_and_logs_text_on_a_terminal(tmp_path: Path) -> None:
    """The real command: banner on stdout, readable log lines when stderr is a terminal,
    the auto example answered, Ctrl-C stops it."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XDG_STATE_HOME": str(tmp_path),
        "AUTOROUTE_LISTEN__PORT": str(port),
    }
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    try:
        assert proc.stdout is not None
        banner = []
        while not banner or banner[-1].strip() != "Ctrl-C to stop.":
            line = proc.stdout.readline()
            assert line, f"the demo ended before its banner: {''.join(banner)}"
            banner.append(line)
        text = "".join(banner)
        assert f"http://127.0.0.1:{port}" in text and '"model": "auto"' in text
        logged = b""
        while b"emulated backend gpu-b" not in logged:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, f"no log line on the terminal: {logged!r}"
            logged += os.read(controller, 4096)
        lines = [x for x in logged.decode().splitlines() if x.strip()]
        assert lines and not any(x.lstrip().startswith("{") for x in lines), lines
        assert any("INFO" in x and "emulated backend gpu-a" in x for x in lines), lines
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        os.close(controller)
    assert code == 0


def _banner(proc: subprocess.Popen[str]) -> str:
    """What a demo process printed up to the end of its banner."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or lines[-1].strip() != "Ctrl-C to stop.":
        line = proc.stdout.readline()
        assert line, f"the demo ended before its banner: {''.join(lines)}"
        lines.append(line)
    return "".join(lines)


def test_two_demos_run_side_by_side_each_with_backends_of_its_own(tmp_path: Path) -> None:
    """`autoroute demo --port N` twice on one machine: each one's emulated backends take
    ports of their own (free ones; the second's those `--backend-ports` asks for), and
    what each banner says of them is where they are: the proxy behind it answers `auto`
    from them. Each records usage in a directory of its own (where its banner says),
    under the demos' state directory: no file is written by both."""
    ports = (free_port(), free_port())
    asked = [free_port() for _ in DEMO_BACKENDS]
    flags = ([], ["--backend-ports", ",".join(map(str, asked))])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "demo", "--port", str(port), *flag],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for port, flag in zip(ports, flags, strict=True)
    ]
    try:
        listed: dict[str, list[str]] = {}
        usage: list[Path] = []
        for port, proc in zip(ports, procs, strict=True):
            banner = _banner(proc)
            usage += [
                Path(x.removeprefix("Usage events: "))
                for x in banner.splitlines()
                if x.startswith("Usage events: ")
            ]
            assert f"the proxy is on http://127.0.0.1:{port}," in banner
            for name, models in DEMO_BACKENDS:
                line = next(x for x in banner.splitlines() if x.strip().startswith(name))
                _, url, shown = line.split(maxsplit=2)
                assert shown == ", ".join(models), line
                listed[url] = list(models)
            asked_auto = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/chat",
                orjson.dumps(chat("auto", DEMO_CODE_PROMPT)),
            )
            with urllib.request.urlopen(asked_auto, timeout=60) as resp:
                assert resp.headers["X-Autoroute-Model"] in DEMO_MODELS
        assert len(listed) == 2 * len(DEMO_BACKENDS)  # four backends, each on its own port
        assert list(listed)[len(DEMO_BACKENDS) :] == [f"http://127.0.0.1:{p}" for p in asked]
        assert len({path.parent for path in usage}) == len(usage) == 2, usage
        assert all(path.is_relative_to(tmp_path / "autoroute-demo") for path in usage), usage
        for url, models in listed.items():
            with urllib.request.urlopen(url + "/api/tags", timeout=60) as resp:
                tags = orjson.loads(resp.read())
            assert sorted(m["name"] for m in tags["models"]) == sorted(models), url
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0]


async def test_a_demo_that_cannot_start_leaves_no_backend_listening() -> None:
    """The proxy's port is taken: the demo stops with the port named (`PortInUse`), and
    the emulated backends it started before it found out are no longer listening."""
    asked = [free_port() for _ in DEMO_BACKENDS]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse) as error:
            await demo(Config(listen=Listen(port=port)), asked)
    assert error.value.port == port
    for backend in asked:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", backend)


def test_the_demo_keeps_json_logs_off_a_terminal() -> None:
    config = Config()
    assert demo_logging(config, terminal=False).json
    assert not demo_logging(config, terminal=True).json
    assert not demo_config(config, [18124, 18125], terminal=True).logging.json
    quiet = dataclasses.replace(config, logging=dataclasses.replace(config.logging, json=False))
    assert not demo_logging(quiet, terminal=False).json


def test_the_access_log_reads_as_text_when_json_is_off() -> None:
    stream = io.StringIO()
    access = AccessLog(enabled=True, stream=stream, json=False)
    access.record({"method": "POST", "path": "/api/chat", "model": "auto", "status": 200})
    access.flush()
    line = stream.getvalue().strip()
    assert not line.startswith("{")
    assert line.endswith("request method=POST path=/api/chat model=auto status=200"), line
