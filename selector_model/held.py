"""Values computed from a few objects, kept while those very objects come back.

`auto` decides for the candidate list the registry keeps while nothing changes (and
the hard filters' result for it, `proxy.auto.Eligible`): what depends on those
candidates alone (a model's prior rates, where it runs, its catalogue reading) is
then computed once per list, not per request, and looked up by the objects' identity,
which costs no hashing of their contents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Held(Generic[T]):
    """`make()` by the identity of `objects`, for at most `limit` sets of objects.

    An entry holds its objects: their ids cannot be reused by others while it exists.
    The objects must not change while they are asked about (a list is read as it was
    when its entry was made)."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._entries: dict[tuple[int, ...], tuple[tuple[object, ...], T]] = {}

    def get(self, objects: tuple[object, ...], make: Callable[[], T]) -> T:
        key = tuple([id(o) for o in objects])
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            entry = self._entries[key] = (objects, make())
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()
