"""A Responses API request as Ollama's OpenAI middleware converts it into an /api/chat
body (middleware/openai.go ResponsesMiddleware; openai/responses.go
ResponsesInput.UnmarshalJSON, FromResponsesRequest), and what it refuses on the way
(BodyError), with a 400, before any handler looks at the model.

Shared, as `openai_chat` is, by the emulator, which serves the converted chat, and the
proxy, which answers for `auto` in a backend's place (`auto_routes.refusal`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy import go_deep, go_json, go_readings
from proxy.backends import RESPONSES_PATH, web_search_tool
from proxy.go_messages import parameters_refusal
from proxy.go_readings import Pairs
from proxy.go_requests import check_fields
from proxy.go_types import (
    BodyError,
    Shape,
    Unmarshals,
    as_assigned,
    check_arguments,
    check_struct,
    go_kind,
    not_into,
    taken_whole,
)
from proxy.multipart_form import go_quote
from proxy.openai_chat import decode_image_url, think_from_effort
from selector_model.request_body import canonical_key

# The fields of the input's structs that are json.RawMessages (a message's content, a
# function call output's output): a null sets one, where it leaves a string as it was.
_RAW_FIELDS = frozenset({"content", "output"})


def _pairs(value: dict[str, Any] | Pairs) -> Iterable[tuple[str, Any]]:
    """An object's keys and values in the body's order, every one of them where it
    gives a key twice (a `Pairs`, `go_readings.read_repeated`)."""
    return value if isinstance(value, Pairs) else value.items()


def _is_object(value: Any) -> bool:
    return isinstance(value, dict | Pairs)


def as_struct(value: dict[str, Any] | Pairs) -> dict[str, Any]:
    """`value`, an input item or a content part, as the structs Ollama unmarshals it
    into read it: each key names the field its lower-case spelling names
    (`canonical_key`), the last of the keys naming one wins, and a null leaves a
    string field as it was. `value` itself where every key is lower case already."""
    if isinstance(value, dict) and all(key.isascii() and key.islower() for key in value):
        return value
    out: dict[str, Any] = {}
    for key, item in _pairs(value):
        name = canonical_key(key)
        if item is None and name not in _RAW_FIELDS and name in out:
            continue
        out.pop(name, None)
        out[name] = item
    return out


def text_format(body: dict[str, Any]) -> Any:
    """A request's text format, as ResponsesText and ResponsesTextFormat read it: their
    fields matched whatever the keys' case (`as_struct`)."""
    text = body.get("text")
    fmt = as_struct(text).get("format") if isinstance(text, dict | Pairs) else None
    return as_struct(fmt) if isinstance(fmt, dict | Pairs) else fmt


def _parts(content: Any) -> list[dict[str, Any]]:
    """The objects of an array of content parts, each `as_struct`."""
    if not isinstance(content, list) or isinstance(content, Pairs):
        return []
    return [as_struct(p) for p in content if _is_object(p)]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        str(p.get("text") or "")
        for p in _parts(content)
        if p.get("type") in ("input_text", "output_text")
    )


def images_of(content: Any) -> list[str]:
    """convertResponsesContent's images (a part without an address is skipped); a file
    part is refused, as Ollama refuses it."""
    images = []
    for part in _parts(content):
        if part.get("type") == "input_file":
            raise BodyError("file inputs are not currently supported")
        if part.get("type") == "input_image" and part.get("image_url"):
            images.append(decode_image_url(str(part["image_url"])))
    return images


def _message(role: Any, content: Any) -> dict[str, Any]:
    """convertResponsesContent: a chat message of `content` (a string, null or an array
    of parts), its text parts' text joined as written, its images apart."""
    message = {"role": role, "content": text_of(content)}
    images = images_of(content)
    if images:
        message["images"] = images
    return message


# What ResponsesInput.UnmarshalJSON and the two functions it calls
# (openai/responses.go) unmarshal each input item and content part into first, to read
# its type: anonymous structs, which encoding/json's errors name by their fields.
_ITEM_HEAD = 'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }'
_PART_HEAD = 'struct { Type string "json:\\"type\\"" }'


def _strings(name: str, *fields: str) -> Shape:
    """An openai struct of string fields alone, as `check_struct` takes it."""
    return Shape(name, f"openai.{name}", {field: ("string", "string", None) for field in fields})


# What each content part is unmarshalled into once its type is read.
_PARTS = {
    "input_text": _strings("ResponsesTextContent", "type", "text"),
    "input_image": _strings("ResponsesImageContent", "type", "detail", "file_id", "image_url"),
    "output_text": _strings("ResponsesOutputTextContent", "type", "text"),
    "input_file": _strings(
        "ResponsesFileContent", "type", "file_data", "file_id", "file_url", "filename"
    ),
}
# What each input item but a message is unmarshalled into once its type is read: a
# function call output's own UnmarshalJSON reads an anonymous struct (its `output` a
# json.RawMessage, read as content is, `_content_refusal`).
_ITEMS = {
    "function_call": _strings(
        "ResponsesFunctionCall", "id", "type", "call_id", "name", "arguments"
    ),
    "function_call_output": _strings("", "type", "call_id"),
    "reasoning": Shape(
        "ResponsesReasoningInput",
        "openai.ResponsesReasoningInput",
        {
            "id": ("string", "string", None),
            "type": ("string", "string", None),
            "summary": (
                "[]",
                "[]openai.ResponsesReasoningSummary",
                _strings("ResponsesReasoningSummary", "type", "text"),
            ),
            "encrypted_content": ("string", "string", None),
        },
    ),
    "web_search_call": Shape(
        "ResponsesWebSearchCall",
        "openai.ResponsesWebSearchCall",
        {
            "id": ("string", "string", None),
            "type": ("string", "string", None),
            "status": ("string", "string", None),
            "action": (
                "object",
                "openai.ResponsesWebSearchAction",
                _strings("ResponsesWebSearchAction", "type", "query"),
            ),
        },
    ),
}


def _head_refusal(value: Any, head: str, fields: tuple[str, ...]) -> str | None:
    """json.Unmarshal of an item or part into its type-reading struct (`head`): a null
    leaves the fields empty, a value of another kind than an object is refused, and so
    is a field of another kind than a string (named `.field`: the struct has no name),
    whatever the case of its key, the first in the body's order."""
    if value is None:
        return None
    if not _is_object(value):
        return not_into(value, head)
    for key, field in _pairs(value):
        name = canonical_key(key)
        if name in fields and field is not None and not isinstance(field, str):
            kind = go_kind(field)
            return f"json: cannot unmarshal {kind} into Go struct field .{name} of type string"
    return None


def _struct_refusal(value: dict[str, Any] | Pairs, shape: Shape) -> str | None:
    """json.Unmarshal of `value` into the struct of `shape`: its first type error, in
    the body's order, an earlier value of a key given twice's too (`as_assigned`)."""
    try:
        for assigned in as_assigned(value):
            check_struct(assigned, shape, "")
    except BodyError as exc:
        return str(exc)
    return None


def _content_refusal(content: Any, name: str = "content") -> str | None:
    """ResponsesInputMessage.UnmarshalJSON's reading of `content` (and
    ResponsesFunctionCallOutput's of its `output`, `name`): absent, null or a string, or
    an array of parts of the types unmarshalResponsesContent knows, each unmarshalled
    into its type's struct."""
    if content is None or isinstance(content, str):
        return None
    if not isinstance(content, list) or isinstance(content, Pairs):
        return f"{name} must be a string or array: " + not_into(
            taken_whole(content), "[]json.RawMessage"
        )
    for i, part in enumerate(content):
        refused = _head_refusal(part, _PART_HEAD, ("type",))
        if refused is None:
            kind = as_struct(part or {}).get("type") or ""
            shape = _PARTS.get(kind)
            if shape is None:
                refused = f"unknown content type: {kind}"
            else:
                refused = _struct_refusal(part, shape)
        if refused is not None:
            return f"{name}[{i}]: {refused}"
    return None


def input_refusal(inp: Any) -> str | None:
    """What ShouldBindJSON refuses in a ResponsesRequest's `input`: a value that is no
    string or array, an item of a type unmarshalResponsesInputItem does not know (an
    item without a type but with a role is a message), a message's content as above,
    a field of another item of the wrong type. No field of an item or a part is a
    number in Go, so none is parsed: a number beyond a double is refused where any
    number is, as a "number", and goes unread where Go skips it."""
    if inp is None or isinstance(inp, str):
        return None
    if not isinstance(inp, list) or isinstance(inp, Pairs):
        return "input must be a string or array: " + not_into(taken_whole(inp), "[]json.RawMessage")
    for i, item in enumerate(inp):
        refused = _head_refusal(item, _ITEM_HEAD, ("type", "role"))
        if refused is None:
            item = item or {}
            read = as_struct(item)
            kind = read.get("type") or ("message" if read.get("role") else "")
            if kind == "message":
                refused = _content_refusal(read.get("content"))
            elif not kind:
                refused = "input item missing required 'type' field"
            elif kind not in _ITEMS:
                refused = f"unknown input item type: {go_quote(kind.encode())}"
            else:
                refused = _struct_refusal(item, _ITEMS[kind])
                if refused is None and kind == "function_call_output":
                    refused = _content_refusal(read.get("output"), "output")
        if refused is not None:
            return f"input[{i}]: {refused}"
    return None


# openai.ResponsesRequest, {json name: kind} (see `go_requests.check_fields`).
RESPONSES_FIELDS = {
    "model": "string",
    "background": "bool",
    "conversation": "raw",
    "include": "[]string",
    "input": Unmarshals(input_refusal),  # ResponsesInput's UnmarshalJSON
    "instructions": "string",
    "stream": "bool",
    "max_output_tokens": "int",
    "temperature": "float",
    "top_p": "float",
    "tools": "[]openai.ResponsesTool",
    "reasoning": "openai.ResponsesReasoning",
    "text": "openai.ResponsesText",
    "truncation": "string",
}
RESPONSES_REQUEST = ("openai.ResponsesRequest", RESPONSES_FIELDS)


def _arguments_refusal(arguments: Any) -> str | None:
    """FromResponsesRequest's json.Unmarshal of a function call's arguments (a string;
    an empty one is none) into an api.ToolCallFunctionArguments: a syntax error
    (`go_readings.unmarshal_error`: the string whole, bytes after its value too), or JSON
    the ordered map refuses (`check_arguments`), with Go's wording."""
    if not isinstance(arguments, str) or not arguments:
        return None
    text = arguments.encode()
    error = go_readings.unmarshal_error(text)
    if error is None:
        try:
            check_arguments(go_json.read(text)[0])
        except BodyError as exc:
            error = str(exc)
        else:
            return None
    return f"failed to parse function call arguments: {error}"


def chat_from_responses(body: dict[str, Any]) -> dict[str, Any]:
    """openai.FromResponsesRequest: the /api/chat body of a ResponsesRequest already
    bound (`converted`); BodyError with the message of its 400."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    inp = body.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    for item in inp if isinstance(inp, list) else []:
        item = as_struct(item or {})
        kind = item.get("type") or "message"
        if kind == "message":
            messages.append(_message(item.get("role", "user"), item.get("content")))
        elif kind == "function_call_output":
            # An array of parts is converted as a message's content is.
            messages.append(_message("tool", item.get("output")))
        elif kind == "function_call":
            refused = _arguments_refusal(item.get("arguments"))
            if refused is not None:
                raise BodyError(refused)
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": item.get("name", ""), "arguments": {}}}],
                }
            )
    options: dict[str, Any] = {}
    if body.get("max_output_tokens") is not None:
        options["num_predict"] = body["max_output_tokens"]
    think = think_from_effort((body.get("reasoning") or {}).get("effort") or "")
    out: dict[str, Any] = {
        "model": body.get("model") or "",
        "messages": messages,
        "options": options,
        "tools": _tools(body.get("tools") or []),
        "stream": body.get("stream") is True,
    }
    # Only a json_schema format with a schema becomes the chat's format: any schema
    # (a json.RawMessage is set by any value, a null too, which sets no format).
    fmt = text_format(body)
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and "schema" in fmt:
        if fmt["schema"] is not None:
            out["format"] = fmt["schema"]
    if think is not None:
        out["think"] = think
    return out


# WebSearchFunctionTool: the function a Responses request's built-in web search is.
_WEB_SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web for current information.",
        "parameters": {
            "type": "object",
            "required": ["query"],
            "properties": {"query": {"type": "string", "description": "The search query."}},
        },
    },
}


def _declared(tools: Any) -> list[dict[str, Any]]:
    """Each of a list of ResponsesTools as its struct reads it (null: the zero one)."""
    return [as_struct(t) if isinstance(t, dict) else {} for t in tools or []]


def _tools(declared: list[Any]) -> list[dict[str, Any]]:
    """FromResponsesRequest's tools: the built-in web search as its function (and no
    declared function of its name beside it), every other tool converted
    (`_converted`)."""
    tools = _declared(declared)
    web_search = any(web_search_tool(RESPONSES_PATH, t.get("type")) for t in tools)
    out = []
    for tool in tools:
        if web_search_tool(RESPONSES_PATH, tool.get("type")):
            out.append(_WEB_SEARCH)
            continue
        for function in _converted(tool):
            if not (web_search and function["function"]["name"] == "web_search"):
                out.append(function)
    return out


def _converted(tool: dict[str, Any]) -> list[dict[str, Any]]:
    """convertTools: a namespace as its tools, each named under it ("n.f"); any other
    tool as its function, whose parameters json.Marshal writes (each map's keys
    sorted) and json.Unmarshal decodes into an api.ToolFunctionParameters, refused
    with that error."""
    name = tool.get("name") or ""
    if tool.get("type") == "namespace":
        members = [f for member in _declared(tool.get("tools")) for f in _converted(member)]
        for member in members:
            function = member["function"]
            if name and not function["name"].startswith(name + "."):
                function["name"] = f"{name}.{function['name']}"
        return members
    parameters = tool.get("parameters")
    refused = parameters_refusal(go_map(parameters))
    if refused is not None:
        raise BodyError(f"failed to unmarshal tool parameters: {refused}")
    function = {
        "name": name,
        "description": tool.get("description") or "",
        "parameters": parameters or {},
    }
    return [{"type": tool.get("type") or "", "function": function}]


def go_map(value: Any) -> Any:
    """A JSON value decoded into a Go `map[string]any` and marshalled again: every
    object's keys sorted, as encoding/json writes a map."""
    return go_deep.rebuilt(value, sort_keys=True)


def converted(doc: Any) -> dict[str, Any]:
    """ResponsesMiddleware: the body bound to openai.ResponsesRequest and converted
    (`chat_from_responses`); BodyError with the message of its 400."""
    return chat_from_responses(check_fields(doc, *RESPONSES_REQUEST))
