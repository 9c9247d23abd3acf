"""Models the emulator's table does not list, described as Ollama would describe them.

`autoroute emulate --models` stands in for someone's own fleet, whose names need not be
in `CATALOG`. A name the selector's catalogue knows (the way it resolves names: a
quantization or variant tag, an alias, `:latest`) gets that entry's architecture, size,
context length and specialities. Any other name gets the size it writes (`14b`, `8x7b`,
`360m`, `e4b`; else 7B), the architecture of the catalogue family it belongs to
(`dolphin-mixtral`: llama; else its first word, `mycorp` of `mycorp-assistant`), and
the rest from its nearest catalogue models. The quantization is the tag's (`-q8_0`),
else Q4_K_M, Ollama's default (F16 for an embedding model, as the library publishes
those). Everything is a function of the name, digests included: the same name is
always the same model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from proxy.protocol import go_time
from selector_model.catalog import Catalog, names, ollama_capabilities

from .catalog import CHATML_STOP, ModelSpec, normalize_name, template_for

_DEFAULT_QUANTIZATION = "Q4_K_M"
# The library publishes embedding models unquantized.
_EMBEDDER_QUANTIZATION = "F16"
# Ollama's file types (fs/ggml/type.go) by name: (general.file_type, bits per weight on
# disk, quantization blocks' scales included).
_QUANTIZATIONS = {
    "F32": (0, 32.0),
    "F16": (1, 16.0),
    "Q4_0": (2, 4.55),
    "Q4_1": (3, 5.0),
    "Q8_0": (7, 8.5),
    "Q5_0": (8, 5.5),
    "Q5_1": (9, 6.0),
    "Q2_K": (10, 3.35),
    "Q3_K_S": (11, 3.5),
    "Q3_K_M": (12, 3.9),
    "Q3_K_L": (13, 4.3),
    "Q4_K_S": (14, 4.6),
    "Q4_K_M": (15, 4.9),
    "Q5_K_S": (16, 5.55),
    "Q5_K_M": (17, 5.7),
    "Q6_K": (18, 6.6),
    "BF16": (32, 16.0),
    "MXFP4": (38, 4.25),
}
# The spellings of tags that Ollama's file type names write otherwise.
_QUANT_SPELLINGS = {"FP16": "F16", "FP32": "F32"}
# Gemma 3n's `e4b`: four billion effective parameters.
_EFFECTIVE_SIZE = re.compile(r"(?:^|[-_:.])e(\d+(?:\.\d+)?)b(?=$|[-_:.])")
# (most parameters, embedding length, blocks, attention heads): a transformer's shape
# by its size, as the common open models of each size have it.
_SHAPES = (
    (0.2e9, 768, 12, 12),
    (1.0e9, 1024, 24, 16),
    (2.0e9, 2048, 28, 16),
    (4.0e9, 3072, 28, 24),
    (10e9, 4096, 32, 32),
    (20e9, 5120, 40, 40),
    (40e9, 5120, 64, 64),
    (100e9, 8192, 80, 64),
)
_LARGEST_SHAPE = (12288, 96, 96)
# Manifests' modification times fall in this month, as the table's do.
_MONTH_START_NS = int(dt.datetime(2025, 3, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
_MONTH_NS = 30 * 86400 * 1_000_000_000


@dataclass(frozen=True)
class Synthesized:
    """A model the table does not list, and what described it."""

    spec: ModelSpec
    # The catalogue entry that describes it; "" when its name did.
    entry: str

    def __str__(self) -> str:
        how = f"catalogue entry {self.entry}" if self.entry else "from its name"
        s = self.spec
        return f"{s.name} ({how}: {s.family} {s.parameter_size} {s.quantization_level})"


def synthesize(name: str) -> Synthesized:
    """The model `name` (a valid Ollama model name) as Ollama would report it."""
    name = normalize_name(name)
    catalog = Catalog.shipped()
    entry = catalog.resolve(name) or ""
    # A size the name writes wins over the neighbours' (the catalogue guesses 7B when
    # there is none).
    size_b = 0.0 if entry else _named_size_b(name)
    knowledge = catalog.lookup(name, {"parameter_size": f"{size_b}B"} if size_b else {})
    arch = knowledge.arch or (knowledge.family if entry else "") or _first_word(name)
    count = round(knowledge.params_b * 1e9)
    capabilities = ollama_capabilities(name, knowledge)
    embedder = capabilities == ("embedding",)
    quantization = _quantization(name, _EMBEDDER_QUANTIZATION if embedder else "")
    file_type, bits = _QUANTIZATIONS[quantization]
    embedding_length, blocks, heads = _shape(count)
    digest = hashlib.sha256(f"synthesized:{name}".encode()).digest()
    spec = ModelSpec(
        name,
        arch,
        _human_number(count),
        quantization,
        round(count * bits / 8) + 1_000_000,
        count,
        knowledge.context_length,
        embedding_length,
        capabilities,
        go_time(_MONTH_START_NS + int.from_bytes(digest[:8]) % _MONTH_NS),
        template_for(capabilities),
        stop=() if embedder else CHATML_STOP,
        block_count=blocks,
        head_count=heads,
        head_count_kv=heads if embedder else 8,
        file_type=file_type,
        skills=() if embedder else tuple(knowledge.areas.items()),
    )
    return Synthesized(spec, entry)


def _named_size_b(name: str) -> float:
    """Billions of parameters the name writes (`14b`, `8x7b`, `360m`, `e4b`); 0 if none."""
    total, _ = names.size_from_name(name)
    if total:
        return total
    base, tag = names.split(name)
    effective = _EFFECTIVE_SIZE.search(f"{base}:{tag}")
    return float(effective.group(1)) if effective else 0.0


def _first_word(name: str) -> str:
    """An architecture for a name nothing else describes: its first word (`mycorp` of
    `mycorp-assistant`), as most architectures are named after their model's base."""
    base, _ = names.split(name)
    word = re.match(r"[a-z][a-z0-9]*", base)
    return word.group(0) if word else base


def _quantization(name: str, default: str = "") -> str:
    """The quantization the tag names (`8b-instruct-q8_0`: Q8_0), else `default`, else
    Ollama's default, Q4_K_M."""
    default = default or _DEFAULT_QUANTIZATION
    level = names.quantization(name).upper()
    level = _QUANT_SPELLINGS.get(level, level)
    return level if level in _QUANTIZATIONS else default


def _shape(count: int) -> tuple[int, int, int]:
    for most, embedding_length, blocks, heads in _SHAPES:
        if count <= most:
            return embedding_length, blocks, heads
    return _LARGEST_SHAPE


def _human_number(count: int) -> str:
    """format.HumanNumber, as Ollama writes details.parameter_size."""
    for unit, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2)):
        if count >= unit:
            number = count / unit
            places = 0 if number.is_integer() else decimals
            return f"{number:.{places}f}{suffix}"
    return f"{count / 1e3:.0f}K" if count >= 1000 else str(count)
