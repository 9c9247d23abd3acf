"""The hostile-input probe (`benchmarks.hostile_probe`) against an in-process proxy: a
fixed sample of its cases (HTTP framing, smuggling, header injection, JSON, encodings),
for a named model and for `auto`, with a recording relay between the proxy and the
emulator. Whatever the proxy answers, it is never a 5xx of its own, always in the
route's error shape or Go's own refusal, always with an `X-Request-Id`; nothing a
client smuggled reaches the backend or an answer's head; every served request leaves
exactly one usage event; the proxy answers afterwards.

The whole probe, with the resource-exhaustion part (latency ratios under attack):

    .venv/bin/python -m benchmarks.hostile_probe
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import hostile_probe as hp
from benchmarks.hostile_probe import exhaustion
from proxy.config_serving import Limits
from tests.conftest import FROZEN
from tests.support import Emulator, Proxy, ServerThread, file_usage, wait_until

SAMPLE = 300


@pytest.fixture
def relayed(
    servers: ServerThread, tmp_path: Path
) -> Iterator[tuple[Proxy, Emulator, hp.Recorder, Path]]:
    # No wait for prompt evaluation: a body of megabytes is a prompt of as many tokens.
    emulator = Emulator(servers, replace(FROZEN, prompt_tokens_per_second=0))
    recorder = hp.Recorder(emulator.port)
    servers.call(recorder.start)
    usage = file_usage(tmp_path)
    prx = Proxy(servers, [f"http://127.0.0.1:{recorder.port}"], usage=usage)
    yield prx, emulator, recorder, Path(usage.file_path)
    prx.stop()
    servers.call(recorder.stop)
    emulator.stop()


def sample() -> list[hp.Case]:
    """Every smuggling case, and a fixed sample of the others that owe an answer at
    once (a body never finished owes none)."""
    cases = [c for c in hp.all_cases() if c.answered and c.seconds >= 10]
    smuggling = [
        c for c in cases if any(w in c.name for w in ("hides request", "hidden in", "pipelined"))
    ]
    rest = [c for c in cases if c not in smuggling]
    return smuggling + random.Random(1207).sample(rest, SAMPLE)


async def test_hostile_requests_get_clear_refusals_and_leave_the_proxy_whole(
    relayed: tuple[Proxy, Emulator, hp.Recorder, Path],
) -> None:
    prx, emulator, recorder, events = relayed
    report = hp.Report()
    cases = sample()
    await hp.probe(prx.port, emulator.port, recorder, events, cases, report)
    assert not report.problems, "\n".join(report.problems[:20])
    assert sum(report.sent.values()) == len(cases)
    statuses = {s for counts in report.statuses.values() for s in counts}
    # Served and refused both, and requests relayed upstream: the probe reached each side.
    assert 200 in statuses and 400 in statuses, statuses
    assert report.served and recorder.requests


async def test_an_exhaustion_attack_runs_in_a_process_of_its_own(
    servers: ServerThread, tmp_path: Path
) -> None:
    # The victim is timed in this process's loop: an attack run here (megabytes built
    # and written) would stall it, and the stall would be counted as the proxy's. Its
    # answers reach this process only when it is stopped, and all of them then.
    emulator = Emulator(servers, FROZEN)
    prx = Proxy(servers, [emulator.url], usage=file_usage(tmp_path))
    names = [name for name, *_ in exhaustion.ATTACKS]
    before = len(exhaustion.TALLY.answered)
    attack = exhaustion.Apart(names.index("gzip bombs"), prx.port)
    try:
        assert await attack.started()
        assert await attack.go()
        assert len(exhaustion.TALLY.answered) == before
    finally:
        failure = await attack.stop()
        prx.stop()
        emulator.stop()
    assert failure == ""
    answered = exhaustion.TALLY.answered[before:]
    # A first round at least, every answer with the proxy's request id.
    assert len(answered) >= exhaustion.ATTACKS[names.index("gzip bombs")][2]
    assert all(rid for rid, _ in answered), answered


async def test_the_victim_alternates_between_the_proxy_and_the_emulator(
    servers: ServerThread, tmp_path: Path
) -> None:
    # Its chats through the proxy and straight to the emulator are taken turn about,
    # over the same stretch of an attack: the two ratios are then comparable. The
    # recorder sees both: the victim's own requests name the host it names.
    emulator = Emulator(servers, FROZEN)
    recorder = hp.Recorder(emulator.port)
    servers.call(recorder.start)
    prx = Proxy(servers, [f"http://127.0.0.1:{recorder.port}"], usage=file_usage(tmp_path))
    try:
        through, straight = await exhaustion.victims(prx.port, recorder.port, 3)
    finally:
        prx.stop()
        servers.call(recorder.stop)
        emulator.stop()
    assert len(through) == len(straight) == 3
    assert float("inf") not in through + straight
    chats = [up for up in recorder.requests if up.target == b"/api/chat"]
    by_proxy = [(b"Host", b"localhost") not in up.headers for up in chats]
    assert by_proxy == [True, False] * 3


async def test_the_bodies_the_proxy_refuses_in_a_held_bodies_attack_are_tallied(
    servers: ServerThread, emulator: Emulator
) -> None:
    # Room for one body of the attack's: the others are refused (503) while it is held,
    # and those answers are checked with the others (`check_attack_usage`).
    prx = Proxy(servers, [emulator.url], limits=Limits(max_held_body_bytes=12 << 20))
    before = len(exhaustion.TALLY.answered)
    stop, ready = asyncio.Event(), asyncio.Event()
    attack = asyncio.ensure_future(exhaustion.held_bodies(prx.port, 3, stop, ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await wait_until(lambda: len(exhaustion.TALLY.answered) - before >= 2)
    finally:
        stop.set()
        await attack
        prx.stop()
    answered = exhaustion.TALLY.answered[before:]
    # One body fits, so at least two are refused (more where one is refused before
    # another's room is let go).
    assert len(answered) >= 2 and {status for _, status in answered} == {503}, answered
    assert all(rid for rid, _ in answered), answered
