"""The chunk-size lines of a chunked request body read as Go's net/http reads them, in
front of llhttp, which reads the body's framing for aiohttp.

Go's chunked reader (src/net/http/internal/chunked.go, `readChunkLine`, `beginChunk`,
`parseHexUint`) takes a size line that ends in CRLF with no other CR, at most 4096
bytes with it (its connection buffer); drops the spaces and tabs before the CRLF,
then everything from the first `;` (an extension, whatever its bytes); reads at most 16
hex digits; and refuses a body whose lines outweigh its data (`excess`). llhttp's
strict grammar refuses a space or tab after the size and any extension that is not a
token (`5 `, `5;a b`), which Go reads, and reads 17 digits or more with leading zeros,
which Go refuses.

So `ChunkLines` follows the framing of one body from its first byte, and gives llhttp
each size line as the size alone (`5\\r\\n`) where Go reads it, or a line llhttp
refuses at its first byte (`z\\r\\n`) where Go refuses it, `refusal` then holding Go's
error for the handler's read (`aiohttp_internals.fail_open_body`). The data and the
CRLF after each chunk go as they came (llhttp checks that CRLF as Go does); a line cut
by the end of a read waits for its end. After the last chunk's line comes the trailer
section, which Go takes with any fields (llhttp refuses Content-Length and
Transfer-Encoding there), and which llhttp then gets as an empty one; after that it is
done, and what follows is llhttp's alone. Lines already canonical, as every client's
are, go as they came, without a copy.
"""

from __future__ import annotations

import re
from typing import Final

# Go's connection buffer (bufio's default size): a size line longer, CRLF included, is
# ErrLineTooLong.
_MAX_LINE: Final = 4096
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Go tracks "excess" overhead: each line and the CRLF after its data count, and each
# chunk is allowed 16 bytes plus twice its data, in int64 arithmetic.
_ALLOWED_EXCESS: Final = 16 * 1024
_INT64: Final = 1 << 64
# A line llhttp refuses at its first byte ("Invalid character in chunk size"), or
# in a trailer section at its end (a field without a colon).
REFUSED_LINE: Final = b"z\r\n"
# A trailer field as Go's textproto reads one: a token, a colon, and a value of
# visible characters, spaces, tabs and bytes beyond ASCII.
_TRAILER_FIELD: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")
_LONG_TRAILER: Final = "http: suspiciously long trailer after chunked body"
# Lines read before that are canonical, and their sizes (bounded by count): a client
# writes the same few sizes again and again.
_CANONICAL: dict[bytes, int] = {}
_MAX_CANONICAL: Final = 4096


def _int64(value: int) -> int:
    """`value` wrapped to a Go int64, as Go's arithmetic wraps."""
    value %= _INT64
    return value - _INT64 if value >= _INT64 >> 1 else value


def go_chunk_size(line: bytes) -> int | str:
    """The size Go's chunked reader reads from `line` (a size line up to and with its
    LF), or its error."""
    if len(line) > _MAX_LINE:
        return "header line too long"
    cr = line.find(b"\r")
    if cr < 0:
        return "chunked line ends with bare LF"
    if cr != len(line) - 2:
        return "invalid CR in chunked line"
    digits = line[:-2].rstrip(b" \t").partition(b";")[0]
    if not digits:
        return "empty hex number for chunk length"
    for index, byte in enumerate(digits):
        if byte not in _HEX:
            return "invalid byte in chunk length"
        if index == 16:
            return "http chunk length too large"
    return int(digits, 16)


class ChunkLines:
    """One chunked body's bytes, as they arrive, made what llhttp reads as Go would."""

    __slots__ = (
        "_crlf",
        "_excess",
        "_left",
        "_line",
        "_trailer",
        "done",
        "message_end",
        "refusal",
    )

    def __init__(self) -> None:
        self._left = 0  # data bytes left in the current chunk
        self._crlf = 0  # bytes left of the CRLF after a chunk's data
        self._line = b""  # a size line cut by the end of a read
        self._excess = 0
        # The trailer section read so far, once the last chunk's line has come.
        self._trailer: bytes | None = None
        # Go's error for the size line refused, once one is.
        self.refusal: str | None = None
        # Past the trailer section, a refused line, or framing llhttp refuses itself:
        # nothing more to do.
        self.done = False
        # Where the request ends in what the last `feed` returned, when it ends there.
        self.message_end: int | None = None

    def feed(self, data: bytes) -> bytes:
        """What llhttp is to read for `data`, the next bytes of the connection."""
        if self.done:
            return data
        out: list[bytes] = []
        if self._trailer is not None:
            return self._trailer_part(out, data, 0, 0)
        start = 0  # the first byte of `data` not yet in `out`
        pos = 0
        end = len(data)
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                pos += step
                self._left -= step
                continue
            if self._crlf:
                expected = b"\r\n"[2 - self._crlf]
                if data[pos] != expected:
                    # llhttp refuses this as Go does ("malformed chunked encoding").
                    self.done = True
                    break
                pos += 1
                self._crlf -= 1
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                held = self._line + data[pos:]
                if len(held) > _MAX_LINE:
                    self._refuse(out, data, start, pos, "header line too long")
                else:
                    out.append(data[start:pos])
                    self._line = held
                return b"".join(out)
            line = data[pos : newline + 1]
            if self._line:
                line = self._line + line
            known = _CANONICAL.get(line)
            canonical = line
            if known is None:
                read = go_chunk_size(line)
                if isinstance(read, str):
                    self._refuse(out, data, start, pos, read)
                    return b"".join(out)
                size = read
                canonical = b"%x\r\n" % size
                if line == canonical and len(_CANONICAL) < _MAX_CANONICAL:
                    _CANONICAL[line] = size
            else:
                size = known
            excess = max(_int64(self._excess + len(line) - 16 - 2 * size), 0)
            # Go's EOF at the last chunk comes before its check of the excess.
            if size and excess > _ALLOWED_EXCESS:
                self._refuse(out, data, start, pos, "chunked encoding contains too much non-data")
                return b"".join(out)
            self._excess = excess
            if self._line or line != canonical:
                # The held start of the line was kept back: the whole line goes now.
                out += (data[start:pos], canonical)
                start = newline + 1
            self._line = b""
            pos = newline + 1
            if size == 0:
                self._trailer = b""
                return self._trailer_part(out, data, start, pos)
            self._left, self._crlf = size, 2
        if not out:
            return data
        out.append(data[start:])
        return b"".join(out)

    def _trailer_part(self, out: list[bytes], data: bytes, start: int, pos: int) -> bytes:
        """`data[pos:]` goes on with the trailer section (`data[start:pos]` goes as it
        came): Go takes any fields there (src/net/http/transfer.go `readTrailer`, which
        checks no name), and ignores them (Ollama reads no trailer), where llhttp
        refuses some (Content-Length, Transfer-Encoding). A section of well-formed
        fields is given to llhttp as none; any other, as it came."""
        out.append(data[start:pos])
        held = (self._trailer or b"") + data[pos:]
        if held[:2] == b"\r\n":
            end = 2
        else:
            found = held.find(b"\r\n\r\n")
            if found < 0:
                if len(held) >= _MAX_LINE:
                    # Go looks for the section's end within its connection buffer.
                    self._refuse(out, data, pos, pos, _LONG_TRAILER)
                else:
                    self._trailer = held
                return b"".join(out)
            end = found + 4
            fields = held[: end - 4].split(b"\r\n")
            if all(_TRAILER_FIELD.fullmatch(field) for field in fields):
                held = held[end - 2 :]
                end = 2
        self._trailer = None
        self.done = True
        self.message_end = sum(map(len, out)) + end
        out.append(held)
        return b"".join(out)

    def _refuse(self, out: list[bytes], data: bytes, start: int, pos: int, error: str) -> None:
        """The line at `pos` is refused with Go's `error`: llhttp gets what came before
        it and then a line it refuses; nothing after it matters."""
        out += (data[start:pos], REFUSED_LINE)
        self._line = b""
        self.refusal = error
        self.done = True
