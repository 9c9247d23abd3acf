"""The reads of a client connection that carry a request head, followed from one read to
the next for the connection (proxy/connection.py): where the head ends, though its
blank line may be cut between two reads, and the head without its `Proxy-Connection`
fields, which the parser then never reads.

Go's net/http reads `Connection` alone (`proxy.go_keep_alive`); llhttp, aiohttp's
parser, reads `Proxy-Connection` as `Connection` too, and once it has read `close`
there it refuses every later byte of the connection ("Data after `Connection:
close`"), so the connection could not be kept as Go keeps it. The field is hop-by-hop
and read by nobody behind the parser (the proxy drops it, Ollama ignores it), so the
parser gets the head without it. A field line cut by the end of a read, which may yet
turn out to be one, waits for the next read, up to `MAX_HELD` bytes (beyond that it
goes as it came: no client sends such a line, and the head's limits then refuse it).
Only the head is read here: what follows its end in a read goes as it came.
"""

from __future__ import annotations

import re
from typing import Final

_END: Final = b"\r\n\r\n"
_NAME: Final = b"proxy-connection:"
# A whole `Proxy-Connection` field line, with the line end before it (which stays).
_FIELD: Final = re.compile(rb"\nproxy-connection:[^\n]*\n", re.IGNORECASE)
MAX_HELD: Final = 4096


class HeadReads:
    """One connection's head reads. `feed` each read that a head starts or goes on in;
    `reset` at any other read."""

    __slots__ = ("_held", "_tail")

    def __init__(self) -> None:
        self._tail = b""  # the last bytes (up to 3) of the head given to the parser
        self._held = b""  # the start of a field line, not given to the parser yet

    @property
    def continued(self) -> bool:
        """The head being read began in an earlier read."""
        return bool(self._tail or self._held)

    def reset(self) -> None:
        self._tail = self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """The bytes of this read to give the parser now, and where the head ends in
        them (0: it goes on past them)."""
        if not (self._tail or self._held):
            # A head that starts in this read, and nearly always ends there too without
            # the field (every spelling of its name has `y-` or `Y-`): as it came.
            end = data.find(_END) + 4
            if end >= 4 and data.find(b"y-", 0, end) < 0 and data.find(b"Y-", 0, end) < 0:
                return data, end
        return self._feed(data)

    def _feed(self, data: bytes) -> tuple[bytes, int]:
        tail, held = self._tail, self._held
        view = tail + held + data if tail or held else data
        skip = len(tail)  # bytes of `view` the parser has already
        found = view.find(_END)
        if found >= 0:
            end = found + 4
            self.reset()
            if not _has_field(view, max(skip - 1, 0), end):
                # The usual head: given on as it came, without a copy.
                return view[skip:], end - skip
            head = _without_field(view[:end], skip)
            return head[skip:] + view[end:], len(head) - skip
        view = _without_field(view, skip)
        line = view.rfind(b"\n") + 1  # where the last line starts (0: the request line)
        self._held = b""
        if 0 < line and skip <= line < len(view) and len(view) - line <= MAX_HELD:
            start = view[line:].lower()
            if start.startswith(_NAME) or _NAME.startswith(start):
                self._held = view[line:]
                view = view[:line]
        out = view[skip:]
        self._tail = (tail + out)[-3:]
        return out, 0


def _has_field(view: bytes, start: int, end: int) -> bool:
    """Whether `view[start:end]` has a whole `Proxy-Connection` line (`feed`: two
    searches for `y-` and `Y-` decide before the pattern's)."""
    if view.find(b"y-", start, end) < 0 and view.find(b"Y-", start, end) < 0:
        return False
    return _FIELD.search(view, start, end) is not None


def _without_field(head: bytes, skip: int) -> bytes:
    """`head` without the `Proxy-Connection` lines that start after its first `skip`
    bytes (which the parser has already)."""
    start = max(skip - 1, 0)
    if not _has_field(head, start, len(head)):
        return head
    return head[:start] + _FIELD.sub(b"\n", head[start:])
