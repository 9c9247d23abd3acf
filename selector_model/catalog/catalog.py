"""The model catalogue: published knowledge about Ollama models, and placement of the rest.

`models.yaml` (shipped beside this module, updatable without code) lists models with
their size, specialties, release date, context length and published benchmark results,
each with its source. Benchmarks differ between model cards, so each area has one
scale, the first benchmark listed for it under `benchmarks:` (MMLU for knowledge, ...);
a result on another benchmark of the area is mapped onto that scale by a straight line
fitted over the models that report both. An area with no result, and every area of a
model not in the catalogue, is imputed from the nearest catalogue models
(`selector_model.catalog.placement`). No mapped or imputed score falls below its
scale's chance level.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from selector_model.catalog import names, scales
from selector_model.catalog.knowledge import AREAS, SPECIALTIES, Measured, ModelKnowledge
from selector_model.catalog.placement import PRETRAINED_AREAS, Neighbourhood, probe_of
from selector_model.catalogue_prior import UNSEEN_SPREAD
from selector_model.features import params_from

DEFAULT_PATH = Path(__file__).with_name("models.yaml")
# What describes a model, in a catalogue entry and in a user's override alike.
_DESCRIPTION_FIELDS = frozenset(
    {
        "family",
        "arch",
        "params_b",
        "active_params_b",
        "specialties",
        "released",
        "context_length",
        "pretrained",
    }
)
_OVERRIDE_FIELDS = _DESCRIPTION_FIELDS | {"like", "areas"}


class CatalogError(ValueError):
    """A catalogue or an override that cannot be used; the message says where."""


@dataclass(frozen=True)
class Source:
    """Where one published number comes from."""

    benchmark: str
    value: float
    url: str
    title: str = ""
    # The area the benchmark measures (the catalogue's `benchmarks`).
    area: str = ""


@dataclass(frozen=True)
class Figure:
    """Where one area of a model `Catalog.lookup` describes comes from. `source`: the
    figure before any measured share, "published" (a catalogue entry's number, which
    `Catalog.sources` cites), "configured" (the operator's `selector.models` areas) or
    "imputed" (from the nearest entries that publish the area). `measured`, for an area
    profiled on the user's backend: "blended" (weighed with that figure by precision,
    `_with_measured`) or "kept" (the measured share itself: no figure of the model's own
    to weigh it with); "" for an area not profiled."""

    source: str
    measured: str = ""


class Offset(NamedTuple):
    """How far an area's measured shares are moved onto the catalogue's scale
    (`Catalog.offsets`): `shift` added to each share, its `variance`, and the number of
    profiled models with a figure of their own for the area it was estimated from
    (`anchors`)."""

    shift: float
    variance: float
    anchors: int


def parse_released(value: Any) -> float:
    """`2024-09` (or a year as a number) as a fractional year: 2024.667."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d{4})(?:-(\d{1,2}))?\s*", str(value))
    if not match:
        raise CatalogError(f"released: {value!r} is not YYYY-MM")
    month = int(match.group(2) or 1)
    if not 1 <= month <= 12:
        raise CatalogError(f"released: {value!r} has no month {month}")
    return round(int(match.group(1)) + (month - 1) / 12, 3)


class Catalog:
    """Published model knowledge plus placement of models it does not list.

    `lookup` never fails: a name the catalogue lists (as a tag, an alias, `:latest`,
    with a registry prefix or a quantization suffix) gets its entry; any other is
    described from its `/api/show` details and name and placed among its neighbours.
    """

    def __init__(
        self,
        neighbourhood: Neighbourhood,
        sources: Mapping[str, Mapping[str, Source]],
        keys: Mapping[str, str],
        version: int,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        measured: Mapping[str, Mapping[str, Measured]] | None = None,
        transfer_spread: float = 0.0,
        scale_spread: Mapping[str, float] | None = None,
    ) -> None:
        self.version = version
        # How far a published area is from a user's prompts of the area, one standard
        # deviation of the share (`scales.transfer_spread`): what a measured area is
        # weighed against (`_with_measured`).
        self.transfer_spread = transfer_spread
        # Per area, how far the scales of its benchmarks lie apart (`scales.scale_spread`):
        # the prior spread of the offset measured shares are moved by (`offsets`).
        self.scale_spread = dict(scale_spread or {})
        # The entries, complete, and what placing a model among them reads.
        self.neighbourhood = neighbourhood
        self._entries = neighbourhood.entries
        self._sources = {name: dict(found) for name, found in sources.items()}
        self._keys = dict(keys)
        self._overrides = dict(overrides or {})
        self._measured = dict(measured or {})
        self._cache: dict[tuple[Any, ...], ModelKnowledge] = {}
        self._anchored: dict[str, dict[str, tuple[float, float]]] | None = None

    # -- loading ---------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        path = DEFAULT_PATH if path is None else Path(path)
        # The C loader, when PyYAML has it, reads the catalogue several times faster.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        data = yaml.load(path.read_text(), Loader=loader)
        if not isinstance(data, Mapping):
            raise CatalogError(f"{path}: expected a mapping at the top level")
        return cls.from_data(data, where=str(path))

    @staticmethod
    @functools.cache
    def shipped() -> Catalog:
        """The shipped catalogue, read once per process."""
        return Catalog.load()

    @classmethod
    def from_data(cls, data: Mapping[str, Any], where: str = "catalogue") -> Catalog:
        version = data.get("version")
        if version != 1:
            raise CatalogError(f"{where}: version {version!r} is not 1")
        if tuple(data.get("areas") or ()) != AREAS:
            raise CatalogError(f"{where}: areas must be {list(AREAS)}")
        benchmarks: dict[str, str] = {}
        same_scale: dict[str, str] = {}
        fallback: set[str] = set()
        for bench, spec in (data.get("benchmarks") or {}).items():
            if isinstance(spec, Mapping):
                benchmarks[str(bench)] = str(spec.get("area", ""))
                if spec.get("same_scale_as"):
                    same_scale[str(bench)] = str(spec["same_scale_as"])
                if spec.get("fallback"):
                    fallback.add(str(bench))
            else:
                benchmarks[str(bench)] = str(spec)
        for bench, area in benchmarks.items():
            if area not in AREAS:
                raise CatalogError(f"{where}: benchmark {bench} maps to unknown area {area!r}")
        references = data.get("references") or {}
        raw: dict[str, dict[str, Any]] = {}
        scores: dict[str, dict[str, float]] = {}
        sources: dict[str, dict[str, Source]] = {}
        keys: dict[str, str] = {}
        for item in data.get("models") or ():
            entry_name = str(item.get("name", ""))
            at = f"{where}: {entry_name or '?'}"
            if ":" not in entry_name:
                raise CatalogError(f"{at}: name must be name:tag")
            if entry_name in raw:
                raise CatalogError(f"{at}: listed twice")
            raw[entry_name] = dict(item)
            scores[entry_name], sources[entry_name] = _read_scores(item, benchmarks, references, at)
            own = [entry_name, *(str(a) for a in item.get("aliases") or ())]
            if item.get("latest"):
                own.append(names.split(entry_name)[0] + ":latest")
            for alias in own:
                key = ":".join(names.split(alias)) if ":" in alias else alias.lower().strip()
                if keys.get(key, entry_name) != entry_name:
                    raise CatalogError(f"{at}: {alias!r} already names {keys[key]}")
                keys[key] = entry_name
        areas, mapped, taken = scales.calibrate(scores, benchmarks, same_scale, fallback)
        # What an entry cites is what its areas take: a leaderboard result beside a
        # maker's of the same area only fits the line that maps it.
        sources = {
            name: {bench: s for bench, s in found.items() if bench in taken[name]}
            for name, found in sources.items()
        }
        skeleton = {
            name: _entry(name, item, {a: 0.0 for a in AREAS}, where) for name, item in raw.items()
        }
        slopes = scales.size_slopes(skeleton, areas)
        floors = scales.floors(benchmarks)
        # Each entry's unpublished areas imputed from the others' published ones.
        partial = Neighbourhood(skeleton, areas, slopes, floors)
        entries = {
            name: partial.complete(entry, areas[name], mapped[name])
            for name, entry in skeleton.items()
        }
        return cls(
            Neighbourhood(entries, areas, slopes, floors),
            sources,
            keys,
            int(version),
            transfer_spread=scales.transfer_spread(scores, benchmarks, same_scale),
            scale_spread=scales.scale_spread(scores, benchmarks),
        )

    # -- queries -----------------------------------------------------------------

    def entries(self) -> tuple[ModelKnowledge, ...]:
        return tuple(self._entries.values())

    def sources(self, name: str, details: Mapping[str, Any] | None = None) -> Mapping[str, Source]:
        """The published numbers behind the areas `lookup(name, details)` takes from a
        catalogue entry, by benchmark: that entry's, the one the backend's architecture
        picks (`_same_arch`) as well, or the one a model `selector.models` describes is
        `like` (`_read_as`). A pretrained tag that takes its chat entry's results but for
        code and instruction (`_pretrained_variant`) cites that entry's other results:
        those two are imputed and cite nothing; nor does an area the operator gives a
        score of, which is not the entry's."""
        spec = self._find(self._overrides, name)
        read = self._read_as(name, details or {}, spec)
        if read is None:
            return {}
        entry, variant = read
        other = set(_given(spec)) | (PRETRAINED_AREAS if variant else set())
        found = self._sources.get(entry, {})
        return {bench: s for bench, s in found.items() if s.area not in other}

    def figures(self, name: str, details: Mapping[str, Any] | None = None) -> dict[str, Figure]:
        """Per area, where the figure `lookup(name, details)` gives comes from and what a
        measured share did to it (`Figure`)."""
        details = details or {}
        spec = self._find(self._overrides, name)
        given = _given(spec)
        cited = {s.area for s in self.sources(name, details).values()}
        measured = self._find(self._measured, name) or {}
        blended = self._blended(self._read_as(name, details, spec), given)
        return {
            area: Figure(
                "configured" if area in given else "published" if area in cited else "imputed",
                ("blended" if area in blended else "kept") if area in measured else "",
            )
            for area in AREAS
        }

    def entry(self, name: str, details: Mapping[str, Any] | None = None) -> str | None:
        """The catalogue entry `lookup(name, details)` takes its areas from (a
        pretrained tag's, the chat entry it keeps the rest of), or None for a model the
        catalogue places: by name, or the one the backend's architecture picks
        (`_same_arch`), or the parent Ollama names (`details.parent_model`), or the one
        a model `selector.models` describes is `like` (`_read_as`)."""
        read = self._read_as(name, details or {}, self._find(self._overrides, name))
        return read[0] if read else None

    def resolve(self, name: str) -> str | None:
        """The catalogue entry a name stands for, or None. A name that says it is a
        chat model (`names.is_chat_variant`) never stands for a pretrained entry, which
        a key without its chat word may name (`starcoder2:15b-instruct-v0.1` shortened
        to `starcoder2:15b`): that entry's results and its being left out of chat
        requests are another model's."""
        matched = self._match(name)
        return matched[0] if matched else None

    def _match(self, name: str) -> tuple[str, str] | None:
        """(entry, the key of `names.keys` that found it) for `resolve`. A tag of a
        pretrained word alone (`names.default_pretrained`: `llama3:text`,
        `deepseek-coder:base`) the catalogue does not list is that variant of the model
        `latest` is: the pretrained entry of that size where the catalogue lists one
        (`deepseek-coder:1.3b-base`), else that entry itself where its own name has the
        word (`wizardcoder:python` is `wizardcoder:7b-python`, a chat tune of Code Llama
        - Python), else the chat entry by its `latest` key, of which it is a
        `_pretrained_variant`."""
        chat = names.is_chat_variant(name)
        for key in names.keys(name):
            found = self._keys.get(key)
            if found is not None and not (chat and self._entries[found].pretrained):
                return found, key
        words = names.default_pretrained(name)
        latest = f"{names.split(name)[0]}:latest"
        default = self._keys.get(latest) if words else None
        if default is None:
            return None
        sized = self._keys.get(f"{default}-{words}")
        if sized is not None and self._entries[sized].pretrained:
            return sized, f"{default}-{words}"
        if names.is_pretrained(default):
            return default, default
        return default, latest

    def lookup(
        self,
        name: str,
        details: Mapping[str, Any] | None = None,
        capabilities: Iterable[str] = (),
    ) -> ModelKnowledge:
        details = details or {}
        capabilities = tuple(sorted(str(c) for c in capabilities))
        cache_key = (
            name,
            str(details.get("family", "")),
            str(details.get("parameter_size", "")),
            str(details.get("context_length", "")),
            str(details.get("parent_model", "")),
            capabilities,
        )
        found = self._cache.get(cache_key)
        if found is None:
            found = self._lookup(name, details, capabilities)
            self._cache[cache_key] = found
        return found

    def with_overrides(self, models: Mapping[str, Mapping[str, Any]]) -> Catalog:
        """A catalogue that also knows the models described in configuration
        (`selector.models`): `like` copies another model's knowledge, explicit fields
        (`areas`, `params_b`, `specialties`, ...) win over it."""
        checked: dict[str, Mapping[str, Any]] = {}
        for name, spec in models.items():
            at = f"selector.models.{name}"
            unknown = set(spec) - _OVERRIDE_FIELDS
            if unknown:
                raise CatalogError(f"{at}: unknown field(s) {sorted(unknown)}")
            like = str(spec.get("like") or "")
            if like and self.resolve(like) is None:
                raise CatalogError(f"{at}: like {like!r} is not in the catalogue")
            _check_areas(spec.get("areas") or {}, at)
            for specialty in spec.get("specialties") or ():
                if specialty not in SPECIALTIES:
                    raise CatalogError(f"{at}: unknown specialty {specialty!r}")
            if "released" in spec and spec["released"] not in ("", None):
                parse_released(spec["released"])
            if "pretrained" in spec:
                _flag(spec["pretrained"], f"{at}.pretrained")
            checked[_user_key(name)] = dict(spec)
        return self._derive(overrides={**self._overrides, **checked})

    def with_measured(self, results: Mapping[str, Mapping[str, Measured]]) -> Catalog:
        """A catalogue in which measured per-area scores (profiling on the user's own
        backend) count with published and configured ones as much as their number of
        items warrants (`_with_measured`)."""
        checked: dict[str, Mapping[str, Measured]] = {}
        for name, areas in results.items():
            at = f"measured.{name}"
            _check_areas({area: m.score for area, m in areas.items()}, at)
            for area, m in areas.items():
                if isinstance(m.n, bool) or not isinstance(m.n, int) or m.n < 1:
                    raise CatalogError(f"{at}.areas.{area}: {m.n!r} items is not a count")
            checked[_user_key(name)] = {
                str(a): Measured(float(m.score), m.n) for a, m in areas.items()
            }
        return self._derive(measured={**self._measured, **checked})

    # -- internals ---------------------------------------------------------------

    def _derive(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        measured: Mapping[str, Mapping[str, Measured]] | None = None,
    ) -> Catalog:
        return Catalog(
            self.neighbourhood,
            self._sources,
            self._keys,
            self.version,
            self._overrides if overrides is None else overrides,
            self._measured if measured is None else measured,
            self.transfer_spread,
            self.scale_spread,
        )

    def _find(self, table: Mapping[str, Any], name: str) -> Any:
        """What a user's table (`selector.models`, the measured areas) says of `name`, by
        the first of its keys the table has. Not by a key without a pretrained word of a
        pretrained name (`llama3:8b` of `llama3:8b-text`): that tag is another model
        than the chat one its key names, which the catalogue places on its own
        (`_pretrained_variant`) unless the table names it."""
        key = self._key_in(table, name)
        return None if key is None else table[key]

    @staticmethod
    def _key_in(table: Mapping[str, Any], name: str) -> str | None:
        """The key of `table` `_find` reads `name` by, or None."""
        pretrained = names.is_pretrained(name)
        for key in names.keys(name):
            if key in table and not (pretrained and not names.is_pretrained(key)):
                return key
        return None

    def _lookup(
        self, name: str, details: Mapping[str, Any], capabilities: tuple[str, ...]
    ) -> ModelKnowledge:
        found = self._unmeasured(name, details, capabilities)
        measured = self._find(self._measured, name)
        if measured:
            spec = self._find(self._overrides, name)
            blended = self._blended(self._read_as(name, details, spec), _given(spec))
            offsets = self.offsets_of(name)
            found = _with_measured(found, measured, name, self.transfer_spread, blended, offsets)
        return found

    def offsets_of(self, name: str) -> dict[str, Offset]:
        """The offsets `lookup(name)` moves the measured shares of `name` by, per area it
        was profiled in (`offsets` without its own estimate); none for a model with no
        profile."""
        key = self._key_in(self._measured, name)
        if key is None:
            return {}
        offsets = self.offsets(without=key)
        return {area: offsets[area] for area in self._measured[key]}

    def _unmeasured(
        self, name: str, details: Mapping[str, Any], capabilities: tuple[str, ...]
    ) -> ModelKnowledge:
        """What the catalogue and the operator's descriptions say of `name`, before any
        measured share."""
        spec = self._find(self._overrides, name)
        read = self._read_as(name, details, spec)
        if spec is not None:
            return self._configured(name, spec, read, details, capabilities)
        if read is None:
            return self.neighbourhood.place(name, details, capabilities)
        found = self._entries[read[0]]
        return self._pretrained_variant(name, found) if read[1] else found

    def offsets(self, without: str = "") -> dict[str, Offset]:
        """Per measured area, the offset that moves measured shares onto the catalogue's
        scale. A user's prompts of an area are a set of items on a scale of their own,
        as each benchmark of the area is: one constant shift per area (a slope would
        narrow or widen the shares' differences against the other areas). Each profiled
        model whose figure for the area is its own (published, mapped from another of
        its benchmarks, or configured; not imputed, nor placed from its details) gives
        one estimate, figure minus share, of variance its share's binomial error plus
        its figure's (`_share_variance`, `_figure_variance`); their precision-weighted
        mean is shrunk toward no shift by a prior of spread `scale_spread` (how far the
        area's benchmarks lie apart before mapping). With no such model the shift is
        0 and its variance that prior's: a share no figure anchors counts for less.
        `without`: the measured model (its key in the profiles) whose own estimate is
        left out, so that the share it moves and the figure it is then weighed with are
        two readings of the model, not one counted twice (a single profiled model with
        a figure would otherwise have its share moved onto its figure)."""
        offsets: dict[str, Offset] = {}
        for area, found in self._anchors().items():
            prior = self.scale_spread.get(area, 0.0) ** 2
            pairs = [pair for key, pair in found.items() if key != without]
            if prior <= 0.0:
                offsets[area] = Offset(0.0, 0.0, len(pairs))
                continue
            variance = 1.0 / (1.0 / prior + sum(1.0 / v for _, v in pairs))
            offsets[area] = Offset(variance * sum(g / v for g, v in pairs), variance, len(pairs))
        return offsets

    def _anchors(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Per measured area, per profiled model (its key in the profiles) with a figure
        of its own for the area: figure minus share, and its variance (`offsets`). The
        models are read by name alone, without the backend's details."""
        if self._anchored is not None:
            return self._anchored
        anchors: dict[str, dict[str, tuple[float, float]]] = {
            area: {} for areas in self._measured.values() for area in areas
        }
        for key, areas in self._measured.items():
            spec = self._find(self._overrides, key)
            base = self._unmeasured(key, {}, ())
            if base.origin == "nearest":
                continue
            own = set(_given(spec)) if spec is not None else self._cited_areas(key)
            for area, (score, n) in areas.items():
                if area in own:
                    variance = _share_variance(score, n)
                    variance += _figure_variance(base, area, self.transfer_spread)
                    anchors[area][key] = (base.areas[area] - score, variance)
        self._anchored = anchors
        return anchors

    def _cited_areas(self, name: str) -> set[str]:
        """The areas of `name` a published result of its own sets (`sources`)."""
        return {source.area for source in self.sources(name).values()}

    def _read_as(
        self, name: str, details: Mapping[str, Any], spec: Mapping[str, Any] | None
    ) -> tuple[str, bool] | None:
        """The catalogue entry whose knowledge `lookup` starts `name` from, and whether
        `name` is a `_pretrained_variant` of it: for a model `selector.models` describes
        (`spec`), the entry it is `like` (None without one: it is placed), else the one
        its name and details resolve to (`_resolved`)."""
        if spec is None:
            return self._resolved(name, details)
        like = str(spec.get("like") or "")
        resolved = self.resolve(like) if like else None
        return (resolved, False) if resolved is not None else None

    def _blended(self, read: tuple[str, bool] | None, given: Iterable[str]) -> frozenset[str]:
        """The areas of a model a measured share is weighed with a figure in
        (`_with_measured`): every area of one read as a catalogue entry (`read`: its
        published figures, and those the catalogue imputed for that entry, with their
        doubt), and those the operator gives (`given`); none of a model placed from its
        details alone, which has no figure of its own. None at all in a catalogue with
        no two benchmarks of an area to measure `transfer_spread` by, which would
        otherwise make a published figure exact."""
        if self.transfer_spread <= 0.0:
            return frozenset()
        return frozenset(AREAS) if read is not None else frozenset(given)

    def _resolved(self, name: str, details: Mapping[str, Any]) -> tuple[str, bool] | None:
        """The entry a catalogued name takes its areas from, as `lookup` and `sources`
        both read it: the one it resolves to (`_match`), or the one of its family the
        backend's architecture in `details` says is meant (`_same_arch`); and whether
        `name` is a `_pretrained_variant` of that entry. None for a name the catalogue
        does not list. A name the catalogue does not list that Ollama says was made
        from one it does (`details.parent_model`: `ollama create` from `FROM qwen3:32b`,
        the parent's weights under a name of its own) is read as its parent."""
        matched = self._match(name)
        if matched is None:
            name = str(details.get("parent_model") or "")
            matched = self._match(name) if name else None
            if matched is None:
                return None
        entry = self._same_arch(matched[0], details)
        return entry, self._is_pretrained_variant(name, (entry, matched[1]))

    def _is_pretrained_variant(self, name: str, matched: tuple[str, str]) -> bool:
        """Whether `name`, a pretrained tag, found a chat entry by a key (`matched`:
        entry, key) without its pretrained word."""
        entry, key = matched
        return (
            not self._entries[entry].pretrained
            and names.is_pretrained(name)
            and not names.is_pretrained(key)
        )

    def _pretrained_variant(self, name: str, entry: ModelKnowledge) -> ModelKnowledge:
        """The pretrained model a tag names (`qwen2.5-coder:7b-base`, `llama3.1:8b-text`)
        where the catalogue lists only the chat model of its bare tag: that entry's
        size, context, release and results, but for its code and instruction areas
        (`placement.PRETRAINED_AREAS`), which the chat model's HumanEval and MBPP
        (answers to a request) and IFEval (of its instruction tuning) do not give for a
        model that completes text: imputed as a pretrained model's, from the pretrained
        models beside it as well as from its family's chat ones."""
        probe = replace(probe_of(entry), pretrained=True)
        areas, uncertain = dict(entry.areas), dict(entry.area_uncertainty)
        near: list[str] = []
        for area in sorted(PRETRAINED_AREAS):
            areas[area], uncertain[area], found = self.neighbourhood.impute_listed(
                probe, area, exclude=""
            )
            near += found
        return replace(
            entry,
            name=name,
            areas=areas,
            area_uncertainty=uncertain,
            uncertainty=round(min(1.0, sum(uncertain.values()) / len(AREAS)), 4),
            neighbours=tuple(dict.fromkeys((*entry.neighbours, *near))),
            pretrained=True,
        )

    def _same_arch(self, resolved: str, details: Mapping[str, Any]) -> str:
        """The entry a name resolved to, or the entry of its family that the backend's
        reported architecture (`details.family`) says is meant: Ollama moves a tag to a
        new model now and then (`deepseek-r1:8b`, once the Llama 3.1 distill, is now the
        Qwen3 one), and the name alone would then describe the model it replaced. Among
        the family's entries with that architecture, the one nearest the reported size;
        the named entry when none has it."""
        entry = self._entries[resolved]
        arch = str(details.get("family") or "").lower()
        if not arch or not entry.arch or entry.arch == arch:
            return resolved
        size = params_from(str(details.get("parameter_size", ""))) or entry.params_b
        same = [
            key for key, e in self._entries.items() if e.family == entry.family and e.arch == arch
        ]
        if not same:
            return resolved
        return min(same, key=lambda key: abs(self._entries[key].params_b - size))

    def _configured(
        self,
        name: str,
        spec: Mapping[str, Any],
        read: tuple[str, bool] | None,
        details: Mapping[str, Any],
        capabilities: tuple[str, ...],
    ) -> ModelKnowledge:
        """A model `selector.models` describes (`spec`): the entry it is `like` (`read`,
        `_read_as`), else placed, with what `spec` gives."""
        if read is not None:
            base = replace(self._entries[read[0]], neighbours=(read[0],))
        else:
            given = spec.get("released")
            released = parse_released(given) if given not in (None, "") else None
            base = self.neighbourhood.place(name, details, capabilities, spec, released)
        changes: dict[str, Any] = {"name": name, "origin": "config", "entry": ""}
        for key in ("family", "arch"):
            if spec.get(key):
                changes[key] = str(spec[key])
        if spec.get("params_b"):
            changes["params_b"] = float(spec["params_b"])
            changes["active_params_b"] = float(spec.get("active_params_b") or spec["params_b"])
        elif spec.get("active_params_b"):
            changes["active_params_b"] = float(spec["active_params_b"])
        if spec.get("specialties"):
            changes["specialties"] = frozenset(str(s) for s in spec["specialties"])
        if spec.get("released"):
            changes["released"] = parse_released(spec["released"])
        if spec.get("context_length"):
            changes["context_length"] = int(spec["context_length"])
        if "pretrained" in spec:
            changes["pretrained"] = spec["pretrained"] is True  # checked by with_overrides
        configured = replace(base, **changes)
        return _with_areas(configured, spec.get("areas") or {}, origin="config", name=name)


def _flag(value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise CatalogError(f"{at}: {value!r} is not true or false")
    return value


def _given(spec: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The areas a description in `selector.models` gives scores of."""
    return (spec or {}).get("areas") or {}


def _user_key(name: str) -> str:
    return ":".join(names.split(name))


def _check_areas(areas: Mapping[str, Any], at: str) -> None:
    if not isinstance(areas, Mapping):
        raise CatalogError(f"{at}.areas: expected a mapping of area to score")
    for area, score in areas.items():
        if area not in AREAS:
            raise CatalogError(f"{at}.areas: unknown area {area!r} (one of {list(AREAS)})")
        if not isinstance(score, int | float) or not 0.0 <= float(score) <= 1.0:
            raise CatalogError(f"{at}.areas.{area}: {score!r} is not a score in [0, 1]")


def _with_areas(
    base: ModelKnowledge, given: Mapping[str, float], origin: str, name: str
) -> ModelKnowledge:
    areas = dict(base.areas)
    spread = dict(base.area_uncertainty)
    for area, score in given.items():
        areas[area] = float(score)
        spread[area] = 0.0
    return _given_areas(base, areas, spread, origin, name)


def _given_areas(
    base: ModelKnowledge,
    areas: dict[str, float],
    spread: dict[str, float],
    origin: str,
    name: str,
) -> ModelKnowledge:
    """`base` under `name` with `areas` and their `spread` from `origin`, and its
    uncertainty the mean of the areas' spreads: for configured and for measured areas
    alike."""
    return replace(
        base,
        name=name,
        areas=areas,
        area_uncertainty=spread,
        origin=origin,  # type: ignore[arg-type]
        uncertainty=round(min(1.0, sum(spread.values()) / len(AREAS)), 4),
    )


def _share_variance(score: float, n: int) -> float:
    """A measured share's binomial sampling error, of the share smoothed by one success
    and one failure, so that ten of ten is not exact."""
    smoothed = (score * n + 1.0) / (n + 2.0)
    return smoothed * (1.0 - smoothed) / n


def _figure_variance(base: ModelKnowledge, area: str, transfer: float) -> float:
    """How far the catalogue's figure for `area` of `base` is from the model's share
    of a user's prompts of the area, on one scale: how far a published item set of an
    area is from another (`transfer`) plus the figure's own doubt (`UNSEEN_SPREAD` per
    unit of `area_uncertainty`)."""
    return transfer**2 + (UNSEEN_SPREAD * base.area_uncertainty[area]) ** 2


def _with_measured(
    base: ModelKnowledge,
    given: Mapping[str, Measured],
    name: str,
    transfer: float,
    blended: Collection[str],
    offsets: Mapping[str, Offset],
) -> ModelKnowledge:
    """`base` with its measured areas, each share moved onto the catalogue's scale by
    its area's offset (`Catalog.offsets`) and, in each area of `blended`
    (`Catalog._blended`: those with a figure of the model's own), weighed by its
    precision against that figure; in each other area the moved share itself. The
    moved share's variance is its binomial sampling error (`_share_variance`) plus the
    offset's; the figure's is `_figure_variance`. The area's uncertainty is what
    remains of the blend's variance beyond `transfer`, which a published area leaves
    uncounted as the same doubt for every model (`catalogue_prior.UNSEEN_SPREAD`):
    none for a published area, shrinking with the items for one the catalogue imputed
    or does not know."""
    areas = dict(base.areas)
    spread = dict(base.area_uncertainty)
    for area, (score, n) in given.items():
        offset = offsets.get(area, Offset(0.0, 0.0, 0))
        share = min(1.0, max(0.0, score + offset.shift))
        sampled = _share_variance(score, n) + offset.variance
        published = _figure_variance(base, area, transfer)
        if area not in blended:
            areas[area], variance = share, sampled
        else:
            variance = 1.0 / (1.0 / published + 1.0 / sampled)
            areas[area] = variance * (share / sampled + base.areas[area] / published)
        spread[area] = min(1.0, math.sqrt(max(0.0, variance - transfer**2)) / UNSEEN_SPREAD)
    return _given_areas(base, areas, spread, "profile", name)


def _read_scores(
    item: Mapping[str, Any],
    benchmarks: Mapping[str, str],
    references: Mapping[str, Any],
    at: str,
) -> tuple[dict[str, float], dict[str, Source]]:
    scores: dict[str, float] = {}
    found: dict[str, Source] = {}
    cited = item.get("sources") or {}
    for bench, value in (item.get("scores") or {}).items():
        if bench not in benchmarks:
            raise CatalogError(f"{at}: unknown benchmark {bench!r}")
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise CatalogError(f"{at}: {bench} = {value!r} is not in [0, 1]")
        ref = cited.get(bench)
        if not ref:
            raise CatalogError(f"{at}: {bench} has no source")
        reference = references.get(ref) if isinstance(ref, str) else None
        if reference is not None:
            url, title = str(reference.get("url", "")), str(reference.get("title", ""))
        elif isinstance(ref, str) and ref.startswith(("http://", "https://", "arXiv:")):
            url, title = ref, ""
        else:
            raise CatalogError(f"{at}: source {ref!r} of {bench} is neither a reference nor a URL")
        scores[bench] = float(value)
        found[bench] = Source(
            benchmark=bench, value=float(value), url=url, title=title, area=benchmarks[bench]
        )
    return scores, found


_ENTRY_FIELDS = _DESCRIPTION_FIELDS | {"name", "aliases", "latest", "scores", "sources", "note"}


def _entry(
    name: str, item: Mapping[str, Any], areas: Mapping[str, float], where: str
) -> ModelKnowledge:
    at = f"{where}: {name}"
    unknown = set(item) - _ENTRY_FIELDS
    if unknown:
        raise CatalogError(f"{at}: unknown field(s) {sorted(unknown)}")
    try:
        params = float(item["params_b"])
        specialties = frozenset(str(s) for s in item.get("specialties") or ())
        strange = specialties - set(SPECIALTIES)
        if strange:
            raise CatalogError(f"{at}: unknown specialties {sorted(strange)}")
        return ModelKnowledge(
            name=name,
            family=str(item["family"]),
            arch=str(item.get("arch", "")),
            params_b=params,
            active_params_b=float(item.get("active_params_b") or params),
            specialties=specialties,
            released=parse_released(item["released"]),
            context_length=int(item["context_length"]),
            areas=areas,
            pretrained=_flag(item.get("pretrained", False), f"{at}: pretrained"),
            entry=name,
        )
    except KeyError as missing:
        raise CatalogError(f"{at}: {missing.args[0]} is required") from None
