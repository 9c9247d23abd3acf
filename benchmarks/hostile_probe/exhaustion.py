"""Resource exhaustion: attacks that hold connections, bodies or streams while a
well-behaved client keeps sending requests, its latencies as ratios against no attack."""

from __future__ import annotations

import asyncio
import base64
import functools
import multiprocessing
import random
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import orjson

from benchmarks.hostile_probe.cases_body import bomb
from benchmarks.hostile_probe.checks import alive, usage_ids
from benchmarks.hostile_probe.wire import AUTO, MODEL, Answer, exchange, request


async def victim_once(port: int) -> float:
    """One well-behaved streamed chat, start to final chunk: seconds (inf on failure)."""
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 8},
        }
    )
    began = time.perf_counter()
    answers, _, _ = await exchange(port, [request("POST", "/api/chat", body)], 30)
    if not answers or answers[0].status != 200 or b'"done":true' not in answers[0].body:
        return float("inf")
    return time.perf_counter() - began


async def victims(port: int, emulator_port: int, rounds: int) -> tuple[list[float], list[float]]:
    """`rounds` chats through the proxy and as many straight to the emulator, taken turn
    about: both over the same stretch, so that what an attack costs early on (a burst of
    uploads) weighs on both alike. Their seconds, through the proxy and straight."""
    through: list[float] = []
    straight: list[float] = []
    for _ in range(rounds):
        through.append(await victim_once(port))
        straight.append(await victim_once(emulator_port))
    return through, straight


@dataclass
class Tally:
    """The answers the attacks read (request id, status), and the streams they sent
    whole and never read: each of them is a request the proxy took, one usage event."""

    answered: list[tuple[str, int]] = field(default_factory=list)
    unread: int = 0

    def add(self, answers: list[Answer]) -> None:
        for answer in answers:
            rid = answer.header("x-request-id")
            self.answered.append((rid.decode("latin-1") if rid else "", answer.status))


TALLY = Tally()


async def in_flight(port: int) -> bool:
    """A stream of some seconds, started before an attack and read to its end while it
    runs: whether it ended with its final chunk and no error."""
    body = orjson.dumps({"model": MODEL, "prompt": "story", "options": {"num_predict": 1500}})
    answers, _, _ = await exchange(port, [request("POST", "/api/generate", body)], 120)
    TALLY.add(answers)
    return (
        bool(answers)
        and answers[0].status == 200
        and answers[0].body.rstrip().endswith(b"}")
        and b'"done":true' in answers[0].body.splitlines()[-1]
        and b'"error"' not in answers[0].body
    )


async def idle_connections(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    ready.set()
    await stop.wait()
    for _, w in conns:
        w.close()


async def _trickle(
    port: int,
    n: int,
    stop: asyncio.Event,
    ready: asyncio.Event,
    opening: bytes,
    piece: bytes,
    every: float,
) -> None:
    """`n` connections that each send `opening`, then `piece` every `every` seconds
    until `stop`: a request that never ends. In place once all are open."""
    opened = 0

    async def one() -> None:
        nonlocal opened
        _, w = await asyncio.open_connection("127.0.0.1", port)
        opened += 1
        if opened == n:
            ready.set()
        try:
            w.write(opening)
            while not stop.is_set():
                w.write(piece)
                await w.drain()
                await asyncio.sleep(every)
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    await asyncio.gather(*(one() for _ in range(n)))


async def slow_heads(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    opening = b"POST /api/chat HTTP/1.1\r\nHost: x\r\n"
    await _trickle(port, n, stop, ready, opening, b"X-A: b\r\n", 0.5)


async def slow_bodies(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    head = request("POST", "/api/chat", b"", [b"Content-Length: 1000000"], close=True)
    opening = head + b'{"model":"auto","messages":[{"role":"user","content":"'
    await _trickle(port, n, stop, ready, opening, b"a" * 100, 0.2)


def over_the_prompt_limit(path: str = "/api/chat") -> bytes:
    """A request of 8 MB to `path` whose prompt is over `limits.max_prompt_chars`."""
    big = orjson.dumps(
        {
            "model": AUTO,
            "messages": [{"role": "user", "content": "a " * (4 << 20)}],
            "options": {"num_predict": 2},
            "stream": False,
        }
    )
    return request("POST", path, big)


async def large_bodies(
    port: int, n: int, stop: asyncio.Event, ready: asyncio.Event, path: str = "/api/chat"
) -> None:
    """Bodies of 8 MB whose prompt is over `limits.max_prompt_chars`, again and again."""
    raw = over_the_prompt_limit(path)
    ready.set()
    while not stop.is_set():
        for answers, _, _ in await asyncio.gather(*(exchange(port, [raw], 60) for _ in range(n))):
            TALLY.add(answers)


async def large_explains(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    """`large_bodies` to explain, which refuses what the inference routes' limits do."""
    await large_bodies(port, n, stop, ready, "/api/autoroute/explain")


# A vision model of the emulator's: it takes the images of the passing bodies.
VISION_MODEL = "llava:7b"


@functools.cache
def passing_bodies() -> list[tuple[str, bytes]]:
    """Requests of 8 MB that the limits pass, as a vision model's users send them:
    a picture (valid base64, which Go decodes) on a chat message, on a generate, and
    as a data URL on the OpenAI route; `auto` and a named model."""
    image = base64.b64encode(random.Random(8).randbytes(6 << 20)).decode()
    ask = {"role": "user", "content": "what is in this picture?"}
    docs = [
        (
            "/api/chat",
            {
                "model": AUTO,
                "messages": [{**ask, "images": [image]}],
                "options": {"num_predict": 2},
                "stream": False,
            },
        ),
        (
            "/api/generate",
            {
                "model": VISION_MODEL,
                "prompt": ask["content"],
                "images": [image],
                "options": {"num_predict": 2},
                "stream": False,
            },
        ),
        (
            "/v1/chat/completions",
            {
                "model": AUTO,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": ask["content"]},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + image},
                            },
                        ],
                    }
                ],
                "max_tokens": 2,
            },
        ),
    ]
    return [(path, request("POST", path, orjson.dumps(doc))) for path, doc in docs]


async def warm_passing(port: int) -> None:
    """Each of `passing_bodies` once, before the victim is timed: the worker that reads
    large bodies started, the vision model loaded, as they are for a team that sends
    pictures all day."""
    for _, raw in passing_bodies():
        answers, _, _ = await exchange(port, [raw], 60)
        TALLY.add(answers)


async def large_passing(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    """Bodies of 8 MB the limits pass (`passing_bodies`, each route in turn), again and
    again: read, routed and forwarded."""
    raws = [raw for _, raw in passing_bodies()]
    ready.set()
    turn = 0
    while not stop.is_set():
        sent = [raws[(turn + i) % len(raws)] for i in range(n)]
        turn += 1
        for answers, _, _ in await asyncio.gather(*(exchange(port, [raw], 60) for raw in sent)):
            TALLY.add(answers)


async def held_bodies(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    """Bodies of 8 MB sent but their last bytes: together past what the proxy holds at
    once (`limits.max_held_body_bytes`), so later ones are refused, never the victim's.
    In place once every body is sent, or refused on the way: then they are held. A
    refused body's answer ends its exchange, and is tallied, when the proxy closes its
    connection; a held one's exchange waits for an answer until the attack ends."""
    size = 8 << 20
    head = request("POST", "/api/chat", b"", [b"Content-Length: %d" % size])
    body = b" " * (size - 10)
    sent = 0

    async def one() -> None:
        marked = False

        def mark() -> None:  # this body sent whole, or refused
            nonlocal sent, marked
            if not marked:
                marked = True
                sent += 1
                if sent == n:
                    ready.set()

        try:
            answers, _, _ = await exchange(port, [head, body, mark], 600)
        except (ConnectionError, OSError):
            return
        finally:
            mark()
        TALLY.add(answers)

    held = [asyncio.ensure_future(one()) for _ in range(n)]
    await stop.wait()
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def unread_streams(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    body = orjson.dumps({"model": MODEL, "prompt": "story", "options": {"num_predict": 100000}})
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        sock.send(request("POST", "/api/generate", body))
        socks.append(sock)
    TALLY.unread += n
    ready.set()
    await stop.wait()
    for sock in socks:
        sock.close()


async def bombs(port: int, n: int, stop: asyncio.Event, ready: asyncio.Event) -> None:
    raw = request("POST", "/api/chat", bomb(31), [b"Content-Encoding: gzip"])
    ready.set()
    while not stop.is_set():
        for answers, _, _ in await asyncio.gather(*(exchange(port, [raw], 30) for _ in range(n))):
            TALLY.add(answers)


# An attack on a port: `n` at once until `stop`, `ready` set once it is in place.
Attack = Callable[[int, int, asyncio.Event, asyncio.Event], Awaitable[None]]
# Each attack: its name, what it does, how many at once, and what is sent before it
# starts (None: nothing).
ATTACKS: list[tuple[str, Attack, int, Callable[[int], Awaitable[None]] | None]] = [
    ("idle connections", idle_connections, 500, None),
    ("slow heads", slow_heads, 200, None),
    ("slow bodies", slow_bodies, 100, None),
    ("large bodies (8 MB)", large_bodies, 8, None),
    ("large bodies to explain (8 MB)", large_explains, 8, None),
    ("passing bodies (8 MB images)", large_passing, 8, warm_passing),
    ("held bodies (8 MB)", held_bodies, 40, None),
    ("unread streams", unread_streams, 100, None),
    ("gzip bombs", bombs, 8, None),
]


# How long an attack may take to be in place (its process started, its connections
# open, its bodies sent) before the victim is timed all the same.
IN_PLACE_SECONDS = 60.0
# How long an attack may take to end once told to.
END_SECONDS = 60.0


@dataclass
class Events:
    """An attack's process and the probe, each waiting for the other: the process
    `started`, the attack to `go`, the attack `ready` (in place), the attack to `stop`."""

    started: EventType
    go: EventType
    ready: EventType
    stop: EventType


def _attack_process(index: int, port: int, events: Events, out: Connection) -> None:
    """`Apart`'s process: attack `index` of `ATTACKS`, then what it read (`TALLY`) and
    how it failed, if it did, sent back."""

    async def run() -> str:
        _, attack, n, _ = ATTACKS[index]
        stop, ready = asyncio.Event(), asyncio.Event()
        events.started.set()
        await asyncio.to_thread(events.go.wait)
        running = asyncio.ensure_future(attack(port, n, stop, ready))
        in_place = asyncio.ensure_future(ready.wait())
        await asyncio.wait([running, in_place], return_when=asyncio.FIRST_COMPLETED)
        events.ready.set()
        await asyncio.to_thread(events.stop.wait)
        stop.set()
        in_place.cancel()
        try:
            await running
        except Exception as exc:  # the probe reports it
            return repr(exc)
        return ""

    failed = asyncio.run(run())
    out.send((TALLY.answered, TALLY.unread, failed))


class Apart:
    """Attack `index` of `ATTACKS` on `port`, in a process of its own: what it spends
    (megabytes built and written, hundreds of connections opened) stalls no loop the
    victim is timed in, only the machine, as a client elsewhere would."""

    def __init__(self, index: int, port: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.events = Events(spawn.Event(), spawn.Event(), spawn.Event(), spawn.Event())
        self._results, results_in = spawn.Pipe(duplex=False)
        self._process = spawn.Process(
            target=_attack_process, args=(index, port, self.events, results_in), daemon=True
        )
        self._process.start()

    async def started(self) -> bool:
        """Whether the process is up (its imports done) within `IN_PLACE_SECONDS`."""
        return await asyncio.to_thread(self.events.started.wait, IN_PLACE_SECONDS)

    async def go(self) -> bool:
        """Start the attack: whether it is in place within `IN_PLACE_SECONDS`."""
        self.events.go.set()
        return await asyncio.to_thread(self.events.ready.wait, IN_PLACE_SECONDS)

    async def stop(self) -> str:
        """End the attack: what it read joins `TALLY`; how it failed ("" if it did not)."""
        self.events.stop.set()
        answered, unread, failure = await asyncio.to_thread(self._ended)
        TALLY.answered += answered
        TALLY.unread += unread
        return failure

    def _ended(self) -> tuple[list[tuple[str, int]], int, str]:
        try:
            if self._results.poll(END_SECONDS):
                sent: tuple[list[tuple[str, int]], int, str] = self._results.recv()
                return sent
            return [], 0, f"no end after {END_SECONDS:g} s"
        except EOFError:
            return [], 0, f"its process exited with {self._process.exitcode}"
        finally:
            self._process.join(END_SECONDS)
            if self._process.exitcode is None:
                self._process.kill()


@dataclass
class Watched:
    """The processes an attack may load: the proxy's pid and the emulator's."""

    proxy: int
    emulator: int


async def exhaustion(
    port: int, emulator_port: int, pids: Watched, only: list[str], rounds: int = 15
) -> list[str]:
    """Each attack in turn while the victim chats through the proxy and straight to the
    emulator by turns (`victims`; straight: what the machine and the backend alone do to
    it); ratios against the victim with no attack, CPU of each process over the attack,
    the proxy's RSS."""
    from benchmarks.servers import cpu_seconds, rss_kib

    problems: list[str] = []
    await victims(port, emulator_port, 3)  # warm
    alone, direct_alone = await victims(port, emulator_port, rounds)
    base, direct_base = statistics.median(alone), statistics.median(direct_alone)
    print(
        f"exhaustion: victim alone: median {base * 1000:.1f} ms through the proxy, "
        f"{direct_base * 1000:.1f} ms straight to the emulator, over {rounds} chats"
    )
    for index, (name, _, n, warm) in enumerate(ATTACKS):
        if only and not any(word in name for word in only):
            continue
        if warm is not None:
            await warm(port)
        attack = Apart(index, port)
        if not await attack.started():
            problems.append(f"[exhaustion] {name}: no process after {IN_PLACE_SECONDS:g} s")
        flight = asyncio.ensure_future(in_flight(port))
        await asyncio.sleep(0.2)
        began = time.monotonic()
        if not await attack.go():
            problems.append(f"[exhaustion] {name}: not in place after {IN_PLACE_SECONDS:g} s")
        in_place = time.monotonic() - began
        # The attack in place, a second for what it set going to settle: the victim is
        # timed against the attack as it stands, not the attack's start.
        await asyncio.sleep(1.0)
        rss_before = rss_kib(pids.proxy)
        cpu = cpu_seconds(pids.proxy), cpu_seconds(pids.emulator), time.monotonic()
        during, direct = await victims(port, emulator_port, rounds)
        spent = (
            (cpu_seconds(pids.proxy) - cpu[0]) / (time.monotonic() - cpu[2]),
            (cpu_seconds(pids.emulator) - cpu[1]) / (time.monotonic() - cpu[2]),
        )
        failure = await attack.stop()
        if failure:
            problems.append(f"[exhaustion] {name}: attack did not end ({failure})")
        failed = sum(1 for t in during if t == float("inf"))
        ok = [t for t in during if t != float("inf")]
        ratio = statistics.median(ok) / base if ok else float("inf")
        print(
            f"exhaustion: {name} x{n}: victim through the proxy median {ratio:.2f}x alone "
            f"(worst {max(ok, default=0) / base:.2f}x, {failed} of {rounds} failed), "
            f"straight to the emulator {statistics.median(direct) / direct_base:.2f}x; "
            f"CPU proxy {spent[0]:.0%} emulator {spent[1]:.0%}; "
            f"proxy RSS {rss_before // 1024} -> {rss_kib(pids.proxy) // 1024} MiB; "
            f"in place in {in_place:.1f} s",
            flush=True,
        )
        if failed:
            problems.append(f"[exhaustion] {name}: {failed} of {rounds} victim requests failed")
        if not await flight:
            problems.append(f"[exhaustion] {name}: the stream in flight did not end whole")
        if not await alive(port):
            problems.append(f"[exhaustion] {name}: the proxy does not answer afterwards")
    return problems


async def check_attack_usage(events: Path) -> list[str]:
    """One usage event for each answer the attacks read that the proxy served, none
    more than one for any, and one for each stream sent whole and never read."""
    served = [rid for rid, status in TALLY.answered if status == 200]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        counts = usage_ids(events)
        streams = _unread_events(events)
        if all(counts[rid] for rid in served) and streams >= TALLY.unread:
            break
        await asyncio.sleep(0.2)
    counts, streams = usage_ids(events), _unread_events(events)
    problems = [
        f"[exhaustion usage] {rid}: {counts[rid]} events" for rid in served if counts[rid] != 1
    ]
    problems += [
        f"[exhaustion usage] {rid}: {counts[rid]} events"
        for rid, _ in TALLY.answered
        if counts[rid] > 1
    ]
    if streams != TALLY.unread:
        problems.append(f"[exhaustion usage] {streams} events for {TALLY.unread} unread streams")
    print(
        f"exhaustion usage: {len(TALLY.answered)} answers read ({len(served)} served), "
        f"{TALLY.unread} streams never read: {streams} events for those"
    )
    return problems


def _unread_events(events: Path) -> int:
    """Events of the unread streams: /api/generate streams cancelled by their client
    (the streams in flight are read to their end)."""
    if not events.exists():
        return 0
    found = 0
    for line in events.read_bytes().splitlines():
        event = orjson.loads(line)
        if event.get("endpoint") == "/api/generate" and event["outcome"].get("cancelled"):
            found += 1
    return found
