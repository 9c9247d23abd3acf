"""The cloud fallback: a chat or generate request no local backend can serve (or one
whose `auto` profile opts in) answered by a cloud provider within its monthly token
budget, in the client's own format (`proxy.cloud_translate`).

The cloud leg uses an aiohttp client session: it is not the proxy's hot local path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from proxy.aiohttp_internals import client_transport
from proxy.auth import sees_fleet
from proxy.backends import BackendPool, normalize_model
from proxy.cloud_budget import Budget, BudgetUnavailable, this_month
from proxy.cloud_translate import (
    PATHS,
    Chat,
    CloudStreamError,
    TranslateError,
    Translator,
    Unsupported,
    cloud_body,
    read_request,
)
from proxy.config import Config
from proxy.config_services import CloudProvider
from proxy.errors import error_response, stream_error_line
from proxy.limits import write_stalled
from proxy.outcome import OUTCOME, Served
from proxy.protocol import CLOUD_BACKEND_PREFIX, MODEL_HEADER, REQUEST_ID_HEADER

log = logging.getLogger("autoroute.cloud")

BACKEND_HEADER = "X-Autoroute-Backend"
_ERROR_BODY_BYTES = 4096
_READ_BYTES = 64 * 1024


# The X-Autoroute-Reason of an `auto` request the provider mapped to its profile
# answers (`stand_in_names`), which chose no model (explain: reason).
CLOUD_REASON = "cloud"


def stand_in_names(profile: str, only: frozenset[str] | None) -> tuple[str, ...]:
    """What the cloud may stand in for on a request of `auto:<profile>` besides the model
    it chooses: the profile, but not for a key with a model list (`only`): `auto` chooses
    only among its models, and the cloud model mapped to the profile is none of them
    (the one mapped to a model on the list may stand in for it, as for a request naming
    it)."""
    return (f"auto:{profile}",) if only is None else ()


def refusal_of(standing: Standing | Refusal) -> Refusal | None:
    """Why no provider is asked for the answer `CloudFallback.chosen` named `standing`
    for: none took it, or its key is not set (`Standing.unkeyed`); None where it is
    asked. Only then do explain and the route's answer say reason "cloud": a refusal
    is the route's, as explain answers it, and no provider answered."""
    return standing if isinstance(standing, Refusal) else standing.unkeyed()


def stands_in(
    cloud: CloudFallback | None, path: str, names: tuple[str, ...]
) -> TypeGuard[CloudFallback]:
    """Whether a provider of `cloud` (None: not configured) stands in for `names`
    (`stand_in_names`) on a request at `path` no local backend serves: without names,
    none does, not even one mapped to "*"."""
    return cloud is not None and bool(names) and cloud.takes(path, names)


@dataclass(frozen=True, slots=True)
class Standing:
    """The provider that answers a request the cloud stands in for: its name, the
    cloud model, the request read for it and this month's count when it was chosen."""

    name: str
    provider: CloudProvider
    model: str
    key: str = field(repr=False)  # the operator's, from the environment: "" when unset
    chat: Chat
    month: str
    spent: int

    def unkeyed(self) -> Refusal | None:
        """The refusal where the provider's key is not in the environment: `serve`
        answers it with the provider named as the answer's backend, without a call."""
        if self.key:
            return None
        name = self.name
        return Refusal(
            503,
            f"cloud {name}: environment variable {self.provider.key_env} is not set",
            f"cloud {name}: no API key is set",
            counted=(name, "no_key"),
        )

    def budget(self) -> dict[str, Any]:
        """This month's state of its budget, as the health names it."""
        return {
            "provider": self.name,
            "month": self.month,
            "monthly_token_budget": self.provider.monthly_token_budget,
            "tokens_this_month": self.spent,
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the cloud answers no request it stands in for, and with what status."""

    status: int
    # The usage event's and the log's words, and the client's unless `public` is set.
    error: str
    # What a caller who may not see the fleet reads instead (`CloudFallback._said`).
    public: str | None = None
    # The provider it counts against in autoroute_cloud_requests, with its result.
    counted: tuple[str, str] | None = None
    # Every provider's month spent (autoroute_cloud_budget_refusals).
    budget: bool = False


def _key(name: str) -> str:
    """A mapping key as requests are matched: local models as Ollama reads them."""
    return name if name == "*" or name.startswith("auto:") else normalize_model(name)


def lists_locally(backends: BackendPool, model: str) -> bool:
    """Whether some usable backend lists `model`, or might (its list not read yet)."""
    name = normalize_model(model)
    return any(s.models is None or name in s.models for s in backends.usable())


async def lists_locally_now(backends: BackendPool, model: str) -> bool:
    """`lists_locally`, the backends that might list `model` and may be back on their
    port checked again at once when no usable one does (`BackendPool.recheck`, with its
    bounds): one restarted since its circuit opened serves the request, not the paid
    provider until its next periodic check. A backend whose last list lacks the model
    is not checked: back, it would not keep the request local, and its check would
    hold up each request a provider stands in for."""
    if lists_locally(backends, model):
        return True
    # Not `BackendPool.rechecked`: no usable backend listing the model raises nothing
    # here (no NoBackend): it sends the request to the provider, a yes or no.
    name = normalize_model(model)
    lacking = [s for s in backends.states if s.models is not None and name not in s.models]
    return await backends.recheck(model, lacking) and lists_locally(backends, model)


def _message(detail: str) -> str:
    """An API's error body as its message (both APIs say `{"error": {"message"}}`)."""
    try:
        doc = orjson.loads(detail)
    except orjson.JSONDecodeError:
        return detail.strip()[:500]
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return detail.strip()[:500]


class _ClientStalled(Exception):
    """The client took in nothing of its answer for `timeouts.client_write_idle_seconds`."""


async def _write(
    response: web.StreamResponse, served: Served, data: bytes, idle_seconds: float
) -> None:
    try:
        async with asyncio.timeout(idle_seconds or None):
            await response.write(data)
    except TimeoutError:
        served.error = write_stalled(idle_seconds)
        raise _ClientStalled from None
    served.body_bytes += len(data)
    if not served.first_byte_at:
        served.first_byte_at = time.perf_counter()


class CloudFallback:
    def __init__(self, config: Config, registry: CollectorRegistry) -> None:
        self.config = config.cloud
        self.keys_on = config.auth.enabled  # for `sees_fleet`
        # A client that stops reading a stream is let go after this long, as the relay
        # lets it go (the cloud's stream is then closed).
        self.write_idle = config.timeouts.client_write_idle_seconds
        self.providers = [
            (name, provider, {_key(k): v for k, v in provider.models.items()})
            for name, provider in self.config.providers.items()
        ]
        self.budget = Budget(config.usage.postgres_dsn)
        self._session: aiohttp.ClientSession | None = None
        self.requests = Counter(
            "autoroute_cloud_requests",
            "Requests sent to the cloud fallback, by provider and how they ended",
            ("provider", "result"),
            registry=registry,
        )
        self.tokens = Counter(
            "autoroute_cloud_tokens",
            "Tokens the cloud fallback spent, as the providers counted them",
            ("provider", "kind"),
            registry=registry,
        )
        self.refused = Counter(
            "autoroute_cloud_budget_refusals",
            "Requests refused because every provider's monthly token budget was spent",
            registry=registry,
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.budget.close()

    def status(self, detailed: bool = True) -> dict[str, Any]:
        """For the health endpoint: each provider and its budget (never the key);
        `detailed`, its base URL, the models it maps (local and cloud names) and this
        month's tokens as last counted (every key's requests)."""
        month = this_month()
        doc: dict[str, Any] = {
            "prefer_for_profiles": list(self.config.prefer_for_profiles),
            "providers": [
                {
                    "name": name,
                    "api": provider.api,
                    "base_url": provider.base_url,
                    "key_set": bool(os.environ.get(provider.key_env)),
                    "models": provider.models,
                    "month": month,
                    "monthly_token_budget": provider.monthly_token_budget,
                    "tokens_this_month": self.budget.known.get((name, month), 0),
                }
                for name, provider, _ in self.providers
            ],
        }
        if not detailed:
            for entry in doc["providers"]:
                del entry["base_url"], entry["models"], entry["tokens_this_month"]
        return doc

    def goes_first(self, profile: str, path: str, names: tuple[str, ...]) -> bool:
        """Whether a request of `auto:<profile>` at `path` goes to the cloud before `auto`
        chooses a model (its explicit opt-in, `prefer_for_profiles`): where a provider
        stands in for `names` (`stand_in_names`), and, the caller's await, one of them
        has budget left (`has_budget`; without, `auto` chooses as for any profile)."""
        return (
            profile in self.config.prefer_for_profiles and bool(names) and self.takes(path, names)
        )

    def _candidates(self, names: Iterable[str]) -> list[tuple[str, CloudProvider, str]]:
        keys = [_key(n) for n in names] + ["*"]
        found = []
        for name, provider, models in self.providers:
            model = next((models[k] for k in keys if k in models), None)
            if model is not None:
                found.append((name, provider, model))
        return found

    def takes(self, path: str, names: Iterable[str]) -> bool:
        """Whether a request at `path` for the model `names` (the model, `auto:<profile>`)
        has a provider standing in for it."""
        return path in PATHS and bool(self._candidates(names))

    async def has_budget(self, names: Iterable[str]) -> bool:
        """Whether a provider standing in for `names` has tokens left this month (for
        a profile that prefers the cloud: without, it is served locally)."""
        month = this_month()
        for name, provider, _ in self._candidates(names):
            try:
                if await self.budget.spent(name, month) < provider.monthly_token_budget:
                    return True
            except BudgetUnavailable:
                return False
        return False

    def _said(self, request: web.Request, error: str, public: str | None) -> str:
        """What the client reads of a cloud failure: `error`, which the usage event and
        the log keep, or `public` to a caller who may not see the fleet (`sees_fleet`),
        as the relay words a local backend's failure. `public` says which provider
        failed and how, not the provider's own words (OpenAI's 401 quotes a part of the
        operator's key), the host it could not reach, or where the operator's key is
        read from."""
        request[OUTCOME].served.error = error
        return self.told(request, error, public)

    def told(self, request: web.Request, error: str, public: str | None) -> str:
        """What the caller of `request` reads of a cloud failure (see `_said`): `error`
        where there is no `public` version of it."""
        return error if public is None or sees_fleet(request, self.keys_on) else public

    def _failed(self, request: web.Request, status: int, error: str, public: str) -> web.Response:
        """The error answer of a request the cloud did not serve (see `_said`)."""
        return error_response(request.path, status, self._said(request, error, public))

    async def chosen(
        self, path: str, doc: dict[str, Any], names: Iterable[str]
    ) -> Standing | Refusal:
        """The first provider that maps `names`, takes the request (`doc` at `path`) and
        has budget left, which `serve` sends it to (and explain names), its key read
        (without one, `Standing.unkeyed` refuses); else why none does. Reads this
        month's counts."""
        try:
            chat = read_request(path, doc)
        except Unsupported as exc:
            # Not the client's fault: no local backend could serve, and the cloud
            # would answer another question.
            return Refusal(503, f"no local backend can serve this request and {exc}")
        except TranslateError as exc:
            return Refusal(400, str(exc))
        month = this_month()
        spent_out, budgets = [], []
        candidates = self._candidates(names)
        needs = chat.openai_only()
        if needs is not None:
            candidates = [c for c in candidates if c[1].api == "openai"]
            if not candidates:
                return Refusal(
                    503,
                    f"no local backend can serve this request and the cloud fallback sends "
                    f"{needs} only to OpenAI-compatible providers",
                )
        for name, provider, model in candidates:
            try:
                spent = await self.budget.spent(name, month)
            except BudgetUnavailable as exc:
                return Refusal(503, str(exc), "cloud budget store unavailable")
            if spent >= provider.monthly_token_budget:
                budget = provider.monthly_token_budget
                spent_out.append(f"{name} {spent}/{budget} tokens in {month}")
                budgets.append(f"{name} ({budget} tokens) in {month}")
                continue
            key = os.environ.get(provider.key_env, "")
            return Standing(name, provider, model, key, chat, month, spent)
        error = "cloud fallback monthly token budget spent: " + "; ".join(spent_out)
        # What was spent counts every key's requests: told, as the health tells it,
        # only to a caller who sees the fleet; the others read each budget.
        public = "cloud fallback monthly token budget spent: " + "; ".join(budgets)
        return Refusal(503, error, public, budget=True)

    async def serve(self, request: web.Request, standing: Standing | Refusal) -> web.StreamResponse:
        """Answer `request` from the provider `chosen` named for it (`standing`), or
        with the refusal it gave."""
        served = request[OUTCOME].served
        if isinstance(standing, Refusal):
            return self._refused(request, standing)
        served.backend = CLOUD_BACKEND_PREFIX + standing.name
        served.provider = standing.name
        served.extra[BACKEND_HEADER] = served.backend
        served.model = served.extra[MODEL_HEADER] = standing.model
        return await self._call(request, standing)

    def _refused(self, request: web.Request, refusal: Refusal) -> web.Response:
        """The answer to a request the cloud does not serve (`refusal_answer`), counted
        and kept as its error."""
        if refusal.counted is not None:
            self.requests.labels(*refusal.counted).inc()
        if refusal.budget:
            self.refused.inc()
        request[OUTCOME].served.error = refusal.error
        return self.refusal_answer(request, refusal)

    def refusal_answer(self, request: web.Request, refusal: Refusal) -> web.Response:
        """`refusal` as the caller of `request` reads it (`told`)."""
        said = self.told(request, refusal.error, refusal.public)
        return error_response(request.path, refusal.status, said)

    async def _call(self, request: web.Request, standing: Standing) -> web.StreamResponse:
        path = request.path
        served = request[OUTCOME].served
        unkeyed = standing.unkeyed()
        if unkeyed is not None:
            return self._refused(request, unkeyed)
        # The provider has the request: its answer is not the proxy's own. A refusal
        # keeps what the local backends it stands in for said (`Served.unreached`).
        served.unreached = False
        name, provider, model, key = standing.name, standing.provider, standing.model, standing.key
        chat, month = standing.chat, standing.month
        if provider.api == "openai":
            url = provider.base_url.rstrip("/") + "/chat/completions"
            headers = {"Authorization": f"Bearer {key}"}
        else:
            url = provider.base_url.rstrip("/") + "/messages"
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        headers["Content-Type"] = "application/json"
        body = orjson.dumps(cloud_body(provider.api, chat, model, provider.max_tokens))
        translator = Translator(provider.api, path, chat, model)
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=provider.timeout_seconds)
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as up:
                if up.status != 200:
                    detail = (await up.content.read(_ERROR_BODY_BYTES)).decode("utf-8", "replace")
                    answered = f"cloud {name} answered {up.status}"
                    self.requests.labels(name, f"status_{up.status}").inc()
                    refusal = self._failed(
                        request, 502, f"{answered}: {_message(detail)}", answered
                    )
                    log.warning("%s", served.error)
                    return refusal
                if chat.stream:
                    return await self._stream(request, up, translator, name, month)
                return await self._whole(request, up, translator, name, month)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.requests.labels(name, "unreachable").inc()
            failed = f"cloud {name} failed"
            refusal = self._failed(request, 502, f"{failed}: {exc or type(exc).__name__}", failed)
            log.warning("%s", served.error)
            return refusal

    async def _whole(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        translator: Translator,
        name: str,
        month: str,
    ) -> web.StreamResponse:
        served = request[OUTCOME].served
        try:
            async for data in up.content.iter_chunked(_READ_BYTES):
                translator.feed(data)
            body = translator.finish()
        except CloudStreamError as exc:
            await self._count(served, translator, name, month, "failed")
            return self._failed(request, 502, f"cloud {name}: {exc}", f"cloud {name} failed")
        await self._count(served, translator, name, month, "ok")
        served.body_bytes = len(body)
        return web.Response(body=body, headers={"Content-Type": translator.content_type})

    async def _stream(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        translator: Translator,
        name: str,
        month: str,
    ) -> web.StreamResponse:
        served = request[OUTCOME].served
        response = web.StreamResponse(
            headers={
                "Content-Type": translator.content_type,
                "X-Accel-Buffering": "no",
                REQUEST_ID_HEADER: served.request_id,
                **served.extra,
            }
        )
        await response.prepare(request)
        served.status = 200
        result = "ok"
        idle = self.write_idle
        stalled = False
        try:
            # The error line of a failed stream may find the client stalled too.
            try:
                async for data in up.content.iter_chunked(_READ_BYTES):
                    out = translator.feed(data)
                    if out:
                        await _write(response, served, out, idle)
                await _write(response, served, translator.finish(), idle)
            except CloudStreamError as exc:
                result = "failed"
                said = self._said(request, f"cloud {name}: {exc}", f"cloud {name} failed")
                line = stream_error_line(translator.content_type, said)
                await _write(response, served, line, idle)
            except (aiohttp.ClientError, TimeoutError) as exc:
                result = "failed"
                failed = f"cloud {name} failed mid-stream"
                said = self._said(request, f"{failed}: {exc or type(exc).__name__}", failed)
                line = stream_error_line(translator.content_type, said)
                await _write(response, served, line, idle)
        except _ClientStalled:
            stalled = True
        finally:
            await self._count(served, translator, name, month, result)
        if stalled:
            # Counted, then let go as a client that left: the cloud's stream closes
            # with this handler.
            served.cancelled = True
            client_transport(request).abort()
            return response
        await response.write_eof()
        return response

    async def _count(
        self, served: Served, translator: Translator, name: str, month: str, result: str
    ) -> None:
        """The tokens the cloud said it spent: into the budget, the metrics and the
        request's stats (its usage event)."""
        prompt, completion = translator.tokens()
        served.stats = {"prompt_eval_count": prompt, "eval_count": completion}
        if translator.reading.reason:
            served.stats["done_reason"] = translator.reading.reason
        self.requests.labels(name, result).inc()
        self.tokens.labels(name, "prompt").inc(prompt)
        self.tokens.labels(name, "completion").inc(completion)
        await self.budget.add(name, month, prompt + completion)
