"""Cancellations that are lost, and what to do about them.

Python 3.11's `asyncio.wait_for` and `asyncio.timeout` lose a cancellation when the
awaited thing finishes or times out at the moment the cancellation arrives: the await
ends as if none came. `task.cancel(); await task` then waits forever for a task whose
loop goes on (shutdown hangs): `stop` cancels again until the task has ended. A request
handler, cancelled when its client leaves, goes on as if the client had stayed: where it
awaits a library that waits so (redis-py writes each command under `wait_for`), it asks
`cancellation_lost` after the await.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("autoroute.tasks")

# How long one cancellation is given before it is sent again.
_RECANCEL_SECONDS = 1.0


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended, cancelling again while it runs on.
    Whatever it ends with (its cancellation, an error) is not raised here."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_SECONDS)
        if not task.done():
            log.warning("task %s outlived its cancellation; cancelling it again", task.get_name())
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())


def cancellation_lost() -> bool:
    """Whether the running task was cancelled during an await that then ended otherwise
    (see the module's docstring). The caller raises `asyncio.CancelledError` once it has
    undone what the await did."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
