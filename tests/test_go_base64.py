"""api.ImageData and /v1 image data URLs as Go's base64.StdEncoding decodes them: line
breaks anywhere are skipped, the padding is required, and a refusal names the input
byte Go's decoder stopped at (counted in the string as sent, line breaks included)."""

from __future__ import annotations

import base64

import pytest

from proxy import go_requests, go_types
from proxy.emulator.inference import Refusal
from proxy.emulator.openai_routes import decode_image_url
from proxy.openai_chat import INVALID_IMAGE

PNG = base64.b64encode(bytes(range(256)) * 3).decode()


@pytest.mark.parametrize(
    "data",
    [
        "",
        "aGVsbG8=",
        "aGVsbA==",
        "aGVs\nbG8=",
        "aGVsbG8=\n",
        "aGVsbA=\r\n=",
        "\r\naGVsbG8=",
        # What Python's base64.encodebytes and MIME encoders write: a line break every
        # 76 characters.
        base64.encodebytes(bytes(range(256)) * 3).decode(),
        PNG,
    ],
)
def test_what_go_decodes_is_taken(data: str) -> None:
    assert go_types.base64_error(data) is None
    assert go_requests.refusal("/api/generate", {"model": "m", "images": [data]}) is None
    doc = {"model": "m", "messages": [{"role": "user", "content": "", "images": [data]}]}
    assert go_requests.refusal("/api/chat", doc) is None


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        # Offsets as Go's decodeQuantum computes them (base64.go): an illegal byte is
        # itself the offset; a quantum cut short, where it started.
        ("aGVsbG8@", 7),
        ("aGVs\nbG8@", 8),
        ("AAA", 0),
        ("AAAAAAA", 4),
        ("AAAA\nAAA", 5),
        ("A===", 1),
        ("====", 0),
        ("aGVsbA=", 7),
        ("aGVsbA=x", 6),
        ("aGVsbG8=aGVs", 8),
        ("aGVsbG8=\nx", 9),
        ("aGVs bG8=", 4),
        (PNG[:-1], len(PNG) - 4),
    ],
)
def test_what_go_refuses_names_the_byte_go_names(data: str, offset: int) -> None:
    message = f"illegal base64 data at input byte {offset}"
    assert go_types.base64_error(data) == offset
    assert go_requests.refusal("/api/generate", {"model": "m", "images": [data]}) == message


def test_a_v1_image_data_url_is_read_as_go_reads_it() -> None:
    wrapped = base64.encodebytes(bytes(range(256)) * 3).decode()
    assert decode_image_url("data:image/png;base64," + wrapped) == wrapped
    with pytest.raises(Refusal) as refused:
        decode_image_url("data:image/png;base64," + PNG[:-1])
    assert (refused.value.status, str(refused.value)) == (400, INVALID_IMAGE)
