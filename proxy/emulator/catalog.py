"""The emulator's model catalogue: what `ollama list` would show on a GPU box.

One table (`CATALOG`) of realistic entries. Sizes, parameter counts, quantisations,
context and embedding lengths follow the Ollama library's published models; digests are
deterministic (sha256 of the name) because the emulator holds no real weights. The same
table is the "registry" that `POST /api/pull` draws from: pulling a name outside it fails
the way Ollama fails for a manifest the registry does not have. A model name the table
does not list, asked for at start (`--models`), is described by synthesized.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

_REGISTRY_PREFIX = "registry.ollama.ai/library/"

# Prompt templates by family, abridged from the library's Modelfiles: the emulator never
# renders them, but /api/show returns them and clients look for `.Tools` / `.Suffix`.
_CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
_CHATML_TOOLS = "{{- if .Tools }}# Tools\n{{ range .Tools }}{{ . }}\n{{ end }}{{ end }}" + _CHATML
_FIM = "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
_LLAMA3 = (
    "{{- if .Tools }}Available tools: {{ range .Tools }}{{ . }}{{ end }}{{ end }}"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_GEMMA = (
    '{{- range .Messages }}<start_of_turn>{{ if eq .Role "user" }}user{{ else }}model'
    "{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
)
_MISTRAL = (
    "{{- if .Tools }}[AVAILABLE_TOOLS] {{ json .Tools }}[/AVAILABLE_TOOLS]{{ end }}"
    "{{- range .Messages }}[INST] {{ .Content }}[/INST]{{ end }}"
)
_THINK = "{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n{{ end }}"
_QWEN3 = _CHATML_TOOLS + _THINK
_EMBED = "{{ .Prompt }}"
CHATML_STOP = ("<|im_start|>", "<|im_end|>")
_LLAMA3_STOP = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_MISTRAL_STOP = ("[INST]", "[/INST]")


def template_for(capabilities: tuple[str, ...]) -> str:
    """A template with what each capability needs, for a model the table does not list:
    Ollama reads tools, insert and thinking off a template's `.Tools`, `.Suffix` and
    think tags, and clients look for them there too."""
    if "embedding" in capabilities:
        return _EMBED
    template = _CHATML_TOOLS if "tools" in capabilities else _CHATML
    if "insert" in capabilities:
        template = _FIM + template
    if "thinking" in capabilities:
        template += _THINK
    return template


@dataclass(frozen=True)
class ModelSpec:
    """One model as Ollama describes it in /api/tags, /api/show and /api/ps."""

    name: str  # "model:tag", as listed
    family: str  # details.family
    parameter_size: str  # details.parameter_size, e.g. "7.6B"
    quantization_level: str  # details.quantization_level, e.g. "Q4_K_M"
    size: int  # bytes on disk (sum of the manifest's layers)
    parameter_count: int  # general.parameter_count
    context_length: int  # <arch>.context_length
    embedding_length: int  # <arch>.embedding_length (the vector size for embedders)
    capabilities: tuple[str, ...]  # /api/show capabilities, in Ollama's order
    modified_at: str  # RFC 3339, as Go prints a manifest's mtime
    template: str = _CHATML
    architecture: str = ""  # general.architecture; defaults to the family
    families: tuple[str, ...] = ()  # details.families; defaults to (family,)
    stop: tuple[str, ...] = ()  # PARAMETER stop lines of the Modelfile
    block_count: int = 32
    head_count: int = 32
    head_count_kv: int = 8
    file_type: int = 15  # general.file_type (15 = Q4_K_M, 2 = Q4_0, 1 = F16)
    license: str = ""
    parent_model: str = ""
    system: str = ""
    extra_parameters: tuple[tuple[str, Any], ...] = field(default=())
    # What a create adds: licenses after the base's (setLicense appends a layer) and
    # the MESSAGE history, (role, content) pairs (setMessages replaces it).
    licenses: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    # Emulator only: the chance of a correct answer to a profiling-suite prompt, per
    # capability area (see skills.py). Empty: suite prompts get ordinary emulated text.
    skills: tuple[tuple[str, float], ...] = ()
    # The name whose manifest this one is a copy of (`/api/copy`): a copy lists the
    # same digest and layers, as Ollama's copy of the manifest file does; "" for its own.
    manifest: str = ""
    # What a created model's manifest holds beyond its name (`renamed`: the base's
    # manifest and what the create changed): Ollama's digest is the hash of the
    # manifest's bytes, so two creates of one name from other bases list other digests.
    made_from: str = ""

    @property
    def arch(self) -> str:
        return self.architecture or self.family

    @property
    def _origin(self) -> str:
        """The name the manifest was made under: every digest of a copy is its source's."""
        return self.manifest or self.name

    @property
    def digest(self) -> str:
        """Manifest digest as /api/tags prints it: bare sha256 hex."""
        made = f"\0{self.made_from}" if self.made_from else ""
        return hashlib.sha256(f"manifest:{self._origin}{made}".encode()).hexdigest()

    @property
    def model_digest(self) -> str:
        """Digest of the weights layer ("sha256:<hex>")."""
        return "sha256:" + hashlib.sha256(f"weights:{self._origin}".encode()).hexdigest()

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def renamed(self, name: str, **changes: Any) -> ModelSpec:
        """A model made from this one under another name (create), with its own
        manifest."""
        kept = sorted((k, repr(v)) for k, v in changes.items() if k != "modified_at")
        made_from = f"{self.digest}{kept}"
        return replace(self, name=name, manifest="", made_from=made_from, **changes)

    def copied(self, name: str, **changes: Any) -> ModelSpec:
        """This model's manifest stored under another name as well (copy)."""
        return replace(self, name=name, manifest=self._origin, **changes)

    def layers(self) -> list[tuple[str, int]]:
        """(digest, size) of each manifest layer, weights first, as pull reports them."""
        small = [
            ("template", len(self.template)),
            ("license", 1 + len(self.license)),
            ("params", 96),
        ]
        out = [(self.model_digest, self.size - sum(s for _, s in small))]
        for kind, size in small:
            out.append(
                ("sha256:" + hashlib.sha256(f"{kind}:{self._origin}".encode()).hexdigest(), size)
            )
        return out

    def details(self) -> dict[str, Any]:
        """api.ModelDetails, field order as in api/types.go."""
        return {
            "parent_model": self.parent_model,
            "format": "gguf",
            "family": self.family,
            "families": list(self.families or (self.family,)),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def parameters(self) -> list[tuple[str, Any]]:
        """Modelfile PARAMETER lines, in the order /api/show prints them: a list value
        one line per element, as GetModelInfo and Model.String print a []any."""
        lines: list[tuple[str, Any]] = [("stop", s) for s in self.stop]
        for key, value in self.extra_parameters:
            lines += [(key, v) for v in value] if isinstance(value, list) else [(key, value)]
        return lines

    def all_licenses(self) -> list[str]:
        """Model.License: the base's license layer, then those creates added."""
        return ([self.license] if self.license else []) + list(self.licenses)

    def model_info(self) -> dict[str, Any]:
        """GGUF key/values as /api/show returns them (a Go map: keys sorted)."""
        a = self.arch
        info: dict[str, Any] = {
            "general.architecture": a,
            "general.file_type": self.file_type,
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{a}.attention.head_count": self.head_count,
            f"{a}.attention.head_count_kv": self.head_count_kv,
            f"{a}.block_count": self.block_count,
            f"{a}.context_length": self.context_length,
            f"{a}.embedding_length": self.embedding_length,
            # Arrays longer than five entries are blanked unless verbose (getModelData).
            "tokenizer.ggml.merges": [],
            "tokenizer.ggml.model": "bert" if self.has("embedding") else "gpt2",
            "tokenizer.ggml.token_type": [],
            "tokenizer.ggml.tokens": [],
        }
        # What Ollama decides embedding and vision from (server/images.go).
        if self.has("embedding"):
            info[f"{a}.pooling_type"] = 1  # mean
        if self.has("vision") and not self.projector_info():
            info[f"{a}.vision.block_count"] = 27
        return dict(sorted(info.items()))

    def projector_info(self) -> dict[str, Any]:
        """The key/values of a vision projector beside the weights (llava's clip), as
        /api/show lists them; empty for a model without one."""
        if not (self.has("vision") and "clip" in self.families):
            return {}
        return {
            "clip.has_llava_projector": True,
            "clip.has_vision_encoder": True,
            "clip.projector_type": "mlp",
            "clip.vision.block_count": 23,
            "clip.vision.image_size": 336,
            "general.architecture": "clip",
        }


def normalize_name(name: str) -> str:
    """`llama3.1` -> `llama3.1:latest`; drops the default registry/namespace prefix."""
    name = name.strip()
    if name.lower().startswith(_REGISTRY_PREFIX):
        name = name[len(_REGISTRY_PREFIX) :]
    elif name.lower().startswith("library/"):
        name = name[len("library/") :]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":latest"
    return name


def qualified(name: str) -> str:
    """Fully qualified form Ollama puts in capability errors."""
    short = normalize_name(name)
    return short if "/" in short.split(":")[0] else _REGISTRY_PREFIX + short


_TOOLS = ("completion", "tools")


def _skills(
    knowledge: float, reasoning: float, math: float, code: float, instruction: float
) -> tuple[tuple[str, float], ...]:
    """Per-area skills, in the suite's area order. Made up for the emulator: a larger or
    specialised model is better where one would expect, so that profiling (and `auto`
    in the demo) tells the models apart."""
    return (
        ("knowledge", knowledge),
        ("reasoning", reasoning),
        ("math", math),
        ("code", code),
        ("instruction", instruction),
    )


CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        "qwen2.5:7b",
        "qwen2",
        "7.6B",
        "Q4_K_M",
        4_683_087_332,
        7_615_616_512,
        32768,
        3584,
        _TOOLS,
        "2025-03-14T09:12:44.118203517Z",
        _CHATML_TOOLS,
        stop=CHATML_STOP,
        block_count=28,
        head_count=28,
        head_count_kv=4,
        license="Apache License 2.0",
        skills=_skills(0.7, 0.6, 0.7, 0.65, 0.75),
    ),
    ModelSpec(
        "qwen2.5-coder:7b",
        "qwen2",
        "7.6B",
        "Q4_K_M",
        4_683_087_519,
        7_615_616_512,
        32768,
        3584,
        (*_TOOLS, "insert"),
        "2025-03-13T17:40:02.5531882Z",
        _FIM + _CHATML_TOOLS,
        stop=CHATML_STOP,
        block_count=28,
        head_count=28,
        head_count_kv=4,
        license="Apache License 2.0",
        skills=_skills(0.5, 0.5, 0.55, 0.85, 0.6),
    ),
    ModelSpec(
        "llama3.1:8b",
        "llama",
        "8.0B",
        "Q4_K_M",
        4_920_753_328,
        8_030_261_248,
        131072,
        4096,
        _TOOLS,
        "2025-03-12T11:05:37.90412Z",
        _LLAMA3,
        stop=_LLAMA3_STOP,
        license="LLAMA 3.1 COMMUNITY LICENSE AGREEMENT",
        skills=_skills(0.65, 0.5, 0.45, 0.5, 0.75),
    ),
    ModelSpec(
        "gemma2:9b",
        "gemma2",
        "9.2B",
        "Q4_0",
        5_443_152_417,
        9_241_705_984,
        8192,
        3584,
        ("completion",),
        "2025-03-11T08:22:19.003311452Z",
        _GEMMA,
        stop=("<start_of_turn>", "<end_of_turn>"),
        block_count=42,
        head_count=16,
        file_type=2,
        license="Gemma Terms of Use",
        skills=_skills(0.7, 0.55, 0.5, 0.45, 0.75),
    ),
    ModelSpec(
        "mistral:7b",
        "llama",
        "7.2B",
        "Q4_0",
        4_113_301_824,
        7_248_023_552,
        32768,
        4096,
        _TOOLS,
        "2025-03-10T15:48:51.64172Z",
        _MISTRAL,
        stop=_MISTRAL_STOP,
        file_type=2,
        license="Apache License 2.0",
        skills=_skills(0.55, 0.35, 0.3, 0.35, 0.6),
    ),
    ModelSpec(
        "codegemma:7b",
        "gemma",
        "9B",
        "Q4_0",
        5_011_852_809,
        8_537_680_896,
        8192,
        3072,
        ("completion", "insert"),
        "2025-03-09T10:31:08.27705Z",
        _FIM + _GEMMA,
        stop=("<start_of_turn>", "<end_of_turn>", "<|fim_prefix|>"),
        block_count=28,
        head_count=16,
        head_count_kv=16,
        file_type=2,
        license="Gemma Terms of Use",
        skills=_skills(0.4, 0.35, 0.35, 0.7, 0.4),
    ),
    ModelSpec(
        "llama3.2:3b",
        "llama",
        "3.2B",
        "Q4_K_M",
        2_019_393_189,
        3_212_749_888,
        131072,
        3072,
        _TOOLS,
        "2025-03-09T10:21:18.40722Z",
        _LLAMA3,
        stop=_LLAMA3_STOP,
        block_count=28,
        head_count=24,
        license="LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
        skills=_skills(0.5, 0.4, 0.45, 0.35, 0.65),
    ),
    ModelSpec(
        "llama3.3:70b",
        "llama",
        "70.6B",
        "Q4_K_M",
        42_520_413_916,
        70_553_706_496,
        131072,
        8192,
        _TOOLS,
        "2025-03-08T19:02:55.370069Z",
        _LLAMA3,
        stop=_LLAMA3_STOP,
        block_count=80,
        head_count=64,
        license="LLAMA 3.3 COMMUNITY LICENSE AGREEMENT",
        skills=_skills(0.9, 0.8, 0.8, 0.8, 0.9),
    ),
    ModelSpec(
        "mixtral:8x7b",
        "llama",
        "46.7B",
        "Q4_0",
        26_442_481_545,
        46_702_792_704,
        32768,
        4096,
        _TOOLS,
        "2025-03-07T13:27:40.81998Z",
        _MISTRAL,
        stop=_MISTRAL_STOP,
        file_type=2,
        license="Apache License 2.0",
        skills=_skills(0.7, 0.55, 0.5, 0.55, 0.7),
    ),
    ModelSpec(
        "qwen3:8b",
        "qwen3",
        "8.2B",
        "Q4_K_M",
        5_225_388_164,
        8_190_735_360,
        40960,
        4096,
        (*_TOOLS, "thinking"),
        "2025-03-15T21:54:12.6613Z",
        _QWEN3,
        stop=CHATML_STOP,
        block_count=36,
        license="Apache License 2.0",
        extra_parameters=(
            ("repeat_penalty", 1),
            ("temperature", 0.6),
            ("top_k", 20),
            ("top_p", 0.95),
        ),
        skills=_skills(0.7, 0.75, 0.85, 0.75, 0.75),
    ),
    ModelSpec(
        "llava:7b",
        "llama",
        "7B",
        "Q4_0",
        4_733_363_377,
        7_241_732_096,
        32768,
        4096,
        ("completion", "vision"),
        "2025-03-06T07:14:33.205511Z",
        _MISTRAL,
        families=("llama", "clip"),
        stop=_MISTRAL_STOP,
        file_type=2,
        license="Apache License 2.0",
        skills=_skills(0.45, 0.35, 0.25, 0.25, 0.5),
    ),
    ModelSpec(
        "nomic-embed-text:latest",
        "nomic-bert",
        "137M",
        "F16",
        274_302_450,
        136_727_040,
        2048,
        768,
        ("embedding",),
        "2025-03-05T12:00:41.58391Z",
        _EMBED,
        block_count=12,
        head_count=12,
        head_count_kv=12,
        file_type=1,
        license="Apache License 2.0",
    ),
    ModelSpec(
        "all-minilm:latest",
        "bert",
        "23M",
        "F16",
        45_960_996,
        22_565_376,
        512,
        384,
        ("embedding",),
        "2025-03-04T16:45:09.117Z",
        _EMBED,
        block_count=6,
        head_count=12,
        head_count_kv=12,
        file_type=1,
        license="Apache License 2.0",
    ),
)

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in CATALOG}
