"""The one table of the models in the LLMRouter score data, as Ollama would show them.

LLMRouter scored 9 open models (the score keys of `train.json`; `default_llm.json`
lists 14 with prices, 5 of which have no scores and are left out). Each is mapped to
the Ollama name a user would pull and to the details Ollama reports for it, so that a
dataset row and a live request build candidate features the same way.

Assumptions, the same for every row:

- quantization: Ollama's default tags ship Q4_K_M, so `quant_bits` is 4 (the data was
  scored on full-precision NVIDIA endpoints; the selector learns the tag a user runs);
- `params_b`: the model card's parameter count, not the rounded tag;
- `context_length`: the model's native window as Ollama reports it;
- `price_per_m`: USD per million tokens from `default_llm.json` (input and output are
  equal for all 9), the cost the evaluation trades against quality;
- the two Nemotron models have no official Ollama tag; the names below are the ones
  the community imports use, and their family is `nemotron` (a Llama derivative);
- `codegemma-7b` is mapped to `codegemma:7b`, which Ollama serves as the instruct
  variant with fill-in-the-middle (`insert`).

| LLMRouter name                  | Ollama name        | family   | B    | ctx    | caps   | $/M  |
|---------------------------------|--------------------|----------|------|--------|--------|------|
| qwen2.5-7b-instruct             | qwen2.5:7b         | qwen     | 7.6  | 32768  | tools  | 0.20 |
| codegemma-7b (code)             | codegemma:7b       | gemma    | 8.5  | 8192   | insert | 0.20 |
| gemma-2-9b-it                   | gemma2:9b          | gemma    | 9.2  | 8192   |        | 0.10 |
| llama-3.1-8b-instruct           | llama3.1:8b        | llama    | 8.0  | 131072 | tools  | 0.20 |
| llama3-chatqa-1.5-8b            | llama3-chatqa:8b   | llama    | 8.0  | 8192   |        | 0.20 |
| mistral-7b-instruct-v0.3        | mistral:7b         | mistral  | 7.2  | 32768  | tools  | 0.20 |
| llama-3.3-nemotron-super-49b-v1 | nemotron-super:49b | nemotron | 49.9 | 131072 | tools  | 0.90 |
| llama-3.1-nemotron-51b-instruct | nemotron:51b       | nemotron | 51.5 | 131072 |        | 0.90 |
| llama3-chatqa-1.5-70b           | llama3-chatqa:70b  | llama    | 70.6 | 8192   |        | 0.90 |

All are instruct models (`is_instruct`); only codegemma is a code model (`is_code`).

A row's candidate is built the way serving builds it: from what Ollama would report
(`tag`, `show`) through `proxy.registry.model_info`, which attaches the catalogue's
knowledge of the model (area scores, specialities, release date).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from proxy.registry import ModelInfo, model_info
from selector_model.catalog import Catalog
from selector_model.features import Candidate

QUANTIZATION = "Q4_K_M"
QUANT_BITS = 4.0


@dataclass(frozen=True)
class ModelSpec:
    """One model: its LLMRouter name, the Ollama identity, details and price."""

    dataset_name: str
    ollama_name: str
    family: str
    params_b: float
    context_length: int
    capabilities: frozenset[str]
    is_code: bool
    is_instruct: bool
    price_per_m: float
    quantization: str = QUANTIZATION
    quant_bits: float = QUANT_BITS

    def tag(self) -> dict[str, Any]:
        """The model's entry in Ollama's `/api/tags`."""
        return {
            "model": self.ollama_name,
            "name": self.ollama_name,
            "details": {
                "family": self.family,
                "parameter_size": f"{self.params_b}B",
                "quantization_level": self.quantization,
            },
        }

    def show(self) -> dict[str, Any]:
        """Ollama's `/api/show` of the model."""
        return {
            "details": self.tag()["details"],
            "capabilities": ["completion", *sorted(self.capabilities)],
            "model_info": {f"{self.family}.context_length": self.context_length},
        }

    def model_info(self, catalog: Catalog | None = None) -> ModelInfo:
        """The model as `auto` sees it, placed by `catalog` (`Registry.catalogue`: what
        the proxy reads under a configuration), else by the shipped catalogue."""
        if catalog is None or catalog is Catalog.shipped():
            return _model_info(self)
        return model_info(self.ollama_name, self.tag(), self.show(), catalog)

    def candidate(self, loaded: bool = False) -> Candidate:
        candidate = self.model_info().candidate
        return replace(candidate, loaded=True) if loaded else candidate


def _spec(
    dataset_name: str,
    ollama_name: str,
    family: str,
    params_b: float,
    context_length: int,
    price_per_m: float,
    capabilities: tuple[str, ...] = (),
    is_code: bool = False,
    is_instruct: bool = True,
) -> ModelSpec:
    return ModelSpec(
        dataset_name=dataset_name,
        ollama_name=ollama_name,
        family=family,
        params_b=params_b,
        context_length=context_length,
        capabilities=frozenset(capabilities),
        is_code=is_code,
        is_instruct=is_instruct,
        price_per_m=price_per_m,
    )


MODELS: tuple[ModelSpec, ...] = (
    _spec("qwen2.5-7b-instruct", "qwen2.5:7b", "qwen", 7.6, 32768, 0.20, ("tools",)),
    _spec("codegemma-7b", "codegemma:7b", "gemma", 8.5, 8192, 0.20, ("insert",), is_code=True),
    _spec("gemma-2-9b-it", "gemma2:9b", "gemma", 9.2, 8192, 0.10),
    _spec("llama-3.1-8b-instruct", "llama3.1:8b", "llama", 8.0, 131072, 0.20, ("tools",)),
    _spec("llama3-chatqa-1.5-8b", "llama3-chatqa:8b", "llama", 8.0, 8192, 0.20),
    _spec("mistral-7b-instruct-v0.3", "mistral:7b", "mistral", 7.2, 32768, 0.20, ("tools",)),
    _spec(
        "llama-3.3-nemotron-super-49b-v1",
        "nemotron-super:49b",
        "nemotron",
        49.9,
        131072,
        0.90,
        ("tools",),
    ),
    _spec("llama-3.1-nemotron-51b-instruct", "nemotron:51b", "nemotron", 51.5, 131072, 0.90),
    _spec("llama3-chatqa-1.5-70b", "llama3-chatqa:70b", "llama", 70.6, 8192, 0.90),
)


@functools.lru_cache(maxsize=64)
def _model_info(spec: ModelSpec) -> ModelInfo:
    return model_info(spec.ollama_name, spec.tag(), spec.show())


BY_DATASET_NAME: dict[str, ModelSpec] = {m.dataset_name: m for m in MODELS}
BY_OLLAMA_NAME: dict[str, ModelSpec] = {m.ollama_name: m for m in MODELS}
