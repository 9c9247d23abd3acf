"""What a usage event keeps of a request's prompt: the texts a body holds
(`request_body.texts`) joined as one, its digest always, the text itself only where
prompts are logged (`usage.log_prompts`). Made where the body is read, in the worker
for a large one (`body_screen`), so that no text the event does not keep crosses to
the proxy's process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from selector_model import request_body


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a usage event keeps of the prompt (`kept`)."""

    sha256: str | None  # `digest`
    text: str | None  # only where prompts are logged (`usage.log_prompts`)


def joined(texts: list[str]) -> str | None:
    """The prompt's texts (`request_body.texts`) as one: joined by newlines."""
    return "\n".join(texts) if texts else None


def digest(prompt: str | None) -> str | None:
    return hashlib.sha256(prompt.encode()).hexdigest() if prompt else None


def kept(prompt: str | None, log_prompts: bool) -> Prompt:
    """What the usage event keeps of `prompt` (`joined`)."""
    return Prompt(digest(prompt), prompt if log_prompts else None)


def prompt_text(body: bytes | None) -> str | None:
    """The prompt's texts (`request_body.texts`) `joined`."""
    if not body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    return joined(list(request_body.texts(doc)))
