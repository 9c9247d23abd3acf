"""A transcription's form written again from the proxy's reading of it, for the backend.

The proxy routes a transcription, and checks a key's model list, by the model it reads
in the form (`multipart_form`). Forwarding the client's bytes would leave the backend
to read them again, and any way the two readers part (a boundary, a header's spelling,
a part's encoding, the query) would run a model the proxy never checked. So, as the
JSON routes forward the document as read, this route forwards the form as read: every
value of every field in order, the query's values in a query of their own, and each
file part with its filename, its Content-Type and its content (as received, or as
decoded from quoted-printable), in plain form-data that any reader reads one way.

Ollama (TranscriptionMiddleware) takes `FormValue` of model, response_format, language
and prompt (the first of a field's values, the query's before the form's) and the first
`file` part: keeping each field's values in order, and the query's values in the
query, keeps what it reads, and keeps the form's parts and value bytes within the
limits of Go's ReadForm that the client's form kept.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from aiohttp import web

from proxy.multipart_form import Form

# Printable ASCII but for the two characters a quoted-string escapes: such a parameter
# goes quoted; any other (a control character, non-ASCII) as RFC 2231's UTF-8.
_PLAIN: Final = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


@dataclass(frozen=True, slots=True)
class Written:
    """The form as the backend gets it: the body, its Content-Type (with the boundary),
    and the request's query ("" for none)."""

    body: bytes
    content_type: str
    query: str


# The form the proxy wrote for a request, for the relay to send in place of the
# client's body, Content-Type and query.
WRITTEN: Final = web.RequestKey("autoroute_form_written", Written)


def written(form: Form) -> Written:
    """`form` written as multipart/form-data, with a boundary none of its parts holds."""
    while True:
        boundary = b"autoroute-" + secrets.token_hex(16).encode()
        pieces, parts = _pieces(form, b"--" + boundary)
        body = b"".join(pieces)
        # A part holding the delimiter would end early: a new boundary then.
        if body.count(b"--" + boundary) == parts + 1:
            content_type = "multipart/form-data; boundary=" + boundary.decode()
            return Written(body, content_type, _query(form.query))


def _pieces(form: Form, dash: bytes) -> tuple[list[bytes | memoryview], int]:
    """The body's pieces (file contents as they are, not copied) and its parts' count."""
    pieces: list[bytes | memoryview] = []
    parts = 0
    for name, values in form.values.items():
        disposition = b"form-data; " + _parameter("name", name)
        for value in values[len(form.query.get(name, ())) :]:
            pieces += (dash, b"\r\nContent-Disposition: ", disposition, b"\r\n\r\n")
            pieces += (value.encode(), b"\r\n")
            parts += 1
    for name, files in form.files.items():
        for file in files:
            disposition = b"form-data; %b; %b" % (
                _parameter("name", name),
                _parameter("filename", file.filename),
            )
            pieces += (dash, b"\r\nContent-Disposition: ", disposition, b"\r\n")
            if file.content_type:
                pieces += (b"Content-Type: ", file.content_type.encode(), b"\r\n")
            pieces += (b"\r\n", file.content, b"\r\n")
            parts += 1
    pieces += (dash, b"--\r\n")
    return pieces, parts


def _parameter(key: str, value: str) -> bytes:
    """`key=value` in a Content-Disposition, as Go's ParseMediaType reads it back."""
    if all(c in _PLAIN for c in value):
        return f'{key}="{value}"'.encode()
    return f"{key}*=utf-8''{quote(value, safe='')}".encode()


def _query(query: dict[str, list[str]]) -> str:
    """The query's values, each escaped as Go's url.QueryUnescape reads it back."""
    return "&".join(
        f"{quote(name, safe='')}={quote(value, safe='')}"
        for name, values in query.items()
        for value in values
    )
