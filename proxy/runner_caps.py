"""Caps on what one request may ask of the model runner that serves it (`runners` in
config.yaml), for every request but an admin key's.

On a shared Ollama one client's runner options are every client's: a `num_ctx` other
than the loaded runner's reloads the model (sched.go's needsReload), a large one with a
KV cache that may evict the others' models, and a request's `keep_alive` becomes its
runner's lifetime for everyone (useLoadedRunner): -1 pins the model, 0 unloads it once
its requests are done. Ollama itself lowers only a `num_ctx` above the model's trained
context, silently but for its log. So do these caps: a value beyond a bound is brought
to it (the answer's `X-Autoroute-Capped` and a log line say so), and the request goes
on. Only an unload asked for alone (`ollama stop`: a generate without a prompt or a
chat without messages, with `keep_alive` 0) is refused, where a `min_keep_alive`
forbids it: raised, it would load the model and answer "load" to a stop.

What is read is the body as the handler already read it (`go_json`): a few lookups,
no further parsing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from proxy.cache.key import generates
from proxy.config_serving import Runners, keep_alive_bound
from proxy.go_requests import option_int
from proxy.keep_alive import parse as parse_keep_alive

CAPPED_HEADER = "X-Autoroute-Capped"
# The options but num_ctx of the runner a model is launched with (api.Runner): a value
# other than the loaded runner's reloads the model (sched.go's needsReload compares
# them all), as does `shift`, a request field that sets the runner's context shift.
LAUNCH_OPTIONS = ("num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict")
# Where `shift` is a field of the request (GenerateRequest, ChatRequest).
_SHIFT_PATHS = ("/api/generate", "/api/chat")
# Where a request without a prompt (messages) and with keep_alive 0 unloads its model
# at once and does nothing else (GenerateHandler, ChatHandler); the embedding routes
# load the model for it, then unload it.
_UNLOADING_PATHS = ("/api/generate", "/api/chat")

log = logging.getLogger("autoroute.runner_caps")


class Refused(Exception):
    """The request asks for what the caps forbid and cannot be brought within them."""


def _duration_number(seconds: float) -> int | float:
    """`seconds` as the number api.Duration reads as that many seconds."""
    return int(seconds) if seconds.is_integer() else seconds


class RunnerCaps:
    def __init__(self, settings: Runners) -> None:
        self.max_num_ctx = settings.max_num_ctx
        self.client_num_ctx = settings.client_num_ctx
        self.client_launch_options = settings.client_launch_options
        self.min_keep_alive = keep_alive_bound(settings, "min_keep_alive") or 0.0
        most = keep_alive_bound(settings, "max_keep_alive")
        self.max_keep_alive = math.inf if most is None else most
        self.active = bool(
            self.max_num_ctx
            or not self.client_num_ctx
            or not self.client_launch_options
            or self.min_keep_alive
            or self.max_keep_alive < math.inf
        )

    def cap(self, path: str, doc: dict[str, Any]) -> list[str]:
        """Brings `doc` (a body of a route whose runner reads it, `Route.runner`) within
        the caps, in place: what changed, each as `name=value` forwarded (`unset`:
        removed). `Refused` for an unload the caps forbid."""
        changed: list[str] = []
        options = doc.get("options")
        if type(options) is dict and "num_ctx" in options:
            num_ctx = self._num_ctx(options)
            if num_ctx:
                changed.append(num_ctx)
        if not self.client_launch_options:
            if type(options) is dict:
                for name in LAUNCH_OPTIONS:
                    if name in options:
                        del options[name]
                        changed.append(f"{name}=unset")
            if path in _SHIFT_PATHS and "shift" in doc:
                del doc["shift"]
                changed.append("shift=unset")
        if doc.get("keep_alive") is not None:
            keep_alive = self._keep_alive(path, doc)
            if keep_alive:
                changed.append(keep_alive)
        return changed

    def _num_ctx(self, options: dict[str, Any]) -> str:
        if not self.client_num_ctx:
            # Whatever its value: a request naming none runs at the runner's context.
            del options["num_ctx"]
            return "num_ctx=unset"
        # A double beyond an int64 is the platform's int to Go (the largest int64 on
        # arm64): read as the double's value, so that a cap lowers it as any other.
        asked = option_int(options["num_ctx"])
        if self.max_num_ctx and asked is not None and asked > self.max_num_ctx:
            options["num_ctx"] = self.max_num_ctx
            return f"num_ctx={self.max_num_ctx}"
        return ""

    def _keep_alive(self, path: str, doc: dict[str, Any]) -> str:
        try:
            seconds = parse_keep_alive(doc["keep_alive"])
        except ValueError:
            return ""  # Ollama refuses the body: its 400, and no runner is touched
        if seconds is None:
            return ""
        if seconds < 0 or seconds > self.max_keep_alive:  # negative: forever
            bound = self.max_keep_alive
        elif seconds < self.min_keep_alive:
            if seconds == 0 and path in _UNLOADING_PATHS and not generates(path, doc):
                raise Refused(
                    "unloading a model is not allowed here: models stay loaded at least "
                    f"{_duration_number(self.min_keep_alive)}s after a request"
                )
            bound = self.min_keep_alive
        else:
            return ""
        doc["keep_alive"] = _duration_number(bound)
        return f"keep_alive={doc['keep_alive']}"


def note(path: str, key_id: str, model: str, changed: list[str]) -> None:
    """The log line of a request brought within the caps (no prompt, no key)."""
    log.info(
        "runner caps on %s for %s (model %s): %s", path, key_id or "-", model, ", ".join(changed)
    )
