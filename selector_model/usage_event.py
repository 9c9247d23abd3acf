"""The usage event and the feedback record: one schema for every place they go.

The proxy writes one `UsageEvent` per inference request and one `Feedback` per
rating; the fields below are the JSON object written (a line of the local file, a
Kafka message, the spool, PostgreSQL's `event` column), in this order, and the
PostgreSQL columns (`COLUMNS`, `row`). Training, the A/B report and online learning
read events back with `read` (a JSON object), `parse_line` (a JSON Lines line) and
`from_row` (a PostgreSQL row of `event` and its joined `rating`).

Reading is lenient, as events outlive the code that wrote them: a key that is absent,
or whose value has the wrong type, reads as the field's default (a nested object
missing a required field reads as None). Consumers decide what they cannot use.

Records are built once and never changed after (a reader makes a new one with
`dataclasses.replace`); they are not frozen dataclasses only because a frozen one
costs several times as much to build, and the proxy builds one per request on its
event loop.

This module imports nothing of the proxy: training reads events without it.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Union, get_args, get_origin, get_type_hints

import orjson

# Field metadata: the PostgreSQL column a field fills (its name by default; None: none),
# how its value becomes the column's, and `flatten`: a nested object whose fields are
# written at the enclosing level, and only when it is present.
_NO_COLUMN: dict[str, Any] = {"column": None}


def _timestamp(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


_TIMESTAMP: dict[str, Any] = {"to_column": _timestamp}


@dataclass(slots=True)
class Client:
    """Who sent the request. Header values are valid UTF-8, without controls, bounded."""

    user_agent: str | None = None
    user: str | None = field(default=None, metadata={"column": "client_user"})
    api_key_id: str | None = None  # a hash of the key, or the configured key's id
    # With access control on, the configured key's hash (the first 16 hex digits of
    # its SHA-256): the key itself, where the id is its name, which a revoked key's
    # successor may take. Null without access control (`api_key_id` is the hash then).
    api_key_hash: str | None = None


@dataclass(slots=True)
class Answer:
    """What came of the request (the event's `outcome` object). Token counts and
    durations (nanoseconds) are the answer's last chunk's, when it said them."""

    status: int = 0
    error: str | None = None
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    load_duration: int | None = None
    prompt_eval_duration: int | None = None
    eval_duration: int | None = None
    total_duration: int | None = None
    ttfc_ms: float | None = None  # to the first chunk the client got
    total_ms: float = 0.0
    bytes: int = 0
    cancelled: bool = False
    # The request reached no backend: the status and error are the proxy's own, as none
    # of the backends tried could be connected to (or the proxy's own connections ran
    # out), or none could take it. No model ran. False in events written before it.
    # Not a column: the stats count the answer a failure all the same.
    unreached: bool = field(default=False, metadata=_NO_COLUMN)


@dataclass(slots=True)
class Features:
    """The request's feature vector (`selector_model.features.REQUEST_FEATURES` order)
    and the schema version it was computed under."""

    schema_version: int
    request: list[float]


@dataclass(slots=True)
class Logged:
    """The prompt's text and the answer's, with `usage.log_prompts` only. The answer
    streams through unbuffered, so its text is not captured: `response` is null."""

    prompt: str | None = None
    response: str | None = None


@dataclass(slots=True)
class UsageEvent:
    request_id: str = ""  # the proxy's own id: unique
    client_request_id: str | None = None  # the client's X-Request-Id, as it sent it
    ts: str = field(default="", metadata=_TIMESTAMP)  # RFC 3339: when the request arrived
    endpoint: str = ""
    method: str = ""
    client: Client = field(default_factory=Client)
    requested_model: str | None = None
    served_model: str | None = None
    backend: str | None = None
    # `auto`'s decision (`selector_model.policy.Decision.record`; with no model chosen,
    # as the cloud answers in a profile's name, `policy.unchosen_record`; where the
    # cloud answers in place of the model chosen, reason "cloud"), else null.
    decision: dict[str, Any] | None = field(default=None, metadata=_NO_COLUMN)
    features: Features | None = field(default=None, metadata=_NO_COLUMN)
    # The chosen model as the selector saw it (`features.Candidate.to_record`).
    candidate: dict[str, Any] | None = field(default=None, metadata=_NO_COLUMN)
    prompt_sha256: str | None = None
    logged: Logged | None = field(default=None, metadata={"flatten": True, "column": None})
    outcome: Answer = field(default_factory=Answer)
    # The cloud provider that answered (cloud fallback), null for a local backend.
    provider: str | None = None
    # The request's rating (`rating_of` its feedback) where a reader joined it; null as
    # written.
    rating: float | None = field(default=None, metadata=_NO_COLUMN)
    # The response cache: "hit" (answered from it, `backend` null), "miss" (cacheable,
    # answered by a backend), null (not cacheable, or no cache). Last: the fields
    # before it keep the order they have always been written in.
    cache: str | None = None

    def document(self) -> dict[str, Any]:
        """The JSON object, as written."""
        return _document(self)

    def line(self) -> bytes:
        return orjson.dumps(_document(self))


@dataclass(slots=True, kw_only=True)
class Feedback:
    """A rating of a request (`POST /api/autoroute/feedback`). What it rates, and how,
    is all a reader needs: the other fields read as empty when absent."""

    feedback_id: str = ""
    request_id: str  # the proxy's id of the request, or the client's
    rating: float  # in [0, 1]
    comment: str | None = None
    ts: str = field(default="", metadata=_TIMESTAMP)  # RFC 3339: when it was given
    # The API key that gave it (its configured id, and its hash as in `Client`), null
    # when the proxy checks no keys: with keys, a rating counts only for a request made
    # with the same key (`rating_counts`).
    api_key_id: str | None = None
    api_key_hash: str | None = None

    def document(self) -> dict[str, Any]:
        return _document(self)


def key_of(doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(`api_key_id`, `api_key_hash`) as an event's `client` or a feedback names its
    key; None for one absent or not a string."""
    key, key_hash = doc.get("api_key_id"), doc.get("api_key_hash")
    return (
        key if isinstance(key, str) else None,
        key_hash if isinstance(key_hash, str) else None,
    )


def rating_counts(
    rater: str | None,
    requester: str | None,
    rater_hash: str | None = None,
    requester_hash: str | None = None,
) -> bool:
    """Whether a rating given with API key `rater` (null: the proxy checks no keys)
    counts for a request whose event names `requester` as its key: with keys, one key
    rates only its own answers, so no client steers what `auto` learns for another.
    The same key is the same hash (`api_key_hash`): a name alone is not enough, as a
    revoked key's name may go to another key. Only records written before keys had
    hashes, the rating's and the request's both, are matched by name.
    `FEEDBACK_JOIN` (`proxy.usage.stats`) is the same rule in SQL."""
    if rater is None:
        return True
    if rater_hash is None and requester_hash is None:
        return rater == requester
    return rater_hash == requester_hash


def rating_of(ratings: Iterable[Feedback]) -> float | None:
    """The rating of a request, from the ratings that count for it (`rating_counts`):
    the latest given (`ts`) replaces the earlier ones, as a user who changes their mind
    (a thumbs-down by mistake, then up; a chat UI lets them) means the last, and however
    many come they weigh one rating; None for none. Of ratings given at the same time
    (two proxies' in one microsecond), the greatest `feedback_id`, so that every reader
    takes the same. `ts` as the proxy writes it (RFC 3339, UTC, microseconds) orders as
    text; one without (none is written so) is the oldest. `FEEDBACK_JOIN`
    (`proxy.usage.stats`) is the same rule in SQL; the learner, seeing the ratings as
    they are given, keeps the last it sees (`proxy.learning._Counted.rate`)."""
    latest = max(ratings, key=lambda f: (f.ts, f.feedback_id), default=None)
    return None if latest is None else latest.rating


# Writing ---------------------------------------------------------------------------


def _writer(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    """How a record class becomes its JSON object, as one generated function (as
    `dataclasses` generates `__init__`): a dict display of the fields in order, nested
    records written by `_document`, a flattened object merged in where it stands and
    only when present. Made once per class: a document is written per request, on the
    proxy's event loop, and a walk over the fields costs several times as much."""
    hints = get_type_hints(cls)
    body = ["def write(r):", "    d = {"]
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        is_record = any(dataclasses.is_dataclass(a) for a in (hint, *get_args(hint)))
        if is_record and f.metadata.get("flatten"):
            body += [
                "    }",
                f"    if (v := r.{f.name}) is not None:",
                "        d.update(_document(v))",
                "    d |= {",
            ]
        elif is_record:
            body.append(f"        {f.name!r}: None if (v := r.{f.name}) is None else _document(v),")
        else:
            body.append(f"        {f.name!r}: r.{f.name},")
    body += ["    }", "    return d"]
    namespace: dict[str, Any] = {"_document": _document}
    exec("\n".join(body), namespace)  # the source is made of the class's field names
    write: Callable[[Any], dict[str, Any]] = namespace["write"]
    return write


_WRITERS: dict[type[Any], Callable[[Any], dict[str, Any]]] = {}


def _document(record: Any) -> dict[str, Any]:
    cls = type(record)
    write = _WRITERS.get(cls)
    if write is None:
        write = _WRITERS[cls] = _writer(cls)
    return write(record)


# PostgreSQL ------------------------------------------------------------------------


def _columns(cls: type[Any], path: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...], Any]]:
    """(column, attribute path, conversion) per column a record fills, in field order."""
    out: list[tuple[str, tuple[str, ...], Any]] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        column = f.metadata.get("column", f.name)
        if column is None:
            continue
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out += _columns(hint, (*path, f.name))
        else:
            out.append((column, (*path, f.name), f.metadata.get("to_column")))
    return out


_USAGE_COLUMNS = _columns(UsageEvent)
# The usage_events columns, and last the whole event (jsonb): what export and training
# read back (decision, features and candidate are only there).
COLUMNS = (*(c[0] for c in _USAGE_COLUMNS), "event")
_FEEDBACK_COLUMNS = _columns(Feedback)
FEEDBACK_COLUMNS = tuple(c[0] for c in _FEEDBACK_COLUMNS)


def _row(record: Any, plan: list[tuple[str, tuple[str, ...], Any]]) -> list[Any]:
    values = []
    for _, path, convert in plan:
        value = record
        for name in path:
            value = getattr(value, name)
        values.append(convert(value) if convert is not None else value)
    return values


def row(event: UsageEvent, line: bytes) -> tuple[Any, ...]:
    """The event's values in `COLUMNS` order; `line` (its JSON) fills `event`."""
    return (*_row(event, _USAGE_COLUMNS), line)


def feedback_row(feedback: Feedback) -> tuple[Any, ...]:
    """The feedback's values in `FEEDBACK_COLUMNS` order."""
    return tuple(_row(feedback, _FEEDBACK_COLUMNS))


# Reading ---------------------------------------------------------------------------

_Reader = Callable[[Any], Any]
_MISSING = object()


def _scalar(kind: type[Any]) -> _Reader:
    if kind is bool:
        return lambda v: v if isinstance(v, bool) else _MISSING
    if kind is int:
        return lambda v: v if isinstance(v, int) and not isinstance(v, bool) else _MISSING
    if kind is float:
        return lambda v: (
            float(v) if isinstance(v, int | float) and not isinstance(v, bool) else _MISSING
        )
    return lambda v: v if isinstance(v, kind) else _MISSING


def _floats(value: Any) -> Any:
    if not isinstance(value, list):
        return _MISSING
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return _MISSING


def _reader(hint: Any) -> _Reader:
    """How a JSON value becomes a field of type `hint`; _MISSING when it cannot."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = (a for a in get_args(hint) if a is not type(None))
        read = _reader(inner)
        return lambda v: None if v is None else read(v)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        nested = hint
        return lambda v: _read(nested, v) if isinstance(v, Mapping) else _MISSING
    if origin is list:
        return _floats
    if origin is dict:
        return lambda v: v if isinstance(v, dict) else _MISSING
    return _scalar(hint)


# Per field: its name, its reader, whether it has a default, and for a flattened object
# the keys that make it present.
_Plan = list[tuple[str, _Reader, bool, tuple[str, ...] | None]]
_PLANS: dict[type[Any], _Plan] = {}


def _plan(cls: type[Any]) -> _Plan:
    """How to read each field of `cls`, made once per class."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = get_type_hints(cls)
        plan = _PLANS[cls] = []
        for f in dataclasses.fields(cls):
            keys = None
            if f.metadata.get("flatten"):
                (inner,) = (a for a in get_args(hints[f.name]) if a is not type(None))
                keys = tuple(g.name for g in dataclasses.fields(inner))
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            plan.append((f.name, _reader(hints[f.name]), has_default, keys))
    return plan


def _read(cls: type[Any], doc: Mapping[str, Any]) -> Any:
    """A record of `cls` from `doc`, or _MISSING when a required field is unusable."""
    values: dict[str, Any] = {}
    for name, read, has_default, flattened in _plan(cls):
        if flattened is not None:
            value = read(doc) if any(k in doc for k in flattened) else _MISSING
        else:
            raw = doc.get(name, _MISSING)
            value = _MISSING if raw is _MISSING else read(raw)
        if value is _MISSING:
            if not has_default:
                return _MISSING
            continue
        values[name] = value
    return cls(**values)


def read(doc: Mapping[str, Any]) -> UsageEvent:
    """A usage event from its JSON object (see the module's note on leniency)."""
    event: UsageEvent = _read(UsageEvent, doc)
    return event


def parse_line(line: bytes | str) -> UsageEvent:
    """A usage event from a JSON Lines line; ValueError when it is not a JSON object."""
    doc = orjson.loads(line)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(doc, dict):
        raise ValueError("a usage event is a JSON object")
    return read(doc)


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def from_row(row: Row) -> UsageEvent:
    """A usage event from a PostgreSQL row of `event` (decoded jsonb) and `rating`
    (its feedback's, `FEEDBACK_JOIN`)."""
    rating = row["rating"]
    return dataclasses.replace(read(row["event"]), rating=None if rating is None else float(rating))


def parse_feedback_line(line: bytes | str) -> Feedback:
    """A feedback record from its JSON line; ValueError when a field is unusable."""
    doc = orjson.loads(line)
    feedback = _read(Feedback, doc) if isinstance(doc, dict) else _MISSING
    if feedback is _MISSING:
        raise ValueError(f"not a feedback record: {str(line)[:200]}")
    assert isinstance(feedback, Feedback)
    return feedback
