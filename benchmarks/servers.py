"""The servers a benchmark starts, started so that it cannot measure the wrong ones.

Each port is checked free before anything starts (a demo or another benchmark still
running would otherwise answer in place of the servers started here, which fail to
bind). Each server's output goes to a log file of the run's own, whose last lines are
printed when the server exits or does not answer. `wait_ready` accepts a port only
when the process started for it is alive and is the one listening there.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

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
