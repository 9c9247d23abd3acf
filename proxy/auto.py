"""`"model": "auto"` and `auto:<profile>`: choose a model for this request, now.

Hard filters first (capabilities the request needs, a context that holds the prompt,
else the longest, the profile's allow and deny lists), then one onnxruntime batch over
the survivors for P(success), expected seconds from live telemetry, and the policy's
choice. With no usable artifact, a documented heuristic stands in
(`selector_model.policy`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import numpy as np
from aiohttp import web

from proxy import go_json
from proxy.aiohttp_internals import state_get
from proxy.auth import KEY_REQUEST
from proxy.backends import (
    BackendPool,
    BackendState,
    NoBackend,
    normalize_model,
    source,
    valid_name,
    without_local,
)
from proxy.config import Config
from proxy.config_selector import Profile, Variant
from proxy.continuations import Continuations, Conversation, Conversations, conversation
from proxy.experiments import assign
from proxy.memory import Memory, Terms
from proxy.registry import Registry
from selector_model import artifact as artifact_module
from selector_model import features, request_body
from selector_model.catalog.names import is_safety_classifier
from selector_model.catalogue_prior import spreads, with_catalogue
from selector_model.evidence import Evidence
from selector_model.features import Candidate
from selector_model.kind import kind_of
from selector_model.policy import (
    UNKNOWN_MARGIN,
    Decision,
    heuristic_p_success,
    rank,
    size_anchor,
)
from selector_model.posterior import choose
from selector_model.scorer import Scorer
from selector_model.telemetry import Telemetry

AUTO = "auto"
# The tokens an answer is expected to take until a model has finished one (then its
# own mean, `selector_model.telemetry`); a request's limit caps either.
DEFAULT_OUTPUT_TOKENS = 256
# A token limit below this leaves a model that thinks no room for its answer: its
# thinking comes first and takes hundreds of tokens even on the simplest questions
# (`selector_model.telemetry.THINKING_TOKENS`), and Ollama counts it in the limit, so
# an answer cut there is empty (an editor's completion, a chat UI's title).
THINKING_ROOM = DEFAULT_OUTPUT_TOKENS
GENERATE_PATH = "/api/generate"
_LOG_TOKENS = features.REQUEST_FEATURES.index("log_est_tokens")
_LOG_CHARS = features.REQUEST_FEATURES.index("log_chars")


# Why a model that lists no `completion` is no candidate, where a request finds none:
# Ollama answers a chat or generate with one "does not support chat" (or generate).
EMBEDDING_ONLY = "an embedding model: it neither chats nor generates"
NOT_GENERATING = "lists no completion: it neither chats nor generates"


class AutoError(Exception):
    """The request cannot be routed automatically; a 400 in Ollama's shape."""

    status = 400

    def answer(self, requested: str) -> str:
        """The error message for a request that named `auto` as `requested`."""
        return str(self)


class UnknownProfile(AutoError):
    """`auto:<name>` where no profile is configured as `name`: a model that does not
    exist, which Ollama answers on every route with 404 "model 'x' not found", the name
    as the request spelled it (clients read the 404 as "pull it or pick another")."""

    status = 404

    def answer(self, requested: str) -> str:
        return f"model '{requested}' not found ({self})"


@dataclass
class Choice:
    decision: Decision
    request_features: list[float]
    candidate: Candidate  # the chosen model, as the selector saw it
    names: Sequence[str] = ()  # the candidates, in the order of `terms`
    terms: Terms | None = None  # what loading adds to each candidate
    # A chat request's conversation (`proxy.continuations`): its digest, remembered with
    # the model that answers it, and the model credited as holding its earlier turns.
    conversation: int | None = None
    held_by: str | None = None

    def records(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The decision's record and the chosen candidate's (`Decided.settle`)."""
        return self.decision.record(), self.candidate.to_record()

    def loading(self, name: str) -> dict[str, Any]:
        """The load and eviction terms of candidate `name` (explain shows them)."""
        if self.terms is None or name not in self.names:
            return {}
        return self.terms.describe(list(self.names).index(name))


def profile_of(model: str, default: str) -> str | None:
    """The profile an `auto` model name asks for, or None for a real model name. A
    `:local` source suffix asks for the model on the backend, which for `auto` is the
    proxy's own: `auto:best:local` is `auto:best`. A name Ollama cannot parse
    (`auto:../x`, `auto:a b`) is no profile but Ollama's to answer, as any such name."""
    lowered = without_local(model).strip().lower()
    if not lowered.startswith(AUTO) or not valid_name(source(model)[0]):
        return None
    if lowered in (AUTO, AUTO + ":latest"):
        return default
    if lowered.startswith(AUTO + ":"):
        # `auto:` names nothing (Ollama's model.ParseName finds its tag missing): as any
        # name it cannot parse, it is no profile.
        return lowered[len(AUTO) + 1 :] or None
    return None


def user_key(request: web.Request) -> str:
    """Who is asking, for sticky experiment variants: X-Autoroute-User, else the
    client's address."""
    return request.headers.get("X-Autoroute-User") or request.remote or ""


def conversation_scope(request: web.Request) -> str:
    """Whose conversations a request continues (`proxy.continuations`: a chat's, and the
    `context` an `/api/generate` answer returned): the client
    (`user_key`) within its API key, the key itself by its SHA-256, as the prompts it
    retries and its cached answers go. X-Autoroute-User is the client's word: a client
    of another key naming the same user (or sending none from the same address) must
    not be credited what this one's conversations hold, nor read in explain's `held_by`
    which model answered them."""
    key = state_get(request, KEY_REQUEST)
    user = user_key(request)
    return user if key is None else f"{key.sha256} {user}"


# Ollama's Anthropic layer drops `thinking` for a model without it instead of failing.
_RELAXED_THINKING = frozenset({"/v1/messages"})


def required_capabilities(asks: request_body.Asks, path: str) -> tuple[str, ...]:
    """The capabilities a model needs to serve a request that `asks` this on `path`, as
    Ollama's handler checks them: tools listed need `tools`, an image `vision`, a
    suffix `insert`, thinking asked for `thinking` (but on a route whose handler drops
    it for a model without it)."""
    needs: list[str] = []
    if asks.tools:
        needs.append("tools")
    if asks.images:
        needs.append("vision")
    if asks.insert:
        needs.append("insert")
    if asks.thinking and path not in _RELAXED_THINKING:
        needs.append("thinking")
    return tuple(needs)


class Reading(NamedTuple):
    """What `decide` reads of a request body: one pass per content part, a Python call
    each, so that a body of hundreds of thousands of parts takes a good part of a second
    to read (`reading_off_loop` reads a large one in a reader thread)."""

    features: list[float]  # `features.request_features`
    asks: request_body.Asks  # `request_body.asks` of the route's fields
    limit: float | None  # `request_body.route_output_limit`
    # `request_body.prompt_tokens`; None: not read yet, and read only where a
    # candidate's context may not hold the prompt (`AutoRouter._eligible_for`).
    prompt_tokens: float | None
    # The chat's `conversation` as `whose` (`conversation_owner`) continues it; not read
    # yet where `whose` is None.
    whose: str | None = None
    talk: Conversation | None = None


def conversation_owner(user: str, scope: str | None) -> str:
    """Whose conversations a request continues: `scope` (`conversation_scope`), else
    `user`."""
    return user if scope is None else scope


def read_request(
    path: str, doc: Mapping[str, Any], tokens: bool = False, whose: str | None = None
) -> Reading:
    """The `Reading` of a request body on `path`; `tokens`: its prompt's tokens too;
    `whose`: its conversation too, as theirs."""
    talk = None if whose is None else conversation(whose, path, doc.get("messages"))
    return Reading(
        features.request_features(path, doc),
        request_body.asks(path, doc),
        request_body.route_output_limit(path, doc),
        request_body.prompt_tokens(path, doc) if tokens else None,
        whose,
        talk,
    )


async def reading_off_loop(
    path: str, doc: Mapping[str, Any], size: int, whose: str | None = None
) -> Reading:
    """`read_request` for a handler, of a body of `size` bytes: in a reader thread when
    the body is large (`go_json.off_loop`), as its parsing and its limits were. The
    prompt's tokens are read there too: once the body is in the thread, reading them is
    cheaper than coming back for them where a context is short of the prompt; so is the
    conversation `whose` it is, which writes each message again (a picture on one is
    megabytes)."""
    large = size > go_json.INLINE_BYTES
    return await go_json.off_loop(size, read_request, path, doc, large, whose)


@dataclass(frozen=True)
class Eligible:
    """The candidates that pass the hard filters, with what `decide` reads of each.
    Shared by the requests that filter alike: nothing may change it."""

    candidates: tuple[Candidate, ...]
    names: list[str]
    backends: list[str]  # where each would most likely run
    filtered: dict[str, str]  # model: why it was left out
    min_context: float  # the smallest context among `candidates` (inf: none)


def _room_to_answer(eligible: Eligible, thinking_off: bool, limit: float) -> Eligible:
    """`eligible` without the models that would think under a token limit that leaves
    no room for an answer after thinking (`THINKING_ROOM`), as long as one that would
    not think remains: Ollama makes a model with `thinking` think unless the request
    turns it off (`thinking_off`), and one that thinks always whatever it says."""
    thinks = [
        "thinking" in c.capabilities and (c.thinks_always or not thinking_off)
        for c in eligible.candidates
    ]
    if all(thinks) or not any(thinks):
        return eligible
    why = f"thinks first, and at most {int(limit)} tokens leave its answer no room"
    kept = [c for c, t in zip(eligible.candidates, thinks, strict=True) if not t]
    backends = [b for b, t in zip(eligible.backends, thinks, strict=True) if not t]
    dropped = {c.name: why for c, t in zip(eligible.candidates, thinks, strict=True) if t}
    return Eligible(
        candidates=tuple(kept),
        names=[c.name for c in kept],
        backends=backends,
        filtered=eligible.filtered | dropped,
        min_context=min(c.context_length for c in kept),
    )


@dataclass(frozen=True, slots=True)
class ProfileNames:
    """A profile's allow and deny lists and default model as normalised model names.
    It holds the profile, so the profile's id (its cache key) stays its own."""

    profile: Profile
    allow: frozenset[str]
    deny: frozenset[str]
    default_model: str  # "" for none

    @classmethod
    def of(cls, profile: Profile) -> ProfileNames:
        return cls(
            profile,
            frozenset(normalize_model(m) for m in profile.allow),
            frozenset(normalize_model(m) for m in profile.deny),
            normalize_model(profile.default_model) if profile.default_model else "",
        )


@dataclass(frozen=True, slots=True)
class _Filtered:
    """A cached `Eligible`, with the candidate list and the profile it was filtered
    from: held here, their ids (the cache key) stay theirs."""

    listed: list[Candidate]
    profile: Profile
    eligible: Eligible


class AutoRouter:
    def __init__(self, config: Config, backends: BackendPool, registry: Registry) -> None:
        self.config = config.selector
        self.backends = backends
        self.registry = registry
        self.telemetry = Telemetry()
        # What each backend has loaded and what loading a model costs.
        self.memory = Memory(config, backends, registry, self.telemetry)
        self.scorer = Scorer(artifact_module.resolve(self.config.artifact))
        learning = self.config.learning
        self.rng = np.random.default_rng(learning.seed or None)
        # What the proxy learned from its own traffic, per kind of prompt and model:
        # read here from memory, kept up to date by `proxy.learning.Learner`.
        self.evidence = Evidence()
        # Which model wrote each /api/generate context `auto` answered with.
        self.continuations = Continuations()
        # Which model answered each chat conversation `auto` chose the model of.
        self.conversations = Conversations()
        self.decisions = 0
        # Per profile object: its lists and default model as model names.
        self._profiles: dict[int, ProfileNames] = {}
        self._known: tuple[object, frozenset[str]] = (None, frozenset())
        # Per candidate tuple and known set: which candidates are known, and spreads.
        self._spread: tuple[object, object, list[bool], list[float]] = (None, None, [], [])
        # The hard filters' result, but for context length, per (candidate list, profile,
        # API key's list, needs): the registry keeps its list while nothing changes, so
        # a request does not filter nor look up each candidate again.
        self._eligible: dict[tuple[object, ...], _Filtered] = {}

    def profile(self, name: str) -> Profile:
        """The profile `auto:<name>` asks for; AutoError naming those configured when
        there is none."""
        profile = self.config.profiles.get(name)
        if profile is None:
            configured = ", ".join(f"auto:{p}" for p in sorted(self.config.profiles))
            raise UnknownProfile(f"auto's profiles here: {configured}")
        return profile

    def decide(
        self,
        path: str,
        doc: Mapping[str, Any],
        profile_name: str,
        user: str = "",
        key_models: frozenset[str] | None = None,
        reading: Reading | None = None,
        scope: str | None = None,
    ) -> Choice:
        """`user`: who asks, for experiments (`user_key`). `key_models`: the API key's
        allow-list (normalised names), None for any. `reading`: what `read_request`
        reads of `doc`, read here when not given. `scope`: whose conversations the
        request continues (`conversation_scope`), `user` when not given."""
        profile = self.profile(profile_name)
        if reading is None:
            reading = read_request(path, doc)
        request = reading.features
        experiments = self.config.experiments
        assigned = assign(experiments, user, path, profile_name, request) if experiments else None
        if (
            assigned is not None
            and key_models is not None
            and not self._serves_key(assigned.config, key_models)
        ):
            # The variant cannot serve this API key: the request is not in the
            # experiment (recorded under the variant, it would count another model's
            # answer for it, or a refusal, and explain would name the variant).
            assigned = None
        pinned = ""
        if assigned is not None:
            variant = assigned.config
            profile = self.config.profiles.get(variant.profile, profile)
            pinned = normalize_model(variant.model) if variant.model else ""
        prompt_tokens = math.expm1(request[_LOG_TOKENS])
        # Read from the route's own fields, not from the features, which read every
        # API's fields at once: a field the route's request lacks asks nothing.
        asks = reading.asks
        needs = required_capabilities(asks, path)
        default_model = self._profile(profile).default_model
        chars = math.expm1(request[_LOG_CHARS])
        eligible = self._eligible_for(profile, key_models, needs, chars, path, doc, reading)
        limit = reading.limit
        if limit is not None and limit < THINKING_ROOM and not asks.thinking:
            eligible = _room_to_answer(eligible, asks.thinking is False, limit)
        if not eligible.candidates:
            self._none_left(profile_name, key_models, eligible.filtered, needs)

        candidates = eligible.candidates
        artifact = self.scorer.artifact
        if artifact is not None:
            known = self._known_models(artifact)
            is_known, spread = self._spreads(eligible, known)
            p_success = with_catalogue(
                self.scorer.p_success(artifact, request, candidates), request, candidates, is_known
            )
            unknown_margin = float(artifact.policy.get("unseen_margin", UNKNOWN_MARGIN))
        else:
            p_success = [heuristic_p_success(c) for c in candidates]
            known = frozenset()
            unknown_margin = UNKNOWN_MARGIN
            spread = None
        terms = self.memory.terms(eligible.backends, candidates)
        seconds = self.telemetry.expected_seconds_many(
            eligible.backends,
            candidates,
            prompt_tokens,
            DEFAULT_OUTPUT_TOKENS,
            limit,
            terms.load_seconds,
            asks.thinking is not False,
        )
        whose = conversation_owner(user, scope)
        talk = reading.talk
        if reading.whose != whose:
            talk = conversation(whose, path, doc.get("messages"))
        held = None
        if talk is not None and talk.before is not None:
            held = self._credit_held(talk, eligible, terms, seconds, prompt_tokens)
        ranking = rank(eligible.names, p_success, seconds, profile.cost_weight, known, spread)
        if terms.penalty and any(terms.evicts):
            # Evicting a model in use is worth it only for a lead above the penalty.
            evicting = {n for n, e in zip(eligible.names, terms.evicts, strict=True) if e}
            for scored in ranking:
                if scored.name in evicting:
                    scored.utility -= terms.penalty
            ranking.sort(key=lambda s: s.utility, reverse=True)
        if not default_model and profile.cost_weight == 0 and known.isdisjoint(eligible.names):
            # A quality-only profile among models the artifact never saw: size is the
            # surest sign of quality, so the best-ranked of the largest's size is the
            # anchor another must clearly beat. Profiles that weigh cost keep their own
            # trade-off.
            default_model = size_anchor(ranking, candidates, terms.evicts)
        kind = kind_of(request)
        learning = self.config.learning
        chose = choose(
            ranking,
            self.evidence.of(kind),
            profile.exploration,
            self.rng,
            default_model,
            self.config.min_gain,
            unknown_margin,
            learning.prior_strength,
            learning.draws,
            learning.known_prior_strength,
            self.evidence if learning.model_level else None,
            profile.tolerance,
            learning.optimism,
            profile.max_loss,
            self.evidence,
            learning.baseline_discount,
        )
        ranking, chosen, reason, propensity = (
            chose.ranking,
            chose.chosen,
            chose.reason,
            chose.propensity,
        )
        if artifact is None and reason not in ("explore", "learned"):
            reason = "fallback"
        if assigned is not None:
            reason = "experiment"
            chosen = next((s for s in ranking if s.name == pinned), chosen)
        if path == GENERATE_PATH and "context" in doc:
            # A conversation goes on with the model whose token ids its context holds.
            wrote = self.continuations.model_of(whose, doc["context"])
            kept = next((s for s in ranking if s.name == wrote), None)
            if kept is not None:
                chosen, reason, propensity = kept, "context", 1.0
        self.decisions += 1
        decision = Decision(
            chosen=chosen.name,
            reason=reason,
            profile=profile_name,
            ranking=ranking,
            filtered=eligible.filtered,
            propensity=propensity,
            artifact_version=artifact.version if artifact else None,
            experiment=assigned.name if assigned else None,
            variant=assigned.variant if assigned else None,
            kind=kind,
            known_strength=chose.known_strength,
        )
        return Choice(
            decision,
            request,
            candidates[eligible.names.index(chosen.name)],
            eligible.names,
            terms,
            talk.whole if talk is not None else None,
            held,
        )

    def _none_left(
        self,
        profile_name: str,
        key_models: frozenset[str] | None,
        filtered: Mapping[str, str],
        needs: tuple[str, ...],
    ) -> NoReturn:
        """Why no model is left for a request that needs `needs`: NoBackend when the
        backends are the cause (`_check_available`, `down_with`), else AutoError naming
        each model the profile and the API key's list `key_models` leave out
        (`filtered`) or that does not generate."""
        others = self.not_generating(key_models)
        self._check_available(bool(others))
        down = self.down_with(self.profile(profile_name), key_models, needs)
        if down:
            raise self.backends.unavailable(down)
        refused = {**filtered, **others}
        # Named as the model lists spell them, as explain's `filtered` names them.
        spelled = self.registry.spelled
        reasons = "; ".join(f"{spelled(m)}: {why}" for m, why in sorted(refused.items()))
        raise AutoError(
            f"no model can serve this request with auto:{profile_name}"
            + (f" ({reasons})" if reasons else " (none of this API key's models is available)")
        )

    def not_generating(self, key_models: frozenset[str] | None) -> dict[str, str]:
        """The models a usable backend lists that are no candidates, since they neither
        chat nor generate, each with why; of those the API key's list `key_models`
        holds alone (see `_filter`)."""
        return {
            name: EMBEDDING_ONLY if "embedding" in listed else NOT_GENERATING
            for name, listed in self.registry.not_generating().items()
            if key_models is None or name in key_models
        }

    def check_loadable(
        self, profile_name: str, key_models: frozenset[str] | None, needs: tuple[str, ...] = ()
    ) -> None:
        """For a load of `auto:<profile_name>` (`ollama run auto`) asking for the
        capabilities `needs`, which chooses no model: what `decide` raises where no model
        is left for it, as Ollama refuses to load a model that does not complete text (an
        embedding model) before it answers "load". Nothing when the profile has a model
        to choose."""
        profile = self.profile(profile_name)
        eligible = self._filter(self.registry.candidates(), profile, key_models, needs, 0.0)
        if not eligible.candidates:
            self._none_left(profile_name, key_models, eligible.filtered, needs)

    def down_with(
        self, profile: Profile, key_models: frozenset[str] | None, needs: tuple[str, ...]
    ) -> list[BackendState]:
        """The backends no request may use now (their circuit open) that list a model
        `auto:<profile>` could choose, for the API key's list `key_models`, with the
        capabilities `needs`: a request only such a model serves is theirs once they are
        back, as for a request naming that model (a 503), not one no model can serve."""
        down = self._down()
        if not down:
            return []
        serving = {
            c.name
            for c in self._listed_by(down, profile, key_models)
            if c.capabilities.issuperset(needs)
        }
        return [s for s in down if s.models and not serving.isdisjoint(s.models)]

    async def decided_again(
        self,
        none: NoBackend,
        path: str,
        doc: Mapping[str, Any],
        profile_name: str,
        user: str = "",
        key_models: frozenset[str] | None = None,
        reading: Reading | None = None,
        scope: str | None = None,
    ) -> Choice:
        """`decide` once more, where it raised `none` for want of a backend: those that
        may be back on their port that list a model the profile could choose
        (`unawaited` leaves the others out; no model is chosen yet) are checked again
        at once (`BackendPool.rechecked`). Called from `decide`'s `except` alone, so
        that a request with a backend to choose costs nothing more."""
        again = functools.partial(
            self.decide, path, doc, profile_name, user, key_models, reading, scope
        )
        unawaited = self.unawaited(profile_name, key_models)
        return await self.backends.rechecked(none, again, exclude=unawaited)

    def unawaited(self, profile: str, key_models: frozenset[str] | None) -> list[BackendState]:
        """The backends no request may use now that list no model `auto:<profile>` could
        choose for the API key's list `key_models`, where one that is down lists such a
        model (`down_with`): what a request of `auto` that found no backend leaves out of
        its check of those that may be back (`BackendPool.rechecked`), as a request
        naming a model leaves out those whose list lacks it. Back, they could not take
        the request, and checking them only holds its answer (the 503, or the cloud's
        where one stands in); their periodic check brings them back. With none down
        listing such a model, none is left out: one restarted may list others since."""
        awaited = {id(s) for s in self.down_with(self.profile(profile), key_models, ())}
        if not awaited:
            return []
        return [s for s in self._down() if id(s) not in awaited]

    def awaited(self, profile: str, key_models: frozenset[str] | None) -> list[Candidate]:
        """The models `auto:<profile>` could choose, for the API key's list `key_models`,
        that backends no request may use now list (`down_with`): a request that only
        they serve waits for them (a 503), it is not refused."""
        down = self._down()
        if not down:
            return []
        return self._listed_by(down, self.config.profiles[profile], key_models)

    def _down(self) -> list[BackendState]:
        """The backends no request may use now (their circuit open) that list models."""
        usable = {id(s) for s in self.backends.usable()}
        return [s for s in self.backends.states if id(s) not in usable and s.models]

    def _listed_by(
        self, states: list[BackendState], profile: Profile, key_models: frozenset[str] | None
    ) -> list[Candidate]:
        """The generation models `states` list that `profile` may choose for the API key's
        list `key_models`."""
        listed: set[str] = set()
        for state in states:
            listed |= state.models or frozenset()
        names = self._profile(profile)
        return [
            info.candidate
            for name, info in self.registry.models.items()
            if name in listed
            and info.generates
            and (key_models is None or name in key_models)
            and not self._never(name, names)
        ]

    def _credit_held(
        self,
        talk: Conversation,
        eligible: Eligible,
        terms: Terms,
        seconds: list[float],
        prompt_tokens: float,
    ) -> str | None:
        """The model that answered the turn `talk` continues, where it is a candidate
        and still loaded, its `seconds` less those of the part of the prompt its
        runner holds: the conversation up to that turn, which Ollama does not evaluate
        again (`proxy.continuations`), the same share of the prompt's tokens as of the
        messages' bytes."""
        held = self.conversations.model_of(talk)
        if held is None or held not in eligible.names:
            return None
        i = eligible.names.index(held)
        if terms.load_seconds[i] > 0:
            return None  # unloaded since: its runner holds nothing
        seconds[i] -= self.telemetry.prompt_seconds(
            eligible.backends[i], eligible.candidates[i], prompt_tokens * talk.share
        )
        return held

    def _check_available(self, others: bool) -> None:
        """No model at all is the backends' state, not the request's fault: a 503
        (NoBackend) naming why, rather than the 400 of a request no model fits. A
        backend that lists only models that do not generate (`others`: embedding,
        image generation) is ready: a chat with one is the request's 400, as Ollama's
        "does not support chat"."""
        if not self.backends.usable():
            raise self.backends.unavailable()
        if not self.registry.candidates() and not others:
            raise NoBackend("no model available: no healthy backend lists a generation model")

    def _eligible_for(
        self,
        profile: Profile,
        key_models: frozenset[str] | None,
        needs: tuple[str, ...],
        chars: float,
        path: str,
        doc: Mapping[str, Any],
        reading: Reading,
    ) -> Eligible:
        """`_filter` of the registry's candidates: its result but for context length is
        cached (see `self._eligible`), and only a prompt longer than some candidate's
        context is filtered again, for itself alone. A prompt's tokens are the UTF-8
        bytes over four of the texts the route's request has
        (`request_body.prompt_tokens`), never more than `chars` (every shape's
        characters, the features'): only a prompt of more characters than a context
        holds is counted, unless `reading` has them already."""
        listed = self.registry.candidates()
        key = (id(listed), id(profile), key_models, needs)
        entry = self._eligible.get(key)
        if entry is None:
            if len(self._eligible) >= 256 or not any(
                cached.listed is listed for cached in self._eligible.values()
            ):
                # The registry makes a new list at each refresh: entries for an older
                # one are never asked for again, nor the scorer's rows for its
                # candidates.
                self._eligible.clear()
                self.scorer.forget_rows()
            entry = self._eligible[key] = _Filtered(
                listed, profile, self._filter(listed, profile, key_models, needs, 0.0)
            )
        if chars > entry.eligible.min_context:
            prompt_tokens = reading.prompt_tokens
            if prompt_tokens is None:
                prompt_tokens = request_body.prompt_tokens(path, doc)
            if prompt_tokens > entry.eligible.min_context:
                return self._filter(listed, profile, key_models, needs, prompt_tokens)
        return entry.eligible

    def _filter(
        self,
        listed: Sequence[Candidate],
        profile: Profile,
        key_models: frozenset[str] | None,
        needs: tuple[str, ...],
        prompt_tokens: float,
    ) -> Eligible:
        """The hard filters: the API key's and the profile's lists, safety classifiers
        and remote (cloud) models unless the profile names them, the capabilities the
        request needs, a context that holds the prompt, instruct models before base
        ones, each model's weights once."""
        names = self._profile(profile)
        eligible: list[Candidate] = []
        filtered: dict[str, str] = {}
        short: list[Candidate] = []  # eligible but for a context that holds the prompt
        for candidate in listed:
            name = candidate.name
            if key_models is not None and name not in key_models:
                continue  # not even named: a key must not learn of models it cannot use
            if refused := self._never(name, names):
                filtered[name] = refused
            elif needs and not candidate.capabilities.issuperset(needs):
                missing = [n for n in needs if n not in candidate.capabilities]
                filtered[name] = "lacks " + ", ".join(missing)
            elif candidate.context_length < prompt_tokens:
                filtered[name] = (
                    f"context {candidate.context_length} < ~{int(prompt_tokens)} prompt tokens"
                )
                short.append(candidate)
            else:
                eligible.append(candidate)
        if not eligible and short:
            # Ollama serves a prompt longer than its context, cut to fit (`truncate`
            # defaults to true; with false the runner refuses it, as the backend then
            # does): a prompt no context holds goes where the least of it is cut.
            longest = max(c.context_length for c in short)
            eligible = [c for c in short if c.context_length == longest]
            for candidate in eligible:
                del filtered[candidate.name]
        if "insert" not in needs and any(c.is_instruct for c in eligible):
            eligible = self._instruct_first(eligible, names, filtered)
        eligible = self._weights_once(eligible, names, filtered)
        backend_of = self.registry.backend_of
        return Eligible(
            candidates=tuple(eligible),
            names=[c.name for c in eligible],
            backends=[backend_of.get(c.name, "") for c in eligible],
            filtered=filtered,
            min_context=min((c.context_length for c in eligible), default=math.inf),
        )

    def _never(self, name: str, names: ProfileNames) -> str:
        """Why the profile `names` never lets `auto` choose `name`, whatever the
        request ("" when it may): a name `auto` answers itself, its allow and deny lists,
        a safety classifier or a remote (cloud) model it does not name."""
        if profile_of(name, self.config.default_profile) is not None:
            # Sent and answered as `auto` names it, a name that reaches `auto`, not it;
            # another autoroute's `auto` behind this one is no model to rank.
            return "named as auto is: that name reaches auto, not this model"
        allow = names.allow
        if allow and name not in allow:
            return "not in the profile's allow list"
        if name in names.deny:
            return "in the profile's deny list"
        named = name in allow or name == names.default_model
        if is_safety_classifier(name) and not named:
            # Its answer to any prompt is "safe" or "unsafe".
            return "a safety classifier: it labels a conversation, not answers it"
        if (remote := self._remote(name)) and not named:
            # The prompt would leave the backends the operator runs.
            return f"runs on {remote}: auto sends a prompt there only if named"
        return ""

    def choosable(self, profile: str, key_models: frozenset[str] | None) -> list[Candidate]:
        """The candidates `auto:<profile>` may choose for some request, for an API key
        whose list is `key_models`: what it offers (the capabilities a request may ask
        for, the longest prompt it may send) is theirs."""
        names = self._profile(self.config.profiles[profile])
        return [
            c
            for c in self.registry.candidates()
            if (key_models is None or c.name in key_models) and not self._never(c.name, names)
        ]

    def _remote(self, name: str) -> str:
        """Where `name` runs when not on its backend's machine ("" when it does)."""
        info = self.registry.models.get(name)
        return info.remote if info is not None else ""

    @staticmethod
    def _instruct_first(
        eligible: list[Candidate], names: ProfileNames, filtered: dict[str, str]
    ) -> list[Candidate]:
        """Without a chat template a base (pretrained) model continues a conversation
        rather than answering it, and the catalogue cannot tell it from its chat twin:
        while an instruct model is eligible, a base one is left out unless the profile
        names it (its allow list or default model). Fill-in-the-middle requests keep
        them: code completion is what a base coder is for."""
        kept: list[Candidate] = []
        for candidate in eligible:
            name = candidate.name
            if candidate.is_instruct or name in names.allow or name == names.default_model:
                kept.append(candidate)
            else:
                filtered[name] = "a base (pretrained) model, and an instruct one is eligible"
        return kept

    def _weights_once(
        self, eligible: list[Candidate], names: ProfileNames, filtered: dict[str, str]
    ) -> list[Candidate]:
        """Names of one digest (`ollama cp`, or `llama3.2` and `llama3.2:3b` pulled
        both) are one model's weights: ranked twice, its feedback would be split between
        them and exploration would try it twice. One eligible name stands for them,
        chosen by name alone so that it is the same at every request and refresh and
        the evidence gathers under it: the profile's default model, else an explicit
        tag before `:latest` (which a later pull may point at other weights), else the
        first in sorted order. A model without a digest is never merged."""
        models = self.registry.models
        by_digest: dict[str, list[str]] = {}
        for candidate in eligible:
            info = models.get(candidate.name)
            if info is not None and info.digest:
                by_digest.setdefault(info.digest, []).append(candidate.name)
        dropped: dict[str, str] = {}
        for same in by_digest.values():
            if len(same) > 1:
                kept = min(same, key=lambda n: (n != names.default_model, n.endswith(":latest"), n))
                dropped |= {n: f"the same weights as {kept}" for n in same if n != kept}
        if not dropped:
            return eligible
        filtered |= dropped
        return [c for c in eligible if c.name not in dropped]

    def _serves_key(self, variant: Variant, key_models: frozenset[str]) -> bool:
        """Whether an experiment's variant can serve a key with the model list
        `key_models`: the model it pins is on the list, and the profile it routes with
        (if any) allows one of the list's models."""
        if variant.model and normalize_model(variant.model) not in key_models:
            return False
        profile = self.config.profiles.get(variant.profile)
        if profile is None:
            return True  # the request's own profile
        names = self._profile(profile)
        return any(
            (not names.allow or m in names.allow) and m not in names.deny for m in key_models
        )

    def _profile(self, profile: Profile) -> ProfileNames:
        """`ProfileNames` of a profile, made once per profile object."""
        entry = self._profiles.get(id(profile))
        if entry is None:
            if len(self._profiles) >= 256:
                self._profiles.clear()
            entry = self._profiles[id(profile)] = ProfileNames.of(profile)
        return entry

    def _spreads(self, eligible: Eligible, known: frozenset[str]) -> tuple[list[bool], list[float]]:
        """Which candidates the artifact knows, and how far each one's P may be off
        (`catalogue_prior.spreads`), kept while the candidates and the artifact stay."""
        cached = self._spread
        if cached[0] is not eligible.candidates or cached[1] is not known:
            is_known = [name in known for name in eligible.names]
            cached = (eligible.candidates, known, is_known, spreads(eligible.candidates, is_known))
            self._spread = cached
        return cached[2], cached[3]

    def _known_models(self, artifact: artifact_module.Artifact) -> frozenset[str]:
        if self._known[0] is not artifact:
            # Known: the models whose outcomes it was fitted on (its training table),
            # whose P(success) deserves the stronger prior in `choose`.
            self._known = (artifact, frozenset(artifact.known_models) | frozenset(artifact.models))
        return self._known[1]

    def observe(self, backend: str, model: str, stats: Mapping[str, int | str]) -> None:
        info = self.registry.models.get(normalize_model(model))
        if info is not None and stats:
            self.telemetry.observe(backend, info.candidate, stats)
        state = self.memory.by_label.get(backend)
        if state is not None and stats:
            state.model_answered()

    def status(self) -> dict[str, Any]:
        artifact = self.scorer.artifact
        return {
            "mode": "ml" if artifact else "fallback",
            "artifact": artifact.describe() if artifact else None,
            "artifact_error": self.scorer.error,
            "schema_version": features.SCHEMA_VERSION,
            "profiles": {
                name: {"cost_weight": p.cost_weight, "default_model": p.default_model or None}
                for name, p in self.config.profiles.items()
            },
            "default_profile": self.config.default_profile,
            "candidates": [c.name for c in self.registry.candidates()],
            "decisions": self.decisions,
            "telemetry": self.telemetry.snapshot(),
            "backends": self.memory.status(),
            "time": time.time(),
        }
