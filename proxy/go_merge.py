"""A key given twice, decoded as Go decodes it: the document Go ends with (`go_decoded`).

Go's encoding/json does not keep the last value of a repeated key alone: it decodes each
value in turn into what the earlier ones set (docs/design-notes.md, "A key given twice").
The proxy forwards that document in place of its own reading (`auto_routes.repeated_keys`),
so the backend runs what the proxy checked. Only a body `go_json.left_out` finds a value
left out of comes here, read again by `go_readings.read_repeated`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from proxy.go_readings import Pairs, holds_pairs
from proxy.go_types import taken_whole
from selector_model.request_body import canonical_key, canonicalize


class _Struct(NamedTuple):
    """How Go decodes into a struct (`pointer`: a pointer to one), for `go_decoded`:
    each field by its JSON name, "plain" (a string, number or bool), "map" (a
    map[string]any), a `_Struct`, a `_Slice` or an `_Input`; a field not named takes
    each value whole (a pointer to a plain value, an interface, a json.RawMessage, a
    type with an UnmarshalJSON of its own, a slice of such)."""

    pointer: bool
    fields: Mapping[str, Any]


class _Slice(NamedTuple):
    """A slice field for `go_decoded`: how Go decodes each element (as a `_Struct`'s
    field), into the element the slice already holds at its index, or into a zero
    value where the element type's own UnmarshalJSON starts afresh (`fresh`:
    api.Message's, anthropic.MessageParam's)."""

    element: Any
    fresh: bool = False


def _plain(names: str, **others: Any) -> dict[str, Any]:
    """Fields: those `names` (blank-separated) plain, then `others`."""
    return dict.fromkeys(names.split(), "plain") | others


_STREAM_OPTIONS = _Struct(True, _plain("include_usage"))
_TOOLS = _Slice(  # []api.Tool (`properties` has an UnmarshalJSON of its own)
    _Struct(
        False,
        _plain(
            "type",
            function=_Struct(
                False,
                _plain(
                    "name description",
                    parameters=_Struct(False, _plain("type", required=_Slice("plain"))),
                ),
            ),
        ),
    )
)
_TOOL_CALL = _Struct(False, _plain("id", function=_Struct(False, _plain("index name"))))
_MESSAGE = _Struct(
    False,
    _plain(
        "role content thinking tool_name tool_call_id",
        tool_calls=_Slice(_TOOL_CALL),
    ),
)
_OPENAI_MESSAGE = _Struct(
    False,
    _plain(
        "role reasoning name tool_call_id",
        tool_calls=_Slice(
            _Struct(
                False, _plain("id index type", function=_Struct(False, _plain("name arguments")))
            )
        ),
    ),
)
# A Responses input's content parts and items (openai/responses.go): ResponsesInput's
# UnmarshalJSON decodes each item of an array afresh, into a struct of its type (of
# strings, but for a reasoning item's `summary`, a web search call's `action`, and the
# json.RawMessages a message's `content` and a function call output's `output` are,
# whose array's parts are decoded afresh in turn); one spec holds every type's fields.
_RESPONSES_PARTS = _Slice(
    _Struct(False, _plain("type text detail file_id image_url file_data file_url filename")),
    fresh=True,
)
_RESPONSES_ITEMS = _Slice(
    _Struct(
        False,
        _plain(
            "type role id call_id name arguments status encrypted_content",
            content=_RESPONSES_PARTS,
            output=_RESPONSES_PARTS,
            summary=_Slice(_Struct(False, _plain("type text"))),
            action=_Struct(True, _plain("type query")),
        ),
    ),
    fresh=True,
)


class _Input(NamedTuple):
    """openai.ResponsesInput, for `go_decoded`: its UnmarshalJSON sets its text from a
    string (from a null too: the text ""), its items (`items`) afresh from an array,
    and leaves the other as an earlier value set it."""

    items: _Slice


class _TextAndItems(list[Any]):
    """A ResponsesInput holding both a text and items, written as the input Ollama
    converts alike: the text as a user message before the items, as
    FromResponsesRequest puts it; what it holds, for a later value to change."""

    text: str
    items: list[Any]


def _into_input(how: _Input, before: Any, value: Any, tails: _Tails) -> Any:
    """What a ResponsesInput holds after `value`, having held `before` (as this writes
    it): a string for a text alone, a list for items alone, else `_TextAndItems`."""
    if isinstance(before, _TextAndItems):
        text, items = before.text, before.items
    elif isinstance(before, list):
        text, items = "", before
    else:
        text, items = before if isinstance(before, str) else "", []
    if value is None or isinstance(value, str):
        text = value or ""
    elif isinstance(value, list) and not isinstance(value, Pairs):
        items = _into_slice(how.items, None, value, tails)
    else:  # refused as it is decoded (`go_requests.first_error`)
        return taken_whole(value)
    if not items:
        return text
    if not text:
        return items
    both = _TextAndItems([{"role": "user", "content": text}, *items])
    both.text, both.items = text, items
    return both


_RESPONSES_INPUT = _Input(_RESPONSES_ITEMS)
# An Anthropic message's content blocks (anthropic.ContentBlock), which
# MessageParam's UnmarshalJSON decodes afresh from its json.RawMessage: `text` and
# `thinking` are pointers to strings (a null sets them to nil), `source` a pointer to
# a struct, `input` an ordered map and `content` an `any`, each taken whole.
_ANTHROPIC_BLOCKS = _Slice(
    _Struct(
        False,
        _plain(
            "type id name tool_use_id is_error signature",
            citations=_Slice(_Struct(False, _plain("type url title encrypted_index cited_text"))),
            source=_Struct(True, _plain("type media_type data url")),
        ),
    ),
    fresh=True,
)
# Each request struct (as `check_fields` names it) as `go_decoded` merges into it, from
# api/types.go, openai/openai.go, openai/responses.go and anthropic/anthropic.go.
_MERGES: dict[str, _Struct] = {
    "GenerateRequest": _Struct(
        False,
        _plain(
            "model prompt suffix system template raw _debug_render_only logprobs top_logprobs",
            options="map",
            context=_Slice("plain"),
        ),
    ),
    "ChatRequest": _Struct(
        False,
        _plain(
            "model _debug_render_only logprobs top_logprobs",
            options="map",
            messages=_Slice(_MESSAGE, fresh=True),
            tools=_TOOLS,
        ),
    ),
    "ShowRequest": _Struct(False, _plain("model system template verbose name", options="map")),
    "EmbedRequest": _Struct(False, _plain("model dimensions", options="map")),
    "EmbeddingRequest": _Struct(False, _plain("model prompt", options="map")),
    "openai.ChatCompletionRequest": _Struct(
        False,
        _plain(
            "model stream top_logprobs _debug_render_only",
            messages=_Slice(_OPENAI_MESSAGE),
            tools=_TOOLS,
            stream_options=_STREAM_OPTIONS,
            response_format=_Struct(True, _plain("type", json_schema=_Struct(True, {}))),
            reasoning=_Struct(True, _plain("effort")),
        ),
    ),
    "openai.CompletionRequest": _Struct(
        False,
        _plain(
            "model prompt frequency_penalty presence_penalty stream top_p suffix"
            " _debug_render_only",
            stream_options=_STREAM_OPTIONS,
        ),
    ),
    "openai.EmbedRequest": _Struct(False, _plain("model dimensions encoding_format")),
    "openai.ResponsesRequest": _Struct(
        False,
        _plain(
            "model background instructions",
            include=_Slice("plain"),
            input=_RESPONSES_INPUT,
            tools=_Slice(_Struct(False, _plain("type name", parameters="map"))),
            reasoning=_Struct(False, _plain("effort generate_summary summary")),
            text=_Struct(True, {"format": _Struct(True, _plain("type name"))}),
        ),
    ),
    "anthropic.MessagesRequest": _Struct(
        False,
        _plain(
            "model max_tokens stream",
            messages=_Slice(_Struct(False, _plain("role", content=_ANTHROPIC_BLOCKS)), fresh=True),
            stop_sequences=_Slice("plain"),
            tools=_Slice(_Struct(False, _plain("type name description max_uses"))),
            tool_choice=_Struct(True, _plain("type name disable_parallel_tool_use")),
            thinking=_Struct(True, _plain("type budget_tokens")),
            metadata=_Struct(True, _plain("user_id")),
            output_config=_Struct(True, _plain("effort")),
        ),
    ),
}


# A slice's elements beyond its length that its array still holds, by the id of the
# list `go_decoded` made for it (with the list, which keeps the id its own).
_Tails = dict[int, tuple[list[Any], list[Any]]]


class _Unknowable(Exception):
    """A later array reaches into elements an earlier, longer one left beyond the
    slice's length: Go decodes into them where the slice's capacity (Go's growth
    of its array) still holds them, which `go_decoded` does not follow."""


def _into_slice(how: _Slice, before: Any, value: list[Any], tails: _Tails) -> list[Any]:
    """What a slice field holds after the array `value`: Go decodes each element into
    the one at its index (the slice's array reused up to its capacity), sets the
    length to the array's, and makes a new empty slice for an empty array."""
    if not value:
        return []
    old = before if isinstance(before, list) else []
    kept = tails.get(id(old))
    backing = old + (kept[1] if kept is not None and kept[0] is old else [])
    if len(value) > len(old) and len(backing) > len(old) and not how.fresh:
        raise _Unknowable
    elements = [
        _merged(how.element, None if how.fresh or i >= len(old) else old[i], item, tails)
        for i, item in enumerate(value)
    ]
    if len(backing) > len(elements):
        tails[id(elements)] = (elements, backing[len(elements) :])
    return elements


def _merged(how: Any, before: Any, value: Any, tails: _Tails) -> Any:
    """What a field decoded as `how` (see `_Struct`) holds after `value`, having held
    `before` (None: nothing yet)."""
    if before is None and not (isinstance(value, list) and holds_pairs(value)):
        # Decoded into a zero value, with no key of its own given twice: as it is.
        return value
    if type(how) is _Input:
        return _into_input(how, before, value, tails)
    if value is None:
        # literalStore: a null zeroes an interface, pointer, map or slice, and leaves
        # a string, number, bool or struct as it was.
        return before if how == "plain" or (type(how) is _Struct and not how.pointer) else None
    if type(how) is _Slice and isinstance(value, list) and not isinstance(value, Pairs):
        try:
            return _into_slice(how, before, value, tails)
        except _Unknowable:
            # The array's own elements: Go's, but where a null or an object of it lands
            # on an element the capacity kept.
            return taken_whole(value)
    if not isinstance(value, dict | Pairs) or how == "plain":
        return taken_whole(value)
    items = value.items() if isinstance(value, dict) else value
    held: dict[str, Any] = dict(before) if isinstance(before, dict) else {}
    if how == "map":
        # The map is made only if nil; each element is decoded into a zeroed value.
        for key, item in items:
            held.pop(key, None)
            held[key] = taken_whole(item)
        return held
    if type(how) is not _Struct:
        return taken_whole(value)
    # A struct's fields, matched whatever their case, each decoded into what it holds
    # (`indirect` reuses a pointer that is not nil); a value taken as it is keeps the
    # keys' spelling, which names the same fields.
    held = {canonical_key(key): item for key, item in held.items()}
    for key, item in items:
        name = canonical_key(key)
        field = held.pop(name, None)
        held[name] = _merged(how.fields.get(name), field, item, tails)
    return held


def go_decoded(doc: Any, struct: str) -> dict[str, Any] | None:
    """The document Go ends with decoding `doc` (`go_readings.read_repeated`'s reading of a
    body Go refuses nothing of, `go_requests.first_error`) into `struct`, where the body gives a key
    twice; canonical (`canonicalize`). Go does not keep the last value alone: a later
    null leaves a string, number or bool field as it was, a map field keeps the
    entries a later object does not name, a struct (or a pointer to one) the fields,
    and an array is decoded into the slice's elements (`_into_slice`). None where the
    body's objects repeat no key or the struct is not in `_MERGES`."""
    how = _MERGES.get(struct)
    if not isinstance(doc, Pairs) or how is None:
        return None
    try:
        merged: dict[str, Any] = _merged(how, None, doc, {})
    except RecursionError:  # deeper than Python's stack: the backend reads it
        return None
    canonicalize(merged)
    return merged
