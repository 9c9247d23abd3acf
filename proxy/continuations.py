"""Which model wrote a conversation's last turn, so that `auto` continues it there.

An `/api/generate` answer ends with `context`, the conversation so far as the model's
own token ids; a client continues the conversation by sending it back with the next
prompt (the `ollama` library's `generate(context=...)`, older integrations, load
tests). Token ids mean nothing to another model's tokenizer: `auto` choosing another
model for the next turn would feed it noise. So the proxy remembers, for each answer
`auto` chose the model of, the end of the context it returned, and a request whose
context ends the same goes to that model while it can serve the request.

The end (`ENDING` token ids) stands for the whole: the ids of two conversations end
alike only where their last answers do, and then either model has its own context. The
memory is this proxy's, bounded, and each client's (within its API key) as chat
conversations are; a context it does not know (another client's, another replica's, one
older than it remembers, one from before a restart) is routed as any request.

A chat request (`/api/chat`, `/v1/chat/completions`, `/v1/messages`) carries the whole
conversation as text, which any model can continue; but the runner of the model that
answered the last turn holds its tokens, and Ollama evaluates only what follows the
part of a prompt its runner already holds. Another model evaluates the whole
conversation again, and loading it may evict the first. So the proxy remembers which
model answered each conversation `auto` chose the model of (a digest of its messages,
per client), and the next turn, whose messages before its last answer's turn are
those, credits that model the seconds that part of the prompt takes, while it is
loaded (`proxy.auto`): a profile that weighs time keeps a conversation where it is
unless another model is worth the wait, and `auto:best`, which weighs none, chooses as
for any request.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

K = TypeVar("K", str, int)
# How many token ids at the end of a context stand for it.
ENDING = 16
# Contexts remembered, least recently used dropped first.
REMEMBERED = 10_000
# The end of the context array in Ollama's final /api/generate chunk (json.Marshal of
# GenerateResponse: `context` then the metrics, `total_duration` first).
_CONTEXT_END = b'],"total_duration":'


def answered_ending(tail: bytes) -> str | None:
    """The ending of the context an answer's last bytes hold ("id,id,..."), if any: up
    to ENDING ids before the array's end, each after a `,` or the array's `[` (a tail
    that starts inside the array holds no partial number)."""
    at = tail.rfind(_CONTEXT_END)
    if at < 0:
        return None
    # Walked back piece by piece: a pattern that finds the ids from the front tries
    # every separator in the window, each with backtracking, on every answer.
    pieces = tail[max(0, at - 24 * ENDING) : at].rsplit(b",", ENDING)
    last = pieces[1:]
    if len(last) == ENDING and all(last) and b"".join(last).isdigit():
        return b",".join(last).decode()  # a context of ENDING ids or more: the usual
    ids: list[bytes] = []
    for i in range(len(pieces) - 1, -1, -1):
        piece = pieces[i]
        if i and piece.isdigit():  # after a comma
            ids.append(piece)
            if len(ids) == ENDING:
                break
            continue
        first = piece.rpartition(b"[")
        if first[1] and first[2].isdigit():  # the array's first id
            ids.append(first[2])
        break
    return b",".join(reversed(ids)).decode() if ids else None


def sent_ending(context: Any) -> str | None:
    """The ending of the context a request sends back, as `answered_ending` writes it."""
    if not isinstance(context, list) or not context:
        return None
    tail = context[-ENDING:]
    if not all(type(i) is int for i in tail):
        return None
    return ",".join(map(str, tail))


class _Writers(Generic[K]):
    """Which model wrote what `K` stands for, the least recently used dropped first
    beyond `size`."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self.size = size
        self._models: OrderedDict[K, str] = OrderedDict()

    def remember(self, key: K, model: str) -> None:
        models = self._models
        models[key] = model
        models.move_to_end(key)
        if len(models) > self.size:
            models.popitem(last=False)

    def _of(self, key: K | None) -> str | None:
        return None if key is None else self._models.get(key)


class Continuations(_Writers[str]):
    """By the ending of the context each answer returned (`answered_ending`), per client
    (`scope`, `proxy.auto.conversation_scope`), as chat conversations are: another key's
    client can make the same context itself (the same prompt at temperature 0 on a named
    model gives the same answer, so the same token ids), and must not learn from the
    routing that someone had that conversation through `auto`, nor with which model."""

    def remember_ending(self, scope: str, ending: str, model: str) -> None:
        """`model` wrote the context ending `ending` (`answered_ending`) for `scope`."""
        self.remember(_scoped(scope, ending), model)

    def model_of(self, scope: str, context: Any) -> str | None:
        """The model that wrote `context` (a request's `context` field) for `scope`, if
        remembered."""
        ending = sent_ending(context)
        return None if ending is None else self._of(_scoped(scope, ending))


def _scoped(scope: str, ending: str) -> str:
    # An ending holds digits and commas only: the first "@" ends it, whatever the scope.
    return f"{ending}@{scope}"


# The chat routes whose requests carry the whole conversation as `messages`, an
# answer's turn in the role "assistant".
CHAT_PATHS = frozenset({"/api/chat", "/v1/chat/completions", "/v1/messages"})


@dataclass(frozen=True, slots=True)
class Conversation:
    """A chat request's conversation as `Conversations` keys it: `whole`, the digest of
    its messages (an answer to it continues it); `before`, that of the messages before
    its last answer's turn (the earlier request that answer continued), None with no
    such turn; `share`, the part of the messages' bytes before that turn."""

    whole: int
    before: int | None
    share: float


# A message written longer than this is digested by BLAKE2b, keyed per process as
# Python's hash is, which lets go of the GIL as it reads: Python's hash of bytes holds
# it, milliseconds per megabyte (a picture on a message) in which the event loop
# waits, where a large body's conversation is read in a reader thread. A shorter one
# by Python's hash, quicker on the many short messages of editors' conversations.
_HASHED_BYTES = 64 * 1024
_KEY = secrets.token_bytes(16)


def _digest(data: bytes) -> int:
    if len(data) <= _HASHED_BYTES:
        return hash(data)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=_KEY).digest())


def conversation(scope: str, path: str, messages: Any) -> Conversation | None:
    """The `Conversation` of a chat request's `messages` from client `scope` on `path`
    (one client's conversations are never another's), or None where they are not a
    list of objects or do not serialize (a number beyond 64 bits, nesting deeper than
    JSON serializers take).

    The digest chains Python's hash of each message's JSON (`_digest`: BLAKE2b's of a
    long one): keyed per process (as this memory is), unpredictable to clients, and
    several times quicker than a cryptographic digest on the long conversations of
    editors, on `auto`'s hot path."""
    if path not in CHAT_PATHS or not isinstance(messages, list) or not messages:
        return None
    digest = hash((scope, path))
    before: int | None = None
    total = at = 0
    try:
        for message in messages:
            if not isinstance(message, dict):
                return None
            if message.get("role") == "assistant":
                before, at = digest, total
            data = orjson.dumps(message)
            digest = hash((digest, len(data), _digest(data)))
            total += len(data)
    except (orjson.JSONEncodeError, TypeError):
        return None
    return Conversation(digest, before, at / total if total else 0.0)


class Conversations(_Writers[int]):
    """Which model answered each chat conversation `auto` chose the model of, by its
    `Conversation.whole`, so that the next turn can credit that model the prompt its
    runner holds (`proxy.auto`)."""

    def model_of(self, talk: Conversation) -> str | None:
        """The model that answered the turn `talk` continues, if remembered."""
        return self._of(talk.before)
