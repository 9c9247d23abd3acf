"""A directory of one process's own among numbered slots under one place (`<name>`,
`<name>.1`, ...): each is held by `flock` on a `lock` file inside it for as long as the
process keeps that file open, so two processes given the same place each write in a
slot of their own, and a slot a process left (or a crashed one held) is taken again.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import BinaryIO

from proxy import private_files


def claim(base: Path, name: str, slots: int) -> tuple[Path, BinaryIO] | None:
    """The first of `slots` slots of `name` under `base` no other process holds (made
    0700 where missing), and its lock file, held until closed; None when each is held."""
    for slot in range(slots):
        path = base / (name if slot == 0 else f"{name}.{slot}")
        private_files.make_dirs(path)
        lock = private_files.open_file(path / "lock", "a+b")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return path, lock
    return None
