"""A candidate model as the selector sees it, its one JSON shape, and its columns.

Candidate features describe a model by what is known of it (size, quantization, the
catalogue's per-area scores and specialities, release date, how uncertain that
knowledge is), never by its name: a model the selector never saw is scored from the
same columns as one it was trained on, so its P(success) on a coding prompt follows
its coding ability.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from selector_model.features.schema import (
    AREAS,
    CAPABILITIES,
    DEFAULT_RELEASE,
    FAMILIES,
    RELEASE_ORIGIN,
    SPECIALTIES,
    UNKNOWN_AREA,
)


@dataclass(frozen=True)
class Candidate:
    """What the registry knows about one model, as the selector sees it.

    `family` and `name` identify it for people (explain, usage events); the selector
    reads neither. `areas` are the catalogue's scores in `AREAS` order (empty: not
    known, scored as `UNKNOWN_AREA` with uncertainty 1); `active_params_b` is the
    parameters used per token (a mixture of experts uses fewer than it has; 0: all).

    `to_record` is its one JSON shape, wherever a candidate is stored: the usage
    events training reads back, the model table of an artifact."""

    name: str
    family: str = "other"
    params_b: float = 7.0
    quant_bits: float = 4.0
    context_length: int = 8192
    capabilities: frozenset[str] = field(default_factory=frozenset)
    is_code: bool = False
    is_instruct: bool = True
    loaded: bool = False
    active_params_b: float = 0.0
    areas: tuple[float, ...] = ()
    specialties: frozenset[str] = field(default_factory=frozenset)
    release: float = DEFAULT_RELEASE  # year, fractional (2024.5: mid 2024)
    uncertainty: float = 1.0  # 0: measured scores; 1: nothing known beyond the details
    # The same per area, in `AREAS` order (empty: `uncertainty` for each). Not a
    # feature: the policy weighs it by what a prompt asks for (`catalogue_prior.with_catalogue`).
    area_uncertainty: tuple[float, ...] = ()
    # Thinks whatever a request says (Ollama ignores `think: false` for gpt-oss). Not a
    # feature: what an answer is expected to take reads it (`selector_model.telemetry`).
    thinks_always: bool = False

    @property
    def active_b(self) -> float:
        """Billions of parameters each token runs through: what an answer costs."""
        return self.active_params_b if self.active_params_b > 0 else self.params_b

    def to_record(self) -> dict[str, Any]:
        """The candidate as JSON; `from_record` reads it back."""
        return {
            "name": self.name,
            "family": self.family,
            "params_b": self.params_b,
            "quant_bits": self.quant_bits,
            "context_length": self.context_length,
            "capabilities": sorted(self.capabilities),
            "is_code": self.is_code,
            "is_instruct": self.is_instruct,
            "loaded": self.loaded,
            "active_params_b": self.active_params_b,
            "areas": list(self.areas),
            "specialties": sorted(self.specialties),
            "release": self.release,
            "uncertainty": self.uncertainty,
            "area_uncertainty": list(self.area_uncertainty),
            "thinks_always": self.thinks_always,
        }

    @classmethod
    def from_record(cls, raw: Mapping[str, Any]) -> Candidate:
        """The candidate `to_record` wrote; a field it lacks takes its default, and keys
        beside the fields are ignored."""
        default = cls(name=str(raw["name"]))
        return cls(
            name=default.name,
            family=str(raw.get("family", default.family)),
            params_b=float(raw.get("params_b", default.params_b)),
            quant_bits=float(raw.get("quant_bits", default.quant_bits)),
            context_length=int(raw.get("context_length", default.context_length)),
            capabilities=frozenset(str(c) for c in raw.get("capabilities", ())),
            is_code=bool(raw.get("is_code", default.is_code)),
            is_instruct=bool(raw.get("is_instruct", default.is_instruct)),
            loaded=bool(raw.get("loaded", default.loaded)),
            active_params_b=float(raw.get("active_params_b", default.active_params_b)),
            areas=tuple(float(a) for a in raw.get("areas", ())),
            specialties=frozenset(str(c) for c in raw.get("specialties", ())),
            release=float(raw.get("release", default.release)),
            uncertainty=float(raw.get("uncertainty", default.uncertainty)),
            area_uncertainty=tuple(float(a) for a in raw.get("area_uncertainty", ())),
            thinks_always=bool(raw.get("thinks_always", default.thinks_always)),
        )


@functools.lru_cache(maxsize=4096)
def candidate_block(candidate: Candidate) -> tuple[float, ...]:
    """The candidate's part of a row, in `CANDIDATE_FEATURES` order. It depends on the
    candidate alone, so serving computes it once per model and loaded state."""
    known = len(candidate.areas) == len(AREAS)
    areas = candidate.areas if known else (UNKNOWN_AREA,) * len(AREAS)
    uncertainty = candidate.uncertainty if known else 1.0
    specialties = candidate.specialties | ({"code"} if candidate.is_code else set())
    return (
        math.log(max(candidate.params_b, 0.01)),
        math.log(max(candidate.active_b, 0.01)),
        float(candidate.quant_bits),
        math.log2(max(candidate.context_length, 1)),
        *(float(a) for a in areas),
        *(1.0 if name in specialties else 0.0 for name in SPECIALTIES),
        candidate.release - RELEASE_ORIGIN,
        float(uncertainty),
        1.0 if candidate.is_instruct else 0.0,
        1.0 if candidate.loaded else 0.0,
        *(1.0 if name in candidate.capabilities else 0.0 for name in CAPABILITIES),
    )


def rows(request: Sequence[float], candidates: Sequence[Candidate]) -> list[list[float]]:
    """One row per candidate, in `feature_names()` order."""
    return [[*request, *candidate_block(c)] for c in candidates]


def family_of(name: str, declared: str = "") -> str:
    """A family from Ollama's `details.family` or, failing that, the model name."""
    for text in (declared.lower(), name.lower()):
        for family in FAMILIES[:-1]:
            if family in text:
                return family
    return "other"


def params_from(size: str) -> float:
    """Billions of parameters from Ollama's `parameter_size` ("7.6B", "137M", "8x7B").

    Ollama's format.HumanNumber writes B, M and K, and a count below a thousand bare:
    a bare number is a raw count, as a server that gives the integer itself sends it.
    A count no model has, too small or too large, however it is written, says nothing
    (0: the name and the catalogue decide the size)."""
    match = re.fullmatch(r"\s*(?:(\d+)x)?(\d+(?:\.\d+)?)\s*([TBMK]?)\s*", size or "", re.I)
    if not match:
        return 0.0
    count = float(match.group(2)) * float(match.group(1) or 1)
    unit = match.group(3).upper()
    billions = count / 1e9 if not unit else count * _BILLIONS_PER[unit]
    return billions if _SMALLEST_COUNT <= billions * 1e9 <= _LARGEST_COUNT else 0.0


_BILLIONS_PER = {"T": 1e3, "B": 1.0, "M": 1e-3, "K": 1e-6}
# Fewer parameters than this is no language model; more than this, none there is (the
# largest open models have a few trillion): a stand-in server's made-up number.
_SMALLEST_COUNT = 1e5
_LARGEST_COUNT = 1e14


def quant_bits_from(level: str) -> float:
    """Bits per weight from Ollama's `quantization_level` ("Q4_K_M", "F16", "Q8_0",
    "FP8", "MXFP4"); 4 when it names none of them."""
    level = (level or "").upper()
    match = re.match(r"I?Q(\d)", level)
    if match:
        return float(match.group(1))
    if level.startswith(("F16", "BF16")):
        return 16.0
    if level.startswith("F32"):
        return 32.0
    if level.startswith(("FP8", "F8")):
        return 8.0
    return 4.0
