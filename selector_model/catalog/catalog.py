"""The model catalogue: published knowledge about Ollama models, and placement of the rest.

`models.yaml` (shipped beside this module, updatable without code) lists models with
their size, specialties, release date, context length and published benchmark results,
each with its source. Benchmarks differ between model cards, so each area has one
scale, the first benchmark listed for it under `benchmarks:` (MMLU for knowledge, ...);
a result on another benchmark of the area is mapped onto that scale by a straight line
fitted over the models that report both. An area with no result, and every area of a
model not in the catalogue, is imputed from the nearest catalogue models (same family
first, then by size, specialty and release date), moved along the size trend seen
within families; the distance of those neighbours is the uncertainty the result
carries. No mapped or imputed score falls below its scale's chance level.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from selector_model.catalog import names, scales
from selector_model.catalog.knowledge import AREAS, SPECIALTIES, ModelKnowledge
from selector_model.features import params_from

DEFAULT_PATH = Path(__file__).with_name("models.yaml")
# How many of the nearest entries an imputation reads. Each published area score left
# out and imputed from the other entries (its family left out too, as for a model placed
# from its details alone), six miss it by less than three do, and more add nothing.
NEIGHBOURS = 6
# How fast a neighbour's weight falls with its distance beyond the nearest one's.
KERNEL_WIDTH = 0.3
# The size trend moves a neighbour's score by at most this many doublings of size.
MAX_DOUBLINGS = 3.0
# Uncertainty added when a model's size is neither declared nor written in its name.
UNKNOWN_SIZE_UNCERTAINTY = 0.2
# The least uncertainty of a model placed by its neighbours.
PLACED_FLOOR = 0.1
_GUESSED_SIZE_B = 7.0
# How far apart a difference in one specialty puts two models. Code, math and
# reasoning training changes what a model is good at; a vision encoder changes its text
# ability little; tool calling not at all; an embedding model is another kind of model.
_SPECIALTY_WEIGHT = {
    "code": 0.75,
    "math": 0.75,
    "reasoning": 0.75,
    "vision": 0.25,
    "embedding": 10.0,
}
# The area each specialty is about. Imputing that area, a neighbour that differs in the
# specialty is this much further again (with the weight above, further than another
# architecture): a code model's code score says little about a general model's, and a
# general model's little about a code model's.
_SPECIALTY_AREA = {"code": "code", "math": "math", "reasoning": "reasoning"}
_AREA_SPECIALTY_WEIGHT = 1.5
# How far apart a year between releases puts two models. Training data and recipes
# change from one generation to the next, so a model of another year is a poorer
# stand-in; a year counts for less than another architecture, so that architecture and
# size still choose neighbours first.
_YEAR_WEIGHT = 0.5
# A later generation of a line than the catalogue lists (`gemma4`, `qwen3.5`) is placed
# with the latest generation listed before it, as if of that family, and each area moved
# this far up on the logit scale: the catalogue's own generations, each left out whole
# and placed so beside the one before, lie this far on average above their placement
# without a step (tests/test_catalog.py measures it). Math moved most from one
# generation to the next, knowledge and reasoning least.
GENERATION_STEP = {
    "knowledge": 0.2,
    "reasoning": 0.2,
    "math": 0.9,
    "code": 0.5,
    "instruction": 0.6,
}
# The years between two generations of a line, as the catalogue's lines show it.
GENERATION_YEARS = 0.4
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


@dataclass(frozen=True)
class _Probe:
    """What placement compares: a model's family, architecture, size and specialties."""

    family: str
    arch: str
    size_b: float
    specialties: frozenset[str]
    # Fractional year of release; None when not known (a model placed from its name).
    released: float | None = None

    @property
    def log_size(self) -> float:
        return math.log2(max(self.size_b, 1e-3))


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


def _distance(
    probe: _Probe, log_size: float, other: _Probe, other_log_size: float, area: str = ""
) -> float:
    """How poorly `other` stands in for `probe`: their differences in size,
    architecture, specialties and release date added up; imputing `area`, also whether
    they differ in the specialty that area is about."""
    size = 0.5 * abs(log_size - other_log_size)
    if probe.family and probe.family == other.family:
        family = 0.0
    elif probe.arch and probe.arch == other.arch:
        family = 0.75
    else:
        family = 1.5
    specialty = 0.0
    if probe.specialties != other.specialties:
        for name in probe.specialties ^ other.specialties:
            specialty += _SPECIALTY_WEIGHT.get(name, 0.0)
            if area and _SPECIALTY_AREA.get(name) == area:
                specialty += _AREA_SPECIALTY_WEIGHT
    era = 0.0
    if probe.released is not None and other.released is not None:
        era = _YEAR_WEIGHT * abs(probe.released - other.released)
    return size + family + specialty + era


def _weights(nearest: list[tuple[float, ModelKnowledge]]) -> list[float]:
    """Weights of neighbours by distance: the nearest counts most, and one twice as far
    away (a whole family or specialty further) little."""
    closest = nearest[0][0]
    return [math.exp(-(gap - closest) / KERNEL_WIDTH) for gap, _ in nearest]


def _along_trend(score: float, slope: float, doublings: float, floor: float = 0.0) -> float:
    """A neighbour's score moved to another size: `slope` per doubling at mid-range,
    applied on the logit scale so that it flattens near 0 and 1 (a model 8x larger
    than a strong neighbour gains less than a weak one would), and no further than
    three doublings; never below `floor` (the scale's chance level)."""
    doublings = max(-MAX_DOUBLINGS, min(MAX_DOUBLINGS, doublings))
    return _shifted(score, 4.0 * slope * doublings, floor)


def _shifted(score: float, logits: float, floor: float = 0.0) -> float:
    """`score` moved by `logits` on the logit scale, never below `floor`."""
    score = min(0.995, max(0.005, score))
    logit = math.log(score / (1.0 - score)) + logits
    return max(floor, 1.0 / (1.0 + math.exp(-logit)))


def _probe_of(entry: ModelKnowledge) -> _Probe:
    return _Probe(
        entry.family, entry.arch, entry.effective_params_b, entry.specialties, entry.released
    )


class Catalog:
    """Published model knowledge plus placement of models it does not list.

    `lookup` never fails: a name the catalogue lists (as a tag, an alias, `:latest`,
    with a registry prefix or a quantization suffix) gets its entry; any other is
    described from its `/api/show` details and name and placed among its neighbours.
    """

    def __init__(
        self,
        entries: Mapping[str, ModelKnowledge],
        published: Mapping[str, Mapping[str, float]],
        sources: Mapping[str, Mapping[str, Source]],
        keys: Mapping[str, str],
        slopes: Mapping[str, float],
        version: int,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        measured: Mapping[str, Mapping[str, float]] | None = None,
        floors: Mapping[str, float] | None = None,
    ) -> None:
        self.version = version
        self._entries = dict(entries)
        self._published = {name: dict(areas) for name, areas in published.items()}
        self._sources = {name: dict(found) for name, found in sources.items()}
        self._keys = dict(keys)
        self._slopes = dict(slopes)
        # Per area, the chance level of its scale: no imputed score falls below it.
        self._floors = dict(floors or {})
        self._overrides = dict(overrides or {})
        self._measured = dict(measured or {})
        self._cache: dict[tuple[Any, ...], ModelKnowledge] = {}
        self._indexed: dict[str, ModelKnowledge] | None = None
        self._probes: list[tuple[ModelKnowledge, _Probe, float]] = []

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
        for bench, spec in (data.get("benchmarks") or {}).items():
            if isinstance(spec, Mapping):
                benchmarks[str(bench)] = str(spec.get("area", ""))
                if spec.get("same_scale_as"):
                    same_scale[str(bench)] = str(spec["same_scale_as"])
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
        areas, mapped = scales.calibrate(scores, benchmarks, same_scale)
        skeleton = {
            name: _entry(name, item, {a: 0.0 for a in AREAS}, where) for name, item in raw.items()
        }
        slopes = scales.size_slopes(skeleton, areas)
        catalog = cls(
            skeleton,
            areas,
            sources,
            keys,
            slopes,
            int(version),
            floors=scales.floors(benchmarks),
        )
        catalog._entries = {
            name: catalog._complete(entry, areas[name], mapped[name])
            for name, entry in skeleton.items()
        }
        return catalog

    # -- queries -----------------------------------------------------------------

    def entries(self) -> tuple[ModelKnowledge, ...]:
        return tuple(self._entries.values())

    def sources(self, name: str) -> Mapping[str, Source]:
        """The published numbers behind a catalogue entry's areas, by benchmark."""
        resolved = self.resolve(name)
        return dict(self._sources.get(resolved or "", {}))

    def resolve(self, name: str) -> str | None:
        """The catalogue entry a name stands for, or None."""
        for key in names.keys(name):
            if key in self._keys:
                return self._keys[key]
        return None

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

    def with_measured(self, results: Mapping[str, Mapping[str, float]]) -> Catalog:
        """A catalogue in which measured per-area scores (profiling on the user's own
        backend) take precedence over published and configured ones."""
        checked: dict[str, Mapping[str, float]] = {}
        for name, areas in results.items():
            _check_areas(areas, f"measured.{name}")
            checked[_user_key(name)] = {str(a): float(v) for a, v in areas.items()}
        return self._derive(measured={**self._measured, **checked})

    # -- internals ---------------------------------------------------------------

    def _derive(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        measured: Mapping[str, Mapping[str, float]] | None = None,
    ) -> Catalog:
        derived = Catalog(
            {},
            self._published,
            self._sources,
            self._keys,
            self._slopes,
            self.version,
            self._overrides if overrides is None else overrides,
            self._measured if measured is None else measured,
            self._floors,
        )
        derived._entries = self._entries
        return derived

    def _find(self, table: Mapping[str, Any], name: str) -> Any:
        for key in names.keys(name):
            if key in table:
                return table[key]
        return None

    def _lookup(
        self, name: str, details: Mapping[str, Any], capabilities: tuple[str, ...]
    ) -> ModelKnowledge:
        spec = self._find(self._overrides, name)
        if spec is not None:
            found = self._configured(name, spec, details, capabilities)
        else:
            resolved = self.resolve(name)
            if resolved is not None:
                resolved = self._same_arch(resolved, details)
            found = (
                self._entries[resolved]
                if resolved is not None
                else self._place(name, details, capabilities)
            )
        measured = self._find(self._measured, name)
        if measured:
            found = _with_areas(found, measured, origin="profile", name=name)
        return found

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
        details: Mapping[str, Any],
        capabilities: tuple[str, ...],
    ) -> ModelKnowledge:
        like = str(spec.get("like") or "")
        if like:
            resolved = self.resolve(like)
            assert resolved is not None  # checked by with_overrides
            base = replace(self._entries[resolved], neighbours=(resolved,))
        else:
            base = self._place(name, details, capabilities, spec)
        changes: dict[str, Any] = {"name": name, "origin": "config"}
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

    def _place(
        self,
        name: str,
        details: Mapping[str, Any],
        capabilities: tuple[str, ...],
        spec: Mapping[str, Any] | None = None,
    ) -> ModelKnowledge:
        """Describe a model the catalogue does not list and impute its areas from its
        nearest catalogue entries."""
        spec = spec or {}
        base, _ = names.split(name)
        family, generations = str(spec.get("family") or ""), 0
        if not family:
            family, generations = self._family_of(base)
        if not family:
            # A repository named after its organisation first: its model's name.
            rest = names.without_organisation(name)
            if rest:
                family, generations = self._family_of(rest)
        arch = str(spec.get("arch") or details.get("family") or "").lower()
        # The listed models of its family: its architecture, specialties and era.
        kin = [e for e in self._entries.values() if e.family == family] if family else []
        if not arch and kin:
            archs = [e.arch for e in kin if e.arch]
            arch = max(set(archs), key=archs.count, default="")
        named_total, named_active = names.size_from_name(name)
        total = (
            float(spec.get("params_b") or 0.0)
            or params_from(str(details.get("parameter_size", "")))
            or named_total
        )
        guessed = total <= 0
        total = total if total > 0 else _GUESSED_SIZE_B
        active = float(spec.get("active_params_b") or 0.0) or named_active or total
        specialties = set(spec.get("specialties") or ())
        if not specialties:
            specialties = {
                names.CAPABILITY_SPECIALTIES[c]
                for c in capabilities
                if c in names.CAPABILITY_SPECIALTIES
            }
            specialties |= names.hinted_specialties(name)
            if kin:
                specialties |= frozenset.intersection(*(e.specialties for e in kin))
        size = math.sqrt(total * active) if 0 < active < total else total
        given = spec.get("released")
        era: float | None = parse_released(given) if given not in (None, "") else None
        if era is None and kin:
            # A new size of a listed family comes from that family's era (a StarCoder
            # 1B is a 2023 model, whatever 1B coders came out since).
            era = sum(e.released for e in kin) / len(kin) + generations * GENERATION_YEARS
        probe = _Probe(family, arch, size, frozenset(specialties), era)
        nearest = self._nearest(probe, lambda e: True)
        areas: dict[str, float] = {}
        spread: dict[str, float] = {}
        for area in AREAS:
            areas[area], spread[area], _ = self._impute(probe, area, exclude="")
            if generations and areas[area] > 0.0:
                shift = generations * GENERATION_STEP[area]
                areas[area] = _shifted(areas[area], shift, self._floors.get(area, 0.0))
        weights = _weights(nearest)
        released = sum(w * e.released for w, (_, e) in zip(weights, nearest, strict=True)) / sum(
            weights
        )
        if generations and era is not None:
            released = era
        context = int(details.get("context_length") or 0) or nearest[0][1].context_length
        uncertainty = sum(spread.values()) / len(AREAS)
        uncertainty += UNKNOWN_SIZE_UNCERTAINTY if guessed else 0.0
        return ModelKnowledge(
            name=name,
            family=family or arch or "other",
            arch=arch,
            params_b=total,
            active_params_b=active,
            specialties=frozenset(specialties),
            released=round(released, 3),
            context_length=context,
            areas=areas,
            origin="nearest",
            neighbours=tuple(e.name for _, e in nearest),
            uncertainty=min(1.0, max(PLACED_FLOOR, uncertainty)),
            area_uncertainty=spread,
        )

    def _family_of(self, base: str) -> tuple[str, int]:
        """The catalogue family a name belongs to, and how many generations later than
        that family it is: the family of the entries named `base:...`, else the
        longest family `base` starts with (`llama3-gradient`), else the longest family
        named whole inside it (`dolphin-mixtral`, `nous-hermes2-mixtral`): a fine-tune
        is closer to its base model than to whatever models are near it in size. A
        later generation of a line than the catalogue lists (`gemma4`,
        `mistral-small4`) belongs to the latest generation listed before it, one
        generation later (a generation it lists, however spelt, is that family:
        `llama-3` is llama3), unless a longer family starts its name (`llama3.1-...` is
        a fine-tune of llama3.1, not a later llama2-...). A generation older than every
        listed one is placed by its details: a line's later generations say little of
        its earlier ones (gemma3's math, placed a step back, is still far above
        gemma2's)."""
        for entry in self._entries.values():
            if names.split(entry.name)[0] == base:
                return entry.family, 0
        families = {e.family for e in self._entries.values()}
        prefix = max((f for f in families if base.startswith(f + "-")), key=len, default="")
        line, number = names.generation(base)
        if len(prefix) <= len(line[0]):
            listed = {
                f: n
                for f, (other, n) in ((f, names.generation(f)) for f in families)
                if other == line and n <= number
            }
            if listed:
                latest = max(listed, key=lambda f: listed[f])
                return latest, int(listed[latest] < number)
        if prefix:
            return prefix, 0
        inside = [f for f in families if f"-{f}-" in f"-{base}-"]
        return max(inside, key=len, default=""), 0

    def _nearest(
        self, probe: _Probe, usable: Any, exclude: str = "", area: str = ""
    ) -> list[tuple[float, ModelKnowledge]]:
        log_size = probe.log_size
        return heapq.nsmallest(
            NEIGHBOURS,
            (
                (_distance(probe, log_size, other, other_log_size, area), entry)
                for entry, other, other_log_size in self._index()
                if entry.name != exclude and usable(entry)
            ),
            key=lambda pair: (pair[0], pair[1].name),
        )

    def _index(self) -> list[tuple[ModelKnowledge, _Probe, float]]:
        """Each entry with its probe, built once per set of entries."""
        if self._indexed is not self._entries:
            self._probes = [
                (entry, probe, probe.log_size)
                for entry in self._entries.values()
                for probe in (_probe_of(entry),)
            ]
            self._indexed = self._entries
        return self._probes

    def _impute(self, probe: _Probe, area: str, exclude: str) -> tuple[float, float, list[str]]:
        """(score, uncertainty, neighbours) of one area from the nearest entries that
        have a published score for it, each moved along the size trend."""
        if "embedding" in probe.specialties:
            return 0.0, 0.0, []
        nearest = self._nearest(probe, lambda e: area in self._published[e.name], exclude, area)
        if not nearest:
            return 0.0, 1.0, []
        slope = self._slopes.get(area, 0.0)
        floor = self._floors.get(area, 0.0)
        total = value = spread = 0.0
        for weight, (gap, entry) in zip(_weights(nearest), nearest, strict=True):
            doublings = math.log2(probe.size_b / entry.effective_params_b)
            published = self._published[entry.name][area]
            value += weight * _along_trend(published, slope, doublings, floor)
            spread += weight * gap
            total += weight
        score = min(1.0, max(0.0, value / total))
        return score, min(1.0, 0.2 + 0.3 * spread / total), [e.name for _, e in nearest]

    def _complete(
        self, entry: ModelKnowledge, published: Mapping[str, float], mapped: Mapping[str, float]
    ) -> ModelKnowledge:
        """A catalogue entry with its unpublished areas imputed from its neighbours;
        `mapped` holds the uncertainty of areas read from another benchmark."""
        areas: dict[str, float] = {}
        spread: dict[str, float] = {}
        used: list[str] = []
        for area in AREAS:
            if "embedding" in entry.specialties:
                # An embedding model does not generate text: it answers no prompt.
                areas[area], spread[area] = 0.0, 0.0
            elif area in published:
                areas[area] = published[area]
                spread[area] = mapped.get(area, 0.0)
            else:
                areas[area], spread[area], near = self._impute(
                    _probe_of(entry), area, exclude=entry.name
                )
                used += near
        return replace(
            entry,
            areas=areas,
            area_uncertainty=spread,
            uncertainty=round(sum(spread.values()) / len(AREAS), 4),
            neighbours=tuple(dict.fromkeys(used)),
        )


def _flag(value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise CatalogError(f"{at}: {value!r} is not true or false")
    return value


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
    uncertainty = sum(spread.values()) / len(AREAS)
    return replace(
        base,
        name=name,
        areas=areas,
        area_uncertainty=spread,
        origin=origin,  # type: ignore[arg-type]
        uncertainty=round(min(1.0, uncertainty), 4),
    )


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
        found[bench] = Source(benchmark=bench, value=float(value), url=url, title=title)
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
        )
    except KeyError as missing:
        raise CatalogError(f"{at}: {missing.args[0]} is required") from None
