from __future__ import annotations

import itertools
import json
import math
import random
import re
import string
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector_model import features as F
from selector_model import request_body
from selector_model.features.words import spaced
from selector_model.kind import kind_of


def vector(path: str, body: dict[str, object]) -> dict[str, float]:
    values = F.request_features(path, body)
    assert len(values) == len(F.REQUEST_FEATURES)
    return dict(zip(F.REQUEST_FEATURES, values, strict=True))


def test_rows_follow_the_named_schema() -> None:
    coder = F.Candidate(
        name="qwen2.5-coder:7b",
        family="qwen",
        params_b=7.6,
        areas=(0.6, 0.5, 0.55, 0.8, 0.65),
        specialties=frozenset({"code"}),
        release=2024.7,
        uncertainty=0.1,
        capabilities=frozenset({"insert"}),
    )
    rows = F.rows(F.request_features("/api/chat", {"messages": []}), [coder, F.Candidate("new:1b")])
    names = F.feature_names()
    assert all(len(row) == len(names) for row in rows)
    assert not any(name.startswith(("model=", "family_")) for name in names)
    first = dict(zip(names, rows[0], strict=True))
    assert first["area_code"] == 0.8 and first["spec_code"] == 1.0 and first["cap_insert"] == 1.0
    assert first["release_years"] == 2024.7 - F.RELEASE_ORIGIN and first["uncertainty"] == 0.1
    assert first["log_active_params_b"] == first["log_params_b"]  # dense: all parameters
    # Without catalogue knowledge: middling scores, fully uncertain.
    second = dict(zip(names, rows[1], strict=True))
    assert second["area_math"] == F.UNKNOWN_AREA and second["uncertainty"] == 1.0


def test_a_model_is_scored_by_what_it_is_not_by_its_name() -> None:
    """Two candidates alike but for their names (and families) get the same row: the
    selector has no column that could remember a model by name."""
    known = dict(params_b=8.0, areas=(0.7, 0.6, 0.5, 0.4, 0.7), release=2024.5, uncertainty=0.0)
    a = F.Candidate(name="llama3.1:8b", family="llama", **known)  # type: ignore[arg-type]
    b = F.Candidate(name="my-finetune:latest", family="other", **known)  # type: ignore[arg-type]
    assert F.candidate_block(a) == F.candidate_block(b)
    moe = F.Candidate(name="moe:30b", params_b=30.0, active_params_b=3.0)
    block = dict(zip(F.CANDIDATE_FEATURES, F.candidate_block(moe), strict=True))
    assert block["log_active_params_b"] < block["log_params_b"] and moe.active_b == 3.0
    assert F.Candidate.from_record(moe.to_record()) == moe


def test_area_demand_follows_what_the_prompt_asks() -> None:
    def demand(text: str) -> dict[str, float]:
        values = vector("/api/chat", {"messages": [{"role": "user", "content": text}]})
        return {area: values[f"demand_{area}"] for area in F.AREAS}

    code = demand("Fix this bug:\n```python\ndef f(x):\n    return x +\n```")
    maths = demand("Solve the equation 3 * x + 4 = 19 and calculate the remainder of x / 2")
    choice = demand("Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth")
    plain = demand("hello")
    assert max(code, key=code.__getitem__) == "code"
    assert max(maths, key=maths.__getitem__) == "math"
    assert max(choice, key=choice.__getitem__) == "knowledge"
    assert set(plain.values()) == {0.2}  # no evidence: an even share
    for shares in (code, maths, choice, plain):
        assert abs(sum(shares.values()) - 1.0) < 1e-9


LIVER = "What is the main function of the liver?"
FUNCTION_MATHS = "Let g be a function such that g(2) = 5 and g(5) = 11. What is g(g(2))?"


def test_prose_is_not_code_and_a_function_stub_is() -> None:
    def read(text: str) -> dict[str, float]:
        return vector("/api/chat", {"messages": [{"role": "user", "content": text}]})

    def top(values: dict[str, float]) -> str:
        return max(F.AREAS, key=lambda area: values[f"demand_{area}"])

    # Words English shares with programming languages ("where", "from", "select",
    # "none", "public", "include", "herself.") hint none.
    prose = read(
        "Where did the settlers come from, and which public records include them? "
        "Select one; none of the above is allowed. She did it herself."
    )
    assert not any(prose[f"lang_{name}"] for name in F.LANGUAGES)
    assert top(prose) == "knowledge"
    # A Python stub whose docstring talks arithmetic asks for code, not a calculation.
    stub = read(
        "from typing import List\n\n\ndef sum_product(numbers: List[int]) -> int:\n"
        '    """Return the sum of the product of each integer pair in the list.\n'
        "    >>> sum_product([1, 2, 3])\n    11\n    >>> sum_product([])\n    0\n"
        '    """\n'
    )
    assert stub["lang_python"] == 1.0 and top(stub) == "code"
    for asked in (
        "Write a SQL query listing each customer's orders",
        "How do I do this in Python?",
        # Languages without a column of their own read as their kin's.
        "Write a quicksort in Go",
        "Implement a linked list in C",
        "Fix this Kotlin data class so equality ignores the id",
        "Write a PHP page that lists the uploaded files",
        "Refactor this C# controller into smaller methods",
        "Build a todo list view in Swift",
        "Write a Ruby method that parses a CSV line",
        "Create an HTML page with a signup form",
        "Write a React component that shows a paginated table",
        "Write a Dockerfile for a Django app",
        "Write a function that returns the n-th Fibonacci number",
    ):
        assert top(read(asked)) == "code", asked
        assert kind_of(F.request_features("/api/generate", {"prompt": asked})) == "code", asked
    # A language's name that is an everyday word or a name is not one outside a request
    # for code.
    for prose_text in (
        "Ruby is 6 times older than Sam. In 9 years, Ruby will be 3 times as old as Sam.",
        "Compound B, heated, results in C. What is C?",
        "Which laser is a solid-state laser: a ruby laser or a gas laser?",
        "Where should I go in Go, the board game, after a corner opening?",
        "Write how the crowd would react to the speech.",
        "What does HTML stand for?",
        # A function outside a request for code: biology's, maths'.
        LIVER,
        FUNCTION_MATHS,
    ):
        assert not any(read(prose_text)[f"lang_{name}"] for name in F.LANGUAGES), prose_text
    assert top(read(LIVER)) == "knowledge"
    assert kind_of(F.request_features("/api/generate", {"prompt": LIVER})) == "knowledge"
    assert kind_of(F.request_features("/api/generate", {"prompt": FUNCTION_MATHS})) == "math"
    # A maths word prose uses too is maths beside a number, not in prose.
    for prose_text in (
        "What does a product manager do?",
        "How can I solve a conflict with my coworker?",
        "Plan the remainder of my trip to Japan.",
    ):
        assert read(prose_text)["math"] == 0.0, prose_text
        assert kind_of(F.request_features("/api/generate", {"prompt": prose_text})) != "math"
    assert top(read("What is the sum of 12 and 30?")) == "math"
    # Numbers with a question: a word problem.
    assert top(read("Ann has 12 apples and buys 30 more at $2 each. How many has she?")) == "math"
    # LaTeX's braces are not code.
    assert top(read("Let $f(x) = \\frac{x^{2}}{x+1}$. Find $f(3)$.")) == "math"
    # The Unicode operators are maths as LaTeX's are, also in a request to write.
    for maths_text in (
        "Find the prime factorization of 280. Write the factors separated by \u00d7",
        "Divide 84 \u00f7 7 and write the result in words.",
        "Write \u221a2 to five decimal places.",
        "Show that x \u2264 3 when 2x + 1 \u2264 7, and write it up.",
    ):
        assert read(maths_text)["math"] >= 1.0, maths_text
        assert kind_of(F.request_features("/api/generate", {"prompt": maths_text})) == "math"


def _kind(text: str) -> str:
    return kind_of(F.request_features("/api/generate", {"prompt": text}))


def test_a_function_a_maths_word_names_is_not_code() -> None:
    # A function a maths word names is maths', also in a request to write.
    integral = (
        "Find the indefinite integral: \u222b 3*x**3*exp(x) dx\n"
        "1. Use ** instead of ^: write 7*X**2, not 7*X^2.\n"
        "2. Use exp(x) for the exponential function."
    )
    for maths_text in (integral, "Write the quadratic function whose roots are 2 and 3."):
        values = vector("/api/generate", {"prompt": maths_text})
        assert not any(values[f"lang_{name}"] for name in F.LANGUAGES), maths_text
        assert _kind(maths_text) != "code", maths_text
    assert _kind(integral) == "math"
    # A function asked for is a program's, whatever else the text names.
    for asked in (
        "Write a function that returns the exponential function of x",
        "Write a function to find the derivative of a polynomial function",
    ):
        assert vector("/api/generate", {"prompt": asked})["lang_javascript"] == 1.0, asked
        assert _kind(asked) == "code", asked


def test_a_function_no_request_governs_is_not_code() -> None:
    # A question whose options hold a request's words ("tests", "error") names a
    # function of the body, of an office or of a quantity: no program is asked for.
    options = (
        "Question: An elderly woman is confused and unsteady. Which of the following"
        " is most appropriate to order first?\nOptions:\nA. Renal function tests\n"
        "B. Thyroid function tests\nC. Liver function tests\nD. Chest x-ray\n"
        "E. An error in the history is likely; repeat it"
    )
    for text in (
        options,
        "Question: Research on tests of motor function has revealed that\nOptions:\n"
        "A. most motor functions are determined by age\nB. motor functions do not"
        " correlate\nC. the error is in the test",
        "Write an essay on how power is seen as a function of size in world politics.",
    ):
        values = vector("/api/generate", {"prompt": text})
        assert not any(values[f"lang_{name}"] for name in F.LANGUAGES), text
        assert _kind(text) != "code", text
    assert _kind(options) == "reasoning"
    # A function a request governs is a program's, the language named or not.
    for asked in (
        "Write a recursive function that counts the nodes of a tree.",
        "Please fix this function, it returns the wrong total.",
        "Refactor the following function into two smaller ones.",
    ):
        assert vector("/api/generate", {"prompt": asked})["lang_javascript"] == 1.0, asked
        assert _kind(asked) == "code", asked


def test_a_user_asking_for_a_function_is_asking_for_code() -> None:
    # What an editor's or a chat's user sends: the verb that asks stands a few words
    # before "function", or is one of asking rather than of writing.
    for asked in (
        "Can you write me a small helper function to parse dates?",
        "Write me a recursive function that computes the factorial of n",
        "Write a short utility function that deduplicates an array",
        "How do I write a memoized fibonacci function?",
        "I need a function that checks whether a number is prime",
        "I want a function that sorts a list of words by length",
        "Give me a function that flattens a nested list",
        "Make a function that converts celsius to fahrenheit",
        "Define a function that returns the nth fibonacci number",
    ):
        chat = {"messages": [{"role": "user", "content": asked}]}
        assert F.request_features("/api/chat", chat) == _reference("/api/chat", chat), asked
        assert kind_of(F.request_features("/api/chat", chat)) == "code", asked
    # A verb of another sentence or line governs no function: an option's or a
    # question's function is the body's.
    for text in (
        "Write your answer as a letter.\nWhich test assesses renal function?\n"
        "A. Urinalysis\nB. Liver function tests\nC. An error of measurement",
        "Make a list. The function of the liver is to filter the blood.",
    ):
        assert _kind(text) != "code", text


MAZE = (
    'Navigate from \'K\' (start) to \'>\' (goal):\n\n```\n""""""\n"K"yy"\n'
    '"yy"y"\n"yyy>"\n""""y"\n""""""\n```\n'
    "Legend: '\"' = Wall, 'y' = Passage\n\n"
    "What is the minimum number of steps to reach the goal?"
)


def test_a_grid_of_quotes_is_no_docstring() -> None:
    # A maze whose walls are quotes holds three of them in a row, in a grid's rows.
    assert '"""' in MAZE
    assert vector("/api/generate", {"prompt": MAZE})["lang_python"] == 0.0
    # A docstring's quotes outside a grid are Python's, on a line of their own too.
    for docstring in (
        'What does this say?\n    """Return the sum of a and b."""',
        'Explain:\n"""\nEvery row is read twice.\n"""',
        '"""Module docstring."""\nx=1',
    ):
        assert vector("/api/generate", {"prompt": docstring})["lang_python"] == 1.0, docstring


def test_request_features_read_the_request() -> None:
    chat = vector(
        "/api/chat",
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {
                    "role": "user",
                    "content": "Fix this bug:\n```python\ndef f(x):\n    return x +\n```",
                },
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "options": {"temperature": 0.2, "num_ctx": 8192},
            "think": True,
        },
    )
    assert chat["has_system"] == 1.0 and chat["messages"] == 2.0
    assert chat["lang_python"] == 1.0 and chat["task_fix"] == 1.0 and chat["code_fences"] == 1.0
    assert chat["tools"] == 1.0 and chat["think"] == 1.0 and chat["temperature"] == 0.2
    assert chat["log_num_ctx"] == 13.0 and chat["endpoint_chat"] == 1.0

    fim = vector(
        "/api/generate", {"prompt": "def add(a, b):", "suffix": "    return c", "format": "json"}
    )
    assert fim["fim"] == 1.0 and fim["format_json"] == 1.0 and fim["endpoint_chat"] == 0.0

    mcq = vector(
        "/v1/chat/completions",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Which is largest?\nA. 2\nB. 3\nC. 5"},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                    ],
                }
            ]
        },
    )
    assert mcq["multiple_choice"] == 1.0 and mcq["images"] == 1.0 and mcq["endpoint_openai"] == 1.0
    assert vector("/api/generate", {"prompt": "Solve the equation 3 + 4 = x"})["math"] >= 2.0


def test_only_the_ends_of_a_long_conversation_are_scanned() -> None:
    filler = "plain words " * 20_000
    middle = {"messages": [{"role": "user", "content": filler + "```python\nimport os\n" + filler}]}
    end = {"messages": [{"role": "user", "content": filler + filler + "```python\nimport os\n"}]}
    assert vector("/api/chat", middle)["lang_python"] == 0.0
    assert vector("/api/chat", end)["lang_python"] == 1.0
    # Sizes still count the whole conversation.
    assert vector("/api/chat", middle)["log_chars"] > 12


def test_model_details_parse_like_ollama_writes_them() -> None:
    assert F.params_from("7.6B") == 7.6
    assert F.params_from("8x7B") == 56.0
    assert abs(F.params_from("137M") - 0.137) < 1e-9
    assert F.quant_bits_from("Q4_K_M") == 4.0 and F.quant_bits_from("F16") == 16.0
    assert F.family_of("mixtral:8x7b", "llama") == "llama"
    assert F.family_of("mixtral:8x7b") == "mixtral" and F.family_of("foo:1b") == "other"


@pytest.mark.parametrize(
    ("size", "billions"),
    [
        # format.HumanNumber writes a count below a thousand bare: a raw count, which a
        # server that does not format it (or gives the integer itself) also sends.
        ("8030261248", 8.030261248),
        ("137000000", 0.137),
        ("500K", 0.0005),
        ("1.0T", 1000.0),
        # A bare number that small is no model's count: unknown, so the name and the
        # catalogue decide the size, not a model taken for 8 billion of billions.
        ("8", 0.0),
        ("", 0.0),
        ("unknown", 0.0),
        # Nor is a count no model has, however it is written (a stand-in server's made-up
        # number): taken for the largest or the smallest model there is, it would be the
        # anchor `auto:best` keeps, or what `auto:fast` takes for the quickest.
        ("99999999999999999999B", 0.0),
        ("50000T", 0.0),
        ("0.000001B", 0.0),
        ("2K", 0.0),
    ],
)
def test_a_parameter_size_is_read_as_ollama_formats_counts(size: str, billions: float) -> None:
    assert F.params_from(size) == pytest.approx(billions)


@pytest.mark.parametrize(
    ("level", "bits"),
    [
        ("Q8_0", 8.0),
        ("IQ2_XS", 2.0),
        ("BF16", 16.0),
        ("F32", 32.0),
        ("FP8", 8.0),
        ("F8_E4M3", 8.0),
        ("MXFP4", 4.0),
        ("", 4.0),
    ],
)
def test_a_quantization_level_gives_its_bits_per_weight(level: str, bits: float) -> None:
    assert F.quant_bits_from(level) == bits


def test_many_messages_are_bounded_too() -> None:
    many = {"messages": [{"role": "user", "content": f"message {i}"} for i in range(50_000)]}
    values = vector("/api/chat", many)
    assert values["messages"] == 50_000 and values["user_turns"] == 50_000
    scan = F._Scan()
    for i in range(50_000):
        scan.add(f"message {i}")
    sample = scan.sample()
    assert len(sample) <= 2 * F.SCAN_CHARS + 1
    assert sample.startswith("message 0\n") and sample.endswith("message 49999")


# Pinned values ------------------------------------------------------------------------
# The shipped artifact was trained on these exact numbers: a faster implementation must
# reproduce them bit for bit. `tests/features_pinned.json` holds request_features for
# the cases below as computed by the implementation the artifact was trained with;
# regenerate it (`python -m tests.test_features`) only together with a SCHEMA_VERSION bump.

PINNED = Path(__file__).with_name("features_pinned.json")


def _text(seed: int, size: int) -> str:
    """Deterministic mixed text (only `Random.random` is stable across Python versions):
    words, code, digits, punctuation, newlines, and non-ASCII whose case mapping changes
    the length ("İ" lowers to two characters) or that str.split treats as whitespace."""
    rng = random.Random(seed)
    pieces = (
        "def", "import", "self", "function", "const", "fn", "impl", "select", "from", "sudo",
        "fix", "bug", "explain", "why", "refactor", "test", "write", "complete", "summarize",
        "translate", "solve", "equation", "sum", "Probability", "Traceback", "PYTHON", "Rust",
        "```python\n", "```js\n", "```sql\n", "```\n", "print(", "=> ", ": string", ":= ",
        "let mut ", "System.out", "#include", " + ", " - ", " * ", " / ", " = ", "^", "\\frac",
        "\\sqrt", "{", "}", "(", ")", ";", "=", "<", ">", "[", "]", "?", "42", "3.14", "7",
        "\n", "\n\n", "\t", "  ", "a) ", "(b) ", "c. ", "d: ", "e)", "x)", "\nA) ", "\nb. ",
        "İstanbul", "straße", "ΣΊΣΥΦΟΣ", "ǅ", "ﬁx", "日本語", "٣٤", "\u2003", "\u00a0", "\x1c",
        "\u0130", "é", "🙂", "\r\n", "don't", "e-mail", "x_y", "naïve", "CamelCase", "ALLCAPS",
    )  # fmt: skip
    out: list[str] = []
    length = 0
    while length < size:
        piece = pieces[int(rng.random() * len(pieces))]
        if rng.random() < 0.6:
            piece += " "
        out.append(piece)
        length += len(piece)
    return "".join(out)[:size]


def pinned_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Representative requests: every endpoint shape, every option type, the scan and
    hint window boundaries, long and many-message conversations, non-ASCII text."""
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "empty": ("/api/chat", {}),
        "no_messages": ("/api/chat", {"messages": []}),
        "not_a_list": ("/api/chat", {"messages": "hi", "prompt": 3, "options": [1]}),
        "odd_messages": (
            "/api/chat",
            {
                "messages": [
                    "hi",
                    None,
                    {"role": "user"},
                    {"role": "user", "content": None},
                    {"role": "assistant", "content": [1, {"text": "part"}, {"type": "text"}]},
                    {"content": "no role", "images": []},
                    {"role": "tool", "content": "tool out"},
                ],
                "options": {"temperature": True, "num_ctx": 0, "num_predict": -1},
                "think": False,
                "raw": 1,
            },
        ),
        "chat_code_tools": (
            "/api/chat",
            {
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {
                        "role": "user",
                        "content": "Fix this bug:\n```python\ndef f(x):\n  return x +\n```",
                    },
                ],
                "tools": [{"type": "function", "function": {"name": "f"}}] * 3,
                "options": {"temperature": 0.2, "num_ctx": 8192, "num_predict": 100},
                "think": "high",
            },
        ),
        "generate_fim": (
            "/api/generate",
            {
                "prompt": "def add(a, b):",
                "suffix": "    return c",
                "format": "json",
                "raw": True,
                "system": "You complete code.",
                "images": ["x"],
            },
        ),
        "openai_parts": (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "sys"}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Which is largest?\nA. 2\nB. 3\n(c) 5\nd: 7"},
                            {"type": "image_url", "image_url": {"url": "data:,"}},
                        ],
                    },
                ],
                "response_format": {"type": "json_object"},
                "temperature": 1,
                "max_tokens": 512,
            },
        ),
        "openai_schema": (
            "/v1/completions",
            {
                "prompt": "Solve the equation 3 + 4 = x and sum 2 * 5",
                "format": {"type": "object"},
                "options": {"num_ctx": 3000.5},
                "max_tokens": 7.5,
            },
        ),
        "embed_input": ("/api/embed", {"input": "translate this to French: hello", "suffix": ""}),
        "empty_format": (
            "/api/chat",
            {"messages": [{"role": "user", "content": ""}], "format": ""},
        ),
        "long_middle": (
            "/api/chat",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "plain words " * 20_000 + "```python\n"
                        "import os\n" + "plain words " * 20_000,
                    }
                ]
            },
        ),
        "long_end": (
            "/api/chat",
            {
                "messages": [
                    {"role": "user", "content": "plain words " * 40_000 + "```python\nimport os\n"}
                ]
            },
        ),
        "many_messages": (
            "/api/chat",
            {
                "messages": [
                    {"role": "user" if i % 2 else "assistant", "content": f"message {i}?"}
                    for i in range(5_000)
                ]
            },
        ),
    }
    for size in (2048, 20480):
        body = {
            "messages": [
                {"role": "system", "content": "You are a careful senior engineer."},
                {
                    "role": "user",
                    "content": (
                        "Refactor this function and explain the bug:\n```python\ndef f(x):\n"
                        "    return x + 1\n```\n"
                        + "The quick brown fox jumps over the lazy dog. "
                        * (size // 45 + 1)
                    )[:size],
                },
            ]
        }
        cases[f"bench_{size}"] = ("/api/chat", body)
    # Sizes around every boundary: 2 * HINT_CHARS, SCAN_CHARS, 2 * SCAN_CHARS, 512.
    sizes = (0, 1, 100, 511, 512, 513, 1000, 1535, 1536, 1537, 2047, 2048, 2049, 3000)
    for i, size in enumerate((*sizes, 4095, 4096, 4097, 6000, 9000)):
        cases[f"text_{size}"] = ("/api/generate", {"prompt": _text(i, size)})
        cases[f"chat_{size}"] = (
            "/api/chat",
            {
                "messages": [
                    {"role": "system", "content": _text(100 + i, size // 3)},
                    {"role": "user", "content": _text(200 + i, size)},
                    {"role": "assistant", "content": _text(300 + i, size // 2)},
                    {"role": "user", "content": _text(400 + i, size)},
                ],
                "options": {"temperature": 0.7},
            },
        )
    # Languages named as everyday words: "in <name>" in a request for code, and not in
    # one that asks for none.
    for i, text in enumerate(
        (
            "Write a quicksort in Go",
            "In C, implement strlen.",
            "fix this:\nin\u2003swift it crashes",
            "The reaction results in C.",
            "write it in gold",
            "write the domain go-live plan; fix the plugin c module",
            "Write a Ruby method that parses a CSV line",
            "fix this C\tfunction, then the ago code",
            "Build a React component and its CSS",
            "What is HTML? How did they react?",
            "Build a web server in C# or in Kotlin",
            # A function a maths word names, also after a non-ASCII space, and one asked for.
            "Write the exponential\xa0function of x",
            "Write the quadratic function, then a function to plot it",
            # A function a request governs, and one it does not.
            "Write\u2003a Python\xa0function; test renal function",
            "Thyroid function tests? fix: the error function",
            # A grid of quotes, and docstrings beside one.
            MAZE,
            '""""\n"a"a\n"""x\n\t"""\n"""',
        )
    ):
        cases[f"phrase_{i}"] = ("/api/generate", {"prompt": text})
    # Word boundaries: which characters end a word (whitespace as str.split knows it,
    # ASCII punctuation and digits) and which do not; options at the thresholds.
    for i, char in enumerate("\x1c\x1d\x1e\x1f\x0b\x0c\r\x85\xa0\u2003\u2028\x00\x7f_'-é9"):
        text = f"fn{char}please{char}fix{char}sum{char}why"
        cases[f"boundary_{i}"] = ("/api/generate", {"prompt": text, "system": char + "def"})
    # Each symbol alone (no hint word beside it), fences also after more backticks.
    symbols = [s for _, symbols in F._LANGUAGE_HINTS.values() for s in symbols]
    for i, symbol in enumerate(symbols):
        cases[f"symbol_{i}"] = ("/api/generate", {"prompt": f"see {symbol.upper()} x\n"})
        cases[f"symbol_end_{i}"] = ("/api/generate", {"prompt": "`" + symbol})
    # Few long words: the 512-character ends of the last turn cut one.
    for i, length in enumerate((40, 45, 50, 64, 100, 170, 300)):
        words = [f"{chr(97 + j % 26)}{'x' * length}" for j in range(12)]
        cases[f"long_words_{i}"] = ("/api/generate", {"prompt": " ".join(words)})
    for i, symbol in enumerate(F._MATH_SYMBOLS):
        cases[f"math_{i}"] = ("/api/generate", {"prompt": symbol.strip() + " 2 " + symbol * 2})
        cases[f"math_alone_{i}"] = ("/api/generate", {"prompt": symbol.strip()})
    # A lone surrogate (a str can hold one) is part of its word, away from the hashed ends.
    text = "word " * 120 + "fix\ud800 def\ud800 {\ud800}" + " word" * 300
    cases["surrogate"] = ("/api/chat", {"messages": [{"role": "user", "content": text}]})
    for i, text in enumerate(("a) x\ne) y", "(d: x\n  (e. y", "e) x\nf) y", "b: x\nc.y")):
        cases[f"options_{i}"] = ("/api/chat", {"messages": [{"role": "user", "content": text}]})
    for i in range(12):
        roles = ("user", "assistant", "system")
        turns = [
            {"role": roles[j % 3], "content": _text(1000 * i + j, 50 + 700 * j)}
            for j in range(i + 1)
        ]
        path = "/api/chat" if i % 2 else "/v1/chat/completions"
        cases[f"conversation_{i}"] = (path, {"messages": turns})
    return cases


def test_request_features_are_pinned() -> None:
    expected = json.loads(PINNED.read_text())
    cases = pinned_cases()
    assert sorted(expected) == sorted(cases)
    for name, (path, body) in cases.items():
        values = F.request_features(path, body)
        assert all(type(v) is float for v in values), name
        # Bit for bit: JSON keeps a float's shortest repr, which round-trips exactly.
        assert values == expected[name], name


# The definition as first written (plain str operations), the oracle for the fast reading
# in selector_model.features on arbitrary text ---------------------------------------

_REF_TO_SPACE = str.maketrans({c: " " for c in string.punctuation + string.digits + "\n\t"})


def _reference(path: str, body: Mapping[str, Any]) -> list[float]:
    scan = F._Scan()
    last_user = ""
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            text = request_body.turn(message)[1]
            if message.get("role") == "user":
                last_user = text
            scan.add(text)
    for key in ("system", "prompt", "input", "suffix"):
        value = body.get(key)
        if isinstance(value, str):
            last_user = value if key in ("prompt", "input") else last_user
            scan.add(value)
    sample = scan.sample()
    last = last_user[:2048] + last_user[-2048:] if len(last_user) > 4096 else last_user

    def window(text: str) -> str:
        return text if len(text) <= 1536 else text[:768] + "\n" + text[-768:]

    def choices(text: str) -> int:
        count = 0
        for line in text.split("\n"):
            line = line.lstrip(" (")
            if len(line) > 2 and line[0] in "abcde" and line[1] in ").:" and line[2] == " ":
                count += 1
        return count

    low_sample, low_last = window(sample).lower(), window(last).lower()
    sample_words = set(low_sample.translate(_REF_TO_SPACE).split())
    last_words = set(low_last.translate(_REF_TO_SPACE).split())
    head_words = last[:512].lower().translate(_REF_TO_SPACE).split()[:12]
    tail_words = last[-512:].lower().translate(_REF_TO_SPACE).split()[-12:]
    hashes = {
        part: [zlib.crc32(word.encode()) % 16 for word in words]
        for part, words in (("head", head_words), ("tail", tail_words))
    }
    names = F.REQUEST_FEATURES
    # The features this does not define again are taken from the fast reading.
    out = dict(zip(names, F.request_features(path, body), strict=True))
    drop_code = str.maketrans("", "", "{}();=<>[]")
    out["code_char_ratio"] = (
        (len(sample) - len(sample.translate(drop_code))) / len(sample) if sample else 0.0
    )
    out["numbers"] = float(len(last) - len(last.translate(str.maketrans("", "", "0123456789"))))
    lines = low_sample.split("\n")

    def grid(line: str) -> bool:  # whitespace-free, of at least three characters
        return len(line) >= 3 and "".join(line.split()) == line

    # A docstring's quotes count outside a grid's rows: a row and a neighbouring row
    # of at most four characters between them.
    docstring = any(
        '"""' in line
        and not (
            grid(line)
            and any(
                grid(other) and len(set(line) | set(other)) <= 4
                for other in lines[max(i - 1, 0) : i] + lines[i + 1 : i + 2]
            )
        )
        for i, line in enumerate(lines)
    )
    for name in F.LANGUAGES:
        words, symbols = F._LANGUAGE_HINTS[name]
        hinted = not sample_words.isdisjoint(words) or any(
            s in low_sample if s != '"""' else docstring for s in symbols
        )
        out[f"lang_{name}"] = 1.0 if hinted else 0.0
    asks_code = any(not last_words.isdisjoint(F._TASK_HINTS[t]) for t in F._PHRASE_TASKS)
    sequence = low_sample.translate(_REF_TO_SPACE).split()
    # "function" asks for code where a verb that asks for one is among the five words of
    # its sentence (to a line's end, or ".", "?" or "!" before whitespace) before one of
    # its occurrences, no maths word nor "to" is the word before, and no one-character
    # word after whitespace the word after.
    tokens = list(re.finditer(r"\S+", low_sample.translate(_REF_TO_SPACE)))
    starts = [0, *(end.end() for end in re.finditer(r"\n|[.?!]\s", low_sample))]
    program_function = False
    for i, token in enumerate(tokens):
        if token.group() != "function":
            continue
        start = max(at for at in starts if at <= token.start())
        before = [t.group() for t in tokens[:i] if t.start() >= start][-5:]
        named = (
            i + 1 < len(tokens)
            and low_sample[token.end()].isspace()
            and len(tokens[i + 1].group()) == 1
        )
        program_function |= (
            bool(before)
            and before[-1] not in F._MATH_FUNCTION_WORDS | {"to"}
            and not F._FUNCTION_VERBS.isdisjoint(before)
            and not named
        )
    if program_function:
        out["lang_javascript"] = 1.0
    for word in sample_words & F._ASKED_WORDS.keys() - {"function"} if asks_code else ():
        out[f"lang_{F._ASKED_WORDS[word]}"] = 1.0
    for word, following in itertools.pairwise(sequence):
        if asks_code and word == "in" and following in F._PHRASE_LANGUAGES:
            out[f"lang_{F._PHRASE_LANGUAGES[following]}"] = 1.0
        named = word in F._PHRASE_LANGUAGES and word != "c"  # "C. method" is an option
        if asks_code and named and following in F._PHRASE_NOUNS:
            out[f"lang_{F._PHRASE_LANGUAGES[word]}"] = 1.0
    for name in F.TASKS:
        out[f"task_{name}"] = 0.0 if last_words.isdisjoint(F._TASK_HINTS[name]) else 1.0
    out["multiple_choice"] = 1.0 if choices(low_last) >= 2 else 0.0
    maths = len(last_words & F._MATH_WORDS) + sum(low_last.count(s) for s in F._MATH_SYMBOLS)
    shared = len(last_words & F._MATH_WORDS_WITH_NUMBERS)
    if maths or any(c in "0123456789" for c in low_last):
        maths += shared
    out["math"] = float(maths)
    for part, buckets in hashes.items():
        for i in range(16):
            out[f"{part}_hash_{i}"] = 0.0
        for bucket in buckets:
            out[f"{part}_hash_{bucket}"] += 1.0
    assert math.log1p(scan.total) == out["log_chars"]
    return [out[name] for name in names]


_PIECES = st.sampled_from(
    [
        *("def", "import", "self", "Function", "SELECT", "from", "fix", "Bug", "why", "test"),
        *("tests", "sum", "solve", "write", "tldr", "complete", "golang", "fn", "rust"),
        *("```python\n", "```js", "```C++", "```", "print(", "=> ", ": string", ":= "),
        *("package main", "let mut ", "System.out", "#include", " + ", " - ", " = ", "^"),
        *("\\frac", "\\sqrt", "{", "}", "(", ";", "?", "7", "42", "\n", "\t", " ", "  ", "\r"),
        *("\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000", "\x00", "\x7f"),
        *("in", " in ", "in\xa0", "main", "go", " code", "method ", "ago", "magic", "c"),
        *("Swift", " in Go", "in C", " Rust in C#", "c++", "HTML", "react", " hook", "Vue"),
        *("a) ", "(b) ", "\nc. ", "\n (d: ", "e)", "İ", "ẞ", "Σ", "ΣΑΣ.", "ǅ", "ﬁx", "K", "\u0307"),
        *("日本", "🙂", "é", "e\u0301", "٣", "_", "x_y", "don't", "\ud800"),
        *("Exponential", " linear ", "density", "function ", " function", "functions"),
        *("Write a ", "fix", "renal", '"""', '""""\n', '"a"\n', "a\n", "\n"),
    ]
)
_BOUNDARIES = st.sampled_from(
    list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2003\u2028\x00\x7f_'-.9(éK")
)
_WORDS = st.sampled_from(
    sorted(
        {w for words, _ in F._LANGUAGE_HINTS.values() for w in words}
        | {w for words in F._TASK_HINTS.values() for w in words}
        | F._MATH_WORDS
        | F._MATH_WORDS_WITH_NUMBERS
    )
)
_BOUNDED = st.builds(lambda a, w, b: a + w + b, _BOUNDARIES, _WORDS, _BOUNDARIES)
_OPTIONS = st.builds(
    lambda pad, letter, mark, sep: "\n" + pad + letter + mark + sep,
    st.sampled_from(["", " ", "(", " ( "]),
    st.sampled_from(list("abcdefA")),
    st.sampled_from(list(").:,")),
    st.sampled_from([" ", "", "\t", "x"]),
)
_SYMBOLS = st.sampled_from(
    [s for _, symbols in F._LANGUAGE_HINTS.values() for s in symbols]
    + [*F._MATH_SYMBOLS, "`", "``", "\\", "=>", ": "]
)
_TEXTS = st.one_of(
    st.lists(st.one_of(_BOUNDED, _OPTIONS, st.sampled_from(["plain ", "x "])), max_size=8).map(
        "".join
    ),
    st.lists(st.one_of(_SYMBOLS, _BOUNDARIES), max_size=6).map("".join),
    st.lists(st.text("abcXY", min_size=20, max_size=150), max_size=14).map(" ".join),
    st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=120).map("".join),
    st.tuples(st.lists(_PIECES, max_size=30).map("".join), st.integers(1, 300)).map(
        lambda t: t[0] * t[1]
    ),
)
_BODIES = st.one_of(
    st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "system", "assistant"]), "content": _TEXTS}
                ),
                max_size=5,
            )
        }
    ),
    st.fixed_dictionaries(
        {"prompt": _TEXTS}, optional={"system": _TEXTS, "suffix": _TEXTS, "input": _TEXTS}
    ),
)


def _reads_as_the_definition(body: dict[str, Any]) -> None:
    """The fast reading of `body` gives the definition's features, or both refuse it."""
    try:
        expected = _reference("/api/chat", body)
    except UnicodeEncodeError:  # a lone surrogate among the hashed words: both refuse it
        try:
            F.request_features("/api/chat", body)
        except UnicodeEncodeError:
            return
        raise AssertionError("the definition refused what the fast reading took") from None
    assert F.request_features("/api/chat", body) == expected


@settings(max_examples=400, deadline=None)
@given(body=_BODIES)
def test_fast_reading_matches_the_definition(body: dict[str, Any]) -> None:
    _reads_as_the_definition(body)


# A conversation that ends with a long last user turn: both hint windows are cut and end
# with the same text, which the fast reading reads once for both.
_PIECE_RUNS = st.lists(st.one_of(_BOUNDED, _PIECES, _SYMBOLS, _BOUNDARIES), max_size=200).map(
    "".join
)
# Hints at its start and its end, prose between: where a window is cut falls in either.
_LONG_TURNS = st.builds(
    lambda start, between, end: start + " x" * between + end,
    _PIECE_RUNS,
    st.integers(300, 1300),
    _PIECE_RUNS,
)
_ENDING_ALIKE = st.builds(
    lambda before, last: {"messages": [*before, {"role": "user", "content": last}]},
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant"]), "content": _TEXTS}
        ),
        min_size=1,
        max_size=3,
    ),
    _LONG_TURNS,
)


@settings(max_examples=300, deadline=None)
@given(body=_ENDING_ALIKE)
def test_windows_that_end_alike_read_as_the_definition(body: dict[str, Any]) -> None:
    _reads_as_the_definition(body)


# A system prompt, a last user turn, sometimes a turn after it: the scan's join falls
# inside the last turn or before it, the sample's window holds the turn's start or not,
# and where the last turn would stand in the sample is right or wrong; the fast reading
# reads the text both hint windows hold once, and must read as the definition.
_SYSTEM_THEN_LAST = st.builds(
    lambda system, between, last, after: {
        "messages": [
            {"role": "system", "content": system + " x" * between},
            {"role": "user", "content": last},
            *([{"role": "assistant", "content": after}] if after is not None else []),
        ]
    },
    _PIECE_RUNS,
    st.integers(0, 1100),
    st.one_of(
        _LONG_TURNS, _PIECE_RUNS, st.builds(lambda t, n: t * n, _PIECE_RUNS, st.integers(1, 40))
    ),
    st.one_of(st.none(), _TEXTS),
)


@settings(max_examples=300, deadline=None)
@given(body=_SYSTEM_THEN_LAST)
def test_windows_that_share_the_last_turn_read_as_the_definition(body: dict[str, Any]) -> None:
    _reads_as_the_definition(body)


def test_the_text_both_hint_windows_hold_is_read_once() -> None:
    """A system prompt and a 2 KB last turn: the scan joins its head and tail inside the
    turn, the sample's window holds the turn's start after the system prompt and its
    end but for the join; all that is read once, for both windows."""
    from selector_model.features import hints

    last = "Fix this:\n```python\ndef f(x):\n    return x + 1\n```\n" + "the lazy dog " * 160
    last = last[:2048]
    body = {
        "messages": [
            {"role": "system", "content": "You are a careful senior engineer."},
            {"role": "user", "content": last},
        ]
    }
    scan = F._Scan()
    scan.add(body["messages"][0]["content"])
    last_at = scan.next_at()
    scan.add(last)
    sample, join = scan.sample(), scan.join()
    assert sample[last_at:join] == last[: join - last_at]  # the turn's start, in the head
    assert sample[join] == "\n" and join < len(sample) - 1  # the join is inside the turn
    window, window_last = hints._window(sample), hints._window(last)
    shared, sample_rest, last_rest = hints._cut(
        spaced(window.lower()),
        spaced(window_last.lower()),
        hints._aligned(sample, last, join, last_at),
    )
    assert len(shared) > 0.9 * len(window_last)
    assert len(sample_rest) < 0.1 * len(window) and len(last_rest) < 0.1 * len(window_last)
    assert F.request_features("/api/chat", body) == _reference("/api/chat", body)


def test_a_word_across_where_a_window_ends_alike_is_one_word() -> None:
    # The last turn (999 characters, its window whole) ends as the conversation's
    # window does, but 768 characters from its end is "prefix", not a separator: "fix"
    # there is no word of it.
    last = "plain " * 38 + "pre" + "fix" + " plain" * 127 + " ok"
    assert last[-768 - 3 : -768 + 3] == "prefix"
    body = {
        "messages": [{"role": "user", "content": "words " * 400}, {"role": "user", "content": last}]
    }
    got = dict(zip(F.REQUEST_FEATURES, F.request_features("/api/chat", body), strict=True))
    assert got["task_fix"] == 0.0
    assert F.request_features("/api/chat", body) == _reference("/api/chat", body)


if __name__ == "__main__":
    PINNED.write_text(
        json.dumps(
            {n: F.request_features(p, b) for n, (p, b) in pinned_cases().items()},
            indent=None,
            separators=(",", ":"),
        )
        + "\n"
    )
