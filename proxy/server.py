"""The one aiohttp handler every request enters: it names the request, admits it, hands
it to the handler the route table (`proxy.routes`) names, and when it is over calls the
completion hooks (metrics, access log, telemetry, usage) with its `Outcome`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from proxy import expect, go_mux, header_values
from proxy import limits as request_limits
from proxy.aiohttp_internals import state_get
from proxy.auth import KEY_REQUEST, Access, Admission, sees_fleet
from proxy.backends import NoBackend
from proxy.config import Config
from proxy.connection import ClientConnection
from proxy.errors import body_too_large, error_response, said
from proxy.hosts import HostCheck
from proxy.metrics import Metrics
from proxy.origins import ORIGIN, Origins
from proxy.outcome import OUTCOME, Decided, Hook, Outcome, Served
from proxy.protocol import AUTOROUTE_HEADERS, REQUEST_ID_HEADER
from proxy.request_ids import RequestIds
from proxy.routes import Router, find

log = logging.getLogger("autoroute.server")


class Server:
    def __init__(
        self,
        config: Config,
        auth: Access,
        metrics: Metrics,
        router: Router,
        hooks: Sequence[Hook],
    ) -> None:
        self.config = config
        self.auth = auth
        self.metrics = metrics
        self.router = router
        self.hooks = tuple(hooks)
        self.origins = Origins(config.listen.origins, own_headers=True)
        self.hosts = HostCheck(config.listen.host)
        # Keys' limits counted in Redis: admission awaits one round trip. Without it
        # admission stays synchronous.
        self.shared_admission = auth.enabled and auth.shared is not None
        # Request ids: random, so that no client counts the others' requests by them.
        self._ids = RequestIds()
        # The tasks of the requests being handled, for `drain`.
        self.handling: set[asyncio.Task[Any]] = set()

    def _outcome(self, request: web.Request) -> Outcome:
        # The proxy's own id names the request in its logs and usage events: unique,
        # whatever clients send. A client's own id, when it is a sane token, is what
        # the client sees in the answer's header (it correlates by it) and is kept
        # beside the proxy's; one that is not (not ASCII, spaces, controls, too long)
        # is replaced by the proxy's.
        request_id = self._ids.new()
        client_id = header_values.request_id(request.headers.get(REQUEST_ID_HEADER))
        return Outcome(
            Decided(request_id, client_id, time.perf_counter(), find(request.path)),
            Served(client_id or request_id),
        )

    async def drain(self) -> None:
        """Shutdown, once the server stops accepting: let the requests in flight finish
        for up to `timeouts.shutdown_seconds`, then cancel the rest and wait for them to
        end (a cancelled request still leaves its usage event). aiohttp's own wait (its
        `shutdown_timeout`) then has nothing left to wait for: it would wait as long
        again, since what it cancels after the first wait is only the request's body
        read, which a stream being relayed never notices."""
        pending = set(self.handling)
        if not pending:
            return
        log.info("waiting for %d requests in flight", len(pending))
        _, late = await asyncio.wait(pending, timeout=self.config.timeouts.shutdown_seconds)
        for task in late:
            task.cancel()
        if late:
            log.warning("cancelled %d requests still in flight at the deadline", len(late))
            await asyncio.wait(late)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        outcome = request[OUTCOME] = self._outcome(request)
        decided, served = outcome.decided, outcome.served
        response: web.StreamResponse | None = None
        self.metrics.in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            self.handling.add(task)
        try:
            if self.shared_admission:
                response = await self._admit_shared(request, decided)
            else:
                response = self._admit(request, decided)
            if response is None:
                handler = self.router.handler(request.method, request.path, decided.route)
                response = await handler(request)
        except NoBackend as exc:
            served.error = str(exc)
            served.unreached = True
            reason = exc.reason(sees_fleet(request, self.config.auth.enabled))
            response = error_response(request.path, 503, reason)
        except web.HTTPRequestEntityTooLarge as exc:
            # aiohttp's own is the app's limit; a route's lower one says which it is.
            limit = exc.limit if isinstance(exc, request_limits.BodyTooLarge) else None
            response = body_too_large(request.path, limit or self.config.limits.max_body_bytes)
        except request_limits.Busy as exc:
            response = error_response(request.path, 503, str(exc))
            response.force_close()  # the body may still be on its way: never read it
        except request_limits.BodyTimeout as exc:
            response = error_response(request.path, 408, str(exc))
            response.force_close()  # the rest of the body may still come: never parse it
        except RequestPayloadError as exc:
            # A body whose framing broke (`aiohttp_internals.fail_open_body`): Ollama
            # answers the error its read of the body got, and nothing after it parses.
            response = error_response(request.path, 400, str(exc))
            response.force_close()
        except asyncio.CancelledError:
            served.cancelled = True
            raise
        finally:
            if response is not None and expect.unread(request):
                response.force_close()
            if response is not None and not response.prepared:
                response.headers[REQUEST_ID_HEADER] = served.request_id
                # The proxy's own error (no backend answered, or it refused the request):
                # no model answered it, so none is named as the one that did.
                own_error = response.status >= 400
                for name, value in served.extra.items():
                    if not (own_error and name in AUTOROUTE_HEADERS):
                        response.headers[name] = value
                served.status = response.status
                # The proxy's own error answer says why, in one place for every handler
                # (`errors.carrying`): a handler that kept a fuller reason than the
                # client reads (`NoBackend`'s, the relay's, the cloud's) keeps its own.
                if not served.error:
                    served.error = said(response)
            key = state_get(request, KEY_REQUEST)
            if key is not None:
                decided.key_id, decided.key_hash = key.id, key.hash
            self.auth.release(request, key)
            request_limits.let_go(request)
            self.metrics.in_flight -= 1
            if task is not None:
                self.handling.discard(task)
            served.ended = time.perf_counter()
            try:
                decided.settle()
            except Exception:  # the hooks still run: the usage event goes without it
                log.exception("could not write the records of auto's choice")
            for hook in self.hooks:
                try:
                    hook(request, outcome)
                except Exception:
                    # One observer failing must not cost the others their record (the
                    # usage hook, last, makes the request's one usage event).
                    log.exception("completion hook %s failed", getattr(hook, "__qualname__", hook))
        return response

    def _admit(self, request: web.Request, decided: Decided) -> web.StreamResponse | None:
        """`_unkeyed`, then the API key (when keys are configured): None lets it in."""
        refused = self._unkeyed(request)
        if refused is None and self.auth.enabled:
            refused = self._refusal(self.auth.admit(request, decided.started))
        decided.refused = refused is not None
        return refused

    async def _admit_shared(
        self, request: web.Request, decided: Decided
    ) -> web.StreamResponse | None:
        """`_admit` with the key's limits counted across proxies (`shared.redis_url`)."""
        refused = self._unkeyed(request)
        if refused is None:
            refused = self._refusal(await self.auth.admit_shared(request, decided.started))
        decided.refused = refused is not None
        return refused

    def _unkeyed(self, request: web.Request) -> web.StreamResponse | None:
        """What is answered before any key is looked at: a head over the size limit, an
        `Expect` Go refuses (`proxy.expect`), a path that is not clean (Go's redirect,
        `proxy.go_mux`: no route, key or backend ever sees such a path), a browser's
        cross-origin request (`proxy.origins`: refused, or a preflight answered), and
        a `Host` that is not local while the proxy listens on loopback
        (`proxy.hosts`), as Ollama answers each before its handlers."""
        protocol = request.protocol
        if isinstance(protocol, ClientConnection):
            if request.version.major != 1:
                return protocol.refuse_version(request)  # Go's 505 (or 400)
            refused = protocol.refuse_parsed(request)  # Go's 501 (or 400)
            if refused is not None:
                return refused
        refused = request_limits.check_headers(request, self.config.limits)
        if refused is None and hdrs.EXPECT in request.headers:
            refused = expect.refusal(request)
        if refused is None:
            refused = go_mux.redirect(request)
        if refused is None:
            origin = request.headers.get(ORIGIN)
            if origin is not None:
                refused = self.origins.admit(request, origin)
        if refused is None and self.hosts.active:
            refused = self.hosts.refusal(request)
        return refused

    def _refusal(self, admission: Admission) -> web.Response | None:
        if admission.refusal is not None:
            self.metrics.deny(admission.reason)
        return admission.refusal
