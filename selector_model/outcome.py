"""The one definition of success: what an answered request's outcome was, in [0, 1].

Online learning (`proxy.learning`), training (`training.data`) and the A/B report
(`proxy.experiments`) all read outcomes from here. An outcome is a value in [0, 1]
and a weight, the strength of the evidence:

- An explicit rating, `POST /api/autoroute/feedback` with `rating` in [0, 1], wins over
  every implicit signal about the same request: a thumbs-up is 1, a thumbs-down 0
  (several ratings of one request: the latest, `usage_event.rating_of`). Weight `RATED`.
- An error, or the client cancelling before the end: 0 (weight `FAILED`). Not a client
  that left before the answer began (no status: nothing of it reached the client, as
  when an editor cancels a completion at the next keystroke): it judged nothing of
  the answer, and counted it would let any client drive a model's estimate to 0. Nor
  an editor's autocomplete the client cancelled (`autocompletes`: a suffix, or a raw
  prompt the editor templated itself): editors cancel one at the next keystroke
  whatever its answer said, and counted, every key pressed would fail the model that
  completes code.
- The same prompt (its SHA-256) sent again by the same user with the same API key
  (`retry_key`) to the same model name (`auto`, `auto:best`, ...) after the first
  answer ended and within `RETRY_WINDOW_SECONDS` of its end: the first answer failed,
  0 (weight `FAILED`). A copy sent to another model name (a comparison), or while
  another copy is still answering (a fan-out, concurrent streams: whichever ends
  last), says nothing of an answer. Nor does a repetition: copies sent one within the
  window of another's end form a chain, and a chain of more than `RETRY_SENDS` copies
  (a load test, a benchmark, a client that polls) retries none of them, where a
  person retries once or twice; nor does a copy the user sent after `MOVED_ON` other
  prompts since the last one (a benchmark's next pass over its prompts), where a
  person retries before moving on (`Repeats`, read alike online and offline).
- An answer cut at the token limit (done_reason "length", or "max_tokens" on the
  Anthropic API): `TRUNCATED_VALUE`, mostly a failure (the answer is incomplete) but
  not certainly (the client may have asked for a short answer with num_predict).
- Otherwise a completed answer: 1, a weak success (weight `COMPLETED`): most answers
  are taken without a word, good or bad, so silence says little. To the online
  estimate of a model it says nothing beyond the answer not failing (`against`), and
  nothing at all where its rater rates answers (`estimated`).

A request the client got a 4xx for (bad input, a model it may not use) ran no model:
it has no outcome; nor has one the client left before its answer began, nor one Ollama
refused for what the request itself says, though with a 500 (`refused`: a `format` that
is no schema, an option of the wrong type, a template that does not parse or run, the
model's chat template refusing the request's messages), which any client can send at
will: counted, one key could drive the estimate of every model `auto` chooses to 0 for
everyone. Nor has the proxy's own answer to a request that reached no backend
(`unreached`: none of the chosen model's backends could be connected to), rated or
not: no model ran, and counted, an outage would lower the model's estimate for
everyone after it ended. Outcomes of 0.5 and above count as a success where a
yes or no is needed (`success`).

A request failed (`failed`) or was refused (`refusal`) as the stats and the status page
count it, whether or not a model ran: the proxy's 503 for an outage is a failure there.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from selector_model import usage_event
from selector_model.features.schema import REQUEST_FEATURES, SCHEMA_VERSION

RATED = 1.0
FAILED = 1.0
TRUNCATED_VALUE = 0.2
TRUNCATED_WEIGHT = 0.5
COMPLETED = 0.2
RETRY_WINDOW_SECONDS = 120.0
# The most copies of one prompt a chain of retries holds: a person retries once or
# twice; more is a repetition (`Repeats`).
RETRY_SENDS = 3
# How many other prompts a user sends before a copy of an earlier one is no retry of it:
# a person retries an answer before moving on to other questions (one other beside it,
# another conversation, still leaves a retry a retry); a benchmark going over its
# prompts again sends every other one in between (`Repeats`).
MOVED_ON = 2
TRUNCATED_REASONS = frozenset({"length", "max_tokens"})
# Who sent which prompt to which model name (`retry_key`).
RetryKey = tuple[str, str, str, str]
T = TypeVar("T")
# The starts of Ollama's errors for a request it cannot run because of what the request
# itself says, found before anything is generated, which it answers with a 500 at the
# head, as it answers a runner that failed (`refused`). Its own messages: a runner that
# stops, crashes or runs out of memory says otherwise, and still fails.
_REFUSED = re.compile(
    # llm/llama_server.go (Completion; Chat through llamaServerChatResponseFormat): a
    # `format` neither "json" nor a JSON Schema object ("invalid format: %q; expected
    # \"json\" or a valid JSON Schema object"), also the OpenAI routes' non-object schema.
    r"invalid format: "
    # api/types.go (Options.FromMap, from server/routes.go's scheduleRunner, answered by
    # handleScheduleError with a 500): an option of the wrong type ("option %q must be
    # of type integer", "... of an array of strings").
    r'|option "(?:[^"\\]|\\.)*" must be of '
    # Go's text/template, through template/template.go's Parse and Execute: the
    # request's own `template` that does not parse, or a template that does not run on
    # the request's values (server/routes.go's GenerateHandler, server/prompt.go's
    # chatPrompt; a template named "" says "template: :1: ...").
    r"|template: :"
    # llm/llama_server.go (ApplyChatTemplate): the model's chat template, which
    # llama-server runs, refusing the request's messages (roles that do not alternate,
    # a system message it does not take): what the request says, as a Go template that
    # does not run on it.
    r"|llama-server template error: "
)


@dataclass(frozen=True, slots=True)
class Result:
    value: float  # in [0, 1]
    weight: float  # how much this outcome counts
    source: str  # rating | error | cancelled | retried | truncated | completed

    @property
    def success(self) -> bool:
        return self.value >= 0.5


def rated(rating: float) -> Result:
    return Result(min(1.0, max(0.0, float(rating))), RATED, "rating")


def refused(error: object) -> bool:
    """Whether an answer's `error` (a usage event's `outcome.error`: the backend's
    message) is Ollama's refusal of the request for what it says (`_REFUSED`), not a
    model or runner that failed."""
    return isinstance(error, str) and _REFUSED.match(error) is not None


def left(status: object, cancelled: object) -> bool:
    """Whether the client left before its answer began (cancelled, no status): nothing of
    the answer reached it, and it judged nothing of it. Neither a failure nor a
    refusal."""
    return bool(cancelled) and not status


REFUSAL = "refusal"
FAILURE = "failure"


def judged(status: object, error: object, cancelled: object = False) -> str | None:
    """How an answer (its status, `error`, whether the client cancelled) counts, in one
    reading: `REFUSAL` where it refused the request for what it says or who sent it (a
    4xx: bad input, a limit, a key, a model it may not use; or an error Ollama gives a
    request it cannot run, `refused`), so no model ran and nothing failed; `FAILURE`
    where it failed (an error or a 5xx: a backend, its model or the proxy failed, a
    stream cut off; or no status with the client still there: the proxy failed before
    any answer, and aiohttp answers its 500); None for neither, an answer the client
    `left` before it began included. `failed_sql` and `refusal_sql` are the same in
    SQL."""
    if left(status, cancelled):
        return None
    if (isinstance(status, int) and 400 <= status < 500) or (error and refused(error)):
        return REFUSAL
    if error or not status or (isinstance(status, int) and status >= 500):
        return FAILURE
    return None


def refusal(status: object, error: object, cancelled: object = False) -> bool:
    """Whether an answer refused the request (`judged`)."""
    return judged(status, error, cancelled) is REFUSAL


def failed(status: object, error: object, cancelled: object = False) -> bool:
    """Whether an answer failed (`judged`)."""
    return judged(status, error, cancelled) is FAILURE


def _verdict_sql(row: str) -> tuple[str, str, str]:
    """`judged`'s parts as PostgreSQL boolean expressions over the usage_events row
    `row` (a table name or alias) by its columns `status`, `error` and `cancelled`
    (`status` and `cancelled` are NOT NULL): the client `left`, a refusal read alone,
    an answer that failed read alone. `refused` by the same pattern, anchored as
    `re.match` anchors it, in a dollar-quoted string, which takes it as it is."""
    pattern = f"^(?:{_REFUSED.pattern})"
    assert "$re$" not in pattern
    status, error, cancelled = (f"{row}.{column}" for column in ("status", "error", "cancelled"))
    gone = f"({cancelled} AND {status} = 0)"
    refused_sql = f"coalesce({error} ~ $re${pattern}$re$, false)"
    refusing = f"({status} BETWEEN 400 AND 499 OR {refused_sql})"
    answer_failed = f"(coalesce({error}, '') <> '' OR {status} = 0 OR {status} >= 500)"
    return gone, refusing, answer_failed


def failed_sql(row: str) -> str:
    """`failed` as a PostgreSQL boolean expression over the usage_events row `row`
    (`_verdict_sql`)."""
    gone, refusing, answer_failed = _verdict_sql(row)
    return f"(NOT {gone} AND NOT {refusing} AND {answer_failed})"


def refusal_sql(row: str) -> str:
    """`refusal` as a PostgreSQL boolean expression over the usage_events row `row`
    (`_verdict_sql`)."""
    gone, refusing, _ = _verdict_sql(row)
    return f"(NOT {gone} AND {refusing})"


def unreached(outcome: Mapping[str, Any]) -> bool:
    """Whether a usage event's `outcome` object says the request reached no backend:
    the proxy answered it itself, none of the chosen model's backends connected to (or
    its own connections out, or none to take it), the cloud fallback's refusal (the
    month's budget spent) included. No model ran: a failure of the fleet,
    not of the model, which an outage would otherwise lower for everyone. A backend
    that had the request and failed (a 5xx, a stream cut off, garbage, silence) still
    fails it: that model may have run, and failed."""
    return outcome.get("unreached") is True


def implicit(
    outcome: Mapping[str, Any], retried: bool = False, autocomplete: bool = False
) -> Result | None:
    """The outcome of a usage event's `outcome` object without any rating, or None
    when no model answered (a `refusal`, a request that `unreached` any backend), the
    client left before the answer began, or it cancelled an `autocomplete`
    (`autocompletes`)."""
    status = outcome.get("status")
    error = outcome.get("error")
    if left(status, outcome.get("cancelled")) or unreached(outcome):
        return None
    verdict = judged(status, error)
    if verdict is FAILURE:
        return Result(0.0, FAILED, "error")
    if verdict is REFUSAL:
        return None
    if outcome.get("cancelled"):
        return None if autocomplete else Result(0.0, FAILED, "cancelled")
    if retried:
        return Result(0.0, FAILED, "retried")
    if outcome.get("done_reason") in TRUNCATED_REASONS:
        return Result(TRUNCATED_VALUE, TRUNCATED_WEIGHT, "truncated")
    return Result(1.0, COMPLETED, "completed")


def against(result: Result, expected: float) -> float:
    """What `result` tells the online estimate of the model that answered, beside
    `expected`, the selector's P(success) for that answer: its value, but for a
    completed answer the expectation itself. Nearly every answer completes, good or
    bad, and only the chosen model's answers are there to complete: counted as
    successes they would lift whichever model is chosen, the more the more often it
    is. As no news they are what failures and ratings are measured against. Training
    and the A/B report read the value as it is: there every model's answers are
    weighed alike."""
    return expected if result.source == "completed" else result.value


def estimated(result: Result | None, rater_rates: bool) -> Result | None:
    """What the online estimate counts of an answer's `result`: nothing of a completed
    answer whose rater (`rater_of`) rates answers, whose silence is an answer not rated
    (yet), not one taken without a word. Counted as no news, such answers would hold
    the model that gave them at the selector's P while the ratings of the same kind of
    prompt move every other model: a client rating some answers and sending others
    unrated (a benchmark's held prompts, a UI's unrated turns) would set the estimate
    against whichever model it was served by. Where no answer of its rater is rated,
    completions are what failures are measured against (`against`)."""
    if rater_rates and result is not None and result.source == "completed":
        return None
    return result


def rater_of(key_id: str | None, key_hash: str | None) -> str:
    """Who rates a request's answers, by the key it was made with (`usage_event.key_of`):
    its hash, else its name, else "" (a proxy that checks no keys cannot tell its
    clients apart, so any rating makes every client a rater)."""
    return key_hash or key_id or ""


def _client(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """A usage event's `client` object ({} where it has none)."""
    client = event.get("client")
    return client if isinstance(client, Mapping) else {}


def event_rater(event: Mapping[str, Any]) -> str:
    """`rater_of` the key a usage event's request was made with."""
    return rater_of(*usage_event.key_of(_client(event)))


def _rating(event: Mapping[str, Any]) -> float | None:
    """A usage event's `rating` (its feedback's latest, `usage_event.rating_of`, as export
    and the PostgreSQL join fill it in), None where it has none."""
    rating = event.get("rating")
    if isinstance(rating, int | float) and not isinstance(rating, bool):
        return rating
    return None


def raters(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The raters (`rater_of`) whose answers among `events` carry a rating."""
    return {event_rater(event) for event in events if _rating(event) is not None}


_AUTOCOMPLETE = (REQUEST_FEATURES.index("fim"), REQUEST_FEATURES.index("raw"))


def autocompletes(event: Mapping[str, Any]) -> bool:
    """Whether a usage event's request was an editor's autocomplete: fill-in-the-middle
    (a suffix), or a raw prompt (one the client templated itself, as editors do for a
    model whose template reads no suffix: Continue, Zed's edit prediction), as its
    request features say: those of `auto`'s requests, the ones anything learns from
    (an event of another schema, or without them, reads as no)."""
    recorded = event.get("features")
    if not isinstance(recorded, Mapping) or recorded.get("schema_version") != SCHEMA_VERSION:
        return False
    values = recorded.get("request")
    if not isinstance(values, list) or len(values) != len(REQUEST_FEATURES):
        return False
    return any(values[i] == 1.0 for i in _AUTOCOMPLETE)


def replayed(event: Mapping[str, Any]) -> bool:
    """The answer came from the proxy's response cache: a copy of an answer its own
    event already counts, so it is no new evidence of the model."""
    return event.get("cache") == "hit"


def _answer(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """A usage event's `outcome` object ({} where it has none)."""
    answer = event.get("outcome")
    return answer if isinstance(answer, Mapping) else {}


def no_evidence(event: Mapping[str, Any]) -> bool:
    """The event's answer says nothing new of the model it names as chosen: a replay
    (`replayed`), a cloud provider's (`provider`), which answered in place of the
    local model `auto` chose, or with none chosen, or the proxy's own where the request
    reached no backend (`unreached`), a rating of it included."""
    return replayed(event) or bool(event.get("provider")) or unreached(_answer(event))


def of_event(event: Mapping[str, Any], retried: bool = False) -> Result | None:
    """A usage event's outcome: its `rating` (`_rating`) when present, else the
    implicit signals; none for a request that `unreached` any backend, rated or not:
    no model answered it."""
    answer = _answer(event)
    rating = _rating(event)
    if rating is not None and not unreached(answer):
        return rated(rating)
    return implicit(answer, retried, autocompletes(event))


def retry_key(event: Mapping[str, Any]) -> RetryKey | None:
    """Who sent which prompt to which model name: (API key, user, requested model,
    prompt SHA-256), or None without a prompt hash. The key is the key itself, its
    hash (`api_key_hash`), where there is one: its name (`api_key_id`) may go to a
    revoked key's successor, who then retries nothing of the old key's. The user is
    the X-Autoroute-User header within that key, as a client chooses the header: one
    key's clients naming a user fail none of another key's answers. Neither: anyone
    (a proxy without either serves one person, or cannot tell people apart)."""
    prompt = event.get("prompt_sha256")
    if not isinstance(prompt, str) or not prompt:
        return None
    user = str(_client(event).get("user") or "")
    return (event_rater(event), user, str(event.get("requested_model") or ""), prompt)


def event_time(event: Mapping[str, Any]) -> float | None:
    """When the request arrived (POSIX seconds), from the event's RFC 3339 `ts`."""
    ts = event.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


def answer_end(event: Mapping[str, Any], arrived: float) -> float:
    """When the answer to a request that arrived at `arrived` ended (POSIX seconds)."""
    answer = event.get("outcome")
    took = answer.get("total_ms") if isinstance(answer, Mapping) else None
    if isinstance(took, bool) or not isinstance(took, int | float) or took < 0:
        return arrived
    return arrived + took / 1000.0


def retries(ended: float, again: float) -> bool:
    """Whether a request arriving at `again` retries one whose answer `ended` then."""
    return 0.0 <= again - ended <= RETRY_WINDOW_SECONDS


# A sent copy of a prompt: (when it arrived, when its answer ended, what it stands for).
Copy = tuple[float, float, T]


def _retried(copies: Sequence[Copy[Any]]) -> set[int]:
    """Which copies of one short chain were retried (their indices): each copy that
    arrived while none of the others was in flight retries the one that ended last
    before it, when that was within the window. One that arrived while another was in
    flight (sent no later, ended after it arrived) is concurrent: it retries nothing,
    whichever of them ended last."""
    retried: set[int] = set()
    for b, (again, _, _) in enumerate(copies):
        last: int | None = None
        for a, (sent, ended, _) in enumerate(copies):
            if a == b:
                continue
            if sent <= again < ended:
                break
            if ended <= again and (last is None or ended > copies[last][1]):
                last = a
        else:
            if last is not None and retries(copies[last][1], again):
                retried.add(last)
    return retried


@dataclass(slots=True)
class _Chain(Generic[T]):
    """The copies of one prompt sent one within the window of another's end."""

    ended: float  # when the last answer of its copies ended
    sends: int
    copies: list[Copy[T]]  # while `sends` is at most RETRY_SENDS; then none is retried


class Repeats(Generic[T]):
    """Which requests were retried, read as their events come in the order their
    answers end (the order the proxy hands them to its learner, and the order
    `retried_ids` reads them in): `send` gives the requests whose mark changes with
    each. A chain of copies of one prompt (`retry_key`), each arriving within the
    window after the last answer of the chain ended (or while it was in flight),
    counts retries while it holds at most `RETRY_SENDS` copies: a person retries once
    or twice. Past that it is a repetition (a load test, a benchmark, a client that
    polls): none of its copies was retried, and the marks it gave are taken back. A
    copy the user sent after `MOVED_ON` other prompts (in the order their answers
    ended) starts a chain of its own: it retries nothing, and the marks the last chain
    gave stand.

    Memory: one chain per retry key, of `RETRY_SENDS` copies at most, `limit` chains
    (the oldest forgotten past it; None: no limit), and per user its last `MOVED_ON`
    + 1 distinct prompts, `limit` users; a chain whose last answer ended
    more than twice the window before the latest arrival is forgotten, so a copy that
    joins it late would have been answering for more than the window. O(1) per send."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.chains: OrderedDict[RetryKey, _Chain[T]] = OrderedDict()
        # Per user (a retry key but its prompt), the last distinct prompts it sent,
        # `MOVED_ON` + 1 at most, the latest last (`_moved_on`).
        self.latest: OrderedDict[tuple[str, str, str], list[str]] = OrderedDict()

    def _moved_on(self, key: RetryKey) -> bool:
        """Whether the user of `key` sent `MOVED_ON` other prompts since its last copy
        (or so many that it is no longer among the last ones remembered)."""
        latest = self.latest.get(key[:3])
        if latest is None or key[3] not in latest:
            return True
        return len(latest) - 1 - latest.index(key[3]) >= MOVED_ON

    def _note(self, key: RetryKey) -> None:
        user, prompt = key[:3], key[3]
        latest = self.latest.pop(user, [])
        if prompt in latest:
            latest.remove(prompt)
        latest.append(prompt)
        self.latest[user] = latest[-(MOVED_ON + 1) :]
        if self.limit is not None and len(self.latest) > self.limit:
            self.latest.popitem(last=False)

    def send(self, key: RetryKey, arrived: float, ended: float, item: T) -> list[tuple[T, bool]]:
        """A copy of `key` that arrived at `arrived` and ended at `ended`: the items
        whose retried mark it changes, each with its mark now."""
        chain = self.chains.pop(key, None)
        changed: list[tuple[T, bool]] = []
        if chain is None or arrived - chain.ended > RETRY_WINDOW_SECONDS or self._moved_on(key):
            chain = _Chain(ended, 1, [(arrived, ended, item)])
        else:
            before = _retried(chain.copies)
            chain.sends += 1
            chain.ended = max(chain.ended, ended)
            if chain.sends > RETRY_SENDS:
                changed = [(chain.copies[i][2], False) for i in sorted(before)]
                chain.copies = []
            else:
                chain.copies.append((arrived, ended, item))
                after = _retried(chain.copies)
                changed = [
                    (copy[2], i in after)
                    for i, copy in enumerate(chain.copies)
                    if (i in before) != (i in after)
                ]
        self.chains[key] = chain
        self._note(key)
        if self.limit is not None and len(self.chains) > self.limit:
            self.chains.popitem(last=False)
        # A copy arriving later than one window after a chain's end starts another; one
        # that arrived in time and is handed over only now ran for longer than a window.
        while self.chains:
            first = next(iter(self.chains.values()))
            if arrived - first.ended <= 2 * RETRY_WINDOW_SECONDS:
                break
            self.chains.popitem(last=False)
        return changed


def retried_ids(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The request ids whose prompt the same user sent again to the same model name
    after its answer and within the window, in a chain short enough to be a person's
    retries (`Repeats`)."""
    sent: list[tuple[float, float, int, RetryKey, str]] = []
    for event in events:
        key, when, rid = retry_key(event), event_time(event), event.get("request_id")
        if key is not None and when is not None and isinstance(rid, str):
            sent.append((answer_end(event, when), when, len(sent), key, rid))
    sent.sort(key=lambda copy: copy[:3])  # as the proxy hands events over: as answers end
    repeats: Repeats[int] = Repeats()
    marked: dict[int, bool] = {}
    for ended, when, i, key, _ in sent:
        marked.update(repeats.send(key, when, ended, i))
    ids = {i: rid for _, _, i, _, rid in sent}
    return {ids[i] for i, retried in marked.items() if retried}


def grade(events: Iterable[Mapping[str, Any]]) -> list[Result | None]:
    """Each event's outcome, in order (None: no model answered); the retry signal is
    read across all of them."""
    listed = list(events)
    retried = retried_ids(listed)
    return [of_event(e, e.get("request_id") in retried) for e in listed]
