from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from proxy import config_loading, registry
from proxy.config import ConfigError
from selector_model.catalog import (
    AREAS,
    DEFAULT_PATH,
    Catalog,
    CatalogError,
    Figure,
    Measured,
    ModelKnowledge,
    placement,
    scales,
)
from selector_model.features import Candidate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("qwen2.5:7b", "qwen2.5:7b"),
        ("qwen2.5", "qwen2.5:7b"),
        ("qwen2.5:latest", "qwen2.5:7b"),
        ("Qwen2.5:7B", "qwen2.5:7b"),
        ("qwen2.5-7b-instruct", "qwen2.5:7b"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5:7b"),
        ("hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", "qwen2.5:7b"),
        ("qwen2.5:7b-instruct-q4_K_M", "qwen2.5:7b"),
        ("registry.ollama.ai/library/llama3.1:8b-instruct-fp16", "llama3.1:8b"),
        ("someone/llama3.1:70b-instruct-q8_0", "llama3.1:70b"),
        ("qwen3:30b-a3b", "qwen3:30b-a3b-thinking-2507"),
        ("qwen3:30b-a3b-q4_K_M", "qwen3-30b-a3b:latest"),
        # A quantization is one word of the tag, whatever its underscores; a tag that
        # names a variant entry keeps it (the bare tag is another model).
        ("olmo-3:7b-instruct-q4_K_M", "olmo-3:7b-instruct"),
        ("granite4:micro-h-q4_K_M", "granite4:micro-h"),
        ("granite4:tiny-h-q8_0", "granite4:tiny-h"),
        # Qwen3's July 2025 updates are models of their own under the qwen3 name.
        ("qwen3:4b-thinking-2507-q4_K_M", "qwen3:4b-thinking-2507"),
        ("qwen3:235b-a22b-instruct-2507-q4_K_M", "qwen3:235b-a22b-instruct-2507"),
        ("qwen3:235b-a22b-thinking-2507", "qwen3:235b-a22b-thinking-2507"),
        ("Qwen/Qwen3-235B-A22B-Instruct-2507", "qwen3:235b-a22b-instruct-2507"),
        ("mistral-7b-instruct-v0.3", "mistral:7b"),
        ("deepseek-r1-distill-qwen-7b", "deepseek-r1:7b"),
        ("nomic-embed-text", "nomic-embed-text:v1.5"),
        # Library tags that name a size by a word.
        ("deepseek-coder-v2:lite", "deepseek-coder-v2:16b"),
        ("deepseek-coder-v2:lite-instruct-q4_0", "deepseek-coder-v2:16b"),
        ("deepseek-v2:lite", "deepseek-v2:16b"),
        ("phi3:medium", "phi3:14b"),
    ],
)
def test_names_resolve_to_their_entry(catalog: Catalog, name: str, entry: str) -> None:
    assert catalog.resolve(name) == entry
    assert catalog.lookup(name).name == entry
    assert catalog.lookup(name).origin == "catalogue"


@pytest.mark.parametrize(
    ("name", "alias", "entry"),
    [
        ("tulu3:8b", "allenai/Llama-3.1-Tulu-3-8B", "tulu3:8b"),
        ("tulu3:70b-q4_K_M", "Llama-3.1-Tulu-3-70B", "tulu3:70b"),
        ("cogito:8b", "deepcogito/cogito-v1-preview-llama-8B", "cogito:8b"),
        ("cogito:14b", "cogito-v1-preview-qwen-14B", "cogito:14b"),
        ("cogito:70b", "deepcogito/cogito-v1-preview-llama-70B", "cogito:70b"),
        ("dolphin3:8b", "cognitivecomputations/Dolphin3.0-Llama3.1-8B", "dolphin3:8b"),
        ("dolphin3", "Dolphin3.0-Llama3.1-8B", "dolphin3:8b"),
        ("openthinker:7b", "open-thoughts/OpenThinker-7B", "openthinker:7b"),
        ("openthinker:32b", "OpenThinker-32B", "openthinker:32b"),
        ("deepscaler:1.5b", "agentica-org/DeepScaleR-1.5B-Preview", "deepscaler:1.5b"),
        ("mathstral:7b", "mistralai/Mathstral-7B-v0.1", "mathstral:7b"),
        ("qwen2-math:72b", "Qwen/Qwen2-Math-72B-Instruct", "qwen2-math:72b"),
        ("aya-expanse:32b", "CohereForAI/aya-expanse-32b", "aya-expanse:32b"),
        ("wizardlm2:7b", "microsoft/WizardLM-2-7B", "wizardlm2:7b"),
        ("wizardlm2:8x22b", "WizardLM-2-8x22B", "wizardlm2:8x22b"),
        ("granite3-dense:8b", "ibm-granite/granite-3.0-8b-instruct", "granite3-dense:8b"),
        ("granite3-moe:3b", "ibm-granite/granite-3.0-3b-a800m-instruct", "granite3-moe:3b"),
        ("smallthinker:3b", "PowerInfer/SmallThinker-3B-Preview", "smallthinker:3b"),
        ("athene-v2:72b", "Nexusflow/Athene-V2-Chat", "athene-v2:72b"),
        ("marco-o1:7b", "AIDC-AI/Marco-o1", "marco-o1:7b"),
        ("zephyr:7b-beta-q4_0", "HuggingFaceH4/zephyr-7b-beta", "zephyr:7b"),
        ("openhermes", "teknium/OpenHermes-2.5-Mistral-7B", "openhermes:v2.5"),
        ("nous-hermes2:10.7b", "NousResearch/Nous-Hermes-2-SOLAR-10.7B", "nous-hermes2:10.7b"),
        ("vicuna:7b", "lmsys/vicuna-7b-v1.5", "vicuna:7b"),
        ("orca2:13b", "microsoft/Orca-2-13b", "orca2:13b"),
        ("mistral-small:22b", "mistralai/Mistral-Small-Instruct-2409", "mistral-small:22b"),
        ("falcon3:1b", "tiiuae/Falcon3-1B-Instruct", "falcon3:1b"),
        ("falcon3:3b-instruct-q4_K_M", "Falcon3-3B-Instruct", "falcon3:3b"),
        ("falcon3:10b", "tiiuae/Falcon3-10B-Instruct", "falcon3:10b"),
        ("aya", "CohereForAI/aya-23-8B", "aya:8b"),
        ("aya:35b", "CohereForAI/aya-23-35B", "aya:35b"),
        ("hermes3:3b", "NousResearch/Hermes-3-Llama-3.2-3B", "hermes3:3b"),
        ("granite3.1-moe:1b", "ibm-granite/granite-3.1-1b-a400m-instruct", "granite3.1-moe:1b"),
        ("granite3.1-moe", "ibm-granite/granite-3.1-3b-a800m-instruct", "granite3.1-moe:3b"),
        ("llama3-gradient", "gradientai/Llama-3-8B-Instruct-Gradient-1048k", "llama3-gradient:8b"),
        ("llama3-groq-tool-use:8b", "Groq/Llama-3-Groq-8B-Tool-Use", "llama3-groq-tool-use:8b"),
        ("smollm:135m", "HuggingFaceTB/SmolLM-135M-Instruct", "smollm:135m"),
        ("smollm:360m", "HuggingFaceTB/SmolLM-360M-Instruct", "smollm:360m"),
        ("smollm", "HuggingFaceTB/SmolLM-1.7B-Instruct", "smollm:1.7b"),
        ("deepseek-v3.1", "deepseek-ai/DeepSeek-V3.1", "deepseek-v3.1:671b"),
        ("r1-1776:70b", "perplexity-ai/r1-1776-distill-llama-70b", "r1-1776:70b"),
        ("deepcoder:14b", "agentica-org/DeepCoder-14B-Preview", "deepcoder:14b"),
        ("deepcoder:1.5b", "agentica-org/DeepCoder-1.5B-Preview", "deepcoder:1.5b"),
        (
            "dolphin-mistral",
            "cognitivecomputations/dolphin-2.8-mistral-7b-v02",
            "dolphin-mistral:7b",
        ),
        ("llava-llama3:8b", "xtuner/llava-llama-3-8b-v1_1", "llava-llama3:8b"),
        ("llama2-uncensored", "georgesung/llama2_7b_chat_uncensored", "llama2-uncensored:7b"),
        ("llama2-uncensored:70b", "llama2-uncensored:70b-chat-q4_0", "llama2-uncensored:70b"),
        ("starcoder:1b", "bigcode/starcoderbase-1b", "starcoder:1b"),
        ("starcoder:7b", "bigcode/starcoderbase-7b", "starcoder:7b"),
        ("granite3.2:2b", "ibm-granite/granite-3.2-2b-instruct", "granite3.2:2b"),
        (
            "wizard-vicuna-uncensored",
            "cognitivecomputations/Wizard-Vicuna-7B-Uncensored",
            "wizard-vicuna-uncensored:7b",
        ),
        (
            "wizard-vicuna-uncensored:30b",
            "Wizard-Vicuna-30B-Uncensored",
            "wizard-vicuna-uncensored:30b",
        ),
        ("sailor2", "sail/Sailor2-8B-Chat", "sailor2:8b"),
        ("sailor2:20b", "sail/Sailor2-20B-Chat", "sailor2:20b"),
        (
            "command-r7b-arabic",
            "CohereLabs/c4ai-command-r7b-arabic-02-2025",
            "command-r7b-arabic:7b",
        ),
        ("falcon", "tiiuae/falcon-7b-instruct", "falcon:7b"),
        ("falcon:40b-instruct-q4_0", "falcon-40b-instruct", "falcon:40b"),
        ("falcon:180b-chat", "tiiuae/falcon-180B-chat", "falcon:180b"),
        ("mistral-openorca", "Open-Orca/Mistral-7B-OpenOrca", "mistral-openorca:7b"),
        ("notus:7b", "argilla/notus-7b-v1", "notus:7b"),
        ("notux", "argilla/notux-8x7b-v1", "notux:8x7b"),
        ("starling-lm:7b-alpha", "berkeley-nest/Starling-LM-7B-alpha", "starling-lm:7b-alpha"),
        ("neural-chat:7b-v3.3-q4_K_M", "Intel/neural-chat-7b-v3-3", "neural-chat:7b-v3.3"),
        ("neural-chat:7b-v3.1", "Intel/neural-chat-7b-v3-1", "neural-chat:7b-v3.1"),
        ("stablelm-zephyr", "stabilityai/stablelm-zephyr-3b", "stablelm-zephyr:3b"),
        ("stablelm2", "stabilityai/stablelm-2-1_6b-chat", "stablelm2:1.6b"),
        ("stablelm2:1.6b-zephyr", "stabilityai/stablelm-2-zephyr-1_6b", "stablelm2:1.6b-zephyr"),
        ("stablelm2:12b", "stabilityai/stablelm-2-12b-chat", "stablelm2:12b"),
        ("dolphin-llama3", "cognitivecomputations/dolphin-2.9-llama3-8b", "dolphin-llama3:8b"),
        ("dbrx", "databricks/dbrx-instruct", "dbrx:132b"),
        ("solar-pro", "upstage/solar-pro-preview-instruct", "solar-pro:22b"),
        ("zephyr:141b", "HuggingFaceH4/zephyr-orpo-141b-A35b-v0.1", "zephyr:141b"),
        ("nous-hermes", "NousResearch/Nous-Hermes-llama-2-7b", "nous-hermes:7b"),
        ("llama-pro", "TencentARC/LLaMA-Pro-8B-Instruct", "llama-pro:instruct"),
        ("orca-mini", "pankajmathur/orca_mini_3b", "orca-mini:3b"),
        ("orca-mini:7b-v3", "psmathur/orca_mini_v3_7b", "orca-mini:7b-v3"),
        ("orca-mini:13b-v3-q4_0", "orca_mini_v3_13b", "orca-mini:13b-v3"),
        ("orca-mini:70b", "pankajmathur/orca_mini_v3_70b", "orca-mini:70b"),
        ("stable-beluga:70b", "stabilityai/StableBeluga2", "stable-beluga:70b"),
        ("nexusraven:13b-v2", "Nexusflow/NexusRaven-V2-13B", "nexusraven:13b-v2"),
        ("codebooga", "oobabooga/CodeBooga-34B-v0.1", "codebooga:34b"),
        ("starling-lm", "Nexusflow/Starling-LM-7B-beta", "starling-lm:7b-beta"),
        ("neural-chat", "Intel/neural-chat-7b-v3-3", "neural-chat:7b-v3.3"),
        ("nexusraven", "NexusRaven-V2-13B", "nexusraven:13b-v2"),
        ("stable-beluga", "stabilityai/StableBeluga-7B", "stable-beluga:7b"),
        ("stable-beluga:13b", "StableBeluga-13B", "stable-beluga:13b"),
        ("yarn-mistral", "NousResearch/Yarn-Mistral-7b-128k", "yarn-mistral:7b-128k"),
        ("yarn-mistral:7b-64k", "Yarn-Mistral-7b-64k", "yarn-mistral:7b-64k"),
        ("yarn-llama2", "NousResearch/Yarn-Llama-2-7b-64k", "yarn-llama2:7b-64k"),
        ("yarn-llama2:7b-128k", "Yarn-Llama-2-7b-128k", "yarn-llama2:7b-128k"),
        ("yarn-llama2:13b-128k", "NousResearch/Yarn-Llama-2-13b-128k", "yarn-llama2:13b-128k"),
        ("wizard-math", "WizardLM/WizardMath-7B-V1.1", "wizard-math:7b"),
        ("wizard-math:13b-q4_0", "WizardLM/WizardMath-13B-V1.0", "wizard-math:13b"),
        ("wizard-math:70b", "WizardMath-70B-V1.0", "wizard-math:70b"),
        ("openhermes:v2", "teknium/OpenHermes-2-Mistral-7B", "openhermes:v2"),
        (
            "nous-hermes2-mixtral",
            "NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO",
            "nous-hermes2-mixtral:8x7b-dpo",
        ),
        (
            "nous-hermes2-mixtral:8x7b-sft-q4_0",
            "Nous-Hermes-2-Mixtral-8x7B-SFT",
            "nous-hermes2-mixtral:8x7b-sft",
        ),
        ("wizardlm:7b-q4_0", "WizardLM/WizardLM-7B-V1.0", "wizardlm:7b"),
        ("wizardlm:13b-llama2-q4_0", "WizardLM/WizardLM-13B-V1.2", "wizardlm:13b-llama2"),
        ("wizardlm:70b-llama2-q4_0", "WizardLMTeam/WizardLM-70B-V1.0", "wizardlm:70b-llama2"),
        ("goliath", "alpindale/goliath-120b", "goliath:120b"),
        ("megadolphin", "cognitivecomputations/MegaDolphin-120b", "megadolphin:120b"),
        ("xwinlm", "Xwin-LM/Xwin-LM-7B-V0.2", "xwinlm:7b"),
        ("xwinlm:13b-v0.2-q4_0", "Xwin-LM/Xwin-LM-13B-V0.1", "xwinlm:13b"),
        ("meditron", "epfl-llm/meditron-7b", "meditron:7b"),
        ("meditron:70b-q4_0", "epfl-llm/meditron-70b", "meditron:70b"),
        ("stable-code", "stabilityai/stable-code-3b", "stable-code:3b"),
        ("olmo-3", "allenai/Olmo-3-7B-Think", "olmo-3:7b"),
        ("olmo-3:7b-think-q4_K_M", "Olmo-3-7B-Think", "olmo-3:7b"),
        ("olmo-3:7b-instruct", "allenai/Olmo-3-7B-Instruct", "olmo-3:7b-instruct"),
        ("olmo-3:32b-think", "allenai/Olmo-3-32B-Think", "olmo-3:32b"),
        ("olmo-3.1:32b", "allenai/Olmo-3.1-32B-Think", "olmo-3.1:32b"),
        ("olmo-3.1:32b-instruct", "allenai/Olmo-3.1-32B-Instruct", "olmo-3.1:32b-instruct"),
        ("ministral-3:3b", "mistralai/Ministral-3-3B-Instruct-2512", "ministral-3:3b"),
        ("ministral-3", "mistralai/Ministral-3-8B-Instruct-2512", "ministral-3:8b"),
        ("ministral-3:14b", "Ministral-3-14B-Instruct-2512", "ministral-3:14b"),
        (
            "nemotron-3-nano:30b",
            "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
            "nemotron-3-nano:30b",
        ),
        (
            "qwen3-next:80b-a3b-instruct-q8_0",
            "Qwen/Qwen3-Next-80B-A3B-Instruct",
            "qwen3-next:80b-a3b-instruct",
        ),
        (
            "qwen3-next:80b-a3b-thinking-q4_K_M",
            "Qwen/Qwen3-Next-80B-A3B-Thinking",
            "qwen3-next:80b-a3b-thinking",
        ),
        ("kimi-k2-thinking:cloud", "moonshotai/Kimi-K2-Thinking", "kimi-k2-thinking:cloud"),
        ("kimi-k2:1t-cloud", "moonshotai/Kimi-K2-Instruct-0905", "kimi-k2:1t"),
        ("glm-4.6:cloud", "zai-org/GLM-4.6", "glm-4.6:cloud"),
        ("minimax-m2:cloud", "MiniMaxAI/MiniMax-M2", "minimax-m2:cloud"),
        ("qwen3-vl", "Qwen/Qwen3-VL-8B-Thinking", "qwen3-vl:8b"),
        ("qwen3-vl:8b-thinking-q4_K_M", "Qwen3-VL-8B-Thinking", "qwen3-vl:8b"),
        ("qwen3-vl:8b-instruct-q4_K_M", "Qwen/Qwen3-VL-8B-Instruct", "qwen3-vl:8b-instruct"),
        ("qwen3-vl:2b", "Qwen/Qwen3-VL-2B-Thinking", "qwen3-vl:2b"),
        ("qwen3-vl:2b-instruct", "Qwen/Qwen3-VL-2B-Instruct", "qwen3-vl:2b-instruct"),
        ("qwen3-vl:4b", "Qwen/Qwen3-VL-4B-Thinking", "qwen3-vl:4b"),
        ("qwen3-vl:4b-instruct-q8_0", "Qwen/Qwen3-VL-4B-Instruct", "qwen3-vl:4b-instruct"),
        ("qwen3-vl:30b", "Qwen/Qwen3-VL-30B-A3B-Thinking", "qwen3-vl:30b"),
        (
            "qwen3-vl:30b-a3b-instruct-q4_K_M",
            "Qwen/Qwen3-VL-30B-A3B-Instruct",
            "qwen3-vl:30b-a3b-instruct",
        ),
        ("qwen3-vl:32b-thinking-q8_0", "Qwen/Qwen3-VL-32B-Thinking", "qwen3-vl:32b"),
        ("qwen3-vl:32b-instruct", "Qwen/Qwen3-VL-32B-Instruct", "qwen3-vl:32b-instruct"),
        ("qwen3-vl:235b-cloud", "Qwen/Qwen3-VL-235B-A22B-Thinking", "qwen3-vl:235b"),
        (
            "qwen3-vl:235b-instruct-cloud",
            "Qwen/Qwen3-VL-235B-A22B-Instruct",
            "qwen3-vl:235b-instruct",
        ),
        (
            "qwen3-vl:235b-a22b-instruct-q4_K_M",
            "qwen3-vl-235b-a22b-instruct",
            "qwen3-vl:235b-instruct",
        ),
        ("granite4:350m", "ibm-granite/granite-4.0-350m", "granite4:350m"),
        ("granite4:350m-h", "ibm-granite/granite-4.0-h-350m", "granite4:350m-h"),
        ("granite4:1b", "ibm-granite/granite-4.0-1b", "granite4:1b"),
        ("granite4:1b-h", "ibm-granite/granite-4.0-h-1b", "granite4:1b-h"),
        ("embeddinggemma", "google/embeddinggemma-300m", "embeddinggemma:300m"),
        ("functiongemma", "google/functiongemma-270m-it", "functiongemma:270m"),
        ("rnj-1", "EssentialAI/rnj-1-instruct", "rnj-1:8b"),
        (
            "devstral-small-2:24b",
            "mistralai/Devstral-Small-2-24B-Instruct-2512",
            "devstral-small-2:24b",
        ),
        ("devstral-2:123b-cloud", "mistralai/Devstral-2-123B-Instruct-2512", "devstral-2:123b"),
        ("glm-4.7:cloud", "zai-org/GLM-4.7", "glm-4.7:cloud"),
        ("lfm2.5-thinking", "LiquidAI/LFM2.5-1.2B-Thinking", "lfm2.5-thinking:1.2b"),
        ("deepseek-v3.2:cloud", "deepseek-ai/DeepSeek-V3.2", "deepseek-v3.2:671b"),
        # Qwen3's July 2025 updates: models of their own, not the April hybrid ones.
        ("qwen3:4b-instruct-2507-q4_K_M", "Qwen/Qwen3-4B-Instruct-2507", "qwen3:4b-instruct-2507"),
        ("qwen3:4b-instruct", "qwen3-4b-instruct-2507", "qwen3:4b-instruct-2507"),
        (
            "qwen3:30b-a3b-instruct-2507-q4_K_M",
            "hf.co/unsloth/Qwen3-30B-A3B-Instruct-2507-GGUF:Q4_K_M",
            "qwen3:30b-a3b-instruct-2507",
        ),
        (
            "qwen3:30b-a3b-thinking-2507-q8_0",
            "Qwen/Qwen3-30B-A3B-Thinking-2507",
            "qwen3:30b-a3b-thinking-2507",
        ),
    ],
)
def test_popular_library_models_resolve_by_ollama_name_and_alias(
    catalog: Catalog, name: str, alias: str, entry: str
) -> None:
    # Fine-tunes of listed families (Tulu 3 and Dolphin 3 of Llama 3.1, Cogito of Llama
    # and Qwen) have entries of their own: their Ollama names must not fall through to
    # placement by architecture.
    assert catalog.lookup(name).name == entry
    assert catalog.lookup(name).origin == "catalogue"
    assert catalog.resolve(alias) == entry


@pytest.mark.parametrize(
    ("bare", "instruct"),
    [
        ("qwen3-vl:2b", "qwen3-vl:2b-instruct"),
        ("qwen3-vl:4b", "qwen3-vl:4b-instruct"),
        ("qwen3-vl:8b", "qwen3-vl:8b-instruct"),
        ("qwen3-vl:30b", "qwen3-vl:30b-a3b-instruct"),
        ("qwen3-vl:32b", "qwen3-vl:32b-instruct"),
        ("qwen3-vl:235b", "qwen3-vl:235b-instruct"),
    ],
)
def test_bare_qwen3_vl_tags_are_the_thinking_models(
    catalog: Catalog, bare: str, instruct: str
) -> None:
    # Ollama's bare qwen3-vl tags carry the Thinking weights (their digest is their
    # `-thinking` tag's), which always think; the Instruct weights are the `-instruct` tags.
    assert "reasoning" in catalog.lookup(bare).specialties
    assert "reasoning" not in catalog.lookup(instruct).specialties
    assert catalog.lookup(instruct).specialties >= {"tools", "vision"}


@pytest.mark.parametrize(
    ("instruct", "thinking"),
    [
        ("qwen3:4b-instruct-2507", "qwen3:4b-thinking-2507"),
        ("qwen3:30b-a3b-instruct-2507", "qwen3:30b-a3b-thinking-2507"),
        ("qwen3:235b-a22b-instruct-2507", "qwen3:235b-a22b-thinking-2507"),
    ],
)
def test_qwen3_2507_instruct_models_do_not_reason_and_thinking_ones_do(
    catalog: Catalog, instruct: str, thinking: str
) -> None:
    # The July 2025 Instruct models never think, the Thinking ones always do; each has
    # its card's results on every area's scale the card reports (no area of the April
    # hybrid model's stands in for them).
    assert catalog.lookup(instruct).specialties == {"tools"}
    assert catalog.lookup(thinking).specialties == {"reasoning", "tools"}
    for name in (instruct, thinking):
        assert set(catalog.sources(name)) >= {"MMLU-Pro", "MMLU-Redux", "GPQA", "IFEval"}
        assert catalog.lookup(name).area_uncertainty["reasoning"] == 0.0
        assert catalog.lookup(name).area_uncertainty["instruction"] == 0.0


def test_a_tag_ollama_points_at_another_architecture_finds_that_entry(catalog: Catalog) -> None:
    """Ollama moves a tag to a new model now and then: `deepseek-r1:8b` was the Llama 3.1
    distill and is now DeepSeek-R1-0528's Qwen3 distill. The architecture the backend
    reports (`details.family`) tells them apart: the entry of the same family listed
    with that architecture is the one meant; an architecture the family does not list
    keeps the named entry."""
    qwen3 = {"family": "qwen3", "parameter_size": "8.2B"}
    llama = {"family": "llama", "parameter_size": "8.0B"}
    assert catalog.lookup("deepseek-r1:8b", qwen3).name == "deepseek-r1:8b-0528-qwen3"
    assert catalog.lookup("deepseek-r1:latest", qwen3).name == "deepseek-r1:8b-0528-qwen3"
    assert catalog.lookup("deepseek-r1:8b", llama).name == "deepseek-r1:8b"
    assert catalog.lookup("deepseek-r1:8b").name == "deepseek-r1:8b"
    assert catalog.lookup("deepseek-r1:8b-0528-qwen3-q4_K_M", qwen3).name == (
        "deepseek-r1:8b-0528-qwen3"
    )
    assert catalog.lookup("deepseek-r1:8b-llama-distill-q4_K_M", llama).name == "deepseek-r1:8b"
    # No deepseek-r1 entry is listed as gemma3: the name's entry stands.
    gemma3 = {"family": "gemma3", "parameter_size": "8.0B"}
    assert catalog.lookup("deepseek-r1:8b", gemma3).name == "deepseek-r1:8b"
    # The arch is compared as Ollama spells it, whatever the case.
    assert catalog.lookup("deepseek-r1:8b", {"family": "Qwen3"}).name == (
        "deepseek-r1:8b-0528-qwen3"
    )


def test_a_model_made_from_a_listed_one_takes_its_entry(catalog: Catalog) -> None:
    """`ollama create my-bot -f Modelfile` with `FROM qwen3:32b` (a system prompt, a
    template, parameters) serves qwen3:32b's weights under a name of its own, and Ollama
    says so in `details.parent_model` (the FROM model's shortest name): the parent's
    entry describes it, not neighbours placed from its size. A name the catalogue
    lists keeps its own entry; a parent the catalogue does not list places it as any
    unlisted model."""
    parent = {"family": "qwen3", "parameter_size": "32.8B", "parent_model": "qwen3:32b"}
    made = catalog.lookup("research-bot:v2", parent)
    assert made.name == "qwen3:32b"
    assert made.areas == catalog.lookup("qwen3:32b").areas
    assert catalog.sources("research-bot:v2", parent) == catalog.sources("qwen3:32b")
    # The same details without a parent: placed, not the entry.
    placed = catalog.lookup("research-bot:v2", {**parent, "parent_model": ""})
    assert placed.origin == "nearest"
    # Ollama's name for a parent pulled from Hugging Face resolves as a tag does.
    hf = {
        "family": "qwen2",
        "parameter_size": "7.6B",
        "parent_model": "hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M",
    }
    assert catalog.lookup("team-helper:latest", hf).name == "qwen2.5:7b"
    assert catalog.lookup("qwen2.5:14b", hf).name == "qwen2.5:14b"
    unknown = {"family": "llama", "parameter_size": "8.0B", "parent_model": "acme/own:1"}
    assert catalog.lookup("acme-bot:latest", unknown).origin == "nearest"


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        # Ollama's bare, `latest`, `-chat` and `v1.5` yi tags serve the Yi-1.5 chat models.
        ("yi", "yi:6b"),
        ("yi:6b", "yi:6b"),
        ("yi:9b", "yi:9b"),
        ("yi:34b", "yi:34b"),
        ("yi:34b-chat", "yi:34b"),
        ("yi:9b-chat-v1.5-q4_0", "yi:9b"),
        ("yi:6b-chat-v1.5-q8_0", "yi:6b"),
        ("yi:34b-chat-v1.5-fp16", "yi:34b"),
        ("01-ai/Yi-1.5-9B-Chat", "yi:9b"),
        ("Yi-1.5-6B-Chat", "yi:6b"),
        ("hf.co/bartowski/Yi-1.5-34B-Chat-GGUF:Q4_K_M", "yi:34b"),
        # Yi 1.0: its Hugging Face names and the library's quantized `-chat` tags without
        # `v1.5`, which still serve the 2023 chat models.
        ("yi-34b-chat", "yi:34b-chat-q4_0"),
        ("01-ai/Yi-34B-Chat", "yi:34b-chat-q4_0"),
        ("01-ai/Yi-6B-Chat", "yi:6b-chat-q4_0"),
        ("hf.co/TheBloke/Yi-34B-Chat-GGUF:Q4_K_M", "yi:34b-chat-q4_0"),
        ("yi:6b-chat-q4_0", "yi:6b-chat-q4_0"),
        ("yi:6b-chat-q8_0", "yi:6b-chat-q4_0"),
        ("yi:34b-chat-q4_K_M", "yi:34b-chat-q4_0"),
    ],
)
def test_yi_tags_resolve_to_the_version_ollama_serves(
    catalog: Catalog, name: str, entry: str
) -> None:
    assert catalog.resolve(name) == entry


def test_the_yi_1_5_chat_models_carry_their_published_results(catalog: Catalog) -> None:
    for name in ("yi:6b", "yi:9b", "yi:34b"):
        assert catalog.lookup(name).released == pytest.approx(2024.333)
        assert catalog.lookup(name).context_length == 4096
    assert set(catalog.sources("yi:34b")) >= {"MMLU", "MMLU-Pro", "GSM8K", "MATH", "HumanEval"}
    assert set(catalog.sources("yi:9b")) >= {"MMLU", "GSM8K", "MATH", "HumanEval"}
    assert catalog.lookup("yi:6b-chat-q4_0").released == pytest.approx(2023.833)


def test_the_qwen2_5_instruct_models_carry_the_blogs_instruct_table_only(
    catalog: Catalog,
) -> None:
    """The Qwen2.5 blog gives each size a base-model table (MMLU, BBH, ARC-C among
    others) and an instruct table; Ollama's tags serve the instruct models, so their
    entries take the instruct table's benchmarks and none of the base model's."""
    blog = "https://qwenlm.github.io/blog/qwen2.5-llm/"
    instruct = {"MMLU-Pro", "MMLU-Redux", "GPQA", "MATH", "GSM8K", "HumanEval", "MBPP", "IFEval"}
    for name, ifeval in (("qwen2.5:14b", 0.81), ("qwen2.5:32b", 0.795)):
        cited = catalog.sources(name)
        from_blog = {benchmark for benchmark, source in cited.items() if source.url == blog}
        assert from_blog == instruct, name
        assert cited["IFEval"].value == pytest.approx(ifeval), name


def test_the_qwen2_5_coder_instruct_models_carry_no_base_model_results(
    catalog: Catalog,
) -> None:
    """The Qwen2.5-Coder report's general and maths tables (MMLU, MMLU-Pro, MMLU-Redux,
    ARC-C, MATH, GSM8K) are the base models'; the instruct models Ollama serves take
    their code results from the report and their maths from the blog's instruct table."""
    base_tables = {"MMLU", "MMLU-Pro", "MMLU-Redux", "ARC-C", "MATH", "GSM8K"}
    report, blog = (
        "https://arxiv.org/abs/2409.12186",
        "https://qwenlm.github.io/blog/qwen2.5-coder/",
    )
    for name in ("qwen2.5-coder:7b", "qwen2.5-coder:32b"):
        cited = catalog.sources(name)
        from_report = {benchmark for benchmark, source in cited.items() if source.url == report}
        assert from_report == {"HumanEval", "MBPP"}, name
    cited = catalog.sources("qwen2.5-coder:7b")
    assert {benchmark for benchmark in base_tables if benchmark in cited} == {"MATH", "GSM8K"}
    assert (cited["MATH"].url, cited["MATH"].value) == (blog, pytest.approx(0.668))
    assert (cited["GSM8K"].url, cited["GSM8K"].value) == (blog, pytest.approx(0.867))


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        # Ollama's tags of the 2026 models, their quantizations and cloud tags, and
        # their Hugging Face names as a pull from Hugging Face spells them.
        ("gemma4", "gemma4:e4b"),
        ("gemma4:e4b-it-q4_K_M", "gemma4:e4b"),
        ("gemma4:e2b-nvfp4", "gemma4:e2b"),
        ("gemma4:26b-a4b-it-q8_0", "gemma4:26b"),
        ("gemma4:31b-cloud", "gemma4:31b"),
        ("google/gemma-4-31B-it", "gemma4:31b"),
        ("hf.co/unsloth/gemma-4-26B-A4B-it-GGUF:Q4_K_M", "gemma4:26b"),
        ("hf.co/bartowski/google_gemma-4-E2B-it-GGUF:Q6_K", "gemma4:e2b"),
        ("qwen3.5", "qwen3.5:9b"),
        ("qwen3.5:2b-nvfp4", "qwen3.5:2b"),
        ("qwen3.5:35b-a3b-q4_K_M", "qwen3.5:35b"),
        ("qwen3.5:cloud", "qwen3.5:397b"),
        ("Qwen/Qwen3.5-122B-A10B", "qwen3.5:122b"),
        ("hf.co/unsloth/Qwen3.5-9B-GGUF:UD-Q4_K_XL", "qwen3.5:9b"),
        ("qwen3.6", "qwen3.6:27b"),
        ("hf.co/unsloth/Qwen3.6-27B-GGUF:Q4_K_M", "qwen3.6:27b"),
        ("kimi-k2.6:cloud", "kimi-k2.6:cloud"),
        ("kimi-k2.5:latest-cloud", "kimi-k2.5:cloud"),
        ("glm-5:cloud", "glm-5:cloud"),
        ("glm-4.7-flash", "glm-4.7-flash:latest"),
        ("glm-4.7-flash:q8_0", "glm-4.7-flash:latest"),
        ("qwen3-coder-next:q4_K_M", "qwen3-coder-next:latest"),
        ("qwen3-coder-next:cloud", "qwen3-coder-next:latest"),
        # The rest of Ollama's 2026 library: local tags, bare names (`latest`),
        # quantizations, Hugging Face names as a pull spells them, cloud tags.
        ("granite4.1", "granite4.1:8b"),
        ("granite4.1:3b-q4_K_M", "granite4.1:3b"),
        ("ibm-granite/granite-4.1-30b", "granite4.1:30b"),
        ("hf.co/unsloth/granite-4.1-8b-GGUF:Q4_K_M", "granite4.1:8b"),
        ("lfm2.5", "lfm2.5:1.2b"),
        ("lfm2.5:1.2b-q8_0", "lfm2.5:1.2b"),
        ("LiquidAI/LFM2.5-1.2B-Instruct", "lfm2.5:1.2b"),
        ("lfm2.5-thinking", "lfm2.5-thinking:1.2b"),
        ("lfm2", "lfm2:24b"),
        ("hf.co/LiquidAI/LFM2-24B-A2B-GGUF:Q4_K_M", "lfm2:24b"),
        ("nemotron-3-super", "nemotron-3-super:120b"),
        ("nemotron-3-super:cloud", "nemotron-3-super:120b"),
        ("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16", "nemotron-3-super:120b"),
        ("nemotron-cascade-2", "nemotron-cascade-2:30b"),
        ("nemotron-cascade-2:30b-q4_K_M", "nemotron-cascade-2:30b"),
        ("nvidia/Nemotron-Cascade-2-30B-A3B", "nemotron-cascade-2:30b"),
        ("nemotron3", "nemotron3:33b"),
        ("nemotron3:33b-q4_K_M", "nemotron3:33b"),
        ("nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16", "nemotron3:33b"),
        ("mistral-medium-3.5", "mistral-medium-3.5:128b"),
        ("mistralai/Mistral-Medium-3.5-128B", "mistral-medium-3.5:128b"),
        ("laguna-xs.2", "laguna-xs.2:latest"),
        ("laguna-xs.2:33b-q4_K_M", "laguna-xs.2:latest"),
        ("poolside/Laguna-XS.2", "laguna-xs.2:latest"),
        ("medgemma1.5", "medgemma1.5:4b"),
        ("google/medgemma-1.5-4b-it", "medgemma1.5:4b"),
        ("translategemma", "translategemma:4b"),
        ("translategemma:12b-it-q8_0", "translategemma:12b"),
        ("google/translategemma-27b-it", "translategemma:27b"),
        ("glm-ocr", "glm-ocr:latest"),
        ("glm-ocr:q8_0", "glm-ocr:latest"),
        ("zai-org/GLM-OCR", "glm-ocr:latest"),
        ("glm-5.1:cloud", "glm-5.1:cloud"),
        ("zai-org/GLM-5.1", "glm-5.1:cloud"),
        ("glm-5.2:cloud", "glm-5.2:cloud"),
        ("kimi-k2.7-code:cloud", "kimi-k2.7-code:cloud"),
        ("minimax-m2.5:cloud", "minimax-m2.5:cloud"),
        ("minimax-m2.7:cloud", "minimax-m2.7:cloud"),
        ("MiniMaxAI/MiniMax-M2.7", "minimax-m2.7:cloud"),
        ("deepseek-v4-flash:cloud", "deepseek-v4-flash:cloud"),
        ("deepseek-v4-flash:0731:cloud", "deepseek-v4-flash:cloud"),
        ("deepseek-v4-pro", "deepseek-v4-pro:cloud"),
        ("deepseek-ai/DeepSeek-V4-Pro", "deepseek-v4-pro:cloud"),
        ("mistral-large-3:675b", "mistral-large-3:675b"),
        ("mistral-large-3:675b-cloud", "mistral-large-3:675b"),
    ],
)
def test_the_2026_library_models_resolve_to_their_entry(
    catalog: Catalog, name: str, entry: str
) -> None:
    assert catalog.resolve(name) == entry
    assert catalog.lookup(name).origin == "catalogue"


def test_the_other_2026_models_carry_the_results_read_from_their_cards(
    catalog: Catalog,
) -> None:
    read = {
        "nemotron-3-super:120b": {"MMLU-Pro", "GPQA"},
        "nemotron-cascade-2:30b": {"MMLU-Pro", "GPQA"},
        "glm-5.1:cloud": {"GPQA"},
        "lfm2.5:1.2b": {"MMLU-Pro", "GPQA", "MATH-500", "GSM8K", "IFEval"},
        "lfm2.5-thinking:1.2b": {"MMLU-Pro", "GPQA", "MATH-500", "GSM8K", "IFEval"},
    }
    for name, benchmarks in read.items():
        assert set(catalog.sources(name)) == benchmarks, name
    # One card's table holds both LFM2.5 models: thinking lifts its math and knowledge.
    thinking, instruct = catalog.lookup("lfm2.5-thinking:1.2b"), catalog.lookup("lfm2.5:1.2b")
    assert "reasoning" in thinking.specialties and "reasoning" not in instruct.specialties
    for area in ("math", "knowledge"):
        assert thinking.areas[area] > instruct.areas[area], area


def test_the_2026_models_think_as_ollama_runs_them_and_place_by_their_cards(
    catalog: Catalog,
) -> None:
    # Ollama's gemma4 and qwen3.5 parsers think unless a request turns thinking off: the
    # entries carry their cards' thinking results and the reasoning specialty.
    for name in ("gemma4:e4b", "gemma4:31b", "qwen3.5:2b", "qwen3.5:9b", "qwen3.5:397b"):
        assert "reasoning" in catalog.lookup(name).specialties, name
        assert {"MMLU-Pro", "GPQA"} <= set(catalog.sources(name)), name
    # Their cards order them so: Qwen3.5 9B above Gemma 4 E4B, Gemma 4 31B above Gemma 3
    # 27B (its card's no-thinking column), in knowledge and reasoning.
    for area in ("knowledge", "reasoning"):
        assert catalog.lookup("qwen3.5:9b").areas[area] > catalog.lookup("gemma4:e4b").areas[area]
        assert catalog.lookup("gemma4:31b").areas[area] > catalog.lookup("gemma3:27b").areas[area]


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        # Models pulled from Hugging Face that Ollama's library does not serve (QwQ-32B is
        # `qwq:32b`; its November 2024 preview is another model).
        ("hf.co/bartowski/QwQ-32B-Preview-GGUF:Q4_K_M", "qwq-32b-preview:latest"),
        ("Qwen/QwQ-32B-Preview", "qwq-32b-preview:latest"),
        ("qwq:32b", "qwq:32b"),
        ("hf.co/Qwen/QwQ-32B-GGUF:Q4_K_M", "qwq:32b"),
        (
            "hf.co/bartowski/Ministral-8B-Instruct-2410-GGUF:Q4_K_M",
            "ministral-8b-instruct-2410:latest",
        ),
        ("mistralai/Ministral-8B-Instruct-2410", "ministral-8b-instruct-2410:latest"),
    ],
)
def test_models_pulled_from_hugging_face_find_their_entry(
    catalog: Catalog, name: str, entry: str
) -> None:
    assert catalog.resolve(name) == entry


@pytest.mark.parametrize("name", ["acme-coder:7b", "qwen2.5:5b", "qwen2.5-coder-7b", "mystery"])
def test_names_not_listed_do_not_resolve(catalog: Catalog, name: str) -> None:
    assert catalog.resolve(name) is None
    assert catalog.lookup(name).origin == "nearest"


def test_the_llmrouter_models_are_listed_under_their_dataset_names(catalog: Catalog) -> None:
    dataset = json.loads((ROOT / "data/llmrouter/default_llm.json").read_text())
    artifact = json.loads((ROOT / "selector_model/artifacts/selector.json").read_text())
    trained = {m["dataset_name"]: m["name"] for m in artifact["models"]}
    assert len(trained) == 9
    for dataset_name, ollama_name in trained.items():
        assert dataset_name in dataset
        assert catalog.resolve(dataset_name) == ollama_name
        assert catalog.resolve(ollama_name) == ollama_name


def test_an_unseen_coder_lands_next_to_the_qwen_coder(catalog: Catalog) -> None:
    coder = catalog.lookup("qwen2.5-coder:7b")
    general = catalog.lookup("qwen2.5:7b")
    found = catalog.lookup(
        "acme-coder:7b",
        {"family": "qwen2", "parameter_size": "7.6B", "quantization_level": "Q4_K_M"},
        ["completion", "insert"],
    )
    assert found.origin == "nearest"
    assert found.neighbours[0] == "qwen2.5-coder:7b"
    assert "code" in found.specialties
    assert math.isclose(found.params_b, 7.6)
    assert abs(found.areas["code"] - coder.areas["code"]) < 0.05
    assert found.areas["code"] > general.areas["code"] - 0.01
    assert 0.0 < found.uncertainty <= 1.0
    assert found.uncertainty > coder.uncertainty
    assert all(0.0 <= found.areas[a] <= 1.0 for a in AREAS)


def test_a_tune_of_a_listed_architecture_without_its_specialty_stays_beside_it(
    catalog: Catalog,
) -> None:
    """A user's Qwen3 fine-tune with its own template shows no thinking: it is placed
    among the Qwen3 entries that differ from it in that specialty only, not between
    them and another architecture's model of its size."""
    tune = catalog.lookup(
        "my-tune:latest", {"family": "qwen3", "parameter_size": "8.2B"}, ["completion", "tools"]
    )
    assert tune.origin == "nearest" and "reasoning" not in tune.specialties
    archs = [catalog.lookup(n).arch for n in tune.neighbours]
    assert archs[:3] == ["qwen3"] * 3, tune.neighbours
    thinking, other = catalog.lookup("qwen3:8b"), catalog.lookup("granite3.3:8b")
    for area in ("knowledge", "math"):
        assert abs(tune.areas[area] - thinking.areas[area]) < abs(
            tune.areas[area] - other.areas[area]
        ), (area, tune.areas)


def test_an_unknown_size_within_a_family_follows_the_size_trend(catalog: Catalog) -> None:
    small, large = catalog.lookup("gemma3:4b"), catalog.lookup("gemma3:12b")
    middle = catalog.lookup("gemma3:8b", {"family": "gemma3", "parameter_size": "8.0B"})
    assert middle.origin == "nearest"
    assert middle.family == "gemma3"
    assert set(middle.neighbours[:2]) == {"gemma3:4b", "gemma3:12b"}
    assert small.areas["knowledge"] < middle.areas["knowledge"] < large.areas["knowledge"]


def test_a_fine_tune_named_after_its_base_is_placed_beside_it(catalog: Catalog) -> None:
    # A community fine-tune names its base inside its own name; its neighbours are the
    # base family's, not whatever models happen to be near it in size.
    tune = catalog.lookup("dolphin-mixtral:8x7b", {"family": "llama", "parameter_size": "46.7B"})
    base = catalog.lookup("mixtral:8x7b")
    stranger = catalog.lookup("dolphin:47b", {"family": "llama", "parameter_size": "46.7B"})
    assert tune.origin == "nearest"
    assert tune.family == base.family
    assert base.name in tune.neighbours[:2]
    assert abs(tune.areas["code"] - base.areas["code"]) < abs(
        stranger.areas["code"] - base.areas["code"]
    )
    # Once a fine-tune has entries of its own, its other tags are placed among them.
    listed_tune = catalog.lookup("nous-hermes2-mixtral:8x7b")
    assert listed_tune.family == "nous-hermes2-mixtral"
    assert listed_tune.neighbours[0].startswith("nous-hermes2-mixtral:")


def test_a_new_size_of_a_listed_family_is_placed_in_that_familys_era(catalog: Catalog) -> None:
    # StarCoder (2023) has no 2B entry; 2B coders released since score far higher.
    placed = catalog.lookup("starcoder:2b", {"family": "starcoder", "parameter_size": "2.0B"})
    family = [e for e in catalog.entries() if e.family == placed.family]
    assert placed.origin == "nearest" and family
    assert max(e.released for e in family) < 2024.0
    assert placed.released < 2024.0
    assert placed.neighbours[0].startswith("starcoder:")


def test_a_later_generation_than_the_catalogue_lists_is_placed_beside_its_line(
    catalog: Catalog,
) -> None:
    # A line's next generation is placed with the generation before it, a step above,
    # and later; architecture and size alone would put gemma5 among older 31B models.
    gemma4 = catalog.lookup("gemma4:31b")
    gemma5 = catalog.lookup("gemma5:31b", {"family": "gemma5", "parameter_size": "31B"})
    assert (gemma5.origin, gemma5.family) == ("nearest", "gemma4")
    assert gemma5.neighbours[0] == "gemma4:31b"
    assert gemma5.released > gemma4.released
    assert all(gemma5.areas[a] > gemma4.areas[a] for a in AREAS)
    # Between two listed generations: beside the one before it.
    assert catalog.lookup("qwen2.7:7b").family == "qwen2.5"
    # The line, not a shorter family its name starts with; a longer one is a fine-tune's.
    assert catalog.lookup("mistral-small4:24b").family == "mistral-small3.2"
    assert catalog.lookup("llama3.1-uncensored:8b").family == "llama3.1"
    # A listed generation, however spelt, is that family; a date is no generation.
    llama3 = catalog.lookup("llama-3:8b")
    assert (llama3.family, llama3.neighbours[0]) == ("llama3", "llama3:8b")
    assert llama3.released == pytest.approx(catalog.lookup("llama3:8b").released, abs=0.1)
    assert catalog.lookup("mistral-small-2501:24b").family == "mistral-small"
    # Sizes and chat words are not part of a line's name.
    assert catalog.lookup("qwen3.7-9b-instruct:q4_K_M").family == "qwen3.6"
    assert catalog.lookup("qwen3.7-coder:7b").family == "qwen3-coder"
    # Older than every listed generation, or of no listed line: placed by its details.
    assert catalog.lookup("falcon:40b", {"family": "falcon"}).family == "falcon"
    assert catalog.lookup("zorblax5:7b").family != "zorblax"


def test_the_generation_step_is_what_the_catalogues_own_lines_show(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each generation of a line the catalogue lists after another (gemma3 after gemma2,
    qwen3 after qwen2.5, ...) left out whole and placed from its name, size and
    architecture: on the logit scale its published scores in each area lie, on average,
    GENERATION_STEP above the placement without a step, and the step brings the
    placements closer."""
    shipped_step = dict(placement.GENERATION_STEP)
    monkeypatch.setattr(placement, "GENERATION_STEP", dict.fromkeys(AREAS, 0.0))
    residuals: dict[str, list[float]] = {area: [] for area in AREAS}
    misses: dict[str, list[float]] = {"without": [], "shipped": []}
    families = {e.family for e in catalog.entries()}
    near = catalog.neighbourhood
    for family in sorted(families):
        rest = {e.name: e for e in catalog.entries() if e.family != family}
        left_out = placement.Neighbourhood(rest, near.published, near.slopes, near.floors)
        if not left_out.family_of(family)[1]:
            continue
        for entry in catalog.entries():
            if entry.family != family:
                continue
            details = {"family": entry.arch, "parameter_size": f"{entry.params_b}B"}
            placed = left_out.place(entry.name, details, ("completion",))
            for area, published in near.published[entry.name].items():
                residuals[area].append(_logit(published) - _logit(placed.areas[area]))
                moved = placement.shifted(placed.areas[area], shipped_step[area])
                misses["without"].append((placed.areas[area] - published) ** 2)
                misses["shipped"].append((moved - published) ** 2)
    assert sum(len(found) for found in residuals.values()) > 200
    for area, found in residuals.items():
        assert sum(found) / len(found) == pytest.approx(shipped_step[area], abs=0.1), area
    assert sum(misses["shipped"]) < sum(misses["without"])


def test_a_specialists_unpublished_area_is_placed_beside_its_lines_earlier_generation(
    catalog: Catalog,
) -> None:
    """Qwen publishes no code number for qwen3-coder: its code is placed beside the
    generation before it, qwen2.5-coder, a step up, not among whatever models are near it
    (which put it below its predecessors of its size). It stays imputed, and says so."""
    coder = catalog.lookup("qwen3-coder:30b")
    before = catalog.lookup("qwen2.5-coder:14b")
    assert "HumanEval" not in catalog.sources("qwen3-coder:30b")
    assert coder.effective_params_b < before.effective_params_b
    assert coder.areas["code"] > before.areas["code"]
    assert 0.0 < coder.area_uncertainty["code"] < 1.0
    assert coder.neighbours[0].startswith("qwen2.5-coder:")


def test_a_model_of_a_listed_family_takes_an_unpublished_area_as_its_entries_do(
    catalog: Catalog,
) -> None:
    """A tune of a listed family is placed as that family's entries are: an area no entry
    of it publishes (Qwen3.5's code) beside the generation before it, a step up, for the
    tune as for the family's own entries."""
    listed = catalog.lookup("qwen3.5:9b")
    tune = catalog.lookup(
        "my-qwen3.5-tune:latest",
        {"family": "qwen35", "parameter_size": "9.0B"},
        ["completion", "tools", "thinking", "vision"],
    )
    assert (tune.origin, tune.family) == ("nearest", "qwen3.5")
    assert listed.area_uncertainty["code"] > 0.0
    assert abs(tune.areas["code"] - listed.areas["code"]) < 0.02, (tune.areas, listed.areas)
    assert tune.area_uncertainty["code"] > 0.0


def test_an_area_no_entry_of_its_family_publishes_misses_less_beside_the_generation_before(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each published area score of an entry whose line lists an earlier generation with
    that area, left out for the entry's whole family (as when its maker publishes none)
    and imputed: placed beside the generation before, a step up, it misses its published
    score by less than imputed from its neighbours alone."""
    near = catalog.neighbourhood
    misses: dict[str, list[float]] = {"beside": [], "neighbours": []}
    for entry in catalog.entries():
        for area, published in near.published[entry.name].items():
            family = {e.name for e in catalog.entries() if e.family == entry.family}
            hidden = {
                name: {a: s for a, s in found.items() if a != area or name not in family}
                for name, found in near.published.items()
            }
            left_out = placement.Neighbourhood(near.entries, hidden, near.slopes, near.floors)
            if not left_out.earlier_generation(placement.probe_of(entry), area):
                continue
            placed = left_out.complete(entry, hidden[entry.name], {})
            misses["beside"].append(abs(placed.areas[area] - published))
            with monkeypatch.context() as patched:
                patched.setattr(left_out, "earlier_generation", lambda probe, area: "")
                alone = left_out.complete(entry, hidden[entry.name], {})
            misses["neighbours"].append(abs(alone.areas[area] - published))
    assert len(misses["beside"]) > 250
    assert sum(misses["beside"]) < 0.85 * sum(misses["neighbours"])


def _logit(score: float) -> float:
    score = min(0.995, max(0.005, score))
    return math.log(score / (1.0 - score))


def test_capabilities_and_name_hints_give_specialties(catalog: Catalog) -> None:
    seeing = catalog.lookup("my-model:3b", {"family": "llama"}, ["completion", "vision"])
    thinking = catalog.lookup("my-model:14b", {"family": "qwen3"}, ["completion", "thinking"])
    reasoner = catalog.lookup("bob-r1:8b")
    embedder = catalog.lookup("acme-embed:latest", {"parameter_size": "335M"}, ["embedding"])
    assert "vision" in seeing.specialties
    assert "reasoning" in thinking.specialties
    assert "reasoning" in reasoner.specialties
    assert embedder.specialties >= {"embedding"}
    assert all(score == 0.0 for score in embedder.areas.values())
    assert all("embedding" in catalog.lookup(n).specialties for n in embedder.neighbours)


def test_the_library_embedders_without_a_show_are_embedders(catalog: Catalog) -> None:
    """A server without /api/show lists names alone: each of the Ollama library's
    embedding models must still read as one, or `auto` offers it for chat, which it
    refuses. paraphrase-multilingual's name has none of the usual embedding words."""
    for name in (
        "paraphrase-multilingual:278m",
        "paraphrase-multilingual:latest",
        "nomic-embed-text:137m-v1.5-fp16",
        "snowflake-arctic-embed2:568m",
        "granite-embedding:278m",
        "bge-large:335m",
        "all-minilm:33m",
    ):
        assert "embedding" in catalog.lookup(name).specialties, name
    assert "embedding" not in catalog.lookup("qwen3:8b").specialties


def test_a_model_of_unknown_size_is_more_uncertain(catalog: Catalog) -> None:
    sized = catalog.lookup("mystery:7b")
    unsized = catalog.lookup("mystery:latest")
    assert unsized.uncertainty > sized.uncertainty > 0.0


def test_every_entry_is_complete_and_every_number_has_a_source(catalog: Catalog) -> None:
    benchmarks = yaml.safe_load(DEFAULT_PATH.read_text())["benchmarks"]
    area_of = {b: spec if isinstance(spec, str) else spec["area"] for b, spec in benchmarks.items()}
    entries = catalog.entries()
    assert len(entries) >= 40
    for entry in entries:
        assert set(entry.areas) == set(AREAS)
        assert all(0.0 <= entry.areas[a] <= 1.0 for a in AREAS), entry.name
        assert 0.0 <= entry.uncertainty <= 1.0
        assert entry.params_b > 0 and entry.context_length > 0, entry.name
        assert 2015 < entry.released < 2030, entry.name
        for bench, source in catalog.sources(entry.name).items():
            assert source.benchmark == bench
            assert 0.0 <= source.value <= 1.0
            assert source.url.startswith(("https://", "http://", "arXiv:")), entry.name
        covered = {area_of[bench] for bench in catalog.sources(entry.name)}
        if "embedding" in entry.specialties:
            continue
        for area in set(AREAS) - covered:
            # No published number for the area: imputed from neighbours, and uncertain.
            assert entry.area_uncertainty[area] >= 0.2, (entry.name, area)
            assert entry.neighbours, entry.name
        if not entry.neighbours:
            assert covered == set(AREAS), entry.name


def test_published_numbers_set_the_areas_and_nothing_is_imputed(catalog: Catalog) -> None:
    llama = catalog.lookup("llama3.1:8b")
    sources = catalog.sources("llama3.1:8b")
    # IFEval is its one maker's result in the area: the area is that number as
    # published, and the leaderboard's OLL-IFEval, which only fills an area without
    # one, is not among what it cites.
    assert "IFEval" in sources and "OLL-IFEval" not in sources
    assert llama.areas["instruction"] == sources["IFEval"].value
    assert llama.uncertainty == 0.0
    assert llama.neighbours == ()


def _scales_data(extra: dict[str, float]) -> dict[str, Any]:
    """A catalogue of five models whose GSM8K and MATH lie on one line, MATH = 2 * GSM8K
    - 1, as do their MMLU and the leaderboard's OLL-MMLU, MMLU = 2 * OLL-MMLU, and a
    maker's MMLU-R equal to MMLU; and a sixth with `extra` as its results."""
    lines = [(0.6, 0.2, 0.5), (0.7, 0.4, 0.6), (0.8, 0.6, 0.7), (0.9, 0.8, 0.8), (0.95, 0.9, 0.9)]
    models = []
    for i, (gsm, competition, mmlu) in enumerate(lines):
        scores = {"GSM8K": gsm, "MATH": competition, "MMLU": mmlu, "MMLU-R": mmlu}
        scores["OLL-MMLU"] = mmlu / 2
        models.append(_scales_model(f"line{i}", scores))
    models.append(_scales_model("probe", extra))
    return {
        "version": 1,
        "areas": list(AREAS),
        "benchmarks": {
            "MMLU": "knowledge",
            "MMLU-R": "knowledge",
            "OLL-MMLU": {"area": "knowledge", "fallback": True},
            "MATH": "math",
            "GSM8K": "math",
        },
        "models": models,
    }


def _scales_model(family: str, scores: dict[str, float]) -> dict[str, Any]:
    return {
        "name": f"{family}:7b",
        "family": family,
        "params_b": 7.0,
        "released": "2024-06",
        "context_length": 8192,
        "scores": scores,
        "sources": dict.fromkeys(scores, "https://example.org/card"),
    }


def test_an_area_is_the_mean_of_the_models_results_on_its_scale() -> None:
    """A model's MATH and GSM8K are one kind of item each: its math is their mean, its
    GSM8K read on MATH's scale by the least-squares line over the models that report
    both (itself among them). A result only on the other benchmark is read off the line,
    and is less certain than a published one."""
    both = Catalog.from_data(_scales_data({"MATH": 0.5, "GSM8K": 0.9, "MMLU": 0.6}))
    pairs = [(0.6, 0.2), (0.7, 0.4), (0.8, 0.6), (0.9, 0.8), (0.95, 0.9), (0.9, 0.5)]
    slope, intercept = np.polyfit([x for x, _ in pairs], [y for _, y in pairs], 1)
    probe = both.lookup("probe:7b")
    assert probe.areas["math"] == pytest.approx((0.5 + intercept + slope * 0.9) / 2, abs=1e-3)
    assert probe.areas["math"] < 0.8 - 0.05  # not GSM8K's reading alone
    assert probe.area_uncertainty["math"] == 0.0
    alone = Catalog.from_data(_scales_data({"GSM8K": 0.9, "MMLU": 0.6})).lookup("probe:7b")
    assert alone.areas["math"] == pytest.approx(0.8, abs=1e-3)
    assert alone.area_uncertainty["math"] > 0.0


def test_a_fallback_benchmark_counts_only_where_no_other_result_is() -> None:
    """The leaderboard's results (`fallback`) are left out of an area a maker's result
    sets, and set one no maker's result does."""
    makers = Catalog.from_data(_scales_data({"MMLU": 0.6, "OLL-MMLU": 0.2, "MATH": 0.5}))
    assert makers.lookup("probe:7b").areas["knowledge"] == 0.6
    mapped = Catalog.from_data(_scales_data({"MMLU-R": 0.6, "OLL-MMLU": 0.2, "MATH": 0.5}))
    assert mapped.lookup("probe:7b").areas["knowledge"] == pytest.approx(0.6, abs=1e-3)
    filled = Catalog.from_data(_scales_data({"OLL-MMLU": 0.35, "MATH": 0.5}))
    assert filled.lookup("probe:7b").areas["knowledge"] == pytest.approx(0.7, abs=1e-3)


def _line_through(pairs: list[tuple[float, float]], value: float) -> float:
    """The least-squares line of y on x over `pairs`, read at `value` (unbounded)."""
    slope, intercept = np.polyfit([x for x, _ in pairs], [y for _, y in pairs], 1)
    return float(intercept + slope * value)


def test_a_line_reads_no_steeper_beyond_its_fitted_values_than_the_way_to_the_bound() -> None:
    """Beyond the values a line was fitted on, a result is read toward the bound of that
    end: above them, along the line or the straight path from its last fitted point to a
    perfect score on both, whichever is flatter, so that no result short of perfect
    reads as perfect; below them, likewise toward chance on both. Within them the line
    is the least-squares line, and the reading beyond is less certain than within."""
    top = [(0.2, 0.5), (0.3, 0.65), (0.4, 0.75), (0.5, 0.9)]
    scores = {f"m{i}": {"HumanEval": y, "LiveCodeBench": x} for i, (x, y) in enumerate(top)}
    scores["within"], scores["beyond"] = {"LiveCodeBench": 0.45}, {"LiveCodeBench": 0.9}
    code = {"HumanEval": "code", "LiveCodeBench": "code"}
    areas, mapped, _ = scales.calibrate(scores, code, {})
    edge = _line_through(top, 0.5)
    assert _line_through(top, 0.9) > 1.0  # the line itself runs past the scale
    assert areas["within"]["code"] == pytest.approx(_line_through(top, 0.45))
    assert edge < areas["beyond"]["code"] < 1.0
    assert areas["beyond"]["code"] == pytest.approx(edge + (1.0 - edge) * (0.9 - 0.5) / 0.5)
    assert mapped["beyond"]["code"] > mapped["within"]["code"]
    # MMLU-Pro's chance is 0.1 and MMLU's 0.25: a steep line fitted on MMLU-Pro in
    # [0.5, 0.8] runs below MMLU's chance at 0.4, where the path to chance does not.
    low = [(0.5, 0.3), (0.6, 0.5), (0.7, 0.7), (0.8, 0.9)]
    scores = {f"m{i}": {"MMLU": y, "MMLU-Pro": x} for i, (x, y) in enumerate(low)}
    scores["below"] = {"MMLU-Pro": 0.4}
    knowledge = {"MMLU": "knowledge", "MMLU-Pro": "knowledge"}
    areas, _, _ = scales.calibrate(scores, knowledge, {})
    edge = _line_through(low, 0.5)
    guess, floor = scales.CHANCE["MMLU-Pro"], scales.CHANCE["MMLU"]
    expected = edge - (edge - floor) * (0.5 - 0.4) / (0.5 - guess)
    assert _line_through(low, 0.4) < floor
    assert areas["below"]["knowledge"] == pytest.approx(expected)
    assert floor < areas["below"]["knowledge"] < edge


def test_no_shipped_area_short_of_perfect_results_reads_as_perfect(catalog: Catalog) -> None:
    """An area set by published results all below a perfect score is below one too, on
    the area's scale; Llama 4 Maverick's code rests on its LiveCodeBench alone, read
    beyond the values the line onto HumanEval was fitted on."""
    checked = set()
    for entry in catalog.entries():
        sources = catalog.sources(entry.name)
        for area in {s.area for s in sources.values()}:
            results = [s.value for s in sources.values() if s.area == area]
            if max(results) < 1.0:
                checked.add((entry.name, area))
                assert catalog.lookup(entry.name).areas[area] < 1.0, (entry.name, area)
    maverick = {b for b, s in catalog.sources("llama4:128x17b").items() if s.area == "code"}
    assert maverick == {"LiveCodeBench"} and ("llama4:128x17b", "code") in checked


def test_records_round_trip(catalog: Catalog) -> None:
    for name in ("qwen3:30b", "acme-coder:7b"):
        found = catalog.lookup(name, {"family": "qwen2", "parameter_size": "7.6B"})
        record = json.loads(json.dumps(found.to_record()))
        assert ModelKnowledge.from_record(record) == found


def test_overrides_copy_a_model_and_explicit_fields_win(catalog: Catalog) -> None:
    configured = catalog.with_overrides(
        {
            "my-coder:latest": {"like": "qwen2.5-coder:7b"},
            "my-ft:latest": {"areas": {"code": 0.7}, "params_b": 8},
            "tuned-qwen:7b": {
                "like": "qwen2.5:7b",
                "areas": {"math": 0.1},
                "specialties": ["math"],
            },
        }
    )
    coder = catalog.lookup("qwen2.5-coder:7b")
    mine = configured.lookup("my-coder")
    assert (mine.name, mine.origin, mine.neighbours) == (
        "my-coder",
        "config",
        ("qwen2.5-coder:7b",),
    )
    assert dict(mine.areas) == dict(coder.areas)
    assert mine.params_b == coder.params_b

    tuned = configured.lookup("my-ft:latest", {"family": "llama"})
    assert tuned.origin == "config"
    assert tuned.areas["code"] == 0.7 and tuned.area_uncertainty["code"] == 0.0
    assert tuned.params_b == 8.0
    assert tuned.neighbours and tuned.uncertainty > 0

    qwen = catalog.lookup("qwen2.5:7b")
    other = configured.lookup("tuned-qwen:7b")
    assert other.areas["math"] == 0.1 and other.areas["code"] == qwen.areas["code"]
    assert other.specialties == {"math"}
    # The catalogue itself is unchanged.
    assert catalog.lookup("my-coder").origin == "nearest"


@pytest.mark.parametrize(
    "spec",
    [
        {"like": "no-such-model:1b"},
        {"areas": {"coding": 0.5}},
        {"areas": {"code": 1.5}},
        {"specialties": ["poetry"]},
        {"colour": "blue"},
        {"released": "last year"},
    ],
)
def test_bad_overrides_are_refused(catalog: Catalog, spec: dict[str, Any]) -> None:
    with pytest.raises(CatalogError):
        catalog.with_overrides({"mine:latest": spec})


# Models with published figures of every area, profiled at those figures (`_anchored`).
ANCHORS = ("llama3:70b", "qwen2:7b", "gemma2:9b")


def _anchored(catalog: Catalog, *areas: str) -> dict[str, dict[str, Measured]]:
    """`ANCHORS` measured at their catalogue figures over a million items: the user's
    items of `areas` on the catalogue's scale, as far as profiles say (`offsets` ~0)."""
    return {
        name: {a: Measured(catalog.lookup(name).areas[a], 10**6) for a in areas} for name in ANCHORS
    }


def test_measured_scores_take_precedence(catalog: Catalog) -> None:
    """Measured over a million items beside three anchors, a share moves its area most
    of the way from the catalogue's figure: the rest is the offset's doubt, one
    `transfer_spread` over the anchors' number (`Catalog.offsets`)."""
    mine_before = catalog.with_overrides({"my-coder:latest": {"like": "qwen2.5-coder:7b"}}).lookup(
        "my-coder:latest"
    )
    measured = catalog.with_overrides(
        {"my-coder:latest": {"like": "qwen2.5-coder:7b"}}
    ).with_measured(
        {
            **_anchored(catalog, "code", "math"),
            "qwen2.5:7b": {"code": Measured(0.5, 10**6)},
            "my-coder": {"math": Measured(0.25, 10**6)},
        }
    )
    qwen = measured.lookup("qwen2.5:7b-instruct-q4_K_M")
    before = catalog.lookup("qwen2.5:7b")
    assert qwen.origin == "profile" and 0.5 < qwen.areas["code"] < 0.5 + 0.3 * (
        before.areas["code"] - 0.5
    )
    assert qwen.areas["math"] == before.areas["math"]
    mine = measured.lookup("my-coder:latest")
    assert mine.origin == "profile"
    assert abs(mine.areas["math"] - 0.25) < 0.3 * abs(mine_before.areas["math"] - 0.25)
    with pytest.raises(CatalogError):
        catalog.with_measured({"qwen2.5:7b": {"code": Measured(-0.1, 10)}})
    with pytest.raises(CatalogError):
        catalog.with_measured({"qwen2.5:7b": {"code": Measured(0.5, 0)}})


def _moved(catalog: Catalog, name: str, area: str, share: float, n: int) -> float:
    """How far a profile of `n` items at `share` moves the catalogue's area of `name`
    toward the share, beside `_anchored` models: 0 not at all, 1 all the way."""
    before = catalog.lookup(name).areas[area]
    profiled = catalog.with_measured({**_anchored(catalog, area), name: {area: Measured(share, n)}})
    after = profiled.lookup(name)
    assert after.origin == "profile"
    return (after.areas[area] - before) / (share - before)


def test_a_measured_area_counts_as_much_as_its_items() -> None:
    """A profiled area is a precision-weighted blend of the measured share (its
    binomial sampling error, on the catalogue's scale as the anchors place it) and the
    catalogue's figure (how far a published item set of an area is from another one,
    `transfer_spread`, plus its own doubt): ten items move a published area part way, a
    thousand most of the way (the rest is the offset's doubt, see
    `test_measured_scores_take_precedence`)."""
    catalog = Catalog.load()
    published = catalog.lookup("qwen2.5:7b")
    assert published.area_uncertainty["math"] == 0.0
    target = 0.2 if published.areas["math"] > 0.5 else 0.9
    ten = _moved(catalog, "qwen2.5:7b", "math", target, 10)
    thirty = _moved(catalog, "qwen2.5:7b", "math", target, 30)
    thousand = _moved(catalog, "qwen2.5:7b", "math", target, 1000)
    assert 0.05 < ten < 0.5 and ten < thirty < thousand
    assert thousand > 0.7


def test_the_transfer_spread_is_the_catalogues_line_residuals() -> None:
    """The catalogue's figure weighs as much as one published benchmark of an area
    predicts another of it, beyond their scales: the fitted lines' residual error over
    all the pairs they were fitted on. A catalogue with no line has no such measure,
    and a measured share is then taken as it is."""
    catalog = Catalog.from_data(_scales_data({"MATH": 0.5, "GSM8K": 0.9, "MMLU": 0.6}))
    pairs = [(0.6, 0.2), (0.7, 0.4), (0.8, 0.6), (0.9, 0.8), (0.95, 0.9), (0.9, 0.5)]
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - intercept - slope * x) ** 2))
    # GSM8K's six pairs; MMLU-R's and OLL-MMLU's five each lie on their lines.
    assert catalog.transfer_spread == pytest.approx(math.sqrt(residual / 16))
    assert 0.03 < Catalog.load().transfer_spread < 0.2
    alone = {
        "version": 1,
        "areas": list(AREAS),
        "benchmarks": {"MATH": "math"},
        "models": [_scales_model("solo", {"MATH": 0.5})],
    }
    solo = Catalog.from_data(alone)
    assert solo.transfer_spread == 0.0
    measured = solo.with_measured({"solo:7b": {"math": Measured(0.9, 10)}}).lookup("solo:7b")
    assert measured.areas["math"] == 0.9


def _vague_data() -> dict[str, Any]:
    """`_scales_data` with a probe reporting both MATH and GSM8K (so that the lines have
    a residual) and a model with no maths result, whose maths is imputed."""
    data = _scales_data({"MATH": 0.5, "GSM8K": 0.9, "MMLU": 0.6})
    data["models"].append(_scales_model("vague", {"MMLU": 0.7}))
    return data


def test_the_scale_spread_is_the_mean_gap_between_an_areas_benchmarks() -> None:
    catalog = Catalog.from_data(_vague_data())
    pairs = [(0.6, 0.2), (0.7, 0.4), (0.8, 0.6), (0.9, 0.8), (0.95, 0.9), (0.9, 0.5)]
    gap = sum(competition - gsm for gsm, competition in pairs) / len(pairs)
    assert catalog.scale_spread["math"] == pytest.approx(abs(gap))
    assert catalog.scale_spread["code"] == 0.0  # no benchmark of its own but the scale


def test_measured_shares_are_moved_onto_the_catalogues_scale_by_one_offset() -> None:
    """Profiled models with a published figure anchor how far the area's measured shares
    lie from the catalogue's scale; a profiled model whose figure is imputed is read on
    that scale too, and does not jump above an unprofiled model the catalogue publishes
    higher because its share is on the items' scale. Unanchored, a share moves less."""
    catalog = Catalog.from_data(_vague_data())
    vague, probe = catalog.lookup("vague:7b"), catalog.lookup("probe:7b")
    assert vague.area_uncertainty["math"] > 0.3 and probe.area_uncertainty["math"] == 0.0
    assert vague.areas["math"] < probe.areas["math"]
    measured = {
        "line0:7b": {"math": Measured(0.6, 10)},
        "line1:7b": {"math": Measured(0.8, 10)},
        "vague:7b": {"math": Measured(0.9, 10)},
    }
    profiled = catalog.with_measured(measured)
    offset = profiled.offsets()["math"]
    assert offset.anchors == 2 and -0.45 < offset.shift < -0.2
    assert 0.0 < offset.variance < catalog.scale_spread["math"] ** 2
    assert profiled.lookup("vague:7b").areas["math"] < probe.areas["math"]
    assert profiled.lookup("line0:7b").areas["math"] < profiled.lookup("line1:7b").areas["math"]
    alone = catalog.with_measured({"vague:7b": {"math": Measured(0.9, 10)}})
    assert alone.offsets()["math"] == (0.0, pytest.approx(catalog.scale_spread["math"] ** 2), 0)
    moved = alone.lookup("vague:7b").areas["math"] - vague.areas["math"]
    exact = (
        Catalog(
            catalog.neighbourhood,
            {},
            {},
            1,
            measured={"vague:7b": {"math": Measured(0.9, 10)}},
            transfer_spread=catalog.transfer_spread,
        )
        .lookup("vague:7b")
        .areas["math"]
        - vague.areas["math"]
    )
    assert 0.0 < moved < exact


def test_a_model_the_catalogue_does_not_know_keeps_its_measured_share() -> None:
    catalog = Catalog.load()
    name = "zz-unheard-of:7b"
    assert catalog.lookup(name).origin == "nearest"
    for n in (10, 1000):
        found = catalog.with_measured({name: {"code": Measured(0.3, n)}}).lookup(name)
        assert found.origin == "profile" and found.areas["code"] == 0.3


def test_a_model_described_by_areas_alone_weighs_only_those_against_its_profile() -> None:
    """A model `selector.models` describes by its areas alone (no `like`) is placed among
    the catalogue's entries for the rest, as a model the catalogue does not know is: a
    measured area it gives a figure for is weighed with that figure, as an area a model
    `like` an entry is given is; one it does not keeps the measured share, as every area
    of a placed model does."""
    catalog = Catalog.load()
    name = "zz-unheard-of:7b"
    measured = {name: {"code": Measured(0.3, 10), "math": Measured(0.3, 10)}}
    alone = catalog.with_overrides({name: {"areas": {"code": 0.8}}})
    liked = catalog.with_overrides({name: {"like": "qwen2.5:7b", "areas": {"code": 0.8}}})
    assert alone.lookup(name).areas["math"] != 0.3
    found = alone.with_measured(measured).lookup(name)
    assert found.origin == "profile"
    assert found.areas["math"] == 0.3
    assert found.areas["math"] == catalog.with_measured(measured).lookup(name).areas["math"]
    assert 0.3 < found.areas["code"] < 0.8
    assert found.areas["code"] == liked.with_measured(measured).lookup(name).areas["code"]
    assert found.area_uncertainty["code"] == 0.0


def test_a_described_model_cites_the_entry_it_is_like_and_no_other(catalog: Catalog) -> None:
    """What `lookup` takes a described model's areas from is what `entry`, `sources` and
    `figures` say: the entry it is `like`, cited but for the areas the operator gives;
    none for a description without `like`, which is placed, whatever entry its name
    would otherwise be read as."""
    described = catalog.with_overrides(
        {
            "my-coder:latest": {"like": "qwen2.5-coder:7b", "areas": {"code": 0.9}},
            "codellama:7b": {"areas": {"code": 0.1}},
        }
    )
    cited = catalog.sources("qwen2.5-coder:7b")
    assert {s.area for s in cited.values()} >= {"code", "math"}
    assert described.entry("my-coder") == "qwen2.5-coder:7b"
    mine = described.sources("my-coder")
    assert mine == {b: s for b, s in cited.items() if s.area != "code"}
    figures = described.figures("my-coder")
    assert figures["code"] == Figure("configured") and figures["math"] == Figure("published")
    assert catalog.entry("codellama:7b") == "codellama:7b" and catalog.sources("codellama:7b")
    assert described.lookup("codellama:7b").origin == "config"
    assert described.entry("codellama:7b") is None and described.sources("codellama:7b") == {}
    figures = described.figures("codellama:7b")
    assert figures["code"] == Figure("configured") and figures["math"] == Figure("imputed")
    profiled = described.with_measured({"my-coder": {"math": Measured(0.5, 10)}})
    assert profiled.figures("my-coder")["math"] == Figure("published", "blended")
    assert profiled.sources("my-coder") == mine


def test_a_measured_areas_uncertainty_shrinks_with_its_items() -> None:
    """Beside `_anchored` models, a model the catalogue does not know is as uncertain as
    its sampling error; an imputed area less than its imputation; a published one stays
    at none. Without them, the offset's prior doubt keeps an unknown model's share
    uncertain however many its items."""
    catalog = Catalog.load()

    def spread(name: str, area: str, n: int, anchored: bool = True) -> float:
        anchors = _anchored(catalog, area) if anchored else {}
        profiled = catalog.with_measured({**anchors, name: {area: Measured(0.5, n)}})
        return profiled.lookup(name).area_uncertainty[area]

    unknown = [spread("zz-unheard-of:7b", "code", n) for n in (10, 30, 1000)]
    assert unknown[0] > unknown[1] > unknown[2] >= 0.0
    alone = spread("zz-unheard-of:7b", "code", 1000, anchored=False)
    assert alone > unknown[0]
    imputed = next(
        (e.name, area)
        for e in catalog.entries()
        for area in AREAS
        if e.area_uncertainty[area] > 0.2 and e.origin == "catalogue"
    )
    name, area = imputed
    before = catalog.lookup(name).area_uncertainty[area]
    after = [spread(name, area, n) for n in (10, 1000)]
    assert before > after[0] > after[1]
    assert spread("qwen2.5:7b", "math", 10) == 0.0
    assert spread("qwen2.5:7b", "math", 10, anchored=False) == 0.0


def test_a_description_of_a_chat_tag_leaves_its_pretrained_tags_alone(catalog: Catalog) -> None:
    """A pretrained tag (`llama3:8b-text`, `codellama:7b-code`) is another model than the
    chat tag it shortens to: a description or a profile named for the chat tag does not
    describe it, one named for it does, and the chat tag's own variants keep theirs."""
    described = catalog.with_overrides(
        {
            "llama3:8b": {"like": "qwen2.5:7b", "areas": {"code": 0.9}},
            "codellama:7b": {"areas": {"code": 0.1}},
            "mixtral:8x7b-text": {"areas": {"math": 0.05}},
        }
    ).with_measured(
        {"llama3:8b": {"math": Measured(0.2, 10)}, "codellama:7b": {"math": Measured(0.3, 10)}}
    )
    for name in ("llama3:8b-text", "llama3:8b-text-q4_0", "codellama:7b-code"):
        found = described.lookup(name)
        assert found == catalog.lookup(name), name
        assert found.origin == "catalogue" and not found.answers_requests(name), name
    for name in ("llama3:8b", "llama3:8b-instruct-q4_K_M"):
        found = described.lookup(name)
        assert found.origin == "profile" and found.areas["code"] == 0.9, name
    mixtral = described.lookup("mixtral:8x7b-text-v0.1-q4_0")
    assert mixtral.origin == "config" and mixtral.areas["math"] == 0.05


def test_a_score_without_a_source_is_refused() -> None:
    data = {
        "version": 1,
        "areas": list(AREAS),
        "benchmarks": {"MMLU": "knowledge"},
        "models": [
            {
                "name": "x:1b",
                "family": "x",
                "params_b": 1,
                "released": "2024-01",
                "context_length": 4096,
                "scores": {"MMLU": 0.5},
            }
        ],
    }
    with pytest.raises(CatalogError, match="no source"):
        Catalog.from_data(data)
    data["models"][0]["sources"] = {"MMLU": "https://example.org/card"}  # type: ignore[index]
    assert Catalog.from_data(data).lookup("x").areas["knowledge"] == 0.5
    with pytest.raises(CatalogError, match="version"):
        Catalog.from_data({**data, "version": 2})


def test_config_selector_models_feed_the_overrides(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "selector:\n"
        "  models:\n"
        "    my-coder:latest: {like: 'qwen2.5-coder:7b'}\n"
        "    my-ft:latest: {areas: {code: 0.7}, params_b: 8}\n"
    )
    cfg = config_loading.load(
        path, environ={"AUTOROUTE_SELECTOR__MODELS__MY-FT:LATEST__AREAS__MATH": "0"}
    )
    given = {name: entry.given() for name, entry in cfg.selector.models.items()}
    assert given == {
        "my-coder:latest": {"like": "qwen2.5-coder:7b"},
        "my-ft:latest": {"areas": {"code": 0.7, "math": 0.0}, "params_b": 8.0},
    }
    configured = catalog.with_overrides(given)
    assert configured.lookup("my-ft").areas["math"] == 0.0
    assert configured.lookup("my-coder").neighbours == ("qwen2.5-coder:7b",)
    assert config_loading.load(ROOT / "config.yaml", environ={}).selector.models == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("selector: {models: {m: {areas: {coding: 0.5}}}}\n")
    with pytest.raises(ConfigError, match="unknown area"):
        config_loading.load(bad, environ={})


def test_every_library_name_has_one_latest_tag(catalog: Catalog) -> None:
    bases = {entry.name.split(":")[0] for entry in catalog.entries()}
    for base in bases:
        assert catalog.resolve(base) is not None, f"{base}:latest names no entry"
        assert catalog.resolve(base + ":latest") == catalog.resolve(base)


def test_placement_predicts_held_out_models_better_than_the_catalogue_mean() -> None:
    """Leave one model out, place it by family, size and specialties, and compare its
    imputed areas with its published ones (every third model with published numbers)."""
    data = yaml.safe_load(DEFAULT_PATH.read_text())
    full = Catalog.from_data(data)
    placed_error: list[float] = []
    mean_error: list[float] = []
    held_out = [
        item
        for item in data["models"]
        if full.sources(item["name"]) and "embedding" not in (item.get("specialties") or ())
    ][::3]
    assert len(held_out) >= 15
    for item in held_out:
        rest = Catalog.from_data(
            {**data, "models": [m for m in data["models"] if m["name"] != item["name"]]}
        )
        spec = {
            "family": item["family"],
            "params_b": item["params_b"],
            "specialties": item.get("specialties") or [],
        }
        placed = rest.with_overrides({"held-out:latest": spec}).lookup(
            "held-out", {"family": item.get("arch", "")}
        )
        others = [e for e in rest.entries() if "embedding" not in e.specialties]
        published = full.lookup(item["name"])
        for area in AREAS:
            if published.area_uncertainty[area] > 0.0:
                continue  # not published on the area's own scale for this model
            mean = sum(e.areas[area] for e in others) / len(others)
            placed_error.append(abs(placed.areas[area] - published.areas[area]))
            mean_error.append(abs(mean - published.areas[area]))
    assert sum(placed_error) < 0.75 * sum(mean_error)


def test_the_weights_context_places_a_model_of_no_known_family_nearer_its_results() -> None:
    """A model known by its show alone (a tune under a name of its own: architecture,
    size, the context its weights take) has no release date to weigh its neighbours by;
    its context length stands in for one. Left out one at a time (every third model
    with published numbers) and placed without its family, the held-out models' imputed
    areas lie nearer their published ones with their context than without it."""
    data = yaml.safe_load(DEFAULT_PATH.read_text())
    full = Catalog.from_data(data)
    held_out = [
        item
        for item in data["models"]
        if full.sources(item["name"]) and "embedding" not in (item.get("specialties") or ())
    ][::3]
    with_context: list[float] = []
    without: list[float] = []
    for item in held_out:
        rest = Catalog.from_data(
            {**data, "models": [m for m in data["models"] if m["name"] != item["name"]]}
        )
        details = {"family": item.get("arch", ""), "parameter_size": f"{item['params_b']}B"}
        told = rest.lookup("held-out:latest", {**details, "context_length": item["context_length"]})
        untold = rest.lookup("held-out:latest", details)
        published = full.lookup(item["name"])
        for area in AREAS:
            if published.area_uncertainty[area] > 0.0:
                continue  # not published on the area's own scale for this model
            with_context.append(abs(told.areas[area] - published.areas[area]))
            without.append(abs(untold.areas[area] - published.areas[area]))
    assert sum(with_context) < 0.95 * sum(without)


def test_config_names_a_catalogue_file_to_load(tmp_path: Path) -> None:
    shipped = config_loading.load(ROOT / "config.yaml", environ={}).selector.catalog
    assert shipped == ""
    own = tmp_path / "models.yaml"
    own.write_text(DEFAULT_PATH.read_text().replace("name: qwen2.5:7b\n", "name: qwen2.5:7b-own\n"))
    cfg = config_loading.load(None, environ={"AUTOROUTE_SELECTOR__CATALOG": str(own)})
    loaded = Catalog.load(Path(cfg.selector.catalog) if cfg.selector.catalog else None)
    assert loaded.resolve("qwen2.5:7b-own") == "qwen2.5:7b-own"
    # The shipped catalogue reads the unknown tag as a variant of qwen2.5:7b.
    assert Catalog.load().resolve("qwen2.5:7b-own") == "qwen2.5:7b"


def _catalogue_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_PATH.read_text())
    return data


def _with_scores(data: dict[str, Any], name: str, scores: dict[str, float]) -> dict[str, Any]:
    """The catalogue data with one model's published scores replaced."""
    models = []
    for item in data["models"]:
        if item["name"] == name:
            url = "https://example.org/card"
            item = {**item, "scores": scores, "sources": dict.fromkeys(scores, url)}
        models.append(item)
    return {**data, "models": models}


def test_no_mapped_or_imputed_score_falls_below_chance(catalog: Catalog) -> None:
    """MMLU and GPQA are four-way multiple choice: guessing scores 0.25. A score read
    off a fitted line or imputed from neighbours is never below that; a published
    one is kept even when it is (gemma3:1b's GPQA)."""
    assert catalog.lookup("gemma3:1b").areas["reasoning"] < 0.25
    for entry in catalog.entries():
        for area in ("knowledge", "reasoning"):
            if entry.area_uncertainty[area] > 0.0:
                assert entry.areas[area] >= 0.25, (entry.name, area)
    for name in ("tiny:135m", "mystery:0.3b"):
        placed = catalog.lookup(name, {"family": "gemma3"})
        assert placed.areas["reasoning"] >= 0.25 and placed.areas["knowledge"] >= 0.25


def test_a_line_read_beyond_its_data_is_floored_and_less_certain(catalog: Catalog) -> None:
    """Llama 2 7B's BBH lies below every BBH the BBH-to-GPQA line was fitted on, and the
    line reads it below chance: the score is chance, with more uncertainty than a BBH
    read within the fitted range."""
    below = catalog.lookup("llama2:7b")
    within = catalog.lookup("granite3.3:8b")
    assert set(catalog.sources("llama2:7b")) >= {"BBH"} and "GPQA" not in catalog.sources(
        "llama2:7b"
    )
    assert "BBH" in catalog.sources("granite3.3:8b")
    assert below.areas["reasoning"] == 0.25
    assert below.area_uncertainty["reasoning"] > within.area_uncertainty["reasoning"] > 0.0
    # Published numbers are untouched.
    assert below.areas["knowledge"] == catalog.sources("llama2:7b")["MMLU"].value


def test_neighbours_are_looked_for_in_the_same_era(catalog: Catalog) -> None:
    """A 2023 Llama 2 does not stand in for models of 2024 and 2025 that have closer
    contemporaries of their size."""
    for name in (
        "nemotron:51b",
        "olmo2:7b",
        "falcon3:7b",
        "command-r7b:7b",
        "codestral:22b",
        "devstral:24b",
        "granite4:small-h",
        "hermes3:8b",
    ):
        entry = catalog.lookup(name)
        assert entry.released >= 2024.0, name
        assert not [n for n in entry.neighbours if n.startswith("llama2:")], (
            name,
            entry.neighbours,
        )


def test_an_unseen_models_release_date_chooses_its_neighbours(catalog: Catalog) -> None:
    spec = {"family": "acme", "arch": "llama", "params_b": 70}
    configured = catalog.with_overrides(
        {
            "old:70b": {**spec, "released": "2023-07"},
            "new:70b": {**spec, "released": "2024-12"},
        }
    )
    old = configured.lookup("old:70b")
    new = configured.lookup("new:70b")
    assert "llama2:70b" in old.neighbours
    assert "llama2:70b" not in new.neighbours


def test_a_code_specialists_code_score_does_not_set_a_general_models() -> None:
    """llama3.2:1b publishes no code number; the nearest model of its size and
    architecture is the code specialist deepseek-coder:1.3b, whose code score says
    little about a general model's. Whatever that specialist scores, llama3.2:1b's code
    stays about the same (the size trend and the MBPP line move a little with it), and
    comes from general models."""
    data = _catalogue_data()
    shipped = Catalog.from_data(data)
    general = shipped.lookup("llama3.2:1b")
    assert "code" not in general.specialties
    assert not [n for n in general.neighbours if "code" in shipped.lookup(n).specialties]
    for name in ("llama3.2:1b", "tinyllama:1.1b", "smollm2:1.7b"):
        assert "deepseek-coder:1.3b" not in shipped.lookup(name).neighbours, name
    stronger = Catalog.from_data(_with_scores(data, "deepseek-coder:1.3b", {"HumanEval": 0.99}))
    assert stronger.lookup("deepseek-coder:1.3b").areas["code"] == 0.99
    for name in ("llama3.2:1b", "tinyllama:1.1b", "smollm2:1.7b"):
        moved = stronger.lookup(name).areas["code"] - shipped.lookup(name).areas["code"]
        assert abs(moved) < 0.01, name


def test_a_code_specialists_code_score_comes_from_code_specialists() -> None:
    """devstral publishes no code number: it is imputed from code models, whatever the
    general models of its size and architecture score."""
    data = _catalogue_data()
    shipped = Catalog.from_data(data)
    devstral = shipped.lookup("devstral:24b")
    assert "code" in devstral.specialties
    weaker = Catalog.from_data(
        _with_scores(data, "mistral-small:24b", {"MMLU": 0.805, "HumanEval": 0.05})
    )
    assert weaker.lookup("mistral-small:24b").areas["code"] == 0.05
    assert abs(weaker.lookup("devstral:24b").areas["code"] - devstral.areas["code"]) < 0.01


def test_open_llm_leaderboard_results_fill_areas_but_never_replace_a_makers(
    catalog: Catalog,
) -> None:
    """The Open LLM Leaderboard measures differently from the makers (log-likelihood, no
    chain of thought), so its results are benchmarks of their own, mapped onto each area
    by a fitted line: they set an area no maker's number sets, and leave alone one that is
    set (where the entry carries the area's scale, they only fit the line)."""
    nemotron = catalog.lookup("nemotron:70b")
    assert {"OLL-MMLU-Pro", "OLL-IFEval"} <= set(catalog.sources("nemotron:70b"))
    assert 0.0 < nemotron.area_uncertainty["knowledge"] < 0.2
    # A 70B model's knowledge, read through the line fitted on the makers' MMLU, is
    # not the raw leaderboard accuracy (about 0.49), which sits on another scale.
    assert nemotron.areas["knowledge"] > 0.7
    llama = catalog.lookup("llama3.3:70b")
    data = _catalogue_data()
    listed = next(m["scores"] for m in data["models"] if m["name"] == "llama3.3:70b")
    assert {"OLL-IFEval", "OLL-MMLU-Pro"} <= set(listed)
    # Its makers' results set every area: the leaderboard's are not cited, and the
    # areas are the same without them.
    makers = {b: s.value for b, s in catalog.sources("llama3.3:70b").items()}
    assert set(makers) == {b for b in listed if not b.startswith("OLL-")}
    without = Catalog.from_data(_with_scores(data, "llama3.3:70b", makers))
    assert without.lookup("llama3.3:70b").areas == llama.areas
    # Llama 2 Chat had no instruction result: its imputation (about 0.75) was far above
    # what the leaderboard measured.
    assert catalog.lookup("llama2:70b").areas["instruction"] < 0.55


def test_livecodebench_is_read_only_where_its_line_onto_humaneval_holds(
    catalog: Catalog,
) -> None:
    """LiveCodeBench is mapped onto the code area's HumanEval scale by a line fitted on
    models that report both, all of which run without thinking. A thinking model scores
    far beyond every one of them, where the line reads 1.0 for all alike: a model that
    can think lists its result without thinking (Qwen3's non-thinking tables), says so,
    and stands among the other models' results; the line rests on enough models."""
    data = _catalogue_data()
    listed = [m for m in data["models"] if "LiveCodeBench" in (m.get("scores") or {})]
    thinking = [m for m in listed if "reasoning" in (m.get("specialties") or ())]
    others = [m["scores"]["LiveCodeBench"] for m in listed if m not in thinking]
    for model in thinking:
        assert "LiveCodeBench v5 without thinking" in model.get("note", ""), model["name"]
        assert model["scores"]["LiveCodeBench"] <= max(others), model["name"]
    assert len([m for m in listed if "HumanEval" in m["scores"]]) >= 8
    # A model whose code area only LiveCodeBench sets is read off the line, with the
    # uncertainty of a mapped score rather than an imputed one.
    mini = catalog.lookup("phi4-mini:3.8b")
    assert "LiveCodeBench" in catalog.sources("phi4-mini:3.8b")
    assert {"HumanEval", "MBPP"}.isdisjoint(catalog.sources("phi4-mini:3.8b"))
    assert 0.0 < mini.area_uncertainty["code"] < 0.3


@pytest.mark.parametrize(
    ("name", "entry", "humaneval"),
    [
        # Code Llama's pretrained and Python variants (the paper's Table 2), and
        # DeepSeek Coder's base models (its paper's Table 3), by Ollama tag, quantized
        # tag and Hugging Face pull: not the Instruct models their bare tags are.
        ("codellama:7b-code", "codellama:7b-code", 0.335),
        ("codellama:13b-code-q4_0", "codellama:13b-code", 0.36),
        ("codellama:34b-code", "codellama:34b-code", 0.488),
        ("codellama:70b-code-q4_K_M", "codellama:70b-code", 0.53),
        ("codellama:7b-python", "codellama:7b-python", 0.384),
        ("codellama:13b-python-q4_0", "codellama:13b-python", 0.433),
        ("codellama:34b-python-q4_K_M", "codellama:34b-python", 0.537),
        ("codellama:70b-python", "codellama:70b-python", 0.573),
        ("hf.co/TheBloke/CodeLlama-7B-Python-GGUF:Q4_K_M", "codellama:7b-python", 0.384),
        ("hf.co/TheBloke/CodeLlama-13B-GGUF:Q5_K_M", "codellama:13b-code", 0.36),
        ("deepseek-coder:1.3b-base", "deepseek-coder:1.3b-base", 0.348),
        ("deepseek-coder:6.7b-base-q4_K_M", "deepseek-coder:6.7b-base", 0.494),
        ("deepseek-coder:33b-base-q8_0", "deepseek-coder:33b-base", 0.561),
        ("hf.co/TheBloke/deepseek-coder-6.7B-base-GGUF:Q4_K_M", "deepseek-coder:6.7b-base", 0.494),
        ("codegemma:7b-code-q4_K_M", "codegemma:7b-code", 0.4013),
    ],
)
def test_a_code_models_base_variant_carries_the_base_models_results(
    catalog: Catalog, name: str, entry: str, humaneval: float
) -> None:
    assert catalog.resolve(name) == entry
    found = catalog.lookup(name)
    assert found.pretrained
    assert catalog.sources(name)["HumanEval"].value == humaneval
    assert found.areas == catalog.lookup(entry).areas
    assert found.area_uncertainty["code"] == 0.0


@pytest.mark.parametrize(
    ("name", "entry", "mmlu"),
    [("yi:6b-text", "yi:6b-text", 0.632), ("yi:34b-text-q4_0", "yi:34b-text", 0.763)],
)
def test_yi_s_text_tags_are_its_base_models_not_its_chat_models(
    catalog: Catalog, name: str, entry: str, mmlu: float
) -> None:
    """Ollama's `yi:6b-text` and `yi:34b-text` are Yi (1.0) 6B and 34B, the pretrained
    models: the Yi README's base table, not the chat models' results."""
    assert catalog.resolve(name) == entry
    found = catalog.lookup(name)
    assert found.pretrained
    assert catalog.sources(name)["MMLU"].value == mmlu
    assert catalog.resolve(name.replace("-text", "-chat")) != entry


def test_a_chat_tag_never_takes_a_base_models_entry(catalog: Catalog) -> None:
    # Ollama's `starcoder2:15b-instruct-v0.1-q4_K_M` is the instruct fine-tune, whatever
    # words its tag adds; the bare `15b` is the base model.
    assert catalog.resolve("starcoder2:15b-instruct-v0.1-q4_K_M") == "starcoder2:15b-instruct"
    assert catalog.resolve("starcoder2:15b-instruct-v0.1") == "starcoder2:15b-instruct"
    # A chat variant of any pretrained entry is never that entry, whatever else its tag
    # says: a base model's numbers and its leaving chat requests to instruct models are
    # another model's.
    for entry in catalog.entries():
        if not entry.pretrained:
            continue
        for word in ("instruct", "chat", "it"):
            for tag in (f"{word}", f"{word}-q4_K_M", f"{word}-v0.2-q8_0"):
                name = f"{entry.name}-{tag}"
                resolved = catalog.resolve(name)
                assert resolved is None or not catalog.lookup(resolved).pretrained, name


def test_a_base_models_code_score_does_not_set_a_chat_models() -> None:
    """A pretrained model continues a prompt; its HumanEval, run as a completion, says
    little of what a chat model of its size and architecture scores asked in a
    conversation. The code models that publish no code number (Devstral, CodeBooga, a
    Code Llama merge) are imputed from chat models, whatever the pretrained Code Llamas
    of their size score."""
    data = _catalogue_data()
    shipped = Catalog.from_data(data)
    chats = ("devstral:24b", "codebooga:34b", "devstral-2:123b")
    for name in chats:
        found = shipped.lookup(name)
        assert not found.pretrained and "code" in found.specialties, name
    changed = data
    for base in ("codellama:34b-code", "codellama:34b-python", "codellama:70b-code"):
        changed = _with_scores(changed, base, {"HumanEval": 0.99})
    stronger = Catalog.from_data(changed)
    assert stronger.lookup("codellama:34b-python").areas["code"] == 0.99
    for name in chats:
        moved = stronger.lookup(name).areas["code"] - shipped.lookup(name).areas["code"]
        assert abs(moved) < 0.01, (name, moved)


def test_a_base_tag_of_a_chat_entry_takes_a_pretrained_models_code(catalog: Catalog) -> None:
    """Ollama's `-base`, `-text`, `-code` and `-python` tags are the pretrained models
    (`names.is_pretrained`). One the catalogue does not list keeps what the chat entry
    of its bare tag says of its size, context and release, but not that model's code
    results, answers to a request: a pretrained model's HumanEval is a completion, and
    its code is read off pretrained models as much as off its family's chat ones
    (Qwen2.5-Coder's base models score far below their Instruct models on HumanEval)."""
    for size in ("1.5b", "7b", "32b"):
        chat = catalog.lookup(f"qwen2.5-coder:{size}")
        name = f"qwen2.5-coder:{size}-base-q8_0"
        base = catalog.lookup(name)
        assert base.name == name and base.pretrained
        assert (base.params_b, base.context_length) == (chat.params_b, chat.context_length)
        assert base.areas["knowledge"] == chat.areas["knowledge"]
        assert base.areas["code"] < chat.areas["code"] - 0.05, size
        assert base.area_uncertainty["code"] > chat.area_uncertainty["code"]
    # A mixture of experts' base tag keeps its active parameters.
    mixtral = catalog.lookup("mixtral:8x7b-text-v0.1-q4_0")
    assert mixtral.active_params_b == catalog.lookup("mixtral:8x7b").active_params_b
    # A listed model whose own name has such a word is that entry, as published.
    for entry in catalog.entries():
        assert catalog.lookup(entry.name).areas == entry.areas, entry.name


def test_a_base_tag_of_a_chat_entry_cites_only_the_results_it_takes(catalog: Catalog) -> None:
    """The published numbers behind a pretrained tag that resolves through its chat
    entry (`qwen2.5-coder:7b-base`) are those of the areas it keeps: the chat model's
    HumanEval and MBPP are not its code, nor its IFEval its instruction, which are
    imputed and so cite nothing, as any imputed area of an entry cites nothing."""
    benchmarks = yaml.safe_load(DEFAULT_PATH.read_text())["benchmarks"]
    area_of = {b: spec if isinstance(spec, str) else spec["area"] for b, spec in benchmarks.items()}
    for chat_name in ("qwen2.5-coder:1.5b", "qwen2.5-coder:7b", "llama3.1:8b", "mixtral:8x7b"):
        tag = "text" if chat_name.startswith(("llama", "mixtral")) else "base"
        name = f"{chat_name}-{tag}-q4_0"
        chat = catalog.sources(chat_name)
        assert any(area_of[bench] == "code" for bench in chat), chat_name
        cited = catalog.sources(name)
        kept = {b: s for b, s in chat.items() if area_of[b] not in ("code", "instruction")}
        assert cited == kept, name
        base = catalog.lookup(name)
        assert base.area_uncertainty["code"] >= 0.2 and base.neighbours, name
    # A listed pretrained entry cites its own code results.
    assert "HumanEval" in catalog.sources("codellama:7b-code")


def test_sources_cite_the_entry_whose_areas_a_lookup_takes(catalog: Catalog) -> None:
    """`lookup` takes the entry of a name's family that the backend's architecture says
    is meant (`_same_arch`: Ollama moved `deepseek-r1:8b` from the Llama 3.1 distill to
    the Qwen3 one); the published numbers `sources` cites for the name and those details
    are that entry's, for a pretrained tag of it as for the tag itself: the Qwen3
    distill's, not the Llama one's, whose results are not the areas used."""
    qwen3 = {"family": "qwen3", "parameter_size": "8.2B"}
    moved, llama = "deepseek-r1:8b-0528-qwen3", "deepseek-r1:8b"
    assert catalog.sources(llama) and catalog.sources(moved)
    assert catalog.sources(llama) != catalog.sources(moved)
    for name in (llama, "deepseek-r1:8b-text-q4_0"):
        found = catalog.lookup(name, qwen3)
        assert found.areas["knowledge"] == catalog.lookup(moved).areas["knowledge"], name
        assert found.areas["knowledge"] != catalog.lookup(name).areas["knowledge"], name
        assert catalog.sources(name, qwen3) == catalog.sources(moved), name
        assert catalog.sources(name, {"family": "llama"}) == catalog.sources(name), name
        assert catalog.sources(name), name


def test_a_base_tag_of_a_chat_entry_takes_a_pretrained_models_instruction(
    catalog: Catalog,
) -> None:
    """A pretrained model has no instruction tuning: the catalogue's pretrained entries
    that publish the Open LLM Leaderboard's IFEval (StarCoder2, Phi-2, Falcon2, the
    YaRN models) score far below its chat models, so a chat model's IFEval says nothing
    of its base model. A `-base`/`-text` tag the catalogue does not list takes its
    instruction, as its code, from pretrained models as well as from its family's chat
    ones, and cites neither the chat model's IFEval nor its code results."""
    published = catalog.neighbourhood.published
    pretrained = [
        published[e.name]["instruction"]
        for e in catalog.entries()
        if e.pretrained and "instruction" in published[e.name]
    ]
    chat = [
        published[e.name]["instruction"]
        for e in catalog.entries()
        if not e.pretrained and "instruction" in published[e.name]
    ]
    assert len(pretrained) >= 5 and max(pretrained) < sorted(chat)[len(chat) // 2] - 0.2
    for chat_name, tag in (("llama3.1:8b", "text"), ("qwen2.5-coder:7b", "base")):
        chat_model = catalog.lookup(chat_name)
        name = f"{chat_name}-{tag}-q4_0"
        base = catalog.lookup(name)
        assert base.areas["instruction"] < chat_model.areas["instruction"] - 0.1, name
        assert base.area_uncertainty["instruction"] > chat_model.area_uncertainty["instruction"]
        assert base.areas["knowledge"] == chat_model.areas["knowledge"]
        cited = catalog.sources(name)
        assert {"IFEval", "OLL-IFEval"} & set(catalog.sources(chat_name)), chat_name
        assert {s.area for s in cited.values()}.isdisjoint({"code", "instruction"}), name


def test_a_pretrained_entrys_instruction_is_read_off_pretrained_models(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The published IFEval of the catalogue's pretrained entries, each left out, lies
    nearer what its neighbours impute when a chat model stands further off for
    instruction (`placement.PRETRAINED_AREAS`) than when it does not, and the chat
    entries' lies no further."""
    neighbourhood = catalog.neighbourhood

    def errors() -> dict[bool, float]:
        found: dict[bool, list[float]] = {True: [], False: []}
        for entry in catalog.entries():
            published = neighbourhood.published[entry.name].get("instruction")
            if published is None or "embedding" in entry.specialties:
                continue
            probe = placement.probe_of(entry)
            imputed, _, _ = neighbourhood.impute_listed(probe, "instruction", entry.name)
            found[entry.pretrained].append(abs(imputed - published))
        return {pretrained: sum(e) / len(e) for pretrained, e in found.items()}

    apart = errors()
    assert "instruction" in placement.PRETRAINED_AREAS
    monkeypatch.setattr(placement, "PRETRAINED_AREAS", placement.PRETRAINED_AREAS - {"instruction"})
    alike = errors()
    assert apart[True] < 0.75 * alike[True]
    assert apart[False] <= alike[False]


@pytest.mark.parametrize(
    ("name", "entry", "listed"),
    [
        # Aliases of a pretrained entry of the default size: Ollama's `codellama:code` is
        # `codellama:7b-code`, `deepseek-coder:base` the 1.3b base model (0.77 GB).
        ("codellama:code", "codellama:7b-code", True),
        ("codellama:python", "codellama:7b-python", True),
        ("deepseek-coder:base", "deepseek-coder:1.3b-base", True),
        ("deepseek-coder:base-q4_0", "deepseek-coder:1.3b-base", True),
        ("codegemma:code", "codegemma:7b-code", True),
        # `stable-code:code` has the digest of `stable-code:3b` and `:latest`, the
        # completion model.
        ("stable-code:code", "stable-code:3b", True),
        ("stable-code:latest", "stable-code:3b", True),
        # The pretrained variant of the chat entry `latest` is (`llama3:text` is the 8b,
        # `llama3:70b-text` the 70b; the others' size is the one `latest` is).
        ("qwen2.5-coder:base", "qwen2.5-coder:7b", False),
        ("llama3:text", "llama3:8b", False),
        ("llama3:text-q4_0", "llama3:8b", False),
        ("llama3.1:text", "llama3.1:8b", False),
        ("llama2:text", "llama2:7b", False),
        ("mistral:text", "mistral:7b", False),
        ("mixtral:text", "mixtral:8x7b", False),
        ("gemma:text", "gemma:7b", False),
        ("library/falcon:text", "falcon:7b", False),
    ],
)
def test_a_bare_pretrained_tag_is_that_variant_of_the_default_model(
    catalog: Catalog, name: str, entry: str, listed: bool
) -> None:
    """A tag of a pretrained word alone (`llama3:text`, `deepseek-coder:base`) names the
    pretrained variant of the model `latest` is: the catalogue's pretrained entry of
    that size where it lists one, else that chat entry's `_pretrained_variant`."""
    assert catalog.resolve(name) == entry
    found, default = catalog.lookup(name), catalog.lookup(entry)
    assert found.origin == "catalogue" and found.pretrained
    assert (found.params_b, found.context_length) == (default.params_b, default.context_length)
    if listed:
        assert found.areas == default.areas
        assert catalog.sources(name) == catalog.sources(entry)
    else:
        assert found.name == name and not default.pretrained
        assert found.areas["code"] != default.areas["code"]
        assert {s.area for s in catalog.sources(name).values()}.isdisjoint({"code"})


def test_a_bare_pretrained_tag_of_a_model_so_named_is_its_entry(catalog: Catalog) -> None:
    """Where the model `latest` is has the word in its own name (WizardCoder-Python, a
    chat tune of Code Llama - Python, whose `latest` is `wizardcoder:7b-python`), the
    bare tag is that entry as published, not a pretrained variant of it."""
    assert catalog.resolve("wizardcoder:python") == "wizardcoder:7b-python"
    found = catalog.lookup("wizardcoder:python")
    assert not found.pretrained
    assert found.areas == catalog.lookup("wizardcoder:7b-python").areas


def test_a_profile_keeps_the_entry_a_model_is_read_as(catalog: Catalog) -> None:
    """A profile blends a catalogue entry's areas (its origin then says `profile`) but
    does not make it another model: a chat tune whose name reads as pretrained
    (`wizardcoder:python`) still answers requests, and the entry it is read as still
    says which weights the digest check compares; a description in `selector.models`
    is read as no entry."""
    name = "wizardcoder:python"
    assert catalog.lookup(name).answers_requests(name)
    profiled = catalog.with_measured({name: {"math": Measured(0.3, 10)}}).lookup(name)
    assert profiled.origin == "profile"
    assert profiled.answers_requests(name)
    assert profiled.entry == catalog.lookup(name).entry == catalog.resolve(name)
    described = catalog.with_overrides({name: {"like": "qwen2.5:7b"}}).lookup(name)
    assert described.origin == "config" and described.entry == ""


def test_the_digest_check_counts_a_profiled_catalogue_model(catalog: Catalog) -> None:
    """One digest listed for two catalogued models of other sizes is contradicted,
    profiled or not: a profile changes a model's areas, not which weights it is."""
    profiled = catalog.with_measured({"qwen2.5:7b": {"code": Measured(0.6, 10)}})

    def info(name: str) -> registry.ModelInfo:
        known = profiled.lookup(name)
        return registry.ModelInfo(
            candidate=Candidate(name=name),
            details={},
            generates=True,
            knowledge=known,
            digest="sha256:" + "1" * 64,
        )

    models = {name: info(name) for name in ("qwen2.5:7b", "qwen2.5:14b")}
    assert models["qwen2.5:7b"].knowledge.origin == "profile"  # type: ignore[union-attr]
    assert registry._contradicted_digests(models) == {"sha256:" + "1" * 64}


@pytest.mark.parametrize(
    ("tag", "entry"),
    [
        ("qwen3:4b", "qwen3:4b-thinking-2507"),
        ("qwen3:30b", "qwen3:30b-a3b-thinking-2507"),
        ("qwen3:235b", "qwen3:235b-a22b-thinking-2507"),
        # The April 2025 hybrid models keep their quantization tags.
        ("qwen3:30b-a3b", "qwen3:30b-a3b-thinking-2507"),
        ("qwen3:30b-a3b-q4_K_M", "qwen3-30b-a3b:latest"),
        ("qwen3:235b-a22b-q8_0", "qwen3-235b-a22b:latest"),
        ("Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b:latest"),
        ("qwen3:4b-q4_K_M", "qwen3-4b:latest"),
        ("Qwen/Qwen3-4B", "qwen3-4b:latest"),
        ("qwen3:latest", "qwen3:8b"),
    ],
)
def test_bare_qwen3_tags_that_moved_to_2507_are_the_thinking_models(
    catalog: Catalog, tag: str, entry: str
) -> None:
    # Ollama's bare qwen3 4b, 30b and 235b tags serve the Thinking-2507 weights, which
    # think whatever `think` says; the hybrid model of April 2025 is another model.
    assert catalog.lookup(tag).name == entry


def test_deepseek_r1_671b_is_the_0528_release(catalog: Catalog) -> None:
    # Ollama's 671b tag serves DeepSeek-R1-0528; the January release's results belong to
    # an entry of its own (runs of it, as Reasoning Gym's, look that one up).
    assert catalog.sources("deepseek-r1:671b")["GPQA"].url == (
        "https://huggingface.co/deepseek-ai/DeepSeek-R1-0528"
    )
    january = catalog.lookup("deepseek-r1:671b-0120")
    assert catalog.sources(january.name)["GPQA"].value == 0.715
    assert catalog.lookup("deepseek-r1:671b").released > january.released


@pytest.mark.parametrize(
    ("name", "pretrained"),
    [
        ("llama4:16x17b", {"MMLU", "MBPP", "MATH"}),
        ("llama4:128x17b", {"MMLU", "MBPP", "MATH"}),
        ("mistral:7b", {"MMLU", "ARC-C", "HumanEval", "MBPP", "MATH", "GSM8K"}),
    ],
)
def test_chat_entries_carry_no_pretrained_model_results(
    catalog: Catalog, name: str, pretrained: set[str]
) -> None:
    # These makers publish the listed results for the pretrained model only; a chat
    # model's areas there are imputed rather than read from another model's scores.
    assert not pretrained & set(catalog.sources(name))
