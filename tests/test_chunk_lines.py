"""proxy/chunk_lines.py: a chunked body's size lines made what llhttp reads, as Go's
chunked reader reads them, however the body's bytes are split between reads."""

from __future__ import annotations

import pytest

from proxy.chunk_lines import REFUSED_LINE, ChunkLines, go_chunk_size


def fed(pieces: list[bytes]) -> tuple[bytes, ChunkLines]:
    lines = ChunkLines()
    return b"".join(lines.feed(piece) for piece in pieces), lines


def every_split(body: bytes) -> list[list[bytes]]:
    """`body` whole, then cut in two at every place, then a byte at a time."""
    splits = [[body]] + [[body[:at], body[at:]] for at in range(1, len(body))]
    return [*splits, [body[at : at + 1] for at in range(len(body))]]


@pytest.mark.parametrize(
    ("body", "read"),
    [
        (b"5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        (b"5 \t\r\nhello\r\n0 \r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        (b'5;a b"c\xff\r\nhe\nlo\r\n0;x \r\nT: v\r\n\r\n', b"5\r\nhe\nlo\r\n0\r\n\r\n"),
        (b"000a\r\n0123456789\r\n0\r\n\r\nPOST", b"a\r\n0123456789\r\n0\r\n\r\nPOST"),
    ],
    ids=["canonical", "spaces", "extensions-and-trailer", "leading-zeros-and-after"],
)
def test_size_lines_go_reads_reach_the_parser_as_the_size_alone(body: bytes, read: bytes) -> None:
    """The data, the CRLF after it and everything after the last chunk's line go as
    they came."""
    for pieces in every_split(body):
        out, lines = fed(pieces)
        assert out == read, pieces
        assert lines.done and lines.refusal is None


def test_a_canonical_body_is_passed_on_as_it_came() -> None:
    lines = ChunkLines()
    body = b"3\r\nabc\r\n"
    assert lines.feed(body) is body


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"5\n", "chunked line ends with bare LF"),
        (b"5\r;\r\n", "invalid CR in chunked line"),
        (b"\r\n", "empty hex number for chunk length"),
        (b"5 ;a\r\n", "invalid byte in chunk length"),
        (b"1" * 17 + b"\r\n", "http chunk length too large"),
        (b"5;" + b"x" * 4093 + b"\r\n", "header line too long"),
        (b"5;" + b"x" * 5000, "header line too long"),
    ],
)
def test_a_size_line_go_refuses_reaches_the_parser_as_a_line_it_refuses(
    line: bytes, error: str
) -> None:
    """What came before the line goes as it came, then a line the parser refuses at
    its first byte in its stead (the parser reads nothing after that: later reads go
    as they come)."""
    before = b"3\r\nabc\r\n"
    for pieces in every_split(before + line):
        out, lines = fed(pieces)
        assert out[: len(before) + len(REFUSED_LINE)] == before + REFUSED_LINE, pieces
        assert lines.refusal == error and lines.done


def test_a_line_of_gos_whole_buffer_is_read() -> None:
    line = b"3;" + b"x" * (4096 - 4) + b"\r\n"
    assert len(line) == 4096
    assert go_chunk_size(line) == 3


def test_lines_that_outweigh_the_data_are_refused_as_go_refuses_them() -> None:
    """Go allows each chunk 16 bytes of lines beyond twice its data, over the whole
    body, and refuses the line past 16 KiB of excess (its data is never read)."""
    chunk = b"1;" + b"x" * 100 + b"\r\nA\r\n"  # 104 bytes of line and CRLF, 18 allowed
    count = 16 * 1024 // (104 - 18) + 1
    out, lines = fed([chunk * count])
    assert lines.refusal == "chunked encoding contains too much non-data"
    assert out == b"1\r\nA\r\n" * (count - 1) + REFUSED_LINE
    # The last chunk's line ends the body before Go checks the excess.
    out, lines = fed([chunk * (count - 1) + b"0;" + b"x" * 3000 + b"\r\n\r\n"])
    assert lines.refusal is None and out.endswith(b"0\r\n\r\n")


def test_bytes_other_than_crlf_after_the_data_are_left_to_the_parser() -> None:
    """llhttp refuses them as Go does; nothing after them is changed."""
    out, lines = fed([b"3\r\nabcXY5 \r\n"])
    assert out == b"3\r\nabcXY5 \r\n"
    assert lines.done and lines.refusal is None


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: 50\r\n",
        b"Transfer-Encoding: chunked\r\nHost: elsewhere\r\n",
        b"X-Checksum:\tab c\xff\r\nX-Empty:\r\n",
    ],
    ids=["length", "coding-and-host", "odd-values"],
)
def test_trailer_fields_go_takes_reach_the_parser_as_none(fields: bytes) -> None:
    """Go takes any well-formed field in a trailer (llhttp refuses a Content-Length or
    Transfer-Encoding there) and Ollama reads none: the parser gets an empty section,
    and what follows as it came."""
    body = b"3\r\nabc\r\n0\r\n" + fields + b"\r\nGET / HTTP/1.1\r\n"
    for pieces in every_split(body):
        out, lines = fed(pieces)
        assert out == b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n", pieces
        assert lines.done and lines.refusal is None
    # Where the request ends in what the last piece gave the parser.
    out, lines = fed([body[:5], body[5:]])
    assert lines.message_end is not None
    assert out[5 + lines.message_end - 4 :].startswith(b"\r\n\r\nGET")


@pytest.mark.parametrize(
    "fields",
    [b"Bad Name: x\r\n", b"X: a\nb\r\n", b" X: folded\r\n", b"X: \x01\r\n"],
    ids=["space-in-name", "bare-lf", "folded", "control"],
)
def test_trailer_fields_of_other_shapes_are_left_to_the_parser(fields: bytes) -> None:
    body = b"0\r\n" + fields + b"\r\n"
    for pieces in every_split(body):
        out, lines = fed(pieces)
        assert out == body, pieces
        assert lines.done and lines.refusal is None


def test_a_trailer_section_beyond_gos_buffer_is_refused() -> None:
    """Go looks for the section's end in its connection buffer (4096 bytes)."""
    out, lines = fed([b"0\r\nX: " + b"a" * 5000])
    assert out == b"0\r\n" + REFUSED_LINE
    assert lines.refusal == "http: suspiciously long trailer after chunked body"
