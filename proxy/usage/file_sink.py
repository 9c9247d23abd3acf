"""The embedded default sink: a local JSONL file, rotated by size.

`events.jsonl` holds usage events, one JSON object per line; `events.feedback.jsonl`
beside it holds feedback. Rotation renames `events.jsonl` to `events.jsonl.1` (and
shifts older ones up to `file_backups`), so its readers (`proxy.usage.export.file_events`:
export, training, the A/B report, learning's rebuild) read `events.jsonl*` and
`events.feedback.jsonl*`.
Writes happen in a worker thread: a batch is one `write` call, never on the loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from proxy import private_files
from proxy.usage.event import FEEDBACK, USAGE
from proxy.usage.runner import Record


def feedback_path(path: Path) -> Path:
    return path.with_name(path.stem + ".feedback" + path.suffix)


class _RotatingFile:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            private_files.make_dirs(self.path.parent)
            self._file = private_files.open_file(self.path, "a+b")  # open between batches
            if self._file.tell():
                self._file.seek(-1, os.SEEK_END)
                if self._file.read(1) != b"\n":
                    # A crash cut the last write short: its torn line ends here, one line
                    # its readers skip, and the next event stays a line of its own.
                    self._file.write(b"\n")
        if self._file.tell() and self._file.tell() + len(data) > self.max_bytes:
            self._rotate()
            assert self._file is not None
        self._file.write(data)
        self._file.flush()

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = private_files.open_file(self.path, "ab")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileSink:
    name = "file"

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = Path(path).expanduser()
        self._usage = _RotatingFile(self.path, max_bytes, backups)
        self._feedback = _RotatingFile(feedback_path(self.path), max_bytes, backups)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="usage-file")

    def _write_sync(self, usage: bytes, feedback: bytes) -> None:
        if usage:
            self._usage.write(usage)
        if feedback:
            self._feedback.write(feedback)

    async def write(self, records: Sequence[Record]) -> None:
        usage = b"".join(r.line + b"\n" for r in records if r.kind == USAGE)
        feedback = b"".join(r.line + b"\n" for r in records if r.kind == FEEDBACK)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._write_sync, usage, feedback)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._usage.close)
        await loop.run_in_executor(self._io, self._feedback.close)
        self._io.shutdown(wait=True)
