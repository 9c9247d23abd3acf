"""The elements of a request's slices as Go decodes them: an /api/chat message
(api.Message's own UnmarshalJSON) with its tool calls, an Anthropic message
(anthropic.MessageParam's) with its content blocks, an OpenAI chat message, a tool.
`go_requests.check_fields` checks each element of such a field with these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.go_readings import NO_INPUT, Pairs
from proxy.go_types import (
    GO_TYPE,
    Aborts,
    BodyError,
    Shape,
    as_assigned,
    check_elements,
    check_image,
    check_struct,
    fits,
    not_into,
    strings_alone,
    taken_whole,
    type_error,
)
from selector_model.request_body import canonical_key

# api.Tool, api.ToolFunction and api.ToolFunctionParameters (`properties` decodes
# through an UnmarshalJSON of its own, which go_types checks). Go names the innermost
# struct and the field's whole path from the request (`Tool.tools.function`).
_PARAMETERS = Shape(
    "ToolFunctionParameters",
    "api.ToolFunctionParameters",
    {
        "type": ("string", "string", None),
        "$defs": ("any", "interface {}", None),
        "items": ("any", "interface {}", None),
        "required": ("[]string", "[]string", None),
        "properties": ("properties", "*api.ToolPropertiesMap", None),
    },
)
_FUNCTION = Shape(
    "ToolFunction",
    "api.ToolFunction",
    {
        "name": ("string", "string", None),
        "description": ("string", "string", None),
        "parameters": ("object", _PARAMETERS.go_type, _PARAMETERS),
    },
)
_TOOL = Shape(
    "Tool",
    "api.Tool",
    {
        "type": ("string", "string", None),
        "items": ("any", "interface {}", None),
        "function": ("object", _FUNCTION.go_type, _FUNCTION),
    },
)


def parameters_refusal(value: Any) -> str | None:
    """json.Unmarshal's error decoding `value`, a schema taken as written (an Anthropic
    tool's input_schema, a Responses tool's parameters), into an
    api.ToolFunctionParameters; None where it decodes (a null too)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return not_into(value, _PARAMETERS.go_type)
    try:
        check_struct(value, _PARAMETERS, "")
    except BodyError as exc:
        return str(exc)
    return None


def check_tool(item: Any, struct: str, key: str) -> None:
    """One element of a request's `tools` ([]api.Tool)."""
    if item is None:
        return
    if not isinstance(item, dict):
        raise type_error(item, struct, key, _TOOL.go_type)
    check_struct(item, _TOOL, key)


# openai.Message and openai.ToolCall (openai/openai.go), as far as their types are plain
# (`content` is an `any`). A tool call's `function` is an anonymous struct: encoding/json
# names it by its fields, and a field inside it by its path alone (no struct name).
_OA_FUNCTION = Shape(
    "",
    'struct { Name string "json:\\"name\\""; Arguments string "json:\\"arguments\\"" }',
    {"name": ("string", "string", None), "arguments": ("string", "string", None)},
)
_OA_TOOL_CALL = Shape(
    "ToolCall",
    "openai.ToolCall",
    {
        "id": ("string", "string", None),
        "index": ("int", "int", None),
        "type": ("string", "string", None),
        "function": ("object", _OA_FUNCTION.go_type, _OA_FUNCTION),
    },
)
_OA_MESSAGE = Shape(
    "Message",
    "openai.Message",
    {
        "role": ("string", "string", None),
        "content": ("any", "interface {}", None),
        "reasoning": ("string", "string", None),
        "tool_calls": ("[]", "[]openai.ToolCall", _OA_TOOL_CALL),
        "name": ("string", "string", None),
        "tool_call_id": ("string", "string", None),
    },
)


# Fields of openai/openai.go's requests that are structs of its own, by the kind that


def check_openai_message(item: Any, struct: str, key: str) -> None:
    """One element of a chat completion's `messages` ([]openai.Message, no UnmarshalJSON
    of its own): errors name the innermost struct and the field's path from the
    request (`Message.messages.role`). A null element is the zero message."""
    if item is None:
        return
    if not isinstance(item, dict):
        raise type_error(item, struct, key, _OA_MESSAGE.go_type)
    check_struct(item, _OA_MESSAGE, key)


_MESSAGE_FIELDS = {
    "role": "string",
    "content": "string",
    "thinking": "string",
    "images": "images",
    "tool_calls": "[]",
    "tool_name": "string",
    "tool_call_id": "string",
}


# (`check_message`: its errors name the request's struct).
_TOOL_CALL_FUNCTION = Shape(
    "ToolCallFunction",
    "api.ToolCallFunction",
    {
        "index": ("int", "int", None),
        "name": ("string", "string", None),
        "arguments": ("arguments", "api.ToolCallFunctionArguments", None),
    },
)
_TOOL_CALL = Shape(
    "ToolCall",
    "api.ToolCall",
    {
        "id": ("string", "string", None),
        "function": ("object", _TOOL_CALL_FUNCTION.go_type, _TOOL_CALL_FUNCTION),
    },
)


def check_message(item: Any, struct: str, key: str) -> None:
    """One element of a native chat's `messages` (`struct`.`key`). api.Message has its
    own UnmarshalJSON (decoding an Alias of itself), and json.Unmarshal gives the error
    of that inner decoding the context of the request it decodes: the request's struct
    and the path from it to the field (`ChatRequest.messages.content`, as Ollama answers
    it), the type the inner decoding names (`api.Alias` for a message that is no
    object). The inner decoding goes in the message's order, a key given twice (a
    `Pairs` message, `first_error`) each time: its first type error (a tool call's
    fields too: `ChatRequest.messages.tool_calls.function.name`), unless a tool call's
    `arguments` ends it first (`check_arguments`)."""
    if item is None:
        return
    saved: BodyError | None = None
    if isinstance(item, dict):
        fields: Any = item.items()
    elif isinstance(item, Pairs):
        fields = (
            (canonical_key(name), piece) for name, value in item for piece in as_assigned(value)
        )
    else:
        raise type_error(item, struct, key, "api.Alias")
    for name, value in fields:
        want = _MESSAGE_FIELDS.get(name)
        if want is None or value is None:
            continue
        try:
            _check_message_field(value, want, struct, f"{key}.{name}")
        except Aborts:
            raise
        except BodyError as exc:
            saved = saved or exc
    if saved is not None:
        raise saved


def _check_message_field(value: Any, want: str, struct: str, path: str) -> None:
    if want == "images":
        if not isinstance(value, list):
            raise type_error(value, struct, path, "[]api.ImageData")
        for img in value:
            check_image(img, struct, path)
    elif want == "[]":
        if not isinstance(value, list):
            raise type_error(value, struct, path, "[]api.ToolCall")
        check_elements(value, _TOOL_CALL, path, struct, struct)
    elif not fits(value, want):
        raise type_error(value, struct, path, GO_TYPE[want])


# What anthropic.MessageParam's UnmarshalJSON unmarshals a message into first: an
# anonymous struct, which Go's errors name by its fields.
_ANTHROPIC_HEAD = (
    'struct { Role string "json:\\"role\\""; Content json.RawMessage "json:\\"content\\"" }'
)


# anthropic.ContentBlock (no UnmarshalJSON of its own) and what it holds: `text` and
# `thinking` are pointers to strings and `source` to an ImageSource, which Go's errors
# name as what they point to; `input` is an api.ToolCallFunctionArguments, in a block
# of any type; `content` (a tool result's) an `any`.
_CITATION = Shape(
    "Citation",
    "anthropic.Citation",
    {
        name: ("string", "string", None)
        for name in ("type", "url", "title", "encrypted_index", "cited_text")
    },
)
_IMAGE_SOURCE = Shape(
    "ImageSource",
    "anthropic.ImageSource",
    {name: ("string", "string", None) for name in ("type", "media_type", "data", "url")},
)
_CONTENT_BLOCK = Shape(
    "ContentBlock",
    "anthropic.ContentBlock",
    {
        "type": ("string", "string", None),
        "text": ("string", "string", None),
        "citations": ("[]", "[]anthropic.Citation", _CITATION),
        "source": ("object", _IMAGE_SOURCE.go_type, _IMAGE_SOURCE),
        "id": ("string", "string", None),
        "name": ("string", "string", None),
        "input": ("arguments", "api.ToolCallFunctionArguments", None),
        "tool_use_id": ("string", "string", None),
        "content": ("any", "interface {}", None),
        "is_error": ("bool", "bool", None),
        "thinking": ("string", "string", None),
        "signature": ("string", "string", None),
    },
)

# The fields of a content block a string fits (`_check_blocks`).
_STRING_FIELDS = frozenset(
    name for name, (kind, _, _) in _CONTENT_BLOCK.fields.items() if kind in ("string", "any")
)


def check_anthropic_message(msg: Any, struct: str, key: str) -> None:
    """One element of an Anthropic request's `messages`: anthropic.MessageParam's
    UnmarshalJSON, the message into its head (`_ANTHROPIC_HEAD`: each `role` in the
    message's order, a key given twice (a `Pairs` message) each time; `content` a
    json.RawMessage, the last one kept), then `content` as a string, else as a list of
    blocks (`_check_blocks`). A null message, or one without `content`, unmarshals no
    bytes (a null `content` is the text ""). json.Unmarshal puts an error of these
    inner decodings in the request's context (`MessagesRequest.messages`, the inner
    field after it)."""
    in_pairs = isinstance(msg, Pairs)
    if in_pairs:
        pairs, msg = msg, {}
        for name, value in pairs:
            name = canonical_key(name)
            if name == "role":
                _check_role(taken_whole(value), struct, key)
            # The blocks as given: a block giving a key twice is decoded each time.
            whole = name == "content" and type(value) is list
            msg[name] = value if whole else taken_whole(value)
    if msg is None or (isinstance(msg, dict) and "content" not in msg):
        raise BodyError(NO_INPUT)
    if not isinstance(msg, dict):
        raise type_error(msg, struct, key, _ANTHROPIC_HEAD)
    _check_role(msg.get("role"), struct, key)
    content = msg["content"]
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise type_error(content, struct, key, "[]anthropic.ContentBlock")
    _check_blocks(content, struct, key, in_pairs)


def _check_blocks(content: list[Any], struct: str, key: str, in_pairs: bool) -> None:
    """A message's content blocks ([]anthropic.ContentBlock, `_CONTENT_BLOCK`), in order,
    a block giving a key twice (a `Pairs`, in a message that does: `in_pairs`) each
    time: the first type error, unless a block's `input` ends the decoding first."""
    blocks: Iterable[Any] = content
    if in_pairs:
        blocks = [
            piece
            for block in content
            for piece in (as_assigned(block) if isinstance(block, Pairs) else (block,))
        ]
    else:
        # Most blocks are text, a tool call's id and name, a tool result's text: strings
        # in fields that take one, which need no look at each field. The blocks from the
        # first other one on are checked.
        for at, block in enumerate(content):
            if not strings_alone(block, _STRING_FIELDS):
                blocks = content[at:]
                break
        else:
            return
    check_elements(blocks, _CONTENT_BLOCK, key, struct, struct)


def _check_role(role: Any, struct: str, key: str) -> None:
    if role is not None and not isinstance(role, str):
        raise type_error(role, struct, f"{key}.role", "string")


# The request structs of api/types.go, {json name: kind} (see `check_fields`).
