"""Model-store and housekeeping routes: tags, show, ps, pull/push/create/copy/delete,
blobs, version/status, and what a local, signed-out Ollama says on the account routes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
from typing import Any

from aiohttp import web

from proxy.backends import CLOUD, INVALID_NAME, not_found_message, valid_name
from proxy.errors import gin_not_found
from proxy.go_requests import SHOW_FIELDS
from proxy.multipart_form import go_quote
from proxy.protocol import COPILOT_CHAT_USER_AGENT_PREFIX, NDJSON, TEXT, go_time

from .catalog import REGISTRY, ModelSpec, normalize_name
from .engine import ClientGone, wait_forever
from .inference import Refusal, cloud_out_of_reach, parsed_ref, read_body
from .native import LazyStream
from .state import EmulatorState, state_of
from .wire import JSON_BARE, dumps, empty_ok, error, gin_json

_DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_DEFAULT_NUM_CTX = 4096  # what /api/ps reports as context_length without num_ctx
# api.PullRequest and api.PushRequest: the same fields.
_REGISTRY_FIELDS = {
    "model": "string",
    "insecure": "bool",
    "username": "string",
    "password": "string",
    "stream": "bool",
    "name": "string",
}


async def handle_root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running", headers={"Content-Type": TEXT})


async def handle_version(request: web.Request) -> web.Response:
    return gin_json(200, {"version": state_of(request).settings.version})


async def handle_status(request: web.Request) -> web.Response:
    # api.StatusResponse for a machine where cloud features are not disabled.
    return gin_json(200, {"cloud": {"disabled": False, "source": "none"}})


def _modified_ns(spec: ModelSpec) -> str:
    return spec.modified_at


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _listed_capabilities(spec: ModelSpec) -> list[str]:
    """What /api/tags lists of a model from 0.30 on (server/model_list_cache.go), in
    the order it finds them: vision when the weights hold a vision tower (GGUF
    `<arch>.vision.block_count`), embedding or completion, then tools, insert and
    thinking from the template, vision again for a projector beside the weights."""
    projector = bool(spec.projector_info())
    listed = ["vision"] if spec.has("vision") and not projector else []
    listed.append("embedding" if spec.has("embedding") else "completion")
    listed += [c for c in ("tools", "insert", "thinking") if spec.has(c)]
    if projector:
        listed.append("vision")
    return listed


def _tags_entry(spec: ModelSpec, version: str) -> dict[str, Any]:
    """api.ListModelResponse: from 0.30 on, with the context and embedding lengths in
    details and the capabilities (`ollama launch` sets a model up from them)."""
    entry: dict[str, Any] = {
        "name": spec.name,
        "model": spec.name,
        "modified_at": spec.modified_at,
        "size": spec.size,
        "digest": spec.digest,
        "details": spec.details(),
    }
    if _release(version) >= (0, 30, 0):
        entry["details"]["context_length"] = spec.context_length
        entry["details"]["embedding_length"] = spec.embedding_length
        entry["capabilities"] = _listed_capabilities(spec)
    return entry


async def handle_tags(request: web.Request) -> web.Response:
    state = state_of(request)
    specs = sorted(state.store.values(), key=lambda s: s.modified_at, reverse=True)
    models = [_tags_entry(s, state.settings.version) for s in specs]
    return gin_json(200, {"models": models})


async def handle_ps(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.settings.ps_missing:
        return gin_not_found()
    if state.settings.ps_silent:
        return gin_json(200, {"models": []})
    rows = []
    for name, expiry in list(state.loaded.items()):
        spec = state.store.get(name)
        if spec is None or not state.is_loaded(spec):
            continue
        # Weights plus a KV cache for the default context, all resident on the GPU.
        size = spec.size + _DEFAULT_NUM_CTX * spec.block_count * spec.head_count_kv * 512
        rows.append(
            (
                expiry,
                {
                    "name": spec.name,
                    "model": spec.name,
                    "size": size,
                    "digest": spec.digest,
                    # PsHandler builds the details from the model's config alone:
                    # no parent, whatever the model was made from.
                    "details": {**spec.details(), "parent_model": ""},
                    "expires_at": go_time(expiry),
                    "size_vram": size,
                    "context_length": min(_DEFAULT_NUM_CTX, spec.context_length),
                },
            )
        )
    rows.sort(key=lambda r: -r[0])  # longest time remaining first, like PsHandler
    return gin_json(200, {"models": [r for _, r in rows]})


def _go_value(value: Any) -> str:
    """fmt's %#v for the scalar types Modelfile parameters hold: a string as
    strconv.Quote writes it (the body's JSON escapes `<` and `>` in turn)."""
    if isinstance(value, str):
        return go_quote(value.encode())
    return _go_text(value)


def _go_text(value: Any) -> str:
    """fmt's %v of a parameter's value (a float64 when it is a JSON number)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def _quote(text: str) -> str:
    """parser's quote: a Modelfile argument quoted only when it has a newline or an
    outer space, with triple quotes when it also holds a quote."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def _lists_capabilities(version: str) -> bool:
    """Whether an Ollama of `version` lists capabilities in /api/show (from 0.6.4)."""
    return _release(version) >= (0, 6, 4)


def show_body(spec: ModelSpec, request_model: str, user_agent: str, version: str) -> dict[str, Any]:
    """api.ShowResponse in field order (omitempty fields left out when empty), as an
    Ollama of `version` answers it."""
    params = [f"{k:<30} {_go_value(v)}" for k, v in spec.parameters()]
    modelfile = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {spec.name}",
        "",
        f"FROM /root/.ollama/models/blobs/{spec.model_digest.replace(':', '-')}",
        f"TEMPLATE {_quote(spec.template)}",
    ]
    if spec.system:
        modelfile.append(f"SYSTEM {_quote(spec.system)}")
    modelfile += [f"PARAMETER {k} {_quote(_go_text(v))}" for k, v in spec.parameters()]
    licenses = spec.all_licenses()
    modelfile += [f"LICENSE {_quote(text)}" for text in licenses]
    modelfile += [f"MESSAGE {role} {_quote(content)}" for role, content in spec.messages]
    body: dict[str, Any] = {}
    if licenses:
        body["license"] = "\n".join(licenses)
    body["modelfile"] = "\n".join(modelfile) + "\n"
    if params:
        body["parameters"] = "\n".join(params)
    body["template"] = spec.template
    if spec.system:
        body["system"] = spec.system
    body["details"] = spec.details()
    if spec.messages:
        body["messages"] = [{"role": r, "content": c} for r, c in spec.messages]
    info = spec.model_info()
    if user_agent.startswith(COPILOT_CHAT_USER_AGENT_PREFIX):
        info["general.basename"] = request_model
        info = dict(sorted(info.items()))
    body["model_info"] = info
    if projector := spec.projector_info():
        body["projector_info"] = projector
    if _lists_capabilities(version):
        body["capabilities"] = list(spec.capabilities)
    body["modified_at"] = spec.modified_at
    return body


async def _read_model_request(
    request: web.Request, struct: str, fields: dict[str, str], *, required: bool
) -> tuple[dict[str, Any], str]:
    """An admin request's body (`read_body`) and the model it names: `model`, else the
    older `name` in its place (Go's cmp.Or(req.Model, req.Name)). `required`: a body
    naming none is refused "model is required" (Show, Push, Delete); the others refuse
    the empty name as invalid."""
    body = await read_body(request, struct, fields)
    name = str(body.get("model") or body.get("name") or "")
    if required and not name:
        raise Refusal(400, "model is required")
    return body, name


async def handle_show(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.settings.show_hang:
        try:
            await wait_forever(request)
        except ClientGone:
            pass
        return web.Response(status=499)  # never reaches the client
    if state.settings.show_missing:
        return gin_not_found()
    try:
        _, name = await _read_model_request(request, "ShowRequest", SHOW_FIELDS, required=True)
    except Refusal as exc:
        return error(exc.status, exc.message)
    try:
        # ShowHandler's fallback for a blank name: ParseRef's own error, a 400.
        base, asked = parsed_ref(name, empty_status=400, empty_msg="model is required")
    except Refusal as exc:
        return error(exc.status, exc.message)
    if asked == CLOUD:
        refusal = cloud_out_of_reach(request.path)
        return error(refusal.status, refusal.message)
    spec = state.find(base)
    if spec is None:
        return error(404, not_found_message(request.path, base, state.store))
    agent = request.headers.get("User-Agent", "")
    return gin_json(200, show_body(spec, name, agent, state.settings.version))


# Pull / push / create -------------------------------------------------------------------


async def _progress(
    request: web.Request,
    lines: list[dict[str, Any]],
    stream: bool,
    *,
    fail: str = "",
    status: int = 500,
) -> web.StreamResponse:
    """Stream progress lines (NDJSON), or answer with the last one (waitForStream).

    `fail`: the error the handler's goroutine sends after `lines` (`gin.H{"error"}`,
    with `status` or without one, 500). Without streaming, waitForStream's c.JSON of
    it, under the `application/json` it set first (c.JSON keeps a Content-Type set);
    in a stream, streamResponse's end (`LazyStream.error`)."""
    state = state_of(request)
    if not stream:
        await asyncio.sleep(0)
        last = {"error": fail} if fail else lines[-1]
        code = status if fail else 200
        return web.Response(status=code, body=dumps(last), headers={"Content-Type": JSON_BARE})
    out = LazyStream(request, NDJSON)
    delay = min(state.settings.token_delay(), 0.01)
    try:
        for line in lines:
            await out.send(dumps(line) + b"\n")
            await asyncio.sleep(delay)
        if fail:
            return await out.error(status, fail)
    except ConnectionError:
        return out.response or web.Response(status=499)
    return await out.finish()


def _layer_lines(spec: ModelSpec, verb: str, have: bool) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for digest, total in spec.layers():
        status = f"{verb} {digest[7:19]}"
        if have:
            lines.append({"status": status, "digest": digest, "total": total, "completed": total})
            continue
        lines.append({"status": status, "digest": digest, "total": total})
        steps = 4 if total > 1_000_000 else 1
        for i in range(1, steps + 1):
            lines.append(
                {
                    "status": status,
                    "digest": digest,
                    "total": total,
                    "completed": total * i // steps,
                }
            )
    return lines


async def handle_pull(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body, name = await _read_model_request(
            request, "PullRequest", _REGISTRY_FIELDS, required=False
        )
    except Refusal as exc:
        return error(exc.status, exc.message)
    if not valid_name(name):
        return error(400, INVALID_NAME)
    stream = body.get("stream") is not False
    spec, lines = _pulled(state, name)
    if spec is None:
        return await _progress(request, lines, stream, fail=_NOT_IN_REGISTRY)
    return await _progress(request, lines, stream)


_NOT_IN_REGISTRY = "pull model manifest: file does not exist"


def _pulled(state: EmulatorState, name: str) -> tuple[ModelSpec | None, list[dict[str, Any]]]:
    """PullModel: the model the registry has under `name`, now local, and the progress
    lines of pulling it; None and the lines before the failure when the registry lacks
    it (`_NOT_IN_REGISTRY`)."""
    spec = REGISTRY.get(normalize_name(name))
    if spec is None:
        return None, [{"status": "pulling manifest"}]
    have = spec.name in state.store
    lines = [
        {"status": "pulling manifest"},
        *_layer_lines(spec, "pulling", have),
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    state.store[spec.name] = spec
    return spec, lines


async def handle_push(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body, name = await _read_model_request(
            request, "PushRequest", _REGISTRY_FIELDS, required=True
        )
    except Refusal as exc:
        return error(exc.status, exc.message)
    stream = body.get("stream") is not False
    spec = state.find(name)
    if spec is None:
        return await _progress(
            request,
            [{"status": "retrieving manifest"}, {"status": "couldn't retrieve manifest"}],
            stream,
            fail="file does not exist",
        )
    lines = [
        {"status": "retrieving manifest"},
        *_layer_lines(spec, "pushing", False),
        {"status": "pushing manifest"},
        {"status": "success"},
    ]
    return await _progress(request, lines, stream)


async def handle_create(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body, name = await _read_model_request(
            request,
            "CreateRequest",
            {
                "model": "string",
                "from": "string",
                "files": "map",
                "adapters": "map",
                "template": "string",
                "license": "any",
                "system": "string",
                "parameters": "map",
                "messages": "messages",
                "stream": "bool",
                "quantize": "string",
                "name": "string",
            },
            required=False,
        )
    except Refusal as exc:
        return error(exc.status, exc.message)
    if not valid_name(name):
        return error(400, INVALID_NAME)
    stream = body.get("stream") is not False
    base: ModelSpec | None
    # parseFromModel pulls a `from` model that is not local (PullModel's progress
    # lines come first in the stream); a failed pull is a gin.H error without a status.
    pulled: list[dict[str, Any]] = []
    if body.get("from"):
        base = state.find(str(body["from"]))
        if base is None:
            base, pulled = _pulled(state, str(body["from"]))
            if base is None:
                return await _progress(request, pulled, stream, fail=_NOT_IN_REGISTRY)
        if refused := _quantize_refusal(str(body.get("quantize") or ""), base):
            return await _progress(request, pulled, stream, fail=refused)
    elif body.get("files"):
        missing = [d for d in body["files"].values() if str(d) not in state.blobs]
        if missing:
            return error(400, f"blob {missing[0]!s} not found")
        base = REGISTRY["llama3.1:8b"]
    else:
        # Sent by the handler's goroutine, as its first message, with its status.
        neither = "neither 'from' or 'files' was specified"
        return await _progress(request, [], stream, fail=neither, status=400)
    changes: dict[str, Any] = {}
    written: dict[str, Any] = {}  # the layers the create writes, for its progress lines
    if body.get("template"):
        changes["template"] = written["template"] = str(body["template"])
    if body.get("system"):
        changes["system"] = written["system"] = str(body["system"])
    if isinstance(body.get("parameters"), dict):
        written["parameters"] = params = body["parameters"]
        changes.update(_parameters(base, params))
    if added := _licenses(body.get("license")):
        changes["licenses"] = base.licenses + added
        written["license"] = added
    if isinstance(body.get("messages"), list) and body["messages"]:
        changes["messages"] = written["messages"] = tuple(
            (str(m.get("role") or ""), str(m.get("content") or ""))
            for m in body["messages"]
            if isinstance(m, dict)
        )
    new = base.renamed(
        normalize_name(name), parent_model=base.name, modified_at=go_time(state.now_ns()), **changes
    )
    lines = pulled + [{"status": f"using existing layer {d}"} for d, _ in base.layers()[:1]]
    lines += [
        {"status": "creating new layer sha256:" + hashlib.sha256(repr(k).encode()).hexdigest()}
        for k in written.items()
    ]
    lines += [{"status": "writing manifest"}, {"status": "success"}]
    state.store[new.name] = new
    return await _progress(request, lines, stream)


def _parameters(base: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
    """setParameters: the request's parameters, and the base's for each key the request
    does not name (a `stop` it names replaces the base's stop list)."""
    changes: dict[str, Any] = {}
    if "stop" in params:
        stop = params["stop"]
        changes["stop"] = tuple(_go_text(s) for s in (stop if isinstance(stop, list) else [stop]))
    kept = [(k, v) for k, v in base.extra_parameters if k not in params]
    changes["extra_parameters"] = tuple(kept + [(k, v) for k, v in params.items() if k != "stop"])
    return changes


def _licenses(value: Any) -> tuple[str, ...]:
    """The licenses a create adds (CreateRequest.License: a string or a list of them)."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


# ggml.ParseFileType's types, and those its error lists (BF16 is read, not listed).
_FILE_TYPES = ("F32", "F16", "Q8_0", "Q4_K_S", "Q4_K_M", "Q4_K", "BF16")
_LISTED_TYPES = "F32, F16, Q4_K_S, Q4_K_M, Q8_0"


def _quantize_refusal(quantize: str, base: ModelSpec) -> str:
    """createModel's refusal of a `quantize` of these weights, before any layer is
    written: an unknown type, or weights already quantized. "" when it goes ahead."""
    if not quantize:
        return ""
    wanted = quantize.upper()
    if wanted not in _FILE_TYPES:
        return f"unsupported quantization type {wanted} - supported types are {_LISTED_TYPES}"
    if base.quantization_level not in ("F16", "BF16", "F32"):
        return "quantization is only supported for F16, BF16 and F32 models"
    return ""


async def handle_copy(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_body(
            request, "CopyRequest", {"source": "string", "destination": "string"}
        )
    except Refusal as exc:
        return error(exc.status, exc.message)
    src, dst = str(body.get("source") or ""), str(body.get("destination") or "")
    if not valid_name(src):
        return error(400, f"source {dumps(src).decode()} is invalid")
    if not valid_name(dst):
        return error(400, f"destination {dumps(dst).decode()} is invalid")
    spec = state.find(src)
    if spec is None:
        return error(404, f"model {dumps(src).decode()} not found")
    state.store[normalize_name(dst)] = spec.copied(
        normalize_name(dst), modified_at=go_time(state.now_ns())
    )
    return empty_ok()


async def handle_delete(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        _, name = await _read_model_request(
            request, "DeleteRequest", {"model": "string", "name": "string"}, required=True
        )
    except Refusal as exc:
        return error(exc.status, exc.message)
    if not valid_name(name):
        return error(400, f"name {dumps(name).decode()} is invalid")
    spec = state.find(name)
    if spec is None:
        return error(404, f"model '{name}' not found")
    del state.store[spec.name]
    state.loaded.pop(spec.name, None)
    return empty_ok()


# Blobs ----------------------------------------------------------------------------------


async def handle_head_blob(request: web.Request) -> web.Response:
    digest = request.match_info["digest"]
    if not _DIGEST.match(digest):
        return error(400, "invalid digest format")
    if digest.replace("-", ":", 1) not in state_of(request).blobs:
        return error(404, f"blob {dumps(digest).decode()} not found")
    return empty_ok()


async def handle_create_blob(request: web.Request) -> web.Response:
    """Hash the upload as it arrives; nothing is kept but the digest."""
    state = state_of(request)
    digest = request.match_info["digest"]
    if not _DIGEST.match(digest):
        return error(400, "invalid digest format")
    if digest.replace("-", ":", 1) in state.blobs:
        return empty_ok()
    h = hashlib.sha256()
    async for chunk in request.content.iter_chunked(1 << 16):
        h.update(chunk)
    got = "sha256:" + h.hexdigest()
    if got != digest:
        return error(
            400, f"digest mismatch, expected {dumps(digest).decode()}, got {dumps(got).decode()}"
        )
    state.blobs.add(got)
    return web.Response(status=201, headers={"Content-Length": "0"})


# Account routes: a local Ollama that is not signed in to ollama.com --------------------


def _signin_url() -> str:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEmulatorPublicKeyForOllamaAutorouteXYZ0"
    enc = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    return f"https://ollama.com/connect?name={socket.gethostname()}&key={enc}"


async def handle_me(request: web.Request) -> web.Response:
    return gin_json(401, {"error": "unauthorized", "signin_url": _signin_url()})


async def handle_signout(request: web.Request) -> web.Response:
    return error(401, "you are not currently signed in")


async def handle_web_experimental(request: web.Request) -> web.Response:
    """webExperimentalProxyHandler: a body sent on to ollama.com's `/api/web_search` or
    `/api/web_fetch` (the query kept), through proxyCloudRequestWithPath as a cloud
    model's request goes, so the emulated machine, which signs it with its key but
    cannot reach ollama.com, answers it as it answers one (`cloud_out_of_reach`)."""
    if not (await request.read()).strip():
        return error(400, "missing request body")
    target = "/api/" + request.path.rsplit("/", 1)[1]
    if request.query_string:
        target += "?" + request.query_string
    refusal = cloud_out_of_reach(target)
    return error(refusal.status, refusal.message)


# server/model_recommendations.go `defaultModelRecommendations`: what Ollama answers
# until a refresh from ollama.com replaces them (a local emulator never fetches). Go's
# `omitempty` leaves out each zero limit. VRAM in format.GigaByte (10^9 bytes).
_RECOMMENDATIONS = (
    {
        "model": "kimi-k2.6:cloud",
        "description": "State-of-the-art coding, long-horizon execution, and multimodal agent"
        " swarm capability",
        "context_length": 262_144,
        "max_output_tokens": 262_144,
    },
    {
        "model": "glm-5.1:cloud",
        "description": "Reasoning and code generation",
        "context_length": 202_752,
        "max_output_tokens": 131_072,
    },
    {
        "model": "qwen3.5:cloud",
        "description": "Reasoning, coding, and agentic tool use with vision",
        "context_length": 262_144,
        "max_output_tokens": 32_768,
    },
    {
        "model": "minimax-m2.7:cloud",
        "description": "Fast, efficient coding and real-world productivity",
        "context_length": 204_800,
        "max_output_tokens": 128_000,
    },
    {
        "model": "gemma4",
        "description": "Reasoning and code generation locally",
        "vram_bytes": 12_000_000_000,
    },
    {
        "model": "qwen3.5",
        "description": "Reasoning, coding, and visual understanding locally",
        "vram_bytes": 14_000_000_000,
    },
)


async def handle_model_recommendations(request: web.Request) -> web.Response:
    return gin_json(200, {"recommendations": list(_RECOMMENDATIONS)})
