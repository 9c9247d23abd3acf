"""An append-only on-disk spool: what a sink could not take yet, in arrival order.

Segment files `<16 digits>.seg` hold one record per line; a `cursor` file says how far
the sink has consumed (segment and byte offset), rewritten atomically after each batch
the sink accepted, so a crash replays at most one batch twice (sinks de-duplicate by
request id). The cursor lives in memory and the file follows it: on a full disk the
file cannot be rewritten, and replay goes on (a crash then replays more, de-duplicated
likewise). A process never appends to a segment it did not create: a segment left by
a crash may end in a torn line, which replay skips, and new records go to a new one.
An append the disk could not take is cut back off the segment: no torn line in the
middle, where the next record would be glued to it.
Once every record is consumed, the segments are removed: what a sink has taken (logged
prompts among it) does not stay on disk until the next outage.

One process owns a spool directory, held by `flock` on `lock`; a second process on
the same `spool_dir` takes the next free slot (`<name>.1`, ...). Methods are called
from one I/O thread and, on overflow, from the event loop: a lock serialises them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from proxy import dir_slots, private_files

log = logging.getLogger("autoroute.usage")

Cursor = tuple[int, int]
_SLOTS = 16


class SpoolBusy(OSError):
    pass


class Spool:
    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str,
        segment_bytes: int,
        fsync: str,
        fsync_interval: float,
    ) -> None:
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._writer: BinaryIO | None = None
        self._writer_seg = -1
        self._writer_size = 0
        self._synced_at = time.monotonic()
        self._dirty = False
        base = Path(root).expanduser()
        private_files.make_dirs(base)
        claimed = dir_slots.claim(base, name, _SLOTS)  # held for the process's life
        if claimed is None:
            raise SpoolBusy(f"every spool slot under {base} for {name} is in use")
        self.dir, self._lock_file = claimed
        self._at = self._cursor()  # how far the sink has consumed; the file follows
        self._cursor_failing = False
        self.pending = self._count_pending()

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _seg_path(self, seg: int) -> Path:
        return self.dir / f"{seg:016d}.seg"

    def _cursor(self) -> Cursor:
        try:
            seg, offset = (self.dir / "cursor").read_text().split()
            return int(seg), int(offset)
        except (OSError, ValueError):
            return -1, 0

    def _count_pending(self) -> int:
        seg0, offset0 = self._at
        total = 0
        for seg in self._segments():
            if seg < seg0:
                continue
            with open(self._seg_path(seg), "rb") as f:
                if seg == seg0:
                    f.seek(offset0)
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        return total

    def append(self, lines: list[bytes]) -> None:
        """Append records (each ending in a newline). Raises OSError (disk full)."""
        if not lines:
            return
        data = b"".join(lines)
        with self._lock:
            if self._writer is None or self._writer_size >= self.segment_bytes:
                self._rotate()
            writer = self._writer
            assert writer is not None
            view = memoryview(data)
            try:
                while view:  # unbuffered: no bytes held back to reach the disk later
                    view = view[writer.write(view) or 0 :]
            except OSError:
                # Part of the batch may be on disk: cut it off, so the segment ends in
                # the last whole record and the records counted dropped stay dropped.
                with contextlib.suppress(OSError):
                    os.ftruncate(writer.fileno(), self._writer_size)
                raise
            self._writer_size += len(data)
            self.pending += len(lines)
            self._dirty = True
            if self.fsync == "always" or (
                self.fsync == "interval"
                and time.monotonic() - self._synced_at >= self.fsync_interval
            ):
                self._sync_locked()

    def _rotate(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None  # closed even if the sync fails
            try:
                self._sync_locked(writer)
            finally:
                writer.close()
        # Past the cursor's segment too: one consumed and removed (`commit`) is never
        # numbered again, so the cursor never points past records not yet read.
        segments = self._segments()
        self._writer_seg = max(segments[-1] if segments else 0, self._at[0]) + 1
        self._writer = private_files.open_file(self._seg_path(self._writer_seg), "ab", 0)
        self._writer_size = 0
        if self.fsync == "always":
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_locked(self, writer: BinaryIO | None = None) -> None:
        writer = writer or self._writer
        if writer is not None and self._dirty and self.fsync != "never":
            os.fsync(writer.fileno())
        self._dirty = False
        self._synced_at = time.monotonic()

    def read(self, max_records: int, max_bytes: int | None = None) -> tuple[list[bytes], Cursor]:
        """The oldest unconsumed records (without newlines), at most `max_records` of
        them and `max_bytes` (one at least), and the cursor after them."""
        with self._lock:
            seg0, offset = self._at
            for seg in self._segments():
                if seg < seg0:
                    self._seg_path(seg).unlink(missing_ok=True)
                    continue
                start = offset if seg == seg0 else 0
                lines: list[bytes] = []
                with open(self._seg_path(seg), "rb") as f:
                    f.seek(start)
                    pos = start
                    size = 0
                    while len(lines) < max_records:
                        line = f.readline()
                        if not line.endswith(b"\n"):
                            if line:  # a torn tail: a crash mid-write; nothing to parse
                                log.warning("spool %s: skipping a torn record", self.dir)
                                pos += len(line)
                            break
                        if max_bytes is not None and lines and size + len(line) > max_bytes:
                            break  # not taken: the cursor stays before it
                        pos += len(line)
                        size += len(line)
                        lines.append(line[:-1])
                if lines:
                    return lines, (seg, pos)
                if seg != self._writer_seg:
                    # Consumed (or only a torn tail): move past it.
                    self._write_cursor((seg + 1, 0))
                    self._seg_path(seg).unlink(missing_ok=True)
                    continue
                return [], (seg, pos)
            return [], (seg0, offset)

    def commit(self, cursor: Cursor, count: int) -> None:
        with self._lock:
            self._write_cursor(cursor)
            self.pending = max(0, self.pending - count)
            if self.pending == 0:
                self._remove_consumed()

    def _remove_consumed(self) -> None:
        """Every record is consumed: the segments (the one being appended to too) are
        removed rather than kept until the next outage, holding records the sink has
        (logged prompts among them) on disk; the next append starts a new segment."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with contextlib.suppress(OSError):
                writer.close()
            self._writer_seg = -1
            self._writer_size = 0
            self._dirty = False
        for seg in self._segments():
            if seg <= self._at[0]:
                with contextlib.suppress(OSError):
                    self._seg_path(seg).unlink()

    def _write_cursor(self, cursor: Cursor) -> None:
        self._at = cursor
        tmp = self.dir / "cursor.tmp"
        try:
            private_files.write_file(tmp, f"{cursor[0]} {cursor[1]}".encode())
            os.replace(tmp, self.dir / "cursor")
        except OSError as exc:
            if not self._cursor_failing:
                log.warning("spool %s: the cursor file cannot be written: %s", self.dir, exc)
            self._cursor_failing = True
            return
        self._cursor_failing = False

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._sync_locked()
                self._writer.close()
                self._writer = None
            with contextlib.suppress(OSError):
                self._lock_file.close()
