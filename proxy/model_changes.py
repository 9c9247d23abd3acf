"""What a model-store request changes on the backend that runs it, and when its answer
says it did; which model a create builds on (`create_base`), for where it runs.

The background refresh learns of a pulled, created, copied or deleted model only at
its next round, seconds later, while a client sends its next request (`ollama pull x &&
ollama run x`, `ollama cp a b && ollama show b`) as soon as it has read the answer. So
the change is applied to what the proxy knows of that backend from the answer itself,
before the bytes that say it succeeded go on to the client (`ChangeWatch`, which the
relay shows each piece of the answer first): no request to the backend, nothing that
can be slow or fail on the client's answer. The next refresh lists what the backend
lists, the model's details with it.

When each says it succeeded (server/routes.go, server/create.go): copy and delete with
their 200 (an empty body); pull and create answer 200 before they know, and end with
the line `{"status":"success"}` (the whole body with `stream: false`), an error line
otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import orjson

from proxy.backends import CLOUD, BackendPool, BackendState, normalize_model, source
from proxy.http11 import Dechunker, ResponseHead

log = logging.getLogger("autoroute.model_changes")

# Enough of an answer's end to hold its last line when that is a success line.
_TAIL: Final = 256


@dataclass(frozen=True, slots=True)
class ModelChange:
    """A model the backend lists once the request succeeded (`added`), or no longer
    lists (`removed`), as `normalize_model` names it."""

    added: str = ""
    removed: str = ""
    # Whether success is the answer's last line (pull, create) rather than its 200.
    by_last_line: bool = False


def named(doc: Any, *fields: str) -> str:
    """The first of `fields` of a body's document (as `go_json` reads it) that holds a
    non-empty string (Go's `cmp.Or(r.Model, r.Name)`), else ""."""
    if not isinstance(doc, dict):
        return ""
    for name in fields:
        value = doc.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _pulled(name: str) -> str:
    """The model a pull or a delete of `name` acts on (modelref.NormalizePullName): a
    cloud model by its legacy name, `gpt-oss:20b:cloud` as `gpt-oss:20b-cloud`, `kimi:cloud`
    as itself; `:local` left out."""
    base, asked = source(name.strip())
    if asked == CLOUD:
        tagged = base.rfind(":") > base.rfind("/")
        base += "-cloud" if tagged else ":cloud"
    return normalize_model(base)


def change_of(method: str, path: str, doc: Any) -> ModelChange | None:
    """What the request (its body as Ollama reads it, `doc`) changes when it succeeds;
    None for a request that changes no model list (push, a method Ollama does not
    serve on the path, a body that names no model)."""
    if not isinstance(doc, dict):
        return None
    change = None
    if method == "POST" and path == "/api/pull":
        name = named(doc, "model", "name")
        change = ModelChange(added=_pulled(name), by_last_line=True) if name else None
    elif method == "POST" and path == "/api/create":
        name = named(doc, "model", "name")
        change = ModelChange(added=normalize_model(name), by_last_line=True) if name else None
    elif method == "POST" and path == "/api/copy":
        name = named(doc, "destination")
        change = ModelChange(added=normalize_model(name)) if name else None
    elif method == "DELETE" and path == "/api/delete":
        name = named(doc, "model", "name")
        change = ModelChange(removed=_pulled(name)) if name else None
    return change


def create_base(doc: Any) -> str | None:
    """The model a create request builds on when only a backend that has it should run
    it: its `from`, a model name (Ollama's client turns a Modelfile's `FROM <path>`
    into `files`), when the request names no blob (`files`, `adapters`,
    `draft_files`), since blobs are uploaded to the first backend (`handlers.blobs`)."""
    if not isinstance(doc, dict):
        return None
    base = named(doc, "from")
    if not base or any(doc.get(blobs) for blobs in ("files", "adapters", "draft_files")):
        return None
    return base


class ChangeWatch:
    """Reads one backend's answer to a model-store request as it goes by, and applies
    `change` to what the proxy knows of that backend the moment the answer says it
    succeeded: before the client gets the bytes that say so (`proxy.relay.WatchedLeg`
    shows it each piece first). Never raises: the client's answer does not depend on
    it."""

    def __init__(self, backends: BackendPool, state: BackendState, change: ModelChange) -> None:
        self.backends = backends
        self.state = state
        self.change = change
        self._done = False  # applied, or the answer said no
        self._dechunker: Dechunker | None = None
        self._tail = b""  # the end of the body so far, without framing
        self._cut = False  # bytes before `_tail` were dropped

    def on_head(self, head: ResponseHead) -> None:
        """The answer's head, as it arrives (its body framed as `head` says)."""
        self._dechunker = Dechunker() if head.chunked else None
        self._status(head.status)

    def on_body(self, data: bytes) -> None:
        """A piece of the answer's body as the backend sent it, framing included."""
        if self._done:
            return
        try:
            self._read(data if self._dechunker is None else self._dechunker.feed(data))
        except Exception as exc:  # a bug here must not touch the client's answer
            self._done = True
            log.exception("reading the answer of %s failed: %r", self.state.label, exc)

    def answered(self, status: int, body: bytes) -> None:
        """A whole answer at once, its body without framing (a replica's)."""
        self._status(status)
        if not self._done:
            self._read(body)

    def _status(self, status: int) -> None:
        if status != 200:
            self._done = True
        elif not self.change.by_last_line:
            self._apply()

    def _read(self, text: bytes) -> None:
        tail = self._tail + text
        if len(tail) > _TAIL:
            tail, self._cut = tail[-_TAIL:], True
        self._tail = tail
        if self._ends_in_success():
            self._apply()

    def _ends_in_success(self) -> bool:
        """Whether the body so far ends with the object `{"status": "success"}` on a
        line of its own: the last line of a stream (with its newline or not yet), or a
        whole answer."""
        tail = self._tail.rstrip()
        if not tail.endswith(b"}") or b"success" not in tail:
            return False
        start = tail.rfind(b"\n") + 1
        if start == 0 and self._cut:
            return False  # the line began before the bytes kept
        try:
            doc = orjson.loads(tail[start:])
        except orjson.JSONDecodeError:
            return False  # not a whole line yet, or not JSON
        return isinstance(doc, dict) and doc.get("status") == "success"

    def _apply(self) -> None:
        self._done = True
        self.backends.changed(self.state, self.change.added, self.change.removed)
