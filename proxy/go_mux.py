"""The redirect Go's net/http ServeMux answers a path that is not clean with, before
any of Ollama's handlers runs.

Ollama's server (`server/routes.go`, `Serve`) registers its gin engine on Go's
`DefaultServeMux` (`http.Handle("/", h)`, an `http.Server` without a Handler), and
the mux looks at every request first (`src/net/http/server.go`,
`ServeMux.findHandler`, Go 1.22 on; Ollama builds with 1.26):

* CONNECT is not canonicalized: gin gets its path as sent. An authority
  (`CONNECT host:port`) has no path: the mux's trailing-slash redirect sends it to
  `/`.
* Any other method: the mux cleans the *escaped* path (`URL.EscapedPath`, the path as
  the client sent it when that is a valid encoding, else the decoded path escaped
  again) as `path.Clean` does, a trailing slash kept (`cleanPath`). When that
  differs, no handler runs: the answer is a redirect (`MUX_REDIRECT`) to
  `url.URL{Path: cleaned, RawQuery: query}.String()`, the cleaned path escaped once
  more (a `%` in it becomes `%25`) and the query as sent (`?` only when there is
  one).
* `http.Redirect` writes it: `Location` (bytes beyond ASCII as `%xx`, lower-case
  hex), `Content-Type: text/html; charset=utf-8` for GET and HEAD, for GET the body
  `<a href="…">Temporary Redirect</a>.` (the status's text) and two line breaks,
  for any other method no body (Go's server then says `Content-Length: 0`, except
  to a HEAD).

A percent-encoded dot or slash (`/api/%2e/pull`, `/api%2Fpull`) is no dot segment or
slash of the escaped path, so no redirect: gin then matches the decoded path
(`URL.Path`, gin's `UseRawPath` off), so `/api%2Fpull` is Ollama's `/api/pull` and
`/api/%2e/pull` no route of its (gin does not clean). The proxy's route table reads
the same decoded path (aiohttp's `request.path`) and relays the path as sent, so its
access check and the backend agree on which route a request is.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from aiohttp import hdrs, web

from proxy.header_values import utf8

_HTML: Final = "text/html; charset=utf-8"
# The status of the mux's redirects: 307 since Go 1.26 (which Ollama's go.mod names),
# so that a client keeps its method and body; 301 from Go 1.22 to 1.25.
MUX_REDIRECT: Final = 307
# What Go's globalOptionsHandler reads of an `OPTIONS *` body (`4<<10`).
OPTIONS_BODY_LIMIT: Final = 4 << 10
_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# What Go's `escape(s, encodePath)` leaves as it is (`shouldEscape`): every other
# byte becomes `%XX`.
_PATH_SAFE: Final = frozenset(_ALNUM + b"-_.~$&+,/:;=@")
# What `validEncoded(s, encodePath)` accepts in an escaped path.
_VALID_ESCAPED: Final = _PATH_SAFE | frozenset(b"!'()*[]%")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# A target in absolute form: its scheme and authority (`ParseRequestURI`'s `getScheme`,
# then the authority up to the path or the query).
_SCHEME_AUTHORITY = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?]*")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
# net/http's htmlReplacer, for the redirect's body.
_HTML_ESCAPES: Final = {
    ord("&"): b"&amp;",
    ord("<"): b"&lt;",
    ord(">"): b"&gt;",
    ord('"'): b"&#34;",
    ord("'"): b"&#39;",
}


def escape_path(path: bytes) -> bytes:
    """Go's `escape(path, encodePath)`."""
    if all(c in _PATH_SAFE for c in path):
        return path
    return b"".join(bytes((c,)) if c in _PATH_SAFE else b"%%%02X" % c for c in path)


def _escaped_path(raw: bytes) -> bytes | None:
    """Go's `URL.EscapedPath` of a request whose path is `raw` as sent; None where Go's
    `ParseRequestURI` refuses the target (a `%` not followed by two hex digits)."""
    if _BAD_ESCAPE.search(raw):
        return None
    if all(c in _VALID_ESCAPED for c in raw):
        return raw
    return escape_path(_PERCENT.sub(lambda m: bytes((int(m[1], 16),)), raw))


def clean_path(path: bytes) -> bytes:
    """Go's `cleanPath`: rooted, then `path.Clean` (no empty, `.` or `..` segment;
    `..` at the root stays there), the trailing slash kept."""
    segments: list[bytes] = []
    for segment in path.split(b"/"):
        if segment == b"..":
            if segments:
                segments.pop()
        elif segment and segment != b".":
            segments.append(segment)
    cleaned = b"/" + b"/".join(segments)
    if path.endswith(b"/") and cleaned != b"/":
        cleaned += b"/"
    return cleaned


def parses(target: bytes) -> bool:
    """Whether Go's `ParseRequestURI` reads an origin- or absolute-form `target`: not
    a `%` without two hex digits after it in the path, nor an IPv6 host without its
    `]` (its server answers those with a plain 400)."""
    absolute = _SCHEME_AUTHORITY.match(target)
    if absolute is not None:
        authority = target[target.index(b"//") + 2 : absolute.end()]
        if authority.rpartition(b"@")[2].startswith(b"[") and b"]" not in authority:
            return False
        target = target[absolute.end() :]
    return _BAD_ESCAPE.search(target.partition(b"?")[0]) is None


def path_of(target: bytes) -> bytes | None:
    """The path (and query) of a request target as Go's `ParseRequestURI` reads it: an
    origin-form target itself, an absolute-form one after its scheme and authority;
    None for any other (`*`, an authority)."""
    absolute = _SCHEME_AUTHORITY.match(target)
    if absolute is not None:
        return target[absolute.end() :]
    return target if target.startswith(b"/") else None


class Unparsable(Exception):
    """Go's `ParseRequestURI` refuses the request target: its server answers a plain
    400 before the mux (`bad_target`)."""


def location(method: str, target: bytes) -> bytes | None:
    """The `Location` (as `http.Redirect` takes it, before its escape of bytes beyond
    ASCII) of the mux's redirect of a `method` request for `target` (its request
    target as sent); None when the mux lets the request through to gin. Raises
    `Unparsable` for a target Go refuses before the mux."""
    if method == "CONNECT":
        if b"%" in target and not parses(target):
            raise Unparsable
        if b"/" not in target:
            # An authority (`host:port`): Go's URL has the empty path, which the
            # pattern `/` does not match exactly, and does with a slash added, so
            # `matchOrRedirect` redirects to cleanPath("") + "/", which
            # http.Redirect cleans to `/`.
            return b"/"
        return None  # not canonicalized
    if not target.startswith(b"/"):
        # The absolute form: the Location names no host. `*` has no path (Go's
        # server answers it before the mux).
        path = path_of(target)
        if path is None:
            return None
        target = path
    raw, _, query = target.partition(b"?")
    # `find`, not `in`, on every request: bytes `in` raises and clears a TypeError
    # inside CPython first (`relay.ClientLeg.on_body`).
    if raw and raw.find(b"//") < 0 and raw.find(b"/.") < 0 and raw.find(b"%") < 0:
        return None  # clean as sent: the common case, decided without copying
    escaped = _escaped_path(raw)
    if escaped is None:
        raise Unparsable
    cleaned = clean_path(escaped)
    if cleaned == escaped:
        return None
    # An empty query (a target ending in its only `?`) leaves no `?` in the Location.
    return escape_path(cleaned) + (b"?" + query if query else b"")


def redirect(request: web.BaseRequest) -> web.Response | None:
    """The mux's answer to `request` when its path is not clean, as Go writes it, or
    Go's answer to a target with no path at all (`asterisk`); None for a request the
    mux lets through."""
    raw = request.raw_path
    if raw == "*":
        return asterisk(request.method, request.content_length)
    try:
        target = location(request.method, utf8(raw))
    except Unparsable:
        return bad_target()
    return None if target is None else redirect_response(request.method, MUX_REDIRECT, target)


def bad_target() -> web.Response:
    """Go's answer to a request target its `ParseRequestURI` refuses, written before any
    handler: `400 Bad Request` as plain text, the connection closed."""
    response = web.Response(
        status=400,
        body=b"400 Bad Request",
        headers={hdrs.CONTENT_TYPE: "text/plain; charset=utf-8"},
    )
    response.force_close()
    return response


def asterisk(method: str, length: int | None = None) -> web.Response:
    """Go's answer to a request for `*` (src/net/http/server.go), before the mux or
    any handler of Ollama's: `OPTIONS *` is its server's `globalOptionsHandler` (200,
    `Content-Length: 0`), any other method the mux's 400 (no body, the connection
    closed). The options handler reads at most `OPTIONS_BODY_LIMIT` bytes of a body
    through a MaxBytesReader, which closes the connection after the answer
    (`Connection: close`) when the body is longer: by its `length` here (a chunked
    body is not measured)."""
    response = web.Response(status=200 if method == "OPTIONS" else 400)
    if response.status == 400 or (length is not None and length > OPTIONS_BODY_LIMIT):
        response.force_close()
    return response


def redirect_response(method: str, status: int, target: bytes) -> web.Response:
    """Go's `http.Redirect` to `target` (an escaped, clean path and any query) with
    `status`, answering a `method` request."""
    # Go's hexEscapeNonASCII: the path is escaped already, so only a query has any.
    header = "".join(chr(c) if c < 0x80 else f"%{c:x}" for c in target)
    response = web.Response(status=status, headers={hdrs.LOCATION: header})
    if method in ("GET", "HEAD"):
        response.headers[hdrs.CONTENT_TYPE] = _HTML
    if method == "GET":
        href = b"".join(_HTML_ESCAPES.get(c, bytes((c,))) for c in target)
        phrase = HTTPStatus(status).phrase.encode()
        response.body = b'<a href="' + href + b'">' + phrase + b"</a>.\n\n"
    return response
