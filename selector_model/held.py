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
    """`make(*objects)` by the identity of `objects`, for at most `limit` sets of objects.

    An entry holds its objects: their ids cannot be reused by others while it exists.
    The objects must not change while they are asked about (a list is read as it was
    when its entry was made)."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._entries: dict[tuple[int, ...], tuple[tuple[object, ...], T]] = {}

    def get(self, objects: tuple[object, ...], make: Callable[..., T]) -> T:
        """The value for `objects`, `make(*objects)` when there is none yet (a function
        of them, rather than a closure over them: a closure would be made for every
        request, found or not)."""
        # The key of one or two objects spelled out: no comprehension (a call of its
        # own) for the sets `auto` asks about on every request.
        if len(objects) == 2:
            key: tuple[int, ...] = (id(objects[0]), id(objects[1]))
        elif len(objects) == 1:
            key = (id(objects[0]),)
        else:
            key = tuple([id(o) for o in objects])
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            entry = self._entries[key] = (objects, make(*objects))
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()
