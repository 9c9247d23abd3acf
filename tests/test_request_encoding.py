"""zstd request bodies, decoded where Ollama decodes them (proxy/request_encoding.py):
routed by the model inside, bounded by the body limit once decompressed, refused with
Ollama's 400 when they are no zstd, and left as sent on the routes Ollama leaves them."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import orjson
import pytest
import zstandard

from proxy import request_encoding
from proxy.config_serving import Limits
from proxy.protocol import MODEL_HEADER
from tests.support import Emulator, Proxy, ServerThread, where_called

MODEL = "qwen2.5:7b"
LIMIT = 1 << 20
# Ollama's cap on a decoded zstd body (cloud_proxy.go, maxDecompressedBodySize).
OLLAMA_ZSTD_CAP = 20 << 20
ZSTD = {"Content-Encoding": "zstd", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def bounded(servers: ServerThread, emulator: Emulator) -> Iterator[Proxy]:
    prx = Proxy(servers, [emulator.url], limits=Limits(max_body_bytes=LIMIT))
    yield prx
    prx.stop()


def zstd(doc: object) -> bytes:
    return zstandard.ZstdCompressor().compress(orjson.dumps(doc))


async def post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.parametrize(
    ("path", "doc"),
    [
        ("/v1/responses", {"model": MODEL, "input": "Why is the sky blue?"}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
    ],
)
async def test_a_zstd_body_is_routed_by_the_model_inside(
    bounded: Proxy, path: str, doc: dict[str, object]
) -> None:
    status, headers, body = await post(bounded.url + path, zstd(doc), ZSTD)
    assert status == 200, body
    assert headers[MODEL_HEADER] == MODEL
    assert orjson.loads(body)["model"] == MODEL


async def test_auto_in_a_zstd_body_is_decided(bounded: Proxy) -> None:
    """The Codex CLI's case: `model: auto` in a compressed /v1/responses body."""
    doc = {"model": "auto", "input": "Write a Python function that reverses a list."}
    status, headers, body = await post(bounded.url + "/v1/responses", zstd(doc), ZSTD)
    assert status == 200, body
    chosen = headers[MODEL_HEADER]
    assert chosen and chosen != "auto"
    assert headers["X-Autoroute-Profile"]


async def test_a_zstd_bomb_is_refused_at_the_body_limit(bounded: Proxy) -> None:
    """A few KiB that would be 256 MiB: refused once the decompressed bytes pass the
    body limit, as a plain body over it is; the proxy goes on serving."""
    bomb = zstandard.ZstdCompressor(level=19).compress(b'{"model": "' + b"a" * (256 << 20))
    assert len(bomb) < LIMIT // 16
    status, _, body = await post(bounded.url + "/v1/responses", bomb, ZSTD)
    assert status == 413
    assert f"limit {LIMIT} bytes" in orjson.loads(body)["error"]["message"]
    doc = {"model": MODEL, "input": "Hi"}
    assert (await post(bounded.url + "/v1/responses", zstd(doc), ZSTD))[0] == 200


async def test_a_zstd_body_past_ollamas_cap_gets_its_400(
    servers: ServerThread, emulator: Emulator
) -> None:
    """Ollama reads a zstd body through a 20 MiB MaxBytesReader (cloud_proxy.go,
    `maxDecompressedBodySize`): one that decodes to more is its 400, whatever the
    proxy's own body limit (here the default, above the cap), and never reaches a
    model; one at the cap is served."""
    prx = Proxy(servers, [emulator.url])
    try:
        assert prx.config.limits.max_body_bytes > OLLAMA_ZSTD_CAP
        doc = orjson.dumps({"model": MODEL, "input": "Hi"})
        # Padded with the whitespace JSON allows after a value, to the cap and past it.
        at_cap = doc + b" " * (OLLAMA_ZSTD_CAP - len(doc))
        compressed = zstandard.ZstdCompressor().compress(at_cap + b" ")
        status, headers, body = await post(prx.url + "/v1/responses", compressed, ZSTD)
        assert status == 400, body[:200]
        assert orjson.loads(body) == {"error": "http: request body too large"}
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        compressed = zstandard.ZstdCompressor().compress(at_cap)
        status, _, body = await post(prx.url + "/v1/responses", compressed, ZSTD)
        assert status == 200, body[:200]
    finally:
        prx.stop()


@pytest.mark.parametrize("cut", [1, 4, 20])
async def test_a_zstd_body_cut_short_gets_ollamas_400(bounded: Proxy, cut: int) -> None:
    """A frame that ends before its last block (or checksum) is an unexpected EOF to
    Ollama's decoder, its 400 in gin.H: not the part decoded so far sent on, nor a
    whole first frame served when the cut falls in a second one."""
    doc = {"model": MODEL, "input": "Hi"}
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(orjson.dumps(doc))
    for data in (frame[:-cut], frame + frame[:-cut]):
        status, headers, body = await post(bounded.url + "/v1/responses", data, ZSTD)
        assert status == 400, body[:200]
        assert orjson.loads(body) == {"error": "unexpected EOF"}
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, _, body = await post(bounded.url + "/v1/responses", frame, ZSTD)
    assert status == 200, body[:200]


async def test_a_body_that_is_no_zstd_gets_ollamas_400(bounded: Proxy) -> None:
    data = orjson.dumps({"model": MODEL, "input": "Hi"})
    status, headers, body = await post(bounded.url + "/v1/responses", data, ZSTD)
    assert status == 400
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert list(orjson.loads(body)) == ["error"]  # gin.H, not OpenAI's shape


def _reserved_bit(frame: bytes) -> bytes:
    return frame[:4] + bytes([frame[4] | 0x08]) + frame[5:]


def _dictionary(frame: bytes, id_byte: int) -> bytes:
    """`frame` with a one-byte dictionary id in its header (none was written)."""
    descriptor = frame[4]
    assert descriptor & 3 == 0
    at = 5 if descriptor & 0x20 else 6  # after the window descriptor, if any
    return frame[:4] + bytes([descriptor | 1]) + frame[5:at] + bytes([id_byte]) + frame[at:]


# What klauspost/compress's zstd decoder (v1.18.3, Ollama's) says of a frame header it
# refuses (zstd/framedec.go, frameDec.reset; its errors in zstd/zstd.go), with the
# window capped at WithDecoderMaxMemory's 8 MiB: Ollama's 400 names it.
_FRAME = zstd({"model": MODEL, "input": "Hi"})
_HEADER_REFUSALS = {
    "json, no frame": (orjson.dumps({"model": MODEL}), "invalid input: magic number mismatch"),
    "json after a frame": (_FRAME + orjson.dumps({"a": 1}), "invalid input: magic number mismatch"),
    "3 bytes after a frame": (_FRAME + b"xyz", "unexpected EOF"),
    "2 bytes": (b"ab", "unexpected EOF"),
    "reserved bit": (_reserved_bit(_FRAME), "reserved bit set on frame header"),
    # Decoder.setDict, once the header is read: Ollama registers no dictionary.
    "a dictionary": (_dictionary(_FRAME, 7), "unknown dictionary"),
    # No content size written: a window descriptor (16 MiB here), not a single segment.
    "16 MiB window": (
        zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters(
                window_log=24, write_content_size=False
            )
        ).compress(orjson.dumps({"model": MODEL, "input": " " * (9 << 20)})),
        "window size exceeded",
    ),
    "9 MiB single segment": (
        zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters(window_log=24)
        ).compress(orjson.dumps({"model": MODEL, "input": " " * (9 << 20)})),
        "decompressed size exceeds configured limit",
    ),
}


async def test_a_zstd_frame_naming_dictionary_0_is_read(bounded: Proxy) -> None:
    """Go's decoder reads a dictionary id of 0 as none (Decoder.setDict)."""
    data = _dictionary(_FRAME, 0)
    status, _, body = await post(bounded.url + "/v1/responses", data, ZSTD)
    assert status == 200, body[:200]


@pytest.mark.parametrize("case", list(_HEADER_REFUSALS))
async def test_a_zstd_frame_header_ollama_refuses_gets_its_message(
    bounded: Proxy, case: str
) -> None:
    data, message = _HEADER_REFUSALS[case]
    status, headers, body = await post(bounded.url + "/v1/chat/completions", data, ZSTD)
    assert status == 400, body[:200]
    assert orjson.loads(body) == {"error": message}
    assert headers["Content-Type"] == "application/json; charset=utf-8"


async def test_routes_ollama_decodes_nothing_on_get_the_body_as_sent(
    emulator: Emulator, bounded: Proxy
) -> None:
    """Ollama's native routes read the compressed bytes as JSON, and fail: the same
    answer through the proxy."""
    data = zstd({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    direct = await post(emulator.url + "/api/chat", data, ZSTD)
    proxied = await post(bounded.url + "/api/chat", data, ZSTD)
    assert direct[0] == 400
    assert (proxied[0], proxied[2]) == (direct[0], direct[2])


async def test_the_backend_gets_the_decoded_body_without_its_encoding(
    servers: ServerThread, own_emulator: Emulator
) -> None:
    prx = Proxy(servers, [own_emulator.url])
    try:
        doc = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
        status, _, body = await post(prx.url + "/v1/chat/completions", zstd(doc), ZSTD)
        assert status == 200, body
        forwarded = own_emulator.state.last_headers
        assert "content-encoding" not in forwarded
        assert int(forwarded["content-length"]) == len(orjson.dumps(doc))
    finally:
        prx.stop()


# An empty zstd frame (9 bytes) and an empty skippable frame (8 bytes).
_EMPTY_FRAME = zstandard.ZstdCompressor(write_content_size=True).compress(b"")
_SKIPPABLE = (0x184D2A50).to_bytes(4, "little") + bytes(4)
# A body padded with the whitespace JSON allows after its value.
_SPACES = orjson.dumps({"model": MODEL, "input": "Hi"}) + b" " * 900_000


@pytest.mark.parametrize(
    "data",
    [
        # A few hundred bytes that decode to megabytes: zstd's C decoder, holding the
        # loop for as long as it writes them out.
        zstandard.ZstdCompressor(level=19).compress(_SPACES),
        # Thousands of frames before the one that holds the JSON: each walked at a
        # Python call (megabytes of them held the loop for seconds).
        _EMPTY_FRAME * 2000 + _SKIPPABLE * 2000 + _FRAME,
    ],
    ids=["small bomb", "many frames"],
)
async def test_a_zstd_body_is_decoded_off_the_loop(
    bounded: Proxy, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a zstd body costs to decode depends on what is inside, not on its size: a
    small one may decode to Ollama's 20 MiB cap, and its frames and blocks are walked
    at a Python call each. So every one is decoded in a worker thread, never on the
    event loop that answers every other client."""
    decodings = where_called(monkeypatch, request_encoding, "decoded")
    assert len(data) < 64 * 1024
    status, _, body = await post(bounded.url + "/v1/chat/completions", data, ZSTD)
    assert status < 500, body[:200]
    assert decodings == [False]
