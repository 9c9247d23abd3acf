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
by the end of a read waits for its end. After the last chunk's line it is done: the
trailers and what follows are llhttp's alone. Lines already canonical, as every
client's are, go as they came, without a copy.
"""

from __future__ import annotations

from typing import Final

# Go's connection buffer (bufio's default size): a size line longer, CRLF included, is
# ErrLineTooLong.
_MAX_LINE: Final = 4096
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Go tracks "excess" overhead: each line and the CRLF after its data count, and each
# chunk is allowed 16 bytes plus twice its data, in int64 arithmetic.
_ALLOWED_EXCESS: Final = 16 * 1024
_INT64: Final = 1 << 64
# A line llhttp refuses at its first byte ("Invalid character in chunk size").
REFUSED_LINE: Final = b"z\r\n"
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

    __slots__ = ("_crlf", "_excess", "_left", "_line", "done", "refusal")

    def __init__(self) -> None:
        self._left = 0  # data bytes left in the current chunk
        self._crlf = 0  # bytes left of the CRLF after a chunk's data
        self._line = b""  # a size line cut by the end of a read
        self._excess = 0
        # Go's error for the size line refused, once one is.
        self.refusal: str | None = None
        # Past the last chunk's line, a refused line, or framing llhttp refuses itself:
        # nothing more to do.
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """What llhttp is to read for `data`, the next bytes of the connection."""
        if self.done:
            return data
        out: list[bytes] = []
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
                self.done = True
                break
            self._left, self._crlf = size, 2
        if not out:
            return data
        out.append(data[start:])
        return b"".join(out)

    def _refuse(self, out: list[bytes], data: bytes, start: int, pos: int, error: str) -> None:
        """The line at `pos` is refused with Go's `error`: llhttp gets what came before
        it and then a line it refuses; nothing after it matters."""
        out += (data[start:pos], REFUSED_LINE)
        self._line = b""
        self.refusal = error
        self.done = True
