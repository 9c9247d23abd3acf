"""The usage event: captured cheaply at the request's end, completed by the background
writer into a `selector_model.usage_event.UsageEvent`.

`Captured` is made by the pipeline's completion hook and only holds references (the
`Outcome`, a few header strings, two clock readings). Everything that costs
something (JSON parsing of the body for the prompt, SHA-256, RFC 3339 formatting, the
API key hash) happens in `complete`, on the writer's side of the queue.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

from proxy import final_chunk, header_values
from proxy.outcome import Outcome
from proxy.usage_prompt import Prompt, digest, joined, prompt_text
from selector_model.features import SCHEMA_VERSION
from selector_model.usage_event import Answer, Client, Features, Feedback, Logged, UsageEvent

USAGE = "usage"
FEEDBACK = "feedback"
STAT_KEYS = final_chunk.STATS
_STAT_KEYS = frozenset(STAT_KEYS)


@dataclass(slots=True)
class Captured:
    """What the handler hands over: references only, nothing computed."""

    outcome: Outcome
    method: str
    path: str
    wall: float  # time.time() at the handler's end (the outcome has its perf_counter)
    user_agent: str | None
    user: str | None
    # The raw credential, held in memory only until `complete` hashes it: it is never
    # written anywhere (an overflow completes the event before it spills).
    credential: str | None
    # The configured API key's id when access control is on (then `credential` is None).
    key_id: str | None = None
    # The proxy's own id for the request, unique: the event's id. The client's
    # X-Request-Id (a sane one, else None) is kept beside it, as the client knows it.
    request_id: str = ""
    client_request_id: str | None = None
    key_hash: str | None = None  # the configured API key's hash, beside `key_id`


# The latest whole second `rfc3339` wrote, and its text: one tuple, replaced whole.
_second: tuple[float, str] = (math.nan, "")


def rfc3339(epoch: float) -> str:
    """`epoch` as `datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")`
    writes it, with `Z` for `+00:00`: the microseconds rounded as datetime rounds them
    (half to even, carried into the second), the second's text made once per second,
    since formatting a datetime costs many times as much and every event has a time."""
    fraction, whole = math.modf(epoch)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    global _second
    second = _second
    if whole != second[0]:
        t = time.gmtime(whole)
        second = _second = (
            whole,
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}",
        )
    return f"{second[1]}.{micro:06d}Z"


def api_key_id(credential: str | None) -> str | None:
    """A stable, non-reversible id for an API key: enough to group by, useless to log in."""
    if not credential:
        return None
    token = credential.split(" ", 1)[1] if " " in credential else credential
    return hashlib.sha256(header_values.utf8(token.strip())).hexdigest()[:16]


def complete(c: Captured, log_prompts: bool) -> UsageEvent:
    d, o = c.outcome.decided, c.outcome.served
    decision = d.decision
    read = d.prompt
    if isinstance(read, Prompt):
        prompt, sha256 = read.text, read.sha256
    else:
        prompt = prompt_text(d.body) if read is None else joined(read)
        sha256 = digest(prompt)
    total_ms, ttfc_ms = c.outcome.ms()
    stats: dict[str, Any] = o.stats
    # What the last chunk said: done_reason a string, the counts integers (`final_chunk`).
    # Those are all `Answer`'s fields: taken as they are unless something else is there.
    said = (
        stats
        if stats.keys() <= _STAT_KEYS and None not in stats.values()
        else {key: value for key in STAT_KEYS if (value := stats.get(key)) is not None}
    )
    return UsageEvent(
        request_id=c.request_id or o.request_id,
        client_request_id=c.client_request_id,
        # When the request arrived, on the wall clock.
        ts=rfc3339(c.wall - (o.ended - d.started)),
        endpoint=c.path,
        method=c.method,
        # Client header values: valid UTF-8, no controls, bounded (JSON, the sinks and
        # a database column take them as they are then).
        client=Client(
            user_agent=header_values.text(c.user_agent),
            user=header_values.text(c.user),
            api_key_id=c.key_id or api_key_id(c.credential),
            api_key_hash=c.key_hash,
        ),
        requested_model=d.model,
        # As the client may name it (a name no model has goes to the backend as sent):
        # bounded as `requested_model` is, since PostgreSQL indexes it, and an index
        # entry larger than some 2.7 kB fails the whole batch at every retry.
        served_model=header_values.text(o.model, header_values.MAX_MODEL_NAME),
        backend=o.backend or None,
        provider=o.provider or None,
        cache=o.cache,
        decision=decision,
        features=Features(SCHEMA_VERSION, d.features) if d.features is not None else None,
        candidate=d.candidate,
        prompt_sha256=sha256,
        logged=Logged(prompt) if log_prompts else None,
        outcome=Answer(
            status=o.status,
            # An error may quote what a backend or client sent: made valid text like headers.
            error=header_values.valid(o.error) or None,
            **said,
            ttfc_ms=ttfc_ms,
            total_ms=total_ms,
            bytes=o.body_bytes,
            cancelled=o.cancelled,
            unreached=o.unreached,
        ),
    )


def feedback(
    request_id: str,
    rating: float,
    comment: str | None,
    api_key_id: str | None = None,
    api_key_hash: str | None = None,
) -> Feedback:
    now = time.time()
    return Feedback(
        feedback_id=hashlib.sha256(
            f"{request_id}:{now}:{time.perf_counter_ns()}".encode()
        ).hexdigest()[:24],
        request_id=request_id,
        rating=rating,
        comment=comment,
        ts=rfc3339(now),
        api_key_id=api_key_id,
        api_key_hash=api_key_hash,
    )
