from __future__ import annotations

from selector_model import features as F


def vector(path: str, body: dict[str, object]) -> dict[str, float]:
    values = F.request_features(path, body)
    assert len(values) == len(F.REQUEST_FEATURES)
    return dict(zip(F.REQUEST_FEATURES, values, strict=True))


def test_rows_follow_the_named_schema() -> None:
    known = ["qwen2.5:7b", "llama3.1:8b"]
    candidates = [F.Candidate(name="qwen2.5:7b", family="qwen"), F.Candidate(name="new:1b")]
    rows = F.rows(F.request_features("/api/chat", {"messages": []}), candidates, known)
    names = F.feature_names(known)
    assert all(len(row) == len(names) for row in rows)
    assert rows[0][names.index("model=qwen2.5:7b")] == 1.0
    assert (
        rows[1][names.index("model=qwen2.5:7b")] == rows[1][names.index("model=llama3.1:8b")] == 0.0
    )
    assert rows[0][names.index("family_qwen")] == 1.0


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
