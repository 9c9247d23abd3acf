"""Running a model's code against an item's asserts, away from everything else.

The code runs in a fresh `python -I -S -B` subprocess in an empty temporary directory, with
an empty environment, a wall-clock timeout and resource limits (CPU seconds, memory,
file size, open files, no core dumps). Inside, an audit hook installed before the code
runs refuses network use, new processes, ctypes and writes outside that directory.
Where unprivileged user namespaces work (`unshare -rn`), the process also gets a network
namespace of its own with no interfaces up. This keeps an honest mistake (an endless
loop, a huge list, a stray HTTP call) from doing harm; it is not a boundary against code
written to escape, which is why profiling only runs models an operator names.
"""

from __future__ import annotations

import functools
import math
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Executed by the child: limits, then the audit hook, then the answer and its tests in
# one namespace. Exit 0: every assert held.
_DRIVER = r"""
import os, resource, sys

def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass

_limit(resource.RLIMIT_CPU, {cpu_seconds})
_limit(resource.RLIMIT_AS, {memory_bytes})
_limit(resource.RLIMIT_FSIZE, 1 << 20)
_limit(resource.RLIMIT_NOFILE, 32)
_limit(resource.RLIMIT_CORE, 0)

_HOME = os.path.realpath(os.getcwd())
_REFUSED = (
    "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.fork", "os.forkpty", "pty.", "ctypes.", "os.kill", "os.killpg", "signal.",
    "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "os.chdir", "os.chroot",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _outside(path):
    if isinstance(path, int):
        return False
    full = os.path.realpath(os.fsdecode(path))
    return full != _HOME and not full.startswith(_HOME + os.sep)

def _hook(event, args):
    if event.startswith(_REFUSED):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1] or "", args[2] or 0
        writing = any(c in str(mode) for c in "wax+") or bool(flags & _WRITE_FLAGS)
        if writing and _outside(path):
            raise PermissionError("sandbox: writing outside the work directory")
    if event in ("os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.mkdir",
                 "os.symlink", "os.link", "os.chmod", "os.chown", "os.truncate"):
        if any(_outside(a) for a in args if isinstance(a, (str, bytes))):
            raise PermissionError("sandbox: " + event + " outside the work directory")

with open("answer.py", encoding="utf-8") as f:
    _answer = f.read()
with open("tests.py", encoding="utf-8") as f:
    _tests = f.read()
sys.addaudithook(_hook)
_scope = {{"__name__": "answer"}}
exec(compile(_answer, "answer.py", "exec"), _scope)
exec(compile(_tests, "tests.py", "exec"), _scope)
"""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    detail: str = ""  # the last lines of the error for a failure


@functools.cache
def _netns_prefix() -> tuple[str, ...]:
    """`unshare -rn` when this machine lets an unprivileged process use it, else ()."""
    tool = shutil.which("unshare")
    if tool is None:
        return ()
    try:
        probe = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (tool, "-rn") if probe.returncode == 0 else ()


def run_tests(
    code: str,
    tests: str,
    *,
    timeout: float = 10.0,
    memory_bytes: int = 512 * 1024 * 1024,
) -> Outcome:
    """Run `code`, then `tests` in the same namespace, in the sandbox."""
    with tempfile.TemporaryDirectory(prefix="autoroute-profile-") as work:
        home = Path(work)
        (home / "answer.py").write_text(code, encoding="utf-8")
        (home / "tests.py").write_text(tests, encoding="utf-8")
        # The CPU limit is a second past the wall clock's, a backstop: a loop the clock
        # ends reads as timed out, not as whichever of the two limits won the race.
        cpu_seconds = math.ceil(timeout) + 1
        driver = _DRIVER.format(cpu_seconds=cpu_seconds, memory_bytes=memory_bytes)
        (home / "driver.py").write_text(driver, encoding="utf-8")
        command = [*_netns_prefix(), sys.executable, "-I", "-S", "-B", "driver.py"]
        try:
            done = subprocess.run(
                command,
                cwd=work,
                env={},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Outcome(False, f"timed out after {timeout:g} s")
    if done.returncode == 0:
        return Outcome(True)
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
    if done.returncode < 0 and not tail:
        return Outcome(False, f"killed by {_signal_name(-done.returncode)}")
    return Outcome(False, " | ".join(tail) or f"exit status {done.returncode}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
