"""Client header values made safe to keep: ids, names and agents end up in response
headers, JSON logs, usage events and database rows, and each of those refuses what
HTTP lets through.

aiohttp decodes header bytes as UTF-8 with `surrogateescape`: a byte that is not
UTF-8 becomes a lone surrogate, which no encoder (UTF-8, Latin-1, orjson) accepts.
"""

from __future__ import annotations

import re

# The longest client-chosen request id kept: a UUID, a trace id, a ULID with a
# prefix fit many times over.
MAX_REQUEST_ID = 128
# The longest free-text value kept in a usage event (user agent, user name).
MAX_TEXT = 512
# The longest model name Ollama accepts (types/model/name.go, isValidLen: a host of 350
# characters, a namespace, a model and a tag of 80 each, and their separators).
MAX_MODEL_NAME = 350 + 1 + 80 + 1 + 80 + 1 + 80
# Printable ASCII without space: a token every log, header and database takes as is.
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")
_MODEL_NAME = re.compile(rf"[\x21-\x7e]{{1,{MAX_MODEL_NAME}}}")
# C0 controls, DEL and C1 controls: a log line or a terminal must not receive them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def request_id(value: str | None) -> str | None:
    """The client's request id if it is a sane token, else None (the proxy's own is
    used instead)."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return None


def model_name(value: str) -> str | None:
    """A model name fit to repeat in a response header: printable ASCII without space
    and no longer than any name Ollama accepts, else None. A name with a line break
    would write headers of the client's choosing into the answer; one of megabytes, a
    head no client reads; neither is a name any backend serves."""
    return value if _MODEL_NAME.fullmatch(value) else None


def text(value: str | None, limit: int = MAX_TEXT) -> str | None:
    """`value` as valid text: undecodable bytes become U+FFFD, control characters a
    space, at most `limit` characters."""
    if value is None:
        return None
    value = value[:limit]
    if value.isascii() and value.isprintable():
        return value  # the usual agent or model name: no control character to replace
    return _CONTROL.sub(" ", valid(value))


def valid(value: str) -> str:
    """`value` with undecodable bytes as U+FFFD: encodable as UTF-8, as JSON requires."""
    if value.isascii():
        return value
    # Lone surrogates (bytes aiohttp could not decode) back to bytes, then decoded
    # with replacement: what the client sent, readable, and valid UTF-8.
    return utf8(value).decode("utf-8", "replace")


def utf8(value: str) -> bytes:
    """The bytes the client sent for a header value: its undecodable bytes as they
    came, any other surrogate (never from the parser) as `?`."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")
