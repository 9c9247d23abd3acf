"""`proxy.tasks.stop`: a background task whose cancellation is lost still stops."""

from __future__ import annotations

import asyncio

from proxy import tasks


async def test_a_task_that_loses_its_cancellation_is_stopped_anyway() -> None:
    swallowed = 0

    async def loop_that_swallows_one_cancel() -> None:
        # What a lost cancellation looks like from outside: the loop goes on.
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(loop_that_swallows_one_cancel())
    await asyncio.sleep(0.02)
    async with asyncio.timeout(30):
        await tasks.stop(task)
    assert task.cancelled() and swallowed == 2


async def test_a_task_that_already_failed_is_stopped_without_raising() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await tasks.stop(task)
    assert isinstance(task.exception(), RuntimeError)
