"""Learning from the proxy's own traffic: outcomes of `auto` decisions become evidence
per (kind of prompt, model) that `auto` blends with the selector's prior
(`selector_model.posterior.choose`).

Where it runs: the usage pipeline hands every completed usage event and every
feedback to `Learner.observe`, on its background side; `auto` reads the evidence from
memory (`AutoRouter.evidence`, the same object). Nothing here runs on the request
path, and the request path never waits for any I/O of this module.

What counts: each answered `auto` request's outcome by the one definition
(`selector_model.outcome`). An outcome can change after the fact: a rating replaces
the implicit signals about its request and the ratings of it given before
(`usage_event.rating_of`), the same prompt sent again soon fails the
first answer, and more copies of it make a repetition, which fails none
(`outcome.Repeats`). So the learner remembers, for the last `recent_requests` requests
(oldest evicted), what it counted for each (kind, model, outcome) under the proxy's
request id and the id the client saw, and takes the old outcome back when it counts
the new one. An id names every remembered request that carried it (a client's id
reused, or one of another client's ids sent as its own): a rating counts for each of
them made with the key that gave it, as a rebuild from the events counts it. Feedback
for a request it does not remember (none of the rating's key carried its id) is looked
up by request id in PostgreSQL when configured (one indexed read, in the background),
else ignored (a rebuild from the usage events counts it). What the proxy that served a
request counted of it, only that proxy knows (a retry it saw, who it knew to rate): a
proxy that counts a rating of another's request writes its id to autoroute_rated, and
the one that served it, reading it there, counts from then on what the rating took out
(`_Counted.rated_away`). With the id goes when the rating was given: a request rated
again through another proxy (a user who changed their mind, behind a load balancer)
has the latest rating counted once, the proxy that holds one given before giving it
up on reading there of a later one (`_pg_rated`).

Where it is kept: with the usage PostgreSQL DSN, a table of (kind, model, successes,
count, expected, and the six sums of where the model stood, `evidence.COLUMNS`) that
several proxies share: each writes its increments (an upsert that adds) and reads the
totals every `sync_seconds`. Without PostgreSQL, a JSON state file
beside the usage file. Either is rebuilt from the usage events (with their feedback)
when it is lost: no state file at start; an empty table at start, or one that held rows
and holds none or is gone at a sync (an operator's TRUNCATE or DROP under running
proxies: the learner's tables are made again, `_make_again`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from proxy import private_files
from proxy.config_selector import Learning
from proxy.config_services import Usage
from proxy.pg_migrations import apply
from proxy.usage.event import FEEDBACK, USAGE
from proxy.usage.stats import FEEDBACK_JOIN
from selector_model import features, outcome, usage_event
from selector_model.evidence import COLUMNS, Evidence, Row
from selector_model.kind import kind_of

log = logging.getLogger("autoroute.learning")

# Feedback for a request not seen yet (it can overtake its own usage event) waits this
# long for it, of the store answering (`Learner._wait_again`), before being dropped.
UNMATCHED_SECONDS = 30.0
# The most ratings that wait for their requests, per rater (the API key that gave them;
# without keys, the client's address) and of all raters together. Any client may post
# ratings by the thousand for ids that no request will carry: past its own bound a rater
# forgets its own oldest, so that it pushes out no other key's or client's. Past the
# total, which only many raters at once reach, the ratings waiting longest go.
UNMATCHED_PER_RATER = 10_000
UNMATCHED_MAX = 50_000
# The most requests one id names in memory: a rating recounts each. Past it, the id
# forgets the oldest request of the new one's key (else its oldest), so that no key
# sending many requests with another's id pushes that key's own out. The same bound
# and rule hold the ratings waiting for an id's request (`unmatched`).
PER_ID = 1_000
# The most raters (API keys) remembered as rating answers, the latest to rate kept.
RATERS_KEPT = 10_000

MIGRATIONS = (
    (
        1,
        "evidence",
        """
        CREATE TABLE autoroute_evidence (
            kind text NOT NULL,
            model text NOT NULL,
            successes double precision NOT NULL,
            count double precision NOT NULL,
            expected double precision NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, model)
        );
        """,
    ),
    (
        2,
        "evidence: where the model stood",
        # Rows counted before hold outcomes of unknown margin: counted at margin 0 and
        # each at its row's mean P (`evidence.widened`), adding no spread and no trend.
        """
        ALTER TABLE autoroute_evidence
            ADD COLUMN margins double precision NOT NULL DEFAULT 0,
            ADD COLUMN margin_squares double precision NOT NULL DEFAULT 0,
            ADD COLUMN margin_gaps double precision NOT NULL DEFAULT 0,
            ADD COLUMN prior_squares double precision NOT NULL DEFAULT 0,
            ADD COLUMN prior_margins double precision NOT NULL DEFAULT 0,
            ADD COLUMN prior_gaps double precision NOT NULL DEFAULT 0;
        UPDATE autoroute_evidence
            SET prior_squares = expected * expected / count,
                prior_gaps = expected * (successes - expected) / count
            WHERE count > 0;
        """,
    ),
    (
        3,
        "rated elsewhere",
        # The requests whose rating a proxy other than the one that served them counted
        # (`Learner._resolve_unmatched`), for the one that served them to stop counting
        # their implicit outcome (`Learner._pg_rated`).
        """
        CREATE TABLE autoroute_rated (
            id bigserial UNIQUE,
            request_id text PRIMARY KEY,
            added_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX autoroute_rated_added_at ON autoroute_rated (added_at);
        """,
    ),
    (
        4,
        "rated elsewhere: the latest",
        # When the rating a proxy counts was given (`Feedback.ts`) and which proxy counts
        # it: a proxy holding one given before gives it up (`Learner._pg_rated`). Null in
        # rows written before, which every later rating replaces.
        """
        ALTER TABLE autoroute_rated ADD COLUMN rated_at text, ADD COLUMN proxy text;
        """,
    ),
)
_LOCK_KEY = 0x6175746F6C726E31  # "autolrn1": its own migrations, apart from usage's
# Held by every write to autoroute_rated: one at a time, so that their ids rise in the
# order they commit, and a reader that has seen an id has seen every id below it.
_RATED_LOCK = _LOCK_KEY + 2
# How long a row of autoroute_rated is kept: far longer than a proxy's syncs are apart,
# while one that cannot reach PostgreSQL for longer counts on (a rebuild from the
# events counts each rating in place of its answer's implicit outcome).
RATED_KEPT_SECONDS = 3600.0
_UPSERT = (
    f"INSERT INTO autoroute_evidence (kind, model, {', '.join(COLUMNS)}) "
    "SELECT * FROM unnest($1::text[], $2::text[], "
    + ", ".join(f"${i + 3}::float8[]" for i in range(len(COLUMNS)))
    + ") ON CONFLICT (kind, model) DO UPDATE SET "
    + "".join(f"{c} = autoroute_evidence.{c} + excluded.{c}, " for c in COLUMNS)
    + "updated_at = now()"
)
_TOTALS = f"SELECT kind, model, {', '.join(COLUMNS)} FROM autoroute_evidence"
_MIGRATIONS_TABLE = "autoroute_learning_migrations"
_TABLES = ("autoroute_evidence", "autoroute_rated")
_MISSING = "SELECT " + " OR ".join(f"to_regclass('{t}') IS NULL" for t in _TABLES)
_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM autoroute_evidence)"
_EVENTS = f"SELECT u.event, f.rating FROM usage_events u {FEEDBACK_JOIN}"
# A request's row names the rating given last of those counted (its time, then the
# proxy's name, as text: "C" orders as Python does): a later one takes the row, with a
# new id, for the others to read.
_ADD_RATED = """
INSERT INTO autoroute_rated (request_id, rated_at, proxy)
SELECT r, a, $3 FROM unnest($1::text[], $2::text[]) AS w(r, a)
ON CONFLICT (request_id) DO UPDATE
SET id = nextval(pg_get_serial_sequence('autoroute_rated', 'id')),
    rated_at = excluded.rated_at, proxy = excluded.proxy, added_at = now()
WHERE autoroute_rated.rated_at IS NULL
   OR (excluded.rated_at COLLATE "C", excluded.proxy COLLATE "C")
      > (autoroute_rated.rated_at COLLATE "C", autoroute_rated.proxy COLLATE "C")
"""
_OLD_RATED = "DELETE FROM autoroute_rated WHERE added_at < now() - make_interval(secs => $1)"
_NEW_RATED = "SELECT id, request_id, rated_at, proxy FROM autoroute_rated WHERE id > $1 ORDER BY id"
_LAST_RATED = "SELECT max(id) FROM autoroute_rated"
_CARRYING = (
    "SELECT u.request_id, u.client_request_id, u.event, r.rated_at, r.proxy "
    "FROM usage_events u LEFT JOIN autoroute_rated r ON r.request_id = u.request_id "
    "WHERE u.request_id = ANY($1::text[]) OR u.client_request_id = ANY($1::text[])"
)


def decision_of(event: Mapping[str, Any]) -> tuple[str, str, float, float] | None:
    """(kind, chosen model, the selector's P(success) for it, its margin over the best
    other candidate's) of an `auto` usage event, or None for another request (or a
    replayed answer: `outcome.replayed`; one a cloud provider gave, which says nothing
    of the local model `auto` chose, nor chose one: `provider`). An event recorded
    before decisions recorded the margin gives 0 (no more than the model's P tied the
    best other's)."""
    if outcome.no_evidence(event):
        return None
    decision = event.get("decision")
    if not isinstance(decision, Mapping) or not isinstance(decision.get("chosen"), str):
        return None
    prior = decision.get("p_success")
    if isinstance(prior, bool) or not isinstance(prior, int | float):
        return None
    kind = decision.get("kind")
    if not isinstance(kind, str):
        vector = event.get("features")
        if (
            not isinstance(vector, Mapping)
            or vector.get("schema_version") != features.SCHEMA_VERSION
            or not isinstance(vector.get("request"), list)
            or len(vector["request"]) != len(features.REQUEST_FEATURES)
        ):
            return None
        kind = kind_of(vector["request"])
    margin = decision.get("margin")
    if isinstance(margin, bool) or not isinstance(margin, int | float):
        margin = 0.0
    return kind, str(decision["chosen"]), float(prior), float(margin)


def evidence_from_events(events: Iterable[Mapping[str, Any]]) -> Evidence:
    """The evidence a set of usage events (ratings joined) gives: what the learner
    would have counted had it seen them all."""
    listed = [e for e in events if decision_of(e) is not None]
    rating = outcome.raters(listed)
    evidence = Evidence()
    for event, graded in zip(listed, outcome.grade(listed), strict=True):
        decided = decision_of(event)
        result = outcome.estimated(graded, outcome.event_rater(event) in rating)
        if result is not None and decided is not None:
            kind, model, prior, margin = decided
            evidence.update(
                kind, model, outcome.against(result, prior), prior, result.weight, margin
            )
    return evidence


# A rating and who gave it: (rating, the API key's id, its hash, the client's address
# where no key gave it, else "", when it was given: `Feedback.ts`, "" where unsaid).
_Rating = tuple[float, str | None, str | None, str, str]
# Who gave a rating: its `_Rating` but the rating and its time (`_rater`).
_Rater = tuple[str | None, str | None, str]


def _rater(given: _Rating) -> _Rater:
    return given[1:4]


@dataclass(slots=True)
class _Waiting:
    """One rater's ratings in `Learner.unmatched`: the ids they wait under, in the order
    of its first rating of each, with how many of its ratings each holds."""

    ids: OrderedDict[str, int] = field(default_factory=OrderedDict)
    count: int = 0


@dataclass(slots=True)
class _Counted:
    """What the learner counted for one request, to take back when it changes. Small:
    up to `recent_requests` of them are kept (the implicit outcomes are shared)."""

    kind: str
    model: str
    prior: float  # the selector's P(success) for the model on this prompt
    margin: float  # that P minus the best other candidate's
    implicit: outcome.Result | None  # the answer's implicit outcome, were it not retried
    if_retried: outcome.Result | None  # the same, had the prompt been sent again soon
    api_key_id: str | None = None  # the key the request was made with (its event's)
    api_key_hash: str | None = None
    request_id: str = ""  # the proxy's id of the request
    retried: bool = False
    rating: float | None = None  # the latest rating it took (`rate`)
    # When the latest rating this proxy knows of was given (`Feedback.ts`): its own
    # (`rating`), or one another proxy counted (`rated_elsewhere`).
    rated_at: str = ""
    applied: outcome.Result | None = None
    rater_rates: bool = False  # its rater rates answers (`outcome.estimated`)
    # Another proxy counted its rating in place of `rated_away` (`Learner._pg_rated`).
    rated_elsewhere: bool = False

    @classmethod
    def of(cls, decided: tuple[str, str, float, float], event: Mapping[str, Any]) -> _Counted:
        raw = event.get("outcome")
        answer = raw if isinstance(raw, Mapping) else {}
        raw = event.get("client")
        client = raw if isinstance(raw, Mapping) else {}
        rid = event.get("request_id")
        return cls(
            *decided,
            *_implicit(answer, outcome.autocompletes(event)),
            *usage_event.key_of(client),
            rid if isinstance(rid, str) else "",
        )

    @property
    def rated_away(self) -> outcome.Result | None:
        """What a rating counted by a proxy that did not serve the request replaces: its
        implicit outcome as one of a client that rates (nothing of a completed answer,
        a failure in full), whatever the proxy that served it learnt of it since (a
        retry, who rates). That one counts this in the end (`result`)."""
        return outcome.estimated(self.implicit, True)

    def takes(self, given: _Rating) -> bool:
        """Whether a rating counts for this request: not one given with another key
        than the request's (`usage_event.rating_counts`)."""
        _, rater, rater_hash, _, _ = given
        return usage_event.rating_counts(rater, self.api_key_id, rater_hash, self.api_key_hash)

    def rate(self, ratings: Iterable[_Rating]) -> bool:
        """Take the ratings this request `takes`: each replaces the one before, unless
        given before the latest this proxy knows of (`usage_event.rating_of`, as the
        ratings come); whether one was taken."""
        taken = False
        for given in ratings:
            if self.takes(given) and given[4] >= self.rated_at:
                self.rating, self.rated_at = given[0], given[4]
                taken = True
        return taken

    @property
    def rater(self) -> str:
        return outcome.rater_of(self.api_key_id, self.api_key_hash)

    def result(self) -> outcome.Result | None:
        if self.rating is not None:
            return outcome.rated(self.rating)
        if self.rated_elsewhere:
            return self.rated_away
        implicit = self.if_retried if self.retried else self.implicit
        return outcome.estimated(implicit, self.rater_rates)


_IMPLICIT: dict[tuple[Any, ...], tuple[outcome.Result | None, outcome.Result | None]] = {}


def _implicit(
    answer: Mapping[str, Any], autocomplete: bool
) -> tuple[outcome.Result | None, outcome.Result | None]:
    """(implicit outcome, the same had the prompt been sent again soon), one pair of
    objects per distinct answer shape (a handful), shared by the requests remembered.
    `autocomplete`: the request was an editor's autocomplete (`outcome.autocompletes`)."""
    key = (
        answer.get("status"),
        bool(answer.get("error")),
        outcome.refused(answer.get("error")),
        bool(answer.get("cancelled")),
        bool(answer.get("unreached")),
        answer.get("done_reason"),
        autocomplete,
    )
    pair = _IMPLICIT.get(key)
    if pair is None:
        if len(_IMPLICIT) > 256:  # done_reason is the backend's string: bound the cache
            _IMPLICIT.clear()
        pair = _IMPLICIT[key] = (
            outcome.implicit(answer, autocomplete=autocomplete),
            outcome.implicit(answer, retried=True, autocomplete=autocomplete),
        )
    return pair


class Learner:
    def __init__(self, settings: Learning, usage: Usage, evidence: Evidence) -> None:
        self.settings = settings
        self.usage = usage
        self.evidence = evidence  # totals: the store's, plus what is not written yet
        self.pending = Evidence()  # increments not written to PostgreSQL yet
        # Request ids (the proxy's, and the client's) to the request that carried each,
        # or the requests when several did (`carrying`), the id used last at the end;
        # `held` counts the requests in all.
        self.recent: OrderedDict[str, _Counted | tuple[_Counted, ...]] = OrderedDict()
        self.held = 0
        # The recent copies of each prompt, to tell a retry from a repetition.
        self.prompts: outcome.Repeats[_Counted] = outcome.Repeats(settings.recent_requests)
        # Ratings (with who gave each) waiting for their request's event, by id, in
        # the order of each id's first rating, with when that came.
        self.unmatched: OrderedDict[str, tuple[float, list[_Rating]]] = OrderedDict()
        # Who gave them, and the ratings waiting in all (`UNMATCHED_PER_RATER`).
        self.raters: dict[_Rater, _Waiting] = {}
        self.waiting = 0
        # Who rates answers (`outcome.rater_of`; their unrated answers count for nothing,
        # `outcome.estimated`), the latest to rate last.
        self.rating: OrderedDict[str, None] = OrderedDict()
        # With PostgreSQL: the requests whose rating this one counted, with when the
        # latest was given, to be written to autoroute_rated (`_announce`); the last id
        # read there; this proxy's name in it.
        self.rated_here: dict[str, str] = {}
        self.rated_read = 0
        self.name = uuid.uuid4().hex
        self.dsn = usage.postgres_dsn
        self.state_file = self._state_path()
        self.store = "off" if not settings.enabled else ("postgres" if self.dsn else "file")
        self.conn: asyncpg.Connection | None = None
        self.dirty = False
        self.started = False  # the store was read (PostgreSQL: or rebuilt)
        self.stored = False  # PostgreSQL's evidence table held rows when last read
        self.rebuilt: int | None = None  # events read by the last rebuild
        self.last_sync: float | None = None
        self.error: str | None = None
        self.observed = 0

    def _state_path(self) -> Path:
        if self.settings.state_file:
            return Path(self.settings.state_file).expanduser()
        return Path(self.usage.file_path).expanduser().parent / "learning.json"

    # Observing (the usage pipeline's background side) ------------------------------

    def observe(self, what: str, doc: Mapping[str, Any], client: str = "") -> None:
        """`client`: the address a feedback came from where no API key gave it."""
        if self.store == "off":
            return
        if what == USAGE:
            self._event(doc)
        elif what == FEEDBACK:
            key = usage_event.key_of(doc)
            ts = doc.get("ts")
            given = (float(doc["rating"]), *key, client, ts if isinstance(ts, str) else "")
            self._feedback(str(doc.get("request_id")), given)

    def _event(self, event: Mapping[str, Any]) -> None:
        decided = decision_of(event)
        if decided is None:
            return
        self.observed += 1
        counted = self._counted(decided, event)
        # Each id once: a client may send its own request's proxy id as its id.
        ids = dict.fromkeys(
            i
            for i in (event.get("request_id"), event.get("client_request_id"))
            if isinstance(i, str) and i
        )
        for rid in ids:
            waiting = self.unmatched.get(rid)
            if waiting is not None:
                # Ratings given with another key wait on for a request of theirs. One
                # pass each: a comparison of every rating with every one taken would
                # cost the square of their number.
                counted.rate(waiting[1])
                taken = [r for r in waiting[1] if counted.takes(r)]
                waiting[1][:] = [r for r in waiting[1] if not counted.takes(r)]
                if not waiting[1]:
                    del self.unmatched[rid]
                self._forget(rid, taken)
        self._retry(event, counted)
        self._take(ids, counted)

    def _counted(
        self, decided: tuple[str, str, float, float], event: Mapping[str, Any]
    ) -> _Counted:
        """`_Counted.of` the event, knowing whether its rater rates answers."""
        counted = _Counted.of(decided, event)
        counted.rater_rates = counted.rater in self.rating
        return counted

    def _take(self, ids: Iterable[str], counted: _Counted) -> None:
        """`counted` into the estimate and remembered under `ids`; its rater, where it
        carries a rating, known to rate answers (`_rates`)."""
        self._count(counted)
        self._remember(ids, counted)
        if counted.rating is not None:
            self._rates(counted.rater)
            self._announce(counted)

    def _announce(self, counted: _Counted) -> None:
        """With PostgreSQL, say at the next sync that this proxy counts a rating of
        `counted` given at its `rated_at`: another proxy holding a rating of the same
        request given before gives it up (`_pg_rated`), so that the latest counts once."""
        if self.store == "postgres":
            self._to_write(counted.request_id, counted.rated_at)

    def _to_write(self, rid: str, at: str) -> None:
        """`rid` rated here at `at`, for the next sync to write: the latest time said of
        it since the last write."""
        self.rated_here[rid] = max(at, self.rated_here.get(rid, at))

    def _remember(self, ids: Iterable[str], counted: _Counted) -> None:
        """`counted` under each of its ids, beside the other requests that carried it;
        the requests of the ids used longest ago forgotten past `recent_requests`."""
        recent = self.recent
        for rid in ids:
            carried = self.carrying(rid)
            recent.pop(rid, None)
            if len(carried) >= PER_ID:
                same = (counted.api_key_id, counted.api_key_hash)
                drop = next(
                    (i for i, c in enumerate(carried) if (c.api_key_id, c.api_key_hash) == same), 0
                )
                carried = carried[:drop] + carried[drop + 1 :]
                self.held -= 1
            recent[rid] = (*carried, counted) if carried else counted
            self.held += 1
        while self.held > self.settings.recent_requests and len(recent) > 1:
            forgotten = recent.popitem(last=False)[1]
            self.held -= len(forgotten) if isinstance(forgotten, tuple) else 1

    def carrying(self, rid: str) -> tuple[_Counted, ...]:
        """The remembered requests that carried the id `rid`."""
        held = self.recent.get(rid)
        if held is None:
            return ()
        return held if isinstance(held, tuple) else (held,)

    def _retry(self, event: Mapping[str, Any], counted: _Counted) -> None:
        """The same prompt from the same user soon after fails the earlier one, unless
        it is one copy of many (`outcome.Repeats`): count the marks it changes."""
        key, when = outcome.retry_key(event), outcome.event_time(event)
        if key is None or when is None:
            return
        for copy, retried in self.prompts.send(key, when, outcome.answer_end(event, when), counted):
            copy.retried = retried
            self._count(copy)

    def _feedback(self, request_id: str, given: _Rating) -> None:
        # Each remembered request that carried the id and was made with the rating's
        # key; with none, the rating waits for its request (another client's carrying
        # the id does not stand in for it).
        taken = False
        for counted in self.carrying(request_id):
            if counted.takes(given):
                if counted.rate((given,)):
                    self._count(counted)
                    self._announce(counted)
                taken = True
        if taken:
            self._rates(outcome.rater_of(given[1], given[2]))
            return
        held = self.unmatched.setdefault(request_id, (time.monotonic(), []))[1]
        rater = _rater(given)
        if len(held) >= PER_ID:
            # A bounded number per id, as of requests (`_remember`): past it the
            # rater's own oldest goes, never a rating another key gave.
            drop = next((i for i, r in enumerate(held) if _rater(r) == rater), 0)
            self._forget(request_id, (held.pop(drop),))
        held.append(given)
        waiting = self.raters.get(rater)
        if waiting is None:
            waiting = self.raters[rater] = _Waiting()
        waiting.ids[request_id] = waiting.ids.get(request_id, 0) + 1
        waiting.count += 1
        self.waiting += 1
        if waiting.count > UNMATCHED_PER_RATER:
            self._drop_oldest(rater, waiting)
        while self.waiting > UNMATCHED_MAX:
            rid, (_, ratings) = self.unmatched.popitem(last=False)
            self._forget(rid, ratings)

    def _rates(self, rater: str) -> None:
        """`rater` rated an answer: its unrated answers remembered, and those to come,
        count for nothing (`outcome.estimated`). Once per rater: the remembered
        requests are looked through when it first rates."""
        rating = self.rating
        if rater in rating:
            rating.move_to_end(rater)
            return
        rating[rater] = None
        if len(rating) > RATERS_KEPT:
            rating.popitem(last=False)
        for held in list(self.recent.values()):
            for counted in held if isinstance(held, tuple) else (held,):
                if not counted.rater_rates and counted.rater == rater:
                    counted.rater_rates = True
                    self._count(counted)

    def _drop_oldest(self, rater: _Rater, waiting: _Waiting) -> None:
        """The oldest of the ratings `rater` has waiting, out of `unmatched`."""
        rid = next(iter(waiting.ids))
        held = self.unmatched[rid][1]
        dropped = held.pop(next(i for i, r in enumerate(held) if _rater(r) == rater))
        if not held:
            del self.unmatched[rid]
        self._forget(rid, (dropped,))

    def _forget(self, rid: str, ratings: Iterable[_Rating]) -> None:
        """`ratings`, waiting under `rid`, taken out of `unmatched`: no longer counted
        against their raters."""
        raters = self.raters
        for given in ratings:
            rater = _rater(given)
            waiting = raters[rater]
            left = waiting.ids[rid] - 1
            if left:
                waiting.ids[rid] = left
            else:
                del waiting.ids[rid]
            waiting.count -= 1
            if not waiting.count:
                del raters[rater]
            self.waiting -= 1

    def _count(self, counted: _Counted) -> None:
        """Count a request's outcome as it stands now, taking back what was counted."""
        now = counted.result()
        before = counted.applied
        if before == now:
            return
        if before is not None:
            self._add(counted, outcome.against(before, counted.prior), -before.weight)
        if now is not None:
            self._add(counted, outcome.against(now, counted.prior), now.weight)
        counted.applied = now

    def _add(self, counted: _Counted, value: float, weight: float) -> None:
        for evidence in (self.evidence, self.pending):
            evidence.update(
                counted.kind, counted.model, value, counted.prior, weight, counted.margin
            )
        self.dirty = True

    # Keeping it (background) ----------------------------------------------------------

    async def start(self) -> None:
        """Read the stored evidence, or rebuild it from the usage events when it is
        lost. A store that cannot be read now starts empty and is read again later."""
        if self.store == "off":
            return
        try:
            if self.store == "postgres":
                await self._pg_start()
            else:
                await asyncio.to_thread(self._file_start)
            self.last_sync = time.time()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("learning: could not read the stored evidence: %s", self.error)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_seconds)
            await self.sync()

    async def sync(self) -> None:
        """Write what changed and, with PostgreSQL, read every proxy's totals."""
        if self.store == "off":
            return
        try:
            if self.store == "postgres":
                if self.started:
                    await self._pg_sync()
                else:  # PostgreSQL was not there at start: read (or rebuild) it now
                    await self._pg_start()
            elif self.dirty:
                self.dirty = False
                self.pending = Evidence()  # the file holds the totals
                snapshot = list(self.evidence.rows())
                try:
                    await asyncio.to_thread(self._file_save, snapshot)
                except BaseException:
                    self.dirty = True  # written at the next sync
                    raise
            self.last_sync = time.time()
            if self.error is not None:
                log.info("learning: sync works again")
                self._wait_again()
            self.error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            # Once per failure, not at every sync (every 2 s while a store is down).
            if error != self.error:
                log.warning("learning: sync failed: %s", error)
            else:
                log.debug("learning: sync failed again: %s", error)
            self.error = error
            # The ratings waiting for their requests wait on: their requests could not be
            # looked up, and the events of another proxy's wait in its spool meanwhile.
            return
        self._expire_unmatched()

    async def close(self) -> None:
        await self.sync()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None

    def status(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for kind, _, _, count, *_ in self.evidence.rows():
            if count > 0:
                kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "enabled": self.store != "off",
            "store": self.store,
            "state_file": str(self.state_file) if self.store == "file" else None,
            "prior_strength": {
                "known": self.settings.known_prior_strength,
                "unseen": self.settings.prior_strength,
            },
            "evidence_rows": sum(kinds.values()),
            "rows_by_kind": kinds,
            "observed_requests": self.observed,
            "remembered_requests": self.held,
            "unmatched_feedback": len(self.unmatched),
            "rebuilt_from_events": self.rebuilt,
            "last_sync": self.last_sync,
            "error": self.error,
        }

    # The state file -------------------------------------------------------------

    def _file_start(self) -> None:
        path = self.state_file
        if path.exists():
            try:
                doc = orjson.loads(path.read_bytes())
                # Version 1's rows hold three sums: `Evidence.replace` widens them.
                rows = [r for r in doc["rows"] if len(r) in (5, 2 + len(COLUMNS))]
                if len(rows) != len(doc["rows"]):
                    raise ValueError("a row of another width")
                self.evidence.replace(rows)
                return
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                # Kept aside, not overwritten: the path may name a file not the learner's.
                aside = path.with_name(path.name + ".unreadable")
                os.replace(path, aside)
                log.warning(
                    "learning: %s is unreadable (%s): kept as %s, rebuilding it", path, exc, aside
                )
        from proxy.usage.export import from_files

        events = [
            e.document() for e in from_files(self.usage.file_path, datetime.fromtimestamp(0, UTC))
        ]
        self.evidence.replace(evidence_from_events(events).rows())
        self.rebuilt = len(events)
        self._file_save(list(self.evidence.rows()))

    def _file_save(self, rows: list[Row]) -> None:
        path = self.state_file
        private_files.make_dirs(path.parent)
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
        private_files.write_file(temporary, orjson.dumps({"version": 2, "rows": rows}))
        os.replace(temporary, path)  # readers see the old file or the new, never half

    # PostgreSQL -------------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            assert self.dsn is not None
            conn = await asyncpg.connect(self.dsn, timeout=5)
            await conn.set_type_codec(
                "jsonb", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog"
            )
            await apply(conn, MIGRATIONS, _MIGRATIONS_TABLE, _LOCK_KEY)
            if await conn.fetchval(_MISSING):
                await _make_again(conn)
            self.conn = conn
        return self.conn

    async def _pg_start(self) -> None:
        conn = await self._connection()
        async with conn.transaction():
            # One proxy rebuilds; the others wait here and then find the table filled.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY + 1)
            if await conn.fetchval("SELECT count(*) FROM autoroute_evidence") == 0:
                events = await self._pg_events(conn)
                rebuilt = evidence_from_events(events)
                rows = list(rebuilt.rows())
                if rows:
                    await conn.execute(_UPSERT, *_columns(rows))
                self.rebuilt = len(events)
                # The events hold what was counted while PostgreSQL was away.
                self.pending = Evidence()
        self.started = True
        await self._pg_rated(conn)
        await self._pg_reload(conn)

    @staticmethod
    async def _pg_events(conn: asyncpg.Connection) -> list[dict[str, Any]]:
        exists = await conn.fetchval(
            "SELECT to_regclass('usage_events') IS NOT NULL AND to_regclass('feedback') IS NOT NULL"
        )
        if not exists:
            return []
        return [usage_event.from_row(row).document() for row in await conn.fetch(_EVENTS)]

    async def _pg_sync(self) -> None:
        conn = await self._connection()
        if await self._lost(conn):
            # Dropped or emptied under the proxies: made again and rebuilt from the usage
            # events, which hold what `pending` counts (one proxy rebuilds, `_pg_start`).
            self.pending = Evidence()
            await self._pg_start()
            return
        pending, self.pending = self.pending, Evidence()
        rows = [r for r in pending.rows() if any(r[2:])]
        try:
            if rows:
                await conn.execute(_UPSERT, *_columns(rows))
        except BaseException:
            for row in rows:  # written later, not lost
                self.pending.add(row[0], row[1], *row[2:])
            raise
        await self._resolve_unmatched(conn)
        await self._pg_rated(conn)
        await self._pg_reload(conn)

    async def _lost(self, conn: asyncpg.Connection) -> bool:
        """Whether a table of the learner's is gone (the next connection makes it again,
        `_make_again`), or the evidence table that held rows holds none."""
        if await conn.fetchval(_MISSING):
            await conn.close()
            self.conn = None
            return True
        return self.stored and bool(await conn.fetchval(_EMPTY))

    async def _pg_rated(self, conn: asyncpg.Connection) -> None:
        """Say which requests this one counted a rating of, and when it was given
        (`_announce`), and take what the others say: a request of which another proxy
        counts a rating given later than any this one took counts `rated_away` here from
        then on (the proxy that served it: in place of what it counted of it, which the
        other took out; another: nothing, as `_resolve_unmatched` counted it), and its
        rater is one who rates."""
        written, self.rated_here = self.rated_here, {}
        try:
            if written:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _RATED_LOCK)
                    await conn.execute(_OLD_RATED, RATED_KEPT_SECONDS)
                    await conn.execute(_ADD_RATED, list(written), list(written.values()), self.name)
        except BaseException:
            for rid, at in written.items():  # written at the next sync
                self._to_write(rid, at)
            raise
        if not self.recent:  # none of this proxy's requests to find there (a start)
            self.rated_read = await conn.fetchval(_LAST_RATED) or self.rated_read
            return
        for row in await conn.fetch(_NEW_RATED, self.rated_read):
            self.rated_read = row["id"]
            rid, at, by = row["request_id"], row["rated_at"] or "", row["proxy"] or ""
            if by == self.name:
                continue
            for counted in self.carrying(rid):
                if counted.request_id != rid:
                    continue
                if counted.rating is not None and (counted.rated_at, self.name) > (at, by):
                    continue  # its own was given later: the other gives its up on reading it
                counted.rating = None
                counted.rated_at = max(counted.rated_at, at)
                counted.rated_elsewhere = True
                self._count(counted)
                self._rates(counted.rater)

    async def _pg_reload(self, conn: asyncpg.Connection) -> None:
        totals = await conn.fetch(_TOTALS)
        # What this proxy has counted since it last wrote is not in the totals yet.
        rows = [tuple(r) for r in totals]
        self.stored = bool(rows)
        self.evidence.replace([*rows, *self.pending.rows()])

    async def _resolve_unmatched(self, conn: asyncpg.Connection) -> None:
        """Feedback whose request this proxy does not remember: another proxy served it,
        or it is older than what is remembered. The events that carried its id, the
        proxy's (the primary key) or the client's own (`client_request_id`, which the
        client saw in the answer's X-Request-Id), each counted as `_feedback` counts a
        remembered one."""
        now = time.monotonic()
        due = [rid for rid, (since, _) in self.unmatched.items() if now - since >= 1.0]
        if not due:
            return
        if await conn.fetchval("SELECT to_regclass('usage_events') IS NULL"):
            return
        found = await conn.fetch(_CARRYING, due)
        carried: dict[str, list[asyncpg.Record]] = {}
        for row in found:
            for rid in dict.fromkeys((row["request_id"], row["client_request_id"])):
                if rid in self.unmatched:
                    carried.setdefault(rid, []).append(row)
        for rid, rows in carried.items():
            ratings = self.unmatched.pop(rid)[1]
            self._forget(rid, ratings)
            for row in rows:
                own = row["request_id"]
                if any(c.request_id == own for c in self.carrying(own)):
                    continue  # remembered here: the ratings were offered to it, not for it
                event = dict(row["event"])
                decided = decision_of(event)
                if decided is None:
                    continue
                counted = self._counted(decided, event)
                # A rating given later that another proxy counts stays (`_pg_rated`).
                if row["proxy"] not in (None, self.name):
                    counted.rated_at = row["rated_at"] or ""
                counted.rate(ratings)
                if counted.rating is None:
                    continue  # given with another key, or before the one counted
                # The proxy that served it counts `rated_away` of it once it reads its id
                # in autoroute_rated (`_pg_rated`), whatever it counted before: only that
                # is replaced here.
                counted.applied = counted.rated_away
                ids = (own, row["client_request_id"])
                self._take(dict.fromkeys(i for i in ids if i), counted)

    def _wait_again(self) -> None:
        """The store is back: each rating waiting for its request waits
        `UNMATCHED_SECONDS` from now, time for the events spooled in the outage, this
        proxy's and the others', to be written and found."""
        now = time.monotonic()
        for rid, (_, ratings) in list(self.unmatched.items()):
            self.unmatched[rid] = (now, ratings)

    def _expire_unmatched(self) -> None:
        now = time.monotonic()
        while self.unmatched:
            since = next(iter(self.unmatched.values()))[0]
            if now - since < UNMATCHED_SECONDS:
                break
            rid, (_, ratings) = self.unmatched.popitem(last=False)
            self._forget(rid, ratings)


async def _make_again(conn: asyncpg.Connection) -> None:
    """The learner's tables made anew where one is gone (an operator dropped it), by
    the migrations, as at a first start: what they hold is rebuilt from the usage
    events (`Learner._pg_start`), and what the others still hold would be counted
    twice or is of no use without it."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        if await conn.fetchval(_MISSING):  # not made again by another proxy meanwhile
            await conn.execute(f"DROP TABLE IF EXISTS {', '.join(_TABLES)}, {_MIGRATIONS_TABLE}")
            await apply(conn, MIGRATIONS, _MIGRATIONS_TABLE, _LOCK_KEY)


def _columns(rows: list[Row]) -> tuple[list[Any], ...]:
    return tuple([r[i] for r in rows] for i in range(2 + len(COLUMNS)))
