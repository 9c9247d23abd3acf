"""The cases in the body: JSON of every shape and type, the multipart form of
`/v1/audio/transcriptions`, and compressed bodies."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from benchmarks.hostile_probe.cases_http import (
    body_of,
    dumps,
    framing_cases,
    injection_cases,
    simple,
)
from benchmarks.hostile_probe.wire import (
    ADMIN,
    AUTO,
    BLOB,
    INFERENCE,
    MODEL,
    OTHER_POSTS,
    Case,
    minimal,
    request,
)


def json_cases() -> Iterator[Case]:
    cat = "json"
    wrong: list[object] = [None, True, 1, -1, 1.5, "x", [], [1], {}, {"a": 1}, "", [None]]
    fields = [
        "options",
        "messages",
        "images",
        "tools",
        "format",
        "keep_alive",
        "think",
        "stream",
        "prompt",
        "input",
        "system",
        "template",
        "context",
        "raw",
        "suffix",
        "truncate",
        "dimensions",
        "max_tokens",
        "response_format",
        "stream_options",
        "tool_choice",
        "temperature",
        "stop",
        "seed",
        "reasoning_effort",
        "metadata",
        "model",
    ]
    for path in INFERENCE:
        for model in (MODEL, AUTO):
            base = minimal(path, model)
            for field_name in fields:
                for value in wrong:
                    doc = {**base, field_name: value}
                    yield simple(
                        cat,
                        f"{field_name}={value!r} {path} {model}",
                        path,
                        request("POST", path, dumps(doc)),
                    )
            text = dumps(base)
            inner = text[:-1]
            raws: list[tuple[str, bytes]] = [
                ("empty", b""),
                ("null", b"null"),
                ("array", b"[]"),
                ("number", b"1"),
                ("string", b'"s"'),
                ("spaces", b"   "),
                ("bom", b"\xef\xbb\xbf" + text),
                ("trailing", text + b"garbage"),
                ("two values", text + text),
                ("invalid utf8", inner + b',"prompt":"\xff\xfe","system":"\xc3"}'),
                ("invalid utf8 model", text.replace(model.encode(), model.encode() + b"\xff")),
                ("lone surrogate", inner + b',"system":"\\ud800"}'),
                ("lone low surrogate", inner + b',"system":"\\udc00x"}'),
                ("nan", inner + b',"temperature":NaN}'),
                ("infinity", inner + b',"options":{"temperature":Infinity}}'),
                ("-infinity", inner + b',"seed":-Infinity}'),
                ("1e400", inner + b',"options":{"temperature":1e400}}'),
                ("2^64", inner + b',"options":{"num_predict":18446744073709551616}}'),
                ("-2^63-1", inner + b',"options":{"seed":-9223372036854775809}}'),
                ("big int 300 digits", inner + b',"options":{"seed":' + b"9" * 300 + b"}}"),
                ("1e-400", inner + b',"options":{"temperature":1e-400}}'),
                ("dup model", inner + b',"model":"no-such:1b"}'),
                ("case model", inner + b',"Model":"no-such:1b"}'),
                ("case MODEL first", b'{"MODEL":"no-such:1b",' + text[1:]),
                ("case STREAM", inner + b',"STREAM":true}'),
                ("dup options", inner + b',"options":{"num_predict":1},"options":[]}'),
                ("deep 20000", inner + b',"metadata":' + b"[" * 20000 + b"]" * 20000 + b"}"),
                ("deep 10001 obj", inner + b',"options":' + b'{"a":' * 10001 + b"1" + b"}" * 10002),
                ("huge array", inner + b',"context":[' + b"1," * 500_000 + b"1]}"),
                ("huge string", inner + b',"system":"' + b"a" * 3_000_000 + b'"}'),
                (
                    "many keys",
                    inner + b"," + b",".join(b'"k%d":1' % i for i in range(100_000)) + b"}",
                ),
                ("escaped model", text.replace(b'"model"', b'"\\u006dodel"')),
                ("unterminated", inner),
                ("unterminated string", inner + b',"x":"abc'),
                ("control in string", inner + b',"system":"a\x01b"}'),
                ("nul in string", inner + b',"system":"a\x00b"}'),
                ("bad escape", inner + b',"system":"\\x41"}'),
                ("single quotes", text.replace(b'"', b"'")),
                ("comment", b"/*c*/" + text),
                ("utf16", text.decode().encode("utf-16")),
            ]
            for name, raw_body in raws:
                raw = request("POST", path, raw_body, [b"Content-Type: application/json"])
                # num_predict 2^64 is -2^63 once Go converts it to an int: no limit, as
                # in Ollama, and an answer not streamed ends only with the client.
                endless = name == "2^64" and path in ("/api/generate", "/api/chat")
                yield simple(
                    cat,
                    f"{name} {path} {model}",
                    path,
                    raw,
                    answered=not endless,
                    seconds=2.0 if endless else 10.0,
                )
    for path in OTHER_POSTS + ADMIN + (BLOB,):
        for name, raw_body in (
            ("empty", b""),
            ("null", b"null"),
            ("invalid utf8", b'{"model":"\xff"}'),
            ("deep", b"[" * 20000 + b"]" * 20000),
            ("nan", b'{"model":NaN}'),
            (
                "wrong types",
                b'{"model":1,"source":[],"destination":{},"rating":"x",'
                b'"request_id":[],"insecure":"x","stream":"x"}',
            ),
        ):
            yield simple(cat, f"{name} {path}", path, request("POST", path, raw_body))


AUDIO_PATH = "/v1/audio/transcriptions"
# A tiny WAV: a RIFF head and a few samples.
WAV = b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00" + bytes(28)


def form(parts: list[tuple[bytes, bytes]], boundary: bytes = b"B0undary") -> bytes:
    """A multipart body of `parts` (part headers, part body), closed."""
    out = b"".join(b"--%b\r\n%b\r\n\r\n%b\r\n" % (boundary, h, v) for h, v in parts)
    return out + b"--%b--\r\n" % boundary


def field_part(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="%b"' % name, value


FILE = (b'Content-Disposition: form-data; name="file"; filename="a.wav"', WAV)


def form_cases() -> Iterator[Case]:
    """`/v1/audio/transcriptions`: its multipart form, hostile at every level."""
    cat = "form"
    multipart = b"Content-Type: multipart/form-data; boundary=B0undary"
    for model in (MODEL.encode(), AUTO.encode()):
        m = model.decode()
        bodies: list[tuple[str, list[bytes], bytes]] = [
            ("valid", [multipart], form([field_part(b"model", model), FILE])),
            ("no type", [], form([field_part(b"model", model), FILE])),
            ("json type", [b"Content-Type: application/json"], b'{"model":"%b"}' % model),
            ("no boundary", [b"Content-Type: multipart/form-data"], form([FILE])),
            ("empty boundary", [b'Content-Type: multipart/form-data; boundary=""'], b"--\r\n"),
            (
                "long boundary",
                [b"Content-Type: multipart/form-data; boundary=" + b"b" * 200],
                form([field_part(b"model", model), FILE], b"b" * 200),
            ),
            ("unclosed", [multipart], form([field_part(b"model", model), FILE])[:-12]),
            ("header unended", [multipart], b"--B0undary\r\nContent-Disposition: form-data"),
            (
                "2000 parts",
                [multipart],
                form([field_part(b"x%d" % i, b"v") for i in range(2000)] + [FILE]),
            ),
            (
                "long part header",
                [multipart],
                form([(b"X-A: " + b"a" * 100_000, b"v"), field_part(b"model", model), FILE]),
            ),
            (
                "model crlf",
                [multipart],
                form([field_part(b"model", model + b"\r\nX-Injected: 1"), FILE]),
            ),
            (
                "model invalid utf8",
                [multipart],
                form([field_part(b"model", model + b"\xff"), FILE]),
            ),
            (
                "model twice",
                [multipart],
                form([field_part(b"model", b"no-such:1b"), field_part(b"model", model), FILE]),
            ),
            ("no file", [multipart], form([field_part(b"model", model)])),
            ("empty file", [multipart], form([field_part(b"model", model), (FILE[0], b"")])),
            (
                "quoted-printable bad",
                [multipart],
                form(
                    [
                        (
                            b'Content-Disposition: form-data; name="model"\r\n'
                            b"Content-Transfer-Encoding: quoted-printable",
                            model + b"=ZZ",
                        ),
                        FILE,
                    ]
                ),
            ),
            (
                "nested multipart",
                [multipart],
                form(
                    [
                        (
                            b'Content-Disposition: form-data; name="model"\r\n'
                            b"Content-Type: multipart/mixed; boundary=X",
                            form([FILE], b"X"),
                        ),
                        FILE,
                    ]
                ),
            ),
            (
                "name unquoted",
                [multipart],
                form([(b"Content-Disposition: form-data; name=model", model), FILE]),
            ),
            (
                "value 40 MB",
                [multipart],
                form([field_part(b"model", model), field_part(b"prompt", b"a" * (40 << 20)), FILE]),
            ),
        ]
        for name, headers, body in bodies:
            raw = request("POST", AUDIO_PATH, body, headers)
            yield simple(cat, f"{name} {m}", AUDIO_PATH, raw)
        query = form([FILE])
        yield simple(
            cat,
            f"model in query {m}",
            AUDIO_PATH,
            request("POST", f"{AUDIO_PATH}?model={m}", query, [multipart]),
        )
        yield simple(
            cat,
            f"bad query {m}",
            AUDIO_PATH,
            request("POST", f"{AUDIO_PATH}?model=%zz", query, [multipart]),
        )


def bomb(wbits: int, megabytes: int = 128) -> bytes:
    """`megabytes` MiB of zeros, gzip (wbits 31) or zlib (15) compressed: about a
    thousandth of that on the wire, past the body limit once inflated."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


def encoding_cases() -> Iterator[Case]:
    cat = "encoding"
    bombs: dict[str, bytes] = {"gzip": bomb(31), "deflate": bomb(15), "x-gzip": bomb(31)}
    try:
        import zstandard

        packer = zstandard.ZstdCompressor(level=3).compressobj()
        zeros = bytes(1 << 20)
        bombs["zstd"] = b"".join(packer.compress(zeros) for _ in range(128)) + packer.flush()
        bombs["zstd valid"] = zstandard.ZstdCompressor().compress(body_of("/api/chat", MODEL))
    except ImportError:
        pass
    bombs["br"] = b"\x1b\xff\xff\xff"
    bombs["gzip, zstd"] = bombs["gzip"]
    for path in ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/messages", BLOB):
        for coding, data in bombs.items():
            name = coding.split()[0]
            raw = request("POST", path, data, [b"Content-Encoding: " + name.encode()])
            yield simple(cat, f"{coding} {path}", path, raw)


def all_cases() -> list[Case]:
    return [
        *framing_cases(),
        *injection_cases(),
        *json_cases(),
        *encoding_cases(),
        *form_cases(),
    ]
