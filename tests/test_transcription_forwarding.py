"""What a transcription's backend receives: the form as the proxy read it
(proxy/form_encoding.py), not the client's bytes, so that a reader other than the
proxy's port of Go's reads the model the proxy checked and routed by."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import form_encoding
from proxy.multipart_form import FilePart, Form, read_form, transcription_model
from tests.support import Proxy, ServerThread, free_port

PATH = "/v1/audio/transcriptions"
LLAMA, QWEN = "llama3.1:8b", "qwen2.5:7b"
CT = "multipart/form-data; boundary=XyZ"
AUDIO = b"RIFF\x00\x01WAVEfmt data"
_DETAILS = {"family": "llama", "parameter_size": "8B", "quantization_level": "Q4_K_M"}


@dataclasses.dataclass(frozen=True)
class Received:
    content_type: str
    query: str
    body: bytes


def _standin(received: list[Received]) -> web.Application:
    """Lists both models; records each transcription request as it arrives."""

    async def tags(request: web.Request) -> web.Response:
        entries = [
            {"name": m, "model": m, "digest": m, "size": 1 << 30, "details": _DETAILS}
            for m in (LLAMA, QWEN)
        ]
        return web.json_response({"models": entries})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def show(request: web.Request) -> web.Response:
        return web.json_response({"details": _DETAILS, "capabilities": ["completion"]})

    async def transcribe(request: web.Request) -> web.Response:
        query = request.raw_path.partition("?")[2]
        content_type = request.headers.get("Content-Type", "")
        received.append(Received(content_type, query, await request.read()))
        return web.json_response({"text": "heard"})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post(PATH, transcribe)
    return app


@pytest.fixture
def recorded(servers: ServerThread) -> Iterator[tuple[Proxy, list[Received]]]:
    received: list[Received] = []
    port = free_port()
    standin = servers.serve(lambda: _standin(received), port)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"])
    try:
        yield proxy, received
    finally:
        proxy.stop()
        servers.stop(standin)


async def _other_reader(got: Received) -> dict[str, list[bytes]]:
    """The form as a reader other than the proxy's reads it: the query's values first
    (as net/http's FormValue takes them), then aiohttp's multipart reader's parts."""
    fields: dict[str, list[bytes]] = {}
    for name, value in parse_qsl(got.query, keep_blank_values=True):
        fields.setdefault(name, []).append(value.encode())
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": got.content_type}))
    loop = asyncio.get_running_loop()
    content = aiohttp.StreamReader(BaseProtocol(loop), 1 << 20, loop=loop)
    content.feed_data(got.body)
    content.feed_eof()
    reader = aiohttp.MultipartReader(headers, content)
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        if part.name is not None:
            fields.setdefault(part.name, []).append(bytes(await part.read(decode=True)))
    return fields


def _head(name: str, extra: str = "") -> bytes:
    return f"--XyZ\r\nContent-Disposition: form-data; name={name}{extra}\r\n".encode()


def _file(content: bytes) -> bytes:
    return _head('"file"', '; filename="a.wav"') + b"\r\n" + content + b"\r\n"


def _model(first: bytes, model: str = LLAMA) -> bytes:
    return first + b"\r\n" + model.encode() + b"\r\n"


# Forms whose first model, as Go reads them, is LLAMA, where a reader that is not Go's
# might read another or none: (the parts, the query).
QUIRKS = {
    "a backslash before a letter is kept": (
        _model(_head('"mo\\del"'), QWEN) + _model(_head('"model"')) + _file(AUDIO),
        "",
    ),
    "an empty filename is a value": (
        _model(_head('"model"', '; filename=""')) + _file(AUDIO),
        "",
    ),
    "the query comes first": (_model(_head('"model"'), QWEN) + _file(AUDIO), "model=" + LLAMA),
    "quoted-printable": (
        _head('"model"')
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + LLAMA.replace(".", "=2E").encode()
        + b"\r\n"
        + _file(AUDIO),
        "",
    ),
    "a lookalike of the delimiter is content": (
        _model(_head('"model"')) + _file(b"RIFF\r\n--XyZ-not-the-boundary\r\n"),
        "",
    ),
}


@pytest.mark.parametrize("quirk", list(QUIRKS))
async def test_the_backend_receives_the_form_as_the_proxy_read_it(
    recorded: tuple[Proxy, list[Received]], quirk: str
) -> None:
    proxy, received = recorded
    parts, query = QUIRKS[quirk]
    body = parts + b"--XyZ--\r\n"
    assert transcription_model(CT, query, body) == LLAMA
    url = f"{proxy.url}{PATH}?{query}" if query else proxy.url + PATH
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers={"Content-Type": CT}) as resp,
    ):
        assert resp.status == 200, await resp.read()
    [got] = received
    # Another reader reads what arrived as the proxy read what was sent.
    fields = await _other_reader(got)
    assert fields["model"][0] == LLAMA.encode(), fields
    # And Go's reading of it is the proxy's, value for value and file for file.
    sent, arrived = read_form(CT, query, body), read_form(got.content_type, got.query, got.body)
    assert arrived.values == sent.values
    assert _files(arrived) == _files(sent)


def _files(form: Form) -> dict[str, list[tuple[bytes, str, str]]]:
    return {
        name: [(bytes(f.content), f.filename, f.content_type) for f in files]
        for name, files in form.files.items()
    }


@pytest.mark.parametrize(
    "name",
    ["model", 'mo"del', "mo\\del", "módel", "mo\r\ndel", "--XyZ", "%41"],
)
def test_any_name_value_and_filename_are_written_back_as_read(name: str) -> None:
    """Parameters and values that need quoting or RFC 2231, and contents that hold a
    delimiter, read back by Go's rules as written."""
    form = Form(
        values={name: ["from-query", "v1", "line\r\n--autoroute-x\r\n", ""], "b": ["2"]},
        query={name: ["from-query"]},
        files={
            name: [
                FilePart(memoryview(AUDIO), name + ".wav", "audio/wav"),
                FilePart(memoryview(b""), "C:\\dir\\b.wav", ""),
            ]
        },
    )
    out = form_encoding.written(form)
    back = read_form(out.content_type, out.query, out.body)
    assert back.values == form.values
    assert back.query == form.query
    assert _files(back) == _files(form)


async def test_a_large_upload_arrives_whole(recorded: tuple[Proxy, list[Received]]) -> None:
    """Audio past the 25 MB Go keeps in memory (the rest on disk), with lookalikes of the
    client's delimiter in it: the backend gets every byte, in a form of the proxy's."""
    proxy, received = recorded
    audio = (b"RIFF\r\n--XyZ-not\r\n" + bytes(range(256)) * 64) * 1800
    assert len(audio) > 25 << 20
    body = _model(_head('"model"')) + _file(audio) + b"--XyZ--\r\n"
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url + PATH, data=body, headers={"Content-Type": CT}) as resp,
    ):
        assert resp.status == 200, await resp.read()
    [got] = received
    assert got.content_type != CT
    arrived = read_form(got.content_type, got.query, got.body)
    assert arrived.values == {"model": [LLAMA]}
    assert [bytes(file.content) for file in arrived.files["file"]] == [audio]
