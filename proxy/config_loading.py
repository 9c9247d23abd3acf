"""The configuration loaded: `config.yaml` (documented inline) plus environment
overrides, checked (`Config.check`).

Precedence, lowest first: built-in defaults, the YAML file, `AUTOROUTE_*` variables.
Any setting can be overridden as `AUTOROUTE_<SECTION>__<KEY>` (for example
`AUTOROUTE_LISTEN__PORT=8080`); `AUTOROUTE_BACKENDS` takes a comma-separated URL list.
`OLLAMA_HOST` is deliberately ignored: users point it at the proxy. A value refused
names where it came from: the variable that set it, else the file (`named`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.config import Config
from proxy.config_reading import (
    ENV_PREFIX,
    ConfigError,
    FromString,
    build,
    env_overrides,
    merge,
    read_yaml,
)
from proxy.config_selector import default_profiles
from proxy.config_serving import Backend

log = logging.getLogger("autoroute.config")


def _with_builtin_profiles(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A variable that changes a profile (`AUTOROUTE_SELECTOR__PROFILES__FAST__...`)
    changes the profiles in effect: the file's, else the built-in ones, all kept."""
    selector = overrides.get("selector")
    if not isinstance(selector, Mapping) or "profiles" not in selector:
        return data
    section = data.get("selector")
    if section is not None and (not isinstance(section, Mapping) or "profiles" in section):
        return data
    builtin = {k: dataclasses.asdict(v) for k, v in default_profiles().items()}
    return merge(data, {"selector": {"profiles": builtin}})


# A backend may be listed as its URL alone (`backends: [http://host:11434]`,
# `AUTOROUTE_BACKENDS=http://a,http://b`).
_FROM_STRING: FromString = {Backend: lambda url: Backend(url=url)}


def load(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Load the configuration; `path=None` means `$AUTOROUTE_CONFIG` or `./config.yaml`
    when present, else the built-in defaults. Each `AUTOROUTE_*` variable that names no
    setting is a warning logged here, once a load (`env_overrides`); the CLI holds it
    until its logging is set up (`logs.held`)."""
    environ = os.environ if environ is None else environ
    path = _config_path(path, environ)
    overrides, sources, ignored = env_overrides(environ, Config)
    for variable, why in sorted(ignored.items()):
        log.warning(
            "environment variable %s ignored: %s",
            variable,
            why,
            extra={"fields": {"variable": variable}},
        )
    data = read_yaml(Path(path)) if path is not None else {}
    try:
        return build(
            Config, merge(_with_builtin_profiles(data, overrides), overrides), "", _FROM_STRING
        ).check()
    except ConfigError as exc:
        raise _named(exc, path, sources, None) from None


def named(
    exc: ConfigError,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigError:
    """`exc`, found once the configuration was loaded (the catalogue it names read, the
    spool made), naming where the value at fault came from as `load` names it: the
    variable that set it, else the file where it sets it. A value neither sets is a
    default, and `exc` stays as it is."""
    environ = os.environ if environ is None else environ
    path = _config_path(path, environ)
    try:
        _, sources, _ = env_overrides(environ, Config)
        data = read_yaml(Path(path)) if path is not None else {}
    except ConfigError:
        return exc  # the file changed since it was loaded: its word is no longer known
    return _named(exc, path, sources, data)


def _config_path(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> str | os.PathLike[str] | None:
    if path is not None:
        return path
    return environ.get(ENV_PREFIX + "CONFIG") or (
        "config.yaml" if Path("config.yaml").exists() else None
    )


def _named(
    exc: ConfigError,
    path: str | os.PathLike[str] | None,
    sources: Mapping[str, str],
    file_settings: Mapping[str, Any] | None,
) -> ConfigError:
    """`exc` prefixed with the variable that set its key, else the file. `file_settings`
    None takes any other value for the file's: a check of `load` may find a default
    wrong for what the file sets beside it (a default profile its profiles lack)."""
    if not exc.key:
        return exc
    for setting, variable in sources.items():
        if exc.key == setting or exc.key.startswith(setting + "."):
            return ConfigError(f"environment variable {variable}: {exc}", exc.key)
    if path is not None and (file_settings is None or _sets(file_settings, exc.key)):
        return ConfigError(f"{path}: {exc}", exc.key)
    return exc


def _sets(settings: Mapping[str, Any], key: str) -> bool:
    """Whether `settings` (a file's) give the dotted `key`."""
    node: Any = settings
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
