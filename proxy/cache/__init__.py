"""The response cache: answers to deterministic requests kept and replayed.

`key` says whether a request is cacheable and under which key, `store` keeps entries
(aiocache: memory or Redis) and records answers as the relay sends them, `replay`
answers a hit.
"""

from proxy.cache.store import Capture, Entry, ResponseCache

__all__ = ["Capture", "Entry", "ResponseCache"]
