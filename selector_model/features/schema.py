"""The names and order of a row's columns, and the version that stands for them.

A row is `REQUEST_FEATURES` then `CANDIDATE_FEATURES`. Bump `SCHEMA_VERSION` whenever a
name, an order or a computation changes: the proxy refuses an artifact built on
another schema.
"""

from __future__ import annotations

SCHEMA_VERSION = 8
# Of a long conversation only the first and last `SCAN_CHARS` characters are scanned,
# and keyword hints read only the first and last `HINT_CHARS`.
SCAN_CHARS = 2048
HINT_CHARS = 768
# The first and last `HASH_WORDS` words of the last user turn, each counted in one of
# `HASH_BUCKETS` buckets.
HASH_BUCKETS = 16
HASH_WORDS = 12

LANGUAGES = ("python", "javascript", "typescript", "go", "rust", "java", "cpp", "sql", "shell")
TASKS = ("fix", "explain", "refactor", "test", "generate", "complete", "summarize", "translate")
FAMILIES = ("llama", "qwen", "gemma", "mistral", "mixtral", "phi", "deepseek", "nemotron", "other")
CAPABILITIES = ("tools", "vision", "thinking", "insert")
# The catalogue's capability areas, each a score in [0, 1], and the specialities it
# records (selector_model.catalog); a request's "area demand" uses the same areas.
AREAS = ("knowledge", "reasoning", "math", "code", "instruction")
SPECIALTIES = ("code", "math", "vision", "reasoning", "tools")
# What a candidate without catalogue knowledge is taken to have: middling scores,
# fully uncertain, released at the start of the training data's era.
UNKNOWN_AREA = 0.5
DEFAULT_RELEASE = 2024.0
RELEASE_ORIGIN = 2023.0

REQUEST_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_est_tokens",
    "messages",
    "user_turns",
    "has_system",
    "log_system_chars",
    "log_last_user_chars",
    "code_fences",
    "code_char_ratio",
    "lines",
    "questions",
    "numbers",
    *(f"lang_{name}" for name in LANGUAGES),
    *(f"task_{name}" for name in TASKS),
    "multiple_choice",
    "math",
    "tools",
    "log_tools",
    "images",
    "format_json",
    "format_schema",
    "think",
    "fim",
    "raw",
    "temperature",
    "log_num_ctx",
    "log_num_predict",
    "endpoint_chat",
    "endpoint_openai",
    *(f"head_hash_{i}" for i in range(HASH_BUCKETS)),
    *(f"tail_hash_{i}" for i in range(HASH_BUCKETS)),
    *(f"demand_{area}" for area in AREAS),
)

CANDIDATE_FEATURES: tuple[str, ...] = (
    "log_params_b",
    "log_active_params_b",
    "quant_bits",
    "log2_context",
    *(f"area_{name}" for name in AREAS),
    *(f"spec_{name}" for name in SPECIALTIES),
    "release_years",
    "uncertainty",
    "is_instruct",
    "loaded",
    *(f"cap_{name}" for name in CAPABILITIES),
)


def feature_names() -> list[str]:
    """A row's columns, in order."""
    return [*REQUEST_FEATURES, *CANDIDATE_FEATURES]
