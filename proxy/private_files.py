"""Files the proxy keeps of its clients' traffic, readable by its own user only.

Usage events name users, keys and prompt hashes, feedback carries free-text comments,
and with `usage.log_prompts` the prompts themselves: like Ollama's own prompt history
(0600), every file and directory the proxy makes for them is its user's alone
(0600 and 0700), whatever the process's umask. One made before, or by an operator,
keeps the mode it has.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Literal

FILE_MODE = 0o600
DIR_MODE = 0o700

_FLAGS = {
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}


def make_dirs(path: Path) -> None:
    """`path` and any missing parent, each made 0700 (those that exist are kept)."""
    missing: list[Path] = []
    at = path
    while not at.is_dir():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise  # a file of that name, as mkdir(exist_ok=True) refuses it
            continue  # another process made it in between
        os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask


def open_file(path: Path, mode: Literal["ab", "a+b", "wb"], buffering: int = -1) -> BinaryIO:
    """`open(path, mode)`, a file it creates made 0600."""
    fd = os.open(path, _FLAGS[mode], FILE_MODE)
    try:
        return os.fdopen(fd, mode, buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def write_file(path: Path, data: bytes) -> None:
    """`path.write_bytes(data)`, a file it creates made 0600."""
    with open_file(path, "wb") as f:
        f.write(data)
