"""proxy/head_reads.py: a head however its reads cut it gives the parser the same bytes,
without its `Proxy-Connection` lines, and tells where it ends once."""

from __future__ import annotations

import pytest

from proxy.go_keep_alive import closes, has_token, in_lists
from proxy.head_reads import MAX_HELD, HeadReads

HEAD = (
    b"GET /api/version HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\nX: y\r\n"
    b"PROXY-CONNECTION: keep-alive\r\n\r\n"
)
BODY = b"Proxy-Connection: stays\r\n"
WANTED = b"GET /api/version HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n"


def read(pieces: list[bytes]) -> tuple[bytes, list[int]]:
    """What the parser gets from `pieces`, each a read (those after the head's end go
    as they came, as the connection sends them), and where the head ended in it."""
    reads = HeadReads()
    out, ends = b"", []
    for piece in pieces:
        if ends:
            out += piece
            continue
        given, end = reads.feed(piece)
        if end:
            ends.append(len(out) + end)
        out += given
    return out, ends


def test_every_cut_in_three_reads_reads_alike() -> None:
    raw = HEAD + BODY
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert read([raw[:i], raw[i:j], raw[j:]]) == (WANTED + BODY, [len(WANTED)]), (i, j)


def test_a_byte_at_a_time_reads_alike() -> None:
    raw = HEAD + BODY
    assert read([raw[i : i + 1] for i in range(len(raw))]) == (WANTED + BODY, [len(WANTED)])


def test_a_request_line_is_never_taken_for_the_field() -> None:
    line = b"Proxy-Connection: x HTTP/1.1\r\n\r\n"
    assert read([line[:5], line[5:]]) == (line, [len(line)])


def test_a_field_line_longer_than_the_hold_goes_as_it_came() -> None:
    start = b"GET / HTTP/1.1\r\nProxy-Connection: " + b"a" * MAX_HELD
    reads = HeadReads()
    assert reads.feed(start) == (start, 0)
    assert not reads.feed(b"a")[1]


# Go's reading (src/net/http/request.go, transfer.go, server.go) of `Connection`.
@pytest.mark.parametrize(
    ("http11", "values", "closed"),
    [
        (True, (), False),
        (True, ("close",), True),
        (True, ("Keep-Alive, CLOSE",), True),
        (True, ("foo close",), True),
        (True, ("foo\tclose",), True),
        (True, ("closed",), False),
        (True, ("keep-alive", "close"), True),
        (True, ("keep-alive", "foo close"), False),
        (False, (), True),
        (False, ("keep-alive",), False),
        (False, ("Keep-Alive, close",), False),
        (False, ("keep-alive foo",), False),
        (False, ("foo", "keep-alive"), True),
        (False, ("keepalive",), True),
    ],
)
def test_go_closes_by_connection_fields(
    http11: bool, values: tuple[str, ...], closed: bool
) -> None:
    assert closes(http11, values) is closed


def test_tokens_are_read_as_go_reads_them() -> None:
    assert has_token("a,close", "close") and not has_token("a;close", "close")
    assert in_lists(("a ,\tclose\t",), "close") and not in_lists(("a close",), "close")
