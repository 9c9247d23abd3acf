"""What the selector knows about one model: size, specialties, age and ability by area."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from selector_model.catalog import names

AREAS: tuple[str, ...] = ("knowledge", "reasoning", "math", "code", "instruction")
SPECIALTIES: tuple[str, ...] = ("code", "math", "vision", "reasoning", "tools", "embedding")
Origin = Literal["catalogue", "config", "profile", "nearest"]
ORIGINS: tuple[str, ...] = ("catalogue", "config", "profile", "nearest")


class Measured(NamedTuple):
    """An area measured on the user's own backend (`autoroute profile`): the share of
    `n` items answered correctly."""

    score: float
    n: int


def _frozen(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({area: round(float(values[area]), 4) for area in AREAS})


@dataclass(frozen=True)
class ModelKnowledge:
    """One model as the selector sees it.

    `areas` holds a score in [0, 1] for every area of `AREAS`; `area_uncertainty` says
    per area how far the score is from a number published for this exact model: 0 when
    it is one, growing with the distance of the neighbours it was imputed from; for a
    measured area, what its items leave unknown beyond that (`Catalog.with_measured`).
    `uncertainty` is their mean (plus a share for a size that had to be guessed).
    """

    name: str
    family: str
    params_b: float
    active_params_b: float
    specialties: frozenset[str]
    released: float
    context_length: int
    areas: Mapping[str, float]
    origin: Origin = "catalogue"
    neighbours: tuple[str, ...] = ()
    uncertainty: float = 0.0
    area_uncertainty: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(AREAS, 0.0))
    )
    # Ollama's `details.family` (the architecture: "llama", "qwen2", "gemma3", ...).
    arch: str = ""
    # A pretrained (base) model, which continues a text rather than answering it, where
    # its name does not say so (`starcoder2:3b`; `names.is_pretrained` reads the names
    # that do). Said of a model, never imputed from its neighbours.
    pretrained: bool = False
    # The catalogue entry whose published knowledge this is, by its own name, kept when a
    # profile blends its areas (the origin then says `profile`); "" for a model placed
    # from its details or described in `selector.models`: what says a name that reads
    # as pretrained is a chat tune the entry lists (`answers_requests`), and which
    # models the digest check compares (`registry._contradicted_digests`).
    entry: str = ""

    def __post_init__(self) -> None:
        missing = [area for area in AREAS if area not in self.areas]
        if missing:
            raise ValueError(f"{self.name}: areas {missing} missing")
        for area in AREAS:
            if not 0.0 <= float(self.areas[area]) <= 1.0:
                raise ValueError(f"{self.name}: {area} score {self.areas[area]} not in [0, 1]")
        if self.origin not in ORIGINS:
            raise ValueError(f"{self.name}: origin {self.origin!r} not one of {ORIGINS}")
        if not 0.0 <= self.uncertainty <= 1.0:
            raise ValueError(f"{self.name}: uncertainty {self.uncertainty} not in [0, 1]")
        object.__setattr__(self, "areas", _frozen(self.areas))
        spread = {area: float(self.area_uncertainty.get(area, 0.0)) for area in AREAS}
        object.__setattr__(self, "area_uncertainty", _frozen(spread))
        object.__setattr__(self, "specialties", frozenset(self.specialties))
        object.__setattr__(self, "neighbours", tuple(self.neighbours))

    def __hash__(self) -> int:
        # The mappings are read-only views, which Python does not hash by themselves.
        return hash((self.name, self.origin, tuple(self.areas.items()), self.uncertainty))

    def answers_requests(self, name: str) -> bool:
        """Whether the model `name` answers a request (a chat or instruct model) rather
        than continuing a text: not where its description or a whole word of its name
        (`names.is_pretrained`) says it is pretrained, unless that word is in the name
        of the catalogue entry it is, which the entry says is a chat model (a chat tune
        of a Python model, `wizardcoder:7b-python`)."""
        if self.pretrained:
            return False
        if self.entry and names.is_pretrained(self.entry):
            return True
        return not names.is_pretrained(name)

    @property
    def effective_params_b(self) -> float:
        """Size for comparing quality: a mixture of experts counts between its active
        and total parameters (their geometric mean)."""
        if 0 < self.active_params_b < self.params_b:
            return float((self.params_b * self.active_params_b) ** 0.5)
        return self.params_b

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "arch": self.arch,
            "params_b": self.params_b,
            "active_params_b": self.active_params_b,
            "specialties": sorted(self.specialties),
            "released": self.released,
            "context_length": self.context_length,
            "areas": dict(self.areas),
            "area_uncertainty": dict(self.area_uncertainty),
            "origin": self.origin,
            "neighbours": list(self.neighbours),
            "uncertainty": self.uncertainty,
            "pretrained": self.pretrained,
            "entry": self.entry,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelKnowledge:
        return cls(
            name=str(record["name"]),
            family=str(record["family"]),
            arch=str(record.get("arch", "")),
            params_b=float(record["params_b"]),
            active_params_b=float(record.get("active_params_b", record["params_b"])),
            specialties=frozenset(str(s) for s in record.get("specialties", ())),
            released=float(record["released"]),
            context_length=int(record["context_length"]),
            areas={str(k): float(v) for k, v in record["areas"].items()},
            area_uncertainty={
                str(k): float(v) for k, v in (record.get("area_uncertainty") or {}).items()
            },
            origin=record.get("origin", "catalogue"),
            neighbours=tuple(str(n) for n in record.get("neighbours", ())),
            uncertainty=float(record.get("uncertainty", 0.0)),
            pretrained=bool(record.get("pretrained", False)),
            entry=str(record.get("entry", "")),
        )


def ollama_capabilities(
    name: str, knowledge: ModelKnowledge, *, insert: bool = True
) -> tuple[str, ...]:
    """The capabilities Ollama's /api/show would list for the model `knowledge`
    describes, from its specialities, in the order Ollama appends them
    (server/images.go: the weights' completion or embedding and vision, then what the
    template supports). A pretrained model continues text: no tools, no thinking. A
    code model takes a suffix (`insert`) unless `insert` is False."""
    specialties = knowledge.specialties
    if "embedding" in specialties:
        return ("embedding",)
    chat = knowledge.answers_requests(name)
    wanted = (
        ("vision", "vision" in specialties),
        ("tools", chat and "tools" in specialties),
        ("insert", insert and "code" in specialties),
        ("thinking", chat and "reasoning" in specialties),
    )
    return ("completion", *(capability for capability, has in wanted if has))
