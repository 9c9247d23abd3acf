"""Model names as users and registries spell them, reduced to what the catalogue keys on.

Ollama names are `[registry/][namespace/]name[:tag]`; a missing tag means `latest`.
Tags carry the size and often a variant and a quantization
(`7b-instruct-q4_K_M`, `70b-fp16`); names pulled from Hugging Face carry the
quantization as the whole tag (`hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M`).
"""

from __future__ import annotations

import functools
import re

_QUANT = re.compile(
    r"^(i?q\d[a-z0-9_]*|fp16|fp32|bf16|f16|f32|int4|int8|mxfp4|awq|gptq|gguf|mlx|\d+bit)$"
)
# Tag words that name a chat/instruct variant: the catalogue describes the chat model.
_VARIANT = frozenset({"instruct", "chat", "it", "latest"})
# The words of them that say a model was tuned to chat (`is_chat_variant`).
_CHAT_WORDS = _VARIANT - {"latest"}
# Tag words that name a pretrained (base) variant (`is_pretrained`).
# `code` and `python` are Code Llama's and CodeGemma's pretrained completion variants
# (`codellama:7b-code`, `codellama:7b-python`, `codegemma:7b-code`, `stable-code:3b-code`).
_PRETRAINED_TAG_WORDS = frozenset({"text", "base", "code", "python"})
# A safety classifier's name: Llama Guard (`llama-guard3`, `Llama-Guard-3-8B`),
# ShieldGemma, Granite Guardian (`granite3-guardian`), NemoGuard, WildGuard, as a whole
# word of the name (so not `vanguard`).
_CLASSIFIER = re.compile(
    r"(?:^|[-_/.])(?:(?:llama|nemo|wild)?guard(?:ian)?|shieldgemma)\d*(?=$|[-_/.])"
)
# A model line's name and generation: `qwen2.5-coder` is generation 2.5 of the line
# (qwen, -coder), `deepseek-v3` generation 3 of deepseek, `mistral-small3.1` 3.1 of
# mistral-small. A number of three or more digits is a date (`-2409`), not a generation.
_GENERATION = re.compile(r"([a-z][a-z-]*?)-?v?(\d{1,2}(?:\.\d+)?)((?:-[a-z][a-z0-9-]*)?)")
# A Hugging Face organisation's name as a repository may lead with it: letters, digits
# and dashes, no size (`meta-llama`, `01-ai`; not `llama-3.1-8b-lexi`).
_ORGANISATION = re.compile(r"(?![^_]*\d+(?:\.\d+)?[bm](?:$|-))[a-z0-9][a-z0-9-]*")
# An alias's last tag word that stands for every quantization of the tag before it
# (`yi:6b-chat-*`): a quantized tag can be another model than the bare tag it shortens
# to, where the library moved the bare tag to a new model and kept the old model's
# quantized tags.
ANY_QUANTIZATION = "*"
_SIZE = re.compile(r"(?:^|[-_:.])(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?=$|[-_:.])")
_ACTIVE = re.compile(r"(?:^|[-_:.])a(\d+(?:\.\d+)?)b(?=$|[-_:.])")

# Words in a name that say what a model is for.
NAME_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("code", ("coder", "code", "starcoder", "codestral", "devstral")),
    ("math", ("math", "mathstral")),
    ("reasoning", ("r1", "reason", "think", "qwq", "o1")),
    ("vision", ("vl", "vision", "llava", "minicpm-v", "moondream", "bakllava")),
    # paraphrase-multilingual: the library's one embedder named by its training task.
    ("embedding", ("embed", "minilm", "bge", "e5", "gte", "paraphrase")),
)
# Ollama `capabilities` (from /api/show) that imply a specialty.
CAPABILITY_SPECIALTIES = {
    "vision": "vision",
    "tools": "tools",
    "thinking": "reasoning",
    "insert": "code",
    "embedding": "embedding",
}


# What a repository's name says of its packaging, not of the model: a format
# (`-GGUF`), a quantizer's, or a transformers conversion (`CodeLlama-34b-Instruct-hf`).
_PACKAGING = re.compile(r"(?:[-_.](?:gguf|ggml|mlx|awq|gptq|hf))+$")
# Words of a repository's name that describe a build of the model, not another model:
# a context length (`-128K`), quantization-aware training (`-qat`), a quantization, an
# importance-matrix quantization (mradermacher's `-i1-GGUF`).
_BUILD_WORD = re.compile(r"\d+k|qat|i1")
# Meta's repositories lead Llama 3 and 3.1 with the maker (`Meta-Llama-3.1-70B-Instruct`).
_MAKER = re.compile(r"^meta-(?=llama)")


def split(name: str) -> tuple[str, str]:
    """(base, tag) of a name, lower-cased, without registry or namespace; tag "latest"
    when absent. A Hugging Face repository's "-GGUF" suffix goes with its prefix."""
    text = name.strip().lower()
    base, _, tag = text.partition(":")
    if "/" in base:
        base = base.rsplit("/", 1)[1]
    base = _PACKAGING.sub("", base)
    return base, tag or "latest"


def _words(text: str) -> list[str]:
    """The dash- or underscore-separated words of a name or tag."""
    return [w for w in re.split(r"[-_](?=[a-z0-9])", text) if w]


def _unquantized(tag: str) -> list[str]:
    """The words of a tag without its quantization, which is one dash-separated word
    whatever its underscores (`q4_K_M`, `q8_0`): `tiny-h-q8_0` -> tiny, h."""
    words: list[str] = []
    for part in tag.split("-"):
        if part and not _QUANT.match(part):
            words += [w for w in part.split("_") if w]
    return words


def quantization(name: str) -> str:
    """The quantization a name's tag names, as written (`8b-instruct-q4_K_M`:
    q4_k_m; `70b-fp16`: fp16), "" when it names none: a whole dash word of the tag,
    the last such."""
    for part in reversed(split(name)[1].split("-")):
        if _QUANT.match(part):
            return part
    return ""


def clean_tag(tag: str) -> str:
    """A tag without quantization and chat-variant words: `7b-instruct-q4_K_M` -> `7b`.
    Empty when nothing is left (a tag that was only a quantization)."""
    return "-".join(w for w in _unquantized(tag) if w not in _VARIANT)


def is_pretrained(name: str) -> bool:
    """Whether `name` is a pretrained (base) model rather than a chat/instruct one, by
    Ollama's library convention: `text`, `base`, `code` or `python` as a whole word of
    the tag (`llama3.1:8b-text`, `qwen2.5-coder:7b-base`, `codellama:7b-code`,
    `deepseek-coder-v2:16b-lite-base-q4_0`),
    or `base` as a whole word of the name, where a name pulled from Hugging Face says it
    (`hf.co/unsloth/Qwen3-8B-Base-GGUF:Q4_K_M`). Never a word's part (`database-coder`,
    a namespace): Ollama's own names (`nomic-embed-text`) and tags say nothing else."""
    base, tag = split(name)
    return bool(_PRETRAINED_TAG_WORDS.intersection(_words(tag))) or "base" in _words(base)


def default_pretrained(name: str) -> str:
    """The pretrained words of a tag that names no size but a pretrained variant
    (`codellama:code`, `deepseek-coder:base`, `llama3:text-q4_0`: code, base, text),
    which Ollama's library aliases to that variant of the model's default size, the
    one `latest` is; "" for any other name."""
    words = clean_tag(split(name)[1]).split("-")
    return "-".join(words) if all(w in _PRETRAINED_TAG_WORDS for w in words) else ""


def is_chat_variant(name: str) -> bool:
    """Whether `name` says it is a chat (instruct) model: `instruct`, `chat` or `it` as
    a whole word of the tag (`starcoder2:15b-instruct-v0.1-q4_K_M`) or, where a name
    pulled from Hugging Face says it, of the name (`starcoder2-15b-instruct-v0.1-GGUF`)."""
    base, tag = split(name)
    return bool(_CHAT_WORDS.intersection(_words(tag)) or _CHAT_WORDS.intersection(_words(base)))


def is_cloud(name: str) -> bool:
    """Whether `name` is one of Ollama's cloud models by its name: `cloud` as a whole
    word of the tag (`gpt-oss:120b-cloud`, `qwen3-coder:480b-cloud`)."""
    return "cloud" in _words(split(name)[1])


@functools.cache
def is_safety_classifier(name: str) -> bool:
    """Whether `name` is a safety classifier: a model that labels a conversation safe or
    unsafe (Llama Guard, ShieldGemma, Granite Guardian and the like) rather than
    answering it. Told by its name (the tag says nothing of it); `/api/show` lists
    `completion` for them as for any chat model."""
    base, _ = split(name)
    return _CLASSIFIER.search(base) is not None


def keys(name: str) -> list[str]:
    """Catalogue keys to try for `name`, most specific first: the tag as written, then
    any quantization of the tag without it (`7b-instruct-*`), then without its
    quantization (`7b-instruct-q4_K_M` -> `7b-instruct`, an entry of its
    own where the bare tag is another model), then without variant words too, then
    with trailing words dropped (`30b-a3b-2507` -> `30b-a3b` -> `30b`), then the bare
    name (an alias); for a name from a namespace, the same keys of it without an
    organisation it leads with (`without_organisation`), then without the maker's
    name Meta's repositories lead with (`Meta-Llama-3.1-70B-Instruct`), then without
    the words of its name that describe a build (`-128K`, `-qat-q4_0`)."""
    out = _keys(name)
    base, tag = split(name)
    rest = without_organisation(name)
    if rest:
        out += _keys(f"{rest}:{tag}")
    unmade = _MAKER.sub("", rest or base)
    if unmade != (rest or base):
        out += _keys(f"{unmade}:{tag}")
    built = "-".join(
        w for w in unmade.split("-") if not (_BUILD_WORD.fullmatch(w) or _QUANT.match(w))
    )
    if built and built != unmade:
        out += _keys(f"{built}:{tag}")
    return list(dict.fromkeys(out))


def without_organisation(name: str) -> str:
    """The base of a name from a namespace without the organisation its repository
    leads with before an underscore (bartowski's `google_gemma-3-12b-it-GGUF`:
    `gemma-3-12b-it`), "" when it has none. Only a reading to try after the name as
    it is: an underscore is also a model's own (`orca_mini_3b`)."""
    if "/" not in name:
        return ""
    organisation, underscore, rest = split(name)[0].partition("_")
    return rest if underscore and rest and _ORGANISATION.fullmatch(organisation) else ""


def _keys(name: str) -> list[str]:
    base, tag = split(name)
    out = [f"{base}:{tag}"]
    unquantized = "-".join(_unquantized(tag))
    if unquantized and quantization(name):
        out.append(f"{base}:{unquantized}-{ANY_QUANTIZATION}")
    if unquantized:
        out.append(f"{base}:{unquantized}")
    words = clean_tag(tag).split("-") if clean_tag(tag) else []
    if words:
        out.append(f"{base}:{'-'.join(words)}")
    # Shortened, a tag keeps its chat word before it loses it (`15b-instruct-v0.1` is
    # `15b-instruct` before `15b`): where the bare size is a base model, its instruct
    # tune is an entry of its own.
    kept = _unquantized(tag)
    chat = [i for i, word in enumerate(kept) if word in _CHAT_WORDS]
    if chat:
        for end in range(len(kept) - 1, chat[0], -1):
            out.append(f"{base}:{'-'.join(kept[:end])}")
    for end in range(len(words) - 1, 0, -1):
        out.append(f"{base}:{'-'.join(words[:end])}")
    if not words:
        out.append(f"{base}:latest")
    out.append(base)
    return out


def size_from_name(name: str) -> tuple[float, float]:
    """(total, active) billions of parameters written in a name (`8x7b`, `30b-a3b`,
    `qwen2.5-7b-instruct`, `smollm2:360m`); 0.0 where none is written."""
    base, tag = split(name)
    text = f"{base}:{tag}"
    active_match = _ACTIVE.search(text)
    active = float(active_match.group(1)) if active_match else 0.0
    total = 0.0
    for match in _SIZE.finditer(text):
        count = float(match.group(2)) * float(match.group(1) or 1)
        total = count / 1000 if match.group(3) == "m" else count
        break
    return total, active


def generation(base: str) -> tuple[tuple[str, str], float]:
    """The line a model name belongs to and its generation in it: `qwen3.5-coder` is
    generation 3.5 of (qwen, -coder), `gemma4` generation 4 of (gemma, ), and a name
    without a number generation 1 of its own line (`gemma`, before `gemma2`). Sizes and
    chat-variant words are not part of it (`qwen3.5-9b-instruct` is `qwen3.5`)."""
    kept = [w for w in _words(base) if not _SIZE.fullmatch(w) and w not in _VARIANT]
    text = "-".join(kept) or base
    match = _GENERATION.fullmatch(text)
    if match is None:
        return (text, ""), 1.0
    return (match.group(1).rstrip("-"), match.group(3)), float(match.group(2))


def hinted_specialties(name: str) -> set[str]:
    base, tag = split(name)
    words = set(re.split(r"[-_:.]", f"{base}-{tag}"))
    text = f"{base}:{tag}"
    found: set[str] = set()
    for specialty, hints in NAME_HINTS:
        for hint in hints:
            if hint in words or (len(hint) > 3 and hint in text):
                found.add(specialty)
    # "qwen2.5vl", "internvl": a vision suffix glued to the name.
    if any(word.endswith("vl") for word in words):
        found.add("vision")
    return found
