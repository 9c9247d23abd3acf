from __future__ import annotations

import io
import json
import logging
import re
import time

import orjson

from proxy.logs import AccessLog, JsonFormatter


def test_access_log_writes_one_json_line_per_request_in_batches() -> None:
    stream = io.StringIO()
    access = AccessLog(enabled=True, stream=stream)
    access.record({"request_id": "r1", "path": "/api/chat", "status": 200, "error": ""})
    access.record({"request_id": "r2", "path": "/api/tags", "status": 503, "error": "down"})
    assert stream.getvalue() == ""  # nothing written on the request path
    access.flush()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["r1", "r2"]
    assert lines[0]["logger"] == "autoroute.access" and lines[0]["ts"].endswith("Z")
    assert "error" not in lines[0] and lines[1]["error"] == "down"


def test_disabled_access_log_writes_nothing() -> None:
    stream = io.StringIO()
    access = AccessLog(enabled=False, stream=stream)
    access.record({"request_id": "r1"})
    access.flush()
    assert stream.getvalue() == ""


def test_json_formatter_carries_fields() -> None:
    record = logging.LogRecord(
        "autoroute", logging.WARNING, __file__, 1, "backend %s down", ("a",), None
    )
    record.fields = {"backend": "a", "skip": None}
    doc = orjson.loads(JsonFormatter().format(record))
    assert doc["msg"] == "backend a down" and doc["backend"] == "a" and "skip" not in doc
    assert doc["level"] == "warning"


def test_line_times_are_stamped_as_gmtime_writes_them_across_seconds() -> None:
    """A second's text is made once and kept across flushes: every line still reads
    the time it was recorded, whatever second came before it."""
    stream = io.StringIO()
    access = AccessLog(enabled=True, stream=stream)
    batches = [[1764758400.25, 1764758400.75, 1764758401.0], [1764758401.5, 1764758399.999]]
    expected = []
    for batch in batches:
        access._pending = [(t, {"request_id": "r"}) for t in batch]
        access.flush()
        for t in batch:
            second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            expected.append(f"{second}.{int(t % 1 * 1000):03d}Z")
    assert [orjson.loads(line)["ts"] for line in stream.getvalue().splitlines()] == expected


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def _fields(line: str) -> list[tuple[str, str]]:
    """A text access line's fields as a reader splits them: `key=value`, a quoted value
    read as the JSON string it is."""
    return [(k, json.loads(v) if v.startswith('"') else v) for k, v in _FIELD.findall(line)]


def test_a_text_line_is_one_request_whatever_its_client_sent() -> None:
    """A path, a model name or an error text with spaces, `=`, quotes, line breaks or
    terminal escapes is written quoted and escaped: one line per request, whose
    fields are the request's own. A client cannot write a line, or a field, that says
    another API key made a request."""
    stream = io.StringIO()
    access = AccessLog(enabled=True, stream=stream, json=False)
    forged = "2026-12-05T07:00:00.000Z request request_id=x path=/api/chat key=alice"
    path = "/api/tags\n" + forged
    model = 'qwen key=alice "x\\'
    error = "refused\r\x1b[2K\u2028key=alice"
    access.record({"path": path, "model": model, "key": "bob", "error": error, "status": 404})
    access.record({"path": "/api/chat", "model": "qwen2.5:7b", "key": "bob", "status": 200})
    access.flush()
    first, second = stream.getvalue().splitlines()
    assert _fields(first) == [
        ("path", path),
        ("model", model),
        ("key", "bob"),
        ("error", error),
        ("status", "404"),
    ]
    assert first.isprintable()
    # Plain values stay as they were.
    assert second.endswith("request path=/api/chat model=qwen2.5:7b key=bob status=200")


def test_a_broker_down_is_not_an_error_line_per_reconnect() -> None:
    """aiokafka logs every reconnect attempt to a broker that is down at ERROR (every
    few seconds, for as long as the outage lasts); the Kafka sink says it once
    ("usage sink kafka failed, spooling") and /metrics counts what spilled."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import logging; from proxy import logs; logs.setup('INFO', True); "
        "logging.getLogger('aiokafka.conn').error('Unable connect to \"kafka:9092\"'); "
        "logging.getLogger('autoroute.usage').warning('usage sink kafka failed, spooling')"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True
    )
    lines = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert [line["logger"] for line in lines] == ["autoroute.usage"]
