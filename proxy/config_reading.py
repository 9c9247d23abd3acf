"""Reading a configuration into typed sections: frozen dataclasses built from a mapping
(the YAML file's, merged with what `AUTOROUTE_*` variables give), each value coerced to
its field's type, and an unknown key refused with the nearest known name (a variable
that names no setting is left out, with that name for a warning).

It knows no section: `proxy.config` and its `config_*` modules declare them, and
`proxy.config_loading` passes the root (`Config`) and the types whose list items may be
written as one string.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

ENV_PREFIX = "AUTOROUTE_"
# Runs the proxy on an aiohttp its internals were not checked with; read at import,
# before any configuration (proxy/aiohttp_internals.py), so it names no setting.
AIOHTTP_UNCHECKED_ENV = ENV_PREFIX + "AIOHTTP_UNCHECKED"


def switch(text: str) -> bool | None:
    """What an on/off setting written as text says (`1`, `true`, `yes`, `on` and their
    opposites, any case, spaces around ignored); None when it is neither."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    return None


class ConfigError(ValueError):
    """A configuration that cannot work; the message says which key and why.

    `key` is the dotted setting at fault ("listen.port") when one is, so that `load`
    can name where its value came from: the file or an environment variable."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


T = TypeVar("T")
# Types whose items in a list may each be written as one string, and what makes an item
# of one from its string.
FromString = Mapping[type, Callable[[str], Any]]


def build(cls: type[T], data: Mapping[str, Any], where: str, from_string: FromString) -> T:
    at = where.rstrip(".")
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{at or 'config'}: expected a mapping, got {type(data).__name__}", key=at
        )
    hints = get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise ConfigError(
            f"{at or 'config'}: unknown key {unknown[0]!r}{_did_you_mean(unknown[0], names)}",
            key=f"{where}{unknown[0]}",
        )
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data:
            raise ConfigError(f"{at or 'config'}: missing key {f.name!r}", key=at)
    values = {
        name: _coerce(
            hints[name], _over_defaults(fields, name, data[name]), f"{where}{name}", from_string
        )
        for name in data
    }
    return cls(**values)


def _over_defaults(fields: tuple[dataclasses.Field[Any], ...], name: str, value: Any) -> Any:
    """A mapping of sections with built-in entries (`selector.profiles`): the entries
    listed replace the built-in set, and one named as a built-in keeps the built-in's
    values for the keys it leaves out (`fast: {default_model: x}` keeps fast's
    cost_weight, not a profile's default)."""
    (f,) = [f for f in fields if f.name == name]
    if f.default_factory is dataclasses.MISSING or not isinstance(value, Mapping):
        return value
    defaults = f.default_factory()
    if not isinstance(defaults, dict) or not defaults:
        return value
    return {
        str(key): merge(dataclasses.asdict(defaults[str(key)]), given)
        if str(key) in defaults and isinstance(given, Mapping)
        else given
        for key, given in value.items()
    }


def _did_you_mean(word: str, choices: set[str], render: str = "{}") -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean {render.format(close[0])!r}?" if close else ""


def _coerce(hint: Any, value: Any, where: str, from_string: FromString) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where + ".", from_string)  # type: ignore[arg-type]
    if origin is dict:
        _, item_type = get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping", key=where)
        return {
            str(k): _coerce(item_type, {} if v is None else v, f"{where}.{k}", from_string)
            for k, v in value.items()
        }
    if origin is tuple:
        (item,) = get_args(hint)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list", key=where)
        if item in from_string:
            return tuple(
                from_string[item](v)
                if isinstance(v, str)
                else build(item, v, where + ".", from_string)
                for v in value
            )
        return tuple(_coerce(item, v, where, from_string) for v in value)
    if origin is UnionType:
        # `str | None`, `bool | None`: null, else the value as the other type.
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return None if value is None else _coerce(inner, value, where, from_string)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(hint))}", key=where)
        return value
    if hint is bool:
        if isinstance(value, str) and (said := switch(value)) is not None:
            return said
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}", key=where)
        return value
    if hint in (int, float, str):
        # int() and str() take what YAML reads that was never meant as one: a
        # true (1), 1.7 (1), a list or a mapping (its repr).
        wrong = isinstance(value, bool | list | dict) or (
            hint is int and isinstance(value, float) and not value.is_integer()
        )
        try:
            if not wrong:
                return hint(value)
        except (TypeError, ValueError):
            pass
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}", key=where)
    return value


def env_overrides(
    environ: Mapping[str, str], root: type
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The settings `AUTOROUTE_*` variables give, as a tree; which variable gave each (by
    dotted setting); and each variable that names no setting of `root`, with why, for a
    warning. Such a variable is left out, as Ollama leaves out the `OLLAMA_*` variables
    it does not know: a process's environment holds variables no one set for it, and
    Kubernetes gives every pod beside a Service named `autoroute` the Service's
    (`AUTOROUTE_PORT`, `AUTOROUTE_SERVICE_HOST`, ...). A variable that names a setting
    is that setting, its value checked as the file's."""
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    ignored: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in (ENV_PREFIX + "CONFIG", AIOHTTP_UNCHECKED_ENV):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        unnamed = _names_no_setting(path, root)
        if unnamed is not None:
            ignored[key] = unnamed
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        sources[".".join(path)] = key
    return tree, sources, ignored


def _names_no_setting(path: list[str], root: type) -> str | None:
    """Why the dotted `path` of a variable names no setting of `root`; None where it
    names one."""
    hint: Any = root
    for depth, part in enumerate(path):
        if not part:
            # `AUTOROUTE_=x` or `AUTOROUTE_LISTEN__=x`: nothing to name, nor to suggest.
            after = f" after {'.'.join(path[:depth])}" if depth else ""
            return (
                f"an empty setting name{after}; a setting is overridden as "
                f"{ENV_PREFIX}<SECTION>__<KEY>, for example {ENV_PREFIX}LISTEN__PORT"
            )
        if dataclasses.is_dataclass(hint):
            names = {f.name for f in dataclasses.fields(hint)}
            if part not in names:
                prefix = "__".join(path[:depth]).upper()
                render = ENV_PREFIX + (f"{prefix}__" if prefix else "") + "{}"
                known = {name.upper() for name in names}
                hint_text = _did_you_mean(part.upper(), known, render)
                return f"no setting {'.'.join(path[: depth + 1])}{hint_text}"
            hint = get_type_hints(hint)[part]
        elif get_origin(hint) is dict:
            hint = get_args(hint)[1]
        else:
            return f"{'.'.join(path[:depth])} has no sub-settings"
    return None


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "cannot be parsed"
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded
