"""`/v1/audio/transcriptions`: Ollama's multipart form read as Go reads it
(proxy/multipart_form.py, byte playbooks below), and the route through the proxy: to
the backend that has the model, checked against a key's model list, one usage event,
Ollama's 400s where the proxy decides."""

from __future__ import annotations

import pytest

from proxy.multipart_form import (
    MODEL_REQUIRED,
    PARSE_FAILED,
    FormError,
    Refused,
    go_quote,
    read_form,
    transcription_model,
)

PATH = "/v1/audio/transcriptions"
CT = "multipart/form-data; boundary=XyZ"
AUDIO = b"RIFF\x00\x01WAVEfmt \r\n--XyZ-not-the-boundary\r\n"


def part(name: str, value: bytes, filename: str | None = None, nl: bytes = b"\r\n") -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return b"--XyZ" + nl + f"Content-Disposition: {disposition}".encode() + nl + nl + value + nl


def form(*parts: bytes, nl: bytes = b"\r\n") -> bytes:
    return b"".join(parts) + b"--XyZ--" + nl


FILE = part("file", AUDIO, "a.wav")


def refusal(content_type: str | None, query: str, body: bytes) -> str:
    with pytest.raises(Refused) as caught:
        transcription_model(content_type, query, body)
    return str(caught.value)


# The parser, from bytes ---------------------------------------------------------------


def test_the_form_field_names_the_model_and_the_file_is_a_file() -> None:
    body = form(part("model", b"llama3.1:8b"), FILE, part("language", b"en"))
    assert transcription_model(CT, "", body) == "llama3.1:8b"
    parsed = read_form(CT, "", body)
    assert parsed.files == {"file": [AUDIO]}  # a lookalike of the boundary is content
    assert parsed.values == {"model": ["llama3.1:8b"], "language": ["en"]}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("model=from-query", "from-query"),  # FormValue: r.Form has the query's first
        ("mod%65l=a+b%3A1", "a b:1"),  # the query unescaped as url.ParseQuery does
        ("other=1", "in-form"),
        ("model=first&model=second", "first"),
    ],
)
def test_a_model_in_the_query_comes_before_the_form_field(query: str, expected: str) -> None:
    assert transcription_model(CT, query, form(part("model", b"in-form"), FILE)) == expected


def test_an_empty_model_in_the_query_leaves_no_model_whatever_the_form_says() -> None:
    assert refusal(CT, "model=", form(part("model", b"in-form"), FILE)) == MODEL_REQUIRED


@pytest.mark.parametrize(
    "body",
    [
        form(FILE),
        form(part("model", b""), FILE),
        form(part("model", b"x", "model.txt"), FILE),  # a file, not a value
        # Not form-data, or no name: skipped, as Go's ReadForm skips them.
        form(b'--XyZ\r\nContent-Disposition: attachment; name="model"\r\n\r\nx\r\n', FILE),
        form(b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n", FILE),
        b"--XyZ--\r\n",
    ],
)
def test_a_form_without_a_model_is_refused_as_ollama_does(body: bytes) -> None:
    assert refusal(CT, "", body) == MODEL_REQUIRED


def test_the_first_of_several_model_fields_wins() -> None:
    body = form(part("model", b"one"), part("model", b"two"), FILE)
    assert transcription_model(CT, "", body) == "one"


def test_a_preamble_lf_line_ends_and_a_final_boundary_without_newline_are_read() -> None:
    body = b"preamble line\n" + form(part("model", b"m:1", nl=b"\n"), nl=b"\n")
    assert transcription_model(CT, "", body) == "m:1"
    assert transcription_model(CT, "", form(part("model", b"m:2"))[:-2]) == "m:2"


def test_quoted_and_rfc2231_parameters_are_read_as_go_reads_them() -> None:
    quoted = b'--XyZ\r\nContent-Disposition: form-data; name="mo\\del"\r\n\r\nq:1\r\n'
    assert transcription_model(CT, "", form(quoted)) == "q:1"
    encoded = b"--XyZ\r\nContent-Disposition: form-data; name*=utf-8''mod%65l\r\n\r\ne:1\r\n"
    assert transcription_model(CT, "", form(encoded)) == "e:1"
    quoted_boundary = 'multipart/form-data; boundary="XyZ"'
    assert transcription_model(quoted_boundary, "", form(part("model", b"b:1"))) == "b:1"


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        (None, b"", "request Content-Type isn't multipart/form-data"),
        ("application/json", b"{}", "request Content-Type isn't multipart/form-data"),
        ("multipart/form-data", b"", "no multipart boundary param in Content-Type"),
        ('multipart/form-data; boundary=""', b"", "request Content-Type isn't multipart/form-data"),
        # The body's boundary is not the header's: no delimiter line before the end.
        (
            "multipart/form-data; boundary=other",
            form(part("model", b"m")),
            "multipart: NextPart: EOF",
        ),
        (CT, b"", "multipart: NextPart: EOF"),
        # A part that never reaches its closing delimiter.
        (CT, b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nm', "unexpected EOF"),
        # Headers that never end.
        (CT, b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n', "EOF"),
        (
            CT,
            b"--XyZ\r\nno colon here\r\n\r\nm\r\n--XyZ--\r\n",
            'malformed MIME header: missing colon: "no colon here"',
        ),
        (
            CT,
            b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--XyZ junk\r\n',
            'multipart: expecting a new Part; got line "--XyZ junk\\r\\n"',
        ),
        (CT, b"x" * 5000, "multipart: NextPart: bufio: buffer full"),
    ],
)
def test_a_form_that_does_not_parse_gets_gos_error(
    content_type: str | None, body: bytes, error: str
) -> None:
    with pytest.raises(FormError, match="^" + error.replace("\\", "\\\\") + "$"):
        read_form(content_type, "", body)
    assert refusal(content_type, "model=m", body) == PARSE_FAILED + error


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("model=m&x=%zz", 'invalid URL escape "%zz"'),
        ("model=m&x=%4", 'invalid URL escape "%4"'),
        ("model=m;x=1", "invalid semicolon separator in query"),
    ],
)
def test_a_bad_query_fails_after_a_good_form(query: str, error: str) -> None:
    body = form(part("model", b"in-form"), FILE)
    assert refusal(CT, query, body) == PARSE_FAILED + error
    # The form's own error comes first.
    assert refusal(CT, query, b"") == PARSE_FAILED + "multipart: NextPart: EOF"


def test_more_than_a_thousand_parts_is_too_large() -> None:
    many = form(*[part("p", b"")] * 1000, part("model", b"m"))
    assert refusal(CT, "", many) == PARSE_FAILED + "multipart: message too large"
    assert transcription_model(CT, "", form(*[part("p", b"")] * 999, part("model", b"m"))) == "m"


def test_go_quote() -> None:
    assert (
        go_quote(b'a"\\\r\n\t\x00\x7f\xff\xc3\xa9 \xc2\xa0')
        == '"a\\"\\\\\\r\\n\\t\\x00\\x7f\\xffé \\u00a0"'
    )
