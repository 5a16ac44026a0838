"""`cancel_and_wait`, the one way background tasks are stopped: every task has ended when it
returns, a task's failure is not lost, and a cancellation of the caller is not swallowed."""

from __future__ import annotations

import asyncio

import pytest

from bridge.core.tasks import cancel_and_wait


async def test_cancels_and_waits_for_every_task() -> None:
    ended: list[str] = []

    async def loop(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # ends some time after its cancellation
            ended.append(name)

    async def quick() -> int:
        return 1

    first, second = asyncio.create_task(loop("a")), asyncio.create_task(loop("b"))
    done = asyncio.create_task(quick())
    await asyncio.sleep(0)
    await cancel_and_wait(first, None, second, done)
    assert sorted(ended) == ["a", "b"] and first.cancelled() and second.cancelled()
    assert done.result() == 1
    await cancel_and_wait()
    await cancel_and_wait(None)


async def test_a_failed_task_raises_its_exception_once_all_ended() -> None:
    async def fails(text: str) -> None:
        raise ValueError(text)

    async def sleeps() -> None:
        await asyncio.sleep(3600)

    first, second = asyncio.create_task(fails("first")), asyncio.create_task(fails("second"))
    slow = asyncio.create_task(sleeps())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="first"):
        await cancel_and_wait(slow, first, second)
    assert slow.cancelled() and second.done()
    second.exception()


async def test_the_callers_own_cancellation_is_raised_after_the_tasks_ended() -> None:
    let_go = asyncio.Event()
    ended = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await let_go.wait()  # a clean-up that outlasts the caller's cancellation
            ended.set()

    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    after: list[str] = []

    async def stop() -> None:
        await cancel_and_wait(task)
        after.append("went on as if not cancelled")

    stopping = asyncio.create_task(stop())
    await asyncio.sleep(0.01)
    stopping.cancel()
    await asyncio.sleep(0.01)
    assert not stopping.done()  # still waits for the task to end
    let_go.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert ended.is_set() and task.cancelled() and after == []
