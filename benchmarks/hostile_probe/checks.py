"""Checking each case's answers against the emulator's, the relay's record of what went
upstream and the usage events; running every case (`probe`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from benchmarks.hostile_probe.wire import (
    INFERENCE,
    INJECTED,
    MODEL,
    SERVED_MODEL_HEADER,
    SMUGGLED,
    Answer,
    Case,
    Recorder,
    exchange,
    request,
)


@dataclass
class Report:
    sent: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    served: list[tuple[str, str]] = field(default_factory=list)  # (request id, case)
    ids: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)  # cases answered after 1.5 s or more

    def problem(self, case: Case, what: str) -> None:
        self.problems.append(f"[{case.category}] {case.name}: {what}")


def shape_ok(path: str, answer: Answer) -> bool:
    """Whether a refusal is in the error shape of its route."""
    try:
        doc = orjson.loads(answer.body.splitlines()[0] if answer.body else b"")
    except (orjson.JSONDecodeError, IndexError):
        return False
    if not isinstance(doc, dict):
        return False
    if path == "/v1/messages":
        return doc.get("type") == "error" and isinstance(doc.get("error"), dict)
    if path.startswith("/v1/"):
        error = doc.get("error")
        return isinstance(error, dict) and isinstance(error.get("message"), str)
    return isinstance(doc.get("error"), str)


def go_plain(answer: Answer) -> bool:
    """Whether a refusal is one of Go's net/http plain-text ones (`431 Request Header
    Fields Too Large`, `400 Bad Request...`), which Ollama answers a head it cannot
    read with before any of its handlers runs."""
    kind = answer.header("content-type") or b""
    return kind.startswith(b"text/plain") and answer.body.startswith(b"%d " % answer.status)


async def check(case: Case, proxy_port: int, emulator_port: int, report: Report) -> None:
    answers, rest, closed = await exchange(
        proxy_port, case.pieces, case.seconds, case.shut, case.head_requests
    )
    report.sent[case.category] += 1
    statuses = report.statuses.setdefault(case.category, Counter())
    if not answers:
        statuses[0] += 1
        if case.answered:
            report.problem(case, f"no answer (closed={closed}, bytes {rest[:80]!r})")
        return
    direct: list[Answer] | None = None
    for index, answer in enumerate(answers):
        path = case.path_of(index)
        statuses[answer.status] += 1
        rid = answer.header("x-request-id")
        if not rid:
            report.problem(case, f"{answer.status} without X-Request-Id")
        else:
            report.ids.append(rid.decode("latin-1"))
        for key, value in answer.headers:
            if INJECTED in key.lower() or b"\x00" in value or b"\r" in value:
                report.problem(case, f"answer header {key!r}: {value[:60]!r}")
        if b"Traceback" in answer.body:
            report.problem(case, "a traceback in the answer")
        served_path = path in INFERENCE and answer.status == 200
        if served_path and rid:
            report.served.append((rid.decode("latin-1"), case.name))
        if answer.status < 400:
            continue
        if case.head_requests and not answer.body:
            continue  # an answer to HEAD: no body to check the shape of
        if (
            case.category == "encoding"
            and case.name.startswith("zstd")
            and (answer.body.startswith(b'{"error":"'))
        ):
            # Ollama decodes zstd on /v1 in cloudPassthroughMiddleware, which answers
            # in its own shape (server/cloud_proxy.go); the emulator decodes none.
            continue
        if direct is None and case.direct is not None:
            model = (answer.header(SERVED_MODEL_HEADER) or MODEL.encode()).decode()
            direct, _, _ = await exchange(
                emulator_port, case.direct(model), case.seconds, case.shut, case.head_requests
            )
        same = [d for d in direct or [] if d.status == answer.status]
        if answer.status >= 500 and not same:
            report.problem(
                case,
                f"proxy {answer.status} {answer.body[:160]!r}; emulator "
                f"{[d.status for d in direct or []]}",
            )
        elif not (shape_ok(path, answer) or go_plain(answer)) and not any(
            d.body == answer.body for d in same
        ):
            report.problem(
                case,
                f"{answer.status} not in the route's error shape: {answer.body[:160]!r}; "
                f"emulator {[(d.status, d.body[:80]) for d in direct or []]}",
            )


async def alive(proxy_port: int) -> bool:
    answers, _, _ = await exchange(proxy_port, [request("GET", "/api/version")], 10)
    return bool(answers) and answers[0].status == 200


def check_upstream(recorder: Recorder, report: Report) -> None:
    for up in recorder.requests:
        if SMUGGLED in up.target:
            report.problems.append(f"[upstream] a smuggled request reached the backend: {up}")
        for key, value in up.headers:
            if INJECTED in key.lower() or any(c in value for c in (b"\r", b"\n", b"\x00")):
                report.problems.append(f"[upstream] header {key!r}: {value[:80]!r}")
    for what in recorder.unreadable:
        report.problems.append(f"[upstream] bytes no HTTP/1.1 reader takes: {what[:120]!r}")


def usage_ids(events: Path) -> Counter[str]:
    """How many usage events in the JSONL file `events` carry each request id: the
    proxy's own, or the client's kept as `client_request_id` (feedback left out)."""
    found: Counter[str] = Counter()
    if events.exists():
        for line in events.read_bytes().splitlines():
            event = orjson.loads(line)
            if "feedback_id" in event:
                continue
            for key in ("request_id", "client_request_id"):
                if event.get(key):
                    found[event[key]] += 1
    return found


async def check_usage(events: Path, report: Report) -> None:
    deadline = time.monotonic() + 10
    wanted = Counter(rid for rid, _ in report.served)
    while time.monotonic() < deadline:
        counts = usage_ids(events)
        if all(counts[rid] >= n for rid, n in wanted.items()):
            break
        await asyncio.sleep(0.1)
    counts = usage_ids(events)
    await asyncio.sleep(0.3)
    print(
        f"usage: {len(report.served)} served inference requests, "
        f"{sum(1 for rid, _ in report.served if counts[rid] == wanted[rid])} with exactly "
        f"one usage event each; {len(set(report.ids))} answer ids"
    )
    for rid, name in report.served:
        if counts[rid] != wanted[rid]:
            report.problems.append(f"[usage] {name}: {counts[rid]} usage events, not 1")
    for rid in set(report.ids):
        if counts[rid] > report.ids.count(rid):
            report.problems.append(f"[usage] id {rid}: {counts[rid]} events")


async def probe(
    proxy_port: int,
    emulator_port: int,
    recorder: Recorder,
    events: Path,
    cases: list[Case],
    report: Report,
) -> None:
    by_category: dict[str, list[Case]] = {}
    for case in cases:
        by_category.setdefault(case.category, []).append(case)
    for category, group in by_category.items():
        began = time.monotonic()
        for case in group:
            one = time.monotonic()
            await check(case, proxy_port, emulator_port, report)
            if time.monotonic() - one > 1.5 and case.answered:
                report.slow.append(f"{case.name} {time.monotonic() - one:.1f} s")
        if not await alive(proxy_port):
            report.problems.append(f"[{category}] the proxy does not answer afterwards")
        print(
            f"{category}: {report.sent[category]} cases in {time.monotonic() - began:.1f} s; "
            f"statuses {dict(sorted(report.statuses[category].items()))}",
            flush=True,
        )
    check_upstream(recorder, report)
    await check_usage(events, report)
