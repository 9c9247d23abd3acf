"""Request targets with bytes beyond ASCII, which Go's net/http reads and llhttp refuses.

Go's `url.ParseRequestURI` refuses a target for control bytes alone
(`stringContainsCTLByte`: below 0x20, and 0x7f); a byte from 0x80 on (UTF-8 sent as it
is, not percent-encoded) is part of the path or query as any other, and `URL.Path` is
decoded alike from `é` and `%C3%A9`, which gin routes by. llhttp, aiohttp's parser,
refuses such a byte in a target ("Invalid char in url"). The connection's parser
(`proxy.aiohttp_internals.one_message_per_feed`) then reads the request again from its
line (`failed_line`, in the bytes given since the end of the request before it:
`request_end`) with each such byte of the target percent-encoded (`encoded`), which
llhttp reads, and the request keeps the target as sent (its `raw_path`: what the proxy
relays, and what Go's mux reads, `proxy.go_mux`). A control byte in the target is then
still refused, as Go refuses it.
"""

from __future__ import annotations

from typing import Final

_HEAD_END: Final = b"\r\n\r\n"
_LINE_ENDS: Final = b"\r\n"
_LINE_END_BYTES: Final = (b"\r", b"\n")
# A target in absolute form up to its path: `scheme://authority`.
_AUTHORITY: Final = b"://"


def failed_line(read: bytes, quoted: bytes) -> tuple[int, int, int] | None:
    """Where the request line llhttp refused lies in `read` (the bytes given to the
    parser from the end of the last request it read on): the line's start, and its
    target's start and end (the end of `read` when the target goes on past it). None
    when that line does not end with `quoted`, the part of it the parser's error
    quotes (the refused line is then not that one: the refusal stays), or has nothing
    beyond ASCII."""
    at = _line_start(read)
    stop = read.find(b"\n", at)
    line = read[at:] if stop < 0 else read[at:stop].removesuffix(b"\r")
    method_end = line.find(b" ")
    if not quoted or method_end < 0 or not line.endswith(quoted) or line.isascii():
        return None
    start = at + method_end + 1
    end = read.find(b" ", start, at + len(line))
    return at, start, at + len(line) if end < 0 else end


def request_end(read: bytes, length: int) -> int | None:
    """Where the request that `read` starts ends (past the end of `read` while its body
    goes on), with a body of `length` bytes after its head; None when the head's end
    is not in `read`."""
    end = read.find(_HEAD_END, 0 if read[:1] not in _LINE_END_BYTES else _line_start(read))
    return None if end < 0 else end + len(_HEAD_END) + length


def _line_start(read: bytes) -> int:
    """Where the request line starts in `read`: llhttp skips line ends before one."""
    at = 0
    while at < len(read) and read[at] in _LINE_ENDS:
        at += 1
    return at


def encoded(target: bytes) -> bytes | None:
    """`target` with each byte from 0x80 on in its path and query as `%XX` (as Go's
    `escape` writes it), which Go reads as it reads the bytes; None for an absolute
    form without a path, or whose scheme or authority has such a byte (Go reads that
    as a host name, which this does not write)."""
    path = 0
    if not target.startswith(b"/"):
        scheme = target.find(_AUTHORITY)
        path = target.find(b"/", scheme + len(_AUTHORITY)) if scheme > 0 else -1
        if path < 0 or not target[:path].isascii():
            return None
    return target[:path] + percent_encoded(target[path:])


def percent_encoded(part: bytes) -> bytes:
    """`part` of a target's path or query with each byte from 0x80 on as `%XX`."""
    if part.isascii():
        return part
    return b"".join(b"%%%02X" % c if c >= 0x80 else bytes((c,)) for c in part)


def target_part(data: bytes) -> tuple[bytes, bool]:
    """The start of `data` that goes on with a request target (up to the space after
    it, or a line end), and whether the target ends in `data`."""
    ends = [i for i in (data.find(b" "), data.find(b"\r"), data.find(b"\n")) if i >= 0]
    end = min(ends, default=len(data))
    return data[:end], bool(ends)
