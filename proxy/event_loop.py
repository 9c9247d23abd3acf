"""The event loop: uvloop where it installs (Linux, macOS), asyncio's own elsewhere
(Windows, where uvloop does not build; pyproject leaves it out there)."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Coroutine
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")


def _uvloop() -> ModuleType | None:
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None


UVLOOP = _uvloop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`main` to completion on a new loop, uvloop's when there is uvloop."""
    if UVLOOP is None:
        return asyncio.run(main)
    result: T = UVLOOP.run(main)
    return result


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop, not set as the current one: uvloop's when there is uvloop."""
    if UVLOOP is None:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = UVLOOP.new_event_loop()
    return loop
