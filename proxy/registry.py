"""The models `auto` can choose from, as the selector sees them.

Built after every background refresh of the backends: names and details from
`/api/tags`, capabilities and context length from `/api/show` (fetched once per
name and digest and cached with aiocache: the same weights under one name on several
backends cost one fetch), loaded state from `/api/ps`; what is known of each model
(size, area scores, specialities, release date, with its uncertainty) from the model
catalogue, looked up by name and details, with the operator's `selector.models`
overrides applied. A model whose `/api/show` cannot be read (a server without the
route, a transient error, no answer within a backend's refresh bound) is still a
candidate, described from its `/api/tags` entry and the catalogue; its show is asked
again at every refresh until it answers. The request path only reads `self.models`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from aiocache import SimpleMemoryCache

from proxy import ollama_answers
from proxy.backends import BackendPool, BackendState, entry_model, normalize_model
from proxy.config import Config, ConfigError
from proxy.upstream import UpstreamError
from selector_model.catalog import Catalog, Measured, ModelKnowledge, names, ollama_capabilities
from selector_model.catalog.catalog import CatalogError
from selector_model.features import (
    AREAS,
    Candidate,
    family_of,
    params_from,
    quant_bits_from,
)
from selector_model.profiling.store import StoreCache

log = logging.getLogger("autoroute.registry")


@dataclass(frozen=True)
class ModelInfo:
    """A model as `auto` sees it. For a name backends list with other weights, the
    candidate is what any version may be (`_on_any_version`), and what describes one
    version's weights alone (Ollama's details, the catalogue's knowledge, what said the
    capabilities) is each version's own, in `versions`: here {}, None, "versions"."""

    candidate: Candidate  # with loaded=False; `Registry.candidates` sets it
    details: dict[str, Any]
    # Whether it chats and generates (`completion` among its capabilities), which Ollama
    # checks first: neither an embedding model nor an image generation one does.
    generates: bool
    knowledge: ModelKnowledge | None = None
    # Where a remote model runs (an Ollama cloud model's `remote_host`); "" when local.
    remote: str = ""
    # What said the candidate's capabilities (`CAPABILITIES_FROM`), for explain: all but
    # "show" are read off something else than the list Ollama gives; "versions": every
    # version's list, where backends list other weights under the name.
    capabilities_from: str = "show"
    # The weights' digest as `/api/tags` lists it, the same on every backend that lists
    # the name; "" when unknown or when backends list other weights under the name.
    digest: str = ""
    # The name as `/api/tags` spells it (`qwen3:8b-q4_K_M`), where the registry keys it
    # as Ollama reads it, folded (`normalize_model`); "" when the entry does not say.
    listed: str = ""
    # Where backends list other weights under the name: each version as it would be
    # alone (`model_info` of its tags entry and show), the first listed first; else ().
    versions: tuple[ModelInfo, ...] = ()


# Where a model's capabilities come from, in the order `model_info` tries them: the
# list show gives, the tags entry's, what an Ollama before 0.6.4 decides them from
# (show's template and weights), the catalogue's knowledge of the model.
CAPABILITIES_FROM = ("show", "tags", "template", "catalogue")


def catalog_for(config: Config) -> Catalog:
    """The configured catalogue (`selector.catalog`, else the shipped one) with the
    operator's `selector.models` descriptions."""
    path = config.selector.catalog
    try:
        catalog = Catalog.load(Path(path)) if path else Catalog.shipped()
    except (OSError, yaml.YAMLError, CatalogError) as exc:
        reason = f"{path}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"selector.catalog: {reason}", key="selector.catalog") from None
    models = {name: entry.given() for name, entry in config.selector.models.items()}
    try:
        return catalog.with_overrides(models) if models else catalog
    except CatalogError as exc:
        raise ConfigError(f"selector.models: {exc}", key="selector.models") from None


def _weights_context(show: dict[str, Any] | None) -> int:
    """The context the weights take (`<architecture>.context_length` in show's
    `model_info`); 0 when show does not say it."""
    info = (show or {}).get("model_info") or {}
    for key, value in info.items():
        # A map of any values (Go's map[string]any): a count of tokens or nothing.
        if key.endswith(".context_length") and type(value) is int and value > 0:
            return value
    return 0


def _context_length(show: dict[str, Any] | None, knowledge: ModelKnowledge) -> int:
    """The context the weights take, else the catalogue's: a show that could not be
    read or carries no weights (a stand-in server) says nothing of it, and Ollama's
    historical default of 2048 would keep every longer prompt from a model that takes
    it."""
    return _weights_context(show) or knowledge.context_length or 2048


def model_info(
    name: str, tag: dict[str, Any], show: dict[str, Any] | None, catalog: Catalog | None = None
) -> ModelInfo:
    """A model as `auto` sees it: Ollama's details, and the catalogue's knowledge
    (`catalog`, else the shipped catalogue without overrides). `show` is the model's
    /api/show answer, None when it could not be read: the `/api/tags` entry and the
    catalogue then say what show would have. Capabilities are those show lists (Ollama
    leaves an empty list out), else the tags entry's, else those Ollama decides from
    show's template and weights, else the catalogue's."""
    shown = show or {}
    details = shown.get("details") or tag.get("details") or {}
    sources = (
        shown.get("capabilities"),
        tag.get("capabilities"),
        ollama_answers.decided_capabilities(shown),
    )
    found = next((i for i, listed in enumerate(sources) if listed), len(sources))
    source = CAPABILITIES_FROM[found]
    catalog = catalog or Catalog.shipped()
    # What placement reads of a model the catalogue does not list: its details, and the
    # context its weights take, which tells a tune of a recent model from an old model
    # of its architecture and size (Ollama's details do not carry it).
    described = details
    if context := _weights_context(show):
        described = {**details, "context_length": context}
    if source == "catalogue":
        knowledge = catalog.lookup(name, described)
        # Not `insert`: Ollama lists it for a template that reads `.Suffix`
        # (server/images.go), and the catalogue's `code` says a model is good at code,
        # not that its template does (Ollama's own magicoder, starcoder2-instruct and
        # codellama-70b-instruct templates do not). Auto otherwise sends a
        # fill-in-the-middle request only to a model whose show lists insert or whose
        # template reads `.Suffix`; a wrong guess would send it where Ollama answers 400
        # "does not support insert", rather than to a model known to take it or the
        # proxy's own 400 saying why no model can.
        capabilities = frozenset(ollama_capabilities(name, knowledge, insert=False))
    else:
        capabilities = frozenset(sources[found] or ())
        knowledge = catalog.lookup(name, described, capabilities)
    lowered = name.lower()
    reported = params_from(str(details.get("parameter_size") or ""))
    candidate = Candidate(
        name=name,
        family=family_of(name, str(details.get("family") or "")),
        params_b=reported or knowledge.params_b or 7.0,
        quant_bits=quant_bits_from(str(details.get("quantization_level") or "")),
        context_length=_context_length(show, knowledge),
        capabilities=capabilities,
        is_code="code" in lowered or "insert" in capabilities or "code" in knowledge.specialties,
        is_instruct=knowledge.answers_requests(name),
        active_params_b=knowledge.active_params_b,
        areas=tuple(float(knowledge.areas[area]) for area in AREAS),
        specialties=knowledge.specialties,
        release=knowledge.released,
        uncertainty=knowledge.uncertainty,
        area_uncertainty=tuple(float(knowledge.area_uncertainty[area]) for area in AREAS),
        thinks_always=ollama_answers.thinks_always(details, capabilities),
    )
    return ModelInfo(
        candidate,
        dict(details),
        "completion" in capabilities,
        knowledge,
        _remote_host(name, tag, shown),
        source,
        str(tag.get("digest") or ""),
    )


def _remote_host(name: str, tag: dict[str, Any], show: dict[str, Any]) -> str:
    """Where a model that runs off the backend's machine runs: the `remote_host` Ollama
    lists for a cloud model, or, for a name with the `cloud` tag word Ollama gives
    them (`gpt-oss:120b-cloud`) and no host listed, "ollama.com"; "" for a local one."""
    host = show.get("remote_host") or tag.get("remote_host")
    if isinstance(host, str) and host:
        return host
    return "ollama.com" if names.is_cloud(name) else ""


def _contradicted_digests(models: dict[str, ModelInfo]) -> set[str]:
    """Digests listed for models the catalogue knows as of other families or sizes. An
    Ollama digest names weights (`ollama cp` and a second tag of a pull share one), so
    names of one digest are one model; a stand-in server that makes one digest up for
    every model would merge its whole list into one."""
    told: dict[str, set[tuple[str, float]]] = {}
    for info in models.values():
        known = info.knowledge
        if info.digest and known is not None and known.entry:
            told.setdefault(info.digest, set()).add((known.family, known.params_b))
    return {digest for digest, models_told in told.items() if len(models_told) > 1}


def _on_any_version(first: Candidate, others: list[Candidate]) -> Candidate:
    """The candidate a name is where backends list other weights under it (`first`'s
    version and `others`): a request `auto` sends the name runs on any of them (where
    it is loaded, or the least busy), so each field read off a version's show and the
    catalogue's knowledge of it is the one that holds wherever the request runs."""
    every = [first, *others]
    # The heaviest weights (parameters and quantization as one version's): the memory
    # the name takes where it loads and the time an answer takes are those of the
    # version it may run on; lighter figures would place it where it does not fit.
    heaviest = max(every, key=lambda c: (c.active_b * c.quant_bits, c.params_b * c.quant_bits))
    known = [c.areas for c in every]
    return replace(
        first,
        # Named for people (explain, usage events) as the weights it is costed as are.
        family=heaviest.family,
        params_b=heaviest.params_b,
        quant_bits=heaviest.quant_bits,
        active_params_b=heaviest.active_params_b,
        # Only what every version can do: Ollama refuses a request for what the version it
        # runs on lacks (a 400 "does not support tools").
        capabilities=frozenset.intersection(*(c.capabilities for c in every)),
        # The shortest: `auto` leaves a model out for a prompt longer than its context,
        # and a longer one's prompt is cut where the shorter version runs it.
        context_length=min(c.context_length for c in every),
        # A code model (by its template's `.Suffix`, or the catalogue) and one that
        # answers requests rather than continuing a text only where every version is.
        is_code=all(c.is_code for c in every),
        is_instruct=all(c.is_instruct for c in every),
        # Thinks whatever a request says where any version does: a `think: false`
        # request may run there and take its thinking's time.
        thinks_always=any(c.thinks_always for c in every),
        # The catalogue's scores: the lowest per area, as uncertain as the least known
        # version (unknown where one version's are: `candidate_block` scores those).
        areas=(tuple(map(min, *known)) if all(len(a) == len(AREAS) for a in known) else ()),
        area_uncertainty=tuple(
            map(max, *(c.area_uncertainty or (c.uncertainty,) * len(AREAS) for c in every))
        ),
        uncertainty=max(c.uncertainty for c in every),
        specialties=frozenset.intersection(*(c.specialties for c in every)),
        release=min(c.release for c in every),
    )


class Registry:
    def __init__(self, backends: BackendPool, catalog: Catalog | None = None) -> None:
        self.backends = backends
        self.catalog = catalog or catalog_for(backends.config)
        # Per-area results of models profiled on the user's own backends
        # (`autoroute profile`), weighed against the catalogue's published figures by
        # their number of items (`Catalog.with_measured`); the store is re-read only
        # when its file changes.
        self.profiles = StoreCache(backends.config.selector.profiles_path)
        self._measured: dict[str, dict[str, Measured]] = {}
        self._profiled = self.catalog
        self.cache = SimpleMemoryCache()
        self.models: dict[str, ModelInfo] = {}
        backends.listeners.append(self.refresh)
        # The candidate list for the last (models, available, loaded) seen: rebuilt only
        # when one of them changes, not per request.
        self._cached: tuple[object, list[Candidate]] = ((), [])
        self.generation = 0  # bumped by every refresh
        self.backend_of: dict[str, str] = {}
        # (backend, model) whose show failed and has not answered since: warned once.
        self._unshown: set[tuple[str, str]] = set()
        # Digests listed for models of other families or sizes (`_contradicted_digests`).
        self._contradicted: set[str] = set()

    async def _show(self, state: BackendState, name: str, digest: str) -> dict[str, Any] | None:
        """The model's /api/show answer (kept by name and digest), or None when it cannot
        be read; a failure is not kept, so the next refresh asks again. Kept by the
        digest alone, a backend that lists every model under one made-up digest would
        have the first show answer describe them all."""
        key = f"{digest} {name}" if digest else ""
        cached = await self.cache.get(key) if key else None
        if cached is not None:
            return dict(cached)
        failing = (state.label, name)
        try:
            # Bounded as the backend's own refresh is: the registry's refresh is part of
            # every refresh of the backends, and of the proxy's start.
            async with asyncio.timeout(self.backends.refresh_seconds):
                answer = await self.backends.get_json(state, "/api/show", {"model": name})
            show = ollama_answers.shown(answer)
        except (UpstreamError, TimeoutError, OSError, ValueError) as exc:
            # Once until it answers: a server without the route fails every refresh.
            if failing not in self._unshown:
                self._unshown.add(failing)
                log.warning(
                    "show %s on %s failed (%s): described from its tags entry and the "
                    "catalogue until it answers",
                    name,
                    state.label,
                    str(exc) or "timed out",
                )
            return None
        if failing in self._unshown:
            self._unshown.discard(failing)
            log.info("show %s on %s answers again", name, state.label)
        if key:
            await self.cache.set(key, show)
        return show

    def catalogue(self) -> Catalog:
        """The catalogue `auto` places models with: the configured one with the operator's
        descriptions (`catalog_for`) and the profile store's measured areas weighed in. The
        evaluation's replays read it too, so they place a fleet as the proxy would."""
        measured = self.profiles.measured()
        if measured != self._measured:
            self._measured = measured
            self._profiled = self.catalog.with_measured(measured)
        return self._profiled

    async def refresh(self) -> None:
        catalog = self.catalogue()
        # Each model's entries in `/api/tags`, in the backends' order.
        listings: dict[str, list[tuple[BackendState, dict[str, Any]]]] = {}
        for state in self.backends.states:
            for tag in state.tags:
                listings.setdefault(entry_model(tag), []).append((state, tag))
        # The models at once: shows that hang hold the refresh for one bound (`_show`)
        # per backend that lists the model, not one per model. Uncapped: the connection
        # pool opens a connection for each show in flight (nothing queues behind a hung
        # one), Ollama serves each in its own goroutine, and a show is asked only for
        # weights not yet shown or whose show failed.
        described = await asyncio.gather(
            *(self._describe(name, found, catalog) for name, found in listings.items())
        )
        # A model no longer listed is forgotten: listed again, its failure is news.
        self._unshown &= {
            (state.label, name) for name, found in listings.items() for state, _ in found
        }
        models = dict(zip(listings, described, strict=True))
        contradicted = _contradicted_digests(models)
        if contradicted - self._contradicted:
            log.warning(
                "models the catalogue knows as different are listed under one digest (%s): "
                "taken as the backends' made-up digests, not as one model's weights",
                ", ".join(sorted(n for n, i in models.items() if i.digest in contradicted)),
            )
        self._contradicted = contradicted
        if contradicted:
            models = {
                name: replace(info, digest="") if info.digest in contradicted else info
                for name, info in models.items()
            }
        self.set_models(models)

    async def _describe(
        self, name: str, found: list[tuple[BackendState, dict[str, Any]]], catalog: Catalog
    ) -> ModelInfo:
        """The model as the show of the first backend in `found` whose show answers
        describes it (one after another: identical weights are shown once, by digest),
        else as the first backend's tags entry and the catalogue do. Its digest is kept
        only when every backend lists the same weights under the name: `auto` takes
        names of one digest for one model. Where backends list other weights under it
        (each pulled at its own time, the library's template changed since), a request
        `auto` sends it may run on any of them (where it is loaded, or the least busy):
        it is what any version may be (`_on_any_version`), each version described as
        it would be alone, by its own show, and kept so (`ModelInfo.versions`)."""
        # Per digest listed, a tags entry of it and its show (None: none answered).
        versions: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        for state, tag in found:
            digest = str(tag.get("digest") or "")
            if digest in versions and versions[digest][1] is not None:
                continue
            show = await self._show(state, name, digest)
            if digest not in versions or show is not None:
                versions[digest] = (tag, show)
        shown = [v for v in versions.values() if v[1] is not None]
        # With none shown, the first version is the first backend's tags entry.
        first = shown[0] if shown else next(iter(versions.values()))
        tag, show = first
        info = model_info(name, tag, show, catalog)
        if len(versions) > 1:
            others = [
                model_info(name, *version, catalog)
                for version in versions.values()
                if version is not first  # `info` is its description
            ]
            every = (info, *others)
            candidate = _on_any_version(info.candidate, [o.candidate for o in others])
            info = replace(
                info,
                candidate=candidate,
                details={},
                knowledge=None,
                capabilities_from="versions",
                digest="",
                generates="completion" in candidate.capabilities,
                # Off the backends' machines where any version runs there: the prompt
                # may go to it (`auto` sends one there only where a profile names it).
                remote=next((v.remote for v in every if v.remote), ""),
                versions=every,
            )
        spelled = tag.get("model") or tag.get("name")
        if isinstance(spelled, str) and normalize_model(spelled) == name:
            info = replace(info, listed=spelled.strip())
        return info

    def set_models(self, models: dict[str, ModelInfo]) -> None:
        self.models = models
        self.generation += 1

    def spelled(self, name: str) -> str:
        """Model `name` (any spelling Ollama reads as it: a configured name may lack
        its tag) as its backend lists it: Ollama reads names case-insensitively and
        lists each as it was pulled, which is what a client looks for in the list."""
        # `auto`'s choices are registry names already: normalized only when not found.
        info = self.models.get(name) or self.models.get(normalize_model(name))
        return info.listed if info is not None and info.listed else name

    def not_generating(self) -> dict[str, frozenset[str]]:
        """The models a usable backend lists that neither chat nor generate (no
        candidates), with their capabilities."""
        available: set[str] = set()
        for state in self.backends.usable():
            available |= state.models or frozenset()
        return {
            n: info.candidate.capabilities
            for n, info in self.models.items()
            if not info.generates and n in available
        }

    def candidates(self) -> list[Candidate]:
        """Every generation model a usable backend has, with its loaded state."""
        usable = self.backends.usable()
        key = (self.generation, *((s.models, s.loaded) for s in usable))
        if key == self._cached[0]:
            return self._cached[1]
        available: set[str] = set()
        loaded: set[str] = set()
        for state in usable:
            available |= state.models or frozenset()
            loaded |= state.loaded
        candidates = [
            replace(info.candidate, loaded=name in loaded)
            for name, info in self.models.items()
            if name in available and info.generates
        ]
        # Where each would most likely run (loaded there first), for its expected time.
        self.backend_of = {
            c.name: min(
                (s for s in usable if s.models and c.name in s.models),
                key=lambda s: (c.name not in s.loaded, s.index),
            ).label
            for c in candidates
        }
        self._cached = (key, candidates)
        return candidates
