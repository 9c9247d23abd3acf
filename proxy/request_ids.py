"""The proxy's own request ids: unique, and telling nothing of other requests.

An id is random (88 bits, 22 hex digits), not a counter: every answer carries its id,
a public probe's too, and from two ids of a counter any client would read how many
requests every other client made in between, and when. 88 random bits make two equal
ids as unlikely as two equal random UUIDs across every proxy that ever ran. The bytes
come from the OS's generator in batches: no system call per request.
"""

from __future__ import annotations

import os
from typing import Final

ID_BYTES: Final = 11
# Ids drawn at a time from `os.urandom`.
_BATCH: Final = 4096


class RequestIds:
    """Makes ids for one event loop's requests (not shared between threads)."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(ID_BYTES * _BATCH)
            at = 0
        self._at = at + ID_BYTES
        return self._pool[at : at + ID_BYTES].hex()
