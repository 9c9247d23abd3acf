"""The backends' answers the proxy reads for itself (`/api/tags`, `/api/ps`,
`/api/show`), checked against Ollama's shapes (api/types.go) in one place each.

A backend behind a `backends:` URL may answer JSON of another shape: the wrong service,
a broken Ollama-compatible server, a gateway that answers its errors with 200. Ollama's
Go client fails the whole document on any type it does not expect; here only a
document that leaves nothing to read fails (`ShapeError`, a ValueError as invalid JSON
is): one that is not an object, or whose `models` is not a list. Below that, a model
entry of the wrong shape is left out and a field of the wrong type is read as absent,
as a field the answer leaves out: the rest of a list or a show still describes usable
models. Fields nobody reads are kept as they are.

A show from an Ollama before 0.6.4 lists no capabilities: `decided_capabilities` reads
them off its template and weights, as that Ollama decides them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from proxy.protocol import count


class ShapeError(ValueError):
    """A backend's answer is JSON, but of no shape Ollama answers."""


def _kind(value: object) -> str:
    """What a JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a JSON array" if isinstance(value, list) else "an object"


def objects(value: object) -> list[dict[str, Any]]:
    """The objects of a JSON array; none of anything else."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


# A field's reader: its value if of the type Ollama gives it, else None (absent).
Reader = Callable[[Any], Any]


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _positive(value: object) -> int | None:
    """A length in tokens: 0 or less says nothing of the model."""
    length = count(value)
    return length if length else None


def _strings(value: object) -> list[str] | None:
    """A list of strings (capabilities, families); anything else is absent whole: a
    list with another value in it is not what Ollama lists."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _object(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _typed(value: dict[str, Any], fields: Mapping[str, Reader]) -> dict[str, Any]:
    """An object with each of `fields` read by its reader, and left out where the
    reader finds it of the wrong type."""
    typed = dict(value)
    for name, read in fields.items():
        if name in typed:
            field = read(typed[name])
            if field is None:
                del typed[name]
            else:
                typed[name] = field
    return typed


# api.ModelDetails.
_DETAILS: dict[str, Reader] = {
    "parent_model": _string,
    "format": _string,
    "family": _string,
    "families": _strings,
    "parameter_size": _string,
    "quantization_level": _string,
    "context_length": _positive,
    "embedding_length": _positive,
}


def _details(value: object) -> dict[str, Any] | None:
    return _typed(value, _DETAILS) if isinstance(value, dict) else None


# api.ListModelResponse, an entry of `/api/tags`.
_LISTED: dict[str, Reader] = {
    "name": _string,
    "model": _string,
    "remote_model": _string,
    "remote_host": _string,
    "modified_at": _string,
    "size": count,
    "digest": _string,
    "details": _details,
    "capabilities": _strings,
}
# api.ProcessModelResponse, an entry of `/api/ps`.
_RUNNING: dict[str, Reader] = {
    "name": _string,
    "model": _string,
    "size": count,
    "digest": _string,
    "details": _details,
    "expires_at": _string,
    "size_vram": count,
    "context_length": _positive,
}
# The fields of api.ShowResponse the registry reads; `model_info` and `projector_info`
# are Go's map[string]any, whose values are read where they are used.
_SHOWN: dict[str, Reader] = {
    "template": _string,
    "details": _details,
    "remote_host": _string,
    "model_info": _object,
    "projector_info": _object,
    "capabilities": _strings,
}


def _document(answer: object, what: str) -> dict[str, Any]:
    """The answer to `what` ("GET /api/tags"), which Ollama always answers an object."""
    if not isinstance(answer, dict):
        raise ShapeError(f"{what} answered {_kind(answer)}, not an object")
    return answer


def _models(answer: object, what: str, fields: Mapping[str, Reader]) -> list[dict[str, Any]]:
    """The model entries of a list answer (`{"models": [...]}`; null or no `models`
    lists none, as in Go): each typed, those that are not objects or name no model
    left out."""
    models = _document(answer, what).get("models")
    if models is not None and not isinstance(models, list):
        raise ShapeError(f"{what} answered models as {_kind(models)}, not a list")
    entries = []
    for entry in objects(models):
        typed = _typed(entry, fields)
        if typed.get("model") or typed.get("name"):
            entries.append(typed)
    return entries


def listed_models(answer: object) -> list[dict[str, Any]]:
    """The entries of an `/api/tags` answer."""
    return _models(answer, "GET /api/tags", _LISTED)


def running_models(answer: object) -> list[dict[str, Any]]:
    """The entries of an `/api/ps` answer."""
    return _models(answer, "GET /api/ps", _RUNNING)


def shown(answer: object) -> dict[str, Any]:
    """An `/api/show` answer."""
    return _typed(_document(answer, "POST /api/show"), _SHOWN)


# A Go template action, `{{ ... }}`, read whole past string literals and comments that
# hold braces; then the literals and comments inside one, which name no field.
_LITERAL = r'"(?:\\.|[^"\\])*"|`[^`]*`|\'(?:\\.|[^\'\\])*\'|/\*.*?\*/'
_ACTION = re.compile(r"\{\{((?:" + _LITERAL + r"|[^}\"`'/]|/(?!\*)|\}(?!\}))*)\}\}", re.S)
_INERT = re.compile(_LITERAL, re.S)
# Each name of a field or variable chain: `.Tools`, `$.Tools`, `$m.Function.Name`.
_FIELD = re.compile(r"\.([A-Za-z_]\w*)")


def _template_fields(template: str) -> set[str]:
    """The field names a Go template's actions read, lower-cased, as Ollama's
    template.Vars collects them (template/template.go): not text outside actions,
    literals or comments."""
    return {
        field.lower()
        for action in _ACTION.finditer(template)
        for field in _FIELD.findall(_INERT.sub(" ", action.group(1)))
    }


def decided_capabilities(show: dict[str, Any]) -> tuple[str, ...]:
    """What an Ollama whose /api/show lists no capabilities (before 0.6.4) still serves,
    decided as it decides them from what show carries (server/images.go,
    Model.CheckCapabilities, and Model.Capabilities in the versions that list them):
    embedding alone when the weights pool (`<architecture>.pooling_type`), else
    completion; vision for a vision encoder in the weights or a projector; tools and
    insert when the template reads `.Tools` / `.Suffix`. Empty without a template: a
    stand-in server's show, which says nothing of them."""
    template = show.get("template")
    if not isinstance(template, str) or not template:
        return ()
    weights = show.get("model_info") or {}
    architecture = weights.get("general.architecture")
    if f"{architecture}.pooling_type" in weights:
        return ("embedding",)
    fields = _template_fields(template)
    sees = f"{architecture}.vision.block_count" in weights or bool(show.get("projector_info"))
    wanted = (
        ("vision", sees),
        ("tools", "tools" in fields),
        ("insert", "suffix" in fields),
    )
    return ("completion", *(capability for capability, has in wanted if has))


# The architectures (`details.family`) whose thinking a request cannot turn off: Ollama
# runs gpt-oss through its harmony parser (server/routes.go, shouldUseHarmony), whose
# effort is a level, and ignores `think: true/false` for it
# (docs/capabilities/thinking.mdx: "the trace cannot be fully disabled").
_THINKS_ALWAYS = frozenset({"gptoss", "gpt-oss"})


def thinks_always(details: Mapping[str, Any], capabilities: Iterable[str]) -> bool:
    """Whether a model thinks whatever a request says: one that thinks (`thinking`
    among its capabilities) of an architecture whose thinking Ollama does not let a
    request turn off."""
    family = details.get("family")
    return (
        "thinking" in capabilities and isinstance(family, str) and family.lower() in _THINKS_ALWAYS
    )
