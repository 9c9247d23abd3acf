from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.emulator import EmulatorSettings
from tests.support import Emulator, Proxy, ServerThread, free_port, wait_listening
from tests.usage_services import Database, database_on, postgres_base

# The proxy's default paths (the usage file training reads, the spool) are under
# XDG_STATE_HOME: pointed at a directory of the run's own before any test module is
# imported, so no proxy made here (in-process, or a subprocess, which inherits it)
# writes into the user's real files.
STATE_HOME = tempfile.mkdtemp(prefix="autoroute-test-state-")
os.environ["XDG_STATE_HOME"] = STATE_HOME
# Matplotlib (training's report plots) keeps its font cache and configuration under
# ~/.cache and ~/.config unless told otherwise: in the run's directory too.
os.environ["MPLCONFIGDIR"] = os.path.join(STATE_HOME, "matplotlib")


@pytest.fixture(scope="session", autouse=True)
def _private_state_home() -> Iterator[None]:
    os.environ["XDG_STATE_HOME"] = STATE_HOME  # again, should a test have changed it
    yield
    shutil.rmtree(STATE_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_log_handler_on_a_closed_stream() -> Iterator[None]:
    """`autoroute` run in-process (`proxy.cli.main`, `demo`) points the root logger at
    the sys.stderr of the moment, under `capsys` the test's own, closed when the test
    ends: a record a server thread logs later would fail on it ("--- Logging error ---",
    printed wherever pytest's capture is off just then). Such a handler goes with its
    stream; records then reach Python's last-resort handler on the sys.stderr of their
    time."""
    yield
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)


# Identical requests give byte-identical answers (fixed clock, computed durations), so
# a response through the proxy can be compared with the direct one byte for byte.
FROZEN = EmulatorSettings(frozen_clock=True, chunk_delay_ms=1.0)


@pytest.fixture(scope="session")
def servers() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def emulator(servers: ServerThread) -> Iterator[Emulator]:
    """One emulator shared by the read-only tests: do not change its models or faults."""
    emu = Emulator(servers, FROZEN)
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def proxy(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    """The proxy in front of `emulator` alone: a pure pass-through."""
    prx = Proxy(servers, [emulator.url])
    yield prx
    prx.stop()


# The demo's backends: Ollama's running clock, so two identical requests differ in their
# timestamps, measured durations and the ids Ollama draws at random (chunks 1 ms apart,
# to keep tests quick).
LIVE = EmulatorSettings(chunk_delay_ms=1.0)


@pytest.fixture(scope="module")
def live_emulator(servers: ServerThread) -> Iterator[Emulator]:
    """An emulator (`LIVE`) of the module's own, which its tests may change."""
    emu = Emulator(servers, LIVE)
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def live_proxy(servers: ServerThread, live_emulator: Emulator) -> Iterator[Proxy]:
    """The proxy in front of `live_emulator` alone."""
    prx = Proxy(servers, [live_emulator.url])
    yield prx
    prx.stop()


@pytest.fixture
def own_emulator(servers: ServerThread) -> Iterator[Emulator]:
    """An emulator of the test's own, free to be changed, broken or stopped."""
    emu = Emulator(servers, FROZEN)
    yield emu
    emu.stop()


@pytest.fixture
def own_proxy(servers: ServerThread, own_emulator: Emulator) -> Iterator[Proxy]:
    prx = Proxy(servers, [own_emulator.url])
    yield prx
    prx.stop()


@pytest.fixture(scope="module")
def pg_base() -> Iterator[str]:
    """A PostgreSQL server for the module: the machine's, else a private one."""
    with postgres_base() as dsn:
        yield dsn


@pytest.fixture
def database(pg_base: str) -> Iterator[Database]:
    """A database of the test's own on `pg_base`, dropped afterwards."""
    with database_on(pg_base) as db:
        yield db


@pytest.fixture
def emulator_process() -> Iterator[int]:
    """The port of an emulator in a process of its own (chunks 20 ms apart), for tests
    of a proxy that runs as a process too."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.emulator", "--port", str(port), "--chunk-delay-ms", "20"],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_listening(port, proc)
    yield port
    proc.kill()
    proc.wait()


# Debian's Chromium, driven by Playwright: the browser the status page and browser-based
# clients are checked in.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _launch(playwright: Any, home: Path) -> Any:
    """Chromium with its home under `home`: Playwright gives it a temporary profile, but
    its crash reports (~/.config/chromium) and GTK's settings cache (~/.cache/dconf)
    follow HOME and the XDG directories, which a test must not write into."""
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env=env
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the test extra's playwright package is not installed"
    )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package "
            "(apt-get install chromium), which could not be done here"
        )
    with sync_api.sync_playwright() as playwright:
        chromium = _launch(playwright, tmp_path_factory.mktemp("chromium-home"))
        yield chromium
        chromium.close()
