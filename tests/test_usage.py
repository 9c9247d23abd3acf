"""Usage events without external services: the spool, the default JSONL file, the
in-memory stats, queue overflow, shutdown spill, and export."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import final_chunk, go_json
from proxy.cli import main
from proxy.config_services import Usage
from proxy.config_serving import Limits
from proxy.emulator import EmulatorSettings
from proxy.outcome import Decided, Outcome, Served
from proxy.usage import event as ev
from proxy.usage.export import file_events
from proxy.usage.file_sink import FileSink, feedback_path
from proxy.usage.pipeline import UsagePipeline
from proxy.usage.postgres import PostgresSink, _storable
from proxy.usage.runner import BATCH_BYTES, Record, SinkRunner, spool_line
from proxy.usage.spool import Spool
from proxy.usage.stats import MAX_KEYS, MemoryStats, from_postgres
from selector_model import outcome, usage_event
from selector_model.usage_event import Answer, Client, Feedback, Logged, UsageEvent
from tests.support import (
    Emulator,
    Proxy,
    ServerThread,
    error_text,
    file_usage,
    free_port,
    where_called,
)
from tests.usage_services import Database, events_of, read_bytes, wait_for

MODEL = "llama3.1:8b"
ROOT = Path(__file__).resolve().parent.parent


def test_spool_replays_in_order_across_a_crash_and_skips_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "sink", segment_bytes=64, fsync="always", fsync_interval=1)
    spool.append([b"u%d\n" % n for n in range(10)])  # several 64-byte segments
    lines, cursor = spool.read(4)
    assert lines == [b"u0", b"u1", b"u2", b"u3"]
    spool.commit(cursor, len(lines))
    lines, _ = spool.read(4)  # read but not committed: the "crash" comes first
    seg_files = sorted(spool.dir.glob("*.seg"))
    with open(seg_files[-1], "ab") as f:
        f.write(b'{"torn')  # a write cut by the crash
    spool.close()

    again = Spool(tmp_path, "sink", segment_bytes=64, fsync="always", fsync_interval=1)
    assert again.pending == 6
    again.append([b"u10\n"])
    seen = []
    while True:
        lines, cursor = again.read(3)
        if not lines:
            break
        again.commit(cursor, len(lines))
        seen += lines
    assert seen == [b"u%d" % n for n in range(4, 11)]
    assert again.pending == 0


def test_a_spool_replayed_to_its_end_keeps_no_record_on_disk(tmp_path: Path) -> None:
    """Delivered records (logged prompts among them) do not stay on disk until the next
    outage: neither the segment being appended to nor one a previous process left."""

    def drain(spool: Spool) -> list[bytes]:
        seen: list[bytes] = []
        while True:
            lines, cursor = spool.read(2)
            if not lines:
                return seen
            spool.commit(cursor, len(lines))
            seen += lines

    spool = Spool(tmp_path, "sink", 1 << 20, "never", 1)
    spool.append([b"u1\n", b"u2\n", b"u3\n"])
    assert drain(spool) == [b"u1", b"u2", b"u3"]
    assert list(spool.dir.glob("*.seg")) == []
    spool.append([b"u4\n"])  # the next outage: a new segment, read from its start
    spool.close()

    again = Spool(tmp_path, "sink", 1 << 20, "never", 1)
    assert again.pending == 1
    assert drain(again) == [b"u4"]
    assert list(again.dir.glob("*.seg")) == []
    again.append([b"u5\n"])
    again.close()
    last = Spool(tmp_path, "sink", 1 << 20, "never", 1)
    assert last.pending == 1 and drain(last) == [b"u5"]
    last.close()


def _stored(rid: str, second: int) -> bytes:
    return usage_event.read({"request_id": rid, "ts": f"2026-01-01T00:00:{second:02d}Z"}).line()


def _rating_line(rid: str, rating: float, second: int) -> bytes:
    at = f"2026-01-01T00:01:{second:02d}Z"
    given = Feedback(feedback_id=f"f-{rid}", request_id=rid, rating=rating, ts=at)
    return orjson.dumps(given.document())


def test_a_torn_line_in_the_usage_files_is_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash cuts a write short and the next start appends after it: the cut line,
    glued to the line after it, is one unreadable line in the middle of the file (of
    events or of ratings). Export gives every event it can read, with its rating, and
    says on stderr how many lines it skipped."""
    path = tmp_path / "events.jsonl"
    events = [_stored(f"r{n}", n) for n in range(4)]
    path.write_bytes(events[0] + b"\n" + events[1][:40] + events[2] + b"\n" + events[3] + b"\n")
    ratings = [_rating_line("r0", 0.5, 0), _rating_line("r3", 1.0, 1)]
    feedback_path(path).write_bytes(ratings[0][:30] + ratings[0] + b"\n" + ratings[1] + b"\n")
    monkeypatch.setenv("AUTOROUTE_USAGE__FILE_PATH", str(path))
    monkeypatch.setenv("AUTOROUTE_LOGGING__JSON", "false")
    out = tmp_path / "export.jsonl"
    assert main(["usage", "export", "--since", "2025-01-01", "-o", str(out)]) == 0
    exported = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(e["request_id"], e["rating"]) for e in exported] == [("r0", None), ("r3", 1.0)]
    err = capsys.readouterr().err
    assert f"{path}: 2 lines are no usage event or rating: skipped" in err
    assert "autoroute: exported 2 usage events" in err


async def test_the_file_sink_ends_a_torn_last_line_before_it_appends(tmp_path: Path) -> None:
    """A file a crash left ending mid-line gets a newline first: the torn tail stays one
    unreadable line, the events written after it whole."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(_stored("r0", 0) + b"\n" + _stored("r1", 1)[:40])
    feedback_path(path).write_bytes(_rating_line("r0", 0.5, 0)[:30])
    sink = FileSink(str(path), max_bytes=1 << 20, backups=1)
    event = usage_event.read({"request_id": "r2", "ts": "2026-01-01T00:00:02Z"})
    rating = Feedback(request_id="r2", rating=1.0, ts="2026-01-01T00:01:02Z")
    await sink.write([Record(event, event.line()), Record(rating, orjson.dumps(rating.document()))])
    await sink.close()
    read = list(file_events(path))
    assert read[1] is None
    assert [e.request_id if e else None for e in read] == ["r0", None, "r2"]
    assert read[2] is not None and read[2].rating == 1.0
    # A file that ends its last line, or is empty, gets no line of its own.
    sink = FileSink(str(path), max_bytes=1 << 20, backups=1)
    await sink.write([Record(event, event.line())])
    await sink.close()
    assert path.read_bytes().endswith(b"\n" + event.line() + b"\n" + event.line() + b"\n")
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    sink = FileSink(str(empty), max_bytes=1 << 20, backups=1)
    await sink.write([Record(event, event.line())])
    await sink.close()
    assert empty.read_bytes() == event.line() + b"\n"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='\\u0\x00a"', max_size=16))
def test_postgres_stores_an_events_nuls_as_u_fffd_and_nothing_else_changed(text: str) -> None:
    """Whatever runs of backslashes stand before them (a `\\u0000` a client wrote as
    text is no NUL)."""
    doc = {"prompt": text, text: [text, 1.5]}
    stored = orjson.loads(_storable(orjson.dumps(doc)))
    nul_free = text.replace("\x00", "\ufffd")
    assert stored == {"prompt": nul_free, nul_free: [nul_free, 1.5]}


def test_a_second_process_on_the_same_spool_dir_takes_another_slot(tmp_path: Path) -> None:
    first = Spool(tmp_path, "postgres", 1 << 20, "never", 1)
    second = Spool(tmp_path, "postgres", 1 << 20, "never", 1)
    assert first.dir != second.dir and second.dir.name == "postgres.1"
    first.close()
    second.close()


@pytest.fixture
def file_proxy(servers: ServerThread, own_emulator: Emulator, tmp_path: Path) -> Proxy:
    usage = file_usage(tmp_path, log_prompts=True)
    return Proxy(servers, [own_emulator.url], usage=usage)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"request_id": "a\r\nb", "rating": 1}, "request_id must be the X-Request-Id"),
        ({"request_id": "x" * 129, "rating": 1}, "request_id must be the X-Request-Id"),
        ({"request_id": "", "rating": 1}, "request_id must be the X-Request-Id"),
        ({"request_id": 5, "rating": 1}, "request_id must be the X-Request-Id"),
        ({"request_id": "abc", "rating": 1.5}, "rating must be between 0"),
        ({"request_id": "abc", "rating": True}, "rating must be a number"),
        ([], "body must be a JSON object"),
        # Not JSON: Go's decoding error, as the proxy's other endpoints answer it.
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b'{"request_id": "abc", "rating": 1,}', "invalid character '}' looking for beginning"),
        (b'{"request_id": "abc", "rating": ', "unexpected EOF"),
        (b"", "missing request body"),
    ],
)
async def test_feedback_that_cannot_name_an_answer_is_a_400(
    file_proxy: Proxy, body: object, error: str
) -> None:
    """Feedback names the X-Request-Id of an answer: an id no answer could carry (a line
    break, over 128 characters) is refused, as a rating outside [0, 1] is."""
    try:
        async with (
            aiohttp.ClientSession(file_proxy.url) as http,
            http.post(
                "/api/autoroute/feedback",
                **({"data": body} if isinstance(body, bytes) else {"json": body}),
            ) as resp,
        ):
            assert resp.status == 400
            assert orjson.loads(await resp.read())["error"].startswith(error)
    finally:
        file_proxy.stop()


async def _generated(http: aiohttp.ClientSession, count: int) -> list[str]:
    """`count` generate requests one after another (prompts p0, p1, ...): the request
    ids they were answered with."""
    ids = []
    for n in range(count):
        body = {"model": MODEL, "prompt": f"p{n}", "stream": False}
        async with http.post("/api/generate", json=body) as resp:
            ids.append(resp.headers["X-Request-Id"])
    return ids


async def test_default_sink_is_a_jsonl_file_and_stats_come_from_memory(
    file_proxy: Proxy,
) -> None:
    path = file_proxy.config.usage.file_path
    try:
        async with aiohttp.ClientSession(file_proxy.url) as http:
            ids = await _generated(http, 5)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post("/v1/chat/completions", json=body) as resp:
                ids.append(resp.headers["X-Request-Id"])
            async with http.post(
                "/api/autoroute/feedback", json={"request_id": ids[0], "rating": 0.5}
            ) as resp:
                assert resp.status == 202

            async def written() -> bool:
                return len((await read_bytes(path)).splitlines()) == 6

            await wait_for(written, what="6 events in the file")
            events = [orjson.loads(line) for line in (await read_bytes(path)).splitlines()]
            assert [e["request_id"] for e in events] == ids
            assert events[0]["prompt"] == "p0" and events[0]["response"] is None
            assert events[0]["prompt_sha256"] == hashlib.sha256(b"p0").hexdigest()
            assert events[5]["endpoint"] == "/v1/chat/completions"
            assert events[5]["prompt_sha256"] == hashlib.sha256(b"hi").hexdigest()

            async def rated() -> bool:
                # The rating counts in memory as soon as the dispatcher sees it; the file
                # takes it with the sinks' next batch, and counts it once that is written.
                async with http.get("/api/autoroute/stats") as resp:
                    stats = orjson.loads(await resp.read())
                rating = stats["models"][0]["ratings"]["count"] == 1
                return bool(rating and stats["sinks"]["file"]["written"] == 7)

            await wait_for(rated, what="the rating, in memory and in the file")
            async with http.get("/api/autoroute/stats") as resp:
                stats = orjson.loads(await resp.read())
        assert stats["source"] == "memory"
        (entry,) = stats["models"]
        assert entry["served_model"] == MODEL and entry["requests"] == 6
        assert entry["errors"] == 0 and entry["ratings"] == {"count": 1, "mean": 0.5}
        assert entry["ttfc_ms"]["p50"] <= entry["ttfc_ms"]["p95"]
        assert entry["tokens_per_s"] > 0
        assert stats["sinks"]["file"]["written"] == 7  # 6 events and the feedback
    finally:
        file_proxy.stop()

    # Export reads the same file back (jsonl and parquet), with the rating joined.
    out = Path(path).with_name("export.jsonl")
    config = Path(path).with_name("c.yaml")
    config.write_text(f"usage: {{file_path: {path}}}\n")
    await _autoroute("--config", str(config), "usage", "export", "--since", "1h", "-o", str(out))
    exported = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [e["request_id"] for e in exported] == ids and exported[0]["rating"] == 0.5
    parquet = Path(path).with_name("export.parquet")
    await _autoroute(
        "--config", str(config), "usage", "export", "--format", "parquet", "-o", str(parquet)
    )
    table = pq.read_table(parquet).to_pylist()
    assert [r["request_id"] for r in table] == ids
    assert table[0]["outcome.status"] == 200 and table[0]["client.user"] is None


async def test_a_method_an_inference_route_does_not_serve_leaves_no_event(
    file_proxy: Proxy,
) -> None:
    """A GET, HEAD, OPTIONS, PUT or DELETE on a path that runs a model with a POST
    runs nothing (the backend answers gin's 405): no usage event, as for `/api/show`;
    the request that does run one has its event, the one in the file."""
    path = file_proxy.config.usage.file_path
    try:
        async with aiohttp.ClientSession(file_proxy.url) as http:
            for method, route in [
                ("GET", "/api/chat"),
                ("HEAD", "/api/generate"),
                ("OPTIONS", "/api/chat"),
                ("PUT", "/v1/chat/completions"),
                ("DELETE", "/api/embed"),
                ("GET", "/v1/messages"),
            ]:
                async with http.request(method, route) as resp:
                    assert resp.status == 405
            body = {"model": MODEL, "prompt": "p", "stream": False}
            async with http.post("/api/generate", json=body) as resp:
                ran = resp.headers["X-Request-Id"]

            async def written() -> bool:
                return bool(await read_bytes(path))

            await wait_for(written, what="an event in the file")
    finally:
        file_proxy.stop()  # flushes every event queued
    events = [orjson.loads(line) for line in (await read_bytes(path)).splitlines()]
    assert [e["request_id"] for e in events] == [ran]


async def _autoroute(*args: str) -> None:
    """The real command line, in its own process."""
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "proxy.cli", *args], check=True, cwd=ROOT
    )


async def test_a_full_queue_spills_to_disk_and_nothing_is_lost(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    # The dispatcher never wakes while the requests run (no batch fills, no interval
    # passes), however slow the machine: the queue holds the first 2, the other 6
    # overflow. Stopping the proxy drains the 2.
    usage = Usage(
        file_path=str(tmp_path / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
        queue_size=2,
        batch_size=100,
        flush_interval_seconds=3600,
    )
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    try:
        async with aiohttp.ClientSession(prx.url) as http:
            ids = await _generated(http, 8)
            async with http.get("/api/autoroute/stats") as resp:
                stats = orjson.loads(await resp.read())
        assert stats["overflowed"] == 6  # the queue holds 2
        sink = stats["sinks"]["file"]
        assert sink["spilled"] == 6 and sink["dropped"] == 0
    finally:
        prx.stop()
    lines = (await read_bytes(usage.file_path)).splitlines()
    # The 2 queued events follow the spilled ones: what overflowed first is written first.
    assert [orjson.loads(line)["request_id"] for line in lines] == ids[2:] + ids[:2]


async def test_shutdown_with_the_database_down_spills_what_is_left(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    usage = Usage(
        postgres_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        spool_dir=str(tmp_path / "spool"),
        flush_interval_seconds=0.02,
        retry_backoff_seconds=0.05,
    )
    prx = Proxy(servers, [own_emulator.url], usage=usage)
    async with aiohttp.ClientSession(prx.url) as http:
        for n in range(5):
            body = {"model": MODEL, "prompt": f"p{n}", "stream": False}
            async with http.post("/api/generate", json=body) as resp:
                assert resp.status == 200
    prx.stop()  # what SIGTERM runs: the drain cannot reach PostgreSQL, so it spills
    spool = Spool(tmp_path / "spool", "postgres", 1 << 20, "never", 1)
    assert spool.pending == 5
    lines, _ = spool.read(10)
    assert all(orjson.loads(line[1:])["outcome"]["status"] == 200 for line in lines)
    spool.close()


class _DownSink:
    name = "down"

    async def write(self, records: Sequence[Record]) -> None:
        raise ConnectionRefusedError("the database is down")

    async def close(self) -> None:
        pass


async def test_a_spill_cancelled_while_the_disk_thread_is_busy_still_lands(
    tmp_path: Path,
) -> None:
    """A shutdown cancels the dispatcher while its spill waits behind another disk job:
    the records are out of the buffer by then, so the spill must run all the same."""
    runner = SinkRunner(_DownSink(), Usage(spool_dir=str(tmp_path)))
    runner.start()
    first, second = (
        Record(e, orjson.dumps(e.document())) for e in (_event(1, MODEL), _event(2, MODEL))
    )
    await runner.accept([first])

    async def failed() -> bool:
        return runner.counters.failures > 0

    await wait_for(failed, what="the sink's first failure")
    gate = threading.Event()
    busy = asyncio.get_running_loop().run_in_executor(runner._io, gate.wait)  # the disk thread
    spilling = asyncio.create_task(runner.accept([second]))
    await asyncio.sleep(0.05)
    spilling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await spilling
    gate.set()
    await busy
    await runner.stop()
    spool = Spool(tmp_path, "down", 1 << 20, "never", 1)
    lines, _ = spool.read(10)
    assert sorted(orjson.loads(line[1:])["request_id"] for line in lines) == ["r1", "r2"]
    spool.close()


class _BytesBoundSink:
    """A sink that takes a batch of more than `BATCH_BYTES` of events in more than the
    write timeout (a failure, as the runner sees it), and keeps what it took."""

    name = "bytes"

    def __init__(self) -> None:
        self.got: list[str] = []

    async def write(self, records: Sequence[Record]) -> None:
        if len(records) > 1 and sum(len(r.line) for r in records) > BATCH_BYTES:
            raise TimeoutError
        self.got.extend(str(r.event.request_id) for r in records if isinstance(r.event, UsageEvent))

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("spooled", [False, True], ids=["from memory", "from the spool"])
async def test_events_with_long_logged_prompts_do_not_hold_the_events_behind_them(
    tmp_path: Path, spooled: bool
) -> None:
    """Batches are bounded in bytes too: events whose prompts are long (a client's
    choice) go in batches a sink writes in time, not in one it times out on, at every
    retry from the spool, with every event behind it held up."""
    prompt = "x" * (BATCH_BYTES // 4)
    records = []
    for n in range(13):
        event = _event(n, MODEL)
        if n < 8:
            event.logged = Logged(prompt)
        records.append(Record(event, orjson.dumps(event.document())))
    if spooled:  # as a previous run left them, the sink down
        left = Spool(tmp_path, "bytes", 1 << 30, "never", 1)
        left.append([spool_line(r) for r in records])
        left.close()
    runner = SinkRunner(_BytesBoundSink(), Usage(spool_dir=str(tmp_path)))
    if not spooled:
        await runner.accept(records)
    for _ in range(len(records)):  # a pump per record at most: each writes one or more
        if await runner.pump() and not runner.spool.pending:
            break
    await runner.stop()
    assert runner.sink.got == [f"r{n}" for n in range(13)]  # type: ignore[attr-defined]


class _SwitchedSink:
    """A sink that is down until `up` is set, and keeps what it is given."""

    name = "switched"

    def __init__(self) -> None:
        self.up = False
        self.got: list[str] = []

    async def write(self, records: Sequence[Record]) -> None:
        if not self.up:
            raise ConnectionRefusedError("the database is down")
        self.got.extend(str(r.event.request_id) for r in records if isinstance(r.event, UsageEvent))

    async def close(self) -> None:
        pass


async def test_events_the_spool_cannot_take_wait_in_memory_up_to_the_sink_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink down and the spool unwritable (no file descriptor left): events wait in
    memory, the newest beyond `sink_buffer` dropped and counted, and the sink takes the
    rest once it is back."""
    sink = _SwitchedSink()
    runner = SinkRunner(
        sink,
        Usage(
            spool_dir=str(tmp_path),
            sink_buffer=3,
            retry_backoff_seconds=0.01,
            retry_backoff_max_seconds=0.02,
        ),
    )

    def no_descriptors(lines: list[bytes]) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(runner.spool, "append", no_descriptors)
    runner.start()
    records = [Record(e, orjson.dumps(e.document())) for e in (_event(n, MODEL) for n in range(5))]
    await runner.accept(records[:1])

    async def failed() -> bool:
        return runner.counters.failures > 0

    await wait_for(failed, what="the sink's first failure")
    await runner.accept(records[1:])
    assert runner.snapshot()["buffered"] == 3 and runner.counters.dropped == 2
    assert runner.snapshot()["spool_error"] == "OSError: [Errno 24] Too many open files"
    sink.up = True

    async def written() -> bool:
        return len(sink.got) == 3

    await wait_for(written, what="the held events written")
    assert sink.got == ["r0", "r1", "r2"]
    await runner.stop()
    assert runner.counters.dropped == 2 and runner.snapshot()["buffered"] == 0


def _event(n: int, model: str, backend: str | None = "gpu-a") -> UsageEvent:
    outcome = Answer(status=200, ttfc_ms=1.0, total_ms=2.0, eval_count=10, eval_duration=1_000_000)
    return UsageEvent(request_id=f"r{n}", served_model=model, backend=backend, outcome=outcome)


def test_memory_stats_stay_within_their_caps_whatever_the_model_names() -> None:
    """A client naming a new model on every request (each answered 404 with its own
    served_model) must not add a window per request; a busy model keeps its window."""
    stats = MemoryStats(window=100)
    for n in range(100_000):
        model = "llama3.1:8b" if n % 2 else f"no-such-model-{n}"
        stats.add(_event(n, model))
        stats.rate(f"r{n}", 1.0, None)
    assert len(stats.events) <= MAX_KEYS
    assert sum(len(w) for w in stats.events.values()) == stats.size <= stats.total
    assert len(stats.recent) <= stats.total and len(stats.ratings) <= stats.total
    busy = stats.events[("llama3.1:8b", "gpu-a")]
    assert len(busy) == 100 and busy[-1].request_id == "r99999"
    rated = {e.request_id for w in stats.events.values() for e in w}
    assert set(stats.ratings) <= rated  # a rating leaves with its event
    summary = {e["served_model"]: e for e in stats.summary()}
    assert summary["llama3.1:8b"]["requests"] == 100
    assert summary["llama3.1:8b"]["ratings"] == {"count": 100, "mean": 1.0}


def test_requests_of_another_key_carrying_an_id_do_not_push_the_keys_own_out_of_stats() -> None:
    """A client id names the latest `window` requests that carried it: another key
    sending many requests with Ann's id forgets its own oldest, not Ann's, whose rating
    by that id still reaches her request."""
    stats = MemoryStats(window=100)

    def carrying(n: int, key: str) -> UsageEvent:
        event = _event(n, "llama3.1:8b" if key == "ann" else "qwen2.5:7b")
        event.client = Client(api_key_id=key, api_key_hash=f"{key}-hash")
        event.client_request_id = "c1"
        return event

    stats.add(carrying(0, "ann"))
    for n in range(1, 150):
        stats.add(carrying(n, "bob"))
    stats.rate("c1", 0.0, "ann", "ann-hash")
    summary = {e["served_model"]: e for e in stats.summary()}
    assert summary["llama3.1:8b"]["ratings"] == {"count": 1, "mean": 0.0}
    assert summary["qwen2.5:7b"]["ratings"] == {"count": 0, "mean": None}


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=-1e10, max_value=1e10, allow_nan=False))
def test_event_times_are_written_as_datetime_writes_them(epoch: float) -> None:
    """`rfc3339` (the microseconds rounded by hand, a second's text made once) writes
    what datetime's isoformat writes, carries and ties included."""
    for value in (epoch, 1764758400.9999995, 1764758400.0000005, 0.9999996, -1.9999996):
        expected = datetime.fromtimestamp(value, UTC).isoformat(timespec="microseconds")
        assert ev.rfc3339(value) == expected.replace("+00:00", "Z")


# One model as clients spell it (case, registry and namespace), and a cloud model,
# which Ollama never reads: its name is the provider's, kept as it is.
_SPELLINGS = ("LLAMA3.2:3B", "registry.ollama.ai/library/llama3.2:3b", "llama3.2:3b")


def _spelled(now: str) -> list[UsageEvent]:
    outcome = Answer(status=200, ttfc_ms=1.0, total_ms=2.0, eval_count=10, eval_duration=1_000_000)
    local = [
        UsageEvent(request_id=f"r{n}", ts=now, served_model=name, backend="gpu-a", outcome=outcome)
        for n, name in enumerate(_SPELLINGS)
    ]
    cloud = UsageEvent(
        request_id="c",
        ts=now,
        served_model="GPT-4o-Mini",
        backend="cloud:openai",
        provider="openai",
        outcome=outcome,
    )
    return [*local, cloud]


def _rows(summary: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(e["served_model"], e["backend"]): e["requests"] for e in summary}


_ROWS = {("llama3.2:3b", "gpu-a"): 3, ("GPT-4o-Mini", "cloud:openai"): 1}


def test_memory_stats_have_one_row_per_model_however_it_was_spelled() -> None:
    """Ollama reads a model name case-insensitively, with or without its registry and
    namespace: every spelling is one model, one row, named as Ollama reads it (as the
    metrics label it)."""
    stats = MemoryStats(window=100)
    for event in _spelled(ev.rfc3339(datetime.now(UTC).timestamp())):
        stats.add(event)
    assert _rows(stats.summary()) == _ROWS


async def test_postgres_stats_have_one_row_per_model_however_it_was_spelled(
    database: Database,
) -> None:
    """The same from PostgreSQL, where the events keep the client's spelling."""
    sink = PostgresSink(database.dsn, 2)
    try:
        events = _spelled(ev.rfc3339(datetime.now(UTC).timestamp()))
        await sink.write([Record(e, e.line()) for e in events])
        summary = await from_postgres(await sink.ensure_pool(), 3600)
    finally:
        await sink.close()
    assert _rows(summary) == _ROWS


# Requests of three keys: ann's, bob's, one by ann's name from before keys had hashes
# and one by a later key given ann's name (another hash).
_ANN = ("ann", "ann-hash")
_OWNERS = (_ANN, _ANN, ("bob", "bob-hash"), ("ann", None), ("ann", "new-hash"))
_MODELS = ("llama3.1:8b", "llama3.1:8b", "llama3.1:8b", "qwen2.5:7b", "qwen2.5:7b")


def _keyed(now: str) -> list[UsageEvent]:
    outcome = Answer(status=200, ttfc_ms=1.0, total_ms=2.0, eval_count=10, eval_duration=1_000_000)
    return [
        UsageEvent(
            request_id=f"r{n}",
            ts=now,
            client=Client(api_key_id=name, api_key_hash=digest),
            served_model=model,
            backend="gpu-a",
            outcome=outcome,
        )
        for n, ((name, digest), model) in enumerate(zip(_OWNERS, _MODELS, strict=True))
    ]


# Whose requests, and the rows of theirs: a key's by its hash, by name only where
# neither the key nor the event has one (`usage_event.rating_counts`).
_WHOSE: list[tuple[tuple[str, str | None] | None, dict[tuple[str, str], int]]] = [
    (None, {("llama3.1:8b", "gpu-a"): 3, ("qwen2.5:7b", "gpu-a"): 2}),
    (_ANN, {("llama3.1:8b", "gpu-a"): 2}),
    (("ann", None), {("qwen2.5:7b", "gpu-a"): 1}),
    (("bob", "bob-hash"), {("llama3.1:8b", "gpu-a"): 1}),
    (("carol", "carol-hash"), {}),
]


def test_memory_stats_of_one_key_count_its_requests_alone() -> None:
    stats = MemoryStats(window=100)
    for event in _keyed(ev.rfc3339(datetime.now(UTC).timestamp())):
        stats.add(event)
    for whose, rows in _WHOSE:
        assert _rows(stats.summary(whose)) == rows, whose


async def test_postgres_stats_of_one_key_count_its_requests_alone(database: Database) -> None:
    sink = PostgresSink(database.dsn, 2)
    try:
        events = _keyed(ev.rfc3339(datetime.now(UTC).timestamp()))
        await sink.write([Record(e, e.line()) for e in events])
        pool = await sink.ensure_pool()
        for whose, rows in _WHOSE:
            assert _rows(await from_postgres(pool, 3600, whose=whose)) == rows, whose
    finally:
        await sink.close()


@contextlib.contextmanager
def _recorded_proxy(
    servers: ServerThread, tmp_path: Path, settings: EmulatorSettings
) -> Iterator[tuple[Proxy, Usage]]:
    """A proxy writing its usage events to a file under `tmp_path`, in front of an
    emulator of its own with `settings`; both stopped when the block ends."""
    emulator = Emulator(servers, settings)
    usage = file_usage(tmp_path)
    proxy = Proxy(servers, [emulator.url], usage=usage)
    try:
        yield proxy, usage
    finally:
        proxy.stop()
        emulator.stop()


async def test_a_stream_the_backend_ends_with_its_error_line_records_the_error(
    servers: ServerThread, tmp_path: Path
) -> None:
    """Ollama ends a stream that fails after it began (its runner died under it) with an
    `{"error": ...}` line, status 200 already sent: the usage event of that request
    records the error, not an answer that ran to its end."""
    crashing = EmulatorSettings(chunk_delay_ms=20, default_tokens=400, crash_on="CRASH")
    died = "llama runner process has terminated: exit status 2"
    with _recorded_proxy(servers, tmp_path, crashing) as (proxy, usage):
        async with aiohttp.ClientSession(proxy.url) as http:
            body = {"model": MODEL, "prompt": "go on", "options": {"num_predict": 300}}
            async with http.post("/api/generate", json=body) as stream:
                first = await stream.content.readline()
                assert orjson.loads(first)["done"] is False
                poison = {"model": MODEL, "prompt": "CRASH", "stream": False}
                async with http.post("/api/generate", json=poison) as resp:
                    assert resp.status == 500
                lines = (first + await stream.read()).splitlines()
                streamed = stream.headers["X-Request-Id"]
            assert (stream.status, orjson.loads(lines[-1])) == (200, {"error": died})
        (event,) = await events_of(usage, streamed)
        assert (event["outcome"]["status"], event["outcome"]["error"]) == (200, died)


# A streamed answer on each of Ollama's OpenAI and Anthropic shapes, `tokens` long.
def _sse_request(path: str, tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "stream": True}
    if path == "/v1/completions":
        return {**body, "prompt": "go on", "max_tokens": tokens}
    if path == "/v1/responses":
        return {**body, "input": "go on", "max_output_tokens": tokens}
    return {**body, "messages": [{"role": "user", "content": "go on"}], "max_tokens": tokens}


_SSE_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"]


@pytest.mark.parametrize("path", _SSE_PATHS)
async def test_an_sse_stream_the_runner_died_under_records_the_error(
    servers: ServerThread, tmp_path: Path, path: str
) -> None:
    """On the OpenAI and Anthropic shapes Ollama's writers read the `{"error": ...}` line
    of a stream that failed after it began as a chunk of nothing: the stream just stops,
    without the end its shape has on success (`data: [DONE]`, `response.completed`,
    `message_stop`). Its usage event records the error, so the answer counts as failed;
    the same shape's stream that ran to its end does not."""
    crashing = EmulatorSettings(chunk_delay_ms=20, default_tokens=400, crash_on="CRASH")
    with _recorded_proxy(servers, tmp_path, crashing) as (proxy, usage):
        async with aiohttp.ClientSession(proxy.url) as http:
            async with http.post(path, json=_sse_request(path, 3)) as whole:
                assert whole.status == 200
                ended = (await whole.read()).rstrip().rsplit(b"\n", 1)[-1]
                whole_id = whole.headers["X-Request-Id"]
            async with http.post(path, json=_sse_request(path, 300)) as cut:
                assert cut.status == 200
                await cut.content.readline()  # the answer began
                poison = {"model": MODEL, "prompt": "CRASH", "stream": False}
                async with http.post("/api/generate", json=poison) as resp:
                    assert resp.status == 500
                rest = await cut.read()
                cut_id = cut.headers["X-Request-Id"]
            assert ended not in rest  # the cut stream lacks the whole one's end
        done, failed = await events_of(usage, whole_id, cut_id)
        assert done["outcome"]["error"] is None
        # Cut at its token limit, which Ollama's Responses stream does not say.
        cut_short = outcome.Result(outcome.TRUNCATED_VALUE, outcome.TRUNCATED_WEIGHT, "truncated")
        completed = outcome.Result(1.0, outcome.COMPLETED, "completed")
        assert outcome.of_event(done) == (completed if path == "/v1/responses" else cut_short)
        assert failed["outcome"]["status"] == 200
        assert failed["outcome"]["error"] == final_chunk.UNFINISHED
        assert outcome.of_event(failed) == outcome.Result(0.0, outcome.FAILED, "error")


@pytest.mark.parametrize("path", _SSE_PATHS)
async def test_a_client_leaving_an_sse_stream_is_a_cancellation_not_an_error(
    servers: ServerThread, tmp_path: Path, path: str
) -> None:
    """A client that leaves mid-stream cancelled the answer: its usage event says so and
    holds no error, though the stream never reached its end."""
    slow = EmulatorSettings(chunk_delay_ms=20, default_tokens=400)
    with _recorded_proxy(servers, tmp_path, slow) as (proxy, usage):
        async with aiohttp.ClientSession(proxy.url) as http:
            async with http.post(path, json=_sse_request(path, 300)) as left:
                assert left.status == 200
                await left.content.readline()
                left_id = left.headers["X-Request-Id"]
        (gone,) = await events_of(usage, left_id)
        assert gone["outcome"]["cancelled"] is True and gone["outcome"]["error"] is None
        assert outcome.of_event(gone) == outcome.Result(0.0, outcome.FAILED, "cancelled")


def _answer_counts(path: str, answer: bytes, streamed: bool) -> tuple[int, int]:
    """The (prompt, output) token counts an answer on an SSE shape gives its client:
    `usage` of the whole answer, or of its stream's last event that has one (Anthropic's
    `message_delta` holds the whole answer's, its `message_start` the prompt's alone)."""
    counts: dict[str, Any] = {}
    docs = [orjson.loads(answer)] if not streamed else []
    for line in answer.splitlines() if streamed else ():
        data = line.removeprefix(b"data: ")
        if data != line and data != b"[DONE]":
            docs.append(orjson.loads(data))
    for doc in docs:
        usage = doc.get("usage") or (doc.get("response") or {}).get("usage")
        counts = usage or counts
    if path in ("/v1/responses", "/v1/messages"):
        return counts["input_tokens"], counts["output_tokens"]
    return counts["prompt_tokens"], counts["completion_tokens"]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("path", _SSE_PATHS)
async def test_an_sse_shapes_token_counts_reach_its_usage_event(
    servers: ServerThread, tmp_path: Path, path: str, streamed: bool
) -> None:
    """Each of Ollama's OpenAI and Anthropic shapes tells its client how many tokens the
    prompt and the answer took, in its own names (`prompt_tokens` and
    `completion_tokens`; `input_tokens` and `output_tokens` on Responses and
    Messages): the usage event records those counts, as it does Ollama's own."""
    body = _sse_request(path, 5)
    body["stream"] = streamed
    if streamed and path in ("/v1/chat/completions", "/v1/completions"):
        body["stream_options"] = {"include_usage": True}
    with _recorded_proxy(servers, tmp_path, EmulatorSettings(chunk_delay_ms=1)) as (proxy, usage):
        async with aiohttp.ClientSession(proxy.url) as http, http.post(path, json=body) as resp:
            assert resp.status == 200
            prompt, output = _answer_counts(path, await resp.read(), streamed)
            (event,) = await events_of(usage, resp.headers["X-Request-Id"])
    assert prompt > 0 and output > 0
    recorded = event["outcome"]
    assert (recorded["prompt_eval_count"], recorded["eval_count"]) == (prompt, output)


# The routes whose answers the emulator's faults cut (`proxy.emulator.faults.FAULT_PATHS`).
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_an_sse_stream_the_backend_dropped_records_the_error(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path, path: str
) -> None:
    """A backend connection that drops mid-stream is an error in the usage event; the
    client gets the stream's end as Ollama's OpenAI layer writes it after a failure:
    a chunk of nothing (no model), no `[DONE]`."""
    usage = file_usage(tmp_path)
    proxy = Proxy(servers, [own_emulator.url], usage=usage)
    own_emulator.state.fault = "close_early"
    try:
        async with (
            aiohttp.ClientSession(proxy.url) as http,
            http.post(path, json=_sse_request(path, 300)) as dropped,
        ):
            assert dropped.status == 200
            last = (await dropped.read()).rstrip().rsplit(b"\n", 1)[-1]
            assert orjson.loads(last.removeprefix(b"data: "))["model"] == ""
            dropped_id = dropped.headers["X-Request-Id"]
        (failed,) = await events_of(usage, dropped_id)
        assert failed["outcome"]["status"] == 200 and failed["outcome"]["error"]
        assert outcome.of_event(failed) == outcome.Result(0.0, outcome.FAILED, "error")
    finally:
        proxy.stop()


# Options Ollama cannot decode: its 500 before any answer (scheduleRunner's opts.FromMap).
_BAD_OPTIONS = {"num_ctx": "x"}
_BAD_OPTIONS_ERROR = 'option "num_ctx" must be of type integer'


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        (
            "/api/generate",
            {"model": MODEL, "prompt": "hi", "stream": False, "options": _BAD_OPTIONS},
            _BAD_OPTIONS_ERROR,
        ),
        (
            "/api/chat",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "options": _BAD_OPTIONS,
            },
            _BAD_OPTIONS_ERROR,
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "CRASH"}]},
            "llama runner process has terminated: exit status 2",
        ),
        (
            "/api/generate",
            {"model": "no-such-model", "prompt": "hi"},
            "model 'no-such-model' not found",
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "hi", "think": True},
            f'"{MODEL}" does not support thinking',
        ),
        # The runner's errors before a stream's first line: a 500 the backend sends
        # chunked, as streamResponse flushes it.
        (
            "/api/chat",
            {"model": MODEL, "messages": [{"role": "user", "content": "CRASH"}]},
            "llama runner process has terminated: exit status 2",
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "hi", "format": "yaml"},
            'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object',
        ),
    ],
    ids=["whole", "stream", "openai", "404", "400", "stream-crash", "stream-format"],
)
async def test_a_backends_failure_relayed_records_its_error(
    servers: ServerThread, tmp_path: Path, path: str, body: dict[str, Any], error: str
) -> None:
    """An error the backend answered (a 4xx or a 5xx) and the proxy relayed as it came:
    the usage event records the backend's message (Ollama's `error`, OpenAI's
    `error.message`), not only the status, which tells a refusal of the request from a
    failure of the model."""
    crashing = EmulatorSettings(frozen_clock=True, crash_on="CRASH", models=(MODEL,))
    with _recorded_proxy(servers, tmp_path, crashing) as (proxy, usage):
        async with aiohttp.ClientSession(proxy.url) as http, http.post(path, json=body) as resp:
            answer = await resp.read()
            request_id = resp.headers["X-Request-Id"]
        (event,) = await events_of(usage, request_id)
        assert (event["outcome"]["status"], event["outcome"]["error"]) == (resp.status, error)
        assert resp.status >= 400 and error_text(path, orjson.loads(answer)) == error


async def test_a_stream_that_fails_before_its_answer_records_its_error_line(
    servers: ServerThread, tmp_path: Path
) -> None:
    """Ollama's streamResponse answers an error that comes before the stream's first
    line with the error's status and `{"error": "..."}` in chunked framing (its writes
    are flushed as they go): the usage event records that message."""
    died = "llama runner process has terminated: exit status 2"
    listed = {"models": [{"name": MODEL, "model": MODEL, "digest": "0" * 64}]}

    async def tags(request: web.Request) -> web.Response:
        return web.json_response(listed)

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def generate(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=500)
        resp.content_type = "application/json"
        resp.charset = "utf-8"
        await resp.prepare(request)
        await resp.write(orjson.dumps({"error": died}))
        await resp.write_eof()
        return resp

    def backend_app() -> web.Application:
        app = web.Application()
        app.router.add_get("/api/tags", tags)
        app.router.add_get("/api/ps", ps)
        app.router.add_post("/api/generate", generate)
        return app

    port = free_port()
    runner = servers.serve(backend_app, port)
    usage = file_usage(tmp_path)
    proxy = Proxy(servers, [f"http://127.0.0.1:{port}"], usage=usage)
    try:
        async with (
            aiohttp.ClientSession(proxy.url) as http,
            http.post("/api/generate", json={"model": MODEL, "prompt": "hi"}) as resp,
        ):
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            assert (resp.status, await resp.json()) == (500, {"error": died})
            request_id = resp.headers["X-Request-Id"]
        (event,) = await events_of(usage, request_id)
        assert (event["outcome"]["status"], event["outcome"]["error"]) == (500, died)
    finally:
        proxy.stop()
        servers.stop(runner)


@pytest.mark.parametrize("status", [200, 413])
async def test_a_large_bodys_usage_event_is_made_off_the_loop(
    servers: ServerThread,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
) -> None:
    """Making a request's usage event hashes its prompt, and parses its body again when
    the request was refused before its texts were measured (a prompt over the limit):
    C calls that hold the event loop for tens of milliseconds on a body of megabytes,
    while every other client's stream waits. A large body's event is made in a worker
    thread, a small one's on the loop; either way it is written, once."""
    made = where_called(monkeypatch, ev, "complete")
    usage = file_usage(tmp_path)
    big = 3 * 1024 * 1024
    # The limit lets the small prompts through; the large one passes it when served.
    limits = Limits(max_prompt_chars=big * 2 if status == 200 else go_json.INLINE_BYTES)
    prx = Proxy(servers, [emulator.url], usage=usage, limits=limits)
    try:
        for size in (go_json.INLINE_BYTES // 4, big):
            made.clear()
            want = 200 if size < go_json.INLINE_BYTES else status
            body = {
                "model": MODEL,
                "stream": False,
                "messages": [{"role": "user", "content": "a " * (size // 2)}],
                "options": {"num_predict": 1},
            }
            async with (
                aiohttp.ClientSession() as http,
                http.post(prx.url + "/api/chat", data=orjson.dumps(body)) as resp,
            ):
                assert resp.status == want, await resp.read()
                rid = resp.headers["X-Request-Id"]
            (event,) = await events_of(usage, rid)
            assert event["outcome"]["status"] == want
            assert made == [size < go_json.INLINE_BYTES], (size, made)
    finally:
        prx.stop()


async def test_a_dispatch_stopped_while_events_are_made_off_the_loop_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels a dispatcher still busy after `drain_seconds`; one waiting for
    a reader thread to make a large body's events leaves them queued, and the final
    drain writes them."""
    gate = threading.Event()
    making = threading.Event()
    complete = ev.complete

    def slow(captured: ev.Captured, log_prompts: bool) -> UsageEvent:
        making.set()
        gate.wait(10)
        return complete(captured, log_prompts)

    monkeypatch.setattr(ev, "complete", slow)
    usage = file_usage(tmp_path, drain_seconds=0.05)
    pipeline = UsagePipeline(usage)
    await pipeline.start()
    body = orjson.dumps({"model": MODEL, "prompt": "a" * (2 * go_json.INLINE_BYTES)})
    done = Outcome(Decided("big", model=MODEL, body=body), Served("big", status=200))
    pipeline._put(ev.Captured(done, "POST", "/api/generate", time.time(), None, None, None))
    assert await asyncio.to_thread(making.wait, 10)
    stopping = asyncio.create_task(pipeline.stop())
    await asyncio.sleep(0.2)  # past drain_seconds: the dispatcher is cancelled
    gate.set()
    await stopping
    (event,) = [orjson.loads(line) for line in (await read_bytes(usage.file_path)).splitlines()]
    assert event["request_id"] == "big" and event["outcome"]["status"] == 200


# (status, error, cancelled) as usage events record them, and how the one definition
# reads the answer (`outcome.judged`): a refusal (a 4xx, Ollama's 500 for a request it
# cannot run) is no failure; a request its client left before its answer began is
# neither; a 5xx, an error a stream ended with, or no status with the client still
# there (the proxy failed before any answer) is a failure.
_R, _F = outcome.REFUSAL, outcome.FAILURE
_FAILURES: list[tuple[int, str | None, bool, str | None]] = [
    (200, None, False, None),
    (200, None, True, None),  # left mid-answer: cancelled, not failed
    (200, "gpu: connection reset mid-stream", False, _F),
    (200, "", False, None),
    (404, None, False, _R),
    (429, "rate limit: 60 requests a minute", False, _R),
    (408, "the request body took too long", False, _R),
    (400, "invalid format: 1", False, _R),
    (400, None, True, _R),  # answered its refusal, then the client left
    (500, 'invalid format: "1"; expected "json" or a valid JSON Schema object', False, _R),
    (500, 'option "num_ctx" must be of type integer', False, _R),
    (500, 'option "a\\"b" must be of type integer', False, _R),
    (500, "template: :1: unexpected EOF", False, _R),
    (500, "llama-server template error: roles must alternate", False, _R),
    (500, "llama runner process has terminated: exit status 2", False, _F),
    (500, "the model said: invalid format: 1", False, _F),  # not at the start
    (500, None, False, _F),
    (502, None, False, _F),
    (503, "no healthy backend: gpu (connect refused)", False, _F),
    (503, "no healthy backend: gpu (connect refused)", True, _F),
    (0, None, True, None),  # left before the answer began
    (0, "gpu: connect refused", True, None),
    (0, "template: :1: unexpected EOF", True, None),  # left first: not even a refusal
    (0, None, False, _F),  # the proxy failed: aiohttp answered its 500
]


def _failures(now: str) -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=f"f{n}",
            ts=now,
            served_model="llama3.2:3b",
            backend="gpu-a",
            outcome=Answer(status=status, error=error, cancelled=cancelled),
        )
        for n, (status, error, cancelled, _) in enumerate(_FAILURES)
    ]


def _counted(verdict: str) -> int:
    """How many answers of `_FAILURES` the one definition reads as `verdict`."""
    return sum(expected is verdict for *_, expected in _FAILURES)


def test_memory_stats_count_failures_as_the_one_definition_reads_them() -> None:
    """`/api/autoroute/stats`' errors are `outcome.failed`'s, its refusals
    `outcome.refusal`'s: a refusal is no error, and a request the client left before
    its answer began is neither."""
    for status, error, cancelled, expected in _FAILURES:
        assert outcome.judged(status, error, cancelled) is expected, (status, error, cancelled)
    stats = MemoryStats(window=100)
    for event in _failures(ev.rfc3339(datetime.now(UTC).timestamp())):
        stats.add(event)
    (row,) = stats.summary()
    assert (row["errors"], row["refusals"]) == (_counted(_F), _counted(_R))


async def test_the_sql_of_a_failure_reads_each_answer_as_the_python_does(
    database: Database,
) -> None:
    """`outcome.failed_sql` and `outcome.refusal_sql` in PostgreSQL agree with
    `outcome.failed` and `outcome.refusal` row by row, and the stats from PostgreSQL
    count the errors and refusals the memory stats count."""
    sink = PostgresSink(database.dsn, 2)
    try:
        events = _failures(ev.rfc3339(datetime.now(UTC).timestamp()))
        await sink.write([Record(e, e.line()) for e in events])
        pool = await sink.ensure_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT request_id, {outcome.failed_sql('u')} AS failed,"
                f" {outcome.refusal_sql('u')} AS refusal FROM usage_events u"
            )
        (summary,) = await from_postgres(pool, 3600)
    finally:
        await sink.close()
    read = {r["request_id"]: (r["failed"], r["refusal"]) for r in rows}
    assert len(read) == len(events)
    for event in events:
        o = event.outcome
        python = (
            outcome.failed(o.status, o.error, o.cancelled),
            outcome.refusal(o.status, o.error, o.cancelled),
        )
        assert read[event.request_id] == python, o
    assert (summary["errors"], summary["refusals"]) == (_counted(_F), _counted(_R))
