"""Send one request to a backend and relay its answer to the client as it arrives.

Retries (another backend, or a fresh connection when a pooled one went stale) happen
only before the first byte reaches the client. Once the response started, the
upstream's own chunk framing is forwarded verbatim from the upstream protocol's
`data_received` straight to the client's transport; a failure after that point ends
the stream the way Ollama does, with one more line `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from itertools import compress
from operator import itemgetter, not_
from typing import Protocol, TypeGuard

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from proxy import final_chunk, http11, origins
from proxy.aiohttp_internals import client_transport, state_get, writing_paused
from proxy.auth import sees_fleet
from proxy.backends import (
    UNAVAILABLE_STATUSES,
    BackendPool,
    BackendState,
    NoBackend,
    refused_at_once,
)
from proxy.cache import Capture
from proxy.config import Config
from proxy.continuations import answered_ending
from proxy.errors import SERVER_BUSY, error_response, model_not_found, stream_error_line
from proxy.form_encoding import WRITTEN
from proxy.http11 import Dechunker, ResponseHead, dechunk
from proxy.limits import BodyTooLarge, client_took, drained_within, read_chunk
from proxy.outcome import OUTCOME, Served
from proxy.protocol import HOP_BY_HOP, NDJSON, REQUEST_ID_HEADER, SSE
from proxy.relayed_response import RelayedResponse
from proxy.request_encoding import DECODED
from proxy.routes import find, runs_a_model
from proxy.upstream import MAX_DOCUMENT_BYTES, Answer, UpstreamConnection, exchange
from proxy.upstream_errors import (
    ConnectFailed,
    ConnectionLost,
    IdleTimeout,
    ProtocolError,
    ProxyExhausted,
    UpstreamError,
)

log = logging.getLogger("autoroute.relay")

_HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)
_NAME = itemgetter(0)
_REQUEST_ID = REQUEST_ID_HEADER.encode()
# The most names to drop that `_forwarded` searches the block of names for, one pass
# each; past it (a Connection field naming many), one set lookup per field.
_SEARCHED = 32
# Up to this many fields (every client's ordinary request), a pass over them in Python
# costs less than making and searching the block of names; past it, the block's cost
# does not grow with the fields kept.
_FEW_FIELDS = 64
# Not forwarded either: `Expect`, since the proxy has read the whole body and answered
# any `100-continue` itself (the backend's `100` would be a second one), and the
# client's `X-Request-Id`, since the backend gets the id the proxy uses.
_NOT_FORWARDED = _HOP_BY_HOP_BYTES | {b"expect", REQUEST_ID_HEADER.lower().encode()}
_CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
# The prefix of the proxy's own answer headers (`Served.extra`). A backend's of that
# name (another autoroute, or a gateway, in front of it), as its X-Request-Id, is not
# relayed: the client would read two ids, and rate by the one no request of its has.
_OWN_PREFIX = "x-autoroute-"
_OWN_ID = REQUEST_ID_HEADER.lower()
# A backend's failure as a caller who may not see the fleet reads it (by whether no
# connection could be made): the error's own text names hosts and ports.
_FAILED = {True: "unreachable", False: "failed"}
_EXHAUSTED = "the proxy has no connection left"
_BUSY = SERVER_BUSY + ": "
# Not forwarded with a body the proxy decoded (proxy/request_encoding.py).
_ENCODING = frozenset({b"content-encoding"})
# Not forwarded with a form the proxy wrote (`form_encoding`), which has its own type.
_FORM_FIELDS = _ENCODING | {b"content-type"}
_ORIGIN = frozenset({b"origin"})
_STREAM_TYPES = (NDJSON, SSE)
_UPLOAD_CHUNK = 256 * 1024
# What answers a request no local backend could (the cloud fallback), if anything does.
Fallback = Callable[[], Awaitable[web.StreamResponse]]
# A whole 200 answer's body (without framing) as the client is to read it instead.
Rewrite = Callable[[bytes], bytes]


class ModelGone(Exception):
    """`forward`'s request, sent with `missing`, found its model gone from every backend
    that listed it (`missing_model`): nothing reached the client, and the caller, which
    chose the model, may choose again."""


class ModelUnreachable(Exception):
    """`forward`'s request, sent with `missing`, reached none of the backends that list
    its model (`tried`: each connect refused or timed out, none left to try): nothing
    reached the client, and the caller, which chose the model, may choose one another
    backend lists; `answer` makes the client's answer where it cannot (the 503
    `forward` gives)."""

    def __init__(
        self,
        model: str,
        tried: list[BackendState],
        answer: Callable[[], web.StreamResponse],
    ) -> None:
        super().__init__(model)
        self.model = model
        self.tried = tried
        self.answer = answer


def missing_model(head: ResponseHead) -> bool:
    """Whether an answer to a request that runs a model is Ollama's 404 "model '…' not
    found" (JSON), not gin's 404 for a route it lacks (text)."""
    if head.status != 404:
        return False
    for name, value in head.headers:
        if name.lower() == "content-type":
            return value.startswith("application/json")
    return False


class Watch(Protocol):
    """What reads an answer before the client does (`WatchedLeg`): its head, then each
    piece of its body as the backend sent it, framing included. It must not raise."""

    def on_head(self, head: ResponseHead) -> None: ...

    def on_body(self, data: bytes) -> None: ...


def _wire(value: str) -> bytes:
    """A string aiohttp decoded from the wire (UTF-8, undecodable bytes kept as
    surrogates) as the bytes it came from: never fails on what a client sent."""
    return value.encode("utf-8", "surrogateescape")


def _forwarded(
    raw: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> Sequence[tuple[bytes, bytes]]:
    """`raw` without the fields `drop` names, nor those its Connection fields name. A
    client may send thousands of fields within the head's limit: their names are
    lower-cased as one block, a line each, searched for the few names dropped (C calls
    over bytes), with a Python step per field dropped and none per field kept."""
    if len(raw) <= _FEW_FIELDS:
        named = [value for name, value in raw if name.lower() == b"connection"]
        if named:
            drop = drop | _tokens(named)
        return [(name, value) for name, value in raw if name.lower() not in drop]
    names = b"\n%b\n" % b"\n".join(map(_NAME, raw)).lower()
    if b"\nconnection\n" in names:
        drop = drop | _tokens(raw[i][1] for i in _lines(names, b"connection"))
    if len(drop) > _SEARCHED:
        # A Connection field naming many: each field's name looked up instead, in C.
        listed = names[1:-1].split(b"\n")
        return list(compress(raw, map(not_, map(drop.__contains__, listed))))
    at = [i for name in drop for i in _lines(names, name)]
    if not at:
        return raw
    kept = [True] * len(raw)
    for i in at:
        kept[i] = False
    return list(compress(raw, kept))


def _tokens(connection: Iterable[bytes]) -> set[bytes]:
    """The field names the values of Connection fields list, lower-cased."""
    return {token.strip().lower() for value in connection for token in value.split(b",")}


def _lines(names: bytes, name: bytes) -> Iterator[int]:
    """The indexes of the lines of `names` (lines, each between two newlines) that are
    `name`. A name with a newline, or none, is no field's (a token of a Connection
    field's value may be either)."""
    if not name or b"\n" in name:
        return
    needle = b"\n%b\n" % name
    index = start = 0
    at = names.find(needle)
    while at >= 0:
        index += names.count(b"\n", start, at)
        yield index
        start = at
        at = names.find(needle, at + 1)


def request_head(
    request: web.Request,
    host: str,
    body_length: int | None,
    request_id: str,
    drop: frozenset[bytes] = _NOT_FORWARDED,
) -> bytes:
    """The upstream request head: the request's target in origin form, the client's
    headers as it sent them (bytes) minus the ones the proxy does not forward (and
    minus `drop`, the proxy's own credentials when it checks keys, and minus the fields
    its Connection names: that connection's, as Connection itself is, RFC 9110 7.6.1,
    and the `Origin` of a page of the proxy's own site, `origins.OWN_SITE`), and the
    request's id; `body_length=None` streams the body."""
    form = state_get(request, WRITTEN)
    if form is not None:
        drop = drop | _FORM_FIELDS
    if state_get(request, origins.OWN_SITE):
        drop = drop | _ORIGIN
    headers = _forwarded(request.raw_headers, drop)
    if form is not None:
        headers = [*headers, (b"Content-Type", form.content_type.encode())]
    if request_id:
        headers = [*headers, (_REQUEST_ID, _wire(request_id))]
    target = request.raw_path
    if not target.startswith("/"):
        # The absolute form (`POST http://host/api/chat`), as a client sends it to a
        # forward proxy: the backend, an origin server, gets the path and query alone
        # (RFC 9112, 3.2.1), as sent, and as read where the route table read them (the
        # route, the key's access to it, is decided by that path). Go's net/http would
        # take the client's authority over the Host line the proxy writes (Ollama
        # checks that host; a gateway in front of a backend may pick a site by it), and
        # the userinfo is the client's credential.
        target = request.rel_url.raw_path_qs
    if form is not None:
        path = target.partition("?")[0]
        target = f"{path}?{form.query}" if form.query else path
    return http11.request_head(
        _wire(request.method),
        _wire(target),
        _wire(host),
        headers,
        length=body_length,
        chunked=body_length is None,
    )


class Relay:
    def __init__(self, config: Config, backends: BackendPool) -> None:
        self.config = config
        self.backends = backends
        self.idle = config.timeouts.idle_read_seconds
        self.write_idle = config.timeouts.client_write_idle_seconds
        # With API keys on, the key authenticates the client to the proxy: it is not
        # the backends' business and must not leak to them.
        self.drop = _NOT_FORWARDED | (_CREDENTIALS if config.auth.enabled else frozenset())

    async def forward(
        self,
        request: web.Request,
        outcome: Served,
        body: bytes | None,
        model: str | None,
        only: BackendState | None = None,
        fallback: Fallback | None = None,
        capture: Capture | None = None,
        watch: Watch | None = None,
        waits: bool = False,
        rewrite: Rewrite | None = None,
        missing: bool = False,
    ) -> web.StreamResponse:
        """Relay to the best backend for `model`; `body=None` streams the client's body
        (uploads), which cannot be replayed, so it is never retried. `capture` records
        the answer as the client gets it, for the response cache; `watch` reads it
        before the client does (one backend's answer, `only`, with neither `fallback`
        nor `capture`). `waits`: the answer comes whole once work of any length is
        done (a pull asked with `stream: false`), so the backend's silence before it is
        not bounded by `idle_read_seconds`. `rewrite` (without `watch` or `capture`): a
        200 answer, a small document, is read whole and the client gets what `rewrite`
        makes of it. A retry goes only to another backend that has the model; when none
        is left, the client gets the last backend's own answer, whatever its status. So
        does a backend's answer that it has no such model (`missing_model`, Ollama's
        404) while another backend lists the model and the body can be sent again: a
        replica serves it. With a `fallback`, a backend
        saying it cannot serve (502, 503, 504) is not the client's answer either, and
        `fallback` answers when no backend is left. A failure the request itself may
        have caused (`_suspect`) is retried once at most: an input that kills a runner
        (or a server) would otherwise kill one on every backend the retries reach.
        `missing` (the caller chose the model, as the list spells it): that answer is not
        the client's either, even from the last backend listing the model; the backend
        no longer has the model (`BackendPool.lost`), and with no other backend left
        `ModelGone` is raised for the caller to choose another. Without it the name is
        the client's, which Ollama may read otherwise than the proxy: the answer takes
        the model from no backend."""
        tried: list[BackendState] = []
        gone = False  # a backend answered that it has no such model (`missing_model`)
        suspect = False  # an attempt failed in a way the request may have caused
        failures: list[tuple[str, str]] = []  # (the operator's reason, a public one)
        unreachable = True  # every failure so far was a refused or timed-out connect
        exhausted = True  # every failure so far was the proxy's own (`ProxyExhausted`)
        # Every failure so far left the request with no backend: one or the other.
        unsent = True
        retries = self.config.health.retries if body is not None else 0
        rechecked = False  # the backends that may be back were checked again

        async def given_up() -> web.StreamResponse:
            """After a failure, once no backend is left: the `fallback`'s answer, but
            for a model the caller chose that no backend could be reached for, which
            is `ModelUnreachable` (`_failed`) as without a fallback: the caller
            chooses a model other backends list before the fallback (the cloud's, paid
            for) answers. Without a fallback, `_failed`'s answer."""
            chosen = model if missing else None
            if fallback is None or _chooses_again(chosen, unreachable, exhausted):
                return self._failed(
                    request, outcome, failures, unreachable, exhausted, unsent, chosen, tried
                )
            return await fall_back()

        def fall_back() -> Awaitable[web.StreamResponse]:
            """The `fallback`'s answer, the outcome saying whether the request reached
            no backend (`unsent`), as `_failed`'s would: an answer of the proxy's own
            in its place (the cloud's refusal) fails no model that never ran."""
            assert fallback is not None
            outcome.unreached = unsent
            return fallback()

        while True:
            try:
                state = only or self.backends.choose(model, tried, retry=bool(tried))
            except NoBackend as none:
                try:
                    # A backend whose circuit a refused connect opened may be back on
                    # its port (a restart) before its next check: checked now, it
                    # serves rather than the proxy's own 503 (`BackendPool.rechecked`).
                    # Once a request: a retry after it waits on no second check.
                    if rechecked:
                        raise
                    rechecked = True
                    choosing = functools.partial(
                        self.backends.choose, model, tried, retry=bool(tried)
                    )
                    state = await self.backends.rechecked(none, choosing, model, tried)
                except NoBackend:
                    if gone and missing:
                        raise ModelGone(model) from None
                    if gone and model is not None:
                        # The backends that listed the model went while one answered
                        # it has none: that answer, Ollama's 404, is the client's.
                        return model_not_found(request.path, model, self.backends.held())
                    if failures:
                        return await given_up()
                    if fallback is not None:
                        return await fall_back()
                    raise  # answered where every NoBackend is (`Server.handle`)
            outcome.attempts += 1
            outcome.backend = state.label
            # Another backend could take the request in this one's place: one that lists
            # the model, the body in hand to send again.
            elsewhere = (
                only is None
                and body is not None
                and self.backends.can_retry(model, [*tried, state])
            )
            may_retry = elsewhere and len(tried) < retries
            if watch is None:
                client = ClientLeg(
                    request,
                    outcome,
                    may_retry,
                    fallback is not None,
                    capture,
                    self.write_idle,
                    retry_errors=not suspect,
                    rewrite=rewrite,
                    decline_missing=(
                        (missing or elsewhere)
                        and model is not None
                        and not state.runs_elsewhere(model)
                    ),
                )
            else:
                client = WatchedLeg(
                    watch,
                    request,
                    outcome,
                    may_retry,
                    write_idle=self.write_idle,
                    retry_errors=not suspect,
                )
            # Counted in flight from here, where every way out below ends it.
            state.begin(model)
            try:
                head = await self.exchange(request, state, body, client, outcome.request_id, waits)
            except UpstreamError as exc:
                state.end(model)
                # On a route that runs a model, its silence before the answer's head
                # is the request's own length, which the client sets: the model's
                # loading and the prompt's evaluation before a stream's first chunk,
                # the whole generation before an answer that comes whole (`stream:
                # false`, OpenAI's default, embeddings). Not the backend failing (a
                # hung backend fails its health checks), and it would take as long on
                # another. So is a request the backend sends on to ollama.com
                # (`offsite`), or one for a model that runs there, describing it too
                # (`runs_elsewhere`): the silence is that host's.
                own_length = isinstance(exc, IdleTimeout) and (
                    outcome.offsite
                    or runs_a_model(find(request.path), request.method)
                    or (model is not None and state.runs_elsewhere(model))
                )
                # Nor the proxy out of connections: one client can exhaust them.
                if not own_length and not isinstance(exc, ProxyExhausted):
                    state.failed(str(exc), refused_at_once(exc))
                log.warning("backend %s failed before answering: %s", state.label, exc)
                unreached = isinstance(exc, ConnectFailed)
                own = isinstance(exc, ProxyExhausted)
                failures.append(
                    (
                        f"{state.label}: {exc}",
                        f"{state.public_label}: " + (_EXHAUSTED if own else _FAILED[unreached]),
                    )
                )
                unreachable = unreachable and unreached
                exhausted = exhausted and own
                unsent = unsent and (unreached or own)
                tried.append(state)
                again = suspect and _suspect(exc)
                suspect = suspect or _suspect(exc)
                if own_length or again or only is not None or len(tried) > retries:
                    return await given_up()
                continue
            except Exception as exc:
                state.end(model)
                if client.started:
                    # The answer's head went out (an upload the backend answered early,
                    # whose client then failed): aiohttp must not answer after it.
                    log.exception("relaying from %s failed", state.label)
                    return client.cut(f"proxy error: {exc}")
                raise
            except BaseException:
                state.end(model)
                raise
            if client.declined:
                state.end(model)
                client.drop()
                lacks = missing_model(head)
                if lacks and model is not None:
                    gone = True
                    if missing:
                        self.backends.lost(state, model)
                state.answered(head.status, model, outcome.offsite)
                answered = f": answered {head.status}"
                failures.append((state.label + answered, state.public_label + answered))
                unreachable = exhausted = unsent = False
                tried.append(state)
                # A model the backend lacks ran nothing the request could have upset.
                suspect = suspect or not (lacks or head.status in UNAVAILABLE_STATUSES)
                continue
            try:
                await self._respond(state, head, client, outcome, model)
            finally:
                state.end(model)
            if (
                model is not None
                and missing_model(head)
                and request[OUTCOME].decided.decision is not None
                and runs_a_model(find(request.path), request.method)
                and not state.runs_elsewhere(model)
            ):
                # A model the backend lists is gone there. Only where `auto` wrote the
                # name as the list spells it: a client's own spelling of a name that
                # Ollama resolves otherwise than the proxy (or not at all) also gets
                # its 404, and one request must not take a model from everyone.
                self.backends.lost(state, model)
            # The whole answer is on the client's transport, the backend done with it.
            # The connection's next request waits until the client has taken in enough
            # of it, as after aiohttp's own answers (and Go's, whose writes block): a
            # client that pipelines requests and reads no answer grows no buffer past
            # the high-water mark, and no backend is asked for answers no one reads.
            if not await client_took(request, self.write_idle, outcome):
                outcome.cancelled = True
                client.keep_alive = False
            return client.response()

    def _failed(
        self,
        request: web.Request,
        outcome: Served,
        failures: list[tuple[str, str]],
        unreachable: bool,
        exhausted: bool,
        unsent: bool,
        chosen: str | None = None,
        tried: Sequence[BackendState] = (),
    ) -> web.StreamResponse:
        """No answer from any backend tried: 503 when none could be reached (as when no
        backend is healthy; "server busy" when only the proxy's own connections ran
        out, as Ollama says of its own full queue), 502 when one was reached and
        misbehaved. `failures` says why, each (the operator's reason, a public one):
        the client reads the public ones unless it may see the fleet (`sees_fleet`);
        the outcome keeps the other. A model the caller chose (`chosen`, sent with
        `missing`) that none of the backends listing it (`tried`) could be reached for
        is `ModelUnreachable` instead, for the caller to choose another; not where the
        proxy's own connections ran out, which another model would find alike. Where
        the request reached none of them (`unsent`: each connect failed, or the proxy's
        own connections ran out), no model ran: the outcome says so (`unreached`), and
        `auto` learns nothing of the model from it. One a backend had, which then failed
        (a reset, garbage, silence, a 5xx before a retry), it may have run: as a 5xx it
        answered, a failure."""
        if _chooses_again(chosen, unreachable, exhausted):
            answer = functools.partial(
                self._failed, request, outcome, failures, unreachable, exhausted, unsent
            )
            raise ModelUnreachable(chosen, list(tried), answer)
        outcome.unreached = unsent
        prefix = _BUSY if exhausted else "no healthy backend: " if unreachable else ""
        outcome.error = prefix + "; ".join(detailed for detailed, _ in failures)
        message = outcome.error
        if not sees_fleet(request, self.config.auth.enabled):
            message = prefix + "; ".join(public for _, public in failures)
        return error_response(request.path, 503 if unreachable else 502, message)

    async def exchange(
        self,
        request: web.Request,
        state: BackendState,
        body: bytes | None,
        sink: Answer,
        request_id: str = "",
        waits: bool = False,
    ) -> ResponseHead:
        """Send the request to `state`'s backend; its answer goes to `sink` from the
        upstream connection's callbacks (a client's starts flowing to the client as
        soon as the head is parsed). The head, once it came; the connection is then
        `sink.conn`, for its owner to give back. `waits`: see `forward`."""
        idle = None if waits else self.idle
        head_bytes = request_head(
            request,
            state.pool.host_header,
            None if body is None else len(body),
            request_id,
            self.drop | _ENCODING if state_get(request, DECODED) else self.drop,
        )
        upload = None
        if body is None:

            def upload(conn: UpstreamConnection) -> Awaitable[None]:
                return self._upload(request, conn, sink.answered)

        return await exchange(
            state.pool, request.method, head_bytes, body or b"", idle, sink, upload
        )

    async def _upload(
        self, request: web.Request, conn: UpstreamConnection, answered: asyncio.Future[None]
    ) -> None:
        limit = self.config.limits.max_upload_bytes
        idle = self.config.timeouts.client_body_idle_seconds
        sent = 0
        try:
            while chunk := await read_chunk(request, _UPLOAD_CHUNK, idle):
                if answered.done():
                    break
                sent += len(chunk)
                if sent > limit:
                    raise BodyTooLarge(limit, sent)
                await conn.write_body(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                await conn.write_body(b"0\r\n\r\n")
                return
        except UpstreamError:
            # The exchange failed: its sink has the error, which `response_head` raises.
            pass
        except RequestPayloadError:
            # The client's body broke (`aiohttp_internals.fail_open_body`): the client's
            # fault, answered with Ollama's 400 (`Server.handle`), unless the backend
            # answered already, as Ollama does without reading the body: that answer is
            # the client's.
            if not answered.done():
                raise
        # The backend answered before the body ended (a refusal, as a digest that
        # cannot match): its answer is the client's, the rest of the body is not sent,
        # and the connection, its request unfinished, is never reused.
        conn.abandon_request()

    async def _respond(
        self,
        state: BackendState,
        head: ResponseHead,
        client: ClientLeg,
        outcome: Served,
        model: str | None,
    ) -> None:
        outcome.status = head.status
        # Once the head went out, the relay has written to the client's transport itself:
        # nothing may reach aiohttp's handler error path (it would write a 500 after the
        # relayed bytes), and only the client's leaving is a cancellation.
        try:
            await client.ended
        except UpstreamError as exc:
            outcome.error = f"{state.label}: {exc}"
            # A backend's silence once it has answered is the work the request asked
            # for, whatever the route: a model writing a tool call its parser withholds
            # until whole, a pull waiting on its registry. Counted, any client could
            # open every circuit with a long enough request; a backend that is down
            # fails its connects and health checks.
            if not isinstance(exc, IdleTimeout):
                state.failed(str(exc))
            log.warning("backend %s failed mid-stream: %s", state.label, exc)
            client.fail(str(exc))
        except asyncio.CancelledError:
            # The client went away (handler cancelled): stop the backend generating.
            outcome.cancelled = True
            raise
        except Exception as exc:
            # The proxy failed, not the backend: it does not count against its health.
            log.exception("relaying from %s failed", state.label)
            outcome.error = f"proxy error: {exc}"
            client.fail(outcome.error)
        else:
            try:
                tail = client.tail()
                outcome.stats = final_chunk.parse(tail)
                failed = None
                if head.status == 200:
                    failed = (
                        final_chunk.sse_error(tail, client.path, head.chunked)
                        if client.content_type.startswith(SSE)
                        else final_chunk.stream_error(tail)
                    )
                elif head.status >= 400:
                    # The backend's own error answer, relayed: the event keeps its
                    # message, which tells a refusal of the request (any 4xx, Ollama's
                    # 500 for a request it cannot run) from a failure of the model
                    # (`selector_model.outcome.judged`).
                    failed = final_chunk.answer_error(tail, head.chunked)
                if failed is not None:
                    outcome.error = failed
                outcome.context_ending = answered_ending(tail)
                state.answered(head.status, model, outcome.offsite)
            except Exception as exc:
                # The client has its whole answer; only the proxy's record of it failed.
                log.exception("reading the end of the answer from %s failed", state.label)
                outcome.error = f"proxy error: {exc}"
        finally:
            outcome.body_bytes = client.body_bytes
            client.release()


def _chooses_again(chosen: str | None, unreachable: bool, exhausted: bool) -> TypeGuard[str]:
    """Whether a request that no backend answered is `ModelUnreachable`: its model one
    the caller chose (`chosen`), none of its backends reached (`unreachable`), and not
    for want of the proxy's own connections (`exhausted`), which another model would
    find alike."""
    return chosen is not None and unreachable and not exhausted


def _suspect(exc: UpstreamError) -> bool:
    """Whether a backend that had the request failed in a way the request itself may
    have caused: it dropped the connection or broke its answer (a server the input
    crashed). Not a connect that failed (the request never got there), nor silence."""
    return isinstance(exc, ConnectionLost | ProtocolError)


class ClientLeg(Answer):
    """The client side of one exchange, the sink of its upstream connection. The
    response head is written from the upstream protocol's callback the moment the
    backend's head arrives, and the body follows from the same callbacks: no task
    switch between backend and client. What the exchange relayed (bytes, last chunks)
    is kept here, not on the upstream connection, which goes back to the pool for
    another request at `release`."""

    def __init__(
        self,
        request: web.Request,
        outcome: Served,
        may_retry: bool = False,
        decline_unavailable: bool = False,
        capture: Capture | None = None,
        write_idle: float = 0.0,
        retry_errors: bool = True,
        rewrite: Rewrite | None = None,
        decline_missing: bool = False,
    ) -> None:
        super().__init__()
        self.capture = capture
        self.rewrite = rewrite
        # With `rewrite`, a 200 answer's head lines and body (framing included), held
        # until its end (`on_end`), when the client gets it rewritten.
        self.held: tuple[list[tuple[str, str]], list[bytes]] | None = None
        # How long a paused answer waits for the client to take some of it (0: forever).
        self.write_idle = write_idle
        self.transport = client_transport(request)
        self.path = request.path  # the route, whose shape a stream's error line takes
        self.protocol = request.protocol
        self.version = request.version
        self.keep_alive = request.keep_alive
        self.outcome = outcome
        # Added to the backend's CORS headers for a page of an allowed origin.
        self.exposed = origins.exposed(request)
        self.may_retry = may_retry
        # Whether a 5xx other than 502, 503, 504 may go to another backend: once one
        # answer of the kind (Ollama's 500 for a request it could not run) was declined,
        # the next is the client's (`forward`).
        self.retry_errors = retry_errors
        # A fallback waits: "cannot serve" (502, 503, 504) is not the client's answer.
        self.decline_unavailable = decline_unavailable
        # `forward`'s `missing`: "no such model" is not the client's answer either.
        self.decline_missing = decline_missing
        self.started = False
        # The answer is not the client's: a 5xx (or with `decline_missing` "no such
        # model") before any byte reached the client, when another backend or model may
        # still answer. `forward` retries.
        self.declined = False
        # An HTTP/1.0 client cannot read chunked framing: a chunked answer reaches it
        # without, delimited by the connection's close, as Go's net/http streams to it.
        self.dechunker: Dechunker | None = None
        self.paused = False
        self.content_type = ""
        self.writer = request.writer
        self.body_bytes = 0
        self.previous = b""
        self.last = b""
        # The two reads that held the answer's durations, when they are not the last
        # two: a whole /api/generate answer has its logprobs after its counters.
        self.counters: tuple[bytes, bytes] | None = None
        self.head_bytes = b""
        self._resume: asyncio.Task[None] | None = None

    def _backend_headers(self, head: ResponseHead) -> list[tuple[str, str]]:
        headers = []
        named: set[str] = set()  # what its Connection names
        content_type = None
        for name, value in head.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname == _OWN_ID or lname.startswith(_OWN_PREFIX):
                if lname == "connection":
                    named.update(token.strip().lower() for token in value.split(","))
                continue
            if lname == "content-type":
                content_type = value
            headers.append((name, value))
        if named:
            # The headers its Connection names are the backend's hop's (RFC 9110, 7.6.1),
            # wherever they stand in its head.
            headers = [(n, v) for n, v in headers if n.lower() not in named]
            if "content-type" in named:
                content_type = None
        if content_type is not None:
            self.content_type = content_type
        if self.content_type.startswith(_STREAM_TYPES):
            headers.append(("X-Accel-Buffering", "no"))
        return headers

    def _own_headers(self) -> list[tuple[str, str]]:
        return [
            (REQUEST_ID_HEADER, self.outcome.request_id),
            *self.outcome.extra.items(),
            *self.exposed,
        ]

    def on_head(self, head: ResponseHead, body_follows: bool) -> None:
        """Called by the upstream protocol as soon as the backend's head is parsed."""
        unavailable = head.status in UNAVAILABLE_STATUSES
        retried = self.may_retry and head.status >= 500 and (unavailable or self.retry_errors)
        missing = self.decline_missing and missing_model(head)
        if retried or missing or (self.decline_unavailable and unavailable):
            self.declined = True  # nothing sent yet: the answer is dropped
        else:
            if head.chunked and self.version < (1, 1):
                self.dechunker = Dechunker()
            self._start(head, body_follows)
        super().on_head(head, body_follows)

    def _start(self, head: ResponseHead, body_follows: bool) -> None:
        # The backend's header lines go out as they came (its head was read as
        # Latin-1); the proxy's own values may hold what a client sent (an id), as
        # the bytes it sent.
        backend_headers = self._backend_headers(head)
        if self.capture is not None:
            self.capture.started(head, backend_headers)
        if self.rewrite is not None and head.status == 200 and body_follows:
            self.started = True
            self.held = (backend_headers, [])
            return
        out = self._head_lines(head, backend_headers)
        if head.chunked and self.dechunker is None:
            out += b"Transfer-Encoding: chunked\r\n"
        elif head.content_length is not None:
            out += b"Content-Length: %d\r\n" % head.content_length
        elif not http11.bodiless(head.status):
            self.keep_alive = False  # the body ends when the connection does
        out += self._connection_line() + b"\r\n"
        self.started = True
        if body_follows:
            # One write for the head and the first chunk, as Ollama sends them.
            self.head_bytes = bytes(out)
        else:
            self.transport.write(out)

    def _head_lines(self, head: ResponseHead, backend_headers: list[tuple[str, str]]) -> bytearray:
        """The status line, the backend's header lines and the proxy's own."""
        # Go answers an HTTP/1.0 request with an HTTP/1.0 status line (writeStatusLine).
        version = "1.1" if self.version >= (1, 1) else "1.0"
        lines = [f"HTTP/{version} {head.status} {head.reason}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in backend_headers]
        out = bytearray("".join(lines).encode("latin-1"))  # one encoding for them all
        out += _wire("".join([f"{name}: {value}\r\n" for name, value in self._own_headers()]))
        return out

    def _connection_line(self) -> bytes:
        """The Connection header line Go's writeHeader adds, if any."""
        if not self.keep_alive and self.version >= (1, 1):
            # Go says so to an HTTP/1.1 client alone.
            return b"Connection: close\r\n"
        if self.keep_alive and self.version < (1, 1):
            # An HTTP/1.0 client that asked to keep its connection keeps it only when
            # told so: Go says so for an answer of known length.
            return b"Connection: keep-alive\r\n"
        return b""

    def on_end(self) -> None:
        """The answer ended: a held one (`rewrite`) goes to the client now, whole, with
        the length of what `rewrite` made of it."""
        held, self.held = self.held, None
        if held is not None and self.rewrite is not None and self.head is not None:
            backend_headers, parts = held
            raw = b"".join(parts)
            body = self.rewrite(dechunk(raw) if self.head.chunked else raw)
            out = self._head_lines(self.head, backend_headers)
            out += b"Content-Length: %d\r\n" % len(body)
            out += self._connection_line()
            if not self.transport.is_closing():
                self.transport.write(bytes(out) + b"\r\n" + body)
            self.outcome.first_byte_at = time.perf_counter()
        super().on_end()

    def on_body(self, data: bytes) -> None:
        if not self.started:
            return  # declined: not the client's
        if self.held is not None:
            # A document to rewrite, bounded as every document the proxy reads whole.
            self.body_bytes += len(data)
            if self.body_bytes > MAX_DOCUMENT_BYTES:
                raise ProtocolError(f"answer over {MAX_DOCUMENT_BYTES} bytes")
            self.held[1].append(data)
            return
        # The write comes first: if anything after it fails, the client has exactly
        # what the upstream connection has read so far.
        transport = self.transport
        if transport.is_closing():
            return
        out = data if self.dechunker is None else self.dechunker.feed(data)
        if self.head_bytes:
            transport.write(self.head_bytes + out)
            self.head_bytes = b""
        elif out:
            transport.write(out)
        if self.capture is not None:
            self.capture.add(data)
        self.body_bytes += len(data)
        # Two references per chunk: enough to read the final chunk's counters later.
        self.previous, self.last = self.last, data
        # `find`, not `in`: CPython's bytes `in` first tries its operand as an integer
        # (a byte value), and raises and clears a TypeError for every bytes operand.
        if data.find(final_chunk.COUNTERS_MARK) >= 0:
            self.counters = (self.previous, data)
        if not self.outcome.first_byte_at:
            self.outcome.first_byte_at = time.perf_counter()
        if writing_paused(self.protocol) and not self.paused:
            # A client that stops reading pauses the backend, not a growing buffer.
            self.paused = self.outcome.client_paused = True
            assert self.conn is not None
            self.conn.pause_reading()
            self._resume = asyncio.get_running_loop().create_task(self._resume_after_drain())

    def tail(self) -> bytes:
        """What `final_chunk.parse` reads: the last two reads, after the two that held
        the counters when those came earlier (the tail's own values win)."""
        kept = self.previous + self.last
        if self.counters is None or self.counters[1] is self.last:
            return kept  # the counters' reads are the last two (a stream's final line)
        return b"".join(self.counters) + kept

    async def _resume_after_drain(self) -> None:
        try:
            # A client that left, or took nothing for `write_idle` (then let go as if
            # it had left), ends the exchange: the handler's cancellation closes the
            # backend's request.
            await drained_within(self.writer, self.transport, self.write_idle, self.outcome)
        finally:
            self.paused = False
            if self.conn is not None:  # None once released: no longer this exchange's
                self.conn.resume_reading()

    def fail(self, message: str) -> None:
        """End a started response after a failure, as Ollama does mid-stream."""
        conn = self.conn
        at_boundary = conn is not None and conn.at_chunk_boundary()
        if conn is not None:
            conn.close()
        chunked = self.head is not None and self.head.chunked
        stream = self.content_type.startswith(_STREAM_TYPES)
        if chunked and stream and at_boundary and not self.transport.is_closing():
            written = self.tail() if self.body_bytes else b""
            line = stream_error_line(self.content_type, message, self.path, written)
            if self.dechunker is None:
                # (A line of nothing is no chunk: a chunk of size 0 ends the body.)
                line = (b"%x\r\n%b\r\n" % (len(line), line) if line else b"") + b"0\r\n\r\n"
            # else the close that follows ends the body (keep_alive is off)
            self.transport.write(self.head_bytes + line)
            self.head_bytes = b""
        else:
            # Length-framed, a whole answer (its JSON would end in an error line, a
            # complete 200 that is no JSON), cut inside a chunk or already ended:
            # closing is the only honest signal.
            self.keep_alive = False
            self.transport.close()

    def drop(self) -> None:
        """The answer is not the client's (declined): its connection is closed."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def release(self) -> None:
        """The exchange's bookkeeping is done: its upstream connection goes back (or is
        closed) and nothing here refers to it any more."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.release()

    def cut(self, message: str) -> RelayedResponse:
        """End a started response that failed before its exchange got going."""
        assert self.head is not None
        self.outcome.status = self.head.status
        self.outcome.error = message
        self.fail(message)
        self.release()
        return self.response()

    def response(self) -> RelayedResponse:
        assert self.head is not None
        return RelayedResponse(self.head.status, self.keep_alive)


class WatchedLeg(ClientLeg):
    """A client leg whose answer `watch` reads first, piece by piece, before the piece
    goes on to the client: for the few answers the proxy must act on before the client
    can (`proxy.model_changes`). Not for the requests that run a model."""

    def __init__(
        self,
        watch: Watch,
        request: web.Request,
        outcome: Served,
        may_retry: bool = False,
        write_idle: float = 0.0,
        retry_errors: bool = True,
    ) -> None:
        super().__init__(
            request, outcome, may_retry, write_idle=write_idle, retry_errors=retry_errors
        )
        self.watch = watch

    def on_head(self, head: ResponseHead, body_follows: bool) -> None:
        self.watch.on_head(head)
        super().on_head(head, body_follows)

    def on_body(self, data: bytes) -> None:
        if self.started:
            self.watch.on_body(data)
        super().on_body(data)
