"""The one reading of an inference request body: what it asks a model to read (prompt
texts, images), what it asks the model to do (tools, fill-in-the-middle, thinking) and
how much output it allows, across the shapes Ollama serves:

- Ollama `/api/chat` and `/api/generate`: `messages[]{role, content, images}`, `prompt`,
  `system`, `suffix`, `images`, `think`, `options.num_predict`;
- `/api/embed`, `/api/embeddings`, `/v1/embeddings`: `input` (a string or strings),
  `prompt`;
- OpenAI chat and completions: `content` as parts (`text`, `image_url`), `prompt` as a
  string or strings, `max_tokens`, `max_completion_tokens`, `reasoning_effort`,
  `reasoning.effort`;
- Anthropic `/v1/messages`: `system` as a string or text blocks, content blocks
  (`text`, `image`, `tool_result` holding blocks), `thinking.type`;
- Responses `/v1/responses`: `instructions`, `input` as a string or items (messages
  with `input_text`, `output_text`, `input_image` parts; `function_call_output`),
  `max_output_tokens`, `reasoning.effort`.

The limits, the usage event, the selector's features and `auto`'s capability filter all
read a body through here, so what one counts as prompt or image the others do too. The
features read every shape at once, whatever the route; `auto`'s capability and context
filters read only the fields of the route's own request (`asks`, `prompt_tokens`), as
Ollama's handler does.

Ollama decodes bodies with Go's encoding/json, which matches an object's keys to struct
fields case-insensitively (the last match wins). `canonicalize` rewrites the objects read
here the way Go reads them, so that reading them by exact key agrees with Go; the proxy
forwards the canonical body, so the backend reads what was checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

# Content parts that carry an image: OpenAI's, Responses', Anthropic's.
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


# One entry of a conversation: its role, its text parts joined, whether it carries an
# image. A plain tuple: a conversation may have thousands, read on every request.
Turn = tuple[str | None, str, bool]


def _lists(doc: Mapping[str, Any]) -> tuple[list[Any] | None, list[Any] | None]:
    messages, items = doc.get("messages"), doc.get("input")
    return (
        messages if isinstance(messages, list) else None,
        items if isinstance(items, list) else None,
    )


def entries(doc: Mapping[str, Any]) -> Iterator[Any]:
    """The conversation's entries as sent (any type): `messages`, then the objects of
    an `input` list (Responses items; an embedding request's strings are texts, see
    `fields`). Both are read where both are sent: each API reads one of them, and what
    either carries must count."""
    messages, items = _lists(doc)
    if messages is not None:
        yield from messages
    if items is not None:
        for item in items:
            if isinstance(item, dict):
                yield item


def entry_count(doc: Mapping[str, Any]) -> int | None:
    """How many entries `entries` gives, None where the body has no conversation."""
    messages, items = _lists(doc)
    if messages is None and items is None:
        return None
    count = len(messages) if messages is not None else 0
    if items is not None:
        count += sum(1 for item in items if isinstance(item, dict))
    return count


def turns(doc: Mapping[str, Any]) -> Iterator[Turn]:
    """The conversation's objects, in order (entries that are not objects are skipped)."""
    for entry in entries(doc):
        if isinstance(entry, dict):
            role = entry.get("role")
            content = entry.get("content")
            if type(role) is str and type(content) is str:  # the common entry, inline
                yield role, content, bool(entry.get("images"))
            else:
                yield turn(entry)


def turn(entry: Mapping[str, Any]) -> Turn:
    role = entry.get("role")
    content = entry.get("content")
    if not isinstance(content, str | list):
        output = entry.get("output")
        if isinstance(output, str | list):  # a function_call_output, converted as a message
            content, role = output, role or "tool"
    if isinstance(content, str):
        text, images = content, False
    elif isinstance(content, list):
        pieces: list[str] = []
        images = _parts(content, pieces)
        text = "".join(pieces)
    else:
        text, images = "", False
    return role if isinstance(role, str) else None, text, images or bool(entry.get("images"))


def _parts(parts: list[Any], texts: list[str]) -> bool:
    """Collects the text of content parts into `texts`; whether one is an image. A
    part's text is its `text`; an Anthropic `tool_result` holds its own content. Each
    part is read as a struct reads it (`as_fields`), whichever route's it is: these
    are the selector's features, not what a route refuses."""
    images = False
    for part in parts:
        if not isinstance(part, dict):
            continue
        part = as_fields(part)
        kind = part.get("type")
        if type(kind) is str and kind in IMAGE_PARTS:
            images = True
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
        else:
            inner = part.get("content")
            if isinstance(inner, str):
                texts.append(inner)
            elif isinstance(inner, list):
                images = _parts(inner, texts) or images
    return images


def fields(doc: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The texts outside the conversation, as (kind, text): "system" (`system`, as a
    string or text blocks, and `instructions`), "prompt" (`prompt` and an `input` of
    strings, each string) and "suffix", in that order. Empty strings too."""
    system = doc.get("system")
    if isinstance(system, str):
        yield "system", system
    elif isinstance(system, list):
        pieces: list[str] = []
        _parts(system, pieces)
        yield "system", "".join(pieces)
    instructions = doc.get("instructions")
    if isinstance(instructions, str):
        yield "system", instructions
    for name in ("prompt", "input"):
        value = doc.get(name)
        if isinstance(value, str):
            yield "prompt", value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    yield "prompt", item
    suffix = doc.get("suffix")
    if isinstance(suffix, str):
        yield "suffix", suffix


def texts(doc: Mapping[str, Any]) -> Iterator[str]:
    """Every prompt text: the system texts, the prompts, the conversation's turns, the
    suffix."""
    suffix: list[str] = []
    for kind, text in fields(doc):
        if kind == "suffix":
            suffix.append(text)
        else:
            yield text
    for entry in entries(doc):
        if isinstance(entry, dict):
            content = entry.get("content")
            yield content if type(content) is str else turn(entry)[1]
    yield from suffix


# UTF-8 bytes a token takes, about: a byte-level BPE tokenizer (Llama 3, Qwen, Gemma,
# gpt-oss) reads English at some four bytes a token, and a script of more bytes a
# character at fewer characters a token (a CJK character, three bytes, is near a token
# of its own, where four characters a token would count it a quarter).
BYTES_PER_TOKEN = 4.0


def prompt_tokens(path: str, doc: Mapping[str, Any]) -> float:
    """About how many tokens the prompt texts of the request on `path` take (`texts`
    of the fields its route's request has, `route_texts`): their UTF-8 bytes over
    `BYTES_PER_TOKEN`, never fewer than their characters over it."""
    size = 0
    for text in route_texts(path, doc):
        # isascii is a flag of the string, so only other texts are encoded.
        size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return size / BYTES_PER_TOKEN


def has_images(doc: Mapping[str, Any]) -> bool:
    return bool(doc.get("images")) or any(entry[2] for entry in turns(doc))


def tool_count(doc: Mapping[str, Any]) -> int:
    tools = doc.get("tools")
    return len(tools) if isinstance(tools, list) else 0


def suffix(doc: Mapping[str, Any]) -> str:
    """The text after the insertion point (fill-in-the-middle), "" for none."""
    value = doc.get("suffix")
    return value if isinstance(value, str) else ""


# What Ollama reads as asking for thinking: `think`'s levels (api.ThinkValue) and the
# efforts openai.thinkFromReasoningEffort maps to a level. Any other value (but false,
# and an effort of "none") it refuses as it decodes the body, before it looks at a
# model: such a request asks for nothing.
_THINK_LEVELS = frozenset({"high", "medium", "low", "max"})
_EFFORTS = frozenset({"minimal", "low", "medium", "high", "xhigh", "ultra", "max"})


def thinking(doc: Mapping[str, Any]) -> bool | None:
    """What the request says of thinking, from the first of these it has: Ollama's
    `think`, OpenAI's effort (`reasoning.effort` when `reasoning` is there, else
    `reasoning_effort`), Anthropic's `thinking.type`. True where it asks for it (`think`
    true or a level, an effort of `_EFFORTS`, "enabled"), False where it turns it off
    (`think: false`, the effort "none", "disabled"), None where it says neither: Ollama
    then leaves it to the model, and a thinking model thinks."""
    think = doc.get("think")
    if think is not None:
        return _think(think)
    reasoning = doc.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else doc.get("reasoning_effort")
    if effort:
        return _effort(effort)
    return _thinking_block(doc)


def _thinking_block(doc: Mapping[str, Any]) -> bool | None:
    """Anthropic's `thinking.type`: "enabled" asks for thinking, "disabled" turns it
    off."""
    block = doc.get("thinking")
    kind = block.get("type") if isinstance(block, dict) else None
    return True if kind == "enabled" else False if kind == "disabled" else None


def _think(value: Any) -> bool | None:
    """An api.ThinkValue: true or a level asks for thinking, false turns it off."""
    if value is True or (isinstance(value, str) and value in _THINK_LEVELS):
        return True
    return False if value is False else None


def _effort(value: Any) -> bool | None:
    """An OpenAI reasoning effort, as openai.thinkFromReasoningEffort maps it."""
    if isinstance(value, str) and value in _EFFORTS:
        return True
    return False if value == "none" else None


class Asks(NamedTuple):
    """What a request asks of the model besides reading text, as its route's handler
    reads it (`asks`)."""

    tools: bool  # tools listed
    images: bool  # an image the model is to read
    insert: bool  # a suffix: fill-in-the-middle
    thinking: bool | None  # as `thinking`: True asks for it, False turns it off


_NOTHING = Asks(False, False, False, None)


def _listed(value: Any) -> bool:
    return isinstance(value, list) and bool(value)


def _list(doc: Mapping[str, Any], name: str) -> list[Any]:
    value = doc.get(name)
    return value if isinstance(value, list) else []


def _in_content_lists(doc: Mapping[str, Any], found: Callable[[list[Any]], bool]) -> bool:
    """Whether `found` holds of the content list of some message (OpenAI's and
    Anthropic's shape). Most turns' content is a string: only a list is looked into."""
    for message in _list(doc, "messages"):
        if isinstance(message, dict) and type(content := message.get("content")) is list:
            if found(content):
                return True
    return False


def _typed(parts: Any, kind: str, structs: bool = False) -> Iterator[dict[str, Any]]:
    """The objects of a content list whose `type` is `kind`: maps, read by exact key,
    or `structs` (`as_fields`)."""
    if isinstance(parts, list):
        for part in parts:
            if isinstance(part, dict):
                if structs:
                    part = as_fields(part)
                if part.get("type") == kind:
                    yield part


def _generate(doc: Mapping[str, Any]) -> Asks:
    """api.GenerateRequest: `images`, `suffix`, `think`; no tools, no messages."""
    return Asks(False, _listed(doc.get("images")), bool(suffix(doc)), _think(doc.get("think")))


def _chat(doc: Mapping[str, Any]) -> Asks:
    """api.ChatRequest: `tools`, `messages[].images`, `think`; no suffix, no images
    of its own."""
    images = False
    for message in _list(doc, "messages"):
        if isinstance(message, dict) and message.get("images"):
            images = _listed(message["images"])
            if images:
                break
    return Asks(tool_count(doc) > 0, images, False, _think(doc.get("think")))


def _openai_chat(doc: Mapping[str, Any]) -> Asks:
    """openai.ChatCompletionRequest as openai.FromChatRequest converts it: `tools`,
    `image_url` content parts, `reasoning.effort` when `reasoning` is there, else
    `reasoning_effort`; its messages have no `images`, the request no `think`."""
    images = _in_content_lists(doc, lambda parts: any(_typed(parts, "image_url")))
    reasoning = doc.get("reasoning")
    if reasoning is None:
        think = _effort(doc.get("reasoning_effort"))
    else:
        think = _effort(reasoning.get("effort")) if isinstance(reasoning, dict) else None
    return Asks(tool_count(doc) > 0, images, False, think)


def _completions(doc: Mapping[str, Any]) -> Asks:
    """openai.CompletionRequest as openai.FromCompleteRequest converts it: `suffix`
    alone."""
    return Asks(False, False, bool(suffix(doc)), None)


def _responses_image(parts: Any) -> bool:
    """An `input_image` part convertResponsesContent decodes: one with an image_url."""
    return any(part.get("image_url") for part in _typed(parts, "input_image", structs=True))


def _responses(doc: Mapping[str, Any]) -> Asks:
    """openai.ResponsesRequest as openai.FromResponsesRequest converts it: `tools`,
    images in `input` messages and function call outputs, `reasoning.effort`."""
    images = False
    for item in _list(doc, "input"):
        if not isinstance(item, dict):
            continue
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "message":
            images = _responses_image(item.get("content"))
        elif kind == "function_call_output":
            images = _responses_image(item.get("output"))
        if images:
            break
    reasoning = doc.get("reasoning")
    think = _effort(reasoning.get("effort")) if isinstance(reasoning, dict) else None
    return Asks(tool_count(doc) > 0, images, False, think)


# Anthropic's output_config.effort values anthropic.FromMessagesRequest takes for a
# thinking level, after trimming and lower-casing ("xhigh" as "high").
_ANTHROPIC_EFFORTS = frozenset({"high", "medium", "low", "max", "xhigh"})


def _anthropic_image(blocks: list[Any]) -> bool:
    """Whether content blocks hold an `image`, or a `tool_result` holding one."""
    for block in blocks:
        if isinstance(block, dict):
            block = as_fields(block)
            kind = block.get("type")
            if kind == "image" or (
                kind == "tool_result" and any(_typed(block.get("content"), "image"))
            ):
                return True
    return False


def _messages(doc: Mapping[str, Any]) -> Asks:
    """anthropic.MessagesRequest as anthropic.FromMessagesRequest converts it: `tools`,
    `image` blocks (in a `tool_result` too), `thinking.type`, else
    `output_config.effort`."""
    images = _in_content_lists(doc, _anthropic_image)
    think = _thinking_block(doc)
    if think is None:
        config = doc.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        if isinstance(effort, str) and effort.strip().lower() in _ANTHROPIC_EFFORTS:
            think = True
    return Asks(tool_count(doc) > 0, images, False, think)


class _Route(NamedTuple):
    """What a route's handler reads of a body: the fields of its request that hold
    prompt text (as `texts` reads them), its reader of what the request asks, and the
    field that bounds the answer's tokens (`_NUM_PREDICT`: `options.num_predict`)."""

    texts: frozenset[str]
    asks: Callable[[Mapping[str, Any]], Asks]
    limit: str


_NUM_PREDICT = "options"


# The request each route's handler decodes its body into. A field that request lacks
# is dropped unread: it asks nothing of the model and the model does not read it,
# whatever another route would make of it.
_ROUTES: dict[str, _Route] = {
    "/api/generate": _Route(frozenset({"system", "prompt", "suffix"}), _generate, _NUM_PREDICT),
    "/api/chat": _Route(frozenset({"messages"}), _chat, _NUM_PREDICT),
    "/v1/chat/completions": _Route(frozenset({"messages"}), _openai_chat, "max_tokens"),
    "/v1/completions": _Route(frozenset({"prompt", "suffix"}), _completions, "max_tokens"),
    "/v1/responses": _Route(frozenset({"instructions", "input"}), _responses, "max_output_tokens"),
    "/v1/messages": _Route(frozenset({"system", "messages"}), _messages, "max_tokens"),
}


def asks(path: str, doc: Mapping[str, Any]) -> Asks:
    """What the request on `path` asks of the model, read only from the fields of the
    request that route's handler decodes (`_ROUTES`; a path without one asks nothing).
    Unlike `has_images`, `tool_count`, `suffix` and `thinking`, which read every shape
    at once for the selector's features, a field another API would read counts
    nothing here: a `suffix` on a chat is ignored by Ollama, so it asks for no
    `insert`."""
    route = _ROUTES.get(path)
    return _NOTHING if route is None else route.asks(doc)


def route_texts(path: str, doc: Mapping[str, Any]) -> Iterator[str]:
    """The prompt texts the model reads of the request on `path`: `texts` of the
    fields its route's request has (`_ROUTES`), so that a `prompt` sent to /api/chat,
    which Ollama drops unread, is none. A path without an entry reads every shape's,
    as `texts` does: what its handler reads is not known here."""
    route = _ROUTES.get(path)
    if route is None:
        return texts(doc)
    return texts({name: doc[name] for name in route.texts if name in doc})


# The output bound, by the first of these the body has.
_OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def max_output_tokens(doc: Mapping[str, Any]) -> float | None:
    """The most tokens the request lets the model write (`options.num_predict`, else
    `max_tokens`, `max_completion_tokens` or `max_output_tokens`), None for no bound."""
    options = doc.get("options")
    if isinstance(options, dict) and "num_predict" in options:
        value = options["num_predict"]
    else:
        # A plain loop, not next() over a generator (an object and a frame of its own):
        # `auto` reads this twice per decision.
        value = None
        for name in _OUTPUT_LIMITS:
            if name in doc:
                value = doc[name]
                break
    return _bound(value)


def route_output_limit(path: str, doc: Mapping[str, Any]) -> float | None:
    """The most tokens the model may write for the request on `path`, read as its
    route's handler reads it (`_ROUTES`): `options.num_predict` on Ollama's own routes,
    `max_tokens` on OpenAI's chat and completions and on Anthropic's messages,
    `max_output_tokens` on the Responses API. Unlike `max_output_tokens`, which reads
    every shape's for the selector's features, a limit the route's request lacks bounds
    nothing: Ollama drops `max_completion_tokens` and a /v1 request's `options` unread,
    and the model writes as long as without them. A path without an entry reads every
    shape's."""
    route = _ROUTES.get(path)
    if route is None:
        return max_output_tokens(doc)
    if route.limit == _NUM_PREDICT:
        options = doc.get("options")
        return _bound(options.get("num_predict")) if isinstance(options, dict) else None
    return _bound(doc.get(route.limit))


def _bound(value: Any) -> float | None:
    """A token limit as a number, None for none (Ollama's -1 and -2 write on)."""
    return float(value) if isinstance(value, int | float) and value > 0 else None


# Go's encoding/json compares a key with a field's name after folding both: ASCII letters
# to upper case, any other rune r to unicode.ToUpper(unicode.ToLower(r)). Of the runes
# outside ASCII these four fold into ASCII letters, so into the fields' names.
_GO_FOLDS_TO_ASCII = str.maketrans({"\u017f": "s", "\u212a": "k", "\u0130": "i", "\u0131": "i"})


def canonical_key(key: str) -> str:
    """The spelling of `key` that names the same Go struct field: lower case (Ollama's
    fields' JSON names are lower case). A key that folds to no ASCII name matches no
    field and stays as it is."""
    if key.isascii():
        return key.lower()
    folded = key.translate(_GO_FOLDS_TO_ASCII)
    return folded.lower() if folded.isascii() else key


# Keys that are their own canonical spelling, common enough that one set operation
# (`_is_common`) clears most objects without a look at each key.
_COMMON_KEYS = frozenset(
    {"model", "messages", "prompt", "system", "suffix", "images", "stream", "options"}
    | {"format", "tools", "think", "keep_alive", "raw", "input", "instructions", "max_tokens"}
    | {"temperature", "top_p", "stop", "seed", "response_format", "reasoning_effort"}
    | {"role", "content", "type", "text", "image_url", "source", "thinking", "tool_calls"}
    | {"tool_call_id", "tool_name", "tool_use_id", "id", "name", "call_id", "output"}
)
_is_common = _COMMON_KEYS.issuperset


def _folded(obj: dict[str, Any]) -> bool:
    """Whether every key of `obj` is a Go field's already (lower case ASCII)."""
    return _is_common(obj) or all(key.isascii() and key == key.lower() for key in obj)


def _canonical_object(obj: dict[str, Any]) -> bool:
    """Rewrites `obj` in place so that it has one key per Go field, lower case, holding
    the value of the last among the keys that fold alike; whether two keys did. Go's
    decoder then keeps the last of them in the body, which need not be the last here
    (a parser keeps an exact duplicate where it first appeared)."""
    if _folded(obj):
        return False
    items = list(obj.items())
    obj.clear()
    for key, value in items:
        name = canonical_key(key)
        obj.pop(name, None)
        obj[name] = value
    return len(obj) < len(items)


def as_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """A content part or block as the struct Go decodes it into reads it (a Responses
    part, an Anthropic block): `_canonical_object` of a copy, `obj` itself where its
    keys are canonical already. `canonicalize` leaves parts as sent, since on other
    routes Go decodes them into maps, read by exact key (an OpenAI chat message's
    parts, Anthropic's system blocks and a tool result's content)."""
    if _folded(obj):
        return obj
    folded = dict(obj)
    _canonical_object(folded)
    return folded


def canonicalize(doc: dict[str, Any]) -> bool:
    """Rewrites, in place, the structs this module reads (the body, its `reasoning`,
    `thinking`, `response_format` and `output_config`, the conversation's entries) as
    Go's decoder reads them (see `_canonical_object`); whether two keys of an object
    folded alike. `options` stays as sent (a map to Go, read by exact key), and so
    does every content part: a map on some routes, a struct on others (`as_fields`).
    The common case, every key canonical, costs a set operation per object (a
    conversation of thousands of messages is read this way on every request)."""
    changed = _canonical_object(doc)
    for name in ("reasoning", "thinking", "response_format", "output_config"):
        value = doc.get(name)
        if isinstance(value, dict):
            changed = _canonical_object(value) | changed
    for conversation in _lists(doc):
        if conversation is not None:
            for entry in conversation:
                if type(entry) is dict and not _is_common(entry):
                    changed = _canonical_object(entry) | changed
    return changed
