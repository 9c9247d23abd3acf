"""The backends: which models each one has and has loaded, its health, and the choice.

Model lists come from each backend's `/api/tags` and `/api/ps`, refreshed in the
background: the request path only reads what the last refresh found, but for a request
no usable backend can take, which has the backends that may be back checked at once
(`BackendPool.recheck`). `/api/tags` is the health check; `/api/ps` is optional
information that older Ollama releases and Ollama-compatible servers do not serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from proxy import header_values, http11, ollama_answers, tasks
from proxy.config import Config
from proxy.config_serving import Backend
from proxy.multipart_form import go_quote, go_trim_space
from proxy.upstream import ConnectionPool, fetch
from proxy.upstream_errors import ConnectFailed, ConnectTimedOut, ProxyExhausted, UpstreamError

log = logging.getLogger("autoroute.backends")

T = TypeVar("T")


# Model names already read, for `normalize_model` and `valid_name`: the same few names
# are read several times per request (routing, accounting, telemetry). Bounded in
# entries and in the length of the names kept, since clients choose them.
_NORMALIZED: dict[str, str] = {}
_VALID: dict[str, bool] = {}
_NORMALIZED_ENTRIES = 1024
_NORMALIZED_LENGTH = 256


def _keep(read: dict[str, T], name: str, value: T) -> None:
    """Keep what `name` was read as, within the bounds above."""
    if len(name) <= _NORMALIZED_LENGTH:
        if len(read) >= _NORMALIZED_ENTRIES:
            read.clear()
        read[name] = value


# What Ollama assumes of a name that leaves them out (types/model/name.go), and so
# leaves out of the name it shows (`Name.DisplayShortest`).
_HOST, _NAMESPACE, _TAG = "registry.ollama.ai", "library", "latest"
_DEFAULT_HOST = _HOST + "/"
_DEFAULT_NAMESPACE = _NAMESPACE + "/"


def normalize_model(name: str) -> str:
    """Ollama's reading of a model name: case-insensitive, `:latest` when no tag, a
    `:local` source suffix left out (`source`), and as it shows it:
    `registry.ollama.ai/library/llama3.1` is `llama3.1:latest`, and
    `registry.ollama.ai/someone/m` is `someone/m:latest`."""
    normal = _NORMALIZED.get(name)
    if normal is not None:
        return normal
    normal = without_local(name).strip().lower()
    if normal.count("/") == 2 and normal.startswith(_DEFAULT_HOST):
        normal = normal[len(_DEFAULT_HOST) :]
    if normal.count("/") == 1 and normal.startswith(_DEFAULT_NAMESPACE):
        normal = normal[len(_DEFAULT_NAMESPACE) :]
    if ":" not in normal.rsplit("/", 1)[-1]:
        normal += ":latest"
    _keep(_NORMALIZED, name, normal)
    return normal


# Where a name asks its model to run (modelref.ParseRef's source suffix).
CLOUD, LOCAL = "cloud", "local"


def source(name: str) -> tuple[str, str]:
    """The name without its source suffix, and the source it asks for, as Ollama's
    modelref.ParseRef reads them: the part after the last `:` is `cloud` or `local`
    (`gpt-oss:20b:cloud`), or ends in `-cloud` without a `/` (`gpt-oss:120b-cloud`,
    whose base keeps the rest of its tag), whatever its case and the blanks around it;
    else the name itself and "". Ollama sends a request for a `cloud` one to
    ollama.com itself, whether or not the model is on the backend, and answers a 502
    when it cannot reach it; a `local` one is the model on the backend."""
    head, colon, suffix = name.rpartition(":")
    if colon:
        tail = go_trim_space(suffix)
        lowered = tail.lower()
        if lowered in (CLOUD, LOCAL):
            return head, lowered
        if "/" not in tail and lowered.endswith("-cloud"):
            return f"{head}:{tail[: -len('-cloud')]}", CLOUD
    return name, ""


def without_local(name: str) -> str:
    """`name` without a `:local` source suffix (`source`): it asks for the model on the
    backend, the one the name names without it. A cloud name stays as it is: another
    model, which runs on ollama.com."""
    base, asked = source(name)
    return base if asked == LOCAL else name


def cloud_source(name: str) -> bool:
    """Whether Ollama sends a request naming `name` to ollama.com itself (`source`)."""
    return source(name)[1] == CLOUD


# types/model/name.go: what may follow a part's first byte (a letter, digit or
# underscore), and its most bytes, for host, namespace, model and tag.
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_PARTS = (
    (_WORD | frozenset("-.:"), 350),  # host
    (_WORD | frozenset("-"), 80),  # namespace
    (_WORD | frozenset("-."), 80),  # model
    (_WORD | frozenset("-."), 80),  # tag
)
_MISSING = "!MISSING!"  # name.go's MissingPart: a separator with nothing beside it


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    """name.go's cutPromised: `s` cut at the last `sep`, an empty side `_MISSING`."""
    before, found, after = s.rpartition(sep)
    if not found:
        return s, "", False
    return before or _MISSING, after or _MISSING, True


# errtypes.InvalidModelNameErrMsg: Ollama's 400 for a name model.ParseName cannot
# qualify (writeModelRefParseError), whatever the handler.
INVALID_NAME = "invalid model name"


def valid_name(name: str) -> bool:
    """model.ParseName(...).IsValid() of the name modelref.ParseRef leaves (trimmed as
    Go trims it): host, namespace, model and tag, the missing ones defaulted, each
    valid."""
    valid = _VALID.get(name)
    if valid is None:
        valid = _parses(name)
        _keep(_VALID, name, valid)
    return valid


def names_a_model(name: str) -> bool:
    """Whether Ollama reads `name` as a model's name (parseAndValidateModelRef), and
    not as its 400: trimmed, a source suffix (`source`) with no other under it, the
    rest valid (`valid_name`)."""
    base, asked = source(go_trim_space(name))
    return not (asked and source(base)[1]) and valid_name(base)


def _parses(name: str) -> bool:
    """`valid_name`, read anew."""
    return all(
        0 < len(part.encode()) <= longest and part[0] in _WORD and set(part) <= allowed
        for part, (allowed, longest) in zip(_parts(name), _PARTS, strict=True)
    )


def _parts(name: str) -> tuple[str, str, str, str]:
    """model.ParseName: host, namespace, model and tag of `name` (trimmed as Go trims
    it), a scheme before the host left out, each part it leaves out Ollama's default
    (`registry.ollama.ai`, `library`, `latest`)."""
    s = go_trim_space(name)
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_promised(s, ":")
    s, model, promised = _cut_promised(s, "/")
    if not promised:
        model = s
    else:
        s, namespace, promised = _cut_promised(s, "/")
        if not promised:
            namespace = s
        else:
            scheme, found, after = s.partition("://")
            host = after if found else scheme
    return host or _HOST, namespace or _NAMESPACE, model, tag or _TAG


def display_shortest(name: str, held: Iterable[str] = ()) -> str:
    """The name ShowHandler gives a model it reads (`name`, as the request spells it):
    its source suffix left out and the rest read as model.ParseName reads it
    (`_parts`), each part spelled as the same part of a model the machine holds
    (`held`: getExistingName, which compares them case-insensitively), then
    Name.DisplayShortest, which leaves out a default host, and with it a default
    namespace: `ghost` is `ghost:latest`, `Ghost` the same where a `ghost` is held,
    `registry.ollama.ai/library/ghost:1` is `ghost:1`, `user/ghost` is
    `user/ghost:latest`."""
    parts = list(_parts(source(go_trim_space(name))[0]))
    folded = [part.casefold() for part in parts]
    for other in held:
        for i, part in enumerate(_parts(other)):
            if part.casefold() == folded[i]:
                parts[i] = part
    host, namespace, model, tag = parts
    if host.casefold() != _HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.casefold() != _NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


# The routes whose handler reads a name as ShowHandler does (RetrieveMiddleware sends
# `/v1/models/<id>` there), and those that name a model they lack in
# handleScheduleError's words (EmbedHandler and EmbeddingsHandler, found no manifest;
# the OpenAI layer sends `/v1/embeddings` to the first).
_SHOWS = "/api/show"
_MODEL_PREFIX = "/v1/models/"
_SCHEDULED = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})


def not_found_message(path: str, name: str, held: Iterable[str] = ()) -> str:
    """Ollama's words for a model it does not have, as the handler on `path` says them
    of `name` (the name as the request spells it; `held`: the models the machine
    holds): a show names it as it reads it (`display_shortest`), the embedding
    handlers quote it and say to pull it, the others name it as asked."""
    if path == _SHOWS or path.startswith(_MODEL_PREFIX):
        return f"model '{display_shortest(name, held)}' not found"
    if path in _SCHEDULED:
        return f"model {go_quote(name.encode())} not found, try pulling it first"
    return f"model '{name}' not found"


RESPONSES_PATH = "/v1/responses"
MESSAGES_PATH = "/v1/messages"


def searches_the_web(path: str, doc: Any) -> bool:
    """Whether Ollama runs this request's web searches itself, through ollama.com on
    the server's account: a Responses or Messages request declaring the built-in web
    search (`web_search_tool`), a tool's `type` read case-insensitively as Go reads the
    field. It answers 502 when its search cannot reach ollama.com, whatever the state
    of the backend."""
    if path not in (RESPONSES_PATH, MESSAGES_PATH) or not isinstance(doc, dict):
        return False
    tools = doc.get("tools")
    return isinstance(tools, list) and any(
        isinstance(tool, dict)
        and any(k.lower() == "type" and web_search_tool(path, v) for k, v in tool.items())
        for tool in tools
    )


def web_search_tool(path: str, kind: Any) -> bool:
    """Whether a tool type declared on `path` is Ollama's built-in web search:
    `web_search` on Responses (`openai.HasWebSearchTool`), any beginning so on Messages
    (the Anthropic layer's `hasWebSearchTool`: `web_search_20250305` and later)."""
    if path == RESPONSES_PATH:
        return bool(kind == "web_search")
    return isinstance(kind, str) and kind.startswith("web_search")


# Ollama's routes that it sends to ollama.com whatever the model (server/routes.go,
# webExperimentalProxyHandler): it answers with what ollama.com answers, and a 502 when
# it cannot reach it, whatever the state of the backend.
WEB_PATHS = frozenset({"/api/experimental/web_search", "/api/experimental/web_fetch"})


def entry_model(entry: dict[str, Any]) -> str:
    """The model an entry of `/api/tags` or `/api/ps` names, as Ollama reads it."""
    return normalize_model(str(entry.get("model") or entry.get("name") or ""))


# Answers that speak of the backend, not of the request: a gateway in front of Ollama
# that cannot reach it (502, 504), or Ollama refusing more work (503, its full queue).
# Another backend may take the request.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
# Of those, the ones that say the backend cannot serve anyone: failures for its
# circuit. Not Ollama's 503: its queue is full now, and one client can fill it at will
# (enough requests at once); counted, it would let that client open the circuit for
# every other, where Ollama goes on serving what it queued. A backend that is down
# behind a gateway answering 503 also fails its health checks.
UNREACHABLE_STATUSES = frozenset({502, 504})


# Answers to `/api/ps` that say the backend does not have the endpoint, not that it is
# unwell: its loaded set is then unknown and routing does without it.
NO_ENDPOINT_STATUSES = frozenset({404, 405, 501})
# An /api/ps that lists nothing this many times in a row, each within this many
# seconds of a model's answer, does not report what is loaded (see BackendState).
SILENT_POLLS = 3
SILENT_WINDOW = 30.0
# How many distinct unexpected refresh errors are remembered as logged.
_ERRORS_KEPT = 100
# A refresh a model change brings forward (`BackendPool.changed`) comes at least this
# long after the one before: a client pulling in a loop gets the backends listed about
# once a second, not back to back.
_EARLY_REFRESH_GAP = 1.0


def refused_at_once(exc: BaseException) -> bool:
    """Whether `exc` is a connect the backend's host refused at once (nothing listens on
    its port, as while its Ollama restarts): not one that timed out, whose host does not
    answer and holds each attempt for the connect timeout, nor one the proxy could not
    make for want of its own resources."""
    return isinstance(exc, ConnectFailed) and not isinstance(exc, ConnectTimedOut | ProxyExhausted)


class StatusError(UpstreamError):
    """The backend answered, with a status other than 200."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NoBackend(Exception):
    """No backend can take the request; the message names each one's reason, `public`
    says the same without what only the operator may learn (URLs, error text)."""

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = message if public is None else public

    def reason(self, detailed: bool) -> str:
        return str(self) if detailed else self.public


class Breaker:
    """Opens after `threshold` consecutive failures; after `open_seconds` lets a trial
    through (half-open), which closes it on success or re-opens it on failure."""

    def __init__(self, threshold: int, open_seconds: float) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.failures = 0
        self.opened_at: float | None = None

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= self.open_seconds else "open"

    def allows(self, now: float) -> bool:
        """Whether the state is not "open" (`state`, read without naming it: every
        request asks this of each backend)."""
        opened_at = self.opened_at
        return opened_at is None or now - opened_at >= self.open_seconds

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = now


class BackendState:
    def __init__(self, index: int, config: Backend, pool: ConnectionPool, breaker: Breaker) -> None:
        self.index = index
        self.config = config
        self.pool = pool
        self.breaker = breaker
        self.models: frozenset[str] | None = None  # None: not known yet
        self.loaded: frozenset[str] = frozenset()
        # Whether `loaded` says what is loaded: not when the backend has no /api/ps, nor
        # when its /api/ps keeps listing nothing right after models answered (Ollama
        # lists a model for its keep_alive once it has answered). Where it does not,
        # `auto` charges no model a load it cannot know of (`proxy.memory`).
        self.reports_loaded = True
        self.answered_at: float | None = None  # loop time of the last model answer
        self.silent_polls = 0  # consecutive /api/ps that listed nothing after one
        # The last /api/ps entries (sizes, VRAM), for the status page.
        self.running: list[dict[str, Any]] = []
        # The last /api/tags entries, for the model registry.
        self.tags: list[dict[str, Any]] = []
        # Model-store changes applied from the backend's answers (`BackendPool.changed`):
        # lists asked before one may not show it, and do not replace what it said.
        self.changes = 0
        # The models such a change added (or replaced: a pull, create or copy over one
        # it had) since the last list: the digest of their weights is not known until
        # the next list says it (`BackendPool.weights`).
        self.unweighed: set[str] = set()
        # Of those, the models that run on another host (a `remote_host`: a local name
        # of a cloud model), by normalised name: Ollama relays that host's answer.
        self.remote: frozenset[str] = frozenset()
        # Models it listed that a request found missing (`BackendPool.lost`), with the
        # entry they were listed by then (`_listing`): left out while listed so.
        self.lost: dict[str, tuple[object, object]] = {}
        self.in_flight = 0
        # Requests in flight per model (normalised name): a loaded model in use.
        self.busy: dict[str, int] = {}
        self.last_error = ""
        # Whether its last failure was a connect its host refused at once
        # (`refused_at_once`): with its circuit open, it is checked again as soon as a
        # request has no other backend (`BackendPool.recheck`), since it may be back.
        self.refused = False

    @property
    def public_label(self) -> str:
        """Its name for a caller who may not learn its URL (`Backend.public_label`)."""
        return self.config.public_label(self.index)

    @property
    def label(self) -> str:
        return self.config.label

    def begin(self, model: str | None) -> None:
        """A request for `model` (None: no model) goes to this backend."""
        self.in_flight += 1
        if model:
            name = normalize_model(model)
            self.busy[name] = self.busy.get(name, 0) + 1

    def end(self, model: str | None) -> None:
        self.in_flight -= 1
        if model:
            name = normalize_model(model)
            left = self.busy.get(name, 0) - 1
            if left > 0:
                self.busy[name] = left
            else:
                self.busy.pop(name, None)

    def model_answered(self) -> None:
        """A model of this backend has just answered (so is loaded, on Ollama)."""
        self.answered_at = self.pool.loop.time()

    def listed(self, running: list[dict[str, Any]] | None, asked_at: float) -> None:
        """What an /api/ps asked at `asked_at` listed (None: the backend has none)."""
        if running is None:
            self.reports_loaded = False
            running = []
        elif running:
            self.silent_polls = 0
            self.reports_loaded = True
        elif self.answered_at is not None and 0 <= asked_at - self.answered_at <= SILENT_WINDOW:
            self.silent_polls += 1
            if self.silent_polls >= SILENT_POLLS:
                self.reports_loaded = False
        self.running = running
        self.loaded = frozenset(entry_model(m) for m in running)

    def failed(self, reason: str, refused: bool = False) -> None:
        """A failure for its circuit; `refused`: a connect its host refused at once."""
        self.last_error = reason
        self.refused = refused
        self.breaker.failure(self.pool.loop.time())

    def succeeded(self) -> None:
        self.last_error = ""
        self.refused = False
        self.breaker.success()

    def answered(self, status: int, model: str | None, offsite: bool = False) -> None:
        """What a well-formed answer to a request for `model` says about the backend's
        health. A 500 says nothing: Ollama answers it for requests it cannot run
        (options or `format` of the wrong type, a template error), which any client
        can send at will, so counting it would let one client open every circuit. Only
        the statuses that say the backend cannot serve anyone count as failures, and
        not for a model Ollama runs on another host (`cloud_source`, or listed with a
        `remote_host`: `remote`) nor a request it sends to ollama.com itself (`offsite`:
        `searches_the_web`, `WEB_PATHS`), whose 502 says that host is out of the
        backend's reach; a backend that is truly broken also fails its connects,
        timeouts and health checks."""
        if status in UNREACHABLE_STATUSES:
            if not offsite and (model is None or not self.runs_elsewhere(model)):
                self.failed(f"answered {status}")
        elif status < 500:
            self.succeeded()

    def runs_elsewhere(self, model: str) -> bool:
        """Whether Ollama sends a request for `model` to the host it runs on (a cloud
        name, `cloud_source`, or one it lists with a `remote_host`), whose 502, 504 or
        silence is that host's."""
        return cloud_source(model) or normalize_model(model) in self.remote


def _listing(entry: dict[str, Any]) -> tuple[object, object]:
    """What tells one pull of a model from another in its `/api/tags` entry: the digest
    and modification time of its manifest, which a pull writes anew."""
    return entry.get("digest"), entry.get("modified_at")


def _having(name: str, states: list[BackendState]) -> list[BackendState]:
    return [s for s in states if s.models is not None and name in s.models]


class BackendPool:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.states: list[BackendState] = []
        for index, backend in enumerate(config.backends):
            parts = urlsplit(backend.url)
            pool = ConnectionPool(
                parts.hostname or "127.0.0.1", parts.port or 80, config.timeouts.connect_seconds
            )
            breaker = Breaker(config.health.failure_threshold, config.health.open_seconds)
            self.states.append(BackendState(index, backend, pool, breaker))
        self._task: asyncio.Task[None] | None = None
        # The check in flight of each backend, by index (`checking`): the refreshes and
        # the checks requests ask for (`recheck`) share it.
        self._checks: dict[int, asyncio.Task[None]] = {}
        # The unexpected refresh errors logged (`_unexpected`), each once.
        self._errors: set[tuple[str, str]] = set()
        # Called after each refresh of every backend (the model registry is one).
        self.listeners: list[Callable[[], Awaitable[None]]] = []
        # Set when a backend says it has a model it did not list (`changed`), or ran one
        # its last /api/ps did not list loaded (`ran`): the next refresh comes early, so
        # that the model is described and offered to `auto` (the proxy already routes
        # to it by name), or known loaded, before the interval ends.
        self._added = asyncio.Event()
        # Each backend by its label (the name answers and `auto`'s terms give it).
        self.by_label = {s.label: s for s in self.states}
        # (backend label, model) that ran since the last refresh, unlisted loaded there.
        self._ran: set[tuple[str, str]] = set()
        # The weights each model name stands for, by normalised name, for the response
        # cache's key (`weights_of`): the digests every backend lists under the name,
        # sorted and joined; a name some backend lists without a known digest (one a
        # change through the proxy has just added, or a list without digests) is not
        # in it. Built at every refresh and change: the request path only reads it.
        self.weights: dict[str, str] = {}

    async def start(self) -> None:
        await self.refresh_all()
        self._task = asyncio.create_task(self._refresh_loop(), name="backend-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            await tasks.stop(self._task)
        for check in list(self._checks.values()):
            await tasks.stop(check)
        for state in self.states:
            state.pool.close()

    def public_name(self, label: str) -> str | None:
        """The public name (`BackendState.public_label`) of the backend a usage event
        names by its `label`; None for one no longer configured, whose label may be
        its URL."""
        for state in self.states:
            if state.label == label:
                return state.public_label
        return None

    def usable(self, exclude: Iterable[BackendState] = ()) -> list[BackendState]:
        now = asyncio.get_running_loop().time()
        if not exclude:  # most requests exclude none
            return [s for s in self.states if s.breaker.allows(now)]
        skip = set(map(id, exclude))
        return [s for s in self.states if id(s) not in skip and s.breaker.allows(now)]

    def unavailable_reason(
        self, detailed: bool = True, states: list[BackendState] | None = None
    ) -> str:
        """Why no backend is usable (of `states`, default all): each backend's last
        error; without `detailed`, only each one's circuit, under its public name
        (`Backend.public_label`)."""
        now = asyncio.get_running_loop().time()
        reasons = []
        for s in self.states if states is None else states:
            state = s.breaker.state(now)
            if not detailed:
                reasons.append(f"{s.public_label} (circuit {state})")
                continue
            why = s.last_error or "unreachable"
            reasons.append(f"{s.label}: {why}" + (" (circuit open)" if state == "open" else ""))
        return "no healthy backend: " + "; ".join(reasons)

    def unavailable(self, states: list[BackendState] | None = None) -> NoBackend:
        """The error of a request no backend (of `states`, default all) is usable for,
        both ways of saying why."""
        return NoBackend(
            self.unavailable_reason(states=states),
            self.unavailable_reason(detailed=False, states=states),
        )

    def choose(
        self,
        model: str | None,
        exclude: Iterable[BackendState] = (),
        retry: bool = False,
        fetches: bool = False,
    ) -> BackendState:
        """A backend that has `model`, preferring one where it is loaded, then the one
        with the fewest requests in flight; for a request that `fetches` it (a pull), one
        that lost it first. With no backend listing the model, any
        usable one: it answers Ollama's own 404; but a `retry` goes only to a backend
        that lists the model (another one's 404 would hide the first one's answer), and
        a model that only unusable backends list is unavailable (NoBackend), unless the
        request `fetches` it (a pull), which any backend can serve."""
        candidates = self.usable(exclude)
        if not candidates:
            raise self.unavailable()
        if model is None:
            return min(candidates, key=lambda s: (s.in_flight, s.index))
        name = normalize_model(model)
        # A pull goes first where the model was found missing (`lost`): that backend
        # lacks it, and the pull is what makes it its own again.
        having = [s for s in candidates if name in s.lost] if fetches else []
        having = having or _having(name, candidates)
        if not having:
            if retry:
                raise NoBackend(f"no other usable backend has model {model!r}")
            # Only backends that cannot take a request now list it: another would answer
            # that it has no such model (a 404, on which `ollama run` pulls it there).
            down = [] if fetches else _having(name, self.states)
            if down:
                raise self.unavailable(down)
            having = [s for s in candidates if s.models is None] or candidates
        return min(having, key=lambda s: (name not in s.loaded, s.in_flight, s.index))

    async def recheck(
        self,
        model: str | None,
        exclude: Iterable[BackendState] = (),
        fetches: bool = False,
    ) -> bool:
        """For a request `choose` has no backend for: check again at once each backend
        but `exclude` that could take it (that lists `model`, or any when none does, or
        the request `fetches` it) were its circuit not open, and whose host refused its
        last connect (`BackendState.refused`): its Ollama may be back on its port since
        (a restart), and the proxy's own 503 until the next periodic check would refuse
        a request the backend can serve. Whether one of them is usable now.

        A refused connect costs the check next to nothing; each backend has one check
        in flight at a time (`checking`), which every request that waits shares, so a
        flood of requests does not multiply them. A backend whose circuit opened for
        another reason (a connect that timed out, answers that broke) keeps it open
        until its periodic check, and one that another usable backend can replace is
        never checked here (`choose` does not fail then)."""
        now = asyncio.get_running_loop().time()
        skip = set(map(id, exclude))
        others = [s for s in self.states if id(s) not in skip]
        down = [s for s in others if s.refused and not s.breaker.allows(now)]
        if down and model is not None and not fetches:
            name = normalize_model(model)
            listing = [s for s in down if s.models is None or name in s.models]
            if listing or _having(name, others):
                down = listing
        if not down:
            return False
        await asyncio.gather(*(asyncio.shield(self.checking(s)) for s in down))
        self._weigh()
        now = asyncio.get_running_loop().time()
        return any(s.breaker.allows(now) for s in down)

    async def rechecked(
        self,
        none: NoBackend,
        again: Callable[[], T],
        model: str | None = None,
        exclude: Iterable[BackendState] = (),
        fetches: bool = False,
    ) -> T:
        """`again()`, the call that raised `none` for want of a backend, made once more
        where one of the backends that may be back on their port since their circuit
        opened is usable once checked again at once (`recheck`, bounded by the
        request's `model`, `exclude` and `fetches`); else `none`, for the caller's
        fallback or 503. Called from that call's `except` alone, so that a request that
        finds a backend costs nothing more (no await, no closure)."""
        if not await self.recheck(model, exclude, fetches):
            raise none
        return again()

    async def pick(self, model: str | None, fetches: bool = False) -> BackendState:
        """`choose`, or when it has no backend, its choice once the backends that may
        be back are checked again (`rechecked`)."""
        try:
            return self.choose(model, fetches=fetches)
        except NoBackend as none:
            again = functools.partial(self.choose, model, fetches=fetches)
            return await self.rechecked(none, again, model, fetches=fetches)

    async def usable_now(self) -> list[BackendState]:
        """`usable`, the backends that may be back checked again first when none is
        (`recheck`)."""
        # Not `rechecked`: none usable is an answer its callers write themselves
        # (readiness's 503, a merged list's), not a NoBackend for `Server.handle`.
        usable = self.usable()
        if not usable and await self.recheck(None):
            usable = self.usable()
        return usable

    async def first_usable(self) -> BackendState:
        """The first backend `usable_now`; NoBackend when none is."""
        usable = await self.usable_now()
        if not usable:
            raise self.unavailable()
        return usable[0]

    def held(self, only: frozenset[str] | None = None) -> Iterator[str]:
        """The names of the models the backends list, as their lists spell them; with
        `only` (normalised names, an API key's list), those in it: the models a
        machine with what the lists show holds, which Ollama's show names a model it
        reads after (`display_shortest`)."""
        for state in self.states:
            for entry in state.tags:
                name = str(entry.get("model") or entry.get("name") or "")
                if only is None or normalize_model(name) in only:
                    yield name

    def lists(self, model: str) -> bool:
        """Whether some usable backend lists `model`."""
        return bool(_having(normalize_model(model), self.usable()))

    def changed(self, state: BackendState, added: str = "", removed: str = "") -> None:
        """The backend of `state` said it now has the model `added` or no longer has
        `removed` (normalised names; `proxy.model_changes`): what the proxy knows of it
        says so at once, until its next refresh lists what it lists."""
        if state.models is None:
            return  # not listed yet: any request may go there, and the refresh will say
        state.changes += 1
        models = set(state.models)
        if added and header_values.model_name(added):
            models.add(added)
            # Its weights are there again, whatever its next list says of it.
            state.lost.pop(added, None)
            self._added.set()
            state.unweighed.add(added)
        if removed:
            models.discard(removed)
            state.tags = [tag for tag in state.tags if entry_model(tag) != removed]
            state.unweighed.discard(removed)
        state.models = frozenset(models)
        self._weigh()

    def lost(self, state: BackendState, model: str) -> None:
        """`state`'s backend, which lists `model`, answered a request for it that it has
        no such model: Ollama's 404 for a model removed since its last list, or for one
        whose manifest it lists while its weights are gone. The backend no longer has
        it (`changed`), and its lists leave it out while they list it as then: `auto`
        does not choose it again, and a request naming it goes where another backend
        lists it. A pull that lists it anew makes it the backend's again."""
        name = normalize_model(model)
        if state.models is None or name not in state.models:
            return
        entry = next((tag for tag in state.tags if entry_model(tag) == name), {})
        state.lost[name] = _listing(entry)
        self.changed(state, removed=name)

    def lost_by(self) -> dict[str, list[BackendState]]:
        """Each model a backend lost (`lost`), with the backends that lost it."""
        found: dict[str, list[BackendState]] = {}
        for state in self.states:
            for name in state.lost:
                found.setdefault(name, []).append(state)
        return found

    def ran(self, label: str, model: str) -> None:
        """The backend `label` ran `model` to an answer: Ollama keeps it loaded there
        (its keep_alive) and may have evicted another for it. Where its last /api/ps
        did not list it loaded, the next refresh comes early (at most one a second),
        so that `auto` stops charging it a load, and charges the one it evicted,
        within about a second rather than `health.interval_seconds`: else a second
        request soon after is routed on the loads before the first, and may go to
        the model the first evicted. Not marked loaded until the refresh lists it so:
        a request may have asked Ollama to unload it at once (`keep_alive` 0)."""
        state = self.by_label.get(label)
        if state is not None and state.reports_loaded:
            name = normalize_model(model)
            if name not in state.loaded and (label, name) not in self._ran:
                # Its answers until the refresh bring no other.
                self._ran.add((label, name))
                self._added.set()

    def weights_of(self, model: str) -> str:
        """What `model` stands for on the backends (`weights`): "" when not known."""
        return self.weights.get(normalize_model(model), "")

    def _weigh(self) -> None:
        """`weights` from what each backend lists now. Every backend that lists a name
        counts, its circuit open or not: a key that moved with circuits would
        only lose answers. Two backends listing other weights under one name make one
        key of both digests, which changes when either does. A model that runs on
        another host (`runs_elsewhere`) has no known weights: its digest is the local
        manifest's, the same whatever the host serves under the name."""
        digests: dict[str, set[str]] = {}
        unknown: set[str] = set()
        for state in self.states:
            if state.models is None:
                continue
            listed: set[str] = set()
            for tag in state.tags:
                name = entry_model(tag)
                digest = tag.get("digest")
                if (
                    isinstance(digest, str)
                    and digest
                    and name not in state.unweighed
                    and not state.runs_elsewhere(name)
                ):
                    digests.setdefault(name, set()).add(digest)
                    listed.add(name)
                else:
                    unknown.add(name)
            unknown |= state.models - listed
        self.weights = {
            name: ",".join(sorted(found)) for name, found in digests.items() if name not in unknown
        }

    def can_retry(self, model: str | None, exclude: Iterable[BackendState]) -> bool:
        """Whether `choose(model, exclude, retry=True)` has a backend to offer."""
        candidates = self.usable(exclude)
        if model is None:
            return bool(candidates)
        return bool(_having(normalize_model(model), candidates))

    async def get_json(self, state: BackendState, path: str, post: Any = None) -> Any:
        """A small JSON document from one backend (refreshes, merged lists, `show`):
        GET `path`, or POST the JSON `post` to it."""
        method = "GET" if post is None else "POST"
        body = b"" if post is None else orjson.dumps(post)
        head = http11.request_head(
            method.encode(),
            path.encode(),
            state.pool.host_header.encode(),
            [] if post is None else [(b"Content-Type", b"application/json")],
            length=None if post is None else len(body),
        )
        timeout = self.config.timeouts.idle_read_seconds
        response, answer = await fetch(state.pool, method, head, body, timeout)
        if response.status != 200:
            raise StatusError(f"{method} {path} answered {response.status}", response.status)
        return orjson.loads(answer)

    @property
    def refresh_seconds(self) -> float:
        """How long a refresh may wait for one backend's answer (its `/api/tags` and
        `/api/ps`, a model's `/api/show`): about a refresh interval, so that a backend
        that hangs holds up neither the proxy's start nor the checks of the others for
        longer, and never less than a second, which a loaded backend may need."""
        return max(self.config.health.interval_seconds, 1.0)

    async def refresh(self, state: BackendState) -> None:
        asked_at = state.pool.loop.time()
        changes = state.changes
        try:
            async with asyncio.timeout(self.refresh_seconds):
                listed, running = await asyncio.gather(
                    self._listed_models(state), self._loaded_models(state)
                )
        except ProxyExhausted as exc:
            # The proxy could not open a connection to check: says nothing of the backend.
            log.warning("backend %s not checked: %s", state.label, exc)
            return
        except (UpstreamError, TimeoutError, OSError, ValueError) as exc:
            if state.last_error != str(exc):
                log.warning("backend %s unhealthy: %s", state.label, exc or "timed out")
            state.failed(str(exc) or "health check timed out", refused_at_once(exc))
            return
        # A list asked before a change the backend has since answered may not have it:
        # what the change said stands until the next refresh.
        if state.changes == changes:
            # A listed name becomes a response header when `auto` chooses it: only one
            # Ollama could accept (no line break, not of megabytes) is one of its models.
            listed = [m for m in listed if header_values.model_name(entry_model(m))]
            now_listed = {entry_model(m): _listing(m) for m in listed}
            state.lost = {n: was for n, was in state.lost.items() if now_listed.get(n) == was}
            state.tags = [m for m in listed if state.lost.get(entry_model(m)) != _listing(m)]
            state.models = frozenset(entry_model(m) for m in state.tags)
            state.remote = frozenset(entry_model(m) for m in state.tags if m.get("remote_host"))
            state.unweighed.clear()
        state.listed(running, asked_at)
        if state.last_error:
            log.info("backend %s healthy again", state.label)
        state.succeeded()

    async def _listed_models(self, state: BackendState) -> list[dict[str, Any]]:
        """The entries of the backend's `/api/tags`, its health check."""
        return ollama_answers.listed_models(await self.get_json(state, "/api/tags"))

    async def _loaded_models(self, state: BackendState) -> list[dict[str, Any]] | None:
        """The entries of the backend's `/api/ps`, or None when it has no such
        endpoint."""
        try:
            answer = await self.get_json(state, "/api/ps")
        except StatusError as exc:
            if exc.status not in NO_ENDPOINT_STATUSES:
                raise
            return None
        return ollama_answers.running_models(answer)

    def checking(self, state: BackendState) -> asyncio.Task[None]:
        """The check of `state`'s backend in flight (`_check`), a new one when none is:
        one at a time per backend, whoever asks (the refreshes, `recheck`). Those who
        wait on it shield it: a request whose client leaves does not end it for the
        others."""
        task = self._checks.get(state.index)
        if task is None:
            task = asyncio.create_task(self._check(state), name=f"check {state.label}")
            self._checks[state.index] = task
            task.add_done_callback(functools.partial(self._checked, state.index))
        return task

    def _checked(self, index: int, task: asyncio.Task[None]) -> None:
        if self._checks.get(index) is task:
            del self._checks[index]

    async def _check(self, state: BackendState) -> None:
        """`refresh` the backend. An error none of its handlers expects (a bug, an answer
        read wrongly) is logged and goes no further: it would stop the refreshes of
        every backend for good, or the proxy's start. The backend is failed (what it
        lists is not known)."""
        try:
            await self.refresh(state)
        except Exception as exc:
            self._unexpected(f"refreshing backend {state.label}", exc)
            state.failed(f"health check failed: {exc!r}")

    async def refresh_all(self) -> None:
        """Check every backend (`checking`), then run the listeners. A listener that
        raised an error none of them expects keeps what it had, logged, and the others
        still run."""
        await asyncio.gather(*(asyncio.shield(self.checking(s)) for s in self.states))
        self._ran.clear()  # what ran before it, it lists loaded or not
        self._weigh()
        for listener in self.listeners:
            try:
                await listener()
            except Exception as exc:
                self._unexpected(f"refresh listener {listener.__qualname__}", exc)

    def _unexpected(self, where: str, exc: Exception) -> None:
        """Log an unexpected error of a refresh with its traceback, once per place and
        error: the next refreshes would raise it again at every interval."""
        key = (where, repr(exc))
        if key in self._errors:
            log.debug("%s failed again: %r", where, exc)
            return
        if len(self._errors) >= _ERRORS_KEPT:
            self._errors.clear()
        self._errors.add(key)
        log.error("%s failed: %r", where, exc, exc_info=exc)

    async def _refresh_loop(self) -> None:
        interval = self.config.health.interval_seconds
        gap = min(interval, _EARLY_REFRESH_GAP)
        while True:
            await asyncio.sleep(gap)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval - gap):
                    await self._added.wait()
            self._added.clear()
            await self.refresh_all()
