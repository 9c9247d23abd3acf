"""Request bodies Ollama decompresses: `Content-Encoding: zstd` on its OpenAI- and
Anthropic-compatible inference routes (the Codex CLI sends its /v1/responses bodies so).

Ollama's cloudPassthroughMiddleware (server/cloud_proxy.go, on each POST route in
`ZSTD_PATHS`) reads such a body through a zstd decoder whose window is at most 8 MiB
(`zstd.WithDecoderMaxMemory(8<<20)`), drops the header and reads the JSON inside, so
`model` there is what routes. Go's net/http decodes no body anywhere else, and neither
does the proxy.

The proxy decodes it where Ollama does, before anything reads the body, and forwards the
canonical JSON of what it decoded (as for any model-routed body), without the
`Content-Encoding` header (`DECODED` tells the relay). What it decodes is bounded by the
same body limit as a plain body (`limits.max_body_bytes`, 413 above it), and by
Ollama's own cap, which reads the decoded body through a 20 MiB `http.MaxBytesReader`
(`maxDecompressedBodySize`; 400 "http: request body too large" above it), both counted
on the decompressed bytes as they come, so a small bomb is refused before it grows. A
body that is no zstd, or one cut short inside a frame, gets Ollama's 400 `{"error":
"..."}` (its gin.H shape on these routes too). What decoding costs depends on what is
inside, not on the body's size (a few hundred bytes may decode to the 20 MiB cap, and
frames and blocks are walked at a Python call each), so every zstd body is decoded in
the slow readings' thread (`go_json.slow_off_loop`), never on the event loop.
"""

from __future__ import annotations

from typing import Final

import zstandard
from aiohttp import hdrs, web

from proxy import go_json
from proxy.errors import carrying
from proxy.protocol import JSON, go_dumps

ZSTD_PATHS: Final = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
# What the body's decoder may hold: Ollama's WithDecoderMaxMemory caps its window so.
MAX_WINDOW_BYTES = 8 << 20
# What Ollama reads of the decoded body (`maxDecompressedBodySize`): a byte more is its 400.
MAX_DECODED_BYTES = 20 << 20
TOO_LARGE = "http: request body too large"  # Go's http.MaxBytesError
_CHUNK = 1 << 20
# Go's io.ErrUnexpectedEOF: the body ends inside a frame.
CUT_SHORT = "unexpected EOF"
_FRAME_MAGIC = 0xFD2FB528
_SKIPPABLE_MAGIC = 0x184D2A50  # the low 4 bits are the frame's own
# Set on a request whose body the proxy decoded: its Content-Encoding is not forwarded.
DECODED: Final = web.RequestKey("autoroute_body_decoded", bool)


class Undecodable(Exception):
    """A body that says zstd and is not: Ollama's 400."""

    def response(self) -> web.Response:
        response = web.Response(
            status=400, body=go_dumps({"error": str(self)}), headers={"Content-Type": JSON}
        )
        return carrying(response, str(self))


def _zstd(request: web.Request) -> bool:
    """Whether Ollama decodes the request's body as zstd."""
    # Go's c.GetHeader: the first value, compared exactly.
    return request.headers.get(hdrs.CONTENT_ENCODING) == "zstd" and request.path in ZSTD_PATHS


async def decoded_off_loop(request: web.Request, body: bytes, limit: int) -> bytes:
    """`decoded`, for a request's handler: a zstd body in the slow readings' thread
    whatever its size (counted as the most it may decode to), any other as sent."""
    if not _zstd(request):
        return body
    return await go_json.slow_off_loop(MAX_DECODED_BYTES, decoded, request, body, limit)


def decoded(request: web.Request, body: bytes, limit: int) -> bytes:
    """`body` as Ollama reads it on this route: decompressed where it decodes zstd,
    else as sent. Raises `Undecodable` (no zstd, cut short, or past Ollama's cap), or
    aiohttp's 413 over `limit` (0: none)."""
    if not _zstd(request):
        return body
    out = bytearray()
    decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    try:
        with decoder.stream_reader(body, read_across_frames=True) as reader:
            while chunk := reader.read(_CHUNK):
                out += chunk
                if limit and len(out) > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(out))
                if len(out) > MAX_DECODED_BYTES:
                    raise Undecodable(TOO_LARGE)
    except zstandard.ZstdError as exc:
        raise Undecodable(_header_refusal(body) or str(exc)) from None
    if not _whole_frames(body):
        raise Undecodable(_header_refusal(body) or CUT_SHORT)
    request[DECODED] = True
    return bytes(out)


# klauspost/compress's words (zstd/zstd.go, frameDec.reset in zstd/framedec.go) for a
# frame header its decoder refuses; Ollama's 400 says them.
MAGIC_MISMATCH = "invalid input: magic number mismatch"
RESERVED_BIT = "reserved bit set on frame header"
WINDOW_EXCEEDED = "window size exceeded"
SIZE_EXCEEDED = "decompressed size exceeds configured limit"
UNKNOWN_DICTIONARY = "unknown dictionary"  # Decoder.setDict: Ollama registers none


def _header_refusal(body: bytes) -> str | None:
    """What Ollama's decoder says of the first frame header it refuses in `body` (the
    frames walked as `_whole_frames` walks them), or None when every header it reaches
    is one it reads: a body python-zstandard refused for what the decoder finds inside a
    frame keeps python-zstandard's words. frameDec.reset: a frame start with 1 to 3
    bytes left, or a header cut short, is an unexpected EOF; a start that is no frame
    (nor skippable frame) a magic number mismatch; then the reserved bit, a window past
    8 MiB (WithDecoderMaxMemory caps the window too), a single segment's content size
    past 8 MiB, and (Decoder.setDict, once the header is read) a dictionary id other
    than 0, which names no dictionary Ollama has. Headers only: a body whose first
    frame's blocks are corrupt and whose second frame's header is refused too gets the
    header's words, where Go stops at the blocks (with words of its own, which
    python-zstandard's do not match anyway)."""
    size = len(body)
    at = 0
    while at < size:
        if size - at < 4:
            return CUT_SHORT
        magic = int.from_bytes(body[at : at + 4], "little")
        if magic & ~0xF == _SKIPPABLE_MAGIC:
            if size - at < 8:
                return CUT_SHORT
            at += 8 + int.from_bytes(body[at + 4 : at + 8], "little")
            continue
        if magic != _FRAME_MAGIC:
            return MAGIC_MISMATCH
        if size - at < 5:
            return CUT_SHORT
        descriptor = body[at + 4]
        if descriptor & 0x08:
            return RESERVED_BIT
        single = bool(descriptor & 0x20)
        window = 0
        at += 5
        if not single:
            if size - at < 1:
                return CUT_SHORT
            base = 1 << (10 + (body[at] >> 3))
            window = base + (base // 8) * (body[at] & 7)
            at += 1
        # The dictionary id, then the content size: read before the window is checked.
        id_bytes = _dictionary_id_bytes(descriptor)
        dictionary = int.from_bytes(body[at : at + id_bytes], "little")
        at += id_bytes
        content_size_bytes = _content_size_bytes(descriptor)
        if size - at < content_size_bytes:
            return CUT_SHORT
        content_size = int.from_bytes(body[at : at + content_size_bytes], "little")
        if content_size_bytes == 2:
            content_size += 256
        if window > MAX_WINDOW_BYTES:
            return WINDOW_EXCEEDED
        if single and content_size > MAX_WINDOW_BYTES:
            return SIZE_EXCEEDED
        if dictionary:
            return UNKNOWN_DICTIONARY
        end = _frame_end(body, at + content_size_bytes, descriptor)
        if end is None:
            return None  # cut inside the frame's blocks: the caller's EOF
        at = end
    return None


def _dictionary_id_bytes(descriptor: int) -> int:
    """The length of a frame header's dictionary id, by its descriptor (RFC 8878 3.1.1.1.1)."""
    return (0, 1, 2, 4)[descriptor & 3]


def _content_size_bytes(descriptor: int) -> int:
    """The length of a frame header's content size, by its descriptor: a single-segment
    frame has one even where the flag says none (RFC 8878 3.1.1.1.1)."""
    return (0, 2, 4, 8)[descriptor >> 6] or (1 if descriptor & 0x20 else 0)


def _whole_frames(body: bytes) -> bool:
    """Whether `body` ends where a frame ends (RFC 8878's layout, walked without
    decoding). The decoder above reads a body cut inside a frame up to the cut and
    stops without an error; Ollama's fails with an unexpected EOF. Only a body the
    decoder read whole comes here: what follows its last frame is no frame start."""
    size = len(body)
    at = 0
    while at < size:
        if size - at < 8:
            return False
        magic = int.from_bytes(body[at : at + 4], "little")
        if magic & ~0xF == _SKIPPABLE_MAGIC:
            at += 8 + int.from_bytes(body[at + 4 : at + 8], "little")
            continue
        if magic != _FRAME_MAGIC:
            return True
        descriptor = body[at + 4]
        single = descriptor & 0x20
        header_rest = _dictionary_id_bytes(descriptor) + _content_size_bytes(descriptor)
        at += 5 + (0 if single else 1) + header_rest
        end = _frame_end(body, at, descriptor)
        if end is None:
            return False
        at = end
    return at == size


def _frame_end(body: bytes, at: int, descriptor: int) -> int | None:
    """Where a frame whose blocks start at `at` ends, its checksum (which the frame
    header `descriptor` says it has) included; None when `body` ends inside a block
    header."""
    size = len(body)
    last = False
    while not last:
        if size - at < 3:
            return None
        header = int.from_bytes(body[at : at + 3], "little")
        last = bool(header & 1)
        at += 3 + (1 if (header >> 1) & 3 == 1 else header >> 3)
    return at + (4 if descriptor & 4 else 0)
