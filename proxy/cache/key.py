"""Which requests are cacheable, and the key their answer is kept under.

A request is cacheable when its answer is determined by its input: temperature 0 or a
fixed seed (`fixed_seed`: not one a runner draws a random seed for), no tools (a tool
call's answer depends on what the tool returns next), text asked for (not a model
loaded or unloaded), and no `Cache-Control: no-cache` or `no-store` from the client.
Read from the body as the backend reads it (`go_json`), after `auto` decided: the key
names the model served as the backend is sent it (the answer names it so), and the
digest of the weights the backends list under its name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy.auth import KEY_REQUEST
from proxy.go_requests import option_int
from proxy.go_types import INT64_END
from proxy.header_values import utf8
from proxy.keep_alive import unloads

CACHEABLE_PATHS = frozenset(
    {"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"}
)
# Ollama's own routes stream unless told not to; the OpenAI ones do not unless told to.
_STREAM_DEFAULT = {"/api/generate": True, "/api/chat": True}
# Not part of the key as written: `model` is the one served, `stream` as resolved
# (absent and its default are one entry), `keep_alive` (a number) does not change the
# answer.
_NOT_KEYED = frozenset({"model", "keep_alive", "stream"})
_BYPASS = ("no-cache", "no-store")
# The headers the backend, or a gateway in front of it, may tell clients apart by when
# the proxy checks no keys: each goes to it as sent (`Proxy-Authorization` does not).
_CREDENTIALS = ("Authorization", "X-Api-Key", "Cookie")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def deterministic(path: str, doc: Mapping[str, Any]) -> bool:
    """Temperature 0 or a fixed seed (`fixed_seed`), where this API carries them, and no tools."""
    if doc.get("tools") or doc.get("functions"):
        return False
    if path.startswith("/v1/"):
        sampling: Any = doc
    else:
        sampling = doc.get("options")
        if not isinstance(sampling, Mapping):
            return False
    temperature = sampling.get("temperature")
    seed = option_int(sampling.get("seed"))
    return (_is_number(temperature) and temperature == 0) or (seed is not None and fixed_seed(seed))


# llama.cpp's LLAMA_DEFAULT_SEED: the uint32 for which its sampler draws a random seed.
_LLAMA_DEFAULT_SEED = 0xFFFFFFFF


def fixed_seed(seed: int) -> bool:
    """Whether every runner of Ollama samples with `seed` as given, `option_int`'s reading
    of a request's seed (the OpenAI routes' int goes into the options too; one they
    refuse is a 400, never kept). Not a negative one, which the MLX runner draws a
    random seed for (x/mlxrunner: UseSeed is Seed >= 0), -1 (Ollama's own default,
    which clients may send as it is) among them; not one whose low 32 bits are
    LLAMA_DEFAULT_SEED, which llama-server, taking the int Ollama sends it as a uint32,
    draws a random one for (4294967295, and -1 again); not a double beyond an int64,
    the smallest int64 on amd64 and the largest (its low bits all ones) on arm64."""
    return 0 <= seed < INT64_END and seed % (1 << 32) != _LLAMA_DEFAULT_SEED


def bypassed(cache_control: str | None) -> bool:
    """The client asked for a fresh answer (`no-cache`) or for none kept (`no-store`)."""
    if not cache_control:
        return False
    directives = {d.strip().split("=", 1)[0].lower() for d in cache_control.split(",")}
    return any(d in directives for d in _BYPASS)


def generates(path: str, doc: Mapping[str, Any]) -> bool:
    """Whether the request asks for text: Ollama answers a chat without messages and a
    generate without a prompt by loading the model (unloading it with keep_alive 0:
    ChatHandler, GenerateHandler), an answer whose effect on the backend is the point,
    and a numeric keep_alive is no part of the key."""
    if path in ("/api/chat", "/v1/chat/completions"):
        return bool(doc.get("messages"))
    return bool(doc.get("prompt"))


def keeps_its_model(doc: Mapping[str, Any]) -> bool:
    """Whether the request leaves its model loaded once answered: with `keep_alive` 0
    the backend unloads it, an effect a kept answer would not have (one Ollama refuses
    is a 400, never kept, and stays in the key: `cache_key`)."""
    try:
        return not unloads(doc.get("keep_alive"))
    except ValueError:
        return True


def cacheable(path: str, doc: Any, cache_control: str | None) -> bool:
    return (
        path in CACHEABLE_PATHS
        and isinstance(doc, dict)
        and not bypassed(cache_control)
        and deterministic(path, doc)
        and generates(path, doc)
        and keeps_its_model(doc)
    )


def streams(path: str, doc: Mapping[str, Any]) -> bool:
    stream = doc.get("stream")
    return stream if isinstance(stream, bool) else _STREAM_DEFAULT.get(path, False)


def cache_key(path: str, doc: Mapping[str, Any], model: str, weights: str, scope: str) -> str:
    """SHA-256 of the canonical request (sorted keys: the same request written in
    another field order is the same entry), the weights the backends list under the
    model's name (`BackendPool.weights`: other weights under the same name, pulled,
    created or copied over it, are other entries) and the API key's scope."""
    body = {k: v for k, v in doc.items() if k not in _NOT_KEYED}
    # `stream` and `keep_alive` leave the key only in a form Ollama takes; any other
    # (a 400 from Ollama, never kept) stays in it, so it cannot read an answer kept for
    # a valid request. A keep_alive string stays too: its validity is Go's duration
    # syntax, and one client sends the same string each time.
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        body["stream"] = stream
    keep_alive = doc.get("keep_alive")
    if keep_alive is not None and not _is_number(keep_alive):
        body["keep_alive"] = keep_alive
    canonical = orjson.dumps(
        [scope, path, model, weights, streams(path, doc), body], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


def scope(request: web.Request) -> str:
    """Whose answers a request may read: the API key when access control knows it (by
    its SHA-256, not its name: a revoked key's name may go to someone else), else a
    hash of every credential the client sent (`_CREDENTIALS`: the backend may tell
    clients apart by any of them, and a hit skips its check), else "no key"."""
    key = request.get(KEY_REQUEST)
    if key is not None:
        return f"key:{key.sha256}"
    digest = hashlib.sha256()
    sent = False
    for name in _CREDENTIALS:
        for value in request.headers.getall(name, ()):
            raw = utf8(value)
            digest.update(b"%s:%d:%s" % (name.encode(), len(raw), raw))
            sent = True
    return f"credential:{digest.hexdigest()}" if sent else "no key"
