"""What `auto` looks like on the wire: its entries in the model lists, its `/api/show`,
and the proxy's own endpoints `explain`, `status` and `reload` under /api/autoroute/."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from proxy import (
    anthropic_messages,
    body_screen,
    experiments,
    go_json,
    go_merge,
    go_readings,
    go_requests,
    go_types,
    openai_chat,
    openai_responses,
)
from proxy import limits as request_limits
from proxy.auth import KEY_REQUEST, sees_fleet
from proxy.auto import (
    AUTO,
    AutoError,
    AutoRouter,
    conversation_owner,
    conversation_scope,
    profile_of,
    reading_off_loop,
    required_capabilities,
    user_key,
)
from proxy.backends import NoBackend, normalize_model
from proxy.cache.key import generates
from proxy.cloud import (
    CLOUD_REASON,
    CloudFallback,
    Standing,
    refusal_of,
    stand_in_names,
    stands_in,
)
from proxy.config_services import Usage
from proxy.config_serving import Limits
from proxy.errors import ANTHROPIC_PATH, error_response, handler_error
from proxy.keep_alive import unloads
from proxy.learning import Learner
from proxy.multipart_form import go_quote
from proxy.protocol import (
    AUTOROUTE,
    CLOUD_BACKEND_PREFIX,
    COPILOT_CHAT_USER_AGENT_PREFIX,
    JSON,
    go_dumps,
    go_now,
)
from proxy.registry import ModelInfo
from proxy.routes import RANKED_PATHS, find
from selector_model import request_body
from selector_model.features import AREAS
from selector_model.policy import beyond_max_loss
from selector_model.profiling import store as profile_store
from selector_model.profiling.suite import CURRENT_VERSION as SUITE_VERSION

_DETAILS = {
    "parent_model": "",
    "format": AUTOROUTE,
    "family": AUTOROUTE,
    "families": [AUTOROUTE],
    "parameter_size": "",
    "quantization_level": "",
}


# What the answer's X-Autoroute-* headers (and explain's fields of the same names) mean;
# explain returns it so that the meaning is where the numbers are.
LEGEND = {
    "X-Autoroute-Model": (
        "the model auto chose, or the cloud model that answers in its place (explain: "
        "model); not on the proxy's own error answer, which no model gave"
    ),
    "X-Autoroute-Profile": "the profile used: auto is auto:<selector.default_profile>",
    "X-Autoroute-Reason": (
        "why this model (explain: reason), among the candidates whose score less "
        "what it may be off (ranking[].spread) is at most the profile's max_loss "
        "below the best-rated one (the others: "
        "ranking[].beyond_max_loss): ml = the best score; pinned = the profile's "
        "default (or the best model the selector knows, or, when it knows none, the "
        "best-scoring of the largest's size) kept, since no other leads it by "
        "selector.min_gain (and, against a model "
        "the selector never saw, by what the two scores may be off: ranking[].spread); "
        "cheaper = the quickest model whose score is within the profile's tolerance of "
        "the best's; learned = the best once outcomes of earlier requests of this "
        "kind are counted; explore = another candidate tried, to learn about it; "
        "experiment = an A/B experiment's variant; context = the model that wrote the "
        "/api/generate context the request continues; fallback = no selector "
        "artifact, a size-based heuristic chose; cloud = a cloud provider answers "
        "(X-Autoroute-Backend: cloud:<provider>, explain: backend, and its budget: "
        "cloud): with no model chosen, the one mapped to auto:<profile>, as no backend "
        "is usable, or the profile is in cloud.prefer_for_profiles; or, on the route "
        "alone, the one mapped to the model chosen (or to auto:<profile>) in its "
        "place, as its backends failed or refused; "
        "explain alone: load, unload = a "
        "generate without a prompt or a chat without messages (unload: keep_alive 0), "
        "which the proxy answers itself (explain: answer), choosing no model"
    ),
    "X-Autoroute-Score": (
        "the chosen model's utility (explain: ranking[].utility) = P(success) (once "
        "outcomes are counted, the blend plus its optimism: selector.learning) - "
        "cost_weight * expected seconds (with the load time of a model not loaded), "
        "minus warm.evict_penalty when loading it would evict a model in use, for the "
        "profile's cost_weight; higher is better, comparable only within one profile; "
        "not sent where a cloud provider answers"
    ),
}


# Why a model a backend lists is out of its list (`BackendPool.lost`), in explain.
LOST = "listed, but answered it has no such model (out until a pull lists it anew)"


# The capability clients switch on for every request to a model that lists it.
_DEFAULTS_ON = "thinking"

# What Ollama's scheduleRunner checks a model for (Model.CheckCapabilities) of what a
# request asks (`required_capabilities`), and the prefix of the name it puts in its
# refusal (the model's full name: `auto` is registry.ollama.ai/library/auto:latest).
_SCHEDULER_CHECKS = ("tools", "insert")
_REGISTRY = "registry.ollama.ai/library/"

# The routes whose request loads its model, or unloads it, where it asks for no text.
LOADING_PATHS = ("/api/generate", "/api/chat")


def loads(path: str, doc: dict[str, Any]) -> bool:
    """Whether a request of `auto` on `path` is a load or an unload (a generate without
    a prompt, a chat without messages), which the proxy answers itself (`loading`)."""
    return path in LOADING_PATHS and not generates(path, doc)


@dataclass(frozen=True)
class Offer:
    names: list[str]
    capabilities: list[str]
    context_length: int


def _template(capabilities: list[str]) -> str:
    """A template that reads the fields a model's reads for each of these capabilities:
    Ollama decides tools and insert from the fields a template reads (server/images.go,
    goTemplateCapabilities), and clients decide from the template too (Continue
    completes in the middle only for a model whose template reads `.Suffix`, else it
    sends a prompt of its own templating in raw mode). The chosen model's template is
    the one Ollama applies."""
    tools = "{{ if .Tools }}{{ .Tools }}{{ end }}" if "tools" in capabilities else ""
    if "insert" in capabilities:
        return tools + "{{ if .Suffix }}{{ .Prompt }}{{ .Suffix }}{{ else }}{{ .Prompt }}{{ end }}"
    return tools + "{{ .Prompt }}"


def _json(doc: Any, status: int = 200) -> web.Response:
    # `show` answers /api/show for auto as Ollama would: with Go's escapes.
    return web.Response(status=status, body=go_dumps(doc), headers={"Content-Type": JSON})


OPENAI_CHAT_PATH = "/v1/chat/completions"


_INTS = ("int", "[]int")


def _int_fields(*structs: dict[str, str]) -> tuple[str, ...]:
    """The top-level fields of request structs that Go reads as ints (or []int)."""
    return tuple(
        sorted({name for fields in structs for name, kind in fields.items() if kind in _INTS})
    )


# Each route's own: a number that is no integer there makes Go refuse the whole body,
# while in a field its request lacks Go skips it, and the request runs (its runner
# caps are due). A route not listed: any request's.
_ROUTE_INT_FIELDS = {
    "/api/generate": _int_fields(go_requests.GENERATE_FIELDS),
    "/api/chat": _int_fields(go_requests.CHAT_FIELDS),
    "/api/embed": _int_fields(go_requests.EMBED_FIELDS),
    "/api/embeddings": _int_fields(go_requests.EMBEDDINGS_FIELDS),
    OPENAI_CHAT_PATH: _int_fields(openai_chat.CHAT_FIELDS),
    "/v1/responses": _int_fields(openai_responses.RESPONSES_FIELDS),
    ANTHROPIC_PATH: _int_fields(anthropic_messages.MESSAGES_FIELDS),
}
_INT_FIELDS = _int_fields(
    go_requests.GENERATE_FIELDS,
    go_requests.CHAT_FIELDS,
    go_requests.EMBED_FIELDS,
    openai_chat.CHAT_FIELDS,
)


def fraction_in_an_int(path: str, doc: Any) -> bool:
    """Whether `doc` holds a number that is no integer in a top-level int field of the
    request `path` takes, which Go refuses naming it as the client wrote it: the body
    forwarded then carries it so (`go_json.as_written`). A few lookups, no pass over
    the body."""
    if not isinstance(doc, dict):
        return False
    for name in _ROUTE_INT_FIELDS.get(path, _INT_FIELDS):
        value = doc.get(name)
        if type(value) is float or (type(value) is list and float in map(type, value)):
            return True
    return False


def _explained_path(query: str | None, doc: Any) -> str:
    """The route explain ranks for: `?path=`, else the chat or generate route as the
    body reads."""
    messages = isinstance(doc, dict) and "messages" in doc
    return str(query or ("/api/chat" if messages else "/api/generate"))


def _explained_model(doc: dict[str, Any]) -> str:
    model = doc.get("model")
    return model if isinstance(model, str) else AUTO


def _refused_first(query: str | None, default: str, path: str, doc: dict[str, Any]) -> bool:
    """Whether explain refuses `doc` before it applies the limits, in words of its own
    (no `auto` model, a route auto ranks nothing on): `body_screen`'s `Declines`."""
    explained = profile_of(_explained_model(doc), default)
    return explained is None or _explained_path(query, doc) not in RANKED_PATHS


@dataclass(frozen=True, slots=True)
class Refused:
    """A body Ollama answers with a 400 before any handler looks at its model."""

    message: str
    # The handler behind Ollama's OpenAI layer refused the body the layer converted:
    # the layer's writer writes it (`errors.handler_error`), not the layer itself.
    by_handler: bool = False


# The routes of Ollama's OpenAI and Anthropic layers: how the layer converts a body
# (BodyError: its 400), what the handler behind it refuses of the converted body
# before it looks at the model, and the struct the layer binds the body to
# (`go_requests.check_fields`), which `convert` checks first.
_Layer = tuple[
    Callable[[Any], dict[str, Any]],
    Callable[[dict[str, Any]], str | None],
    tuple[str, dict[str, str]],
]
_LAYERS: dict[str, _Layer] = {
    OPENAI_CHAT_PATH: (
        openai_chat.converted,
        go_requests.top_logprobs_refusal,
        openai_chat.CHAT_REQUEST,
    ),
    "/v1/completions": (
        openai_chat.completion_converted,
        go_requests.top_logprobs_refusal,
        openai_chat.COMPLETION_REQUEST,
    ),
    "/v1/embeddings": (
        openai_chat.embedding_converted,
        go_requests.embed_input_refusal,
        openai_chat.EMBEDDING_REQUEST,
    ),
    "/v1/responses": (
        openai_responses.converted,
        go_requests.top_logprobs_refusal,
        openai_responses.RESPONSES_REQUEST,
    ),
    ANTHROPIC_PATH: (
        anthropic_messages.converted,
        go_requests.top_logprobs_refusal,
        anthropic_messages.MESSAGES_REQUEST,
    ),
}


def refusal(path: str, doc: Any, body: bytes) -> Refused | None:
    """What Ollama answers with a 400 for a body (`body`; `doc`, as `go_json.read` reads
    it) on `path` before it looks at the model: what the native handler refuses as it
    decodes it (`go_requests.refusal`); on the OpenAI routes, what the layer refuses as it
    converts it (`openai_chat`), then what the handler refuses of what it converted.
    None for a body it goes on with. Where the proxy answers for `auto` in a backend's
    place, this comes first, as from Ollama; a body routed to a backend gets it from
    there."""
    layer = _LAYERS.get(path)
    if layer is None:
        message = go_types.checked(doc, body, lambda read: go_requests.refusal(path, read))
        return None if message is None else Refused(message)
    convert, then, _ = layer

    def check(read: Any) -> Refused | None:
        try:
            converted = convert(read)
        except go_types.LiteralLost:
            raise
        except go_types.BodyError as exc:
            return Refused(str(exc))
        message = then(converted)
        return None if message is None else Refused(message, by_handler=True)

    return go_types.checked(doc, body, check)


class Repeated(NamedTuple):
    """A body that gives a key twice as Go decodes it into its route's request: Go's
    error (`refusal`, Ollama's 400), or the document Go ends with (`doc`) and that
    document written (`forwarded`), which the proxy checks, decides on and forwards in
    place of its reading of the body (the last value of each key alone); `written`,
    the document with its numbers as the client wrote them, stands for the body where
    it is read again for them (`go_json.as_written`, `go_types.checked`)."""

    refusal: str | None
    doc: dict[str, Any] | None = None
    forwarded: bytes = b""
    written: bytes = b""


def repeated_key_reading(path: str, body: bytes) -> Repeated | None:
    """How Go decodes a body on `path` that gives a key twice into the route's request:
    an earlier value's error too (`go_requests.first_error`), else what its merge ends
    with (`go_merge.go_decoded`). None for a body whose objects repeat no key, a path
    without a request struct here, or a document too deep to write."""
    layer = _LAYERS.get(path)
    request = layer[2] if layer is not None else go_requests.request_struct(path)
    if request is None:
        return None
    read = go_readings.read_repeated(body)
    message = go_requests.first_error(read, *request)
    if message is not None:
        return Repeated(message)
    merged = go_merge.go_decoded(read, request[0])
    written = None if merged is None else go_readings.written_as_read(merged)
    if written is None:
        return None
    # Read back as the proxy reads any body: the document it checks is the one the
    # backend reads from what is forwarded, its numbers as any reading holds them.
    doc, forwarded = go_json.read(written)
    return Repeated(None, doc, forwarded, written)


def merged_reading(path: str, body: bytes) -> tuple[dict[str, Any], bytes] | None:
    """What the inference routes check and forward of a body that gives a key twice
    (`repeated_key_reading`'s document and bytes), where Go's merge gives one:
    `body_screen`'s `Rereads`."""
    repeated = repeated_key_reading(path, body)
    if repeated is None or repeated.doc is None:
        return None
    return repeated.doc, repeated.forwarded


async def repeated_keys(path: str, body: bytes, forwarded: bytes) -> Repeated | None:
    """`repeated_key_reading` of `body`, which `go_json.read` forwards as `forwarded`,
    where that left a value out (`go_json.left_out`: what every body pays); in reader
    threads when the body is large."""
    size = len(body)
    if not await go_json.off_loop(size, go_json.left_out, body, forwarded):
        return None
    return await go_json.slow_off_loop(size, repeated_key_reading, path, body)


class AutoRoutes:
    def __init__(
        self,
        auto: AutoRouter,
        usage: Usage,
        body_idle_seconds: float = 0.0,
        learner: Learner | None = None,
        limits: Limits | None = None,
        cloud: CloudFallback | None = None,
    ) -> None:
        self.auto = auto
        # The cloud fallback, where configured: explain says where it stands in for
        # `auto`, as the route sends the request there.
        self.cloud = cloud
        self.usage = usage
        self.body_idle_seconds = body_idle_seconds
        # The inference routes' bounds on a body (`limits`), which explain applies too.
        self.limits = limits or Limits()
        self.learner = learner
        self.profiles = profile_store.StoreCache(auto.config.profiles_path)

    def names(self) -> list[str]:
        return [AUTO, *(f"{AUTO}:{p}" for p in self.auto.config.profiles)]

    def _stamp(self) -> float:
        artifact = self.auto.scorer.artifact
        return artifact.loaded_at if artifact else time.time()

    def tag_entries(self, only: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """`auto` and each profile, shaped as /api/tags entries, so editors list them,
        with what Ollama lists from 0.30 on: the capabilities and the context length
        (as `show` gives them, for an API key's allow-list `only`)."""
        artifact = self.auto.scorer.artifact
        modified = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._stamp()))
        digest = artifact.sha256 if artifact else "0" * 64
        default = self.auto.config.default_profile
        offers = {p: self._offer(p, only) for p in self.auto.config.profiles}
        entries = []
        for name in self.names():
            offer = offers[profile_of(name, default) or default]
            entries.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": modified,
                    "size": 0,
                    "digest": digest,
                    "details": {**_DETAILS, "context_length": offer.context_length},
                    "capabilities": offer.capabilities,
                }
            )
        return entries

    def model_entries(self) -> list[dict[str, Any]]:
        """The same, shaped as /v1/models entries."""
        created = int(self._stamp())
        return [
            {"id": name, "object": "model", "created": created, "owned_by": AUTOROUTE}
            for name in self.names()
        ]

    def _offer(self, profile: str, only: frozenset[str] | None) -> Offer:
        """What `auto:<profile>` can do: capabilities at least one model it may choose
        offers (`AutoRouter.choosable`), or one a backend that is down lists
        (`AutoRouter.awaited`), and the largest context among those it may choose now
        (editors size their prompts from it). `only`: the API key's allow-list, the
        candidates `auto` may choose for that key.

        What a request to `auto` gets decides both. A request that asks for what only a
        model of a backend that is down offers waits for it (`AutoRouter.down_with`: the
        503 that naming that model gets, which clients retry), not Ollama's 400 "does
        not support", so that capability stays listed while the backend is down: an
        editor that reads tools or vision off this list would stop sending them for the
        outage, where such a request is not refused but waits. A prompt longer than
        every reachable model's context does not wait for the model that is down: the
        longest reachable one serves it, cut to fit, so only their contexts count.

        Not "thinking": clients turn thinking on for every request to a model that
        lists it (`ollama run` sends `think: true`, `ollama launch` configures its
        integrations to reason), and `auto` then chooses among thinking models alone. A
        thinking model `auto` chooses thinks by default, and a request that asks for
        thinking still gets a model that can."""
        candidates = self.auto.choosable(profile, only)
        listing = [*candidates, *self.auto.awaited(profile, only)]
        offered = {"completion", *(c for m in listing for c in m.capabilities)}
        return Offer(
            names=[m.name for m in candidates],
            capabilities=sorted(offered - {_DEFAULTS_ON}),
            context_length=max((m.context_length for m in candidates), default=2048),
        )

    def show(
        self,
        profile: str,
        only: frozenset[str] | None = None,
        requested: str = "",
        user_agent: str = "",
    ) -> web.Response:
        """`/api/show` for `auto`: what it offers (`_offer`). `requested`: the name the
        body asked for, which Ollama gives Copilot Chat as `general.basename`."""
        try:
            self.auto.profile(profile)
        except AutoError as exc:
            return error_response("/api/show", exc.status, exc.answer(requested))
        offer = self._offer(profile, only)
        names = ", ".join(offer.names) or "none yet"
        info: dict[str, Any] = {
            "general.architecture": "autoroute",
            "autoroute.context_length": offer.context_length,
        }
        if user_agent.startswith(COPILOT_CHAT_USER_AGENT_PREFIX):
            info["general.basename"] = requested
        return _json(
            {
                "modelfile": f"# auto:{profile}: ollama-autoroute picks one of: {names}\n",
                "template": _template(offer.capabilities),
                "details": _DETAILS,
                # A Go map: its keys in order, as encoding/json writes them.
                "model_info": dict(sorted(info.items())),
                "capabilities": offer.capabilities,
                "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._stamp())),
            }
        )

    def unoffered(
        self, path: str, doc: dict[str, Any], model: str, profile: str, only: frozenset[str] | None
    ) -> web.Response | None:
        """Ollama's 400 for what a request asks of a model that lacks it, where no model
        `auto:<profile>` may choose for the key's allow-list `only` offers it (nor does
        its `/api/show`), in Ollama's order: thinking, which GenerateHandler and
        ChatHandler refuse in their own words before they schedule a runner (so a load
        gets it too): `"<model>" does not support thinking`, the name as the client
        wrote it; then tools (a chat's) or insert (a generate's), which scheduleRunner
        refuses (Model.CheckCapabilities): `<the model's full name> does not support
        tools`. Clients read these texts: `ollama run` goes on after the thinking one and
        ends on any other error. None where the request asks for nothing the profile
        lacks, or the profile is not configured or has no model at all, or a backend
        that is down lists a model that offers it (`AutoRouter.down_with`: the request
        is that model's, for when it is back). Not vision: Ollama refuses an image only
        as its runner reads it."""
        if profile not in self.auto.config.profiles:
            return None
        needs = required_capabilities(request_body.asks(path, doc), path)
        if not needs or self.auto.down_with(self.auto.profile(profile), only, needs):
            return None
        candidates = self.auto.choosable(profile, only)
        offered = {c for m in candidates for c in m.capabilities}
        if "thinking" in needs and "thinking" not in offered:
            quoted = go_quote(model.encode("utf-8", "surrogateescape"))
            return handler_error(path, 400, f"{quoted} does not support thinking")
        lacking = [c for c in needs if c in _SCHEDULER_CHECKS and c not in offered]
        if candidates and lacking:
            name = _REGISTRY + normalize_model(model)
            return handler_error(path, 400, f"{name} does not support {chr(10).join(lacking)}")
        return None

    def loading(
        self,
        path: str,
        model: str,
        doc: dict[str, Any],
        profile: str,
        only: frozenset[str] | None = None,
        fleet: bool = True,
    ) -> web.Response | None:
        """Ollama's answer to a generate without a prompt or a chat without messages
        (GenerateHandler, ChatHandler): done, with `done_reason` "unload" for a zero
        `keep_alive`; else what the handler refuses of the request alone before it
        loads a model that completes text, as `auto`'s candidates do (generate's
        raw-mode 400, `go_requests.raw_refusal`; what none of the profile's models
        offers, `unoffered`; with `fleet`, no model to choose at all,
        `AutoRouter.check_loadable`, whose NoBackend goes to the caller, which sets
        `fleet` false where the cloud stands in; scheduleRunner's Options.FromMap, a 500
        from handleScheduleError, `go_requests.options_refusal`), then done with "load".
        None for a `keep_alive` Ollama refuses: that 400 is the backend's to write, as
        for any other field."""
        answer = self._load_answer(path, model, doc, profile, only, fleet)
        return _json(answer) if isinstance(answer, dict) else answer

    async def loading_again(
        self,
        none: NoBackend,
        path: str,
        model: str,
        doc: dict[str, Any],
        profile: str,
        only: frozenset[str] | None,
        names: tuple[str, ...],
    ) -> web.Response | None:
        """`loading`, which raised `none` for want of a backend, as `_load_again`
        answers it."""
        answer = await self._load_again(none, path, model, doc, profile, only, names)
        return _json(answer) if isinstance(answer, dict) else answer

    async def _load_again(
        self,
        none: NoBackend,
        path: str,
        model: str,
        doc: dict[str, Any],
        profile: str,
        only: frozenset[str] | None,
        names: tuple[str, ...],
    ) -> dict[str, Any] | web.Response | None:
        """`_load_answer`, which raised `none` for want of a backend, answered as the
        chat after it would be: the backends that may be back on their port that list a
        model the profile could choose checked again at once (`BackendPool.rechecked`,
        `AutoRouter.unawaited`); where still none is, answered without
        the fleet where the cloud stands in for `names` (`stands_in`, `stand_in_names`),
        as that chat is the cloud's; else `none` again, the 503."""
        answering = functools.partial(self._load_answer, path, model, doc, profile, only)
        unawaited = self.auto.unawaited(profile, only)
        try:
            return await self.auto.backends.rechecked(none, answering, exclude=unawaited)
        except NoBackend:
            if not stands_in(self.cloud, path, names):
                raise
            return self._load_answer(path, model, doc, profile, only, fleet=False)

    def _load_answer(
        self,
        path: str,
        model: str,
        doc: dict[str, Any],
        profile: str,
        only: frozenset[str] | None,
        fleet: bool = True,
    ) -> dict[str, Any] | web.Response | None:
        """`loading`'s answer: the document it answers done with, or its refusal."""
        try:
            reason = "unload" if unloads(doc.get("keep_alive")) else "load"
        except ValueError:
            return None
        if reason == "load":
            raw = go_requests.raw_refusal(doc) if path == "/api/generate" else None
            if raw is not None:
                return error_response(path, 400, raw)
            unoffered = self.unoffered(path, doc, model, profile, only)
            if unoffered is not None:
                return unoffered
            try:
                if fleet:
                    needs = required_capabilities(request_body.asks(path, doc), path)
                    self.auto.check_loadable(profile, only, needs)
            except AutoError as exc:
                return handler_error(path, exc.status, exc.answer(model))
            options = go_requests.options_refusal(doc.get("options"))
            if options is not None:
                return error_response(path, 500, options)
        answer: dict[str, Any] = {"model": model, "created_at": go_now()}
        if path == "/api/chat":
            answer["message"] = {"role": "assistant", "content": ""}
        else:
            answer["response"] = ""
        answer.update(done=True, done_reason=reason)
        return answer

    async def explain(self, request: web.Request) -> web.StreamResponse:
        """The full ranking for a request body, without generating anything."""
        # Read as the inference routes read a body, so that explain ranks what auto would;
        # a large one read in the worker, as there (`body_screen`).
        query, max_values = request.query.get("path"), self.limits.max_json_values
        try:
            body = await request_limits.read_body(request, self.body_idle_seconds)
            default = self.auto.config.default_profile
            declines = functools.partial(_refused_first, query, default)
            screened = await body_screen.screen(
                request.path, body, max_values, self.limits, declines
            )
            if isinstance(screened, body_screen.Refused):
                return error_response(request.path, screened.status, screened.message)
            if screened is not None:  # read in the worker, a key given twice in none
                doc, forwarded = screened.doc, screened.body(body)
            else:
                doc, forwarded = await go_json.read_off_loop(body, max_values)
        except go_json.BodyError as exc:
            return error_response(request.path, exc.status, str(exc))
        path = _explained_path(query, doc)
        # A key given twice: ranked as the route reads it (`repeated_keys`).
        repeated = None if screened is not None else await repeated_keys(path, body, forwarded)
        if repeated is not None and repeated.doc is not None:
            doc, body = repeated.doc, repeated.written
        # What the route it ranks for refuses as it decodes the body, explain refuses in
        # the route's words.
        if doc is None:
            return error_response(request.path, 400, go_requests.decode_refusal(path, body))
        if not isinstance(doc, dict):
            unread = refusal(path, doc, body)
            not_an_object = unread.message if unread else "expected a JSON object"
            return error_response(request.path, 400, not_an_object)
        model = _explained_model(doc)
        profile = profile_of(model, self.auto.config.default_profile)
        if profile is None:
            return error_response(request.path, 400, f"'{model}' is not auto or auto:<profile>")
        key = request.get(KEY_REQUEST)
        if path not in RANKED_PATHS:
            # A ranking here would name a model auto never sends to this route.
            route = find(path)
            if route is not None and route.embedding:
                pinned = self.auto.config.embedding_model or "not set"
                if pinned != "not set" and key is not None and not key.allows_model(pinned):
                    # A model off the key's list is named to it nowhere, as by auto's
                    # own refusal on the embedding routes.
                    pinned = "not one of this API key's models"
                why = f"it takes selector.embedding_model ({pinned})"
            else:
                why = "explain ranks for " + ", ".join(RANKED_PATHS)
            return error_response(request.path, 400, f"auto ranks no models on {path}: {why}")
        # What the inference route refuses for its length, auto never ranks: explain
        # answers that refusal, and reads no features of a conversation beyond it.
        refused = await request_limits.check_body(request.path, doc, self.limits, [], len(body))
        if refused is not None:
            return refused
        # A field of the wrong type, which the route's backend refuses after the proxy's
        # own bounds: an earlier value of a key given twice too.
        if repeated is not None and repeated.refusal is not None:
            return error_response(request.path, 400, repeated.refusal)
        unread = refusal(path, doc, body)
        if unread is not None:
            return error_response(request.path, 400, unread.message)
        # The key's allow-list, as on inference: explain must rank what auto would.
        only = key.models if key is not None else None
        cloud_names = stand_in_names(profile, only)
        if loads(path, doc):
            # The route answers a load or an unload itself and chooses no model (see
            # `loading`): explain says that, or refuses it as the route does, a profile
            # that does not exist first.
            try:
                self.auto.profile(profile)
            except AutoError as exc:
                return error_response(request.path, exc.status, exc.answer(model))
            try:
                answer = self._load_answer(path, model, doc, profile, only)
            except NoBackend as none:
                # As on the route (`Handlers._auto_load`).
                answer = await self._load_again(none, path, model, doc, profile, only, cloud_names)
            if isinstance(answer, web.Response):
                return answer
            if answer is not None:
                return self._explained_load(profile, answer)
        cloud = self.cloud
        if cloud is not None and cloud.goes_first(profile, path, cloud_names):
            # As on the route: the cloud first while a provider has budget left.
            if await cloud.has_budget(cloud_names):
                first = "the profile is in cloud.prefer_for_profiles"
                return await self._explained_cloud(
                    request, path, doc, profile, cloud_names, first, cloud
                )
        user, scope = user_key(request), conversation_scope(request)
        whose = conversation_owner(user, scope)
        reading = await reading_off_loop(path, doc, len(body), whose)
        try:
            try:
                choice = self.auto.decide(path, doc, profile, user, only, reading, scope)
            except NoBackend as none:
                # As for `auto`'s chat: one restarted on its port is ranked, as it
                # would serve that chat.
                choice = await self.auto.decided_again(
                    none, path, doc, profile, user, only, reading, scope
                )
        except AutoError as exc:
            return error_response(request.path, exc.status, exc.answer(model))
        except NoBackend as none:
            # As on the route: where the cloud stands in for the profile, it answers.
            if not stands_in(self.cloud, path, cloud_names):
                raise
            why = none.reason(sees_fleet(request, self.cloud.keys_on))
            return await self._explained_cloud(
                request, path, doc, profile, cloud_names, why, self.cloud
            )
        decision = choice.decision
        learning = self.auto.config.learning
        rule = self._rule(decision.profile)
        beyond = beyond_max_loss(
            decision.ranking, rule["max_loss"] if rule else 0.0, learning.prior_strength
        )
        # Models the key cannot see stay out of the answer, as they do from the lists;
        # those that neither chat nor generate are no candidates, and are named with why,
        # as in the refusal where no model is left.
        spelled = self.auto.registry.spelled
        reasons = {**decision.filtered, **self.auto.not_generating(only)}
        ranked = {s.name for s in decision.ranking}
        fleet = sees_fleet(request, self.auto.backends.config.auth.enabled)
        for m, lost in self.auto.backends.lost_by().items():
            if m not in ranked and m not in reasons:
                # No backend offers it any more: where it went, each backend named as
                # the caller may learn it (no URL for one that may not see the fleet).
                where = ", ".join(s.label if fleet else s.public_label for s in lost)
                reasons[m] = f"lost on {where}: {LOST}"
        filtered = {spelled(m): why for m, why in reasons.items() if only is None or m in only}
        return _json(
            {
                "model": spelled(decision.chosen),
                "profile": decision.profile,
                "reason": decision.reason,
                # The knobs the reason refers to.
                "rule": rule,
                "propensity": decision.propensity,
                "artifact_version": decision.artifact_version,
                "experiment": decision.experiment,
                "variant": decision.variant,
                # Per candidate: the selector's prior, the evidence for this kind of
                # prompt (count, mean outcome), the blend the choice used and the
                # optimism added to it.
                "kind": decision.kind,
                # "known": what the evidence of this kind left of the configured
                # strength of the models the artifact was fitted on ("known_ceiling").
                "prior_strength": {
                    "known": decision.known_strength,
                    "known_ceiling": learning.known_prior_strength,
                    "unseen": learning.prior_strength,
                },
                # expected_seconds includes load_seconds (0 when loaded); utility
                # includes evict_penalty when loading would evict a model in use.
                # beyond_max_loss: its lower bound (rating less SWITCH_Z of its spread)
                # further below the best-rated candidate than the profile's max_loss,
                # so not considered.
                "ranking": [
                    self._described(
                        {
                            **s.describe(),
                            **choice.loading(s.name),
                            "beyond_max_loss": s.name in beyond,
                        }
                    )
                    for s in decision.ranking
                ],
                "filtered": filtered,
                # The model that answered the turn this chat continues, while loaded:
                # its expected_seconds leave out the part of the prompt its runner holds.
                "held_by": spelled(choice.held_by) if choice.held_by else None,
                "legend": LEGEND,
            }
        )

    @staticmethod
    def _explained_load(profile: str, answer: dict[str, Any]) -> web.Response:
        """Explain of a load or an unload of `auto:<profile>`, which the route answers
        with `answer` and no model: nothing is ranked, nothing filtered."""
        return _json(
            {
                "model": None,
                "profile": profile,
                "reason": answer["done_reason"],
                "answer": answer,
                "ranking": [],
                "filtered": {},
                "legend": LEGEND,
            }
        )

    @staticmethod
    async def _explained_cloud(
        request: web.Request,
        path: str,
        doc: dict[str, Any],
        profile: str,
        names: tuple[str, ...],
        why: str,
        cloud: CloudFallback,
    ) -> web.Response:
        """Explain of a request of `auto:<profile>` the cloud stands in for (`names`,
        `why`): the provider and cloud model the route sends it to, with its budget
        this month (`CloudFallback.chosen`), no model ranked; or the route's refusal."""
        standing = await cloud.chosen(path, doc, names)
        refused = refusal_of(standing)
        if refused is not None:
            return cloud.refusal_answer(request, refused)
        assert isinstance(standing, Standing)
        return _json(
            {
                "model": standing.model,
                "profile": profile,
                "reason": CLOUD_REASON,
                "backend": CLOUD_BACKEND_PREFIX + standing.name,
                "cloud": {**standing.budget(), "why": why},
                "ranking": [],
                "filtered": {},
                "legend": LEGEND,
            }
        )

    def _rule(self, profile_name: str) -> dict[str, float] | None:
        """The profile's cost_weight, tolerance and max_loss and the selector's min_gain."""
        profile = self.auto.config.profiles.get(profile_name)
        if profile is None:
            return None
        return {
            "cost_weight": profile.cost_weight,
            "tolerance": profile.tolerance,
            "max_loss": profile.max_loss,
            "min_gain": self.auto.config.min_gain,
        }

    def _described(self, candidate: dict[str, Any]) -> dict[str, Any]:
        """A ranking entry with what the catalogue knows of the model (its areas, where
        they come from: `catalogue`, `config`, `profile` or `nearest`, and for a placed
        model the entries it was placed beside; the entry it is read as, the published
        numbers its areas take, the areas imputed, and per area where its figure comes
        from and whether a profile's share was blended with it: `Catalog.figures`), its
        capabilities and what said them (`registry.CAPABILITIES_FROM`: all but `show` are
        read off something else than the list Ollama gives), and its profiled areas,
        when it has been profiled, with the offset each was moved by onto the
        catalogue's scale (`measured_offset`). A name backends list with other weights
        is described as the decision reads it (the areas, uncertainty and capabilities
        any version may have: `registry._on_any_version`), and each version as its own
        weights are (`versions`, by digest)."""
        name = str(candidate.get("model", ""))
        info = self.auto.registry.models.get(name)
        if info is not None:
            own = self._own(name, info)
            if info.versions:
                merged = info.candidate
                # No areas where one version's are unknown (`_on_any_version`).
                areas = zip(AREAS, merged.areas, strict=False)
                own["catalogue"] = {
                    "areas": {area: round(score, 3) for area, score in areas},
                    "uncertainty": round(merged.uncertainty, 3),
                }
                own["versions"] = [
                    {"digest": v.digest, **self._own(name, v)} for v in info.versions
                ]
            candidate = {**candidate, **own}
        measured = self.profiles.scores(name)
        # Named as the model list spells it, as the answer's headers name it.
        candidate = {**candidate, "model": self.auto.registry.spelled(name)}
        if not measured:
            return candidate
        # What each measured share was moved by onto the catalogue's scale before it
        # was weighed with the catalogue's figure (`Catalog.offsets`).
        offsets = self.auto.registry.catalogue().offsets_of(name)
        moved = {area: round(offset.shift, 3) for area, offset in offsets.items()}
        return {**candidate, "measured": measured, "measured_offset": moved}

    def _own(self, name: str, info: ModelInfo) -> dict[str, Any]:
        """What the catalogue knows of a model's weights (`info`; of a name listed with
        other weights, nothing: see `_described`) and its capabilities."""
        own: dict[str, Any] = {}
        known = info.knowledge
        if known is not None:
            described: dict[str, Any] = {
                "origin": known.origin,
                "family": known.family,
                "areas": {area: round(score, 3) for area, score in known.areas.items()},
                "uncertainty": round(known.uncertainty, 3),
                "neighbours": list(known.neighbours[:3]),
            }
            # By the name and details the registry looked the model up by: the entry
            # its areas come from may be another than its name's (`_same_arch`, a parent
            # Ollama names, the one a description is `like`), so explain names it; a
            # profile of some areas leaves where the others come from as it was.
            catalog = self.auto.registry.catalogue()
            described["entry"] = catalog.entry(name, info.details)
            cited = catalog.sources(name, info.details)
            described["sources"] = {
                bench: {"area": s.area, "value": s.value, "url": s.url}
                for bench, s in sorted(cited.items())
            }
            figures = catalog.figures(name, info.details)
            described["imputed"] = [a for a, f in figures.items() if f.source == "imputed"]
            described["figures"] = {
                area: {"from": f.source, **({"measured": f.measured} if f.measured else {})}
                for area, f in figures.items()
            }
            own["catalogue"] = described
        own["capabilities"] = {
            "listed": sorted(info.candidate.capabilities),
            "from": info.capabilities_from,
        }
        return own

    async def status(self, request: web.Request) -> web.StreamResponse:
        doc = self.auto.status()
        if self.learner is not None:
            doc["learning"] = self.learner.status()
        # "profiling": the profile store (the auto profiles are under "profiles").
        doc["profiling"] = {
            "path": str(self.profiles.path),
            "suite_version": SUITE_VERSION,
            "profile_models": list(self.auto.config.profile_models),
            "models": self.profiles.describe(),
        }
        return _json(doc)

    async def experiment(self, request: web.Request) -> web.StreamResponse:
        """GET /api/autoroute/experiments/<name>: per-variant results and significance."""
        name = request.path.rsplit("/", 1)[-1]
        if name not in self.auto.config.experiments:
            return error_response(request.path, 404, f"experiment '{name}' not found")
        from proxy.usage.export import parse_since  # as load_events imports it

        since = request.query.get("since", "90d")
        try:
            parse_since(since)
        except ValueError as exc:
            return error_response(request.path, 400, f"since: {exc}")
        events = await experiments.load_events(self.usage, since)
        return _json(
            experiments.configured_report(events, name, self.auto.config.experiments[name])
        )

    async def reload(self, request: web.Request) -> web.StreamResponse:
        """Reload the artifact now; a bad file keeps the current one (409)."""
        if self.auto.scorer.reload():
            return _json(self.auto.status())
        return error_response(request.path, 409, f"artifact not reloaded: {self.auto.scorer.error}")
