"""The upstream request head the relay writes from a client's fields: what it drops, and
that a client's thousands of fields cost no Python step each."""

from __future__ import annotations

import gc
import random
import sys
from collections import Counter
from types import FrameType
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy import relay
from proxy.protocol import HOP_BY_HOP, REQUEST_ID_HEADER

Fields = list[tuple[str, str]]


def _request(fields: Fields) -> web.Request:
    return make_mocked_request("POST", "/api/chat", headers=CIMultiDict(fields))


def _expected(fields: Fields, drop: frozenset[str], request_id: str) -> bytes:
    """The head as the relay is to write it: the fields in order, less those `drop` or a
    Connection field names (any case), then the request's id."""
    named = {
        token.strip().lower()
        for name, value in fields
        if name.lower() == "connection"
        for token in value.split(",")
    }
    kept = [f"{n}: {v}\r\n" for n, v in fields if n.lower() not in drop | named]
    return (
        "POST /api/chat HTTP/1.1\r\nHost: h:1\r\n"
        + "".join(kept)
        + f"{REQUEST_ID_HEADER}: {request_id}\r\nContent-Length: 2\r\n\r\n"
    ).encode()


def test_the_head_drops_hop_by_hop_fields_and_those_connection_names() -> None:
    """Drawn sets of fields, droppable ones among them in any case, repeated, named by
    one Connection field or several: the head keeps the others, in order."""
    rng = random.Random(7)
    droppable = [*sorted(HOP_BY_HOP - {"host"}), "Expect", REQUEST_ID_HEADER]
    kept = ["Accept", "User-Agent", "X-Custom", "X-Other", "Te-Not", "Content-Lengths"]
    for _ in range(300):
        # Few fields, as an ordinary request has, and many, past `_FEW_FIELDS`.
        names = rng.choices(droppable + kept, k=rng.choice((rng.randint(0, 12), 80)))
        fields = [(rng.choice((n, n.upper(), n.lower())), f"v{i}") for i, n in enumerate(names)]
        for _ in range(rng.randint(0, 2)):
            tokens = rng.sample([*kept, "", " x-custom "], k=2)
            at = rng.randint(0, len(fields))
            fields.insert(at, (rng.choice(("Connection", "connection")), ",".join(tokens)))
        drop = relay._NOT_FORWARDED
        head = relay.request_head(_request(fields), "h:1", 2, "rid-1", drop)
        assert head == _expected(fields, frozenset(n.decode() for n in drop), "rid-1"), fields


def test_a_connection_field_naming_many_fields_drops_each() -> None:
    fields = [(f"X-F{i}", "v") for i in range(200)]
    fields.append(("Connection", ", ".join(f"x-f{i}" for i in range(0, 200, 2))))
    head = relay.request_head(_request(fields), "h:1", 2, "rid-2")
    drop = frozenset(n.decode() for n in relay._NOT_FORWARDED)
    assert head == _expected(fields, drop, "rid-2")
    assert b"X-F1: v" in head and b"X-F0: v" not in head


def _steps(fields: Fields) -> Counter[str]:
    """The Python lines `relay.request_head` runs for a request with `fields`, by
    function: a step per field would show as counts growing with the fields. The
    garbage collector is held meanwhile: a collection falls where allocations elsewhere
    in the run put it, and runs the callbacks in `gc.callbacks` (Hypothesis registers
    one once any of its tests ran) and finalizers, Python lines that are not the
    relay's and would be counted in one window and not the other."""
    request = _request(fields)
    steps: Counter[str] = Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            steps[frame.f_code.co_name] += 1
        return trace

    collecting = gc.isenabled()
    gc.disable()
    sys.settrace(trace)
    try:
        relay.request_head(request, "h:1", 2, "rid")
    finally:
        sys.settrace(None)
        if collecting:
            gc.enable()
    return steps


def test_a_clients_thousands_of_fields_cost_no_python_step_each() -> None:
    """A head may carry thousands of fields within its limit (5,500 short ones in
    64 KiB), each copied on to the backend: past an ordinary request's few, the copy runs
    as C calls over them all (joins, searches), its Python steps as many for 2,000
    fields as for 100. The fields dropped (Content-Length and Connection here) are a
    step each, in both."""

    def fields(n: int) -> Fields:
        return [("Content-Length", "2"), ("Connection", "keep-alive")] + [
            (f"X-F{i}", "v") for i in range(n)
        ]

    assert _steps(fields(2_000)) == _steps(fields(100))


def test_a_collection_in_the_measured_window_adds_no_step() -> None:
    """With a callback in `gc.callbacks` and a collection due at every allocation, the
    steps counted are the relay's alone, as many as with neither."""
    fields = [("Connection", "keep-alive")] + [(f"X-F{i}", "v") for i in range(100)]
    alone = _steps(fields)

    def callback(phase: str, info: dict[str, int]) -> None:
        del phase, info

    threshold = gc.get_threshold()
    gc.callbacks.append(callback)
    gc.set_threshold(1)
    try:
        collected = _steps(fields)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(callback)
    assert collected == alone
