"""The cases at the HTTP level: framing (lengths, chunks, heads, pipelining, `Expect`)
and header injection; and the helpers every case is built with."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import orjson

from benchmarks.hostile_probe.wire import AUTO, INFERENCE, MODEL, Case, minimal, request

# `auto` is written with spaces after it (JSON allows them), as many as the served
# model's name may need: the emulator gets the same bytes with that name in its place,
# the body's length, so its framing, unchanged.
PAD = 40
AUTO_FIELD = b'"model":"auto"'


def dumps(doc: object) -> bytes:
    return orjson.dumps(doc).replace(AUTO_FIELD, AUTO_FIELD + b" " * PAD)


def body_of(path: str, model: str, **fields: object) -> bytes:
    doc = minimal(path, model)
    doc.update(fields)
    return dumps(doc)


def same(raw: bytes) -> Callable[[str], list[bytes | float]]:
    def direct(model: str) -> list[bytes | float]:
        named = b'"model":"%s"' % model.encode()
        padded = named + b" " * (len(AUTO_FIELD) + PAD - len(named))
        return [raw.replace(AUTO_FIELD + b" " * PAD, padded)]

    return direct


def simple(category: str, name: str, path: str, raw: bytes, **more: object) -> Case:
    return Case(category, name, path, [raw], same(raw), **more)  # type: ignore[arg-type]


def framing_cases() -> Iterator[Case]:
    cat = "framing"
    for path in ("/api/chat", "/v1/chat/completions", "/api/generate"):
        for model in (MODEL, AUTO):
            body = body_of(path, model)
            n = len(body)
            chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (n, body)
            head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".encode()

            def h(*lines: bytes, head: bytes = head) -> bytes:
                return head + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n"

            variants: list[tuple[str, bytes]] = [
                ("cl+te", h(b"Content-Length: %d" % n, b"Transfer-Encoding: chunked") + chunked),
                ("te+cl", h(b"Transfer-Encoding: chunked", b"Content-Length: 4") + chunked),
                ("two equal cl", h(b"Content-Length: %d" % n, b"Content-Length: %d" % n) + body),
                ("two cl", h(b"Content-Length: %d" % n, b"Content-Length: %d" % (n - 1)) + body),
                ("cl list", h(b"Content-Length: %d, %d" % (n, n)) + body),
                ("cl plus", h(b"Content-Length: +%d" % n) + body),
                ("cl negative", h(b"Content-Length: -1") + body),
                ("cl hex", h(b"Content-Length: 0x%x" % n) + body),
                ("cl beyond int64", h(b"Content-Length: 99999999999999999999999") + body),
                ("cl space", h(b"Content-Length : %d" % n) + body),
                ("te chunked,identity", h(b"Transfer-Encoding: chunked, identity") + chunked),
                ("te gzip,chunked", h(b"Transfer-Encoding: gzip, chunked") + chunked),
                ("te identity", h(b"Transfer-Encoding: identity") + body),
                ("te Chunked", h(b"Transfer-Encoding: Chunked") + chunked),
                (
                    "te twice",
                    h(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + chunked,
                ),
                (
                    "te xchunked",
                    h(b"Transfer-Encoding: xchunked", b"Content-Length: %d" % n) + body,
                ),
                ("te vtab", h(b"Transfer-Encoding:\x0bchunked") + chunked),
                ("te folded", h(b"Transfer-Encoding:", b" chunked") + chunked),
                ("cl folded", h(b"Content-Length:", b" %d" % n) + body),
                ("obs-fold other", h(b"Content-Length: %d" % n, b"X-A: b", b" c") + body),
                ("chunk size zz", h(b"Transfer-Encoding: chunked") + b"zz\r\n" + body),
                ("chunk size -1", h(b"Transfer-Encoding: chunked") + b"-1\r\n" + body),
                ("chunk size 0x", h(b"Transfer-Encoding: chunked") + b"0x%x\r\n" % n + body),
                ("chunk size huge", h(b"Transfer-Encoding: chunked") + b"f" * 20 + b"\r\nab"),
                ("chunk size 2^63", h(b"Transfer-Encoding: chunked") + b"8000000000000000\r\nx"),
                ("chunk size 2^64-1", h(b"Transfer-Encoding: chunked") + b"f" * 16 + b"\r\nx"),
                (
                    "chunk ext",
                    h(b"Transfer-Encoding: chunked")
                    + b'%x;a=b;c="d"\r\n%b\r\n0\r\n\r\n' % (n, body),
                ),
                (
                    "chunk ext space",
                    h(b"Transfer-Encoding: chunked") + b"%x ;a\r\n%b\r\n0\r\n\r\n" % (n, body),
                ),
                (
                    "chunk ext cr",
                    h(b"Transfer-Encoding: chunked") + b"%x;a\rb\r\n%b\r\n0\r\n\r\n" % (n, body),
                ),
                (
                    "chunk ext long",
                    h(b"Transfer-Encoding: chunked")
                    + b"%x;%b\r\n%b\r\n0\r\n\r\n" % (n, b"a" * 70000, body),
                ),
                (
                    "chunk data long",
                    h(b"Transfer-Encoding: chunked") + b"%x\r\n%bXX\r\n0\r\n\r\n" % (n, body),
                ),
                (
                    "chunk no crlf",
                    h(b"Transfer-Encoding: chunked") + b"%x\r\n%b0\r\n\r\n" % (n, body),
                ),
                ("chunk bare lf", h(b"Transfer-Encoding: chunked") + b"%x\n%b\n0\n\n" % (n, body)),
                (
                    "chunk many 1b",
                    h(b"Transfer-Encoding: chunked")
                    + b"".join(b"1\r\n%c\r\n" % c for c in body)
                    + b"0\r\n\r\n",
                ),
                (
                    "trailer smuggle",
                    h(b"Transfer-Encoding: chunked")
                    + b"%x\r\n%b\r\n0\r\nX-Injected: 1\r\nContent-Length: 5\r\n\r\n" % (n, body),
                ),
                ("nul in header", h(b"Content-Length: %d" % n, b"X-A: a\x00b") + body),
                ("cr in header", h(b"Content-Length: %d" % n, b"X-A: a\rX-Injected: 1") + body),
                ("lf in header", h(b"Content-Length: %d" % n, b"X-A: a\nX-Injected: 1") + body),
                ("del in header", h(b"Content-Length: %d" % n, b"X-A: a\x7fb") + body),
                ("long header 8k", h(b"Content-Length: %d" % n, b"X-A: " + b"a" * 8000) + body),
                (
                    "long header 1m",
                    h(b"Content-Length: %d" % n, b"X-A: " + b"a" * 1_100_000) + body,
                ),
                (
                    "many headers",
                    h(b"Content-Length: %d" % n, *[b"X-H%d: v" % i for i in range(2000)]) + body,
                ),
                ("space before colon", h(b"Content-Length: %d" % n, b"X-A : b") + body),
                ("no colon", h(b"Content-Length: %d" % n, b"X-A b") + body),
                ("empty name", h(b"Content-Length: %d" % n, b": b") + body),
                ("expect 100", h(b"Content-Length: %d" % n, b"Expect: 100-continue") + body),
                ("expect 100 mixed", h(b"Content-Length: %d" % n, b"Expect: 100-Continue") + body),
                ("expect list", h(b"Content-Length: %d" % n, b"Expect: 100-continue, x") + body),
                ("expect other", h(b"Content-Length: %d" % n, b"Expect: 200-ok") + body),
                (
                    "expect twice",
                    h(b"Content-Length: %d" % n, b"Expect: 100-continue", b"Expect: 100-continue")
                    + body,
                ),
                (
                    "expect chunked",
                    h(b"Transfer-Encoding: chunked", b"Expect: 100-continue") + chunked,
                ),
                ("expect cl0", h(b"Content-Length: 0", b"Expect: 100-continue")),
                (
                    "upgrade h2c",
                    h(
                        b"Content-Length: %d" % n,
                        b"Upgrade: h2c",
                        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                    )
                    + body,
                ),
                (
                    "upgrade websocket",
                    h(b"Content-Length: %d" % n, b"Upgrade: websocket", b"Connection: Upgrade")
                    + body,
                ),
            ]
            for name, raw in variants:
                # A chunk Go reads the size of: it waits for the chunk's bytes, which
                # never come (the proxy's body deadline answers, later).
                waits = name.startswith("chunk size 2^6")
                yield simple(
                    cat,
                    f"{name} {path} {model}",
                    path,
                    raw,
                    answered=not waits,
                    seconds=2.0 if waits else 10.0,
                )
            # Pipelined: a second request behind the first, in one write.
            second = request("POST", path, body)
            first = request("POST", path, body, close=False)
            yield Case(
                cat, f"pipelined {path} {model}", path, [first + second], _pipelined(first, second)
            )
            # Request smuggling: a Content-Length body that holds a whole request.
            hidden = request("GET", "/smuggled", close=False)
            yield simple(
                cat,
                f"cl hides request {path} {model}",
                path,
                h(b"Content-Length: %d" % (n + len(hidden))) + body + hidden,
            )
            yield simple(
                cat,
                f"te hides request {path} {model}",
                path,
                h(b"Transfer-Encoding: chunked", b"Content-Length: 4")
                + b"%x\r\n%b\r\n0\r\n\r\n" % (n, body)
                + hidden,
            )
            # HTTP/1.0, and versions that are not HTTP/1.x.
            for version in (b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x"):
                yield simple(
                    cat,
                    f"{version.decode()} {path} {model}",
                    path,
                    request("POST", path, body, version=version),
                )
            yield simple(
                cat,
                f"HTTP/1.0 chunked {path} {model}",
                path,
                request(
                    "POST",
                    path,
                    chunked,
                    [b"Transfer-Encoding: chunked"],
                    version=b"HTTP/1.0",
                    length=False,
                ),
            )
            # Early close mid-body.
            cut = request("POST", path, body)[: -n // 2]
            yield Case(
                cat,
                f"close mid-body {path} {model}",
                path,
                [cut],
                None,
                seconds=3.0,
                shut=True,
                answered=False,
            )
    # A request hidden in the body of one answered without its body being read (a
    # refusal, or a route that reads none), a last request closing the connection:
    # the hidden one must be read as body, never served or sent upstream.
    hidden = request("GET", "/smuggled", close=False)
    last = request("GET", "/api/version")
    for method, target, extra in (
        ("POST", "/api/autoroute/health", b""),
        ("POST", "/api/autoroute/nope", b""),
        ("POST", "/api/version", b""),
        ("CONNECT", "/api/chat", b""),
        ("GET", "/api/tags", b""),
        ("HEAD", "/api/tags", b""),
        ("GET", "/api/autoroute/health", b""),
        ("GET", "/metrics", b""),
        (
            "OPTIONS",
            "/api/chat",
            b"Origin: http://localhost\r\nAccess-Control-Request-Method: POST",
        ),
        ("OPTIONS", "/api/chat", b"Origin: http://evil.com\r\nAccess-Control-Request-Method: POST"),
        ("POST", "/api/chat", b"Origin: http://evil.com"),
        ("POST", "/api//chat", b""),
        ("POST", "/api/chat", b"Expect: nope"),
        ("POST", "/api/chat", b"Content-Type: multipart/form-data"),
    ):
        head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n".encode()
        head += extra + b"\r\n" if extra else b""
        raw = head + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden + last
        yield simple(
            cat,
            f"request hidden in {method} {target} {extra[:20]!r}",
            target,
            raw,
            head_requests=1 if method == "HEAD" else 0,
            paths=(target, "/api/version"),
        )
    for target in (
        "/api/chat\x00",
        "/api/ch\rat",
        "/api/ch\nat",
        "/api/ch at",
        "/api/%00",
        "/api/%0d%0a",
        "/" + "a" * 9000,
        "/api/tags?" + "a" * 70000,
        "/" + "a/" * 40000,
        "*",
        "http://x/api/tags",
        "//api/tags",
        "/api/../api/tags",
        "/api/./tags",
        "api/tags",
        "/api/tags#frag",
    ):
        yield simple(
            cat,
            f"target {target[:20]!r}",
            "/api/tags",
            b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n",
        )
    for name, raw in (
        ("http/0.9", b"GET /\r\n\r\n"),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("tls hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40),
        ("lf only", b"GET /api/tags HTTP/1.1\nHost: x\nConnection: close\n\n"),
        ("no host 1.1", b"GET /api/tags HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ("two hosts", b"GET /api/tags HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
        (
            "host injected",
            b"GET /api/tags HTTP/1.1\r\nHost: a\rX-Injected: 1\r\nConnection: close\r\n\r\n",
        ),
        ("leading crlf", b"\r\n\r\nGET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("method lower", b"get /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("method long", b"A" * 10000 + b" /api/tags HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("get with body", request("GET", "/api/tags", b"{}" * 100)),
        ("head with body", request("HEAD", "/api/tags", b"{}" * 100)),
        ("connect", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"),
        ("trace", b"TRACE / HTTP/1.1\r\nHost: x\r\nX-Injected: 1\r\nConnection: close\r\n\r\n"),
    ):
        yield simple(cat, name, "/", raw)


def _pipelined(first: bytes, second: bytes) -> Callable[[str], list[bytes | float]]:
    return lambda model: same(first + second)(model)


def injection_cases() -> Iterator[Case]:
    cat = "injection"
    crlf = "\r\nX-Injected: 1"
    names = [
        "llama3.1:8b" + crlf,
        "llama3.1:8b%0d%0aX-Injected:%201",
        "llama3.1:8b\u2028X-Injected",
        "llama3.1:8b\u0085X-Injected",
        "llama3.1:8b\x00",
        "llama3.1:8b\x1b[31m",
        "\ud7ff",
        "../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "llama3.1:8b/../../api/delete",
        "auto" + crlf,
        "auto:" + crlf,
        "auto:../../x",
        "a" * 70000,
        "",
        " ",
        "AUTO",
        "Auto:FAST",
        "llama3.1:8b ",
        "llama3.1:8b\t",
        "llama3.1:8b\u200b",
    ]
    for path in (*INFERENCE, "/api/show", "/api/autoroute/explain"):
        for name in names:
            yield simple(
                cat, f"model {name[:24]!r} {path}", path, request("POST", path, body_of(path, name))
            )
    for rid in (
        b"abc\rX-Injected: 1",
        b"a\x00b",
        b"a\x01b",
        b"a\x7fb",
        b"\xff\xfe",
        b"a" * 70000,
        b"%0d%0aX-Injected:1",
        b"a b",
        b"a\tb",
        b"",
        b"\xe2\x80\xa8",
    ):
        for path in ("/api/chat", "/v1/chat/completions", "/api/tags"):
            raw = request(
                "POST" if path != "/api/tags" else "GET",
                path,
                body_of(path, MODEL) if path != "/api/tags" else b"",
                [b"X-Request-Id: " + rid],
            )
            yield simple(cat, f"x-request-id {rid[:16]!r} {path}", path, raw)
    for name, value in (
        (b"X-Autoroute-User", b"u\rX-Injected: 1"),
        (b"Authorization", b"Bearer \x00x"),
        (b"Origin", b"http://x\rX-Injected: 1"),
        (b"Origin", b"null"),
        (b"User-Agent", b"\xff" * 5000),
        (b"Accept-Encoding", b"gzip;q=\x00"),
        (b"Cookie", b"a=" + b"b" * 9000),
        (b"Access-Control-Request-Headers", b"X-Injected"),
    ):
        raw = request("POST", "/api/chat", body_of("/api/chat", MODEL), [name + b": " + value])
        yield simple(cat, f"header {name.decode()} {value[:12]!r}", "/api/chat", raw)
    for target in (
        "/api/chat?x=%0d%0aX-Injected:%201",
        "/api/chat?\r\nX-Injected: 1",
        "/api/tags?a=%00",
        "/api/tags/%0d%0aX-Injected",
        "/api/%0d%0aX-Injected:1/tags",
        "/v1/models/..%2f..%2fapi%2fdelete",
        "/v1/models/%0d%0aX-Injected:%201",
        "/v1/models/" + "a" * 5000,
        "/api/blobs/sha256:../../../etc/passwd",
        "/api/blobs/..%2f..%2fetc%2fpasswd",
        "/api/blobs/sha256:" + "a" * 64 + "/../../x",
        "/api/blobs/sha256:%0d%0aX-Injected:1",
        "/api/blobs/",
        "/api/blobs/%2e%2e",
        "/api/autoroute/experiments/..%2f..%2fhealth",
        "/api/autoroute/experiments/%0d%0a",
    ):
        for method in ("GET", "HEAD", "POST"):
            raw = request(method, target, b"{}")
            yield simple(
                cat,
                f"{method} {target[:40]!r}",
                target.split("?")[0],
                raw,
                head_requests=1 if method == "HEAD" else 0,
            )
