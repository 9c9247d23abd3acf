"""Stopping background tasks for certain.

`task.cancel(); await task` waits forever when the task's cancellation is lost, which
Python 3.11's `asyncio.wait_for` and `asyncio.timeout` do when the awaited thing
finishes or times out at the moment the cancellation arrives: the loop the task runs
then goes on, and shutdown hangs. `stop` cancels again until the task has ended.
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
