"""The handlers the route table (`proxy.routes`) names for Ollama's paths and the
proxy's health: pass through, route by the model the body names (`auto` decided and
rewritten here), merge lists, change the model store, and answer for what no single
backend can.

The proxy only reads a body where the model it names decides the backend (a JSON body,
or the multipart form of an audio transcription).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import hdrs, web

from proxy import (
    body_screen,
    form_encoding,
    go_json,
    header_values,
    model_changes,
    multipart_form,
    request_encoding,
    runner_caps,
)
from proxy import limits as request_limits
from proxy.aiohttp_internals import state_get
from proxy.auth import KEY_REQUEST, KeyState, sees_fleet, without_foreign_parent
from proxy.auto import (
    AutoError,
    AutoRouter,
    conversation_owner,
    conversation_scope,
    profile_of,
    reading_off_loop,
    user_key,
)
from proxy.auto_routes import (
    LOADING_PATHS,
    AutoRoutes,
    fraction_in_an_int,
    loads,
    merged_reading,
    refusal,
    repeated_keys,
)
from proxy.backends import (
    WEB_PATHS,
    BackendPool,
    BackendState,
    NoBackend,
    names_a_model,
    searches_the_web,
)
from proxy.cache import ResponseCache
from proxy.cache.key import cache_key, cacheable, generates, scope
from proxy.cache.replay import CACHE_HEADER, replay
from proxy.cloud import (
    CLOUD_REASON,
    CloudFallback,
    lists_locally,
    lists_locally_now,
    refusal_of,
    stand_in_names,
    stands_in,
)
from proxy.config import Config
from proxy.errors import error_response, gin_refusal, handler_error, model_not_found
from proxy.fanout import Fanout
from proxy.keep_alive import unloads
from proxy.metrics import Metrics
from proxy.outcome import OUTCOME, Served
from proxy.protocol import AUTOROUTE_HEADERS, JSON, JSON_V1, MODEL_HEADER, encoded, go_dumps
from proxy.relay import Fallback, ModelGone, ModelUnreachable, Relay
from proxy.routes import Route, find
from selector_model.policy import unchosen_record

SHOW_PATH = "/api/show"
CREATE_PATH = "/api/create"
PULL_PATH = "/api/pull"
_WHOLE_AFTER_WORK = frozenset({PULL_PATH, "/api/push", CREATE_PATH})
V1_MODEL_PREFIX = "/v1/models/"
# `auto` chooses among models by what they do with text; none of that says which
# model transcribes audio.
AUTO_CANNOT_TRANSCRIBE = (
    "auto does not choose a model for audio transcriptions: name a model that transcribes audio"
)
AUTO_EMBEDDING_DENIED = "auto's embedding model is not allowed for this API key"
WEB_SEARCH_FORBIDDEN = (
    "forbidden: web search runs on the server's ollama.com account: it needs an admin key"
)
# Bodies below this size are read so that a failed backend can be retried.
_REPLAYABLE_BYTES = 1024 * 1024


async def document_of(body: bytes, max_values: int) -> Any:
    """A JSON body as Ollama reads it (`go_json`, a large one off the loop), or None
    (the backend then answers its own error, or the body holds more than `max_values`
    values)."""
    try:
        doc, _ = await go_json.read_off_loop(body, max_values)
    except go_json.BodyError:
        return None
    return doc


def _refused(path: str, doc: dict[str, Any], body: bytes) -> web.Response | None:
    """Ollama's 400 for a body (`body` as the client sent it, `doc` as read) its
    handler refuses before it looks at the model (`auto_routes.refusal`), None for one
    it goes on with."""
    refused = refusal(path, doc, body)
    if refused is None:
        return None
    answer = handler_error if refused.by_handler else error_response
    return answer(path, 400, refused.message)


def _unloads_alone(path: str, doc: Any) -> bool:
    """Whether a generate or chat only unloads its model (`ollama stop`: no prompt or
    messages, keep_alive 0); not one whose keep_alive Ollama refuses."""
    if not isinstance(doc, dict) or generates(path, doc):
        return False
    try:
        return unloads(doc.get("keep_alive"))
    except ValueError:
        return False


def _shown_to(answer: bytes, models: frozenset[str]) -> bytes:
    """An `/api/show` answer as a key whose list is `models` reads it
    (`without_foreign_parent`); the backend's bytes when there is nothing to hide, or
    when they are no JSON object."""
    try:
        doc = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return answer
    shown = without_foreign_parent(doc, models)
    return answer if shown is doc else go_dumps(shown)


def _refuses(key: KeyState, model: str) -> bool:
    """Whether `key` may not use the model `model` names: one off its list, named as
    Ollama reads a name (`names_a_model`); any other name goes on to the backend,
    whose 400 for it is the same for every key (`Handlers._named`)."""
    # The name is checked only once refused: an allowed name needs no check.
    return not key.allows_model(model) and names_a_model(model)


class Handlers:
    def __init__(
        self,
        config: Config,
        backends: BackendPool,
        relay: Relay,
        auto: AutoRouter,
        auto_routes: AutoRoutes,
        fanout: Fanout,
        metrics: Metrics,
        cache: ResponseCache | None = None,
        cloud: CloudFallback | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.relay = relay
        self.auto = auto
        self.auto_routes = auto_routes
        self.fanout = fanout
        self.metrics = metrics
        self.cache = cache
        # More of the proxy's own state for `health`, by field name (e.g. "limits"),
        # each called with whether the caller sees the fleet (`sees_fleet`): without,
        # nothing that counts requests, which are every key's. None names a model (the
        # cloud's, which does, is `health`'s own).
        self.health_extras: dict[str, Callable[[bool], object]] = {}
        self.cloud = cloud
        self.runner_caps = runner_caps.RunnerCaps(config.runners)

    def _read(self, request: web.Request) -> Awaitable[bytes]:
        return request_limits.read_body(request, self.config.timeouts.client_body_idle_seconds)

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        """To the best backend as it came; a small body is read first so that a failed
        backend can be retried."""
        served = request[OUTCOME].served
        served.offsite = request.path in WEB_PATHS
        length = request.content_length
        if request.body_exists and (length is None or length > _REPLAYABLE_BYTES):
            return await self.relay.forward(request, served, None, None)
        return await self.relay.forward(request, served, await self._read(request), None)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return error_response(
            request.path, 404, f"no such endpoint: {request.method} {request.path}"
        )

    async def method_not_allowed(self, request: web.Request) -> web.StreamResponse:
        """One of the proxy's own paths asked with a method it does not take: 405, as
        Ollama answers a method its route does not take."""
        route = find(request.path)
        assert route is not None
        response = error_response(
            request.path, 405, f"method not allowed: {request.method} {request.path}"
        )
        response.headers["Allow"] = ", ".join(sorted(route.methods))
        return response

    async def gin_refusal(self, request: web.Request) -> web.StreamResponse:
        """A CONNECT outside the proxy's own paths, or a method a public route does not
        take: Ollama's answer for its path (`errors.gin_refusal`)."""
        return gin_refusal(request.path)

    async def scrape(self, request: web.Request) -> web.StreamResponse:
        """`GET /metrics`, for Prometheus."""
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def model_routed(self, request: web.Request) -> web.StreamResponse:
        """Requests whose body names the model: `auto` is decided and rewritten here."""
        outcome = request[OUTCOME]
        decided, served = outcome.decided, outcome.served
        path = request.path
        # What is checked is what the backend reads: the body as Ollama decodes it,
        # forwarded in canonical form, never the client's bytes (see `go_json`).
        try:
            raw = await self._read(request)
            limit = self.config.limits.max_body_bytes
            sent = await request_encoding.decoded_off_loop(request, raw, limit)
            max_values = self.config.limits.max_json_values
            # A large body is read in the worker (`body_screen`): one the limits refuse
            # is refused unread here, one they pass taken as read there.
            screened = await body_screen.screen(
                path,
                sent,
                max_values,
                self.config.limits,
                rereads=merged_reading,
                log_prompts=self.config.usage.log_prompts,
            )
            if isinstance(screened, body_screen.Refused):
                decided.body, served.offsite = sent, screened.offsite
                decided.prompt = screened.prompt
                return error_response(path, screened.status, screened.message)
            repeated = None
            if screened is not None:
                doc, body = screened.doc, screened.body(sent)
            else:
                doc, body = await go_json.read_off_loop(sent, max_values)
                # A key given twice: Go assigns the earlier value too, and refuses it
                # where its type is wrong (answered after the proxy's own bounds), else
                # merges it with the later (a null leaves a string, an object adds to a
                # map): what Go ends with is checked, decided on and forwarded, and read
                # again in place of the body where its numbers are wanted as written.
                repeated = await repeated_keys(path, sent, body)
                if repeated is not None and repeated.doc is not None:
                    doc, body, sent = repeated.doc, repeated.forwarded, repeated.written
            # A number that is no integer where Go reads an int: forwarded as written.
            fractional = fraction_in_an_int(path, doc)
            if fractional:
                written = await go_json.slow_off_loop(len(sent), go_json.as_written, sent)
                body = written or body
        except go_json.BodyError as exc:
            return error_response(path, exc.status, str(exc))
        except request_encoding.Undecodable as exc:
            return exc.response()
        decided.body = body
        route = decided.route
        served.offsite = searches_the_web(path, doc)
        if screened is not None:
            decided.prompt = screened.prompt  # the limits passed it in the worker
        elif isinstance(doc, dict):
            texts: list[str] = []
            refused = await request_limits.check_body(
                path, doc, self.config.limits, texts, len(body)
            )
            if refused is not None:
                return refused
            decided.prompt = texts
        if repeated is not None and repeated.refusal is not None:
            return error_response(path, 400, repeated.refusal)
        model = doc.get("model") if isinstance(doc, dict) else None
        if not model and path == SHOW_PATH and isinstance(doc, dict):
            model = doc.get("name")  # show still takes the older field, as Ollama does
        if not isinstance(model, str) or not model:
            return await self.relay.forward(request, served, body, None)
        # Kept in logs and usage events: no longer than a name Ollama accepts.
        decided.model = header_values.text(model, header_values.MAX_MODEL_NAME) or ""
        profile = profile_of(model, self.config.selector.default_profile)
        key = state_get(request, KEY_REQUEST)
        if served.offsite and key is not None and not key.admin:
            # Ollama's searches go out on the server's ollama.com account, which only an
            # admin key may use (`/api/experimental/*`), whatever model answers.
            return error_response(path, 403, WEB_SEARCH_FORBIDDEN)
        if profile is None:
            inference = route is not None and route.inference
            refused = self._named(path, key, model, served, inference)
            if refused is not None:
                return refused
            if path == SHOW_PATH and key is not None and key.models is not None:
                # Described as the key may read it: no name of a model off its list.
                models = key.models
                served.model = model
                return await self.relay.forward(
                    request, served, body, model, rewrite=lambda b: _shown_to(b, models)
                )
            if self.runner_caps.active and not fractional:
                refused = self._capped(route, path, key, doc, decided.model, served)
                if refused is not None:
                    return refused
                if runner_caps.CAPPED_HEADER in served.extra:
                    body = await go_json.write_off_loop(doc, len(body))
            if path in LOADING_PATHS and _unloads_alone(path, doc):
                self.fanout.unload_elsewhere(request, body, model)
            return await self._local_or_cloud(request, served, doc, body, sent, model, (model,))
        assert isinstance(doc, dict)
        return await self._auto(request, doc, body, sent, model, profile, key, fractional)

    async def _auto(
        self,
        request: web.Request,
        doc: dict[str, Any],
        body: bytes,
        sent: bytes,
        model: str,
        profile: str,
        key: KeyState | None,
        fractional: bool,
        again: bool = False,
        unreached: ModelUnreachable | None = None,
    ) -> web.StreamResponse:
        """`model` (`auto` or `auto:<profile>`, as the client wrote it) on a model-routed
        route, with `doc` as `model_routed` read it. A choice its backends turn out not
        to have (gone since their last list: `ModelGone`) is made once more (`again`),
        without it; so is one none of its backends could be reached for
        (`ModelUnreachable`: `unreached`), among the models other backends list, before
        the cloud fallback stands in for it: where no other model can take the request,
        the cloud answers in its place (`_unreached`), else the client gets its 503."""
        path = request.path
        decided, served = request[OUTCOME].decided, request[OUTCOME].served
        route = decided.route
        only = key.models if key else None  # the key's allow-list: auto chooses within it
        if path == SHOW_PATH:
            return _refused(path, doc, sent) or self.auto_routes.show(
                profile,
                only,
                model,
                request.headers.get(hdrs.USER_AGENT, ""),
            )
        # What the cloud may stand in for besides the model chosen.
        cloud_names = stand_in_names(profile, only)
        if loads(path, doc):
            # `ollama run auto` loads and `ollama stop auto` unloads: `auto` holds no model
            # of its own, so neither touches a backend (unloading whichever model an
            # empty prompt would be routed to would stop one that others are using).
            answered = _refused(path, doc, sent) or self._unknown_profile(path, profile, model)
            if answered is None:
                answered = await self._auto_load(path, model, doc, profile, only, cloud_names)
            if answered is not None:
                return answered
        if route is not None and route.embedding:
            # Embeddings use no profile, but one that does not exist is the same 404 as
            # on chat; a body Ollama cannot read is its 400 before either.
            refused = _refused(path, doc, sent) or self._unknown_profile(path, profile, model)
            if refused is not None:
                return refused
            chosen = self.config.selector.embedding_model
            if not chosen:
                return handler_error(
                    path,
                    400,
                    "auto needs selector.embedding_model in the configuration for embeddings",
                )
            if key is not None and not key.allows_model(chosen):
                # Not named: `auto` names no model outside the key's list.
                return error_response(path, 403, AUTO_EMBEDDING_DENIED)
            # As the model list spells it, as for a chat choice: the configured name
            # may lack its tag or differ in case.
            spelled = self.auto.registry.spelled(chosen)
            served.extra[MODEL_HEADER] = spelled
            served.extra[AUTOROUTE_HEADERS[2]] = "pinned"
        else:
            cloud = self.cloud
            if cloud is not None and cloud.goes_first(profile, path, cloud_names):
                # Its explicit opt-in; with the month's budget spent, it is served locally.
                if await cloud.has_budget(cloud_names):
                    return await self._to_cloud(request, doc, sent, cloud_names, cloud, profile)
            deciding = time.perf_counter()
            try:
                # What the decision reads of the body, off the loop for a large one.
                user, scope = user_key(request), conversation_scope(request)
                whose = conversation_owner(user, scope)
                reading = await reading_off_loop(path, doc, len(body), whose)
                among = only if unreached is None else self._reachable(only, unreached.tried)
                try:
                    choice = self.auto.decide(path, doc, profile, user, among, reading, scope)
                except NoBackend as none:
                    choice = await self.auto.decided_again(
                        none, path, doc, profile, user, among, reading, scope
                    )
            except AutoError as exc:
                if unreached is not None:
                    return await self._unreached(request, doc, sent, unreached, cloud_names)
                # No model for the request: a capability none of the profile's models
                # offers is Ollama's own refusal, which clients read.
                return (
                    _refused(path, doc, sent)
                    or self.auto_routes.unoffered(path, doc, model, profile, only)
                    or handler_error(path, exc.status, exc.answer(model))
                )
            except NoBackend:
                if unreached is not None:
                    return await self._unreached(request, doc, sent, unreached, cloud_names)
                if not stands_in(self.cloud, path, cloud_names):
                    raise
                served.unreached = True  # as `Server.handle` answers the NoBackend
                return await self._to_cloud(request, doc, sent, cloud_names, self.cloud, profile)
            finally:
                self.metrics.decision.observe(time.perf_counter() - deciding)
            decision = choice.decision
            chosen = decision.chosen
            # The client reads the name as the model list spells it (the registry folds it).
            spelled = self.auto.registry.spelled(chosen)
            decided.choice = choice
            decided.conversation = choice.conversation
            decided.features = choice.request_features
            score = decision.score
            served.extra.update(
                zip(
                    AUTOROUTE_HEADERS,
                    (spelled, profile, decision.reason, f"{score.utility:.4f}" if score else ""),
                    strict=True,
                )
            )
        if self.runner_caps.active and not fractional:
            refused = self._capped(route, path, key, doc, spelled, served)
            if refused is not None:
                return refused
        doc["model"] = spelled
        # What the cloud stands in for where the choice's backends fail: the choice,
        # the one it was made in place of (`unreached`), the profile.
        names = (chosen, *(() if unreached is None else (unreached.model,)), *cloud_names)
        routed: bytes | None = None
        if fractional:
            routed = await go_json.slow_off_loop(len(sent), go_json.as_written, sent, spelled)
        if routed is None:
            routed = await go_json.write_off_loop(doc, len(body))
        # The answer's model as the client sees it (`Served.model`): as the list spells it.
        # Only a choice `auto` made is made again: the embedding model is configured.
        missing = not again and not (route is not None and route.embedding)
        try:
            return await self._local_or_cloud(
                request, served, doc, routed, sent, spelled, names, missing
            )
        except ModelGone:
            doc["model"] = model
            return await self._auto(request, doc, body, sent, model, profile, key, fractional, True)
        except ModelUnreachable as exc:
            doc["model"] = model
            return await self._auto(
                request, doc, body, sent, model, profile, key, fractional, True, exc
            )

    async def _unreached(
        self,
        request: web.Request,
        doc: dict[str, Any],
        sent: bytes,
        unreached: ModelUnreachable,
        cloud_names: tuple[str, ...],
    ) -> web.StreamResponse:
        """The answer where `auto` finds no model to choose in place of one none of whose
        backends could be reached (`unreached`): the cloud's, where a provider stands in
        for that model or the profile (`cloud_names`), as it would have for the model
        chosen; else the 503 the relay gave. The request reached no backend, whichever
        answers: the cloud's refusal fails no model, as that 503 fails none."""
        names = (unreached.model, *cloud_names)
        if stands_in(self.cloud, request.path, names):
            request[OUTCOME].served.unreached = True
            return await self._to_cloud(request, doc, sent, names, self.cloud)
        return unreached.answer()

    def _reachable(self, only: frozenset[str] | None, tried: list[BackendState]) -> frozenset[str]:
        """The models `auto` may choose among for an API key's list `only` (None: any)
        that a backend other than the unreachable ones `tried` lists."""
        others = [s for s in self.backends.states if s not in tried]
        listed = frozenset().union(*(s.models or () for s in others))
        return listed if only is None else listed & only

    async def _auto_load(
        self,
        path: str,
        model: str,
        doc: dict[str, Any],
        profile: str,
        only: frozenset[str] | None,
        cloud_names: tuple[str, ...],
    ) -> web.Response | None:
        """`AutoRoutes.loading` of `auto:<profile>`; with no usable backend, answered as
        the chat after it would be (`AutoRoutes.loading_again`), the cloud standing in
        for `cloud_names`."""
        try:
            return self.auto_routes.loading(path, model, doc, profile, only)
        except NoBackend as none:
            return await self.auto_routes.loading_again(
                none, path, model, doc, profile, only, cloud_names
            )

    async def _to_cloud(
        self,
        request: web.Request,
        doc: dict[str, Any],
        sent: bytes,
        names: tuple[str, ...],
        cloud: CloudFallback,
        profile: str | None = None,
    ) -> web.StreamResponse:
        """The answer of the provider that stands in for `names`, the one way to the
        cloud: first Ollama's 400 for a body its handler refuses (`_refused` of `doc`,
        `sent` as the client sent it), as bad input is that 400 whatever the fleet's
        state, and no Ollama read this one. Once a provider is asked (`refusal_of`),
        the answer's headers and its usage event's decision say the cloud answers, as
        explain does, the model's name the cloud's: for `auto:<profile>` answered in
        the profile's name, no model chosen (`policy.unchosen_record`); for `auto`'s
        choice answered in its place (its backends failed or refused, or none usable
        lists it), reason "cloud" and no score, the chosen model's. A refusal (the
        month's budget spent, no key) says neither: no provider answers, and explain
        answers the refusal as the route does, with no reason."""
        refused = _refused(request.path, doc, sent)
        if refused is not None:
            return refused
        standing = await cloud.chosen(request.path, doc, names)
        if refusal_of(standing) is None:
            outcome = request[OUTCOME]
            extra, decided = outcome.served.extra, outcome.decided
            if profile is not None:
                extra[AUTOROUTE_HEADERS[1]] = profile
                extra[AUTOROUTE_HEADERS[2]] = CLOUD_REASON
                decided.decision = unchosen_record(CLOUD_REASON, profile)
            elif decided.choice is not None:
                extra[AUTOROUTE_HEADERS[2]] = CLOUD_REASON
                extra.pop(AUTOROUTE_HEADERS[3], None)
                decided.answered_instead(CLOUD_REASON)
        return await cloud.serve(request, standing)

    async def transcription(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/audio/transcriptions`: routed by the model Ollama's multipart form
        names, read as Go reads it (`multipart_form`); the form goes on as the proxy
        read it (`form_encoding`), never the client's bytes.
        What Ollama refuses before it knows the model (a form that does not parse, no
        model) is refused here with its 400; the rest (no file, an empty one, a model
        that is not there) is the backend's to answer, but where the proxy answers for
        `auto` itself: no file or an empty one, which Ollama refuses before any handler
        looks at the model, comes first there."""
        outcome = request[OUTCOME]
        decided, served = outcome.decided, outcome.served
        path = request.path
        body = await self._read(request)
        decided.prompt = []  # audio: no prompt text for the usage event
        query = request.raw_path.partition("?")[2]
        content_type = request.headers.get(hdrs.CONTENT_TYPE)
        try:
            read = await multipart_form.transcription_off_loop(content_type, query, body)
        except multipart_form.Refused as exc:
            return error_response(path, 400, str(exc))
        model, no_audio = read.model, read.no_audio
        decided.model = header_values.text(model, header_values.MAX_MODEL_NAME) or ""
        profile = profile_of(model, self.config.selector.default_profile)
        if profile is not None:
            if no_audio is not None:
                return error_response(path, 400, no_audio)
            # As for embeddings without `selector.embedding_model`: a 400 that says what
            # to do, never `auto` sent on to a backend as a model name. A profile that
            # does not exist is the same 404 as on chat.
            refused = self._unknown_profile(path, profile, model)
            if refused is not None:
                return refused
            return handler_error(path, 400, AUTO_CANNOT_TRANSCRIBE)
        refused = self._named(path, state_get(request, KEY_REQUEST), model, served, True)
        if refused is not None:
            return refused
        served.model = model
        # A join and a search, in C: with the C readings, off the loop when large.
        form = await go_json.off_loop(len(body), form_encoding.written, read.form)
        request[form_encoding.WRITTEN] = form
        return await self.relay.forward(request, served, form.body, model)

    # `_local_or_cloud` and `_generate` only choose where a request goes: they return
    # that coroutine unawaited, so the handler awaits the relay with no frames between;
    # but for one the cloud would take for want of a usable backend, which awaits a
    # check of the backends that may be back first (`_back_or_cloud`).
    def _local_or_cloud(
        self,
        request: web.Request,
        served: Served,
        doc: Any,
        body: bytes,
        sent: bytes,
        model: str,
        names: tuple[str, ...],
        missing: bool = False,
    ) -> Awaitable[web.StreamResponse]:
        """To a local backend (through the response cache); to the cloud fallback, where
        a provider stands in for `names`, only when none can serve: no usable backend
        lists the model, or every one that does failed or refused. `missing`: see
        `Relay.forward`."""
        served.model = model  # until the cloud stands in with its own
        cloud = self.cloud
        if (
            cloud is None
            or not isinstance(doc, dict)
            or not cloud.takes(request.path, names)
            # A name Ollama cannot parse names no model (`_named`): the backend answers
            # it Ollama's 400, for every key, where a provider standing in for "*"
            # would answer any key whose list it is not on.
            or not names_a_model(model)
        ):
            return self._generate(request, served, doc, body, model, missing=missing)

        def fallback() -> Awaitable[web.StreamResponse]:
            """The cloud's answer where no local backend gives one."""
            return self._to_cloud(request, doc, sent, names, cloud)

        if not lists_locally(self.backends, model):
            return self._back_or_cloud(request, served, doc, body, model, fallback)
        return self._generate(request, served, doc, body, model, fallback, missing)

    async def _back_or_cloud(
        self,
        request: web.Request,
        served: Served,
        doc: dict[str, Any],
        body: bytes,
        model: str,
        fallback: Fallback,
    ) -> web.StreamResponse:
        """No usable backend lists `model`: to the cloud (`fallback`), unless a backend
        that does and may be back on its port is usable once checked again
        (`lists_locally_now`)."""
        if await lists_locally_now(self.backends, model):
            return await self._generate(request, served, doc, body, model, fallback)
        served.unreached = True  # as the relay's NoBackend says (`Relay.forward`)
        return await fallback()

    def _generate(
        self,
        request: web.Request,
        served: Served,
        doc: Any,
        body: bytes,
        model: str,
        fallback: Fallback | None = None,
        missing: bool = False,
    ) -> Awaitable[web.StreamResponse]:
        """To `model`'s backend, through the response cache when the request is
        cacheable (`proxy.cache.key`): a hit is replayed, a miss recorded and kept."""
        cache = self.cache
        forward = self.relay.forward
        if cache is None or not cacheable(request.path, doc, request.headers.get("Cache-Control")):
            return forward(request, served, body, model, fallback=fallback, missing=missing)
        weights = self.backends.weights_of(model)
        if not weights:
            # Weights not known by digest (a model just pulled, created or copied, until
            # the next list; one no backend lists): an answer kept under the name alone
            # would be replayed after other weights take the name.
            return forward(request, served, body, model, fallback=fallback, missing=missing)
        return self._cached(cache, request, served, doc, body, model, weights, fallback, missing)

    async def _cached(
        self,
        cache: ResponseCache,
        request: web.Request,
        served: Served,
        doc: Any,
        body: bytes,
        model: str,
        weights: str,
        fallback: Fallback | None,
        missing: bool,
    ) -> web.StreamResponse:
        # Keyed by the name the backend is sent (`auto`'s choice as its list spells it,
        # a named model as the client wrote it), not `model`, for `auto` the registry's
        # name in lower case: the answer names the model as it was sent, and so must
        # its replay.
        sent = doc.get("model")
        named = sent if isinstance(sent, str) else model
        # The canonical body serialised and hashed: as its reading, off the loop when
        # the body is large.
        key = await go_json.off_loop(
            len(body), cache_key, request.path, doc, named, weights, scope(request)
        )
        entry = await cache.lookup(key)
        if entry is not None:
            served.cache = "hit"
            return await replay(
                request, served, entry, self.config.timeouts.client_write_idle_seconds
            )
        served.cache = served.extra[CACHE_HEADER] = "miss"
        capture = cache.capture(key)
        response = await self.relay.forward(
            request, served, body, model, fallback=fallback, capture=capture, missing=missing
        )
        cache.finished(capture, served)
        return response

    def _named(
        self, path: str, key: KeyState | None, model: str, served: Served, inference: bool
    ) -> web.Response | None:
        """A model the client named: refused when its key may not use it (hidden on
        `/api/show`, `_model_hidden`); else, on an inference route, the answer's header
        names it as the client did, as the answer does. A name Ollama cannot parse
        (`names_a_model`) names no model on any key's list or any backend: it goes on for
        the backend's own 400, the same for every key, as Ollama checks a name before
        it looks for the model."""
        if key is not None and _refuses(key, model):
            if path == SHOW_PATH:
                return self._model_hidden(path, model, key)
            return self._model_denied(path, model)
        named = header_values.model_name(model)
        if inference and named:
            served.extra[MODEL_HEADER] = named
        return None

    def _capped(
        self,
        route: Route | None,
        path: str,
        key: KeyState | None,
        doc: Any,
        model: str,
        served: Served,
    ) -> web.Response | None:
        """`runners`' caps on a body its runner reads (`runner_caps`), but an admin
        key's: brought within them (`served.extra` then names what changed), or
        refused. A body Go refuses to read as a whole (`fraction_in_an_int`) reaches no
        runner: not to be passed here."""
        if route is None or not route.runner or not isinstance(doc, dict):
            return None
        if key is not None and key.admin:
            return None
        try:
            changed = self.runner_caps.cap(path, doc)
        except runner_caps.Refused as exc:
            return error_response(path, 403, str(exc))
        if changed:
            served.extra[runner_caps.CAPPED_HEADER] = ", ".join(changed)
            runner_caps.note(path, key.id if key else "", model, changed)
        return None

    def _unknown_profile(self, path: str, profile: str, model: str) -> web.Response | None:
        """The 404 for an `auto:<profile>` that is not configured (`model`, as the
        request spelled it), as chat answers it."""
        try:
            self.auto.profile(profile)
        except AutoError as exc:
            return handler_error(path, exc.status, exc.answer(model))
        return None

    @staticmethod
    def _model_denied(path: str, model: str) -> web.Response:
        return error_response(path, 403, f"model '{model}' is not allowed for this API key")

    def _model_hidden(self, path: str, model: str, key: KeyState) -> web.Response:
        """A model outside the key's list on a route that describes models (`/api/show`,
        `/v1/models/<id>`): answered as Ollama answers for a model it does not have,
        404 "model 'x' not found", because the lists leave it out and a description
        must agree with the list (editors probe each name they hold). Running one is a
        403 instead (`_model_denied`): the caller asked for it by name and "not allowed
        for this API key" says what to fix. Neither tells whether the model exists:
        both come before routing, for any name outside the list, and the name is
        read against the models the key sees, as a machine holding only those reads
        it."""
        return model_not_found(path, model, self.backends.held(key.models))

    def _auto_entries(self, path: str, only: frozenset[str] | None = None) -> list[dict[str, Any]]:
        if not self.config.selector.list_in_tags:
            return []
        if path == "/api/tags":
            return self.auto_routes.tag_entries(only)
        if path == "/v1/models":
            return self.auto_routes.model_entries()
        return []

    async def merged(self, request: web.Request) -> web.StreamResponse:
        """A model list: from every backend (with `auto`'s entries, and only the models
        an API key may use) when there is more than the one backend's list to show."""
        route = find(request.path)
        assert route is not None and route.merge
        key = request.get(KEY_REQUEST)
        only = key.models if key is not None else None
        extra = self._auto_entries(request.path, only)
        if extra or only is not None or len(self.backends.states) > 1:
            default = self.config.selector.default_profile
            return await self.fanout.merged(
                request,
                route.merge,
                extra,
                only,
                claimed=lambda name: profile_of(name, default) is not None,
            )
        return await self.passthrough(request)

    async def v1_model(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/models/<id>`: `auto`'s own entries, else the backend that has it."""
        path = request.path
        name = path[len(V1_MODEL_PREFIX) :]
        if not name or "/" in name:
            # No model id: Ollama's `:model` is one non-empty segment, and its router
            # answers such a path (a redirect, a 404) before any handler reads a name.
            return await self.passthrough(request)
        # `auto`'s names read as chat and show read them (any case, `auto:latest`, a
        # `:local` suffix), the id as asked, as Ollama's OpenAI layer names any model.
        profile = profile_of(name, self.config.selector.default_profile)
        if profile is not None:
            default = self.config.selector.default_profile
            for entry in self._auto_entries("/v1/models"):
                if profile_of(entry["id"], default) == profile:
                    body = encoded({**entry, "id": name})
                    return web.Response(body=body, headers={"Content-Type": JSON_V1})
        key = request.get(KEY_REQUEST)
        if key is not None and _refuses(key, name):
            return self._model_hidden(path, name, key)
        return await self.relay.forward(request, request[OUTCOME].served, b"", name)

    async def blobs(self, request: web.Request) -> web.StreamResponse:
        """Blobs, and the `create` that uses them, go to one backend: the first usable."""
        body = None if request.method == "POST" else b""
        served = request[OUTCOME].served
        first = await self.backends.first_usable()
        return await self.relay.forward(request, served, body, None, only=first)

    async def admin(self, request: web.Request) -> web.StreamResponse:
        """`pull`, `push`, `create`, `copy`, `delete`: see `routing.admin_target`. What
        the request changes in a backend's model list is known before its client reads
        that it succeeded (`proxy.model_changes`)."""
        body = await self._read(request)
        doc = await document_of(body, self.config.limits.max_json_values)
        model = model_changes.named(doc, "source", "model", "name") or None
        change = model_changes.change_of(request.method, request.path, doc)
        creating = request.path == CREATE_PATH
        # Asked with `stream: false`, a pull, push or create is answered once its work
        # is done (Ollama's waitForStream): a download, an upload, a quantization, of
        # any length, with nothing sent before.
        waits = (
            request.path in _WHOLE_AFTER_WORK
            and isinstance(doc, dict)
            and doc.get("stream") is False
        )
        if creating:
            primary = await self._create_target(doc)
        else:
            # A pull fetches its model: any backend takes it, one that lists it first.
            primary = await self.backends.pick(model, fetches=request.path == PULL_PATH)
        replicas: list[asyncio.Task[None]] = []
        if self.config.routing.admin_target == "all" and not creating:
            replicas = self.fanout.replicate(request, body, primary, change, waits)
        watch = None
        if change is not None:
            watch = model_changes.ChangeWatch(self.backends, primary, change)
        served = request[OUTCOME].served
        try:
            return await self.relay.forward(
                request, served, body, model, only=primary, watch=watch, waits=waits
            )
        except asyncio.CancelledError:
            # The client left: Ollama stops a pull or push whose client leaves, and the
            # replicas are that client's request too (a download of many gigabytes on
            # every other backend that no one can stop otherwise).
            for replica in replicas:
                replica.cancel()
            raise

    async def _create_target(self, doc: Any) -> BackendState:
        """A create built on a model (`model_changes.create_base`) goes to a backend
        that has it, else (Ollama would pull it) to the first usable one, which also
        has the blobs a create from files names (`blobs`)."""
        base = model_changes.create_base(doc)
        if base is not None and self.backends.lists(base):
            return self.backends.choose(base)
        return await self.backends.first_usable()

    async def health(self, request: web.Request) -> web.StreamResponse:
        """The proxy's own liveness (for container health checks) and its view of each
        backend. 200 while the proxy runs, whatever the backends' state; `status` says
        "ok" (every backend usable), "degraded" (some) or "down" (none; see `ready`).

        Public: with API keys on, a caller who may not see the fleet (`sees_fleet`)
        gets each backend's circuit under its public name (`Backend.public_label`),
        without its URL, its last error (which names hosts and ports), the models it
        has or has loaded, and the cloud's providers without their base URLs and the
        models they map; and nothing that counts requests, every key's: neither a
        backend's requests in flight, nor the cache's hits, misses and entries, nor
        the cloud's tokens this month."""
        now = asyncio.get_running_loop().time()
        usable = len(self.backends.usable())
        status = "ok" if usable == len(self.backends.states) else "degraded" if usable else "down"
        fleet = sees_fleet(request, self.config.auth.enabled)
        backends = []
        for s in self.backends.states:
            backend: dict[str, object] = {"name": s.label if fleet else s.public_label}
            if fleet:
                backend["url"] = s.config.shown_url
            backend["circuit"] = s.breaker.state(now)
            if fleet:
                backend["in_flight"] = s.in_flight
                backend["models"] = sorted(s.models) if s.models is not None else None
                backend["loaded"] = sorted(s.loaded)
                backend["error"] = s.last_error or None
            backends.append(backend)
        doc: dict[str, object] = {"status": status, "backends": backends}
        doc.update((name, extra(fleet)) for name, extra in self.health_extras.items())
        if self.cloud is not None:
            doc["cloud"] = self.cloud.status(detailed=fleet)
        return web.Response(body=orjson.dumps(doc), headers={"Content-Type": JSON})

    async def ready(self, request: web.Request) -> web.StreamResponse:
        """Readiness, for orchestrators routing traffic: 200 while at least one backend
        is usable, else 503 naming each backend's reason. Liveness is `health`. Public:
        as `health`, a caller who may not see the fleet gets public names and no error
        text. With none usable, the backends that may be back on their port are checked
        again at once (`BackendPool.recheck`, one check at a time per backend, shared):
        a probe after a restart sees the backend before its next periodic check."""
        fleet = sees_fleet(request, self.config.auth.enabled)
        usable = await self.backends.usable_now()
        if not usable:
            reason = self.backends.unavailable_reason(detailed=fleet)
            return error_response(request.path, 503, reason)
        names = [s.label if fleet else s.public_label for s in usable]
        body = orjson.dumps({"status": "ready", "usable": names})
        return web.Response(body=body, headers={"Content-Type": JSON})
