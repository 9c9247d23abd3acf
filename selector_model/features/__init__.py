"""The one feature definition: serving scores with it and training builds rows with it.

If training and serving ever computed a feature differently, the selector would be
silently wrong, so nothing else may compute these. A row is

    request features ⊕ candidate features

- `schema`: the columns' names and order, and the version that stands for them;
- `request`: the request features, in named steps (`request_features`);
- `hints`: the keyword hints among them, and `words`: what a word is to them;
- `candidate`: the `Candidate` a model is to the selector, its one JSON shape, and its
  columns.

Everything a caller needs is importable from here.
"""

from selector_model.features.candidate import (
    Candidate,
    candidate_block,
    family_of,
    params_from,
    quant_bits_from,
    rows,
)
from selector_model.features.hints import (
    _ASKED_WORDS,
    _FUNCTION_VERBS,
    _LANGUAGE_HINTS,
    _MATH_FUNCTION_WORDS,
    _MATH_SYMBOLS,
    _MATH_WORDS,
    _MATH_WORDS_WITH_NUMBERS,
    _PHRASE_LANGUAGES,
    _PHRASE_NOUNS,
    _PHRASE_TASKS,
    _TASK_HINTS,
)
from selector_model.features.request import _Scan, request_features
from selector_model.features.schema import (
    AREAS,
    CANDIDATE_FEATURES,
    CAPABILITIES,
    DEFAULT_RELEASE,
    FAMILIES,
    HASH_BUCKETS,
    HASH_WORDS,
    HINT_CHARS,
    LANGUAGES,
    RELEASE_ORIGIN,
    REQUEST_FEATURES,
    SCAN_CHARS,
    SCHEMA_VERSION,
    SPECIALTIES,
    TASKS,
    UNKNOWN_AREA,
    feature_names,
)

__all__ = [
    "AREAS",
    "CANDIDATE_FEATURES",
    "CAPABILITIES",
    "DEFAULT_RELEASE",
    "FAMILIES",
    "HASH_BUCKETS",
    "HASH_WORDS",
    "HINT_CHARS",
    "LANGUAGES",
    "RELEASE_ORIGIN",
    "REQUEST_FEATURES",
    "SCAN_CHARS",
    "SCHEMA_VERSION",
    "SPECIALTIES",
    "TASKS",
    "UNKNOWN_AREA",
    # The definitions tests/test_features.py checks the fast reading against.
    "_ASKED_WORDS",
    "_FUNCTION_VERBS",
    "_LANGUAGE_HINTS",
    "_MATH_FUNCTION_WORDS",
    "_MATH_SYMBOLS",
    "_MATH_WORDS",
    "_MATH_WORDS_WITH_NUMBERS",
    "_PHRASE_LANGUAGES",
    "_PHRASE_NOUNS",
    "_PHRASE_TASKS",
    "_TASK_HINTS",
    "Candidate",
    "_Scan",
    "candidate_block",
    "family_of",
    "feature_names",
    "params_from",
    "quant_bits_from",
    "request_features",
    "rows",
]
