"""`/v1/audio/transcriptions`: Ollama's multipart form read as Go reads it
(proxy/multipart_form.py, byte playbooks below), and the route through the proxy: to
the backend that has the model, checked against a key's model list, one usage event,
Ollama's 400s where the proxy decides."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import multipart_form
from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth, Usage
from proxy.config_serving import Limits
from proxy.errors import error_body
from proxy.multipart_form import (
    MODEL_REQUIRED,
    PARSE_FAILED,
    FormError,
    Refused,
    go_quote,
    read_form,
    transcription_model,
)
from tests.conftest import FROZEN
from tests.support import Emulator, Proxy, ServerThread, on_a_loop
from tests.usage_services import read_bytes, wait_for

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
    # A lookalike of the boundary is content.
    assert [file.content for file in parsed.files["file"]] == [AUDIO]
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
        # A key with a space is taken but never found (textproto leaves it as sent).
        form(b'--XyZ\r\nContent-Disposition : form-data; name="model"\r\n\r\nx\r\n', FILE),
        b"--XyZ--\r\n",
    ],
)
def test_a_form_without_a_model_is_refused_as_ollama_does(body: bytes) -> None:
    assert refusal(CT, "", body) == MODEL_REQUIRED


def test_bytes_that_are_not_utf8_read_as_ollamas_json_writes_them() -> None:
    # Go keeps the bytes; its JSON writes each one that is not UTF-8 as U+FFFD.
    assert transcription_model(CT, "", form(part("model", b"a\xe2\x82b"))) == "a\ufffd\ufffdb"
    assert transcription_model(CT, "model=%FFx", b"--XyZ--") == "\ufffdx"
    broken = b"--XyZ\r\nX-\xff: 1\r\n\r\n\r\n--XyZ--"
    assert refusal(CT, "", broken) == PARSE_FAILED + "malformed MIME header line: X-\ufffd: 1"


def test_the_first_of_several_model_fields_wins() -> None:
    body = form(part("model", b"one"), part("model", b"two"), FILE)
    assert transcription_model(CT, "", body) == "one"


def test_a_preamble_lf_line_ends_and_a_final_boundary_without_newline_are_read() -> None:
    body = b"preamble line\n" + form(part("model", b"m:1", nl=b"\n"), nl=b"\n")
    assert transcription_model(CT, "", body) == "m:1"
    assert transcription_model(CT, "", form(part("model", b"m:2"))[:-2]) == "m:2"


def test_quoted_and_rfc2231_parameters_are_read_as_go_reads_them() -> None:
    quoted = b'--XyZ\r\nContent-Disposition: form-data; name="m\\"o\\\\"\r\n\r\nq:1\r\n'
    assert read_form(CT, "", form(quoted)).value('m"o\\') == "q:1"
    encoded = b"--XyZ\r\nContent-Disposition: form-data; name*=utf-8''mod%65l\r\n\r\ne:1\r\n"
    assert transcription_model(CT, "", form(encoded)) == "e:1"
    continued = b"--XyZ\r\nContent-Disposition: form-data; name*0=mo; name*1=del;\r\n\r\nc:1\r\n"
    assert transcription_model(CT, "", form(continued)) == "c:1"
    # The same parameter twice with one value is no error; with two, no name at all.
    twice = b'--XyZ\r\nContent-Disposition: form-data; name=model; name="model"\r\n\r\nt:1\r\n'
    assert transcription_model(CT, "", form(twice)) == "t:1"
    clash = b"--XyZ\r\nContent-Disposition: form-data; name=model; name=other\r\n\r\nx\r\n"
    assert refusal(CT, "", form(clash)) == MODEL_REQUIRED
    quoted_boundary = 'multipart/form-data; boundary="XyZ"'
    assert transcription_model(quoted_boundary, "", form(part("model", b"b:1"))) == "b:1"


def test_a_backslash_escapes_only_a_separator_in_a_quoted_parameter() -> None:
    """Go's consumeValue keeps a backslash before anything but a tspecial (MSIE sends
    `filename="C:\\dev\\a.wav"` unescaped): `name="mo\\del"` names the field `mo\\del`,
    not `model`, and the form's `model` is the next one."""
    msie = b'--XyZ\r\nContent-Disposition: form-data; name="mo\\del"\r\n\r\nllama:1\r\n'
    assert read_form(CT, "", form(msie)).value("mo\\del") == "llama:1"
    assert transcription_model(CT, "", form(msie, part("model", b"qwen:1"))) == "qwen:1"
    assert refusal(CT, "", form(msie)) == MODEL_REQUIRED


def test_an_empty_quoted_parameter_is_a_parameter() -> None:
    """Go's consumeMediaParam takes `filename=""` (an empty quoted-string) as a parameter
    with no value: the part is a value named by its `name`, not a part skipped for a
    Content-Disposition that does not parse."""
    empty = b'--XyZ\r\nContent-Disposition: form-data; name="model"; filename=""\r\n\r\nq:1\r\n'
    assert transcription_model(CT, "", form(empty, part("model", b"l:1"), FILE)) == "q:1"


def test_a_disposition_is_trimmed_of_unicode_spaces_as_go_trims_it() -> None:
    """ParseMediaType trims the media type, and what follows a trailing semicolon, with
    strings.TrimSpace, which takes U+00A0 and U+0085 as spaces too."""
    for space in (b"\xc2\xa0", b"\xc2\x85"):
        for disposition in (space + b'form-data; name="model"', b"form-data; name=model;" + space):
            spaced = b"--XyZ\r\nContent-Disposition: " + disposition + b"\r\n\r\n"
            body = form(spaced + b"q:1\r\n", part("model", b"l:1"), FILE)
            assert transcription_model(CT, "", body) == "q:1", disposition


def test_a_quoted_printable_value_is_decoded_as_go_decodes_it() -> None:
    def qp(value: bytes) -> bytes:
        return form(
            b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n'
            b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\n" + value + b"\r\n"
        )

    assert transcription_model(CT, "", qp(b"llama3.1=3a=\r\n8b")) == "llama3.1:8b"
    assert transcription_model(CT, "", qp(b"a=zz")) == "a=zz"  # not an escape: as sent
    assert refusal(CT, "", qp(b"a==")) == PARSE_FAILED + "unexpected EOF"
    bad = "quotedprintable: invalid unescaped byte 0x01 in body"
    assert refusal(CT, "", qp(b"a\x01")) == PARSE_FAILED + bad


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        (None, b"", "request Content-Type isn't multipart/form-data"),
        ("application/json", b"{}", "request Content-Type isn't multipart/form-data"),
        ("multipart/form-data", b"", "no multipart boundary param in Content-Type"),
        # An empty quoted-string is a parameter: a boundary, empty.
        ('multipart/form-data; boundary=""', b"", "multipart: boundary is empty"),
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


# What a form is made of, shuffled: whatever comes of it, the answer is a model or
# Ollama's 400, never an exception of the parser's own.
_PIECES = [
    b"--XyZ",
    b"--",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b'Content-Disposition: form-data; name="model"',
    b'Content-Disposition: form-data; name="file"; filename="a.wav"',
    b"content-disposition:form-data;name*=utf-8''model",
    b"Content-Transfer-Encoding: quoted-printable",
    b"=",
    b"=3",
    b"=3A",
    b"llama3.1:8b",
    b":",
]


@given(
    pieces=st.lists(st.sampled_from(_PIECES) | st.binary(max_size=8), max_size=40),
    query=st.text("model=&;%+3Axyz", max_size=12),
    content_type=st.sampled_from([CT, "multipart/form-data; boundary=", "text/plain", ""]),
)
@settings(max_examples=400, deadline=None, database=None)
def test_any_bytes_give_a_model_or_ollamas_400(
    pieces: list[bytes], query: str, content_type: str
) -> None:
    try:
        model = transcription_model(content_type, query, b"".join(pieces))
    except Refused as exc:
        assert str(exc) == MODEL_REQUIRED or str(exc).startswith(PARSE_FAILED)
        error_body(PATH, 400, str(exc))  # valid text: the answer can be written
    else:
        assert model
        model.encode()  # valid text, for the key's check, the 403 and the usage event


def test_go_quote() -> None:
    assert (
        go_quote(b'a"\\\r\n\t\x00\x7f\xff\xc3\xa9 \xc2\xa0')
        == '"a\\"\\\\\\r\\n\\t\\x00\\x7f\\xffé \\u00a0"'
    )


# Through the proxy --------------------------------------------------------------------

LLAMA, QWEN = "llama3.1:8b", "qwen2.5:7b"
LISTED = "k-listed-1"  # may use QWEN only
OPEN = "k-open-1"


@pytest.fixture
def fleet(servers: ServerThread) -> Iterator[tuple[Emulator, Emulator]]:
    from dataclasses import replace

    emulators = (
        Emulator(servers, replace(FROZEN, models=(LLAMA,))),
        Emulator(servers, replace(FROZEN, models=(QWEN,))),
    )
    yield emulators
    for emulator in emulators:
        emulator.stop()


@pytest.fixture
def events_path(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


@pytest.fixture
def front(
    servers: ServerThread, fleet: tuple[Emulator, Emulator], events_path: Path, tmp_path: Path
) -> Iterator[Proxy]:
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(LISTED), name="listed", models=(QWEN,)),
            ApiKey(sha256=hash_key(OPEN), name="open"),
        )
    )
    usage = Usage(
        file_path=str(events_path),
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.02,
    )
    prx = Proxy(servers, [e.url for e in fleet], auth=auth, usage=usage)
    yield prx
    prx.stop()


def sdk(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def counts(fleet: tuple[Emulator, Emulator]) -> tuple[int, int]:
    llama, qwen = fleet
    return llama.state.requests[PATH], qwen.state.requests[PATH]


async def test_a_transcription_reaches_the_backend_that_has_its_model(
    front: Proxy, fleet: tuple[Emulator, Emulator]
) -> None:
    client = sdk(front.url, OPEN)
    for model, expected in ((LLAMA, (1, 0)), (QWEN, (1, 1)), (LLAMA, (2, 1))):
        answer = await client.audio.transcriptions.create(model=model, file=("a.wav", AUDIO))
        assert answer.text
        assert counts(fleet) == expected, model
    # The answer is the backend's own, unchanged (what TranscriptionWriter writes).
    direct = await sdk(fleet[1].url, "x").audio.transcriptions.create(
        model=QWEN, file=("a.wav", AUDIO)
    )
    proxied = await client.audio.transcriptions.create(model=QWEN, file=("a.wav", AUDIO))
    assert proxied.text == direct.text


async def test_the_query_model_routes_and_the_forms_other_fields_reach_ollama(
    front: Proxy, fleet: tuple[Emulator, Emulator]
) -> None:
    body = form(part("model", b"in-form"), part("response_format", b"text"), FILE)
    headers = {"Content-Type": CT, "Authorization": f"Bearer {OPEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{front.url}{PATH}?model={QWEN}", data=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain"
        text = await resp.text()
    assert text and counts(fleet) == (0, 1)  # the query's model, as Ollama reads it


async def test_a_key_with_a_model_list_transcribes_with_its_models_only(
    front: Proxy, fleet: tuple[Emulator, Emulator]
) -> None:
    client = sdk(front.url, LISTED)
    answer = await client.audio.transcriptions.create(model=QWEN, file=("a.wav", AUDIO))
    assert answer.text and counts(fleet) == (0, 1)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.audio.transcriptions.create(model=LLAMA, file=("a.wav", AUDIO))
    assert caught.value.status_code == 403
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"] == f"model '{LLAMA}' is not allowed for this API key"
    assert counts(fleet) == (0, 1)  # nothing reached a backend
    # A name that is no UTF-8 is none Ollama can parse: its 400, for this key as for
    # any, not a 500 and not the key's refusal.
    headers = {"Content-Type": CT, "Authorization": f"Bearer {LISTED}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            front.url + PATH, data=form(part("model", b"\xff:1"), FILE), headers=headers
        ) as resp,
    ):
        assert resp.status == 400
        refusal = orjson.loads(await resp.read())
    assert refusal["error"]["message"] == "invalid model name"


async def test_a_key_with_a_model_list_reaches_no_other_model_through_form_quirks(
    front: Proxy, fleet: tuple[Emulator, Emulator]
) -> None:
    """Forms whose first `model`, as Go's ParseMultipartForm reads it, is outside the
    key's list, behind a field the key may use: the proxy reads the model Ollama will
    run, and refuses it."""
    msie = b'--XyZ\r\nContent-Disposition: form-data; name="mo\\del"\r\n\r\n'
    empty = b'--XyZ\r\nContent-Disposition: form-data; name="model"; filename=""\r\n\r\n'
    spaced = b'--XyZ\r\nContent-Disposition: \xc2\xa0form-data; name="model"\r\n\r\n'
    ended = b"--XyZ\r\nContent-Disposition: form-data; name=model;\xc2\x85\r\n\r\n"
    bodies = (
        form(msie + QWEN.encode() + b"\r\n", part("model", LLAMA.encode()), FILE),
        *(
            form(first + LLAMA.encode() + b"\r\n", part("model", QWEN.encode()), FILE)
            for first in (empty, spaced, ended)
        ),
    )
    headers = {"Content-Type": CT, "Authorization": f"Bearer {LISTED}"}
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(front.url + PATH, data=body, headers=headers) as resp:
                assert resp.status == 403, body
                refusal = orjson.loads(await resp.read())
            assert refusal["error"]["message"] == f"model '{LLAMA}' is not allowed for this API key"
    assert counts(fleet) == (0, 0)  # nothing reached a backend


async def test_each_transcription_is_one_usage_event(
    front: Proxy, fleet: tuple[Emulator, Emulator], events_path: Path
) -> None:
    client = sdk(front.url, OPEN)
    await client.audio.transcriptions.create(model=LLAMA, file=("a.wav", AUDIO))
    await client.audio.transcriptions.create(model=QWEN, file=("b.wav", AUDIO))

    async def events() -> list[dict[str, object]]:
        return [orjson.loads(line) for line in (await read_bytes(events_path)).splitlines()]

    async def two() -> bool:
        return len(await events()) >= 2

    await wait_for(two, what="two usage events")
    seen = await events()
    assert [(e["endpoint"], e["requested_model"], e["served_model"]) for e in seen] == [
        (PATH, LLAMA, LLAMA),
        (PATH, QWEN, QWEN),
    ]
    assert [e["outcome"]["status"] for e in seen] == [200, 200]  # type: ignore[index]
    assert seen[0]["backend"] != seen[1]["backend"]


@pytest.mark.parametrize(
    ("query", "content_type", "body", "message"),
    [
        ("", CT, form(FILE), MODEL_REQUIRED),
        ("model=", CT, form(part("model", b"m"), FILE), MODEL_REQUIRED),
        (
            "",
            "multipart/form-data",
            form(FILE),
            PARSE_FAILED + "no multipart boundary param in Content-Type",
        ),
        ("", CT, b"no form", PARSE_FAILED + "multipart: NextPart: EOF"),
    ],
)
async def test_a_form_the_proxy_cannot_route_gets_ollamas_400(
    front: Proxy,
    fleet: tuple[Emulator, Emulator],
    query: str,
    content_type: str,
    body: bytes,
    message: str,
) -> None:
    headers = {"Content-Type": content_type}
    answers = []
    for url, key in ((front.url, OPEN), (fleet[0].url, "")):
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}{PATH}?{query}",
                data=body,
                headers={**headers, "Authorization": f"Bearer {key}"},
            ) as resp,
        ):
            answers.append((resp.status, resp.headers["Content-Type"], await resp.read()))
        if url == front.url:
            assert counts(fleet) == (0, 0)  # the proxy answered
    proxied, direct = answers
    assert proxied == direct  # byte for byte, as Ollama's middleware answers
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    assert proxied[0] == 400 and orjson.loads(proxied[2]) == {"error": error}


async def test_auto_is_refused_with_a_400_that_says_to_name_a_model(
    front: Proxy, fleet: tuple[Emulator, Emulator]
) -> None:
    client = sdk(front.url, OPEN)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.transcriptions.create(model="auto", file=("a.wav", AUDIO))
    body = caught.value.body
    assert isinstance(body, dict) and "name a model" in str(body["message"])
    with pytest.raises(openai.NotFoundError) as missing:
        await client.audio.transcriptions.create(model="auto:nonesuch", file=("a.wav", AUDIO))
    body = missing.value.body
    assert isinstance(body, dict) and "model 'auto:nonesuch' not found" in str(body["message"])
    assert counts(fleet) == (0, 0)


@pytest.mark.parametrize("model", [b"auto", b"auto:nonesuch"])
@pytest.mark.parametrize("audio", [(), (part("file", b"", "a.wav"),)])
async def test_a_form_without_audio_gets_ollamas_400_for_auto_too(
    front: Proxy, fleet: tuple[Emulator, Emulator], model: bytes, audio: tuple[bytes, ...]
) -> None:
    """TranscriptionMiddleware refuses a form without a file, or with an empty one,
    before any handler looks at the model: `auto`, and a profile that does not exist,
    get that 400 as a named model does, not `auto`'s own answers."""
    headers = {"Content-Type": CT, "Authorization": f"Bearer {OPEN}"}
    answers = []
    for url, name in ((fleet[0].url, LLAMA.encode()), (front.url, model)):
        body = form(part("model", name), *audio)
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + PATH, data=body, headers=headers) as r,
        ):
            answers.append((r.status, r.headers["Content-Type"], await r.read()))
    direct, proxied = answers
    assert direct[0] == 400
    assert proxied == direct
    assert counts(fleet) == (1, 0)  # the direct request alone


async def test_an_unknown_model_gets_the_backends_404(
    front: Proxy, fleet: tuple[Emulator, Emulator]
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(front.url, OPEN).audio.transcriptions.create(
            model="no-such:model", file=("a.wav", AUDIO)
        )
    assert caught.value.status_code == 404
    assert sum(counts(fleet)) == 1


async def test_a_form_over_the_body_limit_is_413_and_reaches_no_backend(
    servers: ServerThread, fleet: tuple[Emulator, Emulator]
) -> None:
    prx = Proxy(servers, [e.url for e in fleet], limits=Limits(max_body_bytes=4096))
    try:
        body = form(part("model", QWEN.encode()), part("file", b"x" * 8192, "a.wav"))
        async with (
            aiohttp.ClientSession() as http,
            http.post(prx.url + PATH, data=body, headers={"Content-Type": CT}) as resp,
        ):
            assert resp.status == 413
            refusal = orjson.loads(await resp.read())
        assert refusal["error"]["message"] == "request body too large (limit 4096 bytes)"
        assert counts(fleet) == (0, 0)
    finally:
        prx.stop()


async def test_a_transcription_holds_one_of_the_keys_streams(servers: ServerThread) -> None:
    from dataclasses import replace

    slow = Emulator(servers, replace(FROZEN, models=(QWEN,), chunk_delay_ms=100.0))
    auth = Auth(keys=(ApiKey(sha256=hash_key(OPEN), name="one", max_streams=1),))
    prx = Proxy(servers, [slow.url], auth=auth)
    try:
        client = sdk(prx.url, OPEN)
        first = asyncio.ensure_future(
            client.audio.transcriptions.create(model=QWEN, file=("a.wav", AUDIO))
        )

        async def running() -> bool:
            return slow.state.requests[PATH] == 1

        await wait_for(running, what="the first transcription at the backend")
        with pytest.raises(openai.RateLimitError) as caught:
            await client.audio.transcriptions.create(model=QWEN, file=("b.wav", AUDIO))
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["message"] == "too many concurrent requests (limit 1)"
        assert (await first).text
        assert slow.state.requests[PATH] == 1
        # The stream is given back when the answer is done.
        assert (await client.audio.transcriptions.create(model=QWEN, file=("c.wav", AUDIO))).text
    finally:
        prx.stop()
        slow.stop()


@pytest.fixture
def apart(servers: ServerThread) -> Iterator[Proxy]:
    """A proxy in front of an emulator with an event loop of its own: the emulator reads
    a form as the proxy does, and would hold a shared loop itself."""
    own = ServerThread()
    emulator = Emulator(own, FROZEN)
    prx = Proxy(servers, [emulator.url])
    yield prx
    prx.stop()
    emulator.stop()
    own.close()


async def test_reading_a_large_form_holds_no_other_client(
    apart: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quoted-printable part is decoded as Go's reader decodes it, byte by byte in
    Python: most of a second for a few megabytes, in which the event loop would answer
    no other client. So a large form is read in a worker thread, off the loop; a small
    one on it."""
    proxy = apart
    readings: list[tuple[int, bool]] = []
    read = multipart_form.transcription

    def watched(
        content_type: str | None, raw_query: str, body: bytes
    ) -> multipart_form.Transcription:
        readings.append((len(body), on_a_loop()))
        return read(content_type, raw_query, body)

    monkeypatch.setattr(multipart_form, "transcription", watched)
    sizes = []
    for lines in (8, 8 * 1024):
        audio = (b"A" * 998 + b"\r\n") * lines
        file = (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + audio + b"\r\n"
        )
        body = form(part("model", b"llama3.1:8b"), file)
        sizes.append(len(body))
        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": CT}
            async with session.post(proxy.url + PATH, data=body, headers=headers) as resp:
                assert resp.status < 500, (resp.status, await resp.read())
    assert readings == [(sizes[0], True), (sizes[1], False)]
