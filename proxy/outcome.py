"""What one request came to: what the request decided and what its answer did.

The handler fills an `Outcome` while the request runs; when it is over, every
completion hook (metrics, access log, telemetry, usage) reads it once. The relay only
ever sees `Served`: what it writes is the answer's, never the routing decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

# The most of an error message a usage event keeps (`Served.error`): a message, not a
# body. A backend's may quote what the client sent (a model name, a value as written),
# and so may the proxy's own; every refusal `selector_model.outcome.refused` reads is
# told by its beginning, which the cut keeps.
MAX_ERROR_CHARS = 1000

if TYPE_CHECKING:
    from proxy.routes import Route
    from proxy.usage_prompt import Prompt


class Records(Protocol):
    """What `Decided.settle` writes the records from (`proxy.auto.Choice`; named here
    by what it offers, so that the bookkeeping imports nothing of the router)."""

    def records(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The decision's record and the chosen candidate's."""
        ...


@dataclass(slots=True)
class Decided:
    """What the request decided, at admission and routing."""

    # The proxy's own id: unique, names the request in its logs and usage events.
    request_id: str
    # The client's X-Request-Id when it is a sane token, kept beside the proxy's.
    client_request_id: str | None = None
    started: float = 0.0  # perf_counter() at the request's arrival
    # The path's line in the route table (`proxy.routes.find`), None outside it: looked
    # up once, at arrival, for the handler and the completion hooks.
    route: Route | None = None
    refused: bool = False  # turned away at admission: it ran nothing
    key_id: str | None = None  # the API key's id when access control identified one
    key_hash: str | None = None  # and its hash (`KeyState.hash`)
    model: str | None = None  # as the client named it
    # The request body the proxy read (a reference, not a copy), for the usage event.
    body: bytes | None = None
    # The body's prompt texts (`selector_model.request_body.texts`) where the handler
    # read them, or what the usage event keeps of them where the worker read the body
    # (`body_screen`): the usage event's prompt then needs no second reading of the body.
    prompt: list[str] | Prompt | None = None
    # Set by `model: auto`: the decision and the request features it was made on.
    decision: dict[str, Any] | None = None
    features: list[float] | None = None
    candidate: dict[str, Any] | None = None  # the chosen model's selector features
    # `auto`'s choice, whose records (`decision`, `candidate`) `settle` writes once the
    # request is over: they are for the completion hooks, and the request goes to its
    # backend without waiting for them.
    choice: Records | None = None
    # A chat conversation `auto` chose the model of (`proxy.continuations`): remembered
    # with the model that answers it.
    conversation: int | None = None

    def settle(self) -> None:
        """Write the records of `choice` for the completion hooks."""
        choice = self.choice
        if choice is not None:
            self.decision, self.candidate = choice.records()
            self.choice = None

    def answered_instead(self, reason: str) -> None:
        """Something other than the model `choice` names answers (`reason`: the cloud
        fallback's): its records are written now, the decision's reason that one, the
        rest (the model chosen, its ranking) as `auto` decided."""
        self.settle()
        if self.decision is not None:
            self.decision = {**self.decision, "reason": reason}


@dataclass(slots=True)
class Served:
    """What the answer did (the relay writes these)."""

    # The id the answer carries in X-Request-Id and the backend receives: the client's
    # own when it sent a sane one, else the proxy's.
    request_id: str
    backend: str = ""
    provider: str = ""  # the cloud provider that answered (cloud fallback), else ""
    # The model that answered as the client sees it (in X-Autoroute-Model when the proxy
    # chose it): the one named, auto's choice, or the cloud model standing in. Metrics,
    # auto's telemetry and the usage event read it here.
    model: str | None = None
    status: int = 0
    attempts: int = 0
    body_bytes: int = 0
    error: str = ""  # at most MAX_ERROR_CHARS
    cancelled: bool = False
    # The request reached no backend: the answer is the proxy's own, as none of the
    # backends tried could be connected to, or none could take it, or the cloud
    # fallback's refusal in their place (the usage event's `outcome.unreached`).
    unreached: bool = False
    # The proxy's own headers on the answer (X-Autoroute-*), besides X-Request-Id.
    extra: dict[str, str] = field(default_factory=dict)
    # perf_counter() when the first body byte went to the client, if one did.
    first_byte_at: float = 0.0
    # From the answer's last chunk: token counts, durations (ns), done_reason.
    stats: dict[str, int | str] = field(default_factory=dict)
    # The end of the /api/generate context the answer returned (`proxy.continuations`).
    context_ending: str | None = None
    # The client read slower than the backend wrote: the backend was paused meanwhile.
    client_paused: bool = False
    # The backend sends the request on to ollama.com itself (`backends.searches_the_web`,
    # `backends.WEB_PATHS`): its 502 or 504 then speaks of ollama.com, not of the backend.
    offsite: bool = False
    # The response cache: "hit" (answered from it), "miss" (cacheable, answered by a
    # backend), None (not cacheable, or no cache).
    cache: str | None = None
    ended: float = 0.0  # perf_counter() when the handler finished

    @property
    def final_status(self) -> int:
        """The status the request ended with, as metrics and the status page count it:
        the answer's, else 499 when the client left first, else 500."""
        return self.status or (499 if self.cancelled else 500)


@dataclass(slots=True)
class Outcome:
    decided: Decided
    served: Served
    _ms: tuple[float, float | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def ms(self) -> tuple[float, float | None]:
        """The request's duration and its time to the first byte (None when no byte
        went out), in milliseconds rounded to the microsecond, as the access log and
        the usage event write them: rounded once, for both. Read once it is over."""
        ms = self._ms
        if ms is None:
            started, served = self.decided.started, self.served
            first = served.first_byte_at
            ms = self._ms = (
                round((served.ended - started) * 1000, 3),
                round((first - started) * 1000, 3) if first else None,
            )
        return ms


# The outcome of the request being handled, for the route handlers.
OUTCOME = web.RequestKey("autoroute_outcome", Outcome)

# Called once per finished request, in registration order; must not block or raise.
Hook = Callable[[web.Request, Outcome], None]
