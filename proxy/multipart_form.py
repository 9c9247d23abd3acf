"""Ollama's `/v1/audio/transcriptions` form, read as Go's net/http reads it, from bytes.

Ollama's TranscriptionMiddleware (middleware/openai.go) calls
`c.Request.ParseMultipartForm(25 << 20)` and then `FormValue("model")`; the proxy routes
by that model, so it reads the form the same way:

- `ParseMultipartForm` first parses the URL query (`url.ParseQuery`); its error, if
  any, is returned only after the multipart body parsed without one.
- The body needs `Content-Type: multipart/form-data` with a `boundary` parameter
  (`mime.ParseMediaType`), else "request Content-Type isn't multipart/form-data" or "no
  multipart boundary param in Content-Type".
- `multipart.Reader.ReadForm` walks the parts (`mime/multipart/multipart.go`): a
  preamble before the first delimiter line, `\\n` line ends when the first delimiter
  line ends so, part headers as `net/textproto` reads them, each body up to a
  `\\r\\n--boundary` followed by `--`, space, tab, CR, LF or the end. A part whose
  Content-Disposition is not `form-data` with a `name` is skipped; one with a
  `filename` is a file, not a value. At most 1000 parts, and 35 MB of values; a part's
  header within what is left of those 35 MB, and of at most 10000 lines less those of
  the files before it.
  A part sent `Content-Transfer-Encoding: quoted-printable` is decoded as Go's
  `quotedprintable.Reader` decodes it, its errors included.
- `FormValue` is the first of `r.Form[key]`: the query's values come before the form's,
  so `?model=` (empty) wins over a form field and leaves no model.

The 25 MB is Go's memory budget (bigger files go to disk), not a limit on the body:
the proxy's own body limit bounds what is read. The whole body is in memory here, so
"more input" is never awaited: the end of `body` is the end of the request.

`read_form` raises `FormError` with Go's error text; `transcription` gives the model
and what Ollama refuses of the file (`file_refusal`), or raises `Refused` with the
message Ollama answers with 400.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Final

from proxy.go_decoding import go_string
from proxy.go_json import slow_off_loop
from proxy.header_values import utf8

# Ollama's messages (middleware/openai.go, TranscriptionMiddleware).
PARSE_FAILED: Final = "failed to parse multipart form: "
MODEL_REQUIRED: Final = "model is required"
NO_FILE: Final = "file is required: http: no such file"
EMPTY_FILE: Final = "audio file is empty"

# net/http's ErrNotMultipart and ErrMissingBoundary.
NOT_MULTIPART: Final = "request Content-Type isn't multipart/form-data"
MISSING_BOUNDARY: Final = "no multipart boundary param in Content-Type"
TOO_LARGE: Final = "multipart: message too large"  # multipart.ErrMessageTooLarge
UNEXPECTED_EOF: Final = "unexpected EOF"  # io.ErrUnexpectedEOF
EOF: Final = "EOF"

# multipart.Reader's bufio buffer: a line between parts longer than this fails.
_PEEK_BUFFER: Final = 4096
_MAX_PARTS: Final = 1000  # ReadForm's default (GODEBUG multipartmaxparts)
# Header lines a part may have, less those of the files before it (multipartmaxheaders).
_MAX_HEADERS: Final = 10000
# textproto quotes at most this much of a header's first line that starts with a space.
_INITIAL_LINE_LIMIT: Final = 80
_MAX_MEMORY: Final = 25 << 20  # TranscriptionMiddleware's ParseMultipartForm(25 << 20)
_MAP_ENTRY: Final = 200  # ReadForm's count for a map entry's overhead
_FILE_HEADER: Final = 100  # and for a FileHeader
_HEADER_MAP: Final = 400  # textproto's count for a MIMEHeader


class FormError(Exception):
    """The form does not parse as Go's `ParseMultipartForm`: the error's text."""


class Refused(Exception):
    """Ollama's 400 for this form: the message."""


@dataclass(frozen=True, slots=True)
class FilePart:
    """A file part as `r.MultipartForm.File` keeps it: its content (a view into the body,
    or its quoted-printable decoding: an upload is not copied to find the model beside
    it), its `filename` parameter and its Content-Type."""

    content: memoryview
    filename: str
    content_type: str


@dataclass(slots=True)
class Form:
    """`r.Form` (query values first, then the parts' values), the query's own values,
    and `r.MultipartForm.File`, by field name."""

    values: dict[str, list[str]] = field(default_factory=dict)
    query: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[FilePart]] = field(default_factory=dict)

    def value(self, name: str) -> str:
        """`FormValue`: the first value, "" for none."""
        values = self.values.get(name)
        return values[0] if values else ""


@dataclass(frozen=True, slots=True)
class Transcription:
    """A transcription request as Ollama reads it: the model it runs, what it refuses
    of the audio (`file_refusal`), and the whole form."""

    model: str
    no_audio: str | None
    form: Form


def file_refusal(form: Form) -> str | None:
    """What TranscriptionMiddleware refuses of the form's `file` once it has a model,
    before any handler looks at that model (FormFile: the first file part): none, or
    one without a byte. None for a file it reads on."""
    files = form.files.get("file")
    if not files:
        return NO_FILE
    return EMPTY_FILE if not files[0].content else None


def transcription(content_type: str | None, raw_query: str, body: bytes) -> Transcription:
    """The model Ollama runs for this transcription request, what it refuses of the
    request's audio and the form, or `Refused` with the message of its 400: the form
    does not parse, or it names no model."""
    try:
        form = read_form(content_type, raw_query, body)
    except FormError as exc:
        raise Refused(PARSE_FAILED + str(exc)) from None
    model = form.value("model")
    if not model:
        raise Refused(MODEL_REQUIRED)
    return Transcription(model, file_refusal(form), form)


def transcription_model(content_type: str | None, raw_query: str, body: bytes) -> str:
    """The model of `transcription`."""
    return transcription(content_type, raw_query, body).model


async def transcription_off_loop(
    content_type: str | None, raw_query: str, body: bytes
) -> Transcription:
    """`transcription`, for a request's handler: a large body is read in the slow
    readings' thread (a quoted-printable part decodes byte by byte in Python, most of a
    second for a few megabytes), so that a client can hold neither the event loop nor
    the readings of other clients' ordinary bodies with one."""
    return await slow_off_loop(len(body), transcription, content_type, raw_query, body)


def read_form(content_type: str | None, raw_query: str, body: bytes) -> Form:
    """`ParseMultipartForm` on a request with these header, query and body."""
    form = Form()
    query_error = _parse_query(raw_query, form.query)
    form.values = {name: list(values) for name, values in form.query.items()}
    if not content_type:
        raise FormError(NOT_MULTIPART)
    try:
        media, params = parse_media_type(content_type)
    except ValueError:
        raise FormError(NOT_MULTIPART) from None
    if media != "multipart/form-data":
        raise FormError(NOT_MULTIPART)
    boundary = params.get("boundary")
    if boundary is None:
        raise FormError(MISSING_BOUNDARY)
    _Parts(utf8(boundary), body).read_into(form)
    if query_error is not None:
        raise FormError(query_error)
    return form


def _text(raw: bytes) -> str:
    """A Go string (bytes) as text: as Ollama's JSON would write it (`go_string`), so
    every message and name made of it is valid UTF-8."""
    return go_string(raw)


# url.ParseQuery ---------------------------------------------------------------------


def _parse_query(query: str, into: dict[str, list[str]]) -> str | None:
    """Go's `parseQuery` into `into`; the error it returns, if any. A pair that fails
    is skipped; the first escape error is kept, a semicolon's always replaces it."""
    error: str | None = None
    rest = utf8(query)
    while rest:
        pair, _, rest = rest.partition(b"&")
        if b";" in pair:
            error = "invalid semicolon separator in query"
            continue
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition(b"=")
        try:
            key, value = _unescape(raw_key), _unescape(raw_value)
        except ValueError as exc:
            error = error or str(exc)
            continue
        into.setdefault(_text(key), []).append(_text(value))
    return error


_HEX = b"0123456789abcdefABCDEF"


def _unescape(raw: bytes) -> bytes:
    """`url.QueryUnescape`: `+` is a space, `%XX` a byte; a bad escape is Go's
    EscapeError."""
    if b"%" not in raw and b"+" not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            if i + 2 >= len(raw) or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise ValueError("invalid URL escape " + go_quote(raw[i : i + 3]))
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B else c)
        i += 1
    return bytes(out)


# mime.ParseMediaType ----------------------------------------------------------------

_TSPECIALS: Final = frozenset('()<>@,;:\\"/[]?=')


def _is_token_char(c: str) -> bool:
    return " " < c < "\x7f" and c not in _TSPECIALS


def _consume_token(v: str) -> tuple[str, str]:
    for i, c in enumerate(v):
        if not _is_token_char(c):
            return v[:i], v[i:]
    return v, ""


def _consume_value(v: str) -> tuple[str, str]:
    """A token or a quoted-string (unescaped); ("", v) when there is neither. A
    backslash escapes a tspecial only; before anything else it is itself (Go keeps the
    unescaped backslashes of MSIE's `filename="C:\\dev\\a.wav"` so)."""
    if not v:
        return "", v
    if v[0] != '"':
        return _consume_token(v)
    out: list[str] = []
    i = 1
    while i < len(v):
        c = v[i]
        if c == '"':
            return "".join(out), v[i + 1 :]
        if c == "\\" and i + 1 < len(v) and v[i + 1] in _TSPECIALS:
            out.append(v[i + 1])
            i += 2
            continue
        if c in "\r\n":
            return "", v
        out.append(c)
        i += 1
    return "", v


def _lstrip_space(v: str) -> str:
    """strings.TrimLeftFunc(v, unicode.IsSpace)."""
    i = 0
    while i < len(v) and _go_space(v[i]):
        i += 1
    return v[i:]


def go_trim_space(v: str) -> str:
    """strings.TrimSpace(v): unicode.IsSpace, which, unlike str.strip's, leaves U+001C
    to U+001F."""
    start, end = 0, len(v)
    while start < end and _go_space(v[start]):
        start += 1
    while end > start and _go_space(v[end - 1]):
        end -= 1
    return v[start:end]


def _go_space(c: str) -> bool:
    """unicode.IsSpace."""
    return c in "\t\n\v\f\r \x85\xa0" or (c > "\xff" and c.isspace())


def _consume_param(v: str) -> tuple[str, str, str]:
    rest = _lstrip_space(v)
    if not rest.startswith(";"):
        return "", "", v
    rest = _lstrip_space(rest[1:])
    name, rest = _consume_token(rest)
    name = name.lower()
    if not name:
        return "", "", v
    rest = _lstrip_space(rest)
    if not rest.startswith("="):
        return "", "", v
    rest = _lstrip_space(rest[1:])
    value, after = _consume_value(rest)
    if not value and after == rest:  # neither a token nor a quoted-string ("" is one)
        return "", "", v
    return name, value, after


def parse_media_type(v: str) -> tuple[str, dict[str, str]]:
    """Go's `mime.ParseMediaType`: the lower-cased type and its parameters (RFC 2231
    continuations joined); ValueError where Go returns an error."""
    semicolon = v.find(";")
    head = v if semicolon < 0 else v[:semicolon]
    media = go_trim_space(head.lower())
    kind, rest = _consume_token(media)
    if not kind:
        raise ValueError("mime: no media type")
    if rest:
        if not rest.startswith("/"):
            raise ValueError("mime: expected slash after first token")
        sub, rest = _consume_token(rest[1:])
        if not sub:
            raise ValueError("mime: expected token after slash")
        if rest:
            raise ValueError("mime: unexpected content after media subtype")
    params: dict[str, str] = {}
    continuation: dict[str, dict[str, str]] = {}
    v = "" if semicolon < 0 else v[semicolon:]
    while v:
        v = _lstrip_space(v)
        if not v:
            break
        name, value, rest = _consume_param(v)
        if not name:
            if go_trim_space(rest) == ";":
                break  # a trailing semicolon is ignored
            raise ValueError("mime: invalid media parameter")
        star = name.find("*")
        into = params if star < 0 else continuation.setdefault(name[:star], {})
        if into.get(name, value) != value:
            raise ValueError("mime: duplicate parameter name")  # the same one again is not
        into[name] = value
        v = rest
    for base, pieces in continuation.items():
        single = pieces.get(base + "*")
        if single is not None:
            decoded = _decode_2231(single)
            if decoded is not None:
                params[base] = decoded
            continue
        joined: list[str] = []
        n = 0
        while True:
            simple = f"{base}*{n}"
            if simple in pieces:
                joined.append(pieces[simple])
            elif simple + "*" in pieces:
                encoded = pieces[simple + "*"]
                if n == 0:
                    joined.append(_decode_2231(encoded) or "")
                else:
                    joined.append(_percent_unescape(encoded) or "")
            else:
                break
            n += 1
        if n:
            params[base] = "".join(joined)
    return media, params


def _decode_2231(v: str) -> str | None:
    """`charset'language'percent-encoded`; None where Go's decode2231Enc fails."""
    parts = v.split("'", 2)
    if len(parts) != 3 or parts[0].lower() not in ("us-ascii", "utf-8"):
        return None
    return _percent_unescape(parts[2])


def _percent_unescape(v: str) -> str | None:
    """mime's percentHexUnescape; None where it fails."""
    raw = utf8(v)
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] != 0x25:
            out.append(raw[i])
            i += 1
            continue
        if i + 2 >= len(raw) or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
            return None
        out.append(int(raw[i + 1 : i + 3], 16))
        i += 3
    return _text(bytes(out))


# mime/multipart ---------------------------------------------------------------------


class _Parts:
    """`multipart.Reader` over a body held whole, for `ReadForm`."""

    def __init__(self, boundary: bytes, body: bytes) -> None:
        self.body = body
        self.pos = 0
        self.parts_read = 0
        self.nl = b"\r\n"
        self.dash = b"--" + boundary
        self.dash_dash = self.dash + b"--"
        self.empty_boundary = not boundary

    @property
    def nl_dash(self) -> bytes:
        return self.nl + self.dash

    def read_into(self, form: Form) -> None:
        """`ReadForm(25 << 20)`: every part's value or file into `form`."""
        parts = 0
        # ReadForm's memory budget: maxMemory plus 10 MB for the values (not the files
        # over maxMemory, which go to disk).
        file_budget = _MAX_MEMORY
        budget = _MAX_MEMORY + (10 << 20)
        max_headers = _MAX_HEADERS
        while self._next_part():
            headers = self._headers(budget, max_headers)
            if parts >= _MAX_PARTS:
                raise FormError(TOO_LARGE)
            parts += 1
            try:
                disposition, params = parse_media_type(_header(headers, "content-disposition"))
            except ValueError:
                disposition, params = "", {}
            name = params.get("name", "") if disposition == "form-data" else ""
            if not name:
                # Skipped: Go's Part.Close reads past it and ignores a failure there.
                try:
                    self._content()
                except FormError:
                    self.pos = len(self.body)
                continue
            content = self._content()
            if _header(headers, "content-transfer-encoding").lower() == "quoted-printable":
                # NextPart decodes it and drops the field from the part's header.
                headers = [(k, v) for k, v in headers if k != b"content-transfer-encoding"]
                content = memoryview(_quoted_printable(bytes(content)))
            budget -= len(utf8(name)) + _MAP_ENTRY
            if not params.get("filename", ""):
                budget -= len(content)
                if budget < 0:
                    raise FormError(TOO_LARGE)
                form.values.setdefault(name, []).append(_text(bytes(content)))
                continue
            budget -= _header_size(headers) + _MAP_ENTRY + _FILE_HEADER
            if budget < 0:
                raise FormError(TOO_LARGE)
            max_headers -= len(headers)  # a file keeps its header
            if len(content) <= file_budget:  # kept in memory, else on disk
                file_budget -= len(content)
                budget -= len(content)
            file = FilePart(content, params["filename"], _header(headers, "content-type"))
            form.files.setdefault(name, []).append(file)

    def _read_slice(self) -> tuple[bytes, bool]:
        """bufio's `ReadSlice('\\n')`: (line, at end of input); FormError when the line
        does not fit the reader's buffer."""
        end = self.body.find(b"\n", self.pos, self.pos + _PEEK_BUFFER)
        if end >= 0:
            line = self.body[self.pos : end + 1]
            self.pos = end + 1
            return line, False
        if len(self.body) - self.pos >= _PEEK_BUFFER:
            raise FormError("multipart: NextPart: bufio: buffer full")
        line = self.body[self.pos :]
        self.pos = len(self.body)
        return line, True

    def _next_part(self) -> bool:
        """`nextPart` up to the headers: whether a part starts (False: the final
        boundary)."""
        if self.empty_boundary:
            raise FormError("multipart: boundary is empty")
        expect_new_part = False
        while True:
            line, at_end = self._read_slice()
            if at_end and self._is_final(line):
                return False
            if at_end:
                raise FormError("multipart: NextPart: " + EOF)
            if self._is_delimiter(line):
                self.parts_read += 1
                return True
            if self._is_final(line):
                return False
            if expect_new_part:
                raise FormError("multipart: expecting a new Part; got line " + go_quote(line))
            if self.parts_read == 0:
                continue  # the preamble
            if line == self.nl:
                expect_new_part = True
                continue
            raise FormError("multipart: unexpected line in Next(): " + go_quote(line))

    def _is_final(self, line: bytes) -> bool:
        if not line.startswith(self.dash_dash):
            return False
        rest = line[len(self.dash_dash) :].lstrip(b" \t")
        return not rest or rest == self.nl

    def _is_delimiter(self, line: bytes) -> bool:
        if not line.startswith(self.dash):
            return False
        rest = line[len(self.dash) :].lstrip(b" \t")
        if self.parts_read == 0 and rest == b"\n":
            self.nl = b"\n"  # the first delimiter line sets the line ends, as Go does
        return rest == self.nl

    def _line(self) -> bytes | None:
        """bufio's `ReadLine`: a line without its `\\n` or `\\r\\n`; None at the end."""
        if self.pos >= len(self.body):
            return None
        end = self.body.find(b"\n", self.pos)
        if end < 0:
            line = self.body[self.pos :]
            self.pos = len(self.body)
            return line
        line = self.body[self.pos : end]
        self.pos = end + 1
        return line[:-1] if line.endswith(b"\r") else line

    def _headers(self, max_memory: int, max_headers: int) -> list[tuple[bytes, bytes]]:
        """textproto's `readMIMEHeader`: (key, value) in order. Too large past
        `max_headers` lines, or past `max_memory` for the lines and what Go counts of
        the header (400, and per key its length and 200, and the values)."""
        body, pos = self.body, self.pos
        if pos < len(body) and body[pos] in b" \t":
            first = self._line() or b""
            if len(first) > _INITIAL_LINE_LIMIT:
                raise FormError(TOO_LARGE)
            raise FormError("malformed MIME header initial line: " + _text(first))
        max_memory -= _HEADER_MAP
        headers: list[tuple[bytes, bytes]] = []
        keys: set[bytes] = set()
        while True:
            line = self._line()
            if line is None:
                raise FormError(EOF)
            if len(line) > max_memory:
                raise FormError(TOO_LARGE)
            if not line:
                return headers
            if b":" not in line:
                raise FormError("malformed MIME header: missing colon: " + go_quote(line))
            pieces = [_trim(line)]
            # readContinuedLineSlice's own count: the first line's length comes off
            # the limit and is counted again with what follows it.
            size = len(pieces[0])
            limit = max_memory - size
            while self.pos < len(body) and body[self.pos] in b" \t":
                while self.pos < len(body) and body[self.pos] in b" \t":
                    self.pos += 1
                size += 1
                if size >= limit:
                    raise FormError(TOO_LARGE)
                more = self._line()
                if more is None:
                    break
                # Go reads a continuation up to what is left and breaks the line off
                # there, where its buffered reads cut it, and reads on from that cut:
                # a line that long is refused whole here.
                if len(more) > limit - size:
                    raise FormError(TOO_LARGE)
                pieces.append(_trim(more))
                size += len(pieces[-1])
            kv = b" ".join(pieces)
            key, _, value = kv.partition(b":")
            # textproto takes a key with a space (before the colon) but does not
            # canonicalize it: Header.Get never finds it, nor does `_header` here.
            if not key or not all(_is_token_byte(c) or c == 0x20 for c in key):
                raise FormError("malformed MIME header line: " + _text(kv))
            if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
                raise FormError("malformed MIME header line: " + _text(kv))
            max_headers -= 1
            if max_headers < 0:
                raise FormError(TOO_LARGE)
            value = value.lstrip(b" \t")
            canonical = key if b" " in key else key.lower()
            if canonical not in keys:
                keys.add(canonical)
                max_memory -= len(key) + _MAP_ENTRY
            max_memory -= len(value)
            if max_memory < 0:
                raise FormError(TOO_LARGE)
            headers.append((key.lower(), value))

    def _content(self) -> memoryview:
        """A part's body, up to its closing delimiter (`scanUntilBoundary` with the
        whole rest of the body in view)."""
        body, start = self.body, self.pos
        dash, nl_dash = self.dash, self.nl_dash
        search = start
        if body.startswith(dash, start):
            match = self._match_after(start, dash)
            if match > 0:
                return memoryview(b"")  # empty, with no line end before the delimiter
            search = start + len(dash)
        elif len(body) - start <= len(dash) and dash.startswith(body[start:]):
            raise FormError(UNEXPECTED_EOF)  # the end, within what may be the delimiter
        while True:
            i = body.find(nl_dash, search)
            if i < 0:
                raise FormError(UNEXPECTED_EOF)
            if self._match_after(i, nl_dash) > 0:
                self.pos = i
                return memoryview(body)[start:i]
            search = i + len(nl_dash)

    def _match_after(self, at: int, prefix: bytes) -> int:
        """`matchAfterPrefix` at the end of input: +1 when `prefix` at `at` is the
        boundary (followed by `--`, space, tab, CR, LF or nothing), else -1."""
        body = self.body
        after = at + len(prefix)
        if after == len(body):
            return 1
        c = body[after]
        if c in b" \t\r\n":
            return 1
        if c == 0x2D and after + 1 < len(body) and body[after + 1] == 0x2D:
            return 1
        return -1


_TOKEN_BYTES: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token_byte(c: int) -> bool:
    return c in _TOKEN_BYTES


def _trim(line: bytes) -> bytes:
    return line.strip(b" \t")


def _header(headers: list[tuple[bytes, bytes]], name: str) -> str:
    """`Header.Get`: the first value, "" for none."""
    key = name.encode()
    return next((_text(v) for k, v in headers if k == key), "")


def _header_size(headers: list[tuple[bytes, bytes]]) -> int:
    """ReadForm's `mimeHeaderSize`: 400, and per key its length, 200 and its values."""
    size = _HEADER_MAP
    keys: set[bytes] = set()
    for key, value in headers:
        if key not in keys:
            keys.add(key)
            size += len(key) + _MAP_ENTRY
        size += len(value)
    return size


# mime/quotedprintable ---------------------------------------------------------------

_QP_BUFFER: Final = 4096  # the decoder's bufio.Reader


def _quoted_printable(content: bytes) -> bytes:
    """Go's `quotedprintable.Reader` over a whole part: `=XX` a byte (lower-case hex
    too), `=` at a line's end a soft break, trailing space before a line end dropped, a
    `=` not followed by two hex digits kept as it is, unless at a line's end; FormError
    with Go's text where it fails."""
    out = bytearray()
    pos = 0
    failure: str | None = None
    while True:
        if failure is not None:
            raise FormError(failure)
        if pos >= len(content):
            return bytes(out)
        # bufio's ReadSlice('\n') with the decoder's 4096-byte buffer.
        end = content.find(b"\n", pos, pos + _QP_BUFFER)
        if end >= 0:
            whole, at_eof = content[pos : end + 1], end + 1 == len(content)
            pos = end + 1
        elif len(content) - pos >= _QP_BUFFER:
            whole, at_eof = content[pos : pos + _QP_BUFFER], False
            pos += _QP_BUFFER
            failure = "bufio: buffer full"
        else:
            whole, at_eof = content[pos:], True
            pos = len(content)
        line = whole.rstrip(b"\n\r \t")
        if line.endswith(b"="):
            stripped = whole[len(line) :].lstrip(b" \t")
            line = line[:-1]
            ends_a_line = stripped.startswith((b"\n", b"\r\n"))
            if not ends_a_line and not (not stripped and line and at_eof and failure is None):
                failure = "quotedprintable: invalid bytes after =: " + go_quote(stripped)
        elif whole.endswith(b"\n"):
            line += b"\r\n" if whole.endswith(b"\r\n") else b"\n"
        i = 0
        while i < len(line):
            b = line[i]
            if b == 0x3D:  # =
                pair = line[i + 1 : i + 3]
                bad = next((c for c in pair if c not in _HEX), None)
                if len(pair) == 2 and bad is None:
                    out.append(int(pair, 16))
                    i += 3
                    continue
                if not (len(line) - i >= 2 and line[i + 1] not in b"\r\n"):
                    raise FormError(
                        UNEXPECTED_EOF
                        if len(pair) < 2 or bad is None
                        else f"quotedprintable: invalid hex byte 0x{bad:02x}"
                    )
            elif (b < 0x20 and b not in b"\t\r\n") or b == 0x7F:
                raise FormError(f"quotedprintable: invalid unescaped byte 0x{b:02x} in body")
            out.append(b)
            i += 1


# strconv.Quote ------------------------------------------------------------------------

_ESCAPES: Final = {
    0x07: "\\a",
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x0B: "\\v",
    0x5C: "\\\\",
    0x22: '\\"',
}


def go_quote(raw: bytes) -> str:
    """Go's `%q` of a byte string: printable runes as they are, invalid UTF-8 as
    `\\xNN`, control and other unprintable runes escaped."""
    out = ['"']
    text = raw.decode("utf-8", "surrogateescape")
    for c in text:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif c == " " or (c.isprintable() and unicodedata.category(c)[0] != "Z"):
            out.append(c)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
