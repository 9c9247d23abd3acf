"""Placement: a model described by its neighbours among the catalogue's entries.

A model the catalogue does not list, and every area an entry has no published result
for, is imputed from the nearest entries that have one: nearest by family (else
architecture), size, specialties and release date (`_distance`), each neighbour's score
moved along the size trend seen within families, the nearer ones weighing more. The
distance of those neighbours is the uncertainty the result carries. A later generation
of a listed line is placed beside the latest generation listed before it, a step up
(`GENERATION_STEP`), and so is an entry's area that no entry of its family publishes,
where an earlier generation of its line does.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from selector_model.catalog import names
from selector_model.catalog.knowledge import AREAS, ModelKnowledge
from selector_model.features import params_from

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
# The areas in which a pretrained (base) model is another model than its chat tune. A
# pretrained model's HumanEval or MBPP is a completion of the function, a chat model's
# an answer to a request; and a pretrained model has no instruction tuning: the
# catalogue's pretrained entries that publish IFEval (StarCoder2, Phi-2, Falcon2, the
# YaRN models) score far below its chat models. Imputing these areas, a neighbour that
# differs in being pretrained is this much further (as one that differs in the code
# specialty), so that the pretrained Code Llamas and DeepSeek Coders do not set a chat
# coder's code, nor the chat models a base model's code or instruction following.
PRETRAINED_AREAS = frozenset({"code", "instruction"})
_PRETRAINED_WEIGHT = _AREA_SPECIALTY_WEIGHT
# Specialties read from a model's capabilities and name are an uncertain sign (a tune
# of a Qwen3 with its own template shows no thinking, whatever its weights learnt):
# against an entry of its architecture, a difference in them counts this fraction of its
# weight, so that the architecture's entries stay nearer than another architecture's of
# its size. The area a specialty is about still sets them apart
# (`_AREA_SPECIALTY_WEIGHT`), and an embedding model stays another kind of model.
_SAME_ARCH_SPECIALTY = 0.25
# How far apart a year between releases puts two models. Training data and recipes
# change from one generation to the next, so a model of another year is a poorer
# stand-in; a year counts for less than another architecture, so that architecture and
# size still choose neighbours first.
_YEAR_WEIGHT = 0.5
# How far apart a doubling of the context the weights take puts two models, when the
# release date of one is not known (a tune known by its /api/show alone): a model's
# context says its generation, 2K and 4K for the Llamas of 2023, 128K and more since,
# so that a tune of a recent model is not placed beside old models of its architecture
# and size. Two doublings weigh as a year does; models left out and placed so without
# their family lie nearer their published results than without it, and about as near
# with a doubling worth anything from half a year to a year (tests/test_catalog.py).
CONTEXT_WEIGHT = _YEAR_WEIGHT / 2
# A later generation of a line than the catalogue lists (`gemma4`, `qwen3.5`) is placed
# with the latest generation listed before it, as if of that family, and each area moved
# this far up on the logit scale: the catalogue's own generations, each left out whole
# and placed so beside the one before, lie this far on average above their placement
# without a step (tests/test_catalog.py measures it). Math moved most from one
# generation to the next, knowledge and reasoning least.
GENERATION_STEP = {
    "knowledge": 0.3,
    "reasoning": 0.3,
    "math": 0.9,
    "code": 0.4,
    "instruction": 0.6,
}
# The years between two generations of a line, as the catalogue's lines show it.
GENERATION_YEARS = 0.4


@dataclass(frozen=True)
class Probe:
    """What placement compares: a model's family, architecture, size and specialties."""

    family: str
    arch: str
    size_b: float
    specialties: frozenset[str]
    # Fractional year of release; None when not known (a model placed from its name).
    released: float | None = None
    # Whether the specialties are read from capabilities and name, not declared.
    specialties_read: bool = False
    # The context length it was trained to; 0 when not known.
    context: int = 0
    # Whether it is a pretrained (base) model rather than a chat one.
    pretrained: bool = False

    @property
    def log_size(self) -> float:
        return math.log2(max(self.size_b, 1e-3))


def _distance(
    probe: Probe, log_size: float, other: Probe, other_log_size: float, area: str = ""
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
        scale = _SAME_ARCH_SPECIALTY if probe.specialties_read and family < 1.5 else 1.0
        for name in probe.specialties ^ other.specialties:
            specialty += scale * _SPECIALTY_WEIGHT.get(name, 0.0)
            if area and _SPECIALTY_AREA.get(name) == area:
                specialty += _AREA_SPECIALTY_WEIGHT
    if probe.pretrained != other.pretrained and area in PRETRAINED_AREAS:
        specialty += _PRETRAINED_WEIGHT
    era = 0.0
    if probe.released is not None and other.released is not None:
        era = _YEAR_WEIGHT * abs(probe.released - other.released)
    elif probe.context > 0 and other.context > 0:
        era = CONTEXT_WEIGHT * abs(math.log2(probe.context / other.context))
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
    return shifted(score, 4.0 * slope * doublings, floor)


def shifted(score: float, logits: float, floor: float = 0.0) -> float:
    """`score` moved by `logits` on the logit scale, never below `floor`."""
    score = min(0.995, max(0.005, score))
    logit = math.log(score / (1.0 - score)) + logits
    return max(floor, 1.0 / (1.0 + math.exp(-logit)))


def probe_of(entry: ModelKnowledge) -> Probe:
    return Probe(
        entry.family,
        entry.arch,
        entry.effective_params_b,
        entry.specialties,
        entry.released,
        context=entry.context_length,
        pretrained=entry.pretrained,
    )


class Neighbourhood:
    """The catalogue's entries as neighbours: `entries` by name, the area scores each
    has published (`published`; on the area's scale), the size trend per area
    (`slopes`) and the chance level of each area's scale (`floors`)."""

    def __init__(
        self,
        entries: Mapping[str, ModelKnowledge],
        published: Mapping[str, Mapping[str, float]],
        slopes: Mapping[str, float],
        floors: Mapping[str, float],
    ) -> None:
        self.entries = entries
        self.published = published
        self.slopes = slopes
        self.floors = floors
        # The architectures the entries have (`details.family` as Ollama reports it).
        self._archs = frozenset(e.arch for e in entries.values() if e.arch)
        # Each entry with its probe, which every placement compares with.
        self._index = [
            (entry, probe, probe.log_size)
            for entry in entries.values()
            for probe in (probe_of(entry),)
        ]
        # Each family's line and generation in it (`names.generation`).
        self._generations = {e.family: names.generation(e.family) for e in entries.values()}

    def place(
        self,
        name: str,
        details: Mapping[str, Any],
        capabilities: tuple[str, ...],
        spec: Mapping[str, Any] | None = None,
        released: float | None = None,
    ) -> ModelKnowledge:
        """Describe a model the catalogue does not list and impute its areas from its
        nearest catalogue entries; `spec`, what a user's description says of it
        (`released`, its release date read from there)."""
        spec = spec or {}
        base, _ = names.split(name)
        family, generations = str(spec.get("family") or ""), 0
        if not family:
            family, generations = self.family_of(base)
        if not family:
            # A repository named after its organisation first: its model's name.
            rest = names.without_organisation(name)
            if rest:
                family, generations = self.family_of(rest)
        arch = str(spec.get("arch") or details.get("family") or "").lower()
        # The listed models of its family: its architecture, specialties and era.
        kin = [e for e in self.entries.values() if e.family == family] if family else []
        if kin and not generations and not spec.get("family") and self._other_arch(arch, kin):
            # The backend's architecture says the word of the name (`my-qwen-tune`: the
            # Qwen 1.5 family) is not its lineage: its architecture's entries place it.
            family, kin = "", []
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
        # Declared (even as none), a description's specialties are not read.
        read = spec.get("specialties") is None
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
        era = released
        if era is None and kin:
            # A new size of a listed family comes from that family's era (a StarCoder
            # 1B is a 2023 model, whatever 1B coders came out since).
            era = sum(e.released for e in kin) / len(kin) + generations * GENERATION_YEARS
        reported_context = int(details.get("context_length") or 0)
        # A model of a listed family (a version or a tune the catalogue does not list)
        # has its family's specialties, which the catalogue declares: read only where no
        # family says them, or a Magistral's math would be read off the Mistral Smalls
        # of its architecture rather than off the reasoning models its entry's is.
        read = read and not kin
        # Pretrained as its name or its description says, or as every listed model of
        # its family is (a StarCoder2 of another size), unless its name says chat. Only
        # its neighbours are chosen so: a model is said to be pretrained, never found so.
        pretrained = (
            spec.get("pretrained") is True
            or names.is_pretrained(name)
            or (bool(kin) and all(e.pretrained for e in kin) and not names.is_chat_variant(name))
        )
        probe = Probe(
            family, arch, size, frozenset(specialties), era, read, reported_context, pretrained
        )
        nearest = self._nearest(probe, lambda e: True)
        areas: dict[str, float] = {}
        spread: dict[str, float] = {}
        for area in AREAS:
            # Placed as its family's entries are (`impute_listed`: an area no entry of
            # the family publishes beside the generation before it, a step up); a later
            # generation than the catalogue lists, then its own steps up.
            areas[area], spread[area], _ = self.impute_listed(probe, area, exclude="")
            if generations and areas[area] > 0.0:
                shift = generations * GENERATION_STEP[area]
                areas[area] = shifted(areas[area], shift, self.floors.get(area, 0.0))
        weights = _weights(nearest)
        released = sum(w * e.released for w, (_, e) in zip(weights, nearest, strict=True)) / sum(
            weights
        )
        if generations and era is not None:
            released = era
        context = reported_context or nearest[0][1].context_length
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

    def _other_arch(self, arch: str, kin: list[ModelKnowledge]) -> bool:
        """Whether `arch`, a reported architecture the catalogue lists, is none of the
        family `kin`'s (a later generation of a line may bring its own)."""
        archs = {e.arch for e in kin if e.arch}
        return bool(archs) and arch not in archs and arch in self._archs

    def family_of(self, base: str) -> tuple[str, int]:
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
        for entry in self.entries.values():
            if names.split(entry.name)[0] == base:
                return entry.family, 0
        families = {e.family for e in self.entries.values()}
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
        self, probe: Probe, usable: Any, exclude: str = "", area: str = ""
    ) -> list[tuple[float, ModelKnowledge]]:
        log_size = probe.log_size
        return heapq.nsmallest(
            NEIGHBOURS,
            (
                (_distance(probe, log_size, other, other_log_size, area), entry)
                for entry, other, other_log_size in self._index
                if entry.name != exclude and usable(entry)
            ),
            key=lambda pair: (pair[0], pair[1].name),
        )

    def impute(self, probe: Probe, area: str, exclude: str) -> tuple[float, float, list[str]]:
        """(score, uncertainty, neighbours) of one area from the nearest entries that
        have a published score for it, each moved along the size trend."""
        if "embedding" in probe.specialties:
            return 0.0, 0.0, []
        nearest = self._nearest(probe, lambda e: area in self.published[e.name], exclude, area)
        if not nearest:
            return 0.0, 1.0, []
        slope = self.slopes.get(area, 0.0)
        floor = self.floors.get(area, 0.0)
        total = value = spread = 0.0
        for weight, (gap, entry) in zip(_weights(nearest), nearest, strict=True):
            doublings = math.log2(probe.size_b / entry.effective_params_b)
            published = self.published[entry.name][area]
            value += weight * _along_trend(published, slope, doublings, floor)
            spread += weight * gap
            total += weight
        score = min(1.0, max(0.0, value / total))
        return score, min(1.0, 0.2 + 0.3 * spread / total), [e.name for _, e in nearest]

    def complete(
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
                areas[area], spread[area], near = self.impute_listed(
                    probe_of(entry), area, exclude=entry.name
                )
                used += near
        return replace(
            entry,
            areas=areas,
            area_uncertainty=spread,
            uncertainty=round(sum(spread.values()) / len(AREAS), 4),
            neighbours=tuple(dict.fromkeys(used)),
        )

    def impute_listed(
        self, probe: Probe, area: str, exclude: str
    ) -> tuple[float, float, list[str]]:
        """`impute` for a model of a listed family. An area no entry of its family
        publishes (qwen3-coder's code) is placed as a later generation is, beside the
        generation before it, a step up: published scores left out so for a whole family
        lie nearer than their neighbours alone place them (tests/test_catalog.py). Where
        the family publishes the area for other sizes, those place it better still."""
        before = self.earlier_generation(probe, area)
        if not before:
            return self.impute(probe, area, exclude)
        score, spread, near = self.impute(replace(probe, family=before), area, exclude)
        if score > 0.0:
            score = shifted(score, GENERATION_STEP[area], self.floors.get(area, 0.0))
        return score, spread, near

    def earlier_generation(self, probe: Probe, area: str) -> str:
        """The family a model's `area` is placed beside when no entry of its own family
        publishes it: the latest earlier generation of its line that does, in an entry
        alike in the specialty the area is about (a coder's code beside the coders
        before it), that entry the nearest in size; "" when there is none."""
        published = self.published
        family = probe.family
        if not family or family not in self._generations:
            return ""
        if any(area in published[e.name] for e in self.entries.values() if e.family == family):
            return ""
        line, number = self._generations[family]
        about = {s for s, a in _SPECIALTY_AREA.items() if a == area}
        candidates = [
            e
            for e in self.entries.values()
            if area in published[e.name]
            and "embedding" not in e.specialties
            and self._generations[e.family][0] == line
            and self._generations[e.family][1] < number
            and e.specialties & about == probe.specialties & about
        ]
        if not candidates:
            return ""
        latest = max(self._generations[e.family][1] for e in candidates)
        nearest = min(
            (e for e in candidates if self._generations[e.family][1] == latest),
            key=lambda e: (
                abs(math.log2(max(e.effective_params_b, 1e-3)) - probe.log_size),
                e.name,
            ),
        )
        return nearest.family
