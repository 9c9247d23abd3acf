"""HTTP/1.1 as the upstream leg speaks it, without I/O: request heads are built here,
and a `ResponseReader` is fed the bytes of one answer, in whatever pieces the network
delivers them, and returns what they mean as events: `Head`, body bytes, `End`.

The body is read, not decoded: its events are the bytes as they came, chunk framing
included, because the relay forwards them verbatim, but for a chunked body's trailer
section, which Ollama never sends: its fields are dropped and its end comes as CRLF.
The reader parses only what it must to know where the answer ends (the head, the chunk
sizes, the trailers), so that the connection can carry another request after it. What
it cannot read raises `ProtocolError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from proxy import header_values
from proxy.upstream_errors import ProtocolError

# An answer's head may echo the request's (Ollama echoes an allowed `Origin` in
# `Access-Control-Allow-Origin`): it is read up to twice the longest head Ollama's own
# server takes (Go's DefaultMaxHeaderBytes, 1 MiB, and its 4 KiB of slack), so that no
# client can make a healthy backend's answer unreadable. Go's Transport reads 10 MiB.
MAX_HEAD_BYTES = 2 << 20
# A chunk-size or trailer line, which no client's bytes make longer.
MAX_LINE_BYTES = 64 * 1024
# A trailer section, dropped as it comes: Go's transport refuses one longer than its
# read buffer (4 KiB), so no client of Ollama's reads a longer one.
MAX_TRAILER_BYTES = 64 * 1024

# How the body of an answer ends (_NONE: it has none); _HEAD while the head is read,
# _TRAILERS after a chunked body's last chunk, _DONE once the answer ended.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _HEAD, _TRAILERS, _DONE = range(7)
# A field name (RFC 9110, 5.1: a token).
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# What a field value may not carry to a client: a recipient replaces each with a space
# or refuses the message (RFC 9110, 5.5).
_CR_NUL = re.compile("[\r\x00]")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_MAX_CHUNK_SIZE_DIGITS = 16
# Chunk-size lines already read, and their sizes: a stream's chunks repeat a few sizes,
# so a line is parsed (and checked) once, then looked up. Bounded by count and length.
_SIZES: dict[bytes, int] = {}
_MAX_SIZES = 4096


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None  # the body's length where it frames the body, else None
    chunked: bool
    keep_alive: bool


@dataclass(slots=True)
class Head:
    """The final response head (interim 1xx heads are read and skipped)."""

    head: ResponseHead


@dataclass(slots=True)
class End:
    """The answer ended. `reusable`: the connection may carry another request (keep-alive,
    and nothing came after the end: stray bytes answer nothing that was asked)."""

    reusable: bool


# Body bytes, as they came (chunk framing included), are events of their own: a chunk
# costs no allocation beyond its bytes.
Event = Head | bytes | End


_FIELD = b": ".join


def request_head(
    method: bytes,
    target: bytes,
    host: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """A request head: the request line, `Host`, `headers` as given, then the body's
    framing (`Content-Length: length`, chunked, or none for a request without body)."""
    parts = [b"%b %b HTTP/1.1\r\nHost: %b\r\n" % (method, target, host)]
    # Joined by C calls alone, no Python step per field: a client's request may carry
    # thousands on to the backend.
    fields = b"\r\n".join(map(_FIELD, headers))
    if fields:
        parts += (fields, b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif length is not None:
        parts.append(b"Content-Length: %d\r\n\r\n" % length)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def interim(status: int) -> bool:
    """A 1xx head: informational, followed by the final head on the same connection."""
    return 100 <= status < 200


def bodiless(status: int) -> bool:
    """An answer with this status has no body, whatever its headers say."""
    return status in (204, 304) or interim(status)


def _quoted(raw: bytes, limit: int) -> str:
    """The first `limit` bytes a backend sent, quoted as text for an error: the error
    ends in a mid-stream error line and a log line, so it is valid UTF-8 (U+FFFD for
    what is not), without control characters (each a space) or the line's own CRLF."""
    shown = header_values.text(raw[:limit].decode("utf-8", "replace"), limit) or ""
    return f'"{shown.strip()}"'


def _digits(text: str) -> bool:
    """ASCII digits only: `str.isdigit` takes other digits (Latin-1's superscripts)
    that `int` refuses."""
    return text.isascii() and text.isdigit()


# Field names already found to be tokens: a backend sends the same few in every answer.
_NAMES: set[str] = set()
_MAX_NAMES = 256


def _field_name(name: str) -> bool:
    """Whether `name` is a token (RFC 9110, 5.1), kept in `_NAMES` once found one."""
    if not _FIELD_NAME.match(name):
        return False
    if len(_NAMES) < _MAX_NAMES:
        _NAMES.add(name)
    return True


def _parse_head(raw: bytes, method: str) -> tuple[ResponseHead, int]:
    # A bare LF ends a line as CRLF does (RFC 9112, 2.2; Go's transport reads it so):
    # one field's value hides no other field from the proxy. `raw` ends before the last
    # line's LF, so a CR may end it. One replace for every CRLF, not a step per line.
    text = raw.decode("latin-1").replace("\r\n", "\n").removesuffix("\r")
    # A CR or NUL left is in some value (looked for once per head, not per field).
    stray = "\r" in text or "\x00" in text
    lines = text.split("\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not _digits(code):
        shown = _quoted(lines[0].encode("latin-1"), 80)
        raise ProtocolError(f"malformed status line {shown}", "malformed status line")
    status = int(code)
    if status == 101:
        # The proxy never asks to switch protocols (it forwards no `Upgrade`).
        raise ProtocolError("backend switched protocols unasked")
    headers: list[tuple[str, str]] = []
    length: int | None = None
    codings: list[str] = []
    keep_alive = version == "HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # Whitespace before the colon is removed before a response goes on (RFC 9112,
        # 5.1); a name that is no token is no field.
        name = name.rstrip(" \t")
        if not sep or (name not in _NAMES and not _field_name(name)):
            shown = _quoted(line.encode("latin-1"), 80)
            if headers and line[:1] in (" ", "\t"):
                # A line that continues the one before (RFC 9112, 5.2): a proxy rejects
                # it with a 502 that says line folding came, or unfolds it; Ollama never
                # folds.
                raise ProtocolError(f"obsolete line folding {shown}")
            raise ProtocolError(f"malformed header line {shown}")
        value = value.strip(" \t")
        if stray:
            value = _CR_NUL.sub(" ", value)
        lname = name.lower()
        if lname == "content-length":
            if not _digits(value) or (length is not None and int(value) != length):
                shown = _quoted(value.encode("latin-1"), 40)
                raise ProtocolError(f"malformed Content-Length {shown}")
            length = int(value)
        elif lname == "transfer-encoding":
            codings.append(value)
        elif lname == "connection":
            keep_alive = value.lower() != "close" and (keep_alive or value.lower() == "keep-alive")
        headers.append((name, value))
    # Go's transport (transfer.go, parseTransferEncoding): an HTTP/1.0 answer's
    # Transfer-Encoding is ignored; a later one is one field, `chunked`, or unreadable.
    chunked = bool(codings) and version != "HTTP/1.0"
    if chunked and (len(codings) != 1 or codings[0].lower() != "chunked"):
        shown = _quoted(", ".join(codings).encode("latin-1"), 40)
        raise ProtocolError(f"unsupported Transfer-Encoding {shown}")
    if method == "HEAD" or bodiless(status):
        mode = _NONE
    elif chunked:
        # Chunked framing wins over a Content-Length (RFC 9112, 6.3), which then says
        # nothing of the body and is not passed on; a message with both may have been
        # smuggled, so its connection is not reused.
        mode = _CHUNKED
        if length is not None:
            keep_alive = False
            length = None
    elif length is not None:
        mode = _LENGTH if length else _NONE
    else:
        mode = _UNTIL_CLOSE
        keep_alive = False
    head = ResponseHead(status, reason, headers, length, chunked, keep_alive)
    return head, mode


class ResponseReader:
    """Reads one answer to a request made with `method`."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.head: ResponseHead | None = None
        self._buf = bytearray()
        self._mode = _HEAD
        self._left = 0  # body bytes left (Content-Length), or of the current chunk + CRLF
        self._line = b""  # a chunk-size or trailer line cut by the end of a read
        self._dropped = 0  # the trailer section's bytes read so far

    @property
    def started(self) -> bool:
        """Any byte of the answer has arrived."""
        return self.head is not None or bool(self._buf)

    @property
    def ended(self) -> bool:
        return self._mode == _DONE

    def at_chunk_boundary(self) -> bool:
        """Between two chunks of a chunked body, before the last (empty) one: where one
        more chunk fits."""
        return self._mode == _CHUNKED and self._left == 0 and not self._line

    def feed(self, data: bytes) -> list[Event]:
        """What `data`, the next bytes from the backend, completes."""
        mode = self._mode
        if mode == _CHUNKED:
            # A streamed answer's next chunks: what nearly every read is, kept short.
            end = self._scan_chunks(data)
            return [data] if end < 0 else self._last_chunk(data, end, [])
        if mode == _LENGTH or mode == _UNTIL_CLOSE:
            return self._body(data, [])
        if mode == _HEAD:
            return self._read_head(data)
        if mode == _TRAILERS:
            return self._trailers(data, 0, b"", [])
        return []  # after the end: the caller decides what stray bytes mean

    def feed_eof(self) -> End | None:
        """The backend closed the connection: the end of an answer framed by the close,
        or None when the answer was cut short (or had ended before)."""
        if self._mode == _UNTIL_CLOSE:
            self._mode = _DONE
            return End(reusable=False)
        return None

    def _read_head(self, data: bytes) -> list[Event]:
        buf = self._buf
        # The head's end is looked for in the new bytes (and the two before them), not
        # from the start again: a long head comes in many pieces.
        start = max(len(buf) - 2, 0)
        buf += data
        while True:
            # The head ends at its first empty line, and a bare LF ends a line as CRLF
            # does (RFC 9112, 2.2), as Go's transport reads it: at the first LF followed
            # by CRLF (as in every CRLF CRLF) or by LF, whichever comes first. The
            # second search stops where the first found an end: both are per piece of
            # head, none per piece of body.
            end = buf.find(b"\n\r\n", start)
            bare = buf.find(b"\n\n", start, end + 1 if end >= 0 else len(buf))
            if bare >= 0:
                end, after = bare, bare + 2
            elif end >= 0:
                after = end + 3
            else:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                return []
            # The head's lines without the last one's LF (`_parse_head` drops a CR).
            head, mode = _parse_head(bytes(buf[:end]), self.method)
            del buf[:after]
            start = 0
            if not interim(head.status):
                break
        self.head = head
        rest = bytes(buf)
        buf.clear()
        events: list[Event] = [Head(head)]
        if mode == _NONE:
            # A bodiless answer: any byte after its head is a stray one.
            self._mode = _DONE
            events.append(End(reusable=head.keep_alive and not rest))
            return events
        self._mode = mode
        if mode == _LENGTH:
            self._left = head.content_length or 0
        return self._body(rest, events) if rest else events

    def _body(self, data: bytes, events: list[Event]) -> list[Event]:
        mode = self._mode
        end = -1  # where the body ended in `data`, once it did
        if mode == _CHUNKED:
            end = self._scan_chunks(data)
            if end >= 0:
                return self._last_chunk(data, end, events)
        elif mode == _LENGTH:
            if len(data) >= self._left:
                end = self._left
            self._left -= len(data)
        if end < 0:
            events.append(data)
            return events
        return self._ended(data, end, events)

    def _ended(self, data: bytes, end: int, events: list[Event]) -> list[Event]:
        """The body ended at `end` in `data`: its last bytes, then `End`."""
        stray = end < len(data)
        if end:
            events.append(data[:end] if stray else data)
        self._mode = _DONE
        head = self.head
        events.append(End(reusable=not stray and head is not None and head.keep_alive))
        return events

    def _last_chunk(self, data: bytes, end: int, events: list[Event]) -> list[Event]:
        """The last chunk's line ended at `end` in `data`: the trailer section follows."""
        if data.startswith(b"\r\n", end):
            return self._ended(data, end + 2, events)  # none, as Ollama ends every answer
        return self._trailers(data, end, data if end == len(data) else data[:end], events)

    def _trailers(self, data: bytes, pos: int, kept: bytes, events: list[Event]) -> list[Event]:
        """Read the trailer section on from `pos` in `data`, after `kept` (the body's
        bytes in `data` before it). Its fields go to no client: a client may refuse a
        whole answer for trailers it cannot read, and Ollama's clients read none. Its
        end, an empty line (or one of whitespace), goes on as CRLF."""
        start = pos
        while True:
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                pos = len(data)
                break
            line = data[pos:newline]
            pos = newline + 1
            if self._line:
                line = self._line + line
                self._line = b""
            if not line.strip():
                self._mode = _DONE
                break
        self._dropped += pos - start
        if self._dropped > MAX_TRAILER_BYTES:
            raise ProtocolError("chunk trailers too long")
        if self._mode != _DONE:
            self._mode = _TRAILERS
            if kept:
                events.append(kept)
            return events
        events.append(kept + b"\r\n")
        head = self.head
        stray = pos < len(data)
        events.append(End(reusable=not stray and head is not None and head.keep_alive))
        return events

    def _scan_chunks(self, data: bytes) -> int:
        """Follow the chunk framing through `data`: where the last chunk's line ended in
        it, or -1 when the body goes on past it."""
        end = len(data)
        if not self._left and not self._line:
            # A read that is one whole chunk, as nearly every read of a stream is: a
            # size line read before (`_SIZES`), then exactly its data and CRLF. What the
            # scan below would conclude, without stepping through it.
            newline = data.find(b"\n")
            known = _SIZES.get(data[:newline], 0) if newline > 0 else 0
            if known and known + 2 == end - newline - 1:
                return -1
        pos = 0
        left = self._left  # a local while scanning: read once per piece, stored at the end
        try:
            while pos < end:
                if left:
                    if left >= end - pos:
                        left -= end - pos
                        return -1
                    pos += left
                    left = 0
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._line += data[pos:]
                    if len(self._line) > MAX_LINE_BYTES:
                        raise ProtocolError("chunk size line too long")
                    return -1
                line = data[pos:newline]
                pos = newline + 1
                if self._line:
                    line = self._line + line
                    self._line = b""
                size = _SIZES.get(line)
                if size is None:
                    size = _chunk_size(line)
                    if len(_SIZES) < _MAX_SIZES and len(line) <= _MAX_CHUNK_SIZE_DIGITS:
                        _SIZES[line] = size
                if size == 0:
                    return pos
                left = size + 2
            return -1
        finally:
            self._left = left


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > _MAX_CHUNK_SIZE_DIGITS or digits.lstrip(_HEX_DIGITS):
        raise ProtocolError(f"malformed chunk size {_quoted(line, 40)}")
    return int(digits, 16)


class Dechunker:
    """A chunked body's data without its framing, as its pieces arrive (split
    anywhere): for a client that cannot read chunks. The framing was checked by the
    `ResponseReader` that read the same bytes."""

    __slots__ = ("_crlf", "_ended", "_left", "_line")

    def __init__(self) -> None:
        self._ended = False  # the last chunk came: trailers are not the client's
        self._left = 0  # data bytes left in the current chunk
        self._crlf = 0  # bytes left of the line end after a chunk's data
        self._line = b""  # a chunk-size line cut by the end of a piece

    def feed(self, piece: bytes) -> bytes:
        out = bytearray()
        pos, end = 0, len(piece)
        while pos < end and not self._ended:
            if self._left:
                take = min(self._left, end - pos)
                out += piece[pos : pos + take]
                pos += take
                self._left -= take
                if not self._left:
                    self._crlf = 2
            elif self._crlf:
                take = min(self._crlf, end - pos)
                pos += take
                self._crlf -= take
            else:
                newline = piece.find(b"\n", pos)
                if newline < 0:
                    self._line += piece[pos:]
                    break
                line, self._line = self._line + piece[pos:newline], b""
                pos = newline + 1
                self._left = _chunk_size(line)
                self._ended = not self._left
        return bytes(out)


def dechunk(raw: bytes) -> bytes:
    """A chunked body (as a `ResponseReader` found it whole) without its framing."""
    return Dechunker().feed(raw)
